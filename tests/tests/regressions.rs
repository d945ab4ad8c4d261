//! Regression tests for bugs found by the fuzz targets in `fuzz/` (one test per crash, each
//! with a sentence on the bug). They replay the crashing case on stable `cargo test`.

use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::{Activation, Parameterization, Spec};

fn init(spec: &Spec<'_>, seed: u64) -> Vec<f64> {
    let mut p = vec![0.0; spec.param_count()];
    spec.init(&mut p, seed).unwrap();
    p
}

/// fuzz `forward_backward` (crash-fd29bfdc): the empirical NTK of an empty batch (N = 0) in
/// `full` mode with k > 1 sliced `out[b..]` of an empty output and panicked; it now returns
/// an empty kernel.
#[test]
fn empirical_ntk_of_empty_batch_in_full_mode() {
    let widths = [3, 4, 2];
    let spec = Spec::new(&widths, Activation::Relu, 2.0, 0.1, true, Parameterization::Ntk).unwrap();
    let p = init(&spec, 1);
    for mode in
        [OutputMode::Full, OutputMode::Trace, OutputMode::Diagonal, OutputMode::DiagonalFull]
    {
        for x2 in [None, Some(&[][..])] {
            let mut out: [f64; 0] = [];
            let mut s = vec![0.0; empirical_ntk_scratch(&widths, 0, x2.map(|_| 0))];
            empirical_ntk(&spec, &p, &mut out, &[], x2, mode, &mut s).unwrap();
        }
    }
    // A non-empty x1 against an empty x2 (cross kernel with no columns).
    let x1 = [0.5, -1.0, 2.0];
    let mut s = vec![0.0; empirical_ntk_scratch(&widths, 1, Some(0))];
    empirical_ntk(&spec, &p, &mut [], &x1, Some(&[]), OutputMode::Full, &mut s).unwrap();
}

/// fuzz `kernel` (crash-eef30855): the infinite-width ReLU NTK of parallel inputs (d = 1, no
/// bias, depth 35) was not PSD to 1e-9 (lambda_min = -8e-9 lambda_max). Not a coding error but
/// the conditioning of theta = arccos c near c = 1: the computed correlation of parallel inputs
/// is 1 - 1 ulp, theta ~ 1.5e-8, and E[phi' phi'] = (pi - theta) / (2 pi) moves by ~sqrt(eps)
/// per layer. Pinned here: the Cauchy-Schwarz ratio of parallel inputs stays within
/// 2 sqrt(eps) (L + 1) of 1, the bound the fuzz target now uses.
#[test]
fn relu_kernel_of_parallel_inputs_within_sqrt_eps_per_layer() {
    use ntk_core::kernel::{kernel, kernel_scratch, Mlp};
    let depth = 35;
    let mlp = Mlp::new(Activation::Relu, depth, 1.333e-4, 0.0).with_bias(false);
    let x = [0.7, 1.3, 2.0, 0.45];
    let mut t = [0.0; 16];
    let mut s = vec![0.0; kernel_scratch(4, 0, depth)];
    kernel(None, Some(&mut t), &x, None, 1, &mlp, &mut s).unwrap();
    let bound = 2.0 * f64::EPSILON.sqrt() * (depth as f64 + 1.0);
    for i in 0..4 {
        for j in 0..4 {
            let r = t[i * 4 + j] / (t[i * 4 + i] * t[j * 4 + j]).sqrt();
            assert!((r - 1.0).abs() <= bound, "({i},{j}): {r}");
        }
    }
}

