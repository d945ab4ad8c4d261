//! Extreme initializations: the block floating point NTK (`ntk_core::scaled`) against the
//! plain computation where both are finite, and against exact ReLU scaling laws where
//! Theta over- or underflows f64.

use ntk_core::activation::ALL;
use ntk_core::forward::{cache_len, forward, forward_scratch};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::scaled::{
    empirical_ntk_scaled, empirical_ntk_scaled_scratch, forward_scaled, forward_scaled_scratch,
    Scaled,
};
use ntk_core::{Activation, Error, Parameterization, Spec};
use ntk_tests::*;

const MODES: [OutputMode; 4] =
    [OutputMode::Full, OutputMode::Trace, OutputMode::Diagonal, OutputMode::DiagonalFull];

fn init(spec: &Spec<'_>, seed: u64) -> Vec<f64> {
    let mut p = vec![0.0; spec.param_count()];
    spec.init(&mut p, seed).unwrap();
    p
}

fn plain(
    spec: &Spec<'_>,
    p: &[f64],
    x1: &[f64],
    x2: Option<&[f64]>,
    mode: OutputMode,
) -> Result<Vec<f64>, Error> {
    let d = spec.input_dim();
    let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |x| x.len() / d));
    let mut out = vec![0.0; mode.len(n1, n2, spec.output_dim())];
    let mut s = vec![0.0; empirical_ntk_scratch(spec.widths, n1, x2.map(|_| n2))];
    empirical_ntk(spec, p, &mut out, x1, x2, mode, &mut s).map(|()| out)
}

fn scaled(
    spec: &Spec<'_>,
    p: &[f64],
    x1: &[f64],
    x2: Option<&[f64]>,
    mode: OutputMode,
) -> Vec<Scaled> {
    let d = spec.input_dim();
    let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |x| x.len() / d));
    let mut out = vec![Scaled::ZERO; mode.len(n1, n2, spec.output_dim())];
    let mut s = vec![0.0; empirical_ntk_scaled_scratch(spec.widths, n1, x2.map(|_| n2))];
    empirical_ntk_scaled(spec, p, &mut out, x1, x2, mode, &mut s).unwrap();
    out
}

/// Where the plain NTK is finite, the scaled one equals it: normwise relative 1e-12, for every
/// activation, parameterization, bias setting, output mode and for cross kernels.
#[test]
fn scaled_ntk_matches_plain_where_finite() {
    let seed = test_seed();
    let widths = [3, 9, 7, 8, 2];
    let x1 = random_inputs(4, 3, seed).concat();
    let x2 = random_inputs(3, 3, seed + 1).concat();
    for act in ALL {
        for par in [Parameterization::Ntk, Parameterization::Standard] {
            for (sw, sb, bias) in [(0.3, 0.0, false), (2.0, 0.2, true), (7.5, 1.3, true)] {
                let spec = Spec::new(&widths, act, sw, sb, bias, par).unwrap();
                let p = init(&spec, seed);
                for mode in MODES {
                    let cross = matches!(mode, OutputMode::Full | OutputMode::Trace);
                    for x2 in [None, Some(&x2[..])].into_iter().filter(|x| cross || x.is_none()) {
                        let want = plain(&spec, &p, &x1, x2, mode).unwrap();
                        let got: Vec<f64> =
                            scaled(&spec, &p, &x1, x2, mode).iter().map(|v| v.to_f64()).collect();
                        let e = rel_err(&got, &want);
                        assert!(e < 1e-12, "{spec:?} {mode:?} cross={}: {e}", x2.is_some());
                    }
                }
            }
        }
    }
}

/// The scaled forward pass reproduces the plain pre-activations (relative 1e-14 per layer).
#[test]
fn scaled_forward_matches_plain() {
    let seed = test_seed();
    let widths = [5, 11, 11, 3];
    let n = 4;
    let x = random_inputs(n, 5, seed).concat();
    for act in ALL {
        let spec = Spec::new(&widths, act, 3.0, 0.5, true, Parameterization::Standard).unwrap();
        let p = init(&spec, seed);
        let mut cache = vec![0.0; cache_len(&widths, n)];
        let mut s = vec![0.0; forward_scratch(&widths, n)];
        forward(&spec, &p, &x, n, &mut cache, &mut s).unwrap();
        let mut mant = vec![0.0; cache_len(&widths, n)];
        let mut exps = vec![0.0; n * spec.layers()];
        let mut s = vec![0.0; forward_scaled_scratch(&widths, n)];
        forward_scaled(&spec, &p, &x, n, &mut mant, &mut exps, &mut s).unwrap();
        let mut off = 0;
        for i in 0..spec.layers() {
            for r in 0..n {
                let e = exps[i * n + r] as i32;
                for j in 0..widths[i + 1] {
                    let (a, b) =
                        (cache[off + r * widths[i + 1] + j], mant[off + r * widths[i + 1] + j]);
                    let b = libm_scalbn(b, e);
                    assert!(
                        (a - b).abs() <= 1e-14 * a.abs().max(1e-300),
                        "{act:?} layer {i}: {a} vs {b}"
                    );
                }
            }
            off += n * widths[i + 1];
        }
    }
}

