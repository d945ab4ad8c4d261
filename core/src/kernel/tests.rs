//! Tests of the infinite-width kernels against an independent reference (nested tanh-sinh
//! quadrature split at every kink), Monte Carlo, exact identities and edge cases.
//!
//! Tolerances: closed forms and the trapezoid rule vs reference 1e-10 relative to
//! sqrt(E[phi(u)^2] E[phi(v)^2]); Monte Carlo 5 standard errors of 10^6 pairs; the error
//! estimate must bound the actual error; kernels symmetric bit for bit, PSD to -1e-12 of the
//! largest eigenvalue.

use std::vec;
use std::vec::Vec;

use super::*;
use crate::activation::ALL;
use crate::rng;

const PI: f64 = core::f64::consts::PI;

/// Tanh-sinh rule on [a, b] (step 1/32, |t| <= 3.3): double-exponential convergence for
/// integrands analytic inside, whatever happens at the ends.
fn ts(f: &dyn Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    if b <= a {
        return 0.0;
    }
    let r = 0.5 * (b - a);
    let h = 1.0 / 32.0;
    let n = (3.3 / h) as i32;
    let mut sum = 0.0;
    for k in -n..=n {
        let t = k as f64 * h;
        let s = 0.5 * PI * libm::sinh(t);
        let ch = libm::cosh(s);
        let w = 0.5 * PI * libm::cosh(t) / (ch * ch);
        // Distance from the nearer end, without cancellation: r (1 - tanh|s|).
        let delta = r * 2.0 / (1.0 + libm::exp(2.0 * libm::fabs(s)));
        let x = if t < 0.0 { a + delta } else { b - delta };
        sum += w * f(x);
    }
    h * r * sum
}

const ZMAX: f64 = 9.0;

fn gauss_pdf(z: f64) -> f64 {
    libm::exp(-0.5 * z * z) / libm::sqrt(2.0 * PI)
}

