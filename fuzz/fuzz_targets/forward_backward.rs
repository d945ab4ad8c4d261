//! Invariant: forward, backprop and the empirical NTK never panic on any network or input
//! (extreme sigma_w2 / sigma_b2, depth up to 1000, NaN / inf data or parameters), and every
//! `Ok` result is finite: a NaN or infinity only ever comes with an `Error`. The same holds for
//! the block floating point NTK (`ntk_core::scaled`), whose mantissas are always finite.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::{fuzz_target, Corpus};
use ntk_core::backward::{loss_and_gradient, param_gradient, param_gradient_scratch, Loss};
use ntk_core::forward::{cache_len, forward, forward_scratch, output};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::scaled::{empirical_ntk_scaled, empirical_ntk_scaled_scratch, Scaled};
use ntk_core::{Error, Real, Spec};
use ntk_fuzz::{to_f32, Caps, Inputs, Net};

const CAPS: Caps = Caps { depth: 1000, width: 48, params: 60_000, n: 6 };

#[derive(Arbitrary, Debug)]
struct Case {
    net: Net,
    x: Inputs,
    cross_entropy: bool,
    f32: bool,
}

/// Errors a call with exactly sized buffers may return.
fn data_error(e: &Error) -> bool {
    matches!(e, Error::NonFinite { .. } | Error::NonFiniteInput { .. })
}

fn check<T: Real>(spec: &Spec<'_>, p: &[T], x: &[T], n: usize, ce: bool) {
    let w = spec.widths;
    let mut cache = vec![T::ZERO; cache_len(w, n)];
    let mut s = vec![T::ZERO; forward_scratch(w, n)];
    match forward(spec, p, x, n, &mut cache, &mut s) {
        Ok(()) => assert!(cache.iter().all(|v| v.is_finite()), "forward: Ok with non-finite"),
        Err(e) => {
            assert!(data_error(&e), "forward: {e:?}");
            return;
        }
    }
    if n > 0 {
        let f = output(spec, &cache, n).to_vec();
        let y: Vec<T> = (0..f.len()).map(|i| T::from_f64((i % 2) as f64)).collect();
        let mut g = vec![T::ZERO; f.len()];
        let loss = if ce { Loss::CrossEntropy } else { Loss::Mse };
        let l = loss_and_gradient(loss, &mut g, &f, &y, n);
        if l.is_finite() && g.iter().all(|v| v.is_finite()) {
            let mut grad = vec![T::ZERO; spec.param_count()];
            let mut s = vec![T::ZERO; param_gradient_scratch(w, n)];
            match param_gradient(spec, p, x, n, &cache, &g, &mut grad, &mut s) {
                Ok(()) => {
                    assert!(grad.iter().all(|v| v.is_finite()), "gradient: Ok with non-finite")
                }
                Err(e) => assert!(data_error(&e), "gradient: {e:?}"),
            }
        }
    }
    for mode in [OutputMode::Trace, OutputMode::Full, OutputMode::Diagonal] {
        let k = spec.output_dim();
        let mut out = vec![T::ZERO; mode.len(n, n, k)];
        let mut s = vec![T::ZERO; empirical_ntk_scratch(w, n, None)];
        match empirical_ntk(spec, p, &mut out, x, None, mode, &mut s) {
            Ok(()) => assert!(out.iter().all(|v| v.is_finite()), "ntk: Ok with non-finite"),
            Err(e) => assert!(data_error(&e), "ntk {mode:?}: {e:?}"),
        }
    }
}

fuzz_target!(|case: Case| -> Corpus {
    let Some(widths) = case.net.widths(&CAPS) else { return Corpus::Reject };
    let Ok(spec) = case.net.spec(&widths) else { return Corpus::Keep };
    let Some(x) = case.x.build(spec.input_dim(), &CAPS) else { return Corpus::Reject };
    let n = case.x.n as usize;
    // Keep the work per case bounded: deep nets get small batches.
    if n * spec.param_count() > 120_000 {
        return Corpus::Reject;
    }
    let p = case.net.params(&spec);
    if !case.f32 {
        let mode = if case.cross_entropy { OutputMode::Full } else { OutputMode::Trace };
        let mut out = vec![Scaled::ZERO; mode.len(n, n, spec.output_dim())];
        let mut s = vec![0.0; empirical_ntk_scaled_scratch(&widths, n, None)];
        match empirical_ntk_scaled(&spec, &p, &mut out, &x, None, mode, &mut s) {
            Ok(()) => assert!(out.iter().all(|v| v.is_finite()), "scaled: Ok with non-finite"),
            Err(e) => assert!(data_error(&e), "scaled: {e:?}"),
        }
    }
    if case.f32 {
        check(&spec, &to_f32(&p), &to_f32(&x), n, case.cross_entropy);
    } else {
        check(&spec, &p, &x, n, case.cross_entropy);
    }
    Corpus::Keep
});
