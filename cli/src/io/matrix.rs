//! Dense row-major matrices and n-dimensional tensors as read from files.

use std::ops::{Index, IndexMut};
use std::path::Path;

use super::IoError;

/// A dense `rows x cols` matrix of `f64`, stored row-major: element `(r, c)` is
/// `data[r * cols + c]`.
///
/// The fields are public for cheap hand-off to numerical code; keep
/// `data.len() == rows * cols` when building one by hand (or use [`Matrix::new`], which checks).
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    /// Number of rows (samples, for data matrices).
    pub rows: usize,
    /// Number of columns (features).
    pub cols: usize,
    /// Row-major elements, `rows * cols` of them.
    pub data: Vec<f64>,
}

impl Matrix {
    /// A matrix from row-major `data`.
    ///
    /// # Panics
    /// If `data.len() != rows * cols`.
    #[track_caller]
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        assert_eq!(
            Some(data.len()),
            rows.checked_mul(cols),
            "Matrix::new: {rows} x {cols} matrix needs {} elements",
            rows.saturating_mul(cols)
        );
        Matrix { rows, cols, data }
    }

    /// The `rows x cols` zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix::new(rows, cols, vec![0.0; rows * cols])
    }

    /// A matrix from equally long rows.
    ///
    /// # Panics
    /// If the rows do not all have the same length.
    #[track_caller]
    pub fn from_rows<R: AsRef<[f64]>>(rows: &[R]) -> Self {
        let cols = rows.first().map_or(0, |r| r.as_ref().len());
        let mut data = Vec::with_capacity(rows.len() * cols);
        for r in rows {
            assert_eq!(r.as_ref().len(), cols, "Matrix::from_rows: ragged rows");
            data.extend_from_slice(r.as_ref());
        }
        Matrix::new(rows.len(), cols, data)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Element `(r, c)`, or `None` out of bounds.
    pub fn get(&self, r: usize, c: usize) -> Option<f64> {
        if r < self.rows && c < self.cols {
            self.data.get(r * self.cols + c).copied()
        } else {
            None
        }
    }

    /// Row `r` as a slice.
    ///
    /// # Panics
    /// If `r >= rows`.
    #[track_caller]
    pub fn row(&self, r: usize) -> &[f64] {
        assert!(r < self.rows, "row {r} out of range for {} rows", self.rows);
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r` as a mutable slice.
    ///
    /// # Panics
    /// If `r >= rows`.
    #[track_caller]
    pub fn row_mut(&mut self, r: usize) -> &mut [f64] {
        assert!(r < self.rows, "row {r} out of range for {} rows", self.rows);
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Iterator over the rows.
    pub fn iter_rows(&self) -> impl ExactSizeIterator<Item = &[f64]> + '_ {
        (0..self.rows).map(move |r| &self.data[r * self.cols..(r + 1) * self.cols])
    }

    /// Column `c`, copied.
    ///
    /// # Panics
    /// If `c >= cols`.
    #[track_caller]
    pub fn column(&self, c: usize) -> Vec<f64> {
        assert!(c < self.cols, "column {c} out of range for {} columns", self.cols);
        self.iter_rows().map(|r| r[c]).collect()
    }

    /// The elements, row-major.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// The elements, row-major, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.data
    }

    /// The row-major element vector.
    pub fn into_vec(self) -> Vec<f64> {
        self.data
    }

    /// The transpose, `cols x rows`.
    pub fn transpose(&self) -> Matrix {
        let mut data = Vec::with_capacity(self.data.len());
        for c in 0..self.cols {
            data.extend(self.iter_rows().map(|r| r[c]));
        }
        Matrix::new(self.cols, self.rows, data)
    }

    /// Splits off column `c`: returns the matrix without it and the column.
    ///
    /// # Panics
    /// If `c >= cols`.
    #[track_caller]
    pub fn remove_column(&self, c: usize) -> (Matrix, Vec<f64>) {
        assert!(c < self.cols, "column {c} out of range for {} columns", self.cols);
        let mut data = Vec::with_capacity(self.rows * (self.cols - 1));
        let mut col = Vec::with_capacity(self.rows);
        for r in self.iter_rows() {
            data.extend_from_slice(&r[..c]);
            data.extend_from_slice(&r[c + 1..]);
            col.push(r[c]);
        }
        (Matrix::new(self.rows, self.cols - 1, data), col)
    }

    /// Converts every element to `f32` and back, as stored in `--precision f32` outputs.
    pub fn round_to_f32(&self) -> Matrix {
        Matrix::new(self.rows, self.cols, self.data.iter().map(|&v| v as f32 as f64).collect())
    }
}

impl Index<(usize, usize)> for Matrix {
    type Output = f64;

    #[track_caller]
    fn index(&self, (r, c): (usize, usize)) -> &f64 {
        assert!(r < self.rows && c < self.cols, "index ({r}, {c}) out of range");
        &self.data[r * self.cols + c]
    }
}

impl IndexMut<(usize, usize)> for Matrix {
    #[track_caller]
    fn index_mut(&mut self, (r, c): (usize, usize)) -> &mut f64 {
        assert!(r < self.rows && c < self.cols, "index ({r}, {c}) out of range");
        &mut self.data[r * self.cols + c]
    }
}

/// An n-dimensional array of `f64` in C (row-major) order, as stored in `.npy`, `.npz` and
/// `.safetensors` files (integer and half-precision dtypes are converted on reading).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Extent of each axis; empty for a scalar.
    pub shape: Vec<usize>,
    /// Elements in C order; `shape.iter().product()` of them.
    pub data: Vec<f64>,
}

impl Tensor {
    /// Number of axes.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// `true` when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// A 1-D tensor of length N as an `N x 1` matrix, a 2-D one as itself; `None` otherwise.
    pub fn into_matrix(self) -> Option<Matrix> {
        match *self.shape.as_slice() {
            [n] => Some(Matrix { rows: n, cols: 1, data: self.data }),
            [r, c] => Some(Matrix { rows: r, cols: c, data: self.data }),
            _ => None,
        }
    }

    /// Like [`Tensor::into_matrix`], with an error naming `path` for other ranks.
    pub fn into_data_matrix(self, path: &Path) -> Result<Matrix, IoError> {
        let shape = self.shape.clone();
        self.into_matrix().ok_or_else(|| {
            IoError::malformed(
                path,
                format!(
                    "expected a 1-D or 2-D array (N or N x d), found shape {}",
                    super::error::ShapeDisplay(&shape)
                ),
            )
        })
    }
}

/// Rejects NaN and infinities: the error names `path`, the row and the column (0-based).
///
/// # Errors
/// [`IoError::NonFinite`] for the first non-finite element in row-major order.
pub fn check_finite(path: &Path, m: &Matrix) -> Result<(), IoError> {
    check_finite_named(path, None, m)
}

/// [`check_finite`] for a named tensor of a multi-array file.
pub(crate) fn check_finite_named(
    path: &Path,
    tensor: Option<&str>,
    m: &Matrix,
) -> Result<(), IoError> {
    match m.data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let cols = m.cols.max(1);
            Err(IoError::NonFinite {
                path: path.to_path_buf(),
                tensor: tensor.map(str::to_owned),
                row: i / cols,
                column: i % cols,
                value: m.data[i],
            })
        }
    }
}