/// Reference (E[phi phi], E[phi' phi']): outer over z1 split at 0, inner over z2 split at the
/// point where v changes sign.
fn reference(act: Activation, q1: f64, q2: f64, s: f64) -> (f64, f64) {
    let (sq1, sq2) = (libm::sqrt(q1), libm::sqrt(q2));
    // c as the library forms it (c near +-1 is ill-conditioned in s: both must see the same c).
    let c = if q1 > 0.0 && q2 > 0.0 {
        let g = if q1 == q2 { q1 } else { libm::sqrt(q1 * q2) };
        (s / g).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let sn = libm::sqrt((1.0 - c) * (1.0 + c));
    let integrate = |deriv: bool| {
        let g = |x: f64| if deriv { act.dphi(x) } else { act.phi(x) };
        let outer = |z1: f64| {
            let gu = g(sq1 * z1);
            let inner = if sn == 0.0 {
                g(sq2 * c * z1)
            } else {
                let f = |z2: f64| gauss_pdf(z2) * g(sq2 * (c * z1 + sn * z2));
                let zs = (-c * z1 / sn).clamp(-ZMAX, ZMAX);
                ts(&f, -ZMAX, zs) + ts(&f, zs, ZMAX)
            };
            gauss_pdf(z1) * gu * inner
        };
        ts(&outer, -ZMAX, 0.0) + ts(&outer, 0.0, ZMAX)
    };
    (integrate(false), integrate(true))
}

fn covariances() -> Vec<(f64, f64, f64)> {
    let mut v = Vec::new();
    for &(q1, q2) in &[(0.1, 0.1), (1.0, 1.0), (0.5, 3.7), (12.0, 12.0), (12.0, 2.0), (50.0, 200.0)]
    {
        for &c in &[-1.0, -0.999, -0.7, 0.0, 0.3, 0.9, 0.99999, 1.0] {
            let s = if c == 1.0 && q1 == q2 { q1 } else { c * libm::sqrt(q1 * q2) };
            v.push((q1, q2, s));
        }
    }
    v
}

/// sqrt(E[phi(u)^2] E[phi(v)^2]) and its phi' twin: the Cauchy–Schwarz scale of the moments.
fn scale(act: Activation, q1: f64, q2: f64) -> (f64, f64) {
    let quad = Quadrature::default();
    let a = quadrature_moments(act, q1, q1, q1, &quad).unwrap();
    let b = quadrature_moments(act, q2, q2, q2, &quad).unwrap();
    (libm::sqrt(a.phiphi * b.phiphi), libm::sqrt(a.dphidphi * b.dphidphi))
}

#[test]
fn closed_forms_match_reference_quadrature() {
    let acts = [
        Activation::Relu,
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::AbRelu { a: -0.5, b: 1.5 },
        Activation::Linear,
        Activation::Erf,
        Activation::Gelu,
    ];
    let quad = Quadrature::default();
    for act in acts {
        for (q1, q2, s) in covariances() {
            let m = moments(act, q1, q2, s, &quad).unwrap();
            let r = reference(act, q1, q2, s);
            let (s0, s1) = scale(act, q1, q2);
            assert!(
                libm::fabs(m.phiphi - r.0) <= 1e-10 * s0,
                "{act} {q1} {q2} {s}: E[phi phi] {} vs {}",
                m.phiphi,
                r.0
            );
            assert!(
                libm::fabs(m.dphidphi - r.1) <= 1e-10 * s1,
                "{act} {q1} {q2} {s}: E[phi' phi'] {} vs {}",
                m.dphidphi,
                r.1
            );
        }
    }
}

#[test]
fn trapezoid_rule_converges_and_its_estimate_is_honest() {
    let quad = Quadrature::default();
    for act in [Activation::Tanh, Activation::Sigmoid, Activation::Erf, Activation::Gelu] {
        for (q1, q2, s) in covariances() {
            let m = quadrature_moments(act, q1, q2, s, &quad).unwrap();
            let r = reference(act, q1, q2, s);
            let (s0, s1) = scale(act, q1, q2);
            let (e0, e1) = (libm::fabs(m.phiphi - r.0), libm::fabs(m.dphidphi - r.1));
            assert!(e0 <= 1e-10 * s0 && e1 <= 1e-10 * s1, "{act} {q1} {q2} {s}: {e0} {e1}");
            // T_2h must meet the tolerance, so the estimate is at most a few tol (x the scale of
            // the unbounded GELU).
            assert!(m.err <= 1e-9 * (1.0 + s0), "{act} {q1} {q2} {s}: estimate {}", m.err);
        }
    }
    // Coarse tolerances: the estimate bounds the actual error.
    for tol in [1e-2, 1e-4, 1e-6, 1e-8] {
        let quad = Quadrature { tol, ..Quadrature::default() };
        for act in [Activation::Tanh, Activation::Sigmoid, Activation::Erf] {
            for &(q1, q2, s) in
                &[(1.0, 1.0, 0.5), (12.0, 12.0, 11.0), (0.3, 5.0, -0.9), (30.0, 30.0, 30.0)]
            {
                let m = quadrature_moments(act, q1, q2, s, &quad).unwrap();
                let r = reference(act, q1, q2, s);
                let actual = libm::fmax(libm::fabs(m.phiphi - r.0), libm::fabs(m.dphidphi - r.1));
                assert!(
                    actual <= m.err + 1e-14,
                    "{act} tol {tol} ({q1}, {q2}, {s}): {actual} > {}",
                    m.err
                );
                assert!(m.err <= 10.0 * tol, "{act} tol {tol}: estimate {} too large", m.err);
            }
        }
    }
}

/// DESIGN §4: Gauss–Hermite of degree 300 is off by ~1e-4 for tanh at q ~ 12; the trapezoid
/// rule is not, and it needs few nodes.
#[test]
fn tanh_at_large_variance() {
    let m = moments(Activation::Tanh, 12.0, 12.0, 12.0, &Quadrature::default()).unwrap();
    let r = reference(Activation::Tanh, 12.0, 12.0, 12.0);
    assert!(libm::fabs(m.phiphi - r.0) < 1e-13 && libm::fabs(m.dphidphi - r.1) < 1e-13);
    assert!(m.nodes < 1000, "{}", m.nodes);
}

/// Past q ~ 1e6 the full grid for tanh would need more than `max_nodes` nodes (~sqrt(q)); the
/// saturated rule has a fixed count at every q. Checked against the large-q expansion
/// E[sech^2(r z)] = (2 - (pi^2/6) / (2 r^2) + (7 pi^4/120) / (8 r^4)) / (r sqrt(2 pi)) and
/// E[sech^4(r z)] = (4/3 - ((pi^2 - 6)/9) / (2 r^2)) / (r sqrt(2 pi)) (moments of sech^2 and
/// sech^4 times the Taylor series of the Gaussian density; next terms r^-7 and r^-5), to
/// 1e-15 absolute and 1e-11 relative, for tanh and for sigmoid through
/// sigma(x) = (1 + tanh(x / 2)) / 2; and against the reference at q up to 1e6.
#[test]
fn tanh_and_sigmoid_at_any_variance() {
    let quad = Quadrature::default();
    let series = |r: f64| {
        let (r2, k) = (r * r, 1.0 / (r * libm::sqrt(2.0 * PI)));
        let sech2 = k * (2.0 - PI * PI / 12.0 / r2 + 7.0 * PI.powi(4) / 960.0 / (r2 * r2));
        let sech4 = k * (4.0 / 3.0 - (PI * PI - 6.0) / 18.0 / r2);
        (1.0 - sech2, sech4)
    };
    for q in [1e6, 1e8, 1e10, 1e20, 1e50, 1e100, 1e200, 1e300] {
        let r = libm::sqrt(q);
        let m = moments(Activation::Tanh, q, q, q, &quad).unwrap();
        let (f, d) = series(r);
        assert!(libm::fabs(m.phiphi - f) <= 1e-15, "q {q}: E[tanh^2] {} vs {f}", m.phiphi);
        assert!(libm::fabs(m.dphidphi - d) <= 1e-11 * d, "q {q}: {} vs {d}", m.dphidphi);
        assert!(m.nodes < 1000 && m.err <= quad.max_error, "q {q}: {m:?}");
        // c = -1: E[tanh(u) tanh(-u)] = -E[tanh^2], E[tanh'^2] unchanged.
        let n = moments(Activation::Tanh, q, q, -q, &quad).unwrap();
        assert_eq!((n.phiphi, n.dphidphi), (-m.phiphi, m.dphidphi), "q {q}");
        let g = moments(Activation::Sigmoid, 4.0 * q, 4.0 * q, 4.0 * q, &quad).unwrap();
        assert!(libm::fabs(g.phiphi - 0.25 * (1.0 + f)) <= 1e-15, "q {q}: {g:?}");
        assert!(libm::fabs(g.dphidphi - d / 16.0) <= 1e-11 * d / 16.0, "q {q}: {g:?}");
    }
    // One scale b unsaturated beside one a past the trapezoid's node cap
    // (saturated::line_mixed), against E[tanh(b |z|)] by the reference rule plus the
    // expansions in b / a and 1 / a of the rest: E[tanh(a z) tanh(b z)] = E[tanh(b |z|)]
    // - (2 b / a^2) (pi^2 / 24) / sqrt(2 pi) and E[sech^2(a z) sech^2(b z)] =
    // 2 / (a sqrt(2 pi)) (1 - (b^2 + 1/2) pi^2 / (12 a^2)) (next terms O(a^-4)), to 1e-11
    // absolute (the rules stop once two steps agree to `tol` = 1e-10) and 1e-11 relative.
    for (qb, qa) in [(1.0, 1e8), (1e-2, 1e12), (20.0, 1e10), (0.3, 1e8), (1e-12, 1e9), (0.0, 1e9)] {
        let (a, b) = (libm::sqrt(qa), libm::sqrt(qb));
        let near = ts(&|z| 2.0 * libm::tanh(b * z) * gauss_pdf(z), 0.0, ZMAX);
        let f = near - 2.0 * b / (a * a) * PI * PI / 24.0 / libm::sqrt(2.0 * PI);
        let d = 2.0 / (a * libm::sqrt(2.0 * PI)) * (1.0 - (b * b + 0.5) * PI * PI / (12.0 * a * a));
        for c in [1.0, -1.0] {
            for (q1, q2) in [(qa, qb), (qb, qa)] {
                // c exactly +-1 (E[sgn u sgn v] moves by (2 / pi) sin theta off it).
                let m = moments(Activation::Tanh, q1, q2, c * libm::sqrt(qa * qb), &quad).unwrap();
                assert!(libm::fabs(m.phiphi - c * f) <= 1e-11, "({q1}, {q2}, {c}): {m:?} vs {f}");
                assert!(libm::fabs(m.dphidphi - d) <= 1e-11 * d, "({q1}, {q2}, {c}): {m:?} vs {d}");
                assert!(m.err <= 1e-9 && m.nodes < 2000, "({q1}, {q2}, {c}): {m:?}");
            }
        }
    }
    for (q1, q2) in [(1e3, 1e3), (1e4, 1e4), (1e6, 1e6), (1e4, 3e5), (1.0, 1e8)] {
        for c in [1.0, -1.0] {
            let s = c * libm::sqrt(q1 * q2);
            let m = moments(Activation::Tanh, q1, q2, s, &quad).unwrap();
            let r = reference(Activation::Tanh, q1, q2, s);
            assert!(libm::fabs(m.phiphi - r.0) <= 1e-12, "({q1}, {q2}, {c}): {m:?} vs {r:?}");
            assert!(
                libm::fabs(m.dphidphi - r.1) <= 1e-10 * r.1,
                "({q1}, {q2}, {c}): {m:?} vs {r:?}"
            );
        }
    }
}

/// Correlated pairs at large variance (the `saturated` decomposition): against the reference
/// (1e-10 of the Cauchy–Schwarz scale) up to q = 1e6, where the full grid would need ~1e3
/// nodes per dimension and more than `max_nodes` beyond; and at q = 1e20..1e300 against the
/// limits E[tanh u tanh v] -> (2 / pi) asin c (correction O(q^-1/2)) and
/// E[tanh' u tanh' v] -> (int sech^2)^2 p(0, 0) = 4 / (2 pi sqrt(q1 q2) sin theta)
/// (relative correction O(1 / q)).
#[test]
fn tanh_pairs_at_any_variance() {
    let quad = Quadrature::default();
    let cs = [-0.999, -0.5, 0.0, 0.3, 0.9, 0.999, 0.999_999];
    for (q1, q2) in [(40.0, 40.0), (1e3, 1e3), (1e4, 1e4), (3e3, 1e5), (1e6, 1e6), (1e-4, 1e10)] {
        let (s0, s1) = scale(Activation::Tanh, q1, q2);
        for c in cs {
            let s = c * libm::sqrt(q1 * q2);
            let m = moments(Activation::Tanh, q1, q2, s, &quad).unwrap();
            let r = reference(Activation::Tanh, q1, q2, s);
            let (e0, e1) = (libm::fabs(m.phiphi - r.0), libm::fabs(m.dphidphi - r.1));
            assert!(e0 <= 1e-10 * s0 && e1 <= 1e-10 * s1, "({q1}, {q2}, {c}): {m:?} vs {r:?}");
            assert!(m.err <= 1e-9, "({q1}, {q2}, {c}): {m:?}");
            // Sigmoid through tanh at a quarter of the covariance.
            let g = moments(Activation::Sigmoid, 4.0 * q1, 4.0 * q2, 4.0 * s, &quad).unwrap();
            assert!(libm::fabs(g.phiphi - 0.25 * (1.0 + m.phiphi)) <= 1e-15, "{g:?} {m:?}");
        }
    }
    // A standard deviation below saturated::MIN_SCALE beside a huge one, where the 2-D rule's
    // nodes would miss the narrow Gaussian (E[tanh' tanh'] = 0): linear in the narrow variable,
    // E[tanh u tanh v] = s E[sech^2 v] and E[tanh' u tanh' v] = E[sech^2 v], the latter from
    // the large-q series of tanh_and_sigmoid_at_any_variance (1e-11 relative).
    for q1 in [1e-300, 1e-20, 1e-17] {
        let d = 2.0 / (1e4 * libm::sqrt(2.0 * PI)) * (1.0 - PI * PI / 24e8);
        for c in [-1.0, -0.3, 0.0, 0.7, 1.0] {
            let s = c * libm::sqrt(q1 * 1e8);
            for (qa, qb) in [(q1, 1e8), (1e8, q1)] {
                let m = moments(Activation::Tanh, qa, qb, s, &quad).unwrap();
                assert!(libm::fabs(m.dphidphi - d) <= 1e-11 * d, "q1 {q1} c {c}: {m:?} vs {d}");
                let f = s * d;
                assert!(libm::fabs(m.phiphi - f) <= 1e-11 * libm::fabs(f), "q1 {q1} c {c}: {m:?}");
            }
        }
    }
    // Where both rules hold (sd 2e-3..3e-3 beside a capped scale), the second-order narrow
    // rule against the 2-D one: within 1e-10 relative plus both error estimates (the narrow
    // rule's O(q1^2) remainder, about 2 q1^2 relative, is ~1e-11..1.6e-10 there).
    for q2 in [1e8, 1e20, 1e100] {
        for q1 in [4e-6, 6e-6, 9e-6] {
            for c in [-0.9, 0.0, 0.5, 0.999] {
                let s = c * libm::sqrt(q1 * q2);
                let m = moments(Activation::Tanh, q1, q2, s, &quad).unwrap();
                let n = saturated::narrow_pair(s, libm::sqrt(q1), libm::sqrt(q2), &quad);
                let (ef, ed) = (n.phiphi - m.phiphi, n.dphidphi - m.dphidphi);
                let ok = libm::fabs(ef) <= 1e-10 * libm::fabs(m.phiphi) + m.err + n.err
                    && libm::fabs(ed) <= 1e-10 * m.dphidphi + n.err;
                assert!(ok, "({q1}, {q2}, {c}): {n:?} vs {m:?}");
            }
        }
    }
    // A moderate scale beside a huge one (kappa = c sqrt(q2 / q1) past 1e18): v given u is
    // N(kappa u, (sqrt(q2) sin theta)^2), so up to O(1 / sqrt(q2)) E[tanh u tanh v] =
    // E[tanh(u) erf(c u / (sqrt(2 q1) sin theta))] and E[sech^2 u sech^2 v] =
    // 2 / (sqrt(2 pi q2) sin theta) E[sech^2(u) exp(-c^2 u^2 / (2 q1 sin^2 theta))], 1-D
    // references by the reference rule (1e-10 absolute and relative; c = 0 included, where
    // E[tanh tanh] = 0 exactly and E[tanh' tanh'] ~ 1e-50 met `tol` at the first step).
    for (q1, q2) in
        [(4e-6, 1e20), (1e-4, 1e20), (1e-2, 1e100), (1.0, 1e60), (1e-5, 1e200), (4.0, 1e300)]
    {
        for c in [-0.9, 0.0, 0.3, 0.5, 0.99] {
            let m = moments(Activation::Tanh, q1, q2, c * libm::sqrt(q1 * q2), &quad).unwrap();
            let (sq1, sn) = (libm::sqrt(q1), libm::sqrt((1.0 - c) * (1.0 + c)));
            let k = c / (sq1 * sn);
            let ef = |z: f64| {
                libm::tanh(sq1 * z) * libm::erf(k * sq1 * z / libm::sqrt(2.0)) * gauss_pdf(z)
            };
            let ed = |z: f64| {
                let y = 1.0 / libm::cosh(sq1 * z);
                y * y * libm::exp(-0.5 * k * k * q1 * z * z) * gauss_pdf(z)
            };
            let f = 2.0 * ts(&ef, 0.0, ZMAX);
            let d = 2.0 * ts(&ed, 0.0, ZMAX) * 2.0 / (libm::sqrt(2.0 * PI * q2) * sn);
            assert!(libm::fabs(m.phiphi - f) <= 1e-10, "({q1}, {q2}, {c}): {m:?} vs {f}");
            assert!(libm::fabs(m.dphidphi - d) <= 1e-10 * d, "({q1}, {q2}, {c}): {m:?} vs {d}");
        }
    }
    for q in [1e20, 1e100, 1e300] {
        for c in cs {
            let m = moments(Activation::Tanh, q, q, c * q, &quad).unwrap();
            let sn = libm::sqrt((1.0 - c) * (1.0 + c));
            let f = 2.0 / PI * libm::asin(c);
            let d = 4.0 / (2.0 * PI * q * sn);
            assert!(libm::fabs(m.phiphi - f) <= 1e-9, "q {q} c {c}: {m:?} vs {f}");
            assert!(libm::fabs(m.dphidphi - d) <= 1e-9 * d, "q {q} c {c}: {m:?} vs {d}");
        }
    }
}

/// Monte Carlo of 10^6 Gaussian pairs from `rng::normal`: within 5 standard errors.
#[test]
fn moments_match_monte_carlo() {
    const N: u64 = 1_000_000;
    for (case, &(q1, q2, c)) in
        [(1.0, 1.0, 0.5), (3.0, 0.7, -0.8), (10.0, 10.0, 0.95)].iter().enumerate()
    {
        let s = c * libm::sqrt(q1 * q2);
        for act in ALL {
            let m = moments(act, q1, q2, s, &Quadrature::default()).unwrap();
            let (mut a, mut a2, mut b, mut b2) = (0.0, 0.0, 0.0, 0.0);
            for i in 0..N {
                let z1 = rng::normal(7, case as u64, 2 * i);
                let z2 = rng::normal(7, case as u64, 2 * i + 1);
                let u = libm::sqrt(q1) * z1;
                let v = libm::sqrt(q2) * (c * z1 + libm::sqrt(1.0 - c * c) * z2);
                let f = act.phi(u) * act.phi(v);
                let g = act.dphi(u) * act.dphi(v);
                a += f;
                a2 += f * f;
                b += g;
                b2 += g * g;
            }
            let n = N as f64;
            let (ma, mb) = (a / n, b / n);
            let sea = libm::sqrt((a2 / n - ma * ma) / n);
            let seb = libm::sqrt((b2 / n - mb * mb) / n);
            assert!(
                libm::fabs(ma - m.phiphi) <= 5.0 * sea + 1e-12,
                "{act} case {case}: {ma} vs {}",
                m.phiphi
            );
            assert!(
                libm::fabs(mb - m.dphidphi) <= 5.0 * seb + 1e-12,
                "{act} case {case}: {mb} vs {}",
                m.dphidphi
            );
        }
    }
}

#[test]
fn relu_is_exact_on_the_diagonal_and_continuous_near_it() {
    let quad = Quadrature::default();
    for q in [1e-200, 1e-3, 0.7, 1.0, 3.0, 1e200] {
        let m = moments(Activation::Relu, q, q, q, &quad).unwrap();
        assert_eq!((m.phiphi, m.dphidphi), (0.5 * q, 0.5));
        // c = 1 with different variances: theta = 0 too (exact when q1 q2 is representable).
        if (1e-100..1e100).contains(&q) {
            let m = moments(Activation::Relu, q, 4.0 * q, 2.0 * q, &quad).unwrap();
            assert_eq!(m.dphidphi, 0.5);
        }
    }
    // Near c = 1: (pi - theta) / (2 pi) with theta ~ sqrt(2 delta), no loss to cancellation.
    for delta in [1e-4, 1e-8, 1e-12] {
        let m = moments(Activation::Relu, 1.0, 1.0, 1.0 - delta, &quad).unwrap();
        let theta = libm::acos(1.0 - delta);
        assert!(libm::fabs(m.dphidphi - (PI - theta) / (2.0 * PI)) < 1e-15);
    }
    // Near c = -1: pi - theta ~ sqrt(2 delta) is computed directly.
    for delta in [1e-6, 1e-10] {
        let m = moments(Activation::Relu, 1.0, 1.0, -1.0 + delta, &quad).unwrap();
        let expect = libm::acos(1.0 - delta) / (2.0 * PI); // (pi - theta) = arccos(-c)
        assert!(libm::fabs(m.dphidphi / expect - 1.0) < 1e-6, "{} {expect}", m.dphidphi);
        assert!(m.phiphi >= 0.0 && m.phiphi < 1e-8);
    }
    // |s| slightly beyond sqrt(q1 q2) (round-off) is clamped.
    let m = moments(Activation::Relu, 1.0, 1.0, 1.0 + 1e-15, &quad).unwrap();
    assert_eq!(m.dphidphi, 0.5);
}

#[test]
fn extreme_variances_are_finite_or_typed_errors() {
    let quad = Quadrature::default();
    for act in ALL {
        for q in [0.0, 1e-200, 1e-20, 1e20, 1e200] {
            for c in [-1.0, -0.5, 0.0, 0.5, 1.0] {
                let s = if c == 1.0 { q } else { c * q };
                match moments(act, q, q, s, &quad) {
                    Ok(m) => assert!(
                        m.phiphi.is_finite() && m.dphidphi.is_finite(),
                        "{act} q {q} c {c}: {m:?}"
                    ),
                    Err(e) => {
                        assert!(matches!(e, Error::NoConvergence { .. }), "{act} q {q}: {e:?}")
                    }
                }
            }
        }
    }
    assert!(matches!(
        moments(Activation::Relu, -1.0, 1.0, 0.0, &quad),
        Err(Error::InvalidSpec { field: "q1", .. })
    ));
    assert!(moments(Activation::Relu, 1.0, f64::NAN, 0.0, &quad).is_err());
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations.
fn eigenvalues(a: &[f64], n: usize) -> Vec<f64> {
    let mut a = a.to_vec();
    for _ in 0..100 {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += a[p * n + q] * a[p * n + q];
            }
        }
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (libm::fabs(theta) + libm::sqrt(theta * theta + 1.0));
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / libm::sqrt(t * t + 1.0);
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

fn inputs(n: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut x: Vec<f64> = (0..n * d).map(|i| rng::normal(seed, 99, i as u64)).collect();
    // A duplicate row, a scaled row and a zero row.
    let row0: Vec<f64> = x[..d].to_vec();
    x[d..2 * d].copy_from_slice(&row0);
    for k in 0..d {
        x[2 * d + k] = -3.0 * row0[k];
        x[3 * d + k] = 0.0;
        // Nearly parallel to row 0 (sin phi ~ 1e-9): the first layer's exact g sin theta.
        x[4 * d + k] = 2.0 * row0[k] + if k == 0 { 1e-9 } else { 0.0 };
    }
    x
}

fn configs() -> Vec<Mlp<'static>> {
    let mut v = Vec::new();
    for act in ALL {
        v.push(Mlp::new(act, 3, 1.7, 0.2));
        v.push(Mlp::new(act, 2, 2.0, 0.0).with_bias(false));
        v.push(Mlp::new(act, 3, 1.3, 0.1).standard(&[50, 20, 80]));
        v.push(Mlp::new(act, 1, 2.5, 0.0).standard(&[100]));
    }
    v
}

#[test]
fn kernel_matrices_are_symmetric_and_psd() {
    let (n, d) = (7, 5);
    let x = inputs(n, d, 3);
    for mlp in configs() {
        let (mut k, mut t) = (vec![0.0; n * n], vec![0.0; n * n]);
        let mut scratch = vec![0.0; kernel_scratch(n, 0, mlp.depth)];
        kernel(Some(&mut k), Some(&mut t), &x, None, d, &mlp, &mut scratch).unwrap();
        for m in [&k, &t] {
            for i in 0..n {
                for j in 0..n {
                    assert_eq!(m[i * n + j], m[j * n + i]);
                    assert!(m[i * n + j].is_finite());
                }
            }
            let ev = eigenvalues(m, n);
            let max = ev.iter().cloned().fold(0.0, f64::max);
            let min = ev.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(min >= -1e-12 * max, "{mlp:?}: eigenvalues {ev:?}");
        }
        // Duplicate rows give equal rows; the cross kernel of x with itself and the diagonal
        // function agree with the symmetric one.
        for j in 0..n {
            assert_eq!(k[j], k[n + j]);
            assert_eq!(t[j], t[n + j]);
        }
        let (mut k2, mut t2) = (vec![0.0; n * n], vec![0.0; n * n]);
        let mut scratch = vec![0.0; kernel_scratch(n, n, mlp.depth)];
        kernel(Some(&mut k2), Some(&mut t2), &x, Some(&x), d, &mlp, &mut scratch).unwrap();
        for i in 0..n * n {
            assert!(libm::fabs(k2[i] - k[i]) <= 1e-12 * libm::fabs(k[i]), "{mlp:?}");
            assert!(libm::fabs(t2[i] - t[i]) <= 1e-12 * libm::fabs(t[i]), "{mlp:?}");
        }
        for i in 0..n {
            assert_eq!(k2[i * n + i], k[i * n + i]);
        }
        let (mut kd, mut td) = (vec![0.0; n], vec![0.0; n]);
        kernel_diagonal(Some(&mut kd), Some(&mut td), &x, d, &mlp).unwrap();
        for i in 0..n {
            assert_eq!((kd[i], td[i]), (k[i * n + i], t[i * n + i]));
        }
    }
}

/// Cross kernels: rows of x1 against rows of x2, equal to the blocks of the joint kernel.
#[test]
fn cross_kernel_is_a_block_of_the_joint_kernel() {
    let d = 4;
    let x = inputs(6, d, 11);
    let mlp = Mlp::new(Activation::Gelu, 4, 1.4, 0.3).standard(&[64]);
    let mut joint = vec![0.0; 36];
    let mut scratch = vec![0.0; kernel_scratch(6, 0, 4)];
    kernel(None, Some(&mut joint), &x, None, d, &mlp, &mut scratch).unwrap();
    let (x1, x2) = x.split_at(2 * d);
    let mut cross = vec![0.0; 2 * 4];
    let mut scratch = vec![0.0; kernel_scratch(2, 4, 4)];
    kernel(None, Some(&mut cross), x1, Some(x2), d, &mlp, &mut scratch).unwrap();
    for i in 0..2 {
        for j in 0..4 {
            assert_eq!(cross[i * 4 + j], joint[i * 6 + 2 + j]);
        }
    }
}

/// DESIGN §6 (standard parameterization, ReLU, sigma_b^2 = 0, bias gradients, l hidden layers
/// of width M): Theta(x, x) = r^l ||x||^2 (1 + l M / n0) + sum_{j=0}^{l} r^j, r = sigma_w^2 / 2.
/// NTK parameterization, sigma_w^2 = 2, no bias: K = ||x||^2 2 / d and Theta = (L + 1) K.
#[test]
fn exact_relu_values() {
    let (d, m) = (10usize, 100usize);
    let x: Vec<f64> = (0..d).map(|i| rng::normal(5, 0, i as u64)).collect();
    let norm2: f64 = x.iter().map(|v| v * v).sum();
    for l in [1usize, 2, 5, 20] {
        for sw in [0.5, 1.0, 2.0, 3.5] {
            let widths = [m];
            let mlp = Mlp::new(Activation::Relu, l, sw, 0.0).standard(&widths);
            let mut t = [0.0];
            kernel_diagonal(None, Some(&mut t), &x, d, &mlp).unwrap();
            let r: f64 = sw / 2.0;
            let expect = libm::pow(r, l as f64) * norm2 * (1.0 + (l * m) as f64 / d as f64)
                + (0..=l).map(|j| libm::pow(r, j as f64)).sum::<f64>();
            assert!(libm::fabs(t[0] / expect - 1.0) < 1e-13, "l {l} sw {sw}: {} vs {expect}", t[0]);
        }
        let mlp = Mlp::new(Activation::Relu, l, 2.0, 0.7).with_bias(false);
        let (mut k, mut t) = ([0.0], [0.0]);
        kernel_diagonal(Some(&mut k), Some(&mut t), &x, d, &mlp).unwrap();
        let q = 2.0 * (norm2 / d as f64);
        assert_eq!(k[0], q);
        assert!(libm::fabs(t[0] - (l + 1) as f64 * q) <= 1e-15 * t[0]);
    }
}

/// A depth-0 network is the linear model: K = sigma_w^2 <x, x'> / d + sigma_b^2, Theta = K
/// (ntk) or <x, x'> + 1 (standard); linear phi at any depth keeps K an affine map of <x, x'>.
#[test]
fn linear_and_depth_zero() {
    let x = [1.0, 2.0, -1.0, 0.5, 0.0, 3.0];
    let ip = -1.0 + 2.0 * 0.5;
    let mut scratch = [0.0; kernel_scratch(2, 1, 2)];
    let (mut k, mut t) = ([0.0; 2], [0.0; 2]);
    let mlp = Mlp::new(Activation::Tanh, 0, 1.5, 0.25);
    kernel(Some(&mut k), Some(&mut t), &x[..2], Some(&x[2..]), 2, &mlp, &mut scratch).unwrap();
    assert_eq!(k[0], 1.5 * (ip / 2.0) + 0.25);
    assert_eq!(t[0], k[0]);
    let mlp = mlp.standard(&[]);
    kernel(Some(&mut k), Some(&mut t), &x[..2], Some(&x[2..]), 2, &mlp, &mut scratch).unwrap();
    assert_eq!(t[0], ip + 1.0);
    // Linear phi, depth 2, sigma_w^2 = 1, sigma_b^2 = b: K = <x,x'>/d + 3 b.
    let mlp = Mlp::new(Activation::Linear, 2, 1.0, 0.5);
    kernel(Some(&mut k), Some(&mut t), &x[..2], Some(&x[2..]), 2, &mlp, &mut scratch).unwrap();
    assert!(libm::fabs(k[0] - (ip / 2.0 + 1.5)) < 1e-15);
    // Theta = K^1 + K^2 + K^3 for sigma_w^2 = 1 (Sigma_dot = 1).
    let k1 = ip / 2.0 + 0.5;
    assert!(libm::fabs(t[0] - (k1 + (k1 + 0.5) + (k1 + 1.0))) < 1e-15);
}

#[test]
fn zero_huge_and_tiny_inputs() {
    let d = 3;
    for act in ALL {
        for scale in [0.0, 1e-100, 1e100] {
            let x = [scale, -scale, 0.5 * scale, 0.3 * scale, scale, 0.0];
            for mlp in [
                Mlp::new(act, 4, 2.0, 0.0),
                Mlp::new(act, 4, 1.2, 0.3),
                Mlp::new(act, 3, 2.0, 0.0).standard(&[30]).with_bias(false),
            ] {
                let (mut k, mut t) = ([0.0; 4], [0.0; 4]);
                let mut scratch = [0.0; kernel_scratch(2, 0, 4)];
                match kernel(Some(&mut k), Some(&mut t), &x, None, d, &mlp, &mut scratch) {
                    Ok(_) => {
                        assert!(
                            k.iter().chain(&t).all(|v| v.is_finite()),
                            "{act} {scale}: {k:?} {t:?}"
                        )
                    }
                    Err(e) => assert!(
                        matches!(e, Error::NoConvergence { .. } | Error::NonFinite { .. }),
                        "{act} {scale}: {e:?}"
                    ),
                }
            }
        }
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let x = [1.0, 2.0, 3.0, 4.0];
    let mut out = [0.0; 4];
    let mut scratch = [0.0; kernel_scratch(2, 0, 3)];
    let mlp = Mlp::new(Activation::Relu, 3, 1.0, 0.0);
    let run = |mlp: &Mlp, x: &[f64], d: usize, out: &mut [f64], scratch: &mut [f64]| {
        kernel(None, Some(out), x, None, d, mlp, scratch)
    };
    assert!(matches!(
        run(&Mlp { sigma_w2: -1.0, ..mlp }, &x, 2, &mut out, &mut scratch),
        Err(Error::InvalidSpec { field: "sigma_w2", .. })
    ));
    assert!(matches!(
        run(&mlp, &x, 0, &mut out, &mut scratch),
        Err(Error::InvalidSpec { field: "d", .. })
    ));
    assert!(matches!(
        run(&mlp, &x, 3, &mut out, &mut scratch),
        Err(Error::ShapeMismatch { what: "x1", .. })
    ));
    assert!(matches!(
        run(&mlp, &x, 2, &mut out[..3], &mut scratch),
        Err(Error::ShapeMismatch { what: "ntk", .. })
    ));
    assert!(matches!(
        run(&mlp, &x, 2, &mut out, &mut scratch[..5]),
        Err(Error::ShortBuffer { .. })
    ));
    assert!(matches!(
        run(&mlp, &[1.0, f64::NAN, 0.0, 0.0], 2, &mut out, &mut scratch),
        Err(Error::NonFiniteInput { what: "x1", index: 1 })
    ));
    let widths = [10, 10];
    assert!(matches!(
        run(&mlp.standard(&widths), &x, 2, &mut out, &mut scratch),
        Err(Error::InvalidSpec { field: "widths.len", .. })
    ));
    assert!(matches!(
        run(&mlp.standard(&[0]), &x, 2, &mut out, &mut scratch),
        Err(Error::InvalidSpec { field: "widths", .. })
    ));
    // Overflow of the recursion is reported with its layer.
    let big = [1e200, 0.0, 0.0, 1e200];
    let e = run(&Mlp::new(Activation::Relu, 3, 1e100, 0.0), &big, 2, &mut out, &mut scratch);
    assert!(matches!(e, Err(Error::NonFinite { pass: Pass::Kernel, .. })), "{e:?}");
}

#[test]
fn from_spec_matches_manual_config() {
    let widths = [3, 40, 50, 1];
    let spec =
        Spec::new(&widths, Activation::Erf, 1.5, 0.2, true, Parameterization::Standard).unwrap();
    let mlp = Mlp::from_spec(&spec);
    assert_eq!(mlp.depth, 2);
    assert_eq!(mlp.widths, &[40, 50]);
    let x = [0.3, -1.0, 2.0];
    let (mut a, mut b) = ([0.0], [0.0]);
    kernel_diagonal(None, Some(&mut a), &x, 3, &mlp).unwrap();
    kernel_diagonal(
        None,
        Some(&mut b),
        &x,
        3,
        &Mlp::new(Activation::Erf, 2, 1.5, 0.2).standard(&[40, 50]),
    )
    .unwrap();
    assert_eq!(a, b);
}

/// Distance in units in the last place between two finite f64 of the same sign (0 for equal).
fn ulps(a: f64, b: f64) -> u64 {
    let key = |v: f64| {
        let b = v.to_bits() as i64;
        if b < 0 {
            i64::MIN - b
        } else {
            b
        }
    };
    key(a).abs_diff(key(b))
}

/// Applies the vector atan2 / asin to slices through the best instruction set.
struct Apply<'a> {
    y: &'a [f64],
    x: &'a [f64],
    out: &'a mut [f64],
    asin: bool,
}

impl pulp::WithSimd for Apply<'_> {
    type Output = ();
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let (ys, yt) = S::as_simd_f64s(self.y);
        let (xs, _) = S::as_simd_f64s(self.x);
        let (os, ot) = S::as_mut_simd_f64s(self.out);
        for ((o, &y), &x) in os.iter_mut().zip(ys).zip(xs) {
            *o = if self.asin { vector::asin(simd, y) } else { vector::atan2_xpos(simd, y, x) };
        }
        // The tail through the one-lane instruction set (the same bits).
        let off = self.y.len() - yt.len();
        for (k, o) in ot.iter_mut().enumerate() {
            let (y, x) = (self.y[off + k], self.x[off + k]);
            *o = if self.asin {
                vector::asin(pulp::Scalar, y)
            } else {
                vector::atan2_xpos(pulp::Scalar, y, x)
            };
        }
    }
}

