//! Gaussian predictive distributions of study C: the linearized Laplace approximation in
//! kernel form, the NTK-GP of gradient descent, and calibration metrics.
//!
//! Linearized Laplace (Gaussian likelihood with noise variance s2, prior N(0, p2 I) on the
//! parameters, GGN precision `J^T J / s2 + I / p2` at the trained parameters). By Woodbury,
//! `Sigma = p2 I - p2^2 J^T (s2 I + p2 J J^T)^{-1} J`, so with `Theta = J J^T` (the empirical
//! NTK at the trained parameters)
//!
//! `var f(x*) = J* Sigma J*^T = p2 [Theta** - Theta*X (Theta_XX + (s2 / p2) I)^{-1} Theta_X*]`,
//!
//! which needs N x N kernels instead of a P x P inverse.
//!
//! NTK-GP (Lee et al. 2019, DESIGN §7): an ensemble of wide networks with f_0 ~ GP(0, K)
//! trained by GD for t steps (rate eta, MSE over N inputs) has
//! `f_t(x*) = f_0(x*) + A (y - f_0(X))`, `A = Theta*X Theta^{-1} (I - (I - eta Theta / N)^t)`,
//! so mean `A y` and variance `K** - 2 (A K_X*)_diag + (A K_XX A^T)_diag`.

use crate::error::CliResult;
use crate::studyc::linalg::{gd_filter, spd_solve, sym_eig};

/// Predictive variances of the linearized Laplace approximation in kernel form (see the
/// module documentation): `theta_xx` (n x n), `theta_sx` (m x n, test by train), `theta_ss`
/// the test diagonal (m); noise variance `s2`, prior variance `p2`. Clamped at 0.
///
/// # Errors
/// A runtime error if `Theta_XX + (s2 / p2) I` is not positive definite.
///
/// # Panics
/// If the shapes disagree.
#[track_caller]
pub fn laplace_var(
    theta_xx: &[f64],
    theta_sx: &[f64],
    theta_ss: &[f64],
    s2: f64,
    p2: f64,
) -> CliResult<Vec<f64>> {
    let m = theta_ss.len();
    let n = (theta_xx.len() as f64).sqrt().round() as usize;
    assert!(n * n == theta_xx.len() && theta_sx.len() == m * n, "laplace_var: shapes");
    // B = Theta_X* (n x m).
    let mut b = vec![0.0; n * m];
    for i in 0..m {
        for j in 0..n {
            b[j * m + i] = theta_sx[i * n + j];
        }
    }
    let z = spd_solve(theta_xx, n, s2 / p2, &b, m, "Theta_XX + (s2/p2) I")?;
    Ok((0..m)
        .map(|i| {
            let q: f64 = (0..n).map(|j| theta_sx[i * n + j] * z[j * m + i]).sum();
            (p2 * (theta_ss[i] - q)).max(0.0)
        })
        .collect())
}

/// A Gaussian prediction per test point: (means, variances of f).
pub type Prediction = (Vec<f64>, Vec<f64>);

/// Kernels of the NTK-GP on train inputs X (n) and test inputs (m).
pub struct GpKernels<'a> {
    /// NNGP K_XX (n x n).
    pub k_xx: &'a [f64],
    /// NNGP K_*X (m x n).
    pub k_sx: &'a [f64],
    /// NNGP diagonal K(x*, x*) (m).
    pub k_ss: &'a [f64],
    /// NTK Theta_XX (n x n).
    pub t_xx: &'a [f64],
    /// NTK Theta_*X (m x n).
    pub t_sx: &'a [f64],
}

