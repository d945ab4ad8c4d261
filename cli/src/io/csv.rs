//! Numeric CSV files (optionally gzip-compressed) and the CSV writer.
//!
//! Format read: one sample per line; fields separated by commas (or, when the first data line
//! has no comma, by tabs, semicolons or runs of whitespace); spaces around fields and `"` quotes
//! are ignored; blank lines and lines starting with `#` are skipped. The first line is a header
//! when one of its fields is not a number. NaN and infinities are rejected.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use super::{IoError, Matrix, Precision};

/// Which column of a CSV file holds the labels (`--label-column`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelColumn {
    /// Column index counting from 0.
    Index(usize),
    /// The last column.
    Last,
    /// The column with this header name (the file must have a header row).
    Name(String),
}

impl FromStr for LabelColumn {
    type Err = String;

    /// `"3"` is index 3 (from 0), `"-1"` or `"last"` the last column, anything else a name.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty label column".into());
        }
        if s == "-1" || s.eq_ignore_ascii_case("last") {
            return Ok(LabelColumn::Last);
        }
        if let Some(rest) = s.strip_prefix('-') {
            if rest.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("label column {s}: the only negative index allowed is -1"));
            }
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(LabelColumn::Index).map_err(|e| format!("label column {s}: {e}"));
        }
        Ok(LabelColumn::Name(s.to_owned()))
    }
}

/// Options for reading CSV files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsvOptions {
    /// Column to split off as labels; `None` keeps every column as a feature.
    pub label_column: Option<LabelColumn>,
}

/// A parsed CSV file: features, optional labels and the header row if there was one.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvData {
    /// `N x d` features (every column but the label column).
    pub features: Matrix,
    /// The label column, when one was asked for.
    pub labels: Option<Vec<f64>>,
    /// Header names of the feature columns, when the file had a header row.
    pub header: Option<Vec<String>>,
}

/// Parses CSV text held in memory (UTF-8; gzip-compressed bytes are detected and inflated).
///
/// # Errors
/// [`IoError::Csv`] naming line and column for cells that are not finite numbers, rows of the
/// wrong length, or a label column that does not exist; [`IoError::Malformed`] for invalid
/// UTF-8 or gzip. Paths are empty.
pub fn parse_csv_bytes(bytes: &[u8], opts: &CsvOptions) -> Result<CsvData, IoError> {
    parse_in(bytes, opts, Path::new(""))
}

/// Reads a `.csv` (or `.csv.gz`, `.tsv`, `.txt`) file.
///
/// # Errors
/// As [`parse_csv_bytes`], with `path` in the messages, plus I/O failures.
pub fn read_csv(path: &Path, opts: &CsvOptions) -> Result<CsvData, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "read", e))?;
    parse_in(&bytes, opts, path)
}

/// Caps inflated gzip input (a compression bomb must not exhaust memory): 4 GiB.
const MAX_INFLATED: u64 = 4 << 30;

fn parse_in(bytes: &[u8], opts: &CsvOptions, path: &Path) -> Result<CsvData, IoError> {
    let inflated;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(MAX_INFLATED)
            .read_to_end(&mut out)
            .map_err(|e| IoError::malformed(path, format!("cannot decompress gzip data: {e}")))?;
        inflated = out;
        &inflated[..]
    } else {
        bytes
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        IoError::malformed(path, format!("not valid UTF-8 text (byte {})", e.valid_up_to()))
    })?;
    parse_text(text, opts).map_err(|e| e.into_io(path))
}

/// Error before a path is attached.
struct CellError {
    line: usize,
    column: Option<usize>,
    msg: String,
}

impl CellError {
    fn into_io(self, path: &Path) -> IoError {
        IoError::Csv {
            path: path.to_path_buf(),
            line: self.line,
            column: self.column,
            msg: self.msg,
        }
    }
}

#[derive(Clone, Copy)]
enum Delim {
    Char(char),
    Whitespace,
}

fn split(line: &str, d: Delim) -> Vec<&str> {
    match d {
        Delim::Char(c) => line.split(c).map(clean).collect(),
        Delim::Whitespace => line.split_whitespace().map(clean).collect(),
    }
}

fn clean(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('"').and_then(|f| f.strip_suffix('"')).map_or(f, str::trim)
}