fn apply(y: &[f64], x: &[f64], asin: bool) -> Vec<f64> {
    let mut out = vec![0.0; y.len()];
    pulp::Arch::new().dispatch(Apply { y, x, out: &mut out, asin });
    // One lane gives the same bits as the vector lanes.
    for (k, &o) in out.iter().enumerate() {
        let s = if asin {
            vector::asin(pulp::Scalar, y[k])
        } else {
            vector::atan2_xpos(pulp::Scalar, y[k], x[k])
        };
        assert_eq!(o.to_bits(), s.to_bits(), "lane vs scalar at {} {}", y[k], x[k]);
    }
    out
}

/// 10^6 arguments of every magnitude, plus edge cases.
fn atan_arguments() -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut x) = (Vec::new(), Vec::new());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let unit = |v: u64| (v >> 11) as f64 / (1u64 << 53) as f64;
    for k in 0..1_000_000 {
        let (a, b) = (next(), next());
        let (yy, xx) = match k % 4 {
            // Ratios near every region boundary and beyond.
            0 => (2.0 * unit(a) - 1.0, unit(b)),
            1 => (libm::ldexp(2.0 * unit(a) - 1.0, (a % 80) as i32 - 40), unit(b)),
            2 => {
                let e = (b % 1200) as i32 - 600;
                (libm::ldexp(2.0 * unit(a) - 1.0, e), libm::ldexp(unit(b) + 0.5, e))
            }
            _ => {
                let r = [0.66, 2.414_213_562_373_095, 1.0, 0.414_213_562_373_095][(a % 4) as usize];
                let x = unit(b) + 1e-3;
                let y = r * x * (1.0 + (unit(a) - 0.5) * 1e-12);
                (if a & 1 == 0 { y } else { -y }, x)
            }
        };
        y.push(yy);
        x.push(xx);
    }
    for (yy, xx) in [
        (0.0, 1.0),
        (-0.0, 1.0),
        (1.0, 0.0),
        (-1.0, 0.0),
        (0.0, 0.0),
        (1.0, 1.0),
        (-1.0, 1.0),
        (1e300, 1e-300),
        (1e-300, 1e300),
        (f64::MAX, 1.0),
        (f64::MIN_POSITIVE, 1.0),
        (5e-324, 1.0),
        (1.0, f64::MAX),
        (1e-17, 1.0),
        (0.66, 1.0),
        (2.414_213_562_373_095, 1.0),
    ] {
        y.push(yy);
        x.push(xx);
    }
    (y, x)
}

