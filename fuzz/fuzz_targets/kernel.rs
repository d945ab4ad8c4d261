//! Invariant: the infinite-width NNGP K and NTK Theta (`ntk_core::kernel`) either return an
//! error or finite kernels that are symmetric (exactly, for x2 = x1), positive semi-definite
//! (up to the sqrt(eps) per layer conditioning of arccos near c = +-1),
//! agree with `kernel_diagonal` on the diagonal, have Theta(x, x) >= K(x, x) (NTK
//! parameterization), and have K(x, x) nondecreasing in sigma_w2 and sigma_b2 for activations
//! with phi(0) = 0 and |phi(u)| nondecreasing in |u| (ReLU family, linear, erf, tanh). The
//! log-domain recursion (`ntk_core::scaled::kernel_scaled`) never panics, and its `Ok` values
//! are finite mantissas with K symmetric to 1e-12.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::{fuzz_target, Corpus};
use ntk_core::kernel::{kernel, kernel_diagonal, kernel_scratch, Mlp};
use ntk_core::scaled::{kernel_scaled, Scaled};
use ntk_core::{Activation, Parameterization};
use ntk_fuzz::{ActChoice, Caps, Inputs, Variance};

const CAPS: Caps = Caps { depth: 64, width: 8, params: usize::MAX, n: 5 };

#[derive(Arbitrary, Debug)]
struct Case {
    activation: ActChoice,
    depth: u8,
    sigma_w2: Variance,
    sigma_b2: Variance,
    bias: bool,
    standard: Option<u8>,
    d: u8,
    x: Inputs,
    bump: u8,
}

/// Smallest eigenvalue >= -tol by a Cholesky factorisation of K + tol I.
fn psd(k: &[f64], n: usize, tol: f64) -> bool {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = k[i * n + j] + if i == j { tol } else { 0.0 };
            for p in 0..j {
                s -= l[i * n + p] * l[j * n + p];
            }
            if i == j {
                if s < 0.0 {
                    return false;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = if l[j * n + j] > 0.0 { s / l[j * n + j] } else { 0.0 };
            }
        }
    }
    true
}

fn monotone_family(a: Activation) -> bool {
    a.is_homogeneous() || matches!(a, Activation::Erf | Activation::Tanh)
}

