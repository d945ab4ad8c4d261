//! Study C's data: the shipped digits (8x8 images, 10 classes) and a synthetic regression task.

use std::path::Path;

use ntk_core::rng;

use crate::error::{CliError, CliResult};
use crate::io::{read_dataset, LabelColumn};

/// Number of digit classes.
pub const CLASSES: usize = 10;

/// Labelled images: `x` (n x d, row-major) and class labels.
#[derive(Clone, Debug)]
pub struct Labelled {
    /// Inputs, n x d.
    pub x: Vec<f64>,
    /// Input dimension.
    pub d: usize,
    /// Class of each row.
    pub labels: Vec<usize>,
}

impl Labelled {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Centred one-hot targets `e_c - 1/k` (n x k).
    pub fn targets(&self) -> Vec<f64> {
        let mut y = vec![-1.0 / CLASSES as f64; self.len() * CLASSES];
        for (i, &c) in self.labels.iter().enumerate() {
            y[i * CLASSES + c] += 1.0;
        }
        y
    }

    /// The rows `idx`, in that order.
    pub fn rows(&self, idx: &[usize]) -> Labelled {
        let mut x = Vec::with_capacity(idx.len() * self.d);
        for &i in idx {
            x.extend_from_slice(&self.x[i * self.d..(i + 1) * self.d]);
        }
        Labelled { x, d: self.d, labels: idx.iter().map(|&i| self.labels[i]).collect() }
    }

    /// A deterministic permutation of the row indices (Philox keys sorted), from `seed`.
    pub fn shuffled_indices(&self, seed: u64) -> Vec<usize> {
        let mut keyed: Vec<(f64, usize)> =
            (0..self.len()).map(|i| (rng::uniform(seed, 7, i as u64), i)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        keyed.into_iter().map(|(_, i)| i).collect()
    }

    /// Up to `n` rows whose class is in `classes`, taken in the order of `order`, skipping the
    /// first `skip` matching rows.
    pub fn select(&self, order: &[usize], classes: &[usize], skip: usize, n: usize) -> Labelled {
        let idx: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| classes.contains(&self.labels[i]))
            .skip(skip)
            .take(n)
            .collect();
        self.rows(&idx)
    }

    /// The same images with their pixels permuted by `perm` (`x'_j = x_{perm[j]}`).
    pub fn permute_pixels(&self, perm: &[usize]) -> Labelled {
        let mut x = vec![0.0; self.x.len()];
        for (dst, src) in x.chunks_exact_mut(self.d).zip(self.x.chunks_exact(self.d)) {
            for (j, &p) in perm.iter().enumerate() {
                dst[j] = src[p];
            }
        }
        Labelled { x, d: self.d, labels: self.labels.clone() }
    }
}

/// Reads the digits CSV (64 pixels 0..16, then the label 0..9), and standardises the pixels:
/// `x / 16`, minus the mean image, divided by the overall RMS, so that `mean ||x||^2 / d = 1`.
///
/// # Errors
/// I/O and format errors naming the file; a runtime error for labels outside 0..9.
pub fn load_digits(path: &Path) -> CliResult<Labelled> {
    let ds = read_dataset(path, Some(&LabelColumn::Last))?;
    let (n, d) = ds.x.shape();
    let y = ds.y.unwrap_or_default();
    let mut labels = Vec::with_capacity(n);
    for (i, &v) in y.iter().enumerate() {
        if v.fract() != 0.0 || !(0.0..CLASSES as f64).contains(&v) {
            return Err(CliError::Runtime(format!(
                "{}: row {}: label {v} is not a class 0..9",
                path.display(),
                i + 1
            )));
        }
        labels.push(v as usize);
    }
    if n == 0 || d == 0 {
        return Err(CliError::Runtime(format!("{}: no data", path.display())));
    }
    let mut x = ds.x.into_vec();
    let mut mean = vec![0.0; d];
    for row in x.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v / n as f64;
        }
    }
    for row in x.chunks_exact_mut(d) {
        for (v, m) in row.iter_mut().zip(&mean) {
            *v -= m;
        }
    }
    let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
    if rms > 0.0 {
        x.iter_mut().for_each(|v| *v /= rms);
    }
    Ok(Labelled { x, d, labels })
}

/// A synthetic regression task: `y = sin(a.x) + 0.5 cos(b.x) + noise`, `a`, `b` fixed unit
/// directions, `x ~ N(0, scale^2 I_d)`.
#[derive(Clone, Copy, Debug)]
pub struct Regression {
    /// Input dimension.
    pub d: usize,
    /// Noise standard deviation.
    pub noise_std: f64,
    /// Seed of the task (directions, inputs, noise).
    pub seed: u64,
}

impl Regression {
    fn direction(&self, which: u64) -> Vec<f64> {
        let v: Vec<f64> =
            (0..self.d).map(|j| rng::normal(self.seed, 100 + which, j as u64)).collect();
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        v.into_iter().map(|a| a / norm).collect()
    }

    /// The noiseless target f*(x) of each row of `x`.
    pub fn truth(&self, x: &[f64]) -> Vec<f64> {
        let (a, b) = (self.direction(0), self.direction(1));
        x.chunks_exact(self.d)
            .map(|r| {
                let (pa, pb): (f64, f64) = r
                    .iter()
                    .zip(a.iter().zip(&b))
                    .fold((0.0, 0.0), |s, (x, (a, b))| (s.0 + x * a, s.1 + x * b));
                pa.sin() + 0.5 * pb.cos()
            })
            .collect()
    }

    /// `n` inputs with standard deviation `scale` and noisy targets; `stream` separates sets.
    pub fn sample(&self, n: usize, scale: f64, stream: u64) -> (Vec<f64>, Vec<f64>) {
        let x: Vec<f64> =
            (0..n * self.d).map(|i| scale * rng::normal(self.seed, 2 * stream, i as u64)).collect();
        let y = self
            .truth(&x)
            .into_iter()
            .enumerate()
            .map(|(i, f)| f + self.noise_std * rng::normal(self.seed, 2 * stream + 1, i as u64))
            .collect();
        (x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load_and_standardise() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz");
        let dg = load_digits(&path).unwrap();
        assert_eq!((dg.len(), dg.d), (1797, 64));
        let ms = dg.x.iter().map(|v| v * v).sum::<f64>() / dg.x.len() as f64;
        assert!((ms - 1.0).abs() < 1e-12);
        let order = dg.shuffled_indices(0);
        let a = dg.select(&order, &[0, 1, 2, 3, 4], 0, 50);
        assert_eq!(a.len(), 50);
        assert!(a.labels.iter().all(|&c| c < 5));
        let t = a.targets();
        assert!((t.iter().sum::<f64>()).abs() < 1e-12);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1797).collect::<Vec<_>>());
    }
}