fn parse_text(text: &str, opts: &CsvOptions) -> Result<CsvData, CellError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));

    let Some((first_no, first)) = lines.next() else {
        return Err(CellError { line: 1, column: None, msg: "no data (the file is empty)".into() });
    };
    let delim = if first.contains(',') {
        Delim::Char(',')
    } else if first.contains('\t') {
        Delim::Char('\t')
    } else if first.contains(';') {
        Delim::Char(';')
    } else {
        Delim::Whitespace
    };
    let first_fields = split(first, delim);
    let ncols = first_fields.len();
    let is_header = first_fields.iter().any(|f| !f.is_empty() && f.parse::<f64>().is_err());
    let header: Option<Vec<String>> =
        is_header.then(|| first_fields.iter().map(|s| (*s).to_owned()).collect());

    let label = match &opts.label_column {
        None => None,
        Some(LabelColumn::Last) => Some(ncols - 1),
        Some(LabelColumn::Index(i)) if *i < ncols => Some(*i),
        Some(LabelColumn::Index(i)) => {
            return Err(CellError {
                line: first_no,
                column: None,
                msg: format!(
                    "label column {i} (from 0) is out of range: lines have {ncols} fields"
                ),
            })
        }
        Some(LabelColumn::Name(name)) => match &header {
            None => {
                return Err(CellError {
                    line: first_no,
                    column: None,
                    msg: format!(
                        "label column \"{name}\" is given by name but the file has no header row"
                    ),
                })
            }
            Some(h) => match h.iter().position(|c| c == name) {
                Some(i) => Some(i),
                None => {
                    let mut known = String::new();
                    for (i, c) in h.iter().take(12).enumerate() {
                        let _ = write!(known, "{}\"{c}\"", if i > 0 { ", " } else { "" });
                    }
                    if h.len() > 12 {
                        known.push_str(", ...");
                    }
                    return Err(CellError {
                        line: first_no,
                        column: None,
                        msg: format!("no column named \"{name}\" in the header ({known})"),
                    });
                }
            },
        },
    };

    let mut data = Vec::new();
    let mut labels = Vec::new();
    let mut rows = 0usize;
    let data_lines = (!is_header).then_some((first_no, first)).into_iter().chain(lines);
    for (no, line) in data_lines {
        let fields = split(line, delim);
        if fields.len() != ncols {
            return Err(CellError {
                line: no,
                column: None,
                msg: format!("expected {ncols} fields, found {}", fields.len()),
            });
        }
        for (c, f) in fields.iter().enumerate() {
            let v =
                parse_number(f).map_err(|msg| CellError { line: no, column: Some(c + 1), msg })?;
            if Some(c) == label {
                labels.push(v);
            } else {
                data.push(v);
            }
        }
        rows += 1;
    }
    let cols = ncols - usize::from(label.is_some());
    let header = header.map(|mut h| {
        if let Some(l) = label {
            h.remove(l);
        }
        h
    });
    Ok(CsvData { features: Matrix::new(rows, cols, data), labels: label.map(|_| labels), header })
}

fn parse_number(f: &str) -> Result<f64, String> {
    if f.is_empty() {
        return Err("empty field".into());
    }
    let shown: String = f.chars().take(40).collect();
    match f.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("non-finite value \"{shown}\" (NaN and infinities are rejected)")),
        Err(_) => Err(format!("cannot parse \"{shown}\" as a number")),
    }
}