/// fuzz `kernel` (crash-8eacc4c9): AB-ReLU with a = b = 1/4 (linear, slope 1/4), no bias,
/// sigma_w2 = 1.24e-4, depth 62: K(x, y) = sigma_w2^(L+1) (1/16)^L <x, y> / d ~ 1e-320, so the
/// plain recursion ran in subnormals and returned a K that was not PSD. The plain kernel is
/// only absolutely accurate there (|error| < 1e-300); the log-domain recursion gives K to 1e-12.
#[test]
fn subnormal_kernel_is_exact_in_the_log_domain() {
    use ntk_core::kernel::{kernel, kernel_scratch, Mlp};
    use ntk_core::scaled::{kernel_scaled, Scaled};
    let (depth, sw, d) = (62, 1.24e-4, 4);
    let mlp = Mlp::new(Activation::AbRelu { a: 0.25, b: 0.25 }, depth, sw, 0.0).with_bias(false);
    let x = [0.3, -1.2, 0.8, 2.0, 1.1, 0.4, -0.7, 0.9];
    let mut k = [0.0; 4];
    let mut s = vec![0.0; kernel_scratch(2, 0, depth)];
    kernel(Some(&mut k), None, &x, None, d, &mlp, &mut s).unwrap();
    assert!(k.iter().all(|v| v.abs() < 1e-300), "{k:?}");
    let mut ks = [Scaled::ZERO; 4];
    kernel_scaled(Some(&mut ks), None, &x, None, d, &mlp).unwrap();
    for i in 0..2 {
        for j in 0..2 {
            let ip: f64 = (0..d).map(|c| x[i * d + c] * x[j * d + c]).sum();
            let want = (depth as f64 + 1.0) * sw.ln()
                + depth as f64 * (1.0f64 / 16.0).ln()
                + (ip.abs() / d as f64).ln();
            let got = ks[i * 2 + j];
            assert_eq!(got.m.signum(), ip.signum());
            assert!(
                (got.ln() - want).abs() < 1e-12 * want.abs(),
                "({i},{j}): {} vs {want}",
                got.ln()
            );
        }
    }
}

/// fuzz `kernel` (crash on inputs of size 1e294, depth 0, standard parameterization): the
/// log-domain kernel formed <x, x> in f64, which overflowed, and returned `Ok` with an infinite
/// mantissa. It now forms inner products over the inputs' exponents: exact scaling
/// K(c x, c y) = c^2 K(x, y) for the linear model.
#[test]
fn log_domain_kernel_of_huge_inputs() {
    use ntk_core::kernel::Mlp;
    use ntk_core::scaled::{kernel_scaled, Scaled};
    let widths = [1usize];
    let mlp = Mlp::new(Activation::Relu, 0, 1.3, 0.0).with_bias(false).standard(&widths);
    let x = [1.0, -2.0, 0.5, 3.0];
    let big: Vec<f64> = x.iter().map(|v| v * 1e294).collect();
    let (mut t1, mut t2) = ([Scaled::ZERO; 1], [Scaled::ZERO; 1]);
    kernel_scaled(None, Some(&mut t1), &x, None, 4, &mlp).unwrap();
    kernel_scaled(None, Some(&mut t2), &big, None, 4, &mlp).unwrap();
    assert!(t2[0].is_finite());
    let want = t1[0].ln() + 2.0 * 1e294f64.ln();
    assert!((t2[0].ln() - want).abs() < 1e-12 * want, "{} vs {want}", t2[0].ln());
}

