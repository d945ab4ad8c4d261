//! Invariant: the mean-field quantities of `phase` never panic on any activation, variances,
//! q or c (negative, NaN, infinite, huge or tiny), and whatever they return `Ok` is
//! consistent: V(q) >= sigma_b^2 and not NaN; q* is a finite fixed point of V (residual
//! <= 1e-6 relative or 1e-29 absolute) no smaller than sigma_b^2; the correlation map at q*
//! maps [-1, 1] into it and c* lies in it; chi_1 >= 0, |chi_c| <= chi_1 (chi_c >= 0 for
//! c >= 0; phi' may change sign); `phase` is `Phase::from_chi_1` of `mean_field`'s chi_1;
//! the edge of chaos has chi_1 = 1 (1e-6) wherever q* exists there.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::{fuzz_target, Corpus};
use ntk_core::phase::{
    c_star, chi_1, chi_c, correlation_map, eoc_sigma_w2, mean_field, phase, q_star, variance_map,
    Phase,
};
use ntk_core::Error;
use ntk_fuzz::{ActChoice, Variance};

#[derive(Arbitrary, Debug)]
struct Case {
    act: ActChoice,
    sigma_w2: Variance,
    sigma_b2: Variance,
    q: Variance,
    /// `c = v / 30000` (about [-1.09, 1.09]) or any value.
    c: Result<i16, f64>,
}

/// Errors any argument may produce.
fn allowed(e: &Error) -> bool {
    matches!(e, Error::InvalidSpec { .. } | Error::NoConvergence { .. })
}

/// Unwraps an allowed error into `None`; panics on any other.
fn ok<T>(r: Result<T, Error>, what: &str) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(allowed(&e), "{what}: {e:?}");
            None
        }
    }
}

fuzz_target!(|case: Case| -> Corpus {
    let act = case.act.get();
    let (sw, sb, q) = (case.sigma_w2.get(), case.sigma_b2.get(), case.q.get());
    let c = match case.c {
        Ok(v) => v as f64 / 30_000.0,
        Err(v) => v,
    };
    if let Some(v) = ok(variance_map(act, sw, sb, q), "variance_map") {
        assert!(!v.is_nan() && v >= sb, "V({q}) = {v} with sigma_b2 {sb}");
    }
    if let Some(x) = ok(chi_1(act, sw, q), "chi_1") {
        assert!(x >= 0.0, "chi_1 = {x}");
    }
    if let Some(x) = ok(chi_c(act, sw, q, c), "chi_c") {
        // phi' may change sign (ABReLU with slopes of opposite signs), so chi_c may be
        // negative for c < 0; |chi_c| <= chi_1 always (Cauchy-Schwarz), and chi_c >= 0
        // for c >= 0 (the Gaussian kernel of a nonnegative correlation is PSD).
        if let Some(x1) = ok(chi_1(act, sw, q), "chi_1") {
            assert!(x.abs() <= x1 * (1.0 + 1e-9) + 1e-300, "chi_c = {x}, chi_1 = {x1}");
        }
        assert!(c < 0.0 || x >= -1e-12 * x.abs().max(1.0), "chi_c = {x} at c = {c}");
    }
    if let Some(Some(qs)) = ok(q_star(act, sw, sb, 1.0), "q_star") {
        assert!(qs.is_finite() && qs >= sb, "q* = {qs} with sigma_b2 {sb}");
        if let Some(v) = ok(variance_map(act, sw, sb, qs), "V(q*)") {
            // q_star's tolerance: 1e-15 relative or 1e-30 absolute.
            assert!((v - qs).abs() <= 1e-6 * qs + 1e-29, "V(q*) = {v}, q* = {qs}");
        }
        if qs > 0.0 {
            if let Some(r) = ok(correlation_map(act, sw, sb, qs, c), "correlation_map") {
                assert!((-1.0 - 1e-9..=1.0 + 1e-9).contains(&r), "C({c}) = {r} at q* = {qs}");
            }
            if let Some(cs) = ok(c_star(act, sw, sb, qs, 0.5), "c_star") {
                assert!((-1.0 - 1e-9..=1.0 + 1e-9).contains(&cs), "c* = {cs}");
            }
        }
    }
    if let Some(m) = ok(mean_field(act, sw, sb), "mean_field") {
        assert!(m.chi_1 >= 0.0 && m.chi_c.abs() <= m.chi_1 * (1.0 + 1e-9) + 1e-300, "{m:?}");
        assert!((-1.0 - 1e-9..=1.0 + 1e-9).contains(&m.c_star), "{m:?}");
        assert_eq!(m.phase, Phase::from_chi_1(m.chi_1, 1e-9), "{m:?}");
        if let Some(p) = ok(phase(act, sw, sb, 1e-9), "phase") {
            assert_eq!(p, m.phase, "{m:?}");
        }
    }
    if let Some(w) = ok(eoc_sigma_w2(act, sb), "eoc_sigma_w2") {
        assert!(w.is_finite() && w > 0.0, "eoc {w}");
        if let Some(Some(qs)) = ok(q_star(act, w, sb, 1.0), "q* at the edge") {
            if let Some(x) = ok(chi_1(act, w, qs), "chi_1 at the edge") {
                assert!((x - 1.0).abs() <= 1e-6, "chi_1 = {x} at the edge {w} (q* = {qs})");
            }
        }
    }
    Corpus::Keep
});
