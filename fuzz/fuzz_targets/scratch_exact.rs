//! Invariant: `forward`, `param_gradient` and `empirical_ntk` succeed (no panic, no buffer
//! error) with exactly `*_scratch()` elements of scratch, and with one element less return
//! `Error::ShortBuffer { buffer: "scratch", .. }` without touching the outputs.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::{fuzz_target, Corpus};
use ntk_core::backward::{param_gradient, param_gradient_scratch};
use ntk_core::forward::{cache_len, forward, forward_scratch};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::{Error, Real, Spec};
use ntk_fuzz::{to_f32, Caps, Inputs, Net};

const CAPS: Caps = Caps { depth: 6, width: 40, params: 20_000, n: 12 };

#[derive(Arbitrary, Debug)]
struct Case {
    net: Net,
    x1: Inputs,
    x2: Option<Inputs>,
    mode: u8,
    f32: bool,
}

/// `Ok` or a data error (never a buffer error) with the exact scratch; a scratch error with
/// one element less (when any scratch is needed at all).
fn exact<T: Real>(
    needed: usize,
    mut call: impl FnMut(&mut [T]) -> Result<(), Error>,
) -> Result<(), Error> {
    if needed > 0 {
        let mut short = vec![T::ZERO; needed - 1];
        let e = call(&mut short);
        assert!(
            matches!(e, Err(Error::ShortBuffer { buffer: "scratch", needed: n, got }) if n == needed && got == needed - 1),
            "short scratch accepted: {e:?}"
        );
    }
    let mut s = vec![T::ZERO; needed];
    let r = call(&mut s);
    if let Err(e) = &r {
        assert!(
            matches!(e, Error::NonFinite { .. } | Error::NonFiniteInput { .. }),
            "exact scratch: {e:?}"
        );
    }
    r
}

fn check<T: Real>(spec: &Spec<'_>, p: &[T], x1: &[T], x2: Option<&[T]>, mode: OutputMode) {
    let w = spec.widths;
    let d = spec.input_dim();
    let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |x| x.len() / d));
    let mut cache = vec![T::ZERO; cache_len(w, n1)];
    let fwd = exact(forward_scratch(w, n1), |s| forward(spec, p, x1, n1, &mut cache, s));
    if fwd.is_ok() {
        let g = vec![T::ONE; n1 * spec.output_dim()];
        let mut grad = vec![T::ZERO; spec.param_count()];
        let _ = exact(param_gradient_scratch(w, n1), |s| {
            param_gradient(spec, p, x1, n1, &cache, &g, &mut grad, s)
        });
    }
    let mut out = vec![T::ZERO; mode.len(n1, n2, spec.output_dim())];
    let _ = exact(empirical_ntk_scratch(w, n1, x2.map(|_| n2)), |s| {
        empirical_ntk(spec, p, &mut out, x1, x2, mode, s)
    });
}

fuzz_target!(|case: Case| -> Corpus {
    let Some(widths) = case.net.widths(&CAPS) else { return Corpus::Reject };
    let Ok(spec) = case.net.spec(&widths) else { return Corpus::Reject };
    let d = spec.input_dim();
    let Some(x1) = case.x1.build(d, &CAPS) else { return Corpus::Reject };
    let x2 = match &case.x2 {
        Some(i) => match i.build(d, &CAPS) {
            Some(x) => Some(x),
            None => return Corpus::Reject,
        },
        None => None,
    };
    let (n1, n2) =
        (case.x1.n as usize, case.x2.as_ref().map_or(case.x1.n as usize, |i| i.n as usize));
    let mode = match case.mode % 4 {
        0 => OutputMode::Full,
        2 if n1 == n2 => OutputMode::Diagonal,
        3 if n1 == n2 => OutputMode::DiagonalFull,
        _ => OutputMode::Trace,
    };
    let p = case.net.params(&spec);
    if case.f32 {
        let x2 = x2.as_deref().map(to_f32);
        check(&spec, &to_f32(&p), &to_f32(&x1), x2.as_deref(), mode);
    } else {
        check(&spec, &p, &x1, x2.as_deref(), mode);
    }
    Corpus::Keep
});