#[test]
fn vector_atan2_and_asin_are_within_two_ulp_of_libm() {
    let (y, x) = atan_arguments();
    let out = apply(&y, &x, false);
    let mut worst = (0u64, 0.0, 0.0);
    for k in 0..y.len() {
        let e = libm::atan2(y[k], x[k]);
        assert!(out[k].is_finite(), "atan2({}, {}) = {}", y[k], x[k], out[k]);
        let u = ulps(out[k], e);
        if u > worst.0 {
            worst = (u, y[k], x[k]);
        }
    }
    std::println!("atan2: max {} ulp at ({}, {})", worst.0, worst.1, worst.2);
    assert!(worst.0 <= 2, "atan2: {worst:?}");
    for (yy, xx, e) in [(0.0, 1.0, 0.0), (-0.0, 1.0, -0.0), (0.0, 0.0, 0.0), (1.0, 0.0, PI / 2.0)] {
        assert_eq!(apply(&[yy], &[xx], false)[0].to_bits(), f64::to_bits(e), "({yy}, {xx})");
    }
    // asin over [-1, 1], dense near the ends.
    let a: Vec<f64> = y
        .iter()
        .zip(&x)
        .map(|(&yy, &xx)| {
            if xx > 0.5 {
                libm::fmod(yy, 1.0)
            } else {
                1.0 - libm::ldexp(xx, -(libm::fabs(yy * 1e3) as i32 % 60))
            }
        })
        .chain([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-300, 1.0 - f64::EPSILON / 2.0])
        .collect();
    let out = apply(&a, &a, true);
    let mut worst = (0u64, 0.0);
    for k in 0..a.len() {
        let u = ulps(out[k], libm::asin(a[k]));
        if u > worst.0 {
            worst = (u, a[k]);
        }
    }
    std::println!("asin: max {} ulp at {}", worst.0, worst.1);
    assert!(worst.0 <= 2, "asin: {worst:?}");
    assert_eq!(apply(&[1.0], &[1.0], true)[0], PI / 2.0);
}

