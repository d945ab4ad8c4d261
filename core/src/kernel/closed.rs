//! Closed forms of E[phi(u) phi(v)] and E[phi'(u) phi'(v)], (u, v) ~ N(0, [[q1, s], [s, q2]]).
//!
//! Every formula is written in terms of the [`Geometry`] of the pair (g = sqrt(q1 q2),
//! c = s / g clamped to [-1, 1], sn = sqrt((1 - c)(1 + c)) = sin theta), so that
//! q1 q2 - s^2 = (g sn)^2 is never formed as a difference, products of variances never
//! overflow, and c = 1 exactly gives theta = 0 exactly.

use core::f64::consts::PI;

use super::Geometry;

const TWO_PI: f64 = 2.0 * PI;

/// Piecewise linear a min(x, 0) + b max(x, 0) (ReLU: (0, 1), leaky: (alpha, 1), linear: (1, 1)).
///
/// E[phi phi] = (a - b)^2 g sn / (2 pi) + k s, E[phi' phi'] = k, with
/// k = (a^2 + b^2) / 2 - (a - b)^2 theta / (2 pi) = a b + (a - b)^2 (pi - theta) / (2 pi).
/// The first form is used for c >= 0 (exact at theta = 0), the second for c < 0 (no
/// cancellation in pi - theta = atan2(sn, -c)).
/// (The kernels use `vector::piecewise_linear`; this libm form is the test oracle.)
#[cfg(test)]
pub(crate) fn piecewise_linear(a: f64, b: f64, p: &Geometry) -> (f64, f64) {
    let d2 = (a - b) * (a - b);
    let k = if p.c >= 0.0 {
        let theta = libm::atan2(p.sn, p.c);
        0.5 * (a * a + b * b) - d2 * (theta / TWO_PI)
    } else {
        let pi_minus_theta = libm::atan2(p.sn, -p.c);
        a * b + d2 * (pi_minus_theta / TWO_PI)
    };
    (d2 * (p.g * p.sn) / TWO_PI + k * p.s, k)
}

/// erf: E[phi phi] = (2 / pi) atan2(2 s, D), E[phi' phi'] = (4 / pi) / D, with
/// D = sqrt((1 + 2 q1)(1 + 2 q2) - 4 s^2) = hypot(sqrt(1 + 2 (q1 + q2)), 2 g sn)
/// (the arcsin form of Williams 1997 rewritten without cancellation or overflow).
/// (The kernels use `vector::erf`; this libm form is the test oracle.)
#[cfg(test)]
pub(crate) fn erf(p: &Geometry) -> (f64, f64) {
    let d = libm::hypot(libm::sqrt(1.0 + 2.0 * (p.q1 + p.q2)), 2.0 * p.g * p.sn);
    ((2.0 / PI) * libm::atan2(2.0 * p.s, d), (4.0 / PI) / d)
}

/// GELU x Phi(x), derived with Stein's lemma from phi(u) = E_Z[u 1{Z <= u}] and the bivariate
/// normal orthant probability P(A <= 0, B <= 0) = 1/4 + asin(rho) / (2 pi):
///
/// E[phi phi] = s (1/4 + asin(rho) / (2 pi)) + (q1 q2 det + s^2) / (2 pi P sqrt(det)),
/// E[phi' phi'] = 1/4 + asin(rho) / (2 pi) + s (3 + q1 + q2 + s^2 / det) / (2 pi P sqrt(det)),
///
/// P = (1 + q1)(1 + q2), det = P - s^2, rho = s / sqrt(P); the second is d/ds of the first
/// (Price's theorem). Evaluated as 1/4 + asin(rho) / (2 pi) = atan2(D, -s) / (2 pi),
/// D = sqrt(det) = hypot(sqrt(1 + q1 + q2), g sn), with every ratio bounded.
#[inline(always)]
pub(crate) fn gelu(p: &Geometry) -> (f64, f64) {
    let (a1, a2) = (1.0 + p.q1, 1.0 + p.q2);
    let (sa1, sa2) = (libm::sqrt(a1), libm::sqrt(a2));
    let (r1, r2) = (1.0 / sa1, 1.0 / sa2);
    let d = libm::hypot(libm::sqrt(1.0 + p.q1 + p.q2), p.g * p.sn);
    let rho = (p.s * r1) * r2;
    let angle = libm::atan2(d, -p.s) / TWO_PI;
    let kk = p.s * angle + ((p.q1 / a1) * (p.q2 / a2) * d + rho * rho / d) / TWO_PI;
    let kd = angle
        + (rho * (sa1 * r2 + sa2 * r1 + r1 * r2) / d + rho * rho * (p.s / d) / (d * d)) / TWO_PI;
    (kk, kd)
}
