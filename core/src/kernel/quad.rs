//! Gaussian expectations by the trapezoid rule in z, with the step set by the analyticity strip.
//!
//! For f analytic in |Im z| < a, the trapezoid rule of step h for the integral of f(z) phi(z)
//! over the real line errs by about M exp(-2 pi a / h) (Trefethen & Weideman, SIAM Rev. 2014):
//! exponential convergence. For tanh(sqrt(q) z) the nearest poles sit at z = +-i pi / (2 sqrt q),
//! so a ~ 1 / sqrt(q) and the node count grows like sqrt(q) (Gauss–Hermite, whose convergence
//! is set by growth instead, stalls there). The step is chosen so that the rule of step 2 h
//! (every other node, evaluated for free) already meets the tolerance: |T_h - T_2h| is then an
//! estimate of the error of T_2h, an upper bound for that of the returned T_h. The disc
//! |z| <= Z is chosen so that the truncated mass is e^-12 tol; a bound on it (from the largest
//! |phi| met) is added to the estimate. Where tanh saturates inside the disc (or the grid
//! would pass `max_nodes`), [`super::saturated`] takes over at a cost independent of q.

use core::f64::consts::PI;

use super::saturated::{self, SATURATED};
use super::{Geometry, Moments, Quadrature};
use crate::activation::Activation;

/// 2 / sqrt(pi).
const FRAC_2_SQRT_PI: f64 = core::f64::consts::FRAC_2_SQRT_PI;
/// The strip half-width is capped: the Gaussian weight grows like exp(a^2 / 2) off the axis.
const MAX_STRIP: f64 = 2.0;
/// Fraction of the distance to the nearest singularity used as the strip.
const STRIP_FRACTION: f64 = 0.8;

/// Distance from the real axis of phi's nearest complex singularity, in units of phi's
/// argument (pi / 2 for tanh; 1 for entire functions, where it bounds the growth exp(|Im|^2)).
pub(crate) fn singularity_distance(act: Activation) -> f64 {
    match act {
        Activation::Tanh => PI / 2.0,
        Activation::Sigmoid => PI,
        _ => 1.0,
    }
}

/// phi(x) and phi'(x) with one transcendental where possible.
#[inline(always)]
fn phi_dphi(act: Activation, x: f64) -> (f64, f64) {
    match act {
        Activation::Tanh => {
            let t = libm::tanh(x);
            (t, 1.0 - t * t)
        }
        Activation::Erf => (libm::erf(x), FRAC_2_SQRT_PI * libm::exp(-x * x)),
        _ => (act.phi(x), act.dphi(x)),
    }
}

/// `true` when phi is odd and phi' even, so the integrand is even in (z1, z2).
fn is_odd(act: Activation) -> bool {
    matches!(act, Activation::Tanh | Activation::Erf | Activation::Linear)
}

/// Truncation radius Z: P(|z| > Z) in the plane is exp(-Z^2 / 2) = e^-12 tol, negligible next to
/// the discretisation error (which the estimate measures).
fn radius(tol: f64) -> f64 {
    libm::sqrt(2.0 * (libm::log(1.0 / tol) + 12.0))
}

/// Bound on the truncated Gaussian mass beyond Z, per unit of the integrand's size on the
/// truncation circle, with a factor 1 + Z^2 for integrands that grow (GELU).
fn tail(tol: f64) -> f64 {
    let z = radius(tol);
    libm::exp(-0.5 * z * z) * (1.0 + z * z)
}

/// Step h and nodes per side n (even, h n = Z) for an analyticity strip of half-width `strip`.
pub(crate) fn grid(strip: f64, quad: &Quadrature) -> (f64, usize) {
    span(radius(quad.tol), step(strip, quad), quad)
}

/// Largest step for an analyticity strip of half-width `strip`: T_2h meets the tolerance,
/// exp(-2 pi a / (2 h)) M = tol with M ~ e^5 covering the strip bound.
fn step(strip: f64, quad: &Quadrature) -> f64 {
    let a = STRIP_FRACTION * if strip < MAX_STRIP { strip } else { MAX_STRIP };
    PI * a / (libm::log(1.0 / quad.tol) + 5.0)
}

/// Most nodes per side: `max_nodes` rounded down to even, at least 2.
fn cap(quad: &Quadrature) -> usize {
    (quad.max_nodes & !1).max(2)
}

