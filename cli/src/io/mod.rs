//! File formats: data inputs (`.npy`, `.csv`, `.csv.gz`), weights (`.safetensors`, `.npz`),
//! and atomic writers for results (`.npy`, `.csv`, JSON, and any text other modules produce).
//!
//! Formats are chosen by file extension. Parsers of in-memory bytes (`parse_*_bytes`) never
//! panic and never allocate much more than their input, whatever the bytes; they are the entry
//! points of the fuzz targets. Data inputs are rejected if they hold NaN or infinities.
#![deny(missing_docs)]

mod csv;
mod error;
mod matrix;
mod npy;
mod npz;
mod safetensor;
mod weights;
mod write;

use std::path::Path;

pub use self::csv::{parse_csv_bytes, read_csv, write_csv, CsvData, CsvOptions, LabelColumn};
pub use self::error::IoError;
pub use self::matrix::{check_finite, Matrix, Tensor};
pub use self::npy::{parse_npy_bytes, read_npy, write_npy, write_npy_array};
pub use self::npz::{parse_npz_bytes, read_npz};
pub use self::safetensor::{parse_safetensors_bytes, read_safetensors};
pub use self::weights::{
    load_weights, natural_cmp, natural_sort, validate_weights, weights_from_tensors, LayerWeights,
    Layout,
};
pub use self::write::{atomic_write, write_json_atomic, write_matrix};

/// Floating-point precision of a computation and of written numbers (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE single precision (`<f4` in `.npy`).
    F32,
    /// IEEE double precision (`<f8` in `.npy`), the default.
    #[default]
    F64,
}

/// Input data: features and, when a label column was asked for, labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `N x d` inputs, all finite.
    pub x: Matrix,
    /// Labels or targets, one per row, all finite.
    pub y: Option<Vec<f64>>,
}

/// The data formats recognised by extension (case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataFormat {
    Npy,
    Csv,
}

fn lower_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

fn data_format(path: &Path) -> Result<DataFormat, IoError> {
    let name = lower_name(path);
    let base = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".npy") {
        Ok(DataFormat::Npy)
    } else if [".csv", ".tsv", ".txt"].iter().any(|e| base.ends_with(e)) {
        Ok(DataFormat::Csv)
    } else {
        Err(IoError::UnsupportedFormat {
            path: path.to_path_buf(),
            expected: ".npy, .csv or .csv.gz",
        })
    }
}

/// Reads an input matrix (`.npy` or `.csv` / `.csv.gz` without label column) and checks that
/// it is finite.
///
/// # Errors
/// Unsupported extension, I/O and format errors, [`IoError::NonFinite`].
pub fn read_matrix(path: &Path) -> Result<Matrix, IoError> {
    Ok(read_dataset(path, None)?.x)
}

/// Reads input data with an optional label column (`--label-column`), checking finiteness.
///
/// For `.npy` files the label column can be given by index only (there is no header).
///
/// # Errors
/// Unsupported extension, I/O and format errors, a label column that does not exist,
/// [`IoError::NonFinite`].
pub fn read_dataset(path: &Path, label: Option<&LabelColumn>) -> Result<Dataset, IoError> {
    match data_format(path)? {
        DataFormat::Csv => {
            let opts = CsvOptions { label_column: label.cloned() };
            let d = read_csv(path, &opts)?;
            Ok(Dataset { x: d.features, y: d.labels })
        }
        DataFormat::Npy => {
            let m = read_npy(path)?;
            check_finite(path, &m)?;
            let col = match label {
                None => return Ok(Dataset { x: m, y: None }),
                Some(LabelColumn::Last) if m.cols > 0 => m.cols - 1,
                Some(LabelColumn::Index(i)) if *i < m.cols => *i,
                Some(LabelColumn::Name(n)) => {
                    return Err(IoError::malformed(
                        path,
                        format!("label column \"{n}\" is given by name, but .npy files have no column names"),
                    ))
                }
                Some(_) => {
                    return Err(IoError::malformed(
                        path,
                        format!("label column is out of range: the array has {} columns", m.cols),
                    ))
                }
            };
            let (x, y) = m.remove_column(col);
            Ok(Dataset { x, y: Some(y) })
        }
    }
}

