//! Dense symmetric linear algebra for study C (faer): eigendecompositions of kernel matrices,
//! spectral functions `U g(Lambda) U^T R`, and Cholesky solves.
//!
//! Matrices are row-major `Vec<f64>` at the interfaces (the layout of the NTK routines);
//! faer runs sequentially (`Par::Seq`), so results do not depend on the thread count.

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

use crate::error::{CliError, CliResult};
use crate::linear_model::SymEigen;

pub use crate::linear_model::{from_mat, to_mat};

/// Eigendecomposition `A = U diag(lambda) U^T` of a symmetric matrix, eigenvalues ascending:
/// the linearized model's [`SymEigen`], with the accessors of study C below.
pub type SymEig = SymEigen;

/// Eigendecomposition of the symmetric `n x n` row-major matrix `a` (lower triangle read).
///
/// # Errors
/// A runtime error if the QR iteration does not converge or `a` is not finite.
pub fn sym_eig(a: &[f64], n: usize) -> CliResult<SymEig> {
    check_finite(a, n)?;
    SymEigen::new(a, n)
}

/// Eigenvalues (ascending) of the symmetric `n x n` row-major `a`,
/// without eigenvectors (about three times cheaper than [`sym_eig`]).
///
/// # Errors
/// As [`sym_eig`].
pub fn sym_eigenvalues(a: &[f64], n: usize) -> CliResult<Vec<f64>> {
    check_finite(a, n)?;
    to_mat(a, n, n)
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| CliError::Runtime(format!("symmetric eigenvalue computation failed: {e:?}")))
}

fn check_finite(a: &[f64], n: usize) -> CliResult {
    match a.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(CliError::Runtime(format!(
            "kernel matrix has a non-finite entry at ({}, {})",
            i / n,
            i % n
        ))),
        None => Ok(()),
    }
}

impl SymEigen {
    /// Largest eigenvalue (0 for an empty matrix).
    pub fn max(&self) -> f64 {
        self.lambda_max()
    }

    /// Smallest eigenvalue (0 for an empty matrix).
    pub fn min(&self) -> f64 {
        self.values.first().copied().unwrap_or(0.0)
    }

    /// `U^T R` for `R` (`n x m`, row-major): the coordinates of R's columns in the eigenbasis,
    /// row i belonging to eigenvalue i.
    pub fn coords(&self, r: &[f64], m: usize) -> Mat<f64> {
        self.vectors.transpose() * to_mat(r, self.dim(), m)
    }
}

/// `(A + jitter I)^{-1} B` for symmetric positive definite `A` (`n x n`) and `B` (`n x m`),
/// both row-major, by Cholesky.
///
/// # Errors
/// A runtime error naming `what` if `A + jitter I` is not numerically positive definite.
pub fn spd_solve(
    a: &[f64],
    n: usize,
    jitter: f64,
    b: &[f64],
    m: usize,
    what: &str,
) -> CliResult<Vec<f64>> {
    let mut am = to_mat(a, n, n);
    for i in 0..n {
        am[(i, i)] += jitter;
    }
    let llt = am.llt(Side::Lower).map_err(|e| {
        CliError::Runtime(format!("{what} is not positive definite (Cholesky failed: {e:?})"))
    })?;
    let mut bm = to_mat(b, n, m);
    llt.solve_in_place(bm.as_mut());
    Ok(from_mat(&bm))
}

/// `(1 - (1 - a)^t) / lambda` with `a = eta lambda / n`: the GD counterpart of
/// `(1 - exp(-eta lambda t / n)) / lambda`, finite (-> `eta t / n`) as `lambda -> 0`.
pub fn gd_filter(lambda: f64, eta_over_n: f64, t: f64) -> f64 {
    let a = eta_over_n * lambda;
    if a.abs() < 1e-12 {
        return eta_over_n * t;
    }
    // 1 - (1 - a)^t = -expm1(t ln(1 - a)), accurate for small a.
    let one_minus = if a < 1.0 { -(t * (-a).ln_1p()).exp_m1() } else { 1.0 - (1.0 - a).powf(t) };
    one_minus / lambda
}

/// `G G^T + shift I` (row-major) with `G` an `n x n` matrix of standard normals drawn from
/// `seed`: a random symmetric positive definite matrix for tests.
#[cfg(test)]
pub(crate) fn random_spd(n: usize, seed: u64, shift: f64) -> Vec<f64> {
    let g: Vec<f64> = (0..n * n).map(|i| ntk_core::rng::normal(seed, 0, i as u64)).collect();
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| g[i * n + k] * g[j * n + k]).sum::<f64>();
        }
        a[i * n + i] += shift;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_reconstructs_and_matches_trace() {
        let n = 17;
        let a = random_spd(n, 3, 0.1);
        let e = sym_eig(&a, n).unwrap();
        let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
        let sum: f64 = e.values.iter().sum();
        assert!((trace - sum).abs() < 1e-12 * trace, "{trace} {sum}");
        assert!(e.values.windows(2).all(|w| w[0] <= w[1]));
        let id: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
        let rec = e.apply(&id, n, |l| l);
        let err = rec.iter().zip(&a).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(err < 1e-12 * e.max(), "{err}");
        let only = sym_eigenvalues(&a, n).unwrap();
        for (p, q) in only.iter().zip(&e.values) {
            assert!((p - q).abs() < 1e-12 * e.max(), "{p} {q}");
        }
    }

    #[test]
    fn spd_solve_matches_spectral_inverse() {
        let n = 9;
        let a = random_spd(n, 5, 0.1);
        let b: Vec<f64> = (0..n * 2).map(|i| (i as f64).sin()).collect();
        let x = spd_solve(&a, n, 0.0, &b, 2, "test").unwrap();
        let e = sym_eig(&a, n).unwrap();
        let y = e.apply(&b, 2, |l| 1.0 / l);
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() < 1e-9 * (1.0 + q.abs()), "{p} {q}");
        }
    }

    #[test]
    fn gd_filter_limits() {
        // Exact power for moderate a, the eta t / n limit for lambda -> 0.
        let (l, e, t) = (2.0, 0.1, 7.0);
        let want = (1.0 - (1.0f64 - 0.2).powi(7)) / 2.0;
        assert!((gd_filter(l, e, t) - want).abs() < 1e-15);
        assert!((gd_filter(1e-14, e, t) - 0.7).abs() < 1e-12);
        assert!((gd_filter(1e-9, e, t) - 0.7).abs() < 1e-9);
    }
}