/// fuzz `kernel` (crash-fdcbb33b): the infinite-width erf NNGP of four parallel inputs (d = 1,
/// norms ~2e10, sigma_w2 = sigma_b2 = 274, standard parameterization, depth 10) was not PSD
/// (K_13 = 0.945 K_11 while K_01, K_03 = K_11 (1 - 3e-6)): the first layer's correlations are
/// 1 - 1e-21, were rounded to within an ulp of 1, and arcsin near 1 turned that rounding into
/// a sqrt(eps) error (5e-9 relative after one layer), which the chaotic phase (chi_1 ~ 7.4
/// here) amplified to 5.5 % by depth 10. The first layer now takes g sin theta from the inputs
/// (for d = 1, q1 q2 - s^2 = sigma_w2 sigma_b2 (x - y)^2 exactly). Pinned: the layer-1 entry
/// against Williams' closed form at that exact covariance (1e-12), then growth by at most
/// 1.3 sigma_w2 per layer, to 6.7e-4 (not 5.5 %) at depth 10.
#[test]
fn erf_kernel_of_parallel_inputs_in_the_chaotic_phase() {
    use ntk_core::kernel::{kernel, kernel_scratch, Mlp};
    let x = [25681532088.94219, 14164520949.898443, 24942408296.165047, 18946966214.790417];
    let (sw, n) = (274.2120393318874, 4);
    let nngp = |depth: usize| {
        let mlp = Mlp::new(Activation::Erf, depth, sw, sw).with_bias(true).standard(&[255]);
        let mut k = vec![0.0; n * n];
        let mut s = vec![0.0; kernel_scratch(n, 0, depth)];
        kernel(Some(&mut k), None, &x, None, 1, &mlp, &mut s).unwrap();
        k
    };
    let dev = |k: &[f64]| (0..n * n).map(|e| (k[e] - k[0]).abs() / k[0]).fold(0.0, f64::max);
    // Layer 1 at the exact covariance: E[erf erf] = (2 / pi) atan2(2 s, D),
    // D^2 = (1 + 2 q1)(1 + 2 q2) - 4 s^2 = 1 + 2 (q1 + q2) + 4 sigma_w2 sigma_b2 (x - y)^2.
    let k1 = nngp(1);
    for (i, j) in [(0, 1), (0, 2), (1, 3)] {
        let (q1, q2, s) = (sw * x[i] * x[i] + sw, sw * x[j] * x[j] + sw, sw * x[i] * x[j] + sw);
        let dd = (1.0 + 2.0 * (q1 + q2) + 4.0 * sw * sw * (x[i] - x[j]).powi(2)).sqrt();
        let want = sw * (2.0 / std::f64::consts::PI) * (2.0 * s).atan2(dd) + sw;
        let got = k1[i * n + j];
        assert!((got - want).abs() <= 1e-12 * want, "({i}, {j}): {got:e} vs {want:e}");
    }
    let mut prev = dev(&k1);
    assert!(prev < 1e-10, "layer 1: {prev:e}");
    for depth in 2..=10 {
        let d = dev(&nngp(depth));
        assert!(d <= 1.3 * sw * prev, "depth {depth}: {d:e} after {prev:e}");
        prev = d;
    }
    assert!(prev < 1e-3, "depth 10: {prev:e}");
}

/// fuzz `kernel` (crash-ed081a8c, CI's 20 s run on 2026-11-22): the log-domain kernel
/// (`scaled::kernel_scaled`) of tanh at sigma_w2 = 3401 (depth 5, standard parameterization)
/// computed (x, y) and (y, x) separately; their quadrature orders differ, and the chaotic phase
/// amplified the difference to 1.6e-11 relative, beyond the target's 1e-12. With x2 = x1 it
/// now computes each pair once and mirrors it, so the kernel is exactly symmetric (as the
/// plain recursion is).
#[test]
fn log_domain_kernel_is_exactly_symmetric() {
    use ntk_core::kernel::Mlp;
    use ntk_core::scaled::{kernel_scaled, Scaled};
    let (n, d) = (2, 5);
    let mut x = vec![0.0; n * d];
    ntk_core::rng::fill_normal(&mut x, 17, 0, 0);
    x.iter_mut().for_each(|v| *v *= 1e-2);
    for act in [Activation::Tanh, Activation::Erf, Activation::Relu] {
        let mlp = Mlp::new(act, 5, 3401.0190446915526, 44.0).with_bias(true).standard(&[176]);
        let (mut k, mut t) = (vec![Scaled::ZERO; n * n], vec![Scaled::ZERO; n * n]);
        kernel_scaled(Some(&mut k), Some(&mut t), &x, None, d, &mlp).unwrap();
        for i in 0..n {
            for j in 0..n {
                assert_eq!(k[i * n + j], k[j * n + i], "{act:?} K ({i}, {j})");
                assert_eq!(t[i * n + j], t[j * n + i], "{act:?} Theta ({i}, {j})");
            }
        }
    }
}