/// Reads all named tensors of a `.safetensors` or `.npz` file.
///
/// # Errors
/// Unsupported extension, I/O and format errors.
pub fn read_named_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, IoError> {
    let name = lower_name(path);
    if name.ends_with(".safetensors") {
        read_safetensors(path)
    } else if name.ends_with(".npz") {
        read_npz(path)
    } else {
        Err(IoError::UnsupportedFormat {
            path: path.to_path_buf(),
            expected: ".safetensors or .npz",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_nan_rejection_message() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let mut m = Matrix::zeros(6, 3);
        m[(4, 2)] = f64::NAN;
        write_matrix(&p, &m, Precision::F64).unwrap();
        let e = read_matrix(&p).unwrap_err();
        assert!(matches!(e, IoError::NonFinite { row: 4, column: 2, .. }));
        assert_eq!(e.to_string(), format!("{}: NaN at row 4, column 2 (0-based)", p.display()));
        m[(4, 2)] = f64::NEG_INFINITY;
        assert_eq!(
            check_finite(Path::new("x.npy"), &m).unwrap_err().to_string(),
            "x.npy: -inf at row 4, column 2 (0-based)"
        );
    }

    #[test]
    fn dataset_dispatch_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let m = Matrix::new(2, 3, vec![1.0, 2.0, 0.0, 3.0, 4.0, 1.0]);
        let npy = dir.path().join("d.npy");
        let csv = dir.path().join("d.csv");
        write_matrix(&npy, &m, Precision::F64).unwrap();
        write_matrix(&csv, &m, Precision::F64).unwrap();
        for p in [&npy, &csv] {
            let d = read_dataset(p, Some(&LabelColumn::Last)).unwrap();
            assert_eq!(d.x, Matrix::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]));
            assert_eq!(d.y, Some(vec![0.0, 1.0]));
            assert_eq!(read_dataset(p, None).unwrap().x, m);
        }
        let e = read_dataset(&npy, Some(&LabelColumn::Name("y".into()))).unwrap_err();
        assert!(e.to_string().contains("no column names"));
        let e = read_dataset(&npy, Some(&LabelColumn::Index(3))).unwrap_err();
        assert!(e.to_string().contains("out of range"));
        let e = read_matrix(Path::new("x.parquet")).unwrap_err().to_string();
        assert_eq!(e, "x.parquet: unsupported file extension (expected .npy, .csv or .csv.gz)");
        let e = read_matrix(&dir.path().join("missing.csv")).unwrap_err().to_string();
        assert!(e.contains("missing.csv: cannot read: "), "{e}");
    }

    #[test]
    fn digits_dataset() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz");
        let d = read_dataset(&path, Some(&LabelColumn::Index(64))).unwrap();
        assert_eq!(d.x.shape(), (1797, 64));
        assert_eq!(d.y.unwrap().len(), 1797);
    }

    #[test]
    fn weights_from_npz_file() {
        let dir = tempfile::tempdir().unwrap();
        let arr = |shape: &[usize], v: f64| {
            let n = shape.iter().product();
            let mut b = Vec::new();
            write_npy_array(&mut b, shape, &vec![v; n], Precision::F32).unwrap();
            b
        };
        let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        for (name, bytes) in [
            ("W1.npy", arr(&[4, 1], 2.0)),
            ("b0.npy", arr(&[4], 0.5)),
            ("W0.npy", arr(&[3, 4], 1.0)),
            ("b1.npy", arr(&[1], 0.0)),
        ] {
            zw.start_file(name, opts).unwrap();
            std::io::Write::write_all(&mut zw, &bytes).unwrap();
        }
        let p = dir.path().join("params.npz");
        std::fs::write(&p, zw.finish().unwrap().into_inner()).unwrap();
        let layers = load_weights(&p, Layout::InOut).unwrap();
        validate_weights(&p, &layers, &[3, 4, 1], true).unwrap();
        assert_eq!(layers[0].weight, Matrix::new(4, 3, vec![1.0; 12]));
        assert_eq!(layers[0].bias, Some(vec![0.5; 4]));
        let e = load_weights(&dir.path().join("w.pt"), Layout::OutIn).unwrap_err().to_string();
        assert!(e.ends_with("w.pt: unsupported file extension (expected .safetensors or .npz)"));
    }

    /// Random mutations of valid files: every parser returns, none panics.
    #[test]
    fn parsers_survive_random_mutations() {
        let m = Matrix::new(2, 3, vec![1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]);
        let mut npy = Vec::new();
        write_npy(&mut npy, &m, Precision::F32).unwrap();
        let mut csv = Vec::new();
        write_csv(&mut csv, &m, Some(&["a".into(), "b".into(), "c".into()]), Precision::F64)
            .unwrap();
        let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zw.start_file("a.npy", zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut zw, &npy).unwrap();
        let npz = zw.finish().unwrap().into_inner();
        let st = safetensors::serialize(
            [(
                "w",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::U8,
                    vec![4],
                    &[1, 2, 3, 4],
                )
                .unwrap(),
            )],
            None,
        )
        .unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let opts = CsvOptions { label_column: Some(LabelColumn::Name("b".into())) };
        for seed in [&npy, &csv, &npz, &st] {
            for _ in 0..500 {
                let mut b = seed.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] = next() as u8;
                }
                let cut = b.len() - (next() % 3) as usize;
                let b = &b[..cut];
                let _ = parse_npy_bytes(b);
                let _ = parse_csv_bytes(b, &opts);
                let _ = parse_npz_bytes(b);
                let _ = parse_safetensors_bytes(b);
            }
        }
    }
}
