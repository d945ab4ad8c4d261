//! Gaussian expectations of tanh at large variance, where tanh saturates to +-1 within a
//! small part of the Gaussian's range.
//!
//! The trapezoid rule of [`super::quad`] needs a step of ~1 / sqrt(q) over the whole disc, so
//! ~sqrt(q) nodes per dimension. Here tanh(x) = sign(x) + g(x) with g(x) = tanh(x) - sign(x)
//! odd and |g(x)| <= 2 e^-2|x| (and tanh'(x) = sech^2(x) <= 4 e^-2|x|), so every integrand
//! beyond the exact sign part lives within |x| <= [`SATURATED`] of a kink, whatever q:
//! - one dimension (c = +-1): tanh(r1 z) tanh(r2 z) - s, s = sign(r1 r2), by the trapezoid
//!   rule over |z| <= SATURATED / min |r| (exponentially convergent: the integrand is smooth
//!   and vanishes at the ends);
//! - two dimensions: E[tanh u tanh v] = E[sgn u sgn v] + E[g(u) sgn v] + E[sgn u g(v)] +
//!   E[g(u) g(v)], with E[sgn u sgn v] = (2 / pi) asin c exact, E[g(u) sgn v] =
//!   E[g(u) erf(E[v | u] / (sd(v | u) sqrt 2))] one-dimensional, and E[g(u) g(v)] and
//!   E[sech^2 u sech^2 v] as nested integrals split at the kinks (u = 0, v = 0) and at
//!   v = E[v | u] (where v given u may be a narrow spike): exp-sinh rules on the half-lines,
//!   tanh-sinh between (double-exponential convergence for integrands analytic inside each
//!   piece, however sharp at its ends);
//! - scales far apart, where only one saturates: [`line_mixed`] (c = +-1, one scale past the
//!   trapezoid's node cap, the other unsaturated) and [`narrow_pair`] (a standard deviation
//!   below [`MIN_SCALE`] beside a capped one, expanded in the narrow variable).

use core::f64::consts::{FRAC_PI_2, PI};

use super::{Geometry, Moments, Quadrature};

/// |x| past which |tanh(x) - sign(x)| <= 2 e^-2|x| and sech^2(x) <= 4 e^-2|x| are below 4e-35.
pub(super) const SATURATED: f64 = 40.0;

/// Tanh-sinh range |t| <= T_MAX: the weights there are below 1e-16 of the largest.
const T_MAX: f64 = 3.3;

/// Exp-sinh range [-T_NEAR, T_FAR]: offsets exp((pi/2) sinh t) from 1e-20 (below any
/// feature resolved, see SD_MIN) to 80 (where e^-2x is 1e-69).
const T_NEAR: f64 = 4.07;
const T_FAR: f64 = 1.75;

/// Smallest standard deviation of u or v the 2-D rule takes. For a narrow u, tanh(u) ~ u is
/// far from sign(u): the decomposition's O(1) parts cancel to a result ~ sd, and the rule's
/// error estimate (beside a huge variance) grows from 2e-11 at sd 2e-3 to 2e-10 at 1e-3, 1e-9
/// at 3e-4 and past `max_error` near 1e-6 (below 1e-10 the Gaussian even falls between the exp-sinh
/// nodes, offsets down to 1e-20: E[tanh' tanh'] = 0, silently). [`narrow_pair`] takes
/// those pairs, to a relative ~2 sd^4 (3e-11 at sd 2e-3).
pub(super) const MIN_SCALE: f64 = 2e-3;

/// Finest step tried (exp-sinh and tanh-sinh).
const H_MIN: f64 = 1.0 / 64.0;

/// Relative agreement of two successive steps that the 1-D rules ask for besides `tol`.
const REL: f64 = 1e-12;

/// The same for E[tanh' tanh'] of the 2-D rule (each halving of its step costs 4x).
const REL_PAIR: f64 = 1e-6;

/// Conditional standard deviation below which v given u is taken as the point E[v | u]
/// (relative error O(sd^2) of the smooth integrands).
const SD_MIN: f64 = 1e-9;