/// The lane closed forms against the libm forms of `closed` (the previous implementation).
#[test]
fn vector_closed_forms_match_libm_forms() {
    let mut worst: f64 = 0.0;
    for (q1, q2, s) in covariances().into_iter().chain((0..20000).map(|k| {
        let q1 = libm::exp(rng::normal(41, 0, k) * 3.0);
        let q2 = libm::exp(rng::normal(41, 1, k) * 3.0);
        let c = libm::tanh(rng::normal(41, 2, k) * 4.0);
        (q1, q2, c * libm::sqrt(q1 * q2))
    })) {
        let p = Geometry::new(q1, q2, s, libm::sqrt(q1), libm::sqrt(q2));
        let lin = |a: f64, b: f64| {
            (
                vector::Family::of(Activation::AbRelu { a, b }).unwrap(),
                closed::piecewise_linear(a, b, &p),
                // Cauchy-Schwarz scales: sqrt(E[phi(u)^2] E[phi(v)^2]), E[phi'^2].
                (0.5 * (a * a + b * b) * p.g, 0.5 * (a * a + b * b)),
            )
        };
        let checks = [
            lin(0.0, 1.0),
            lin(0.1, 1.0),
            lin(-0.5, 1.5),
            lin(1.0, 1.0),
            (vector::Family::of(Activation::Erf).unwrap(), closed::erf(&p), (0.0, 0.0)),
        ];
        for (fam, (e0, e1), (scale0, scale1)) in checks {
            let (v0, v1) = fam.scalar(&Var::new(q1), &Var::new(q2), s, None);
            let r0 = libm::fabs(v0 - e0) / libm::fabs(e0).max(scale0).max(f64::MIN_POSITIVE);
            let r1 = libm::fabs(v1 - e1) / libm::fabs(e1).max(scale1).max(f64::MIN_POSITIVE);
            worst = worst.max(r0).max(r1);
            assert!(r0 <= 1e-14 && r1 <= 1e-14, "{fam:?} {q1} {q2} {s}: {v0} {e0} {v1} {e1}");
        }
    }
    std::println!("vector vs libm closed forms: max relative difference {worst:e}");
}

