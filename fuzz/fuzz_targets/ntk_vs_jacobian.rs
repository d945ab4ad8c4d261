//! Invariant: on small networks at moderate scales (variances and input scales 0 or in
//! [1e-8, 1e8], so nothing underflows into subnormals) the structured-derivatives empirical
//! NTK equals the explicit Jacobian product J(x1) J(x2)^T (per-sample backprop, ntk-tests'
//! reference) in every output mode, entrywise within 1e-10 of ||J_i|| ||J_j||.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::{fuzz_target, Corpus};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_fuzz::{Caps, Inputs, Net};
use ntk_tests::ref_jacobian;

const CAPS: Caps = Caps { depth: 4, width: 7, params: 400, n: 4 };
/// Entrywise tolerance relative to the product of the Jacobian row norms.
const TOL: f64 = 1e-10;

#[derive(Arbitrary, Debug)]
struct Case {
    net: Net,
    x1: Inputs,
    x2: Option<Inputs>,
    mode: u8,
}

fn rows(x: &[f64], d: usize) -> Vec<Vec<f64>> {
    x.chunks(d).map(<[f64]>::to_vec).collect()
}

fuzz_target!(|case: Case| -> Corpus {
    let Some(widths) = case.net.widths(&CAPS) else { return Corpus::Reject };
    let Ok(spec) = case.net.spec(&widths) else { return Corpus::Reject };
    let moderate = |v: f64| v == 0.0 || (1e-8..=1e8).contains(&v.abs());
    let scales = [spec.sigma_w2, spec.sigma_b2, case.x1.scale.get()];
    if !scales.into_iter().chain(case.x2.as_ref().map(|i| i.scale.get())).all(moderate) {
        return Corpus::Reject;
    }
    let d = spec.input_dim();
    let k = spec.output_dim();
    let Some(x1) = case.x1.build(d, &CAPS) else { return Corpus::Reject };
    let x2 = match &case.x2 {
        Some(i) => match i.build(d, &CAPS) {
            Some(x) => Some(x),
            None => return Corpus::Reject,
        },
        None => None,
    };
    if case.net.tweak.is_some() || !x1.iter().chain(x2.iter().flatten()).all(|v| v.is_finite()) {
        return Corpus::Reject;
    }
    // Subnormal inputs are outside the plain method's relative accuracy: the structured NTK
    // multiplies Gram factors of the layer inputs and signals, and with subnormal inputs
    // (tanh, sigma_w2 ~ 2e4, x = 4e-314: crash-74be7e0c, also before 2026-11-22) a factor keeps
    // only a few significant bits while the explicit J J^T does not (2e-7 relative on entries
    // ~6e-301). Left as a documented limitation (docs/robustness.md).
    if x1.iter().chain(x2.iter().flatten()).any(|v| v.is_subnormal()) {
        return Corpus::Reject;
    }
    let (n1, n2) = (x1.len() / d, x2.as_ref().map_or(x1.len() / d, |x| x.len() / d));
    let mode = match case.mode % 4 {
        0 => OutputMode::Full,
        1 => OutputMode::Trace,
        2 if n1 == n2 => OutputMode::Diagonal,
        3 if n1 == n2 => OutputMode::DiagonalFull,
        _ => OutputMode::Trace,
    };
    let p = case.net.params(&spec);
    let mut out = vec![0.0; mode.len(n1, n2, k)];
    let mut s = vec![0.0; empirical_ntk_scratch(&widths, n1, x2.as_ref().map(|_| n2))];
    if empirical_ntk(&spec, &p, &mut out, &x1, x2.as_deref(), mode, &mut s).is_err() {
        return Corpus::Keep;
    }
    let r1 = rows(&x1, d);
    let r2 = x2.as_ref().map_or_else(|| r1.clone(), |x| rows(x, d));
    let j1: Vec<_> = r1.iter().map(|x| ref_jacobian(&spec, &p, x)).collect();
    let j2: Vec<_> = r2.iter().map(|x| ref_jacobian(&spec, &p, x)).collect();
    let reference = ntk_tests::ref_ntk(&spec, &p, &r1, &r2, mode);
    // Euclidean norm without overflow of the squares (inputs may be ~1e200).
    let norm = |v: &[f64]| {
        let mx = v.iter().fold(0.0f64, |m, a| m.max(a.abs()));
        if mx == 0.0 || !mx.is_finite() {
            return mx;
        }
        mx * v.iter().map(|a| (a / mx) * (a / mx)).sum::<f64>().sqrt()
    };
    // Scale of entry (i, a; j, b): ||J_a(x_i)|| ||J_b(x_j)||, maximised over the outputs
    // that the mode averages.
    let scale = |i: usize, j: usize| {
        let m1 = j1[i].iter().map(|r| norm(r)).fold(0.0, f64::max);
        let m2 = j2[j].iter().map(|r| norm(r)).fold(0.0, f64::max);
        m1 * m2
    };
    for (idx, (&got, &want)) in out.iter().zip(&reference).enumerate() {
        let (i, j) = match mode {
            OutputMode::Full => (idx / (n2 * k) / k, idx % (n2 * k) / k),
            OutputMode::Trace => (idx / n2, idx % n2),
            OutputMode::Diagonal => (idx, idx),
            OutputMode::DiagonalFull => (idx / (k * k), idx / (k * k)),
        };
        // Where the explicit J J^T itself overflows (NaN from inf - inf or 0 x inf in the
        // reference) it cannot judge the entry.
        if !want.is_finite() {
            continue;
        }
        let tol = TOL * scale(i, j) + f64::MIN_POSITIVE;
        assert!((got - want).abs() <= tol, "{mode:?} entry {idx}: {got} vs {want} (tol {tol})");
    }
    Corpus::Keep
});