/// (tanh(x) - side, sech^2(x)) for `side` = +1 (x >= 0) or -1 (x <= 0), without cancellation:
/// with e = exp(-2 |x|), 1 - tanh |x| = 2 e / (1 + e) and sech^2 x = 4 e / (1 + e)^2.
#[inline(always)]
fn tail(x: f64, side: f64) -> (f64, f64) {
    let e = libm::exp(-2.0 * libm::fabs(x));
    let d = 1.0 + e;
    (-side * 2.0 * e / d, 4.0 * e / (d * d))
}

/// `line` of [`super::quad`] for tanh when both scales saturate inside the disc:
/// E[tanh(r1 z) tanh(r2 z)] = s + E[tanh(r1 z) tanh(r2 z) - s] and E[tanh'(r1 z) tanh'(r2 z)],
/// both integrands even and below 4 e^-2x for |r_min z| > x, so the trapezoid rule (step `h`,
/// `n` nodes on z >= 0) runs over |z| <= SATURATED / r_min only.
pub(super) fn line(r1: f64, r2: f64, (h, n): (f64, usize)) -> Moments {
    let (s1, s2) = (sign(r1), sign(r2));
    let s = s1 * s2;
    // Both integrands are even: z >= 0, weights doubled off 0.
    let node = |z: f64| {
        let mult = if z == 0.0 { 1.0 } else { 2.0 };
        (z, h * mult * libm::exp(-0.5 * z * z) / libm::sqrt(2.0 * PI))
    };
    let t = rule(h, 0..=n as i64, node, |z| {
        let (g1, t1) = tail(r1 * z, s1);
        let (g2, t2) = tail(r2 * z, s2);
        // tanh(a) tanh(b) - s = -s (tanh'(a) + tanh'(b) + (g(a) - s g(b))^2) / 2.
        let g = g1 - s * g2;
        [-0.5 * s * (t1 + t2 + g * g), t1 * t2]
    });
    Moments {
        phiphi: s + t[0][0],
        dphidphi: t[0][1],
        err: libm::fmax(libm::fabs(t[0][0] - t[1][0]), libm::fabs(t[0][1] - t[1][1])) + cut(),
        nodes: n + 1,
    }
}

/// Runs `rules(h)` (the `[T_h, T_2h]` sums of `N` integrals) at steps 1/8, 1/16, ... (at
/// most H_MIN) until each pair agrees to `quad.tol` and to `rel` of its value (so values far
/// below `tol` keep their digits too; `rel` infinite: `tol` only); returns the step-h values, the
/// largest disagreement plus cut() (the error estimate) and the last step.
fn settle<const N: usize>(
    quad: &Quadrature,
    rel: [f64; N],
    mut rules: impl FnMut(f64) -> [[f64; N]; 2],
) -> ([f64; N], f64, f64) {
    let mut h = 0.125;
    loop {
        let t = rules(h);
        let mut err: f64 = 0.0;
        let mut settled = true;
        for i in 0..N {
            let e = libm::fabs(t[0][i] - t[1][i]);
            err = err.max(e);
            settled &= rel[i] == f64::INFINITY || e <= rel[i] * libm::fabs(t[0][i]);
        }
        let err = err + cut();
        if (err <= quad.tol && settled) || h <= H_MIN {
            return (t[0], err, h);
        }
        h *= 0.5;
    }
}

/// Nodes of the exp-sinh rule at step `h`.
fn exp_sinh_nodes(h: f64) -> usize {
    (libm::ceil(T_NEAR / h) + libm::ceil(T_FAR / h)) as usize + 1
}

