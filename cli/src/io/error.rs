//! The error type of the `io` module.

use std::fmt;
use std::path::{Path, PathBuf};

/// A failure to read or write a data, weights or result file.
///
/// Every message is one line that starts with the file path (when known) and names the problem,
/// for example `weights.safetensors: tensor "2.weight" has shape [10, 64], expected [10, 256]`
/// or `x.csv: line 7, column 3: cannot parse "abc" as a number`. Errors from the in-memory
/// parsers (`parse_*_bytes`) carry an empty path and print without the prefix.
#[derive(Debug)]
#[non_exhaustive]
pub enum IoError {
    /// The operating system refused an operation (open, read, write, rename, ...).
    Io {
        /// File concerned.
        path: PathBuf,
        /// What was being done, as a verb phrase: `"read"`, `"create temporary file"`, ...
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file extension does not name a supported format.
    UnsupportedFormat {
        /// File concerned.
        path: PathBuf,
        /// The extensions that would have been accepted, e.g. `".npy, .csv or .csv.gz"`.
        expected: &'static str,
    },
    /// The bytes do not follow the format (bad magic, truncated data, unsupported dtype, ...).
    Malformed {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A CSV cell or row could not be used.
    Csv {
        /// File concerned.
        path: PathBuf,
        /// Line number, counting from 1.
        line: usize,
        /// Column (field) number counting from 1, when the problem is in one cell.
        column: Option<usize>,
        /// What is wrong.
        msg: String,
    },
    /// A NaN or infinity where finite numbers are required.
    NonFinite {
        /// File concerned.
        path: PathBuf,
        /// Tensor name, for files holding several arrays.
        tensor: Option<String>,
        /// Row index, counting from 0 (as in NumPy).
        row: usize,
        /// Column index, counting from 0.
        column: usize,
        /// The offending value.
        value: f64,
    },
    /// A tensor does not have the shape the network needs.
    ShapeMismatch {
        /// File concerned.
        path: PathBuf,
        /// Tensor name as stored in the file.
        tensor: String,
        /// Shape as stored in the file.
        found: Vec<usize>,
        /// Shape that was expected, in the file's layout.
        expected: Vec<usize>,
    },
    /// The tensors of a weights file do not form a layer stack (missing weight, two biases, ...).
    Weights {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

impl IoError {
    /// The file the error is about (empty for in-memory parsing).
    pub fn path(&self) -> &Path {
        match self {
            IoError::Io { path, .. }
            | IoError::UnsupportedFormat { path, .. }
            | IoError::Malformed { path, .. }
            | IoError::Csv { path, .. }
            | IoError::NonFinite { path, .. }
            | IoError::ShapeMismatch { path, .. }
            | IoError::Weights { path, .. } => path,
        }
    }

    /// The same error attributed to `new_path`.
    pub fn with_path(mut self, new_path: &Path) -> Self {
        match &mut self {
            IoError::Io { path, .. }
            | IoError::UnsupportedFormat { path, .. }
            | IoError::Malformed { path, .. }
            | IoError::Csv { path, .. }
            | IoError::NonFinite { path, .. }
            | IoError::ShapeMismatch { path, .. }
            | IoError::Weights { path, .. } => *path = new_path.to_path_buf(),
        }
        self
    }

    /// Shorthand for [`IoError::Io`].
    pub fn io(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        IoError::Io { path: path.to_path_buf(), op, source }
    }

    /// Shorthand for [`IoError::Malformed`].
    pub fn malformed(path: &Path, msg: impl Into<String>) -> Self {
        IoError::Malformed { path: path.to_path_buf(), msg: msg.into() }
    }
}

/// `[10, 64]`
pub(crate) struct ShapeDisplay<'a>(pub(crate) &'a [usize]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

fn value_word(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+inf"
    } else {
        "-inf"
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path();
        if !path.as_os_str().is_empty() {
            write!(f, "{}: ", path.display())?;
        }
        match self {
            IoError::Io { op, source, .. } => write!(f, "cannot {op}: {source}"),
            IoError::UnsupportedFormat { expected, .. } => {
                write!(f, "unsupported file extension (expected {expected})")
            }
            IoError::Malformed { msg, .. } | IoError::Weights { msg, .. } => f.write_str(msg),
            IoError::Csv { line, column, msg, .. } => match column {
                Some(c) => write!(f, "line {line}, column {c}: {msg}"),
                None => write!(f, "line {line}: {msg}"),
            },
            IoError::NonFinite { tensor, row, column, value, .. } => {
                if let Some(t) = tensor {
                    write!(f, "tensor \"{t}\": ")?;
                }
                write!(f, "{} at row {row}, column {column} (0-based)", value_word(*value))
            }
            IoError::ShapeMismatch { tensor, found, expected, .. } => write!(
                f,
                "tensor \"{tensor}\" has shape {}, expected {}",
                ShapeDisplay(found),
                ShapeDisplay(expected)
            ),
        }
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IoError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
