//! The empirical NTK of wide random networks converges to the analytic infinite-width NTK
//! (DESIGN §4): width 4096, mean over 16 seeds (`SEEDS` overrides; the error falls as 1/sqrt(seeds): 5e-3 at 48), relative Frobenius error <= 2e-2 for every
//! activation and both parameterizations.

use ntk_core::activation::ALL;
use ntk_core::kernel::{kernel, kernel_scratch, Mlp};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::{Parameterization, Spec};
use ntk_tests::{random_inputs, rel_err, test_seed};

#[test]
fn wide_empirical_ntk_matches_analytic() {
    let seed = test_seed();
    let (n, d, width, depth) = (6, 8, 4096, 2);
    let xs = random_inputs(n, d, seed);
    // Inputs of norm sqrt(d): q^1 = sigma_w2 + sigma_b2 (order one).
    let x: Vec<f64> = xs.concat();
    let mut widths = vec![d];
    widths.extend(std::iter::repeat_n(width, depth));
    widths.push(1);
    for act in ALL {
        for param in [Parameterization::Ntk, Parameterization::Standard] {
            let spec = Spec::new(&widths, act, 1.6, 0.2, true, param).unwrap();
            let mut want = vec![0.0; n * n];
            let mut s = vec![0.0; kernel_scratch(n, 0, depth)];
            kernel(None, Some(&mut want), &x, None, d, &Mlp::from_spec(&spec), &mut s).unwrap();
            let mut mean = vec![0.0; n * n];
            let seeds: u64 = std::env::var("SEEDS").map_or(16, |v| v.parse().unwrap());
            let mut p = vec![0.0f64; spec.param_count()];
            let mut out = vec![0.0; n * n];
            let mut s = vec![0.0; empirical_ntk_scratch(&widths, n, None)];
            for r in 0..seeds {
                spec.init(&mut p, seed + 100 * r).unwrap();
                empirical_ntk(&spec, &p, &mut out, &x, None, OutputMode::Trace, &mut s).unwrap();
                for (m, o) in mean.iter_mut().zip(&out) {
                    *m += o / seeds as f64;
                }
            }
            let e = rel_err(&mean, &want);
            assert!(e <= 2e-2, "{act} {param}: relative Frobenius error {e}");
        }
    }
}