/// Mean and variance of the NTK-GP after `steps` GD steps with rate `eta` on targets `y`
/// (module documentation). `steps = None` is the infinite-time limit.
///
/// # Errors
/// Eigensolver failures.
pub fn ntk_gp(
    kern: &GpKernels<'_>,
    y: &[f64],
    eta: f64,
    steps: Option<usize>,
) -> CliResult<Prediction> {
    let n = y.len();
    let m = kern.k_ss.len();
    let e = sym_eig(kern.t_xx, n)?;
    let cut = 1e-13 * e.max();
    let filter = |l: f64| match steps {
        Some(t) => gd_filter(l, eta / n as f64, t as f64),
        None if l > cut => 1.0 / l,
        None => 0.0,
    };
    // A^T = F Theta_X* with F = Theta^{-1}(I - E_t) symmetric: columns of A^T (n x m).
    let mut ts = vec![0.0; n * m];
    for i in 0..m {
        for j in 0..n {
            ts[j * m + i] = kern.t_sx[i * n + j];
        }
    }
    let at = e.apply(&ts, m, filter);
    let mean: Vec<f64> = (0..m).map(|i| (0..n).map(|j| at[j * m + i] * y[j]).sum()).collect();
    // K_XX A^T (n x m).
    let mut kat = vec![0.0; n * m];
    for r in 0..n {
        for c in 0..n {
            let kv = kern.k_xx[r * n + c];
            for i in 0..m {
                kat[r * m + i] += kv * at[c * m + i];
            }
        }
    }
    let var = (0..m)
        .map(|i| {
            let cross: f64 = (0..n).map(|j| at[j * m + i] * kern.k_sx[i * n + j]).sum();
            let quad: f64 = (0..n).map(|j| at[j * m + i] * kat[j * m + i]).sum();
            (kern.k_ss[i] - 2.0 * cross + quad).max(0.0)
        })
        .collect();
    Ok((mean, var))
}

/// Calibration of Gaussian predictions `N(mean, var + s2)` for targets `y`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// Mean Gaussian negative log likelihood.
    pub nll: f64,
    /// Root mean squared error of the mean.
    pub rmse: f64,
    /// Mean predictive standard deviation of f (without the noise).
    pub mean_std: f64,
    /// Regression calibration error: mean over p = 0.05, 0.15, ..., 0.95 of
    /// |fraction of targets in the central p-interval - p|.
    pub ece: f64,
}