/// The vector row path (chunks of lanes) against the one-pair scalar recursion: the same bits,
/// whatever the chunk and lane of the pair, for the symmetric and the cross kernel.
#[test]
fn vector_rows_match_scalar_pairs_bitwise() {
    let d = 5;
    let n = 150; // more than two chunks, with a tail
    let x = inputs(n, d, 17);
    for mlp in configs() {
        let Some(_) = vector::Family::of(mlp.activation) else { continue };
        let pr = mlp.prepare().unwrap();
        let (mut k, mut t) = (vec![0.0; n * n], vec![0.0; n * n]);
        let mut scratch = vec![0.0; kernel_scratch(n, 0, mlp.depth)];
        kernel(Some(&mut k), Some(&mut t), &x, None, d, &mlp, &mut scratch).unwrap();
        let per = kernel_chain_len(mlp.depth);
        let chains = &scratch[..n * per];
        let mut info = KernelInfo::default();
        for i in 0..n {
            for j in 0..n {
                let (xi, xj) = (&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
                let (ci, cj) = (&chains[i * per..(i + 1) * per], &chains[j * per..(j + 1) * per]);
                let (a, b) = if i == j {
                    pr.diag(xi, None, &mut info).unwrap()
                } else {
                    let (r, c) = if i < j { (xi, xj) } else { (xj, xi) };
                    let (cr, cc) = if i < j { (ci, cj) } else { (cj, ci) };
                    pr.pair(r, c, cr, cc, &mut info).unwrap()
                };
                assert_eq!(k[i * n + j].to_bits(), a.to_bits(), "{mlp:?} {i} {j}");
                assert_eq!(t[i * n + j].to_bits(), b.to_bits(), "{mlp:?} {i} {j}");
            }
        }
        // Bands of any size give the same bits (the split of cli's par_infinite_kernel).
        for bd in [1, 7, 64] {
            let (mut k2, mut t2) = (vec![0.0; n * n], vec![0.0; n * n]);
            for (b, (kb, tb)) in k2.chunks_mut(bd * n).zip(t2.chunks_mut(bd * n)).enumerate() {
                kernel_rows(Some(kb), Some(tb), b * bd, &x, chains, None, None, d, &mlp).unwrap();
            }
            for i in 0..n {
                for j in i..n {
                    assert_eq!(k2[i * n + j].to_bits(), k[i * n + j].to_bits());
                    assert_eq!(t2[i * n + j].to_bits(), t[i * n + j].to_bits());
                }
            }
        }
        // Cross kernel of x with a shifted copy of itself: each entry as the scalar pair.
        let x2 = &x[3 * d..];
        let n2 = n - 3;
        let mut kc = vec![0.0; n * n2];
        let mut scratch = vec![0.0; kernel_scratch(n, n2, mlp.depth)];
        kernel(Some(&mut kc), None, &x, Some(x2), d, &mlp, &mut scratch).unwrap();
        for i in 0..n {
            for j in 0..n2 {
                let jj = j + 3;
                let (a, _) = pr
                    .pair(
                        &x[i * d..(i + 1) * d],
                        &x[jj * d..(jj + 1) * d],
                        &chains[i * per..(i + 1) * per],
                        &chains[jj * per..(jj + 1) * per],
                        &mut info,
                    )
                    .unwrap();
                assert_eq!(kc[i * n2 + j].to_bits(), a.to_bits(), "{mlp:?} cross {i} {j}");
            }
        }
    }
}

/// Covariances for the erf identities: every scale of variance, c from tanh of a wide normal,
/// c = +-(1 - 10^-k), and rho = 2 s r1 r2 on both sides of `ERF_FACTORED_MAX` and of Cephes'
/// asin split (0.625).
fn erf_covariances() -> Vec<(f64, f64, f64)> {
    let mut v = covariances();
    for k in 0..20000u64 {
        let q1 = libm::exp(rng::normal(43, 0, k) * 3.0);
        let q2 = if k % 5 == 0 { q1 } else { libm::exp(rng::normal(43, 1, k) * 3.0) };
        let g = libm::sqrt(q1 * q2);
        let c = match k % 4 {
            0 => libm::tanh(rng::normal(43, 2, k) * 4.0),
            1 => {
                let e = libm::pow(10.0, -(((k / 4) % 16) as f64));
                if k & 8 == 0 {
                    1.0 - e
                } else {
                    e - 1.0
                }
            }
            _ => {
                // rho = c 2 g r1 r2 at a chosen value near a switch point.
                let target = [vector::ERF_FACTORED_MAX, 0.625][(k / 4 % 2) as usize]
                    * (1.0 + (libm::fabs(rng::normal(43, 3, k)) - 0.8) * 1e-3);
                let rmax = 2.0 * g * vector::erf_factor(q1) * vector::erf_factor(q2);
                if target < rmax {
                    target / rmax
                } else {
                    1.0
                }
            }
        };
        let s = if k & 16 == 0 { c * g } else { -c * g };
        v.push((q1, q2, s));
    }
    v
}

/// The factored erf form (rho = 2 s r1 r2, one square root per pair) against the unfactored
/// hypot / atan2 form it replaces, in the lane code and in libm: 1e-14 relative everywhere,
/// including c near +-1 and both sides of the switch to the unfactored form.
#[test]
fn factored_erf_matches_unfactored_form() {
    let fam = vector::Family::of(Activation::Erf).unwrap();
    let (mut worst, mut fast) = (0.0f64, 0usize);
    let covs = erf_covariances();
    for &(q1, q2, s) in &covs {
        let (v1, v2) = (Var::new(q1), Var::new(q2));
        let (f, d) = fam.scalar(&v1, &v2, s, None);
        let p = Geometry::new(q1, q2, s, v1.sq, v2.sq);
        let (hf, hd) = vector::erf_hypot(pulp::Scalar, q1, q2, s, p.g, p.sn);
        let (lf, ld) = closed::erf(&p);
        for (a, b) in [(f, hf), (d, hd), (f, lf), (d, ld)] {
            let r = libm::fabs(a - b) / libm::fabs(b).max(f64::MIN_POSITIVE);
            worst = worst.max(r);
            assert!(r <= 1e-14, "erf ({q1}, {q2}, {s}): {a} vs {b} ({r:e})");
        }
        let rho = 2.0 * s * (v1.r * v2.r);
        fast += usize::from(libm::fabs(rho) <= vector::ERF_FACTORED_MAX);
    }
    std::println!(
        "factored vs unfactored erf: max relative difference {worst:e} ({fast} of {} factored)",
        covs.len()
    );
    assert!(fast > covs.len() / 2);
}

/// Applies `Family::moments` over slices through the best instruction set.
struct ApplyMoments<'a> {
    fam: vector::Family,
    q1: &'a [f64],
    q2: &'a [f64],
    s: &'a [f64],
    a1: &'a [f64],
    a2: &'a [f64],
    out: &'a mut [(f64, f64)],
}