fn libm_scalbn(x: f64, e: i32) -> f64 {
    x * 2f64.powi(e)
}

/// `ln Theta` from a sum of terms given by their logarithms (log-sum-exp), for positive terms.
fn ln_sum(terms: &[f64]) -> f64 {
    let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
}

/// NTK parameterization, ReLU family, sigma_b2 = 0: every layer's term scales as
/// sigma_w2^(L+1), so Theta(s) = (s / 2)^(L+1) Theta(2) exactly. At depth 1000 and
/// s = 1e-4 or 1e4 (Theta ~ 10^-3700 or 10^3700, where the plain NTK underflows to 0 or
/// overflows into an error), `ln Theta` agrees within 1e-10.
#[test]
fn ntk_param_relu_scaling_law_at_depth_1000() {
    let seed = test_seed();
    let depth = 1000;
    let mut widths = vec![16; depth + 2];
    widths[0] = 6;
    widths[depth + 1] = 1;
    let x = random_inputs(2, 6, seed).concat();
    for act in [
        Activation::Relu,
        Activation::LeakyRelu { alpha: 0.2 },
        Activation::AbRelu { a: -0.5, b: 1.25 },
    ] {
        let base = Spec::new(&widths, act, 2.0, 0.0, true, Parameterization::Ntk).unwrap();
        let p = init(&base, seed);
        // For the AB-ReLU, 2 is not the edge of chaos; it still must be finite at s = 2.
        let reference = plain(&base, &p, &x, None, OutputMode::Trace);
        let Ok(reference) = reference else { panic!("{act:?}: plain NTK at s = 2: {reference:?}") };
        assert!(reference.iter().all(|v| *v != 0.0), "{act:?}: dead network; pick another seed");
        for s in [1e-4, 0.37, 1e4] {
            let spec = Spec { sigma_w2: s, ..base };
            let got = scaled(&spec, &p, &x, None, OutputMode::Trace);
            for (g, r) in got.iter().zip(&reference) {
                assert_eq!(g.m.signum(), r.signum());
                let want = (depth as f64 + 1.0) * (s / 2.0).ln() + r.abs().ln();
                assert!((g.ln() - want).abs() < 1e-10, "{act:?} s={s}: ln {} vs {want}", g.ln());
            }
            // Beyond f64: the plain NTK overflows (an error) or underflows to zero.
            if s != 0.37 {
                match plain(&spec, &p, &x, None, OutputMode::Trace) {
                    Err(Error::NonFinite { .. }) => assert!(s > 1.0),
                    Ok(v) => assert!(s < 1.0 && v.iter().all(|t| *t == 0.0), "s={s}: {v:?}"),
                    Err(e) => panic!("s={s}: {e:?}"),
                }
            }
        }
    }
}

/// Standard parameterization, ReLU, sigma_b2 = 0 with trainable (zero) biases: with
/// t = s / 2, Theta(s) = t^L W(2) + sum_{l=1}^{L+1} t^(L+1-l) B_l(2), where W(2) is the
/// weight part and B_l(2) layer l's bias part of Theta at s = 2 (from the explicit Jacobian
/// of ntk-tests). Depth 200, s from 1e-4 to 1e4: `ln Theta` within 1e-10.
#[test]
fn standard_param_relu_scaling_law_with_bias_gradients() {
    let seed = test_seed();
    let depth = 200;
    let mut widths = vec![8; depth + 2];
    widths[0] = 5;
    widths[depth + 1] = 1;
    let base =
        Spec::new(&widths, Activation::Relu, 2.0, 0.0, true, Parameterization::Standard).unwrap();
    let p2 = init(&base, seed);
    let x = random_inputs(1, 5, seed).concat();
    let jac = ref_jacobian(&base, &p2, &x).pop().unwrap();
    let sq = |r: std::ops::Range<usize>| jac[r].iter().map(|v| v * v).sum::<f64>();
    let mut w2 = 0.0;
    let mut b2 = Vec::new();
    for i in 0..base.layers() {
        let (wo, bo) = base.offsets(i);
        w2 += sq(wo..bo);
        b2.push(sq(bo..bo + widths[i + 1]));
    }
    assert!(w2 > 0.0);
    for s in [1e-4, 0.01, 1.0, 2.0, 3.0, 100.0, 1e4] {
        // Standard parameterization stores sqrt(s / n) W: rescale the unit draw.
        let spec = Spec { sigma_w2: s, ..base };
        let p = init(&spec, seed);
        let lt = (s / 2.0).ln();
        let mut terms = vec![depth as f64 * lt + w2.ln()];
        for (l, b) in b2.iter().enumerate() {
            if *b > 0.0 {
                terms.push((depth - l) as f64 * lt + b.ln());
            }
        }
        let want = ln_sum(&terms);
        let got = scaled(&spec, &p, &x, None, OutputMode::Trace)[0];
        assert!((got.ln() - want).abs() < 1e-10, "s={s}: ln {} vs {want}", got.ln());
    }
}