/// Inverse of the standard normal CDF for `p` in (0, 1), by bisection on erf (to 1e-12).
fn probit(p: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0f64, 10.0f64);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if 0.5 * (1.0 + ntk_core::Real::erf(mid / std::f64::consts::SQRT_2)) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Calibration metrics of `N(mean, var + s2)` against `y`.
pub fn calibration(mean: &[f64], var: &[f64], s2: f64, y: &[f64]) -> Calibration {
    let n = y.len() as f64;
    let mut c = Calibration::default();
    for ((&m, &v), &t) in mean.iter().zip(var).zip(y) {
        let tv = v + s2;
        let r = t - m;
        c.nll += 0.5 * ((2.0 * std::f64::consts::PI * tv).ln() + r * r / tv) / n;
        c.rmse += r * r / n;
        c.mean_std += v.sqrt() / n;
    }
    c.rmse = c.rmse.sqrt();
    let levels: Vec<f64> = (0..10).map(|i| 0.05 + 0.1 * i as f64).collect();
    for &p in &levels {
        let z = probit(0.5 + p / 2.0);
        let inside = mean
            .iter()
            .zip(var)
            .zip(y)
            .filter(|((&m, &v), &t)| (t - m).abs() <= z * (v + s2).sqrt())
            .count();
        c.ece += (inside as f64 / n - p).abs() / levels.len() as f64;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probit_inverts_the_cdf() {
        assert!((probit(0.975) - 1.959963984540054).abs() < 1e-10);
        assert!(probit(0.5).abs() < 1e-12);
    }

    #[test]
    fn calibration_of_exact_gaussians() {
        // Targets drawn from the predictive distribution: ECE small, NLL = 0.5 ln(2 pi e v).
        let n = 20000;
        let y: Vec<f64> = (0..n).map(|i| 2.0 * ntk_core::rng::normal(9, 0, i as u64)).collect();
        let c = calibration(&vec![0.0; n], &vec![3.0; n], 1.0, &y);
        assert!(c.ece < 0.01, "{}", c.ece);
        let want = 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * 4.0).ln();
        assert!((c.nll - want).abs() < 0.02, "{} {want}", c.nll);
        assert!((c.mean_std - 3f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn ntk_gp_finite_time_matches_iterated_linear_gd() {
        // Iterate the linearized GD f_X <- f_X - (eta / n) Theta_XX (f_X - y),
        // f_* <- f_* - (eta / n) Theta_*X (f_X - y) on the affine map from f_0 = [f_0(X); f_0(*)]
        // (columns 0..n+m) and y (last column); then mean = y-part, var = M C M^T with C the
        // joint NNGP of f_0.
        let (n, m) = (4, 3);
        let w = n + m;
        let g: Vec<f64> = (0..w * 3).map(|i| ntk_core::rng::normal(8, 0, i as u64)).collect();
        let kf = |i: usize, j: usize, c: usize| {
            (0..c).map(|q| g[3 * i + q] * g[3 * j + q]).sum::<f64>()
                + if i == j { 0.3 } else { 0.0 }
        };
        let theta = |i: usize, j: usize| kf(i, j, 2);
        let nngp = |i: usize, j: usize| kf(i, j, 3);
        let t_xx: Vec<f64> = (0..n * n).map(|p| theta(p / n, p % n)).collect();
        let t_sx: Vec<f64> = (0..m * n).map(|p| theta(n + p / n, p % n)).collect();
        let k_xx: Vec<f64> = (0..n * n).map(|p| nngp(p / n, p % n)).collect();
        let k_sx: Vec<f64> = (0..m * n).map(|p| nngp(n + p / n, p % n)).collect();
        let k_ss: Vec<f64> = (0..m).map(|i| nngp(n + i, n + i)).collect();
        let y = [1.0, -0.5, 0.25, 2.0];
        let (eta, steps) = (0.7, 9);
        // Row r of `f` (r < w): coefficients of f_r on [f_0; 1] with 1 standing for y-terms.
        let mut f: Vec<Vec<f64>> =
            (0..w).map(|r| (0..=w).map(|c| if c == r { 1.0 } else { 0.0 }).collect()).collect();
        for _ in 0..steps {
            let res: Vec<Vec<f64>> = (0..n)
                .map(|j| (0..=w).map(|c| f[j][c] - if c == w { y[j] } else { 0.0 }).collect())
                .collect();
            for (r, fr) in f.iter_mut().enumerate() {
                for (c, v) in fr.iter_mut().enumerate() {
                    let s: f64 = (0..n).map(|j| theta(r, j) * res[j][c]).sum();
                    *v -= eta / n as f64 * s;
                }
            }
        }
        let kern = GpKernels { k_xx: &k_xx, k_sx: &k_sx, k_ss: &k_ss, t_xx: &t_xx, t_sx: &t_sx };
        let (mean, var) = ntk_gp(&kern, &y, eta, Some(steps)).unwrap();
        for i in 0..m {
            let row = &f[n + i];
            assert!((mean[i] - row[w]).abs() < 1e-12, "{mean:?}");
            let v: f64 =
                (0..w).map(|a| (0..w).map(|b| row[a] * nngp(a, b) * row[b]).sum::<f64>()).sum();
            assert!((var[i] - v).abs() < 1e-11 * v.abs().max(1.0), "{} {v}", var[i]);
        }
    }

    #[test]
    fn ntk_gp_infinite_time_interpolates_and_has_zero_variance_on_train() {
        // Test points equal to train points: mean y, variance 0 (Lee et al. at t = infinity).
        let n = 5;
        let g: Vec<f64> = (0..n * 3).map(|i| ntk_core::rng::normal(4, 0, i as u64)).collect();
        let gram = |s: f64| -> Vec<f64> {
            (0..n * n)
                .map(|p| {
                    (0..3).map(|c| g[(p / n) * 3 + c] * g[(p % n) * 3 + c]).sum::<f64>() * s
                        + if p / n == p % n { 0.5 } else { 0.0 }
                })
                .collect()
        };
        let (k, t) = (gram(1.0), gram(2.0));
        let kd: Vec<f64> = (0..n).map(|i| k[i * n + i]).collect();
        let y: Vec<f64> = (0..n).map(|i| i as f64 - 2.0).collect();
        let kern = GpKernels { k_xx: &k, k_sx: &k, k_ss: &kd, t_xx: &t, t_sx: &t };
        let (mean, var) = ntk_gp(&kern, &y, 0.1, None).unwrap();
        for i in 0..n {
            assert!((mean[i] - y[i]).abs() < 1e-9, "{mean:?}");
            assert!(var[i].abs() < 1e-9, "{var:?}");
        }
        // t = 0: the prior.
        let (mean0, var0) = ntk_gp(&kern, &y, 0.1, Some(0)).unwrap();
        assert!(mean0.iter().all(|m| m.abs() < 1e-12));
        assert!(var0.iter().zip(&kd).all(|(a, b)| (a - b).abs() < 1e-12));
    }
}