impl pulp::WithSimd for ApplyMoments<'_> {
    type Output = ();
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let lanes = S::F64_LANES;
        for k in (0..self.q1.len() / lanes * lanes).step_by(lanes) {
            let v = |x: &[f64]| S::as_simd_f64s(&x[k..k + lanes]).0[0];
            let (f, d) = self.fam.moments(
                simd,
                v(self.q1),
                v(self.q2),
                v(self.s),
                v(self.a1),
                v(self.a2),
                None,
            );
            let (mut fo, mut d_o) = (vec![0.0; lanes], vec![0.0; lanes]);
            S::as_mut_simd_f64s(&mut fo).0[0] = f;
            S::as_mut_simd_f64s(&mut d_o).0[0] = d;
            for l in 0..lanes {
                self.out[k + l] = (fo[l], d_o[l]);
            }
        }
    }
}

/// Lanes of the factored and of the unfactored erf form side by side in one vector (and the
/// ReLU family) give the same bits as one lane.
#[test]
fn mixed_lanes_match_the_scalar_twin_bitwise() {
    let covs = erf_covariances();
    let n = covs.len();
    let col = |f: fn(&(f64, f64, f64)) -> f64| covs.iter().map(f).collect::<Vec<f64>>();
    let (q1, q2, s) = (col(|c| c.0), col(|c| c.1), col(|c| c.2));
    for act in [Activation::Erf, Activation::Relu, Activation::LeakyRelu { alpha: 0.1 }] {
        let fam = vector::Family::of(act).unwrap();
        let aux = |q: &[f64]| q.iter().map(|&q| fam.aux(&Var::new(q))).collect::<Vec<f64>>();
        let (a1, a2) = (aux(&q1), aux(&q2));
        let mut out = vec![(0.0, 0.0); n];
        pulp::Arch::new().dispatch(ApplyMoments {
            fam,
            q1: &q1,
            q2: &q2,
            s: &s,
            a1: &a1,
            a2: &a2,
            out: &mut out,
        });
        // Every lane count divides 8: the first n - n % 8 entries went through vectors.
        for k in 0..n - n % 8 {
            let (f, d) = fam.scalar(&Var::new(q1[k]), &Var::new(q2[k]), s[k], None);
            assert_eq!(
                (out[k].0.to_bits(), out[k].1.to_bits()),
                (f.to_bits(), d.to_bits()),
                "{act} lane {k}: ({}, {}, {})",
                q1[k],
                q2[k],
                s[k]
            );
        }
    }
}