fuzz_target!(|case: Case| -> Corpus {
    let depth = case.depth as usize;
    let d = case.d as usize;
    if depth > CAPS.depth || d == 0 || d > CAPS.width {
        return Corpus::Reject;
    }
    let Some(x) = case.x.build(d, &CAPS) else { return Corpus::Reject };
    // tanh and sigmoid use 2-D quadrature (up to millions of nodes per pair and layer at large
    // variances): smaller cases keep each run well under the 20 s timeout of .ci/fuzz.sh.
    let quadrature = matches!(case.activation, ActChoice::Tanh | ActChoice::Sigmoid);
    if quadrature && (depth > 8 || x.len() / d > 3) {
        return Corpus::Reject;
    }
    let n = x.len() / d;
    let width = [case.standard.unwrap_or(1).max(1) as usize];
    let mut mlp = Mlp::new(case.activation.get(), depth, case.sigma_w2.get(), case.sigma_b2.get())
        .with_bias(case.bias);
    if case.standard.is_some() {
        mlp = mlp.standard(&width);
    }
    let (mut ks, mut ts) = (vec![Scaled::ZERO; n * n], vec![Scaled::ZERO; n * n]);
    if kernel_scaled(Some(&mut ks), Some(&mut ts), &x, None, d, &mlp).is_ok() {
        assert!(ks.iter().chain(&ts).all(|v| v.is_finite()), "scaled: Ok with non-finite");
        for i in 0..n {
            for j in 0..n {
                let (a, b) = (ks[i * n + j], ks[j * n + i]);
                let diff = a - b;
                // |a - b| <= 1e-12 |a| (quadrature orders may differ when x and y swap).
                assert!(
                    diff.m == 0.0 || diff.ln() <= a.ln() + (1e-12f64).ln(),
                    "scaled K not symmetric"
                );
            }
        }
    }
    let (mut k, mut t) = (vec![0.0; n * n], vec![0.0; n * n]);
    let mut s = vec![0.0; kernel_scratch(n, 0, depth)];
    let Ok(info) = kernel(Some(&mut k), Some(&mut t), &x, None, d, &mlp, &mut s) else {
        return Corpus::Keep;
    };
    // Quadrature errors (tanh, sigmoid) propagated through the layers: each layer multiplies
    // an error by at most max(sigma_w2, 1) (|d E[phi^2] / dq| <= 1 for these activations).
    let amp: f64 = (0..=depth).map(|j| mlp.sigma_w2.max(1.0).powi(j as i32)).sum();
    // (0 x inf = NaN when amp overflows: closed forms have no quadrature error at all.)
    let scale_err = |e: f64, a: f64| if e == 0.0 { 0.0 } else { e * a };
    let qerr = scale_err(info.max_quadrature_error, amp * (depth as f64 + 1.0));
    assert!(k.iter().chain(&t).all(|v| v.is_finite()), "Ok with non-finite kernel");
    for i in 0..n {
        for j in 0..n {
            assert_eq!(k[i * n + j].to_bits(), k[j * n + i].to_bits(), "K not symmetric");
            assert_eq!(t[i * n + j].to_bits(), t[j * n + i].to_bits(), "Theta not symmetric");
        }
    }
    let tr = |m: &[f64]| (0..n).map(|i| m[i * n + i]).fold(0.0f64, f64::max);
    // Round-off and quadrature-error allowance. Near c = +-1 the kernels depend on the
    // correlation through theta = arccos c ~ sqrt(2 (1 - c)), so a rounding of c by eps moves
    // E[phi' phi'] by ~sqrt(eps) relative per layer (parallel inputs whose computed c is
    // 1 - 1ulp): found by this target (d = 1, ReLU, depth 35: lambda_min = -8e-9 lambda_max).
    // Below ~1e-290 the recursion runs in subnormals (variances underflow at small sigma_w2
    // and large depth: found by this target, K ~ 1e-322) and keeps no relative precision;
    // `scaled::kernel_scaled` is the tool there, so the check allows an absolute 1e-290.
    // After the first layer a correlation error grows like any perturbation of the correlation
    // map, by up to chi_1 <= sigma_w2 sup phi'^2 per layer (sup phi'^2 <= 1.3 for the smooth
    // activations here: erf 4/pi, GELU 1.27; homogeneous ones map correlations with slope <= 1),
    // so in the chaotic phase the sqrt(eps) error grows geometrically: found by this target
    // (erf, sigma_w2 = sigma_b2 = 274, depth 10, four parallel inputs of norm ~2e10: K_13 =
    // 0.945 K_11 while K_01, K_03 = K_11 (1 - 3e-6); see tests/tests/regressions.rs).
    // For the other activations a sqrt(eps) error in sin theta enters E[phi' phi'] beside
    // sqrt(1 + 2 (q1 + q2)) multiplied by sqrt(q1 q2), so its relative size grows like
    // sqrt(2 q) with the variance q: found by this target in the first layer (erf,
    // sigma_w2 ~ sigma_b2 ~ 1.4e-4, d = 1, five inputs of norm ~1e33, so q ~ 1e63: Theta_01
    // came out as 1e-4 against entries of 1e8). The first layer now takes g sin theta from
    // the inputs, so the seed comes from the second layer's variance: at most
    // sigma_w2 + sigma_b2 for the bounded erf, tanh and sigmoid; GELU (about relu for large
    // inputs) keeps ~sigma_w2 q / 2 of the first layer's (docs/robustness.md).
    let act = case.activation.get();
    let homogeneous = act.is_homogeneous();
    let chi = if homogeneous { 1.0 } else { (1.3 * mlp.sigma_w2).max(1.0) };
    let growth: f64 = (0..=depth).map(|j| chi.powi(j as i32)).sum();
    let q_max = (0..n)
        .map(|i| mlp.sigma_w2 * x[i * d..(i + 1) * d].iter().map(|v| v * v).sum::<f64>() / d as f64)
        .fold(0.0f64, f64::max)
        + mlp.sigma_b2;
    let q2_max = match act {
        Activation::Gelu => mlp.sigma_w2 * q_max + mlp.sigma_b2,
        _ => mlp.sigma_w2 + mlp.sigma_b2,
    };
    let seed = if homogeneous || depth == 0 { 1.0 } else { (2.0 * q2_max).sqrt().max(1.0) };
    let cond = 2.0 * f64::EPSILON.sqrt() * growth * seed;
    let tiny = 1e-290 * (depth as f64 + 1.0);
    assert!(psd(&k, n, cond * tr(&k) * n as f64 + n as f64 * (qerr + tiny)), "K not PSD: {k:?}");
    assert!(
        psd(&t, n, cond * tr(&t) * n as f64 + n as f64 * (qerr + tiny)),
        "Theta not PSD: {t:?}"
    );
    let (mut kd, mut td) = (vec![0.0; n], vec![0.0; n]);
    kernel_diagonal(Some(&mut kd), Some(&mut td), &x, d, &mlp).expect("diagonal after full");
    for i in 0..n {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs()) + 1e-300;
        assert!(close(kd[i], k[i * n + i]) && close(td[i], t[i * n + i]), "diagonal {i}");
        if mlp.parameterization == Parameterization::Ntk {
            assert!(t[i * n + i] >= k[i * n + i] * (1.0 - 1e-12) - qerr - tiny, "Theta < K at {i}");
        }
    }
    if monotone_family(mlp.activation) && n > 0 {
        let factor = 1.0 + case.bump as f64 / 64.0;
        for (sw, sb) in
            [(mlp.sigma_w2 * factor, mlp.sigma_b2), (mlp.sigma_w2, mlp.sigma_b2 * factor + 0.01)]
        {
            let bigger = Mlp { sigma_w2: sw, sigma_b2: sb, ..mlp };
            let mut kb = vec![0.0; n];
            if let Ok(ib) = kernel_diagonal(Some(&mut kb), None, &x, d, &bigger) {
                let berr =
                    scale_err(ib.max_quadrature_error, amp * sw.max(1.0).powi(depth as i32 + 1));
                for i in 0..n {
                    let tol = 1e-12 * kd[i].abs() + qerr + berr + tiny;
                    assert!(
                        kb[i] >= kd[i] - tol,
                        "K(x,x) decreased: {} -> {} ({sw}, {sb})",
                        kd[i],
                        kb[i]
                    );
                }
            }
        }
    }
    Corpus::Keep
});
