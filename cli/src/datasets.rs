//! Training data: the shipped 8x8 digits, the `sphere` teacher regression, or a user file;
//! split into train and test sets by a seeded shuffle.
//!
//! Conventions (documented in docs/training.md): digits pixels are scaled from 0..16 to
//! [0, 1]; classification targets are one-hot (not centred); `sphere` inputs are uniform on
//! the sphere of radius sqrt(d) (so every first-layer pre-activation has variance
//! sigma_w^2 + sigma_b^2 in the standard parameterization) and targets are the outputs of a
//! random tanh teacher network (NTK parameterization, one hidden layer of 128, sigma_w^2 = 1.5,
//! sigma_b^2 = 0.1), standardized to unit mean square.

use std::path::Path;

use ntk_core::rng::{derive_seed, normal};
use ntk_core::train::epoch_permutation;
use ntk_core::{Activation, Parameterization, Spec};

use crate::error::{CliError, CliResult};
use crate::io::{self, LabelColumn};

/// The digits data set shipped in `data/` (see data/README.md for its attribution).
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Stream tags for [`derive_seed`].
const SPLIT_STREAM: u64 = 0xDA7A;
const SPHERE_STREAM: u64 = 0x5FE2;
const TEACHER_STREAM: u64 = 0x7EAC;

/// A train / test split, row-major.
#[derive(Clone, Debug)]
pub struct Split {
    /// Input dimension d.
    pub d: usize,
    /// Target dimension k (number of classes for classification).
    pub k: usize,
    /// Training inputs (n x d).
    pub x_train: Vec<f64>,
    /// Training targets (n x k).
    pub y_train: Vec<f64>,
    /// Test inputs.
    pub x_test: Vec<f64>,
    /// Test targets.
    pub y_test: Vec<f64>,
    /// Class labels of the training set (classification only).
    pub labels_train: Option<Vec<usize>>,
    /// Class labels of the test set (classification only).
    pub labels_test: Option<Vec<usize>>,
    /// One line describing the data.
    pub description: String,
}

impl Split {
    /// Number of training samples.
    pub fn n_train(&self) -> usize {
        self.x_train.len() / self.d
    }
    /// Number of test samples.
    pub fn n_test(&self) -> usize {
        self.x_test.len() / self.d
    }
}

/// The digits: 1,797 inputs of 64 pixels scaled to [0, 1], and labels 0..9.
///
/// # Errors
/// A runtime error if the embedded file is damaged (it never is in a released build).
pub fn digits() -> CliResult<(Vec<f64>, Vec<usize>)> {
    let opts = io::CsvOptions { label_column: Some(LabelColumn::Index(64)) };
    let data = io::parse_csv_bytes(DIGITS_CSV_GZ, &opts)?;
    let labels = data.labels.unwrap_or_default().iter().map(|&v| v as usize).collect();
    let x = data.features.as_slice().iter().map(|v| v / 16.0).collect();
    Ok((x, labels))
}

/// Checks that labels are class indices 0..C-1 and returns C.
fn class_count(labels: &[f64]) -> Option<usize> {
    let mut c = 0usize;
    for &v in labels {
        if !(v >= 0.0 && v.fract() == 0.0 && v < 10_000.0) {
            return None;
        }
        c = c.max(v as usize + 1);
    }
    Some(c)
}

/// Shuffles the rows with `seed` and takes the first `n_train` for training and the next
/// `n_test` for testing. Classification when `classes` is `Some` (one-hot targets).
///
/// # Errors
/// A usage error naming `--train-size` / `--test-size` if there are not enough rows.
#[allow(clippy::too_many_arguments)]
pub fn split(
    x: &[f64],
    targets: &[f64],
    d: usize,
    classes: Option<usize>,
    n_train: usize,
    n_test: usize,
    seed: u64,
    description: String,
) -> CliResult<Split> {
    let rows = x.len() / d;
    if n_train == 0 {
        return Err(CliError::flag("--train-size", 0, "must be positive"));
    }
    if n_train + n_test > rows {
        return Err(CliError::flag(
            "--train-size",
            n_train,
            format!(
                "with --test-size {n_test} needs {} rows; the data has {rows}",
                n_train + n_test
            ),
        ));
    }
    let tk = targets.len() / rows;
    let mut perm = vec![0usize; rows];
    epoch_permutation(&mut perm, derive_seed(seed, SPLIT_STREAM, 0), 0);
    let k = classes.unwrap_or(tk);
    let take = |idx: &[usize]| {
        let mut xs = Vec::with_capacity(idx.len() * d);
        let mut ys = Vec::with_capacity(idx.len() * k);
        let mut ls = Vec::with_capacity(idx.len());
        for &i in idx {
            xs.extend_from_slice(&x[i * d..(i + 1) * d]);
            match classes {
                Some(c) => {
                    let l = targets[i] as usize;
                    ys.extend((0..c).map(|a| if a == l { 1.0 } else { 0.0 }));
                    ls.push(l);
                }
                None => ys.extend_from_slice(&targets[i * tk..(i + 1) * tk]),
            }
        }
        (xs, ys, classes.map(|_| ls))
    };
    let (x_train, y_train, labels_train) = take(&perm[..n_train]);
    let (x_test, y_test, labels_test) = take(&perm[n_train..n_train + n_test]);
    Ok(Split { d, k, x_train, y_train, x_test, y_test, labels_train, labels_test, description })
}