/// `line` of [`super::quad`] for tanh at two scales far apart: a = max |r| too large for the
/// trapezoid's node cap, b = min |r| (any, 0 included) not saturating inside the disc. On
/// z >= 0 tanh(a z) = 1 + g(a z), so with s = sign(r1 r2) and x = a z,
/// E[tanh(r1 z) tanh(r2 z)] = s (2 int_0^inf tanh(b z) phi(z) dz + (2 / a) int_0^inf g(x)
/// tanh(b x / a) phi(x / a) dx) and E[tanh'(r1 z) tanh'(r2 z)] = (2 / a) int_0^inf
/// sech^2(x) sech^2(b x / a) phi(x / a) dx: three exp-sinh integrals, each smooth at its own
/// scale, [`settle`]d.
pub(super) fn line_mixed(r1: f64, r2: f64, quad: &Quadrature) -> Moments {
    let (a, b) =
        (libm::fmax(libm::fabs(r1), libm::fabs(r2)), libm::fmin(libm::fabs(r1), libm::fabs(r2)));
    let s = sign(r1) * sign(r2);
    let ([phiphi, dphidphi], err, h) = settle(quad, [REL; 2], |h| {
        let near = exp_sinh(0.0, 1.0, h, |z| [2.0 * libm::tanh(b * z) * normal(z, 1.0)]);
        let wide = exp_sinh(0.0, 1.0, h, |x| {
            let (g, d) = tail(x, 1.0);
            let y = b * x / a;
            let (w, dn) = (2.0 / a * normal(x / a, 1.0), 1.0 / libm::cosh(y));
            [w * g * libm::tanh(y), w * d * dn * dn]
        });
        [0, 1].map(|i| [s * (near[i][0] + wide[i][0]), wide[i][1]])
    });
    Moments { phiphi, dphidphi, err, nodes: 2 * exp_sinh_nodes(h) }
}

/// `pair` of [`super::quad`] for tanh when one standard deviation, `narrow` (variance q1), is
/// below [`MIN_SCALE`] and the other, `wide` (q2), needs more trapezoid nodes than allowed:
/// the expansion in u of tanh(u) = u - u^3 / 3 + O(u^5) and tanh'(u) = 1 - u^2 + O(u^4).
/// With u = (s / q2) v + w (w independent of v, variance q1 - s^2 / q2) and Stein's lemma
/// E[v g(v)] = q2 E[g'(v)], for f = tanh: E[u f(v)] = s E[f'], E[u^3 f(v)] =
/// 3 s q1 E[f'] + s^3 E[f'''] and E[u^2 f'(v)] = q1 E[f'] + s^2 E[f'''], where
/// E[f'''] = (E[v^2 f'] - q2 E[f']) / q2^2. So E[tanh u tanh v] = s E[f'] - (3 s q1 E[f'] +
/// s^3 E[f''']) / 3 and E[tanh' u tanh' v] = E[f'] - q1 E[f'] - s^2 E[f'''], to a relative
/// O(q1^2) (the error estimate adds 3 q1^2 of each); E[sech^2 v] and E[v^2 sech^2 v] are
/// exp-sinh integrals in x = v, [`settle`]d.
pub(super) fn narrow_pair(s: f64, narrow: f64, wide: f64, quad: &Quadrature) -> Moments {
    let (q1, q2) = (narrow * narrow, wide * wide);
    // E[g(v)] = (2 / wide) int_0^inf g(x) phi(x / wide) dx for even g.
    let ([e1, e2], err, h) = settle(quad, [REL; 2], |h| {
        exp_sinh(0.0, 1.0, h, |x| {
            let w = 2.0 / wide * normal(x / wide, 1.0) * tail(x, 1.0).1;
            [w, w * x * x]
        })
    });
    // s^2 E[f'''] = r^2 t with r = s / wide = c narrow and t = E[v^2 f'] / q2 - E[f'] (no
    // overflow of s^3 at any variances).
    let (r, t) = (s / wide, e2 / q2 - e1);
    let phiphi = s * (e1 - q1 * e1 - r * r * t / 3.0);
    let dphidphi = e1 - q1 * e1 - r * r * t;
    let err = err + 3.0 * q1 * q1 * libm::fmax(libm::fabs(phiphi), dphidphi);
    Moments { phiphi, dphidphi, err, nodes: exp_sinh_nodes(h) }
}

