//! Study A's output-variance prediction (Theorem 3) against an independent computation: the
//! NTK-GP covariance of Lee et al. (2019) computed by faer (eigendecomposition, DESIGN §7) for
//! kernels with a constant diagonal and a constant off-diagonal, where the two must agree
//! exactly; and the theory of `ntk variance` in the standard parameterization, whose NTK and
//! learning rate scale with the width.

use ntk_cli::cmd::variance::{theorem3, theory};
use ntk_cli::datasets::sphere_split;
use ntk_cli::linear_model::{ntk_gp, SymEigen};
use ntk_core::kernel::Mlp;
use ntk_core::Activation;

/// `c I + b 1 1^T` (rows x cols, with the identity on the leading square).
fn structured(rows: usize, cols: usize, diag: f64, off: f64) -> Vec<f64> {
    (0..rows * cols).map(|i| if i / cols == i % cols { diag } else { off }).collect()
}

/// Theorem 3 == the NTK-GP variance at t = infinity of `Theta = (k1 - k2) I + k2 1 1^T`,
/// `Theta_*X = k2`, `K = (q - q_sr) I + q_sr 1 1^T`, `K_X* = q_sr`, `K** = q`, computed by
/// faer's eigendecomposition and matrix products (1e-10 relative), for S from 2 to 128,
/// kappa_1 / kappa_2 from 1.02 (A close to 1) to 20 and a negative kappa_2 (Theta still
/// positive definite: kappa_1 + (S - 1) kappa_2 > 0), and NNGP correlations from 0 to 0.99.
#[test]
fn theorem3_is_the_ntk_gp_variance_of_a_structured_kernel() {
    for s in [2usize, 5, 16, 128] {
        for (k1, k2) in [(3.0, 1.0), (10.0, 0.5), (1.2, 1.0), (50.0, 49.0), (2.0, -0.01)] {
            for (q, q_sr) in [(2.0, 0.5), (1.0, 0.99), (0.7, 0.0)] {
                let theta = SymEigen::new(&structured(s, s, k1, k2), s).unwrap();
                let m = 3; // three test points, each at the off-diagonal values
                let theta_tx = vec![k2; m * s];
                let k_xx = structured(s, s, q, q_sr);
                let k_tx = vec![q_sr; m * s];
                let k_tt = structured(m, m, q, q_sr);
                let y = vec![0.0; s];
                let (_, cov) = ntk_gp(&theta, &theta_tx, &k_xx, &k_tx, &k_tt, &y, 1);
                let (v, a) = theorem3(q, q_sr, k1 / k2, s);
                for i in 0..m {
                    let gp = cov[i * m + i];
                    assert!(
                        (gp - v).abs() <= 1e-10 * v.abs().max(1.0),
                        "S {s} kappa {k1}/{k2} q {q} q_sr {q_sr}: NTK-GP {gp} vs Theorem 3 {v}"
                    );
                }
                let a_direct = s as f64 * k2 / (k1 + (s as f64 - 1.0) * k2);
                assert!((a - a_direct).abs() < 1e-14 * a_direct.abs().max(1.0));
            }
        }
    }
}

/// Standard parameterization: the theory of width n uses the infinite-width NTK at width n,
/// which grows like n, so the learning rate `0.5 * 2 S / lambda_max` shrinks like 1 / n
/// (ratio within 2 % of the width ratio between widths 1024 and 16384), while the NNGP parts
/// of Theorem 3 (q, q_sr) do not depend on n and A, Theorem 3 and the NTK-GP variance
/// converge as n grows (Cauchy: the change from 4096 to 16384 is < 1/4 of that from 256 to
/// 1024, and below 1 %).
#[test]
fn standard_parameterization_theory_scales_with_width() {
    let mlp = Mlp::new(Activation::Erf, 2, 1.5, 0.1);
    let data = sphere_split(12, 5, 4, 1, 3).unwrap();
    let at = |n: usize| {
        let w = [n];
        theory(&mlp.standard(&w), data.clone(), 200, 0.5).unwrap()
    };
    let (t256, t1k, t4k, t16k) = (at(256), at(1024), at(4096), at(16384));
    let r = t1k.eta / t16k.eta;
    assert!((r / 16.0 - 1.0).abs() < 0.02, "eta ratio {r}");
    assert_eq!(t1k.parts.0, t16k.parts.0);
    assert_eq!(t1k.parts.1, t16k.parts.1);
    for (name, f) in [
        ("A", &(|t: &ntk_cli::cmd::variance::Theory| t.parts.3) as &dyn Fn(&_) -> f64),
        ("Theorem 3", &|t: &ntk_cli::cmd::variance::Theory| t.var_theorem3),
        ("NTK-GP at t", &|t: &ntk_cli::cmd::variance::Theory| t.var_gp_t),
        ("NTK-GP at infinity", &|t: &ntk_cli::cmd::variance::Theory| t.var_gp_inf),
    ] {
        let (early, late) = ((f(&t1k) - f(&t256)).abs(), (f(&t16k) - f(&t4k)).abs());
        eprintln!("{name}: {} {} {} {}", f(&t256), f(&t1k), f(&t4k), f(&t16k));
        assert!(late < early / 4.0 + 1e-12, "{name}: {early} then {late}");
        assert!(late < 1e-2 * f(&t16k).abs(), "{name}: {late}");
    }
}