/// The digits split (one-hot targets, 10 classes).
///
/// # Errors
/// As [`split`].
pub fn digits_split(n_train: usize, n_test: usize, seed: u64) -> CliResult<Split> {
    let (x, labels) = digits()?;
    let t: Vec<f64> = labels.iter().map(|&l| l as f64).collect();
    let desc = "digits (8x8, pixels / 16, one-hot targets)".to_string();
    split(&x, &t, 64, Some(10), n_train, n_test, seed, desc)
}

/// The `sphere` regression: inputs uniform on the sphere of radius sqrt(d), targets from a
/// random tanh teacher (see the module docs), k outputs.
///
/// # Errors
/// A usage error for `--input-dim 0`.
pub fn sphere_split(
    n_train: usize,
    n_test: usize,
    d: usize,
    k: usize,
    seed: u64,
) -> CliResult<Split> {
    if d == 0 {
        return Err(CliError::flag("--input-dim", 0, "must be positive"));
    }
    let rows = n_train + n_test;
    let s = derive_seed(seed, SPHERE_STREAM, 0);
    let mut x = vec![0.0; rows * d];
    for (r, row) in x.chunks_exact_mut(d).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = normal(s, r as u64, j as u64);
        }
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
        let scale = (d as f64).sqrt() / norm;
        row.iter_mut().for_each(|v| *v *= scale);
    }
    let widths = [d, 128, k];
    let teacher = Spec::new(&widths, Activation::Tanh, 1.5, 0.1, true, Parameterization::Ntk)?;
    let mut p = vec![0.0; teacher.param_count()];
    teacher.init(&mut p, derive_seed(seed, TEACHER_STREAM, 0))?;
    let mut y = crate::engine::par_forward(&teacher, &p, &x, rows)?;
    let y = y.split_off(y.len() - rows * k);
    let ms = (y.iter().map(|v| v * v).sum::<f64>() / y.len() as f64).sqrt().max(f64::MIN_POSITIVE);
    let y: Vec<f64> = y.iter().map(|v| v / ms).collect();
    let desc = format!("sphere (radius sqrt({d}), tanh teacher [{d}, 128, {k}])");
    split(&x, &y, d, None, n_train, n_test, seed, desc)
}

/// How to treat the label column of a data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Classification if every label is a class index 0, 1, 2, ..., else regression.
    Auto,
    /// One-hot targets over the classes 0..max label.
    Classification,
    /// The label column is a scalar target.
    Regression,
}

/// A split of a `.npy` / `.csv` file whose `label` column holds labels or targets.
///
/// # Errors
/// Runtime errors naming the file; a usage error for non-integer labels with
/// `--task classification`.
pub fn file_split(
    path: &Path,
    label: &LabelColumn,
    task: Task,
    n_train: usize,
    n_test: usize,
    seed: u64,
) -> CliResult<Split> {
    let data = io::read_dataset(path, Some(label))?;
    let y = data.y.unwrap_or_default();
    let d = data.x.cols();
    let classes = match (task, class_count(&y)) {
        (Task::Regression, _) | (Task::Auto, None) => None,
        (_, Some(c)) => Some(c),
        (Task::Classification, None) => {
            return Err(CliError::flag(
                "--task",
                "classification",
                format!("{}: labels must be class indices 0, 1, 2, ...", path.display()),
            ))
        }
    };
    let desc = format!(
        "{} ({} x {d}, {})",
        path.display(),
        data.x.rows(),
        classes.map_or("regression".to_string(), |c| format!("{c} classes, one-hot targets"))
    );
    split(data.x.as_slice(), &y, d, classes, n_train, n_test, seed, desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load_and_split() {
        let (x, l) = digits().unwrap();
        assert_eq!((x.len(), l.len()), (1797 * 64, 1797));
        assert!(x.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert_eq!(l.iter().max(), Some(&9));
        let s = digits_split(128, 500, 7).unwrap();
        assert_eq!((s.n_train(), s.n_test(), s.k), (128, 500, 10));
        for (row, &l) in s.y_train.chunks(10).zip(s.labels_train.as_ref().unwrap()) {
            assert_eq!(row[l], 1.0);
            assert_eq!(row.iter().sum::<f64>(), 1.0);
        }
        assert_eq!(digits_split(128, 500, 7).unwrap().x_train, s.x_train);
        assert_ne!(digits_split(128, 500, 8).unwrap().x_train, s.x_train);
        assert!(digits_split(1000, 900, 7).is_err());
    }

    #[test]
    fn sphere_inputs_and_targets() {
        let s = sphere_split(20, 5, 6, 2, 1).unwrap();
        for row in s.x_train.chunks(6) {
            let r2: f64 = row.iter().map(|v| v * v).sum();
            assert!((r2 - 6.0).abs() < 1e-12);
        }
        let all: Vec<f64> = s.y_train.iter().chain(&s.y_test).copied().collect();
        let ms = all.iter().map(|v| v * v).sum::<f64>() / all.len() as f64;
        assert!((ms - 1.0).abs() < 1e-12);
        assert!(s.labels_train.is_none());
    }
}