/// `pair` of [`super::quad`] for tanh when both scales saturate inside the disc and
/// sin theta > 0: the decomposition of the module docs, at steps 1/8, 1/16, ... (at most
/// H_MIN) until two successive steps agree to `quad.tol` (the estimate of the finer one's
/// error) and E[tanh' tanh'] to [`REL_PAIR`] of its value.
pub(super) fn pair(p: &Geometry, quad: &Quadrature) -> Moments {
    let (sq1, sq2) = (libm::sqrt(p.q1), libm::sqrt(p.q2));
    let (c, sn) = (p.c, p.sn);
    let sign_part = 2.0 / PI * libm::atan2(c, sn);
    let mut nodes = 0;
    // E[tanh' tanh'] (positive, ~1 / sqrt(q1 q2) at large variances) to REL_PAIR relative too.
    let ([phiphi, dphidphi], err, _) = settle(quad, [f64::INFINITY, REL_PAIR], |h| {
        // E[g(u) sgn v] with v | u ~ N(c (sq2 / sq1) u, (sq2 sn)^2), and u <-> v.
        let a12 = sign_g(sq1, c * sq2 / sq1, sq2 * sn, h);
        let a21 = sign_g(sq2, c * sq1 / sq2, sq1 * sn, h);
        let (b, dd, n) = g_g(sq1, c * sq2 / sq1, sq2 * sn, h);
        nodes = n;
        [0, 1].map(|i| [sign_part + a12[i] + a21[i] + b[i], dd[i]])
    });
    Moments { phiphi, dphidphi, err, nodes }
}

/// Bound on the parts beyond |x| = SATURATED.
fn cut() -> f64 {
    4.0 * libm::exp(-2.0 * SATURATED)
}

/// +1 or -1 (for +-0 too: the side a scale's sign puts z >= 0 on).
#[inline(always)]
fn sign(x: f64) -> f64 {
    if x < 0.0 {
        -1.0
    } else {
        1.0
    }
}

/// Density of N(0, sd^2) at x.
#[inline(always)]
fn normal(x: f64, sd: f64) -> f64 {
    let t = x / sd;
    libm::exp(-0.5 * t * t) / (sd * libm::sqrt(2.0 * PI))
}

/// Sums `w f(x)` over the nodes `(x, w) = node(k h)`, k in `ks`, into `[T_h, T_2h]` (the
/// step-2h rule is every other node, weights doubled).
fn rule<const N: usize>(
    h: f64,
    ks: core::ops::RangeInclusive<i64>,
    node: impl Fn(f64) -> (f64, f64),
    mut f: impl FnMut(f64) -> [f64; N],
) -> [[f64; N]; 2] {
    let mut sum = [[0.0; N]; 2];
    for k in ks {
        let (x, w) = node(k as f64 * h);
        let v = f(x);
        for i in 0..N {
            sum[0][i] += w * v[i];
            if k % 2 == 0 {
                sum[1][i] += 2.0 * w * v[i];
            }
        }
    }
    sum
}

/// The tanh-sinh rule of step `h` on [a, b] (|t| <= T_MAX): x = (a + b) / 2 + r tanh((pi/2)
/// sinh t), r = (b - a) / 2, for integrands analytic inside and of any kind at the ends.
fn tanh_sinh<const N: usize>(
    a: f64,
    b: f64,
    h: f64,
    f: impl FnMut(f64) -> [f64; N],
) -> [[f64; N]; 2] {
    if b <= a {
        return [[0.0; N]; 2];
    }
    let r = 0.5 * (b - a);
    let n = libm::ceil(T_MAX / h) as i64;
    let node = |t: f64| {
        let s = FRAC_PI_2 * libm::sinh(t);
        let ch = libm::cosh(s);
        // Distance from the nearer end without cancellation: r (1 - tanh |s|).
        let delta = r * 2.0 / (1.0 + libm::exp(2.0 * libm::fabs(s)));
        let x = if t < 0.0 { a + delta } else { b - delta };
        (x, h * r * FRAC_PI_2 * libm::cosh(t) / (ch * ch))
    };
    rule(h, -n..=n, node, f)
}

