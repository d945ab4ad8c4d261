//! The linearized model in function space (DESIGN §7, Lee et al. 2019), with faer.
//!
//! With `Theta = V diag(lambda) V^T` (the NTK of the N training inputs, all output
//! components: dimension D = N k, or N with one kernel shared by the outputs), MSE
//! `(1/(2N)) ||f - y||^2` and learning rate eta:
//! - gradient flow, `s = eta t / N`: `f_lin(X, t) = f_0(X) + V diag(1 - e^{-lambda s}) V^T (y - f_0(X))`,
//!   `f_lin(x*, t) = f_0(x*) + Theta(x*, X) V diag((1 - e^{-lambda s}) / lambda) V^T (y - f_0(X))`;
//! - gradient descent after t steps: the same with `1 - (1 - eta lambda / N)^t` in place of
//!   `1 - e^{-lambda s}`;
//! - NTK-GP at t = infinity: mean `Theta(x*, X) Theta^{-1} y`, covariance
//!   `K** + Theta*X Theta^{-1} K Theta^{-1} Theta_X* - (Theta*X Theta^{-1} K_X* + transpose)`.

use faer::{Mat, Side};

use crate::error::{CliError, CliResult};

/// Makes faer sequential: its blocked algorithms split work by the thread count, so results
/// would depend on `--threads`; the matrices here are small.
pub fn deterministic() {
    faer::set_global_parallelism(faer::Par::Seq);
}

/// A row-major `rows x cols` matrix as a faer matrix.
pub fn to_mat(a: &[f64], rows: usize, cols: usize) -> Mat<f64> {
    assert_eq!(a.len(), rows * cols, "to_mat: shape");
    Mat::from_fn(rows, cols, |i, j| a[i * cols + j])
}

/// A faer matrix as a row-major vector.
pub fn from_mat(m: &Mat<f64>) -> Vec<f64> {
    let mut v = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            v.push(m[(i, j)]);
        }
    }
    v
}

/// Eigendecomposition `A = V diag(values) V^T` of a symmetric matrix (eigenvalues ascending).
pub struct SymEigen {
    /// Eigenvalues, nondecreasing.
    pub values: Vec<f64>,
    /// Eigenvectors as the columns of a D x D matrix.
    pub vectors: Mat<f64>,
}

impl SymEigen {
    /// Decomposes the symmetric `dim x dim` row-major matrix `a` (its lower triangle is read).
    ///
    /// # Errors
    /// A runtime error if the eigensolver does not converge or `a` is not finite.
    pub fn new(a: &[f64], dim: usize) -> CliResult<Self> {
        if a.iter().any(|v| !v.is_finite()) {
            return Err(CliError::Runtime("eigendecomposition: non-finite kernel".into()));
        }
        deterministic();
        let m = to_mat(a, dim, dim);
        let evd = m
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| CliError::Runtime(format!("eigendecomposition failed: {e:?}")))?;
        let s = evd.S().column_vector();
        let values = (0..dim).map(|i| s[i]).collect();
        Ok(Self { values, vectors: evd.U().to_owned() })
    }

    /// Dimension D.
    pub fn dim(&self) -> usize {
        self.values.len()
    }

    /// Largest eigenvalue.
    pub fn lambda_max(&self) -> f64 {
        self.values.last().copied().unwrap_or(0.0)
    }

    /// `V diag(g(lambda)) V^T R` for `R` (D x c, row-major); returns D x c row-major.
    pub fn apply(&self, r: &[f64], cols: usize, g: impl Fn(f64) -> f64) -> Vec<f64> {
        let d = self.dim();
        let v = &self.vectors;
        let mut c = v.transpose() * to_mat(r, d, cols);
        for (i, &l) in self.values.iter().enumerate() {
            let s = g(l);
            for j in 0..cols {
                c[(i, j)] *= s;
            }
        }
        from_mat(&(v * c))
    }
}

