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