/// Writes `m` as CSV (comma-separated, one row per line, optional header line) to `w`.
///
/// Numbers use the shortest decimal form that reads back to the same `f64` (or, with
/// [`Precision::F32`], the same `f32`).
///
/// # Panics
/// If `header` is given with a length other than `m.cols`.
///
/// # Errors
/// Errors of `w`.
#[track_caller]
pub fn write_csv(
    w: &mut dyn Write,
    m: &Matrix,
    header: Option<&[String]>,
    precision: Precision,
) -> std::io::Result<()> {
    let mut line = String::new();
    if let Some(h) = header {
        assert_eq!(h.len(), m.cols, "write_csv: header length differs from column count");
        line.push_str(&h.join(","));
        line.push('\n');
        w.write_all(line.as_bytes())?;
    }
    for row in m.iter_rows() {
        line.clear();
        for (c, v) in row.iter().enumerate() {
            if c > 0 {
                line.push(',');
            }
            let _ = match precision {
                Precision::F64 => write!(line, "{v}"),
                Precision::F32 => write!(line, "{}", *v as f32),
            };
        }
        line.push('\n');
        w.write_all(line.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(l: Option<&str>) -> CsvOptions {
        CsvOptions { label_column: l.map(|s| s.parse().unwrap()) }
    }

    fn err(text: &str, o: &CsvOptions) -> String {
        parse_csv_bytes(text.as_bytes(), o).unwrap_err().to_string()
    }

    #[test]
    fn label_column_parsing() {
        assert_eq!("3".parse::<LabelColumn>(), Ok(LabelColumn::Index(3)));
        assert_eq!("-1".parse::<LabelColumn>(), Ok(LabelColumn::Last));
        assert_eq!("last".parse::<LabelColumn>(), Ok(LabelColumn::Last));
        assert_eq!("y".parse::<LabelColumn>(), Ok(LabelColumn::Name("y".into())));
        assert!("-2".parse::<LabelColumn>().is_err());
        assert!("".parse::<LabelColumn>().is_err());
    }

    #[test]
    fn no_header_no_label() {
        let d = parse_csv_bytes(b"1,2,3\n4, 5 ,6\r\n\n", &opts(None)).unwrap();
        assert_eq!(d.features, Matrix::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!(d.labels, None);
        assert_eq!(d.header, None);
    }

    #[test]
    fn header_detected_and_label_by_name() {
        let text = "# comment\n a , \"label\" ,b\n1,0,2\n3,1,4\n";
        let d = parse_csv_bytes(text.as_bytes(), &opts(Some("label"))).unwrap();
        assert_eq!(d.features, Matrix::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(d.labels, Some(vec![0.0, 1.0]));
        assert_eq!(d.header, Some(vec!["a".to_string(), "b".to_string()]));
    }

    #[test]
    fn label_by_index_and_whitespace_delimited() {
        let d = parse_csv_bytes(b"1.5 2 7\n  3 4e-1 8\n", &opts(Some("0"))).unwrap();
        assert_eq!(d.features, Matrix::new(2, 2, vec![2.0, 7.0, 4e-1, 8.0]));
        assert_eq!(d.labels, Some(vec![1.5, 3.0]));
        let d = parse_csv_bytes(b"1\t2\n3\t4\n", &opts(Some("last"))).unwrap();
        assert_eq!(d.labels, Some(vec![2.0, 4.0]));
    }

    #[test]
    fn error_messages_name_line_and_column() {
        let text = "a,b,c\n1,2,3\n4,5,abc\n";
        assert_eq!(err(text, &opts(None)), "line 3, column 3: cannot parse \"abc\" as a number");
        assert_eq!(err("1,2\n3\n", &opts(None)), "line 2: expected 2 fields, found 1");
        assert_eq!(
            err("1,2\n3,nan\n", &opts(None)),
            "line 2, column 2: non-finite value \"nan\" (NaN and infinities are rejected)"
        );
        assert!(err("1,2\n", &opts(Some("y"))).contains("no header row"));
        assert!(err("x,y\n1,2\n", &opts(Some("z"))).contains("no column named \"z\""));
        assert!(err("1,2\n", &opts(Some("5"))).contains("out of range"));
        assert!(err("", &opts(None)).contains("no data"));
        assert!(err("1,,2\n", &opts(None)).contains("column 2: empty field"));
        let e = parse_csv_bytes(&[0x31, 0x2c, 0xff], &opts(None)).unwrap_err();
        assert!(e.to_string().contains("UTF-8"));
        let e = parse_csv_bytes(&[0x1f, 0x8b, 1, 2, 3], &opts(None)).unwrap_err();
        assert!(e.to_string().contains("gzip"));
    }

    #[test]
    fn file_errors_carry_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "1,2,3\n1,2,3\n1,2,3\n1,2,3\n1,2,3\n1,2,3\n1,2,abc\n").unwrap();
        let e = read_csv(&p, &opts(None)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}: line 7, column 3: cannot parse \"abc\" as a number", p.display())
        );
    }

    #[test]
    fn round_trip_with_and_without_header() {
        let m = Matrix::new(2, 2, vec![0.1, -1e-300, 123456789.0, 2.5]);
        let mut buf = Vec::new();
        write_csv(&mut buf, &m, None, Precision::F64).unwrap();
        assert_eq!(parse_csv_bytes(&buf, &opts(None)).unwrap().features, m);
        let h = vec!["x0".to_string(), "y".to_string()];
        let mut buf = Vec::new();
        write_csv(&mut buf, &m, Some(&h), Precision::F32).unwrap();
        let d = parse_csv_bytes(&buf, &opts(Some("y"))).unwrap();
        assert_eq!(d.header, Some(vec!["x0".to_string()]));
        // F32 output is the shortest text for the f32 value: it reads back to the same f32.
        let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        assert_eq!(as_f32(&d.features.data), vec![0.1f32, 123456789.0f32]);
        assert_eq!(as_f32(d.labels.as_ref().unwrap()), vec![-1e-300f64 as f32, 2.5]);
    }

    #[test]
    fn digits_csv_gz() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz");
        let d = read_csv(&path, &opts(Some("last"))).unwrap();
        assert_eq!(d.features.shape(), (1797, 64));
        assert_eq!(d.header, None);
        let labels = d.labels.unwrap();
        assert_eq!(labels.len(), 1797);
        for k in 0..10 {
            assert!(labels.contains(&(k as f64)), "label {k} missing");
        }
        assert!(labels.iter().all(|&l| l.fract() == 0.0 && (0.0..=9.0).contains(&l)));
        assert!(d.features.data.iter().all(|&v| v.fract() == 0.0 && (0.0..=16.0).contains(&v)));
    }
}
