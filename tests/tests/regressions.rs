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
