//! Invariant: the file parsers (`.npy`, `.npz`, `.safetensors`, CSV) never panic on any bytes,
//! and whatever they accept is consistent: `data.len() == shape.iter().product()`, CSV rows
//! all of the same length, labels one per row.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::{fuzz_target, Corpus};
use ntk_cli::io::{
    parse_csv_bytes, parse_npy_bytes, parse_npz_bytes, parse_safetensors_bytes, CsvOptions,
    LabelColumn, Tensor,
};

#[derive(Arbitrary, Debug)]
enum Format {
    Npy,
    Npz,
    Safetensors,
    Csv(Option<Label>),
}

#[derive(Arbitrary, Debug)]
enum Label {
    Index(u8),
    Last,
    Name(String),
}

#[derive(Arbitrary, Debug)]
struct Case {
    format: Format,
    bytes: Vec<u8>,
}

fn consistent(t: &Tensor) {
    let n: usize = t.shape.iter().product();
    assert_eq!(t.data.len(), n, "shape {:?}", t.shape);
}

fuzz_target!(|case: Case| -> Corpus {
    if case.bytes.len() > 1 << 16 {
        return Corpus::Reject;
    }
    let b = &case.bytes;
    match case.format {
        Format::Npy => {
            if let Ok(t) = parse_npy_bytes(b) {
                consistent(&t);
            }
        }
        Format::Npz => {
            if let Ok(ts) = parse_npz_bytes(b) {
                ts.iter().for_each(|(_, t)| consistent(t));
            }
        }
        Format::Safetensors => {
            if let Ok(ts) = parse_safetensors_bytes(b) {
                ts.iter().for_each(|(_, t)| consistent(t));
            }
        }
        Format::Csv(label) => {
            let label_column = label.map(|l| match l {
                Label::Index(i) => LabelColumn::Index(i as usize),
                Label::Last => LabelColumn::Last,
                Label::Name(s) => LabelColumn::Name(s),
            });
            if let Ok(d) = parse_csv_bytes(b, &CsvOptions { label_column }) {
                let (rows, cols) = d.features.shape();
                assert_eq!(d.features.as_slice().len(), rows * cols);
                assert!(d.features.as_slice().iter().all(|v| v.is_finite()), "non-finite cell");
                if let Some(l) = &d.labels {
                    assert_eq!(l.len(), rows);
                }
                if let Some(h) = &d.header {
                    assert_eq!(h.len(), cols);
                }
            }
        }
    }
    Corpus::Keep
});