/// Step and nodes per side n (even, at most `max_nodes`, h n = z) covering [0, z] with steps
/// of at most `h`.
fn span(z: f64, h: f64, quad: &Quadrature) -> (f64, usize) {
    let n = libm::ceil(z / h);
    let cap = cap(quad);
    let mut n = if n < cap as f64 { n as usize } else { cap };
    n += n & 1;
    (z / n as f64, n.max(2))
}

/// E[phi(r1 z) phi(r2 z)] and E[phi'(r1 z) phi'(r2 z)], z ~ N(0, 1) (a degenerate pair, c = +-1).
pub(crate) fn line(act: Activation, r1: f64, r2: f64, quad: &Quadrature) -> Moments {
    if act == Activation::Sigmoid {
        // sigma(x) = (1 + tanh(x / 2)) / 2, sigma'(x) = tanh'(x / 2) / 4.
        let m = line(Activation::Tanh, 0.5 * r1, 0.5 * r2, quad);
        return sigmoid_from_tanh(m);
    }
    let rmax = libm::fmax(libm::fabs(r1), libm::fabs(r2));
    let strip = if rmax > 0.0 { singularity_distance(act) / rmax } else { MAX_STRIP };
    let (h, n) = grid(strip, quad);
    if act == Activation::Tanh {
        let rmin = libm::fmin(libm::fabs(r1), libm::fabs(r2));
        if rmin * radius(quad.tol) > SATURATED {
            return saturated::line(r1, r2, span(SATURATED / rmin, step(strip, quad), quad));
        }
        if n >= cap(quad) {
            // One scale saturates far inside the disc, the other not at all.
            return saturated::line_mixed(r1, r2, quad);
        }
    }
    let even = is_odd(act);
    let (mut f, mut d, mut f2, mut d2) = (0.0, 0.0, 0.0, 0.0);
    let (mut mf, mut md) = (0.0, 0.0);
    let start = if even { 0 } else { -(n as isize) };
    for k in start..=n as isize {
        let z = k as f64 * h;
        let mult = if even && k != 0 { 2.0 } else { 1.0 };
        let w = mult * libm::exp(-0.5 * z * z);
        let (pu, du) = phi_dphi(act, r1 * z);
        let (pv, dv) = phi_dphi(act, r2 * z);
        mf = libm::fmax(mf, libm::fabs(pu * pv));
        md = libm::fmax(md, libm::fabs(du * dv));
        f += w * pu * pv;
        d += w * du * dv;
        if k % 2 == 0 {
            f2 += w * pu * pv;
            d2 += w * du * dv;
        }
    }
    let norm = h / libm::sqrt(2.0 * PI);
    let (f, d, f2, d2) = (f * norm, d * norm, 2.0 * f2 * norm, 2.0 * d2 * norm);
    let nodes = if even { n + 1 } else { 2 * n + 1 };
    let t = tail(quad.tol);
    Moments {
        phiphi: f,
        dphidphi: d,
        err: libm::fmax(libm::fabs(f - f2) + t * mf, libm::fabs(d - d2) + t * md),
        nodes,
    }
}