/// The spectral factor of the linearized model's training-set residual after `t` steps of
/// GD (`steps = Some(t)`) or gradient flow for time `s = eta t / N` (`steps = None`):
/// the map `lambda -> 1 - (1 - eta lambda / N)^t` or `1 - e^{-lambda s}`.
pub fn decay(eta: f64, n: usize, t: f64, discrete: bool) -> impl Fn(f64) -> f64 {
    let a = eta / n as f64;
    move |l| {
        if discrete {
            1.0 - (1.0 - a * l).powf(t)
        } else {
            -(-a * l * t).exp_m1()
        }
    }
}

/// Linearized outputs on the training inputs and on test inputs (DESIGN §7), for the factor
/// `g` of [`decay`]: `f_X = f0_X + V g(Lambda) V^T (y - f0_X)`,
/// `f_* = f0_* + Theta_*X V (g(Lambda) / Lambda) V^T (y - f0_X)` (eigenvalues below
/// `1e-12 lambda_max` are dropped from the test-point solve).
///
/// `theta_tx` is M x D (row-major), `f0_x` and `y` are D x c, `f0_t` is M x c.
pub fn linearized_outputs(
    theta: &SymEigen,
    theta_tx: &[f64],
    f0_x: &[f64],
    f0_t: &[f64],
    y: &[f64],
    cols: usize,
    g: impl Fn(f64) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let d = theta.dim();
    let m = theta_tx.len() / d.max(1);
    let r: Vec<f64> = y.iter().zip(f0_x).map(|(a, b)| a - b).collect();
    let dx = theta.apply(&r, cols, &g);
    let fx = f0_x.iter().zip(&dx).map(|(a, b)| a + b).collect();
    let cut = 1e-12 * theta.lambda_max().abs();
    let w = theta.apply(&r, cols, |l| if l > cut { g(l) / l } else { 0.0 });
    let dt = to_mat(theta_tx, m, d) * to_mat(&w, d, cols);
    let ft = f0_t.iter().zip(from_mat(&dt)).map(|(a, b)| a + b).collect();
    (fx, ft)
}

/// NTK-GP mean (M x c) and covariance (M x M) at t = infinity (Lee et al. 2019, eq. 16):
/// `mean = Theta_*X Theta^{-1} y`,
/// `cov = K_** + B K B^T - (B K_X* + (B K_X*)^T)` with `B = Theta_*X Theta^{-1}`.
/// Inputs: `theta` of the training set (D x D), `theta_tx` (M x D), `k_xx` (D x D),
/// `k_tx` (M x D), `k_tt` (M x M), `y` (D x c). Eigenvalues below `1e-12 lambda_max` are
/// dropped (pseudo-inverse).
pub fn ntk_gp(
    theta: &SymEigen,
    theta_tx: &[f64],
    k_xx: &[f64],
    k_tx: &[f64],
    k_tt: &[f64],
    y: &[f64],
    cols: usize,
) -> (Vec<f64>, Vec<f64>) {
    ntk_gp_at(theta, theta_tx, k_xx, k_tx, k_tt, y, cols, |_| 1.0)
}

/// The NTK-GP at a finite time: as [`ntk_gp`] with `B = Theta_*X V diag(g(lambda) / lambda) V^T`,
/// `g` from [`decay`] (Lee et al. 2019, eq. 15; `g = 1` is t = infinity).
#[allow(clippy::too_many_arguments)]
pub fn ntk_gp_at(
    theta: &SymEigen,
    theta_tx: &[f64],
    k_xx: &[f64],
    k_tx: &[f64],
    k_tt: &[f64],
    y: &[f64],
    cols: usize,
    g: impl Fn(f64) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let b = gp_operator(theta, theta_tx, g);
    let (d, m) = (theta.dim(), b.nrows());
    let mean = from_mat(&(&b * to_mat(y, d, cols)));
    let bkx = &b * to_mat(k_tx, m, d).transpose();
    let cov = to_mat(k_tt, m, m) + &b * to_mat(k_xx, d, d) * b.transpose() - &bkx - bkx.transpose();
    (mean, from_mat(&cov))
}