mod infinite {
    use super::*;
    use ntk_core::kernel::{kernel, kernel_scratch, Mlp};
    use ntk_core::scaled::kernel_scaled;

    fn plain_kernel(
        mlp: &Mlp<'_>,
        x1: &[f64],
        x2: Option<&[f64]>,
        d: usize,
    ) -> Result<(Vec<f64>, Vec<f64>), Error> {
        let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |x| x.len() / d));
        let (mut k, mut t) = (vec![0.0; n1 * n2], vec![0.0; n1 * n2]);
        let mut s = vec![0.0; kernel_scratch(n1, if x2.is_some() { n2 } else { 0 }, mlp.depth)];
        kernel(Some(&mut k), Some(&mut t), x1, x2, d, mlp, &mut s)?;
        Ok((k, t))
    }

    fn scaled_kernel(
        mlp: &Mlp<'_>,
        x1: &[f64],
        x2: Option<&[f64]>,
        d: usize,
    ) -> (Vec<Scaled>, Vec<Scaled>) {
        let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |x| x.len() / d));
        let (mut k, mut t) = (vec![Scaled::ZERO; n1 * n2], vec![Scaled::ZERO; n1 * n2]);
        kernel_scaled(Some(&mut k), Some(&mut t), x1, x2, d, mlp).unwrap();
        (k, t)
    }

    /// Where the plain recursion is finite, the scaled one equals it entrywise within 1e-12
    /// (relative), for every activation, both parameterizations, with and without biases.
    #[test]
    fn scaled_kernel_matches_plain_where_finite() {
        let seed = test_seed();
        let d = 4;
        let x1 = random_inputs(4, d, seed).concat();
        let x2 = random_inputs(3, d, seed + 1).concat();
        let widths = [50usize];
        for act in ALL {
            for standard in [false, true] {
                for (sw, sb, bias) in [(0.7, 0.0, false), (1.8, 0.3, true), (4.0, 1.0, true)] {
                    let mut mlp = Mlp::new(act, 5, sw, sb).with_bias(bias);
                    if standard {
                        mlp = mlp.standard(&widths);
                    }
                    for x2 in [None, Some(&x2[..])] {
                        let (k, t) = plain_kernel(&mlp, &x1, x2, d).unwrap();
                        let (ks, ts) = scaled_kernel(&mlp, &x1, x2, d);
                        for (a, b) in k.iter().chain(&t).zip(ks.iter().chain(&ts)) {
                            let b = b.to_f64();
                            assert!(
                                (a - b).abs() <= 1e-12 * a.abs().max(1e-300),
                                "{mlp:?}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// ReLU, NTK parameterization, sigma_b2 = 0: K(x, x) = (s / 2)^L s ||x||^2 / d and
    /// Theta(x, x) = (L + 1) K(x, x) exactly; at depth 1000 and s = 1e-4, 1e4 (10^-+3700) the
    /// logarithms agree within 1e-9, where the plain recursion fails. Off the diagonal, the
    /// correlation K(x, y) / sqrt(K(x, x) K(y, y)) does not depend on s: it equals the plain
    /// value at s = 2 within 1e-12.
    #[test]
    fn relu_kernel_scaling_at_depth_1000() {
        let seed = test_seed();
        let (d, depth) = (5, 1000);
        let x = random_inputs(2, d, seed).concat();
        let base = Mlp::new(Activation::Relu, depth, 2.0, 0.0);
        let (k2, _) = plain_kernel(&base, &x, None, d).unwrap();
        let corr = |k: &[f64]| k[1] / (k[0] * k[3]).sqrt();
        for s in [1e-4, 1e4] {
            let mlp = Mlp { sigma_w2: s, ..base };
            assert!(
                plain_kernel(&mlp, &x, None, d).map_or(true, |(k, _)| k[0] == 0.0),
                "plain finite at {s}"
            );
            let (k, t) = scaled_kernel(&mlp, &x, None, d);
            let norm2: f64 = x[..d].iter().map(|v| v * v).sum();
            let ln_k = depth as f64 * (s / 2.0).ln() + (s * norm2 / d as f64).ln();
            assert!((k[0].ln() - ln_k).abs() < 1e-9, "s={s}: ln K {} vs {ln_k}", k[0].ln());
            let ln_t = ln_k + (depth as f64 + 1.0).ln();
            assert!((t[0].ln() - ln_t).abs() < 1e-9, "s={s}: ln Theta {} vs {ln_t}", t[0].ln());
            let c = (k[1] / (k[0] * k[3]).sqrt()).to_f64();
            assert!((c - corr(&k2)).abs() < 1e-12, "s={s}: correlation {c} vs {}", corr(&k2));
        }
    }
}

/// Measurement for docs/robustness.md (opt-in: `cargo test -p ntk-tests --test extreme --
/// --ignored --nocapture`): for each sigma_w2, the largest depth (of a grid up to 1000, width
/// 32, two inputs, sigma_b2 = 0 with biases) at which the plain forward pass and NTK give a
/// finite nonzero result, and the same for the scaled NTK and for the infinite-width
/// recursions, plain and scaled.
#[test]
#[ignore]
fn measure_finite_range() {
    use ntk_core::kernel::{kernel, kernel_scratch, Mlp};
    use ntk_core::scaled::kernel_scaled;
    const DEPTHS: [usize; 18] =
        [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000];
    let x = random_inputs(2, 16, 1).concat();
    println!("| activation | param | sigma_w2 | forward | NTK | scaled NTK | kernel | scaled kernel | ln Theta(x,x) at 1000 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for act in [Activation::Relu, Activation::Tanh] {
        for par in [Parameterization::Standard, Parameterization::Ntk] {
            for sw in [1e-4, 1e-2, 0.5, 1.0, 2.0, 4.0, 10.0, 100.0, 1e4] {
                let mut best = [0usize; 5];
                let mut ln_last = f64::NAN;
                for depth in DEPTHS {
                    let mut widths = vec![32; depth + 2];
                    widths[0] = 16;
                    widths[depth + 1] = 1;
                    let spec = Spec::new(&widths, act, sw, 0.0, true, par).unwrap();
                    let p = init(&spec, 7);
                    let mut cache = vec![0.0; cache_len(&widths, 2)];
                    let mut s = vec![0.0; forward_scratch(&widths, 2)];
                    let fwd = forward(&spec, &p, &x, 2, &mut cache, &mut s).is_ok()
                        && ntk_core::forward::output(&spec, &cache, 2).iter().all(|v| *v != 0.0);
                    let nt = plain(&spec, &p, &x, None, OutputMode::Trace)
                        .is_ok_and(|v| v.iter().all(|t| *t != 0.0 && t.is_finite()));
                    let sc = scaled(&spec, &p, &x, None, OutputMode::Trace);
                    let sc_ok = sc.iter().all(|t| t.is_finite() && t.m != 0.0);
                    let mut mlp = Mlp::new(act, depth, sw, 0.0);
                    let w = [32usize];
                    if par == Parameterization::Standard {
                        mlp = mlp.standard(&w);
                    }
                    let (mut k, mut t) = ([0.0; 4], [0.0; 4]);
                    let mut ks = vec![0.0; kernel_scratch(2, 0, depth)];
                    let kp = kernel(Some(&mut k), Some(&mut t), &x, None, 16, &mlp, &mut ks)
                        .is_ok_and(|_| t.iter().all(|v| *v != 0.0));
                    let (mut k2, mut t2) = ([Scaled::ZERO; 4], [Scaled::ZERO; 4]);
                    let kss = kernel_scaled(Some(&mut k2), Some(&mut t2), &x, None, 16, &mlp)
                        .is_ok_and(|_| t2.iter().all(|v| v.m != 0.0 && v.is_finite()));
                    for (b, ok) in best.iter_mut().zip([fwd, nt, sc_ok, kp, kss]) {
                        if ok {
                            *b = depth;
                        }
                    }
                    ln_last = sc[0].ln();
                }
                println!(
                    "| {act} | {par} | {sw:e} | {} | {} | {} | {} | {} | {ln_last:.1} |",
                    best[0], best[1], best[2], best[3], best[4]
                );
            }
        }
    }
}