/// The tensor trapezoid rule over (z1, z2) with u = sqrt(q1) z1, v = sqrt(q2) (c z1 + sn z2),
/// truncated to the disc z1^2 + z2^2 <= Z^2; `line` when sn = 0.
pub(crate) fn pair(act: Activation, p: &Geometry, quad: &Quadrature) -> Moments {
    if act == Activation::Sigmoid {
        let g = Geometry {
            q1: 0.25 * p.q1,
            q2: 0.25 * p.q2,
            s: 0.25 * p.s,
            g: 0.25 * p.g,
            c: p.c,
            sn: p.sn,
        };
        return sigmoid_from_tanh(pair(Activation::Tanh, &g, quad));
    }
    if p.q1 == 0.0 && p.q2 == 0.0 {
        // u = v = 0: exact.
        let (f, d) = phi_dphi(act, 0.0);
        return Moments { phiphi: f * f, dphidphi: d * d, err: 0.0, nodes: 0 };
    }
    let (sq1, sq2) = (libm::sqrt(p.q1), libm::sqrt(p.q2));
    if p.sn == 0.0 {
        return line(act, sq1, sq2 * p.c, quad);
    }
    let kappa = singularity_distance(act);
    let (bu, bv) = (sq2 * p.c, sq2 * p.sn);
    // Strip in z1 with z2 real (u and v both move), in z2 with z1 real (only v moves).
    let m1 = libm::fmax(sq1, libm::fabs(bu));
    let strip1 = if m1 > 0.0 { kappa / m1 } else { MAX_STRIP };
    let strip2 = if bv > 0.0 { kappa / bv } else { MAX_STRIP };
    let (h1, n1) = grid(strip1, quad);
    let (h2, n2) = grid(strip2, quad);
    let z = radius(quad.tol);
    if act == Activation::Tanh {
        // Saturated inside the disc, or more nodes than allowed: ~sqrt(q) per dimension.
        // Below saturated::MIN_SCALE the 2-D rule's decomposition does not fit: that pair is
        // expanded in the narrow variable instead (Stein's lemma, to second order).
        let capped = n1.max(n2) >= cap(quad);
        let smin = libm::fmin(sq1, sq2);
        if smin * z > SATURATED || (capped && smin >= saturated::MIN_SCALE) {
            return saturated::pair(p, quad);
        }
        if capped {
            return saturated::narrow_pair(p.s, smin, libm::fmax(sq1, sq2), quad);
        }
    }
    let zz = z * z * (1.0 + 1e-12);
    let even = is_odd(act);
    // Gaussian weights along z2 by recurrence: e_{j+1} = e_j r_j, r_{j+1} = r_j exp(-h2^2).
    let rho = libm::exp(-h2 * h2);
    let r0 = libm::exp(-0.5 * h2 * h2);
    let (mut f, mut d, mut f2, mut d2) = (0.0, 0.0, 0.0, 0.0);
    // Largest |phi| and |phi'| seen for u and v, for the truncation term of the estimate.
    let (mut mu, mut mdu, mut mv, mut mdv) = (0.0, 0.0, 0.0, 0.0);
    let mut nodes = 0usize;
    let start = if even { 0 } else { -(n1 as isize) };
    for i in start..=n1 as isize {
        let z1 = i as f64 * h1;
        let rem = zz - z1 * z1;
        if rem < 0.0 {
            continue;
        }
        let jmax = {
            let j = libm::floor(libm::sqrt(rem) / h2);
            if j < n2 as f64 {
                j as usize
            } else {
                n2
            }
        };
        let mult = if even && i != 0 { 2.0 } else { 1.0 };
        let w1 = mult * libm::exp(-0.5 * z1 * z1);
        let (pu, du) = phi_dphi(act, sq1 * z1);
        mu = libm::fmax(mu, libm::fabs(pu));
        mdu = libm::fmax(mdu, libm::fabs(du));
        let m = bu * z1;
        let (mut sf, mut sd, mut sf2, mut sd2) = (0.0, 0.0, 0.0, 0.0);
        let (mut e, mut r) = (1.0, r0);
        for j in 0..=jmax {
            let z2 = j as f64 * h2;
            let (pv, dv) = phi_dphi(act, m + bv * z2);
            let (mut tf, mut td) = (pv, dv);
            mv = libm::fmax(mv, libm::fabs(pv));
            mdv = libm::fmax(mdv, libm::fabs(dv));
            if j > 0 {
                let (pw, dw) = phi_dphi(act, m - bv * z2);
                tf += pw;
                td += dw;
                mv = libm::fmax(mv, libm::fabs(pw));
                mdv = libm::fmax(mdv, libm::fabs(dw));
            }
            sf += e * tf;
            sd += e * td;
            if j % 2 == 0 {
                sf2 += e * tf;
                sd2 += e * td;
            }
            e *= r;
            r *= rho;
        }
        nodes += 2 * jmax + 1;
        f += w1 * pu * sf;
        d += w1 * du * sd;
        if i % 2 == 0 {
            f2 += w1 * pu * sf2;
            d2 += w1 * du * sd2;
        }
    }
    let norm = h1 * h2 / (2.0 * PI);
    let (f, d, f2, d2) = (f * norm, d * norm, 4.0 * f2 * norm, 4.0 * d2 * norm);
    let t = tail(quad.tol);
    Moments {
        phiphi: f,
        dphidphi: d,
        err: libm::fmax(libm::fabs(f - f2) + t * mu * mv, libm::fabs(d - d2) + t * mdu * mdv),
        nodes,
    }
}

/// E[sigma sigma] = 1/4 + E[tanh tanh] / 4 (the odd cross terms vanish),
/// E[sigma' sigma'] = E[tanh' tanh'] / 16, for the covariance scaled by 1/4.
fn sigmoid_from_tanh(m: Moments) -> Moments {
    Moments {
        phiphi: 0.25 + 0.25 * m.phiphi,
        dphidphi: m.dphidphi / 16.0,
        err: 0.25 * m.err,
        nodes: m.nodes,
    }
}