/// The first layer's g sin theta from the inputs against exact values: x = (A, 0), y = (C, E)
/// give |x|^2 |y|^2 - <x, y>^2 = A^2 E^2 and |x - y|^2 = (A - C)^2 + E^2 exactly, so
/// q1 q2 - s^2 = a^2 A^2 E^2 + a b ((A - C)^2 + E^2) for a = sigma_w^2 / d, b = sigma_b^2.
/// Forming q1 q2 - s^2 from the rounded s instead loses everything here.
#[test]
fn first_layer_sin_theta_has_no_cancellation() {
    let (sw, sb) = (1.7, 0.3);
    let a = sw / 2.0;
    for (big, c_ratio, e) in [
        (1e15f64, -1.0f64, 1.0f64),
        (1e15, 1.0, 1.0),
        (1e30, -0.5, 3.0),
        (3.0, 1.0, 1e-9),
        (1.0, -1.0, 0.0),
    ] {
        let (x, y) = ([big, 0.0], [c_ratio * big, e]);
        let exact = a * a * (big * big) * (e * e) + a * sb * ((big - y[0]) * (big - y[0]) + e * e);
        let gn = first_gn(&x, &y, a, sb);
        let rel = (gn - libm::sqrt(exact)).abs() / libm::sqrt(exact).max(f64::MIN_POSITIVE);
        assert!(
            rel < 16.0 * f64::EPSILON,
            "{x:?} {y:?}: {gn:e} vs {:e} ({rel:e})",
            libm::sqrt(exact)
        );
        // The difference of the rounded products: zero or far off at these inputs.
        let (q1, q2) = (a * (big * big) + sb, a * (y[0] * y[0] + e * e) + sb);
        let s = a * (x[0] * y[0]) + sb;
        let naive = libm::sqrt((q1 * q2 - s * s).max(0.0));
        if big >= 1e15 {
            assert!((naive - gn).abs() > 1e-3 * gn, "the naive form is accurate here: {naive:e}");
        }
    }
    // Away from parallel both forms agree.
    let (x, y) = ([0.3, -1.2, 2.0], [1.1, 0.4, -0.7]);
    let a = sw / 3.0;
    let (q1, q2, s) =
        (a * (0.09 + 1.44 + 4.0) + sb, a * (1.21 + 0.16 + 0.49) + sb, a * (0.33 - 0.48 - 1.4) + sb);
    let gn = first_gn(&x, &y, a, sb);
    assert!((gn - libm::sqrt(q1 * q2 - s * s)).abs() < 1e-13 * gn);
}

/// One hidden layer on nearly antiparallel inputs of norm 1e15 (d = 2): K = sigma_w^2
/// E[phi(u) phi(v)] + sigma_b^2 and Theta = K + sigma_w^2 E[phi' phi'] Sigma^1 against the
/// closed forms evaluated at the exact covariance (erf: Williams' form with
/// (1 + 2 q1)(1 + 2 q2) - 4 s^2 = 1 + 2 (q1 + q2) + 4 (q1 q2 - s^2); ReLU: the arc-cosine
/// kernel at theta = atan2(sqrt(q1 q2 - s^2), s)). With sin theta from the rounded c, erf's
/// E[phi' phi'] came out ~1e7 times too small (fuzz crash-e5bc8b2f).
#[test]
fn nearly_antiparallel_inputs_match_the_exact_covariance() {
    let (sw, sb, big) = (1.4, 0.2, 1e15);
    let x = [big, 0.0, -big, 1.0];
    let a = sw / 2.0;
    let (q1, q2, s) = (a * big * big + sb, a * (big * big + 1.0) + sb, -a * big * big + sb);
    let gap = a * a * big * big + a * sb * (4.0 * big * big + 1.0);
    let gn = libm::sqrt(gap);
    let expect = |act: Activation| -> (f64, f64) {
        match act {
            Activation::Erf => {
                let dd = libm::sqrt(1.0 + 2.0 * (q1 + q2) + 4.0 * gap);
                ((2.0 / PI) * libm::atan2(2.0 * s, dd), (4.0 / PI) / dd)
            }
            _ => {
                let theta = libm::atan2(gn, s);
                ((gn + (PI - theta) * s) / (2.0 * PI), (PI - theta) / (2.0 * PI))
            }
        }
    };
    for act in [Activation::Erf, Activation::Relu] {
        let mlp = Mlp::new(act, 1, sw, sb);
        let (mut k, mut t) = ([0.0; 4], [0.0; 4]);
        let mut scratch = vec![0.0; kernel_scratch(2, 0, 1)];
        kernel(Some(&mut k), Some(&mut t), &x, None, 2, &mlp, &mut scratch).unwrap();
        let (ff, dd) = expect(act);
        let (k01, t01) = (sw * ff + sb, sw * ff + sb + sw * dd * s);
        for (got, want, what) in [(k[1], k01, "K"), (t[1], t01, "Theta")] {
            let scale = libm::sqrt(k[0] * k[3]).max(libm::sqrt(t[0] * t[3]));
            assert!(
                (got - want).abs() <= 1e-12 * scale.max(want.abs()),
                "{act:?} {what}: {got:e} vs {want:e}"
            );
        }
        // The scalar pair path gives the same bits as the vector rows.
        let pr = mlp.prepare().unwrap();
        let per = kernel_chain_len(1);
        let mut info = KernelInfo::default();
        let c = &scratch[..2 * per];
        let (kp, tp) = pr.pair(&x[..2], &x[2..], &c[..per], &c[per..], &mut info).unwrap();
        assert_eq!((kp.to_bits(), tp.to_bits()), (k[1].to_bits(), t[1].to_bits()), "{act:?}");
    }
}

/// Pairs that broke earlier forms of the first layer's g sin theta (found in review), for erf
/// with one hidden layer against Williams' closed form at the exact covariance: exactly
/// parallel inputs whose unit vectors round (y = -3 x, d = 3: g sin theta = 0, the chord form
/// gave eps |x| |y|), |x - y|^2 beyond f64 without biases, and sqrt(sigma_w2 sigma_b2) beyond
/// f64 (d = 1). The exact g sin theta is computed here independently: 0, the 2 x 2 determinant
/// by Kahan's fma algorithm, and sqrt(a) sqrt(b) |x - y| with x - y exact.
#[test]
fn first_layer_sin_theta_of_hard_pairs() {
    let det = |x: [f64; 2], y: [f64; 2]| {
        let w = x[1] * y[0];
        let e = (-x[1]).mul_add(y[0], w);
        x[0].mul_add(y[1], -w) + e
    };
    let p100 = libm::scalbn(1.0, 100);
    let b1x = [7.0 * p100, 3.0 * p100, p100];
    let b2x = [1e154, 3e153];
    let b2y = [-1.0000001 * 1e154, -1.0000001 * 3e153];
    // (x, y, sigma_w2, sigma_b2, exact g sin theta)
    type Case = (Vec<f64>, Vec<f64>, f64, f64, f64);
    let cases: [Case; 3] = [
        (b1x.to_vec(), b1x.iter().map(|v| -3.0 * v).collect(), 1.0, 0.0, 0.0),
        (b2x.to_vec(), b2y.to_vec(), 2e-200, 0.0, 1e-100 * det(b2x, b2y).abs() * 1e-100),
        (vec![1.0], vec![1.0 + 1e-9], 1e155, 1e155, 1e155 * ((1.0 + 1e-9) - 1.0)),
    ];
    for (x, y, sw, sb, gn) in cases {
        let d = x.len();
        let a = sw / d as f64;
        let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(p, q)| p * q).sum::<f64>();
        let (q1, q2, s) = (a * dot(&x, &x) + sb, a * dot(&y, &y) + sb, a * dot(&x, &y) + sb);
        let dd = libm::hypot(libm::sqrt(1.0 + 2.0 * (q1 + q2)), 2.0 * gn);
        let (ff, dphi) = ((2.0 / PI) * libm::atan2(2.0 * s, dd), (4.0 / PI) / dd);
        let (k_want, t_want) = (sw * ff + sb, sw * ff + sb + sw * dphi * s);
        let xy: Vec<f64> = x.iter().chain(&y).copied().collect();
        let mlp = Mlp::new(Activation::Erf, 1, sw, sb);
        let (mut k, mut t) = ([0.0; 4], [0.0; 4]);
        let mut scratch = vec![0.0; kernel_scratch(2, 0, 1)];
        kernel(Some(&mut k), Some(&mut t), &xy, None, d, &mlp, &mut scratch).unwrap();
        for (got, want, what) in [(k[1], k_want, "K"), (t[1], t_want, "Theta")] {
            assert!(
                (got - want).abs() <= 1e-12 * want.abs(),
                "d = {d}, sw = {sw:e}: {what} {got:e} vs {want:e}"
            );
        }
    }
}