/// The exp-sinh rule of step `h` on [a, a + dir inf) (`dir` = +-1): x = a + dir exp((pi/2)
/// sinh t) for t in [-T_NEAR, T_FAR], offsets from 1e-20 to 80, for integrands that decay at
/// least like e^-2|x| (the decomposition's) and are of any kind at a.
fn exp_sinh<const N: usize>(
    a: f64,
    dir: f64,
    h: f64,
    f: impl FnMut(f64) -> [f64; N],
) -> [[f64; N]; 2] {
    let (lo, hi) = (libm::ceil(T_NEAR / h) as i64, libm::ceil(T_FAR / h) as i64);
    let node = |t: f64| {
        let e = libm::exp(FRAC_PI_2 * libm::sinh(t));
        (a + dir * e, h * FRAC_PI_2 * libm::cosh(t) * e)
    };
    rule(h, -lo..=hi, node, f)
}

/// [E[g(a) sgn(b)]] at steps h and 2h for a ~ N(0, sa^2), b | a ~ N(kappa a, sd^2):
/// 2 int_0^inf g(a) erf(kappa a / (sd sqrt 2)) phi(a) da (the integrand is even).
fn sign_g(sa: f64, kappa: f64, sd: f64, h: f64) -> [f64; 2] {
    let t = exp_sinh(0.0, 1.0, h, |a| {
        let e = if sd > SD_MIN * libm::fabs(kappa) * SATURATED {
            libm::erf(kappa * a / (sd * core::f64::consts::SQRT_2))
        } else {
            sign(kappa)
        };
        [2.0 * tail(a, 1.0).0 * e * normal(a, sa)]
    });
    [t[0][0], t[1][0]]
}

/// ([E[g(u) g(v)]], [E[sech^2 u sech^2 v]], nodes) at steps h and 2h for u ~ N(0, su^2),
/// v | u ~ N(kappa u, sd^2): 2 int_0^inf of g(u) E[g(v) | u] phi(u) du and its sech^2 twin
/// (both even in u), the inner integrals split at 0 and kappa u; `nodes` counts the inner
/// evaluations.
fn g_g(su: f64, kappa: f64, sd: f64, h: f64) -> ([f64; 2], [f64; 2], usize) {
    let nodes = core::cell::Cell::new(0);
    let outer = exp_sinh(0.0, 1.0, h, |u| {
        let (gu, du) = tail(u, 1.0);
        let m = kappa * u;
        // [E[g(v) | u], E[sech^2 v | u]] at steps h and 2h.
        let inner: [[f64; 2]; 2] = if sd <= SD_MIN * SATURATED {
            let (gv, dv) = tail(m, sign(m));
            [[gv, dv]; 2]
        } else {
            let (lo, hi) = (m.min(0.0), m.max(0.0));
            let f = |side: f64| {
                let nodes = &nodes;
                move |v: f64| {
                    nodes.set(nodes.get() + 1);
                    let (gv, dv) = tail(v, side);
                    let p = normal(v - m, sd);
                    [gv * p, dv * p]
                }
            };
            // Only |v| <= SATURATED matters (g and sech^2 are below cut() beyond): with
            // |m| past it, the piece between 0 and m stops there and the half-line beyond m
            // is dropped (a tanh-sinh rule over [0, m] with |m| >> 1 has no node within
            // SATURATED of 0: its smallest offsets are ~1e-18 of the interval).
            let pieces = [
                if lo < -SATURATED { [[0.0; 2]; 2] } else { exp_sinh(lo, -1.0, h, f(-1.0)) },
                tanh_sinh(lo.max(-SATURATED), hi.min(SATURATED), h, f(sign(m))),
                if hi > SATURATED { [[0.0; 2]; 2] } else { exp_sinh(hi, 1.0, h, f(1.0)) },
            ];
            let mut acc = [[0.0; 2]; 2];
            for t in pieces {
                for (x, y) in acc.iter_mut().zip(t) {
                    x[0] += y[0];
                    x[1] += y[1];
                }
            }
            acc
        };
        let w = 2.0 * normal(u, su);
        // Values at step h from the step-h inner sums; T_2h's nodes read the step-2h ones.
        [w * gu * inner[0][0], w * du * inner[0][1], w * gu * inner[1][0], w * du * inner[1][1]]
    });
    // outer[0] is the step-h rule over u, outer[1] the step-2h rule.
    ([outer[0][0], outer[1][2]], [outer[0][1], outer[1][3]], nodes.get())
}
