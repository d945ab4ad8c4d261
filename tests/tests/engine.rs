//! The parallel engine of the CLI gives the core's single-thread NTK bit for bit, for any
//! thread count, in every output mode (N not a multiple of the band size).

use ntk_cli::engine::par_empirical_ntk;
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::{Activation, Parameterization, Spec};
use ntk_tests::{random_inputs, test_seed};

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// Engine calls nested in a parallel loop (as `ntk drift` trains its cells in parallel, each
/// computing NTKs): every call's thread team shares the busy pool, and the results are the
/// core's bits.
#[test]
fn nested_engine_calls_share_the_pool() {
    use rayon::prelude::*;
    let widths = [5usize, 48, 48, 2];
    let spec = Spec::new(&widths, Activation::Relu, 2.0, 0.1, true, Parameterization::Ntk).unwrap();
    let x = random_inputs(33, 5, test_seed()).concat();
    let nets: Vec<Vec<f64>> = (0..6u64)
        .map(|s| {
            let mut p = vec![0.0; spec.param_count()];
            spec.init(&mut p, s).unwrap();
            p
        })
        .collect();
    let want: Vec<Vec<f64>> = nets
        .iter()
        .map(|p| {
            let mut k = vec![0.0; OutputMode::Trace.len(33, 33, 2)];
            let mut s = vec![0.0; empirical_ntk_scratch(&widths, 33, None)];
            empirical_ntk(&spec, p, &mut k, &x, None, OutputMode::Trace, &mut s).unwrap();
            k
        })
        .collect();
    for threads in [2, 3] {
        let got: Vec<Vec<f64>> = in_pool(threads, || {
            nets.par_iter()
                .map(|p| {
                    (0..3)
                        .map(|_| par_empirical_ntk(&spec, p, &x, None, OutputMode::Trace).unwrap())
                        .next_back()
                        .unwrap()
                })
                .collect()
        });
        for (g, w) in got.iter().zip(&want) {
            assert!(g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()), "threads {threads}");
        }
    }
}

/// Calls of different shapes, modes and precisions while buffers are kept between calls
/// ([`ntk_cli::recycle`]: a recycled buffer holds its last values, NaN in debug builds) give
/// the core's bits: no call reads what it did not write.
#[test]
fn recycled_buffers_change_no_bits() {
    let _keep = ntk_cli::recycle::Keep::new();
    let seed = test_seed();
    for (round, &(widths, n, mode)) in [
        (&[4usize, 30, 30, 2][..], 21, OutputMode::Full),
        (&[4, 64, 64, 64, 1][..], 40, OutputMode::Trace),
        (&[4, 16, 3][..], 9, OutputMode::Diagonal),
        (&[4, 64, 64, 64, 1][..], 33, OutputMode::Trace),
        // Wide layers against few inputs: column bands with 2 threads.
        (&[4, 300, 260, 3][..], 20, OutputMode::Trace),
    ]
    .iter()
    .enumerate()
    {
        let spec = Spec::new(widths, Activation::Tanh, 1.5, 0.2, true, Parameterization::Standard)
            .unwrap();
        let mut p = vec![0.0; spec.param_count()];
        spec.init(&mut p, seed + round as u64).unwrap();
        let x = random_inputs(n, 4, seed + 10 + round as u64).concat();
        let k = widths[widths.len() - 1];
        // A cross kernel against a third of the inputs (but in diagonal mode), then the
        // symmetric one.
        let x2 = (mode != OutputMode::Diagonal).then_some(&x[..n / 3 * 4]);
        for x2o in [x2, None] {
            let n2 = x2o.map_or(n, |x2| x2.len() / 4);
            let mut want = vec![0.0; mode.len(n, n2, k)];
            let mut s = vec![0.0; empirical_ntk_scratch(widths, n, x2o.map(|_| n2))];
            empirical_ntk(&spec, &p, &mut want, &x, x2o, mode, &mut s).unwrap();
            for threads in [1, 2] {
                let got = in_pool(threads, || par_empirical_ntk(&spec, &p, &x, x2o, mode).unwrap());
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "round {round}, cross {}, threads {threads}",
                    x2o.is_some()
                );
            }
        }
        for threads in [1, 2] {
            // The same call in f32 uses (and leaves) buffers of the other type.
            let (p32, x32): (Vec<f32>, Vec<f32>) =
                (p.iter().map(|&v| v as f32).collect(), x.iter().map(|&v| v as f32).collect());
            in_pool(threads, || par_empirical_ntk(&spec, &p32, &x32, None, mode).unwrap());
        }
    }
}

#[test]
fn parallel_engine_is_bit_identical_to_core() {
    engine_matches_core(&[6, 40, 33, 3], 70, 37);
}

/// Few inputs against wide layers: with several threads the layer products are split by
/// column bands (each thread reads its share of the weights), same bits.
#[test]
fn wide_layers_split_by_columns_keep_the_bits() {
    engine_matches_core(&[6, 300, 260, 3], 20, 13);
}

/// The engine against the core's NTK, bit for bit, with 1, 2 and 3 threads: both activations,
/// every output mode, x2 = x1 and cross kernels.
fn engine_matches_core(widths: &[usize], n1: usize, n2: usize) {
    let seed = test_seed();
    let x1 = random_inputs(n1, 6, seed).concat();
    let x2 = random_inputs(n2, 6, seed + 1).concat();
    for act in [Activation::Relu, Activation::Tanh] {
        let spec = Spec::new(widths, act, 1.8, 0.2, true, Parameterization::Standard).unwrap();
        let mut p = vec![0.0f64; spec.param_count()];
        spec.init(&mut p, seed).unwrap();
        for mode in
            [OutputMode::Full, OutputMode::Trace, OutputMode::Diagonal, OutputMode::DiagonalFull]
        {
            for cross in [false, true] {
                if cross && matches!(mode, OutputMode::Diagonal | OutputMode::DiagonalFull) {
                    continue;
                }
                let x2o = if cross { Some(&x2[..]) } else { None };
                let m2 = if cross { n2 } else { n1 };
                let mut want = vec![0.0; mode.len(n1, m2, 3)];
                let mut s = vec![0.0; empirical_ntk_scratch(widths, n1, x2o.map(|_| m2))];
                empirical_ntk(&spec, &p, &mut want, &x1, x2o, mode, &mut s).unwrap();
                for threads in [1, 2, 3] {
                    let got =
                        in_pool(threads, || par_empirical_ntk(&spec, &p, &x1, x2o, mode).unwrap());
                    assert!(
                        got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{act} {mode:?} cross={cross} threads={threads}"
                    );
                }
            }
        }
    }
}