/// `B = Theta_*X V diag(g(lambda) / lambda) V^T` (M x D): the linear map from training
/// residuals to test-point outputs of the linearized model (eigenvalues below
/// `1e-12 lambda_max` dropped).
pub fn gp_operator(theta: &SymEigen, theta_tx: &[f64], g: impl Fn(f64) -> f64) -> Mat<f64> {
    let d = theta.dim();
    let m = theta_tx.len() / d.max(1);
    let cut = 1e-12 * theta.lambda_max().abs();
    let theta_xt: Vec<f64> = from_mat(&to_mat(theta_tx, m, d).transpose().to_owned());
    let bt = to_mat(&theta.apply(&theta_xt, m, |l| if l > cut { g(l) / l } else { 0.0 }), d, m);
    bt.transpose().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::studyc::linalg::random_spd;

    /// V diag(lambda) V^T reproduces A, and apply with g = 1/lambda solves A x = b (1e-10).
    #[test]
    fn eigen_reconstructs_and_solves() {
        let n = 7;
        let a = random_spd(n, 3, 0.5);
        let e = SymEigen::new(&a, n).unwrap();
        assert!(e.values.windows(2).all(|w| w[0] <= w[1]));
        let b: Vec<f64> = (0..n).map(|i| i as f64 - 2.0).collect();
        let ab = e.apply(&b, 1, |l| l);
        let direct: Vec<f64> = (0..n).map(|i| (0..n).map(|j| a[i * n + j] * b[j]).sum()).collect();
        for (u, v) in ab.iter().zip(&direct) {
            assert!((u - v).abs() < 1e-10 * (1.0 + v.abs()), "{u} vs {v}");
        }
        let x = e.apply(&b, 1, |l| 1.0 / l);
        for i in 0..n {
            let r: f64 = (0..n).map(|j| a[i * n + j] * x[j]).sum();
            assert!((r - b[i]).abs() < 1e-10, "{r} vs {}", b[i]);
        }
    }

    /// At t -> infinity the linearized outputs interpolate y on X and reach the NTK-GP mean
    /// at test points (1e-9); the NTK-GP covariance is zero at training points (the model
    /// interpolates any draw) when the test set is the training set and K = Theta.
    #[test]
    fn infinite_time_limits() {
        let (n, m) = (5, 3);
        let big = random_spd(n + m, 8, 0.5);
        let theta: Vec<f64> = (0..n * n).map(|i| big[(i / n) * (n + m) + i % n]).collect();
        let theta_tx: Vec<f64> = (0..m * n).map(|i| big[(n + i / n) * (n + m) + i % n]).collect();
        let e = SymEigen::new(&theta, n).unwrap();
        let y: Vec<f64> = (0..n).map(|i| (i as f64).sin()).collect();
        let f0x = vec![0.1; n];
        let f0t = vec![0.0; m];
        let (fx, ft) =
            linearized_outputs(&e, &theta_tx, &f0x, &f0t, &y, 1, decay(1.0, n, 1e9, false));
        for (a, b) in fx.iter().zip(&y) {
            assert!((a - b).abs() < 1e-9);
        }
        let zeros = vec![0.0; n];
        let (fx0, ft0) =
            linearized_outputs(&e, &theta_tx, &zeros, &f0t, &y, 1, decay(1.0, n, 1e9, false));
        let (mean, _) = ntk_gp(&e, &theta_tx, &theta, &theta_tx, &vec![0.0; m * m], &y, 1);
        for (a, b) in ft0.iter().zip(&mean) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        assert!(fx0.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-9));
        assert_eq!(ft.len(), m);
        let (_, cov) = ntk_gp(&e, &theta, &theta, &theta, &theta, &y, 1);
        assert!(cov.iter().all(|c| c.abs() < 1e-9), "{cov:?}");
    }
}
