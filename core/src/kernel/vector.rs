//! Branch-free closed forms over SIMD lanes (pulp), for the ReLU family and erf.
//!
//! Every function is generic over [`pulp::Simd`] and uses only correctly rounded IEEE operations
//! (add, sub, mul, div, sqrt, min / max of non-NaN values, comparisons, selects, sign bits) and
//! no fused multiply-add, so a lane's result does not depend on the instruction set, the lane
//! count or the lane it sits in: [`pulp::Scalar`] (one lane) gives the same bits as AVX-512.
//! The scalar paths of the kernel module ([`super::moments`], the diagonal chains) call these
//! same functions through [`pulp::Scalar`], so the diagonal, the pairs and `moments` agree bit
//! for bit whichever path computes them.
//!
//! atan2 is Cephes' `atan` (rational minimax approximation on |u| <= 0.66 after reduction by
//! tan(3 pi / 8) and pi / 4, with the `MOREBITS` correction of pi / 2): about 1 ulp.

use core::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};

use pulp::Simd;

/// tan(3 pi / 8) = 1 + sqrt(2).
const TAN_3PI_8: f64 = 2.414_213_562_373_095;
/// pi / 2 - fl(pi / 2).
const MOREBITS: f64 = 6.123_233_995_736_766e-17;
const P0: f64 = -8.750_608_600_031_904e-1;
const P1: f64 = -1.615_753_718_733_365e1;
const P2: f64 = -7.500_855_792_314_705e1;
const P3: f64 = -1.228_866_684_490_136_2e2;
const P4: f64 = -6.485_021_904_942_025e1;
const Q0: f64 = 2.485_846_490_142_306_3e1;
const Q1: f64 = 1.650_270_098_316_988_6e2;
const Q2: f64 = 4.328_810_604_912_903e2;
const Q3: f64 = 4.853_903_996_359_137e2;
const Q4: f64 = 1.945_506_571_482_614e2;
/// 1 / (2 pi).
const INV_TWO_PI: f64 = 0.5 / PI;

/// atan2(y, x) for x >= 0 (any y, both finite; atan2(0, 0) = 0), about 1 ulp.
#[inline(always)]
pub(crate) fn atan2_xpos<S: Simd>(simd: S, y: S::f64s, x: S::f64s) -> S::f64s {
    let splat = |v: f64| simd.splat_f64s(v);
    let ay = simd.abs_f64s(y);
    // Regions of ay / x: (2.414, inf] -> pi/2 + atan(-x / ay); (0.66, 2.414] -> pi/4 +
    // atan((ay - x) / (ay + x)); [0, 0.66] -> atan(ay / x). No quotient over- or underflows.
    let big = simd.greater_than_f64s(ay, simd.mul_f64s(splat(TAN_3PI_8), x));
    let mid = simd.greater_than_f64s(ay, simd.mul_f64s(splat(0.66), x));
    let num =
        simd.select_f64s(big, simd.neg_f64s(x), simd.select_f64s(mid, simd.sub_f64s(ay, x), ay));
    let den = simd.select_f64s(big, ay, simd.select_f64s(mid, simd.add_f64s(ay, x), x));
    let den = simd.select_f64s(simd.equal_f64s(den, splat(0.0)), splat(1.0), den);
    let base = simd.select_f64s(
        big,
        splat(FRAC_PI_2),
        simd.select_f64s(mid, splat(FRAC_PI_4), splat(0.0)),
    );
    let extra = simd.select_f64s(
        big,
        splat(MOREBITS),
        simd.select_f64s(mid, splat(0.5 * MOREBITS), splat(0.0)),
    );
    let u = simd.div_f64s(num, den);
    let z = simd.mul_f64s(u, u);
    let mut p = splat(P0);
    for c in [P1, P2, P3, P4] {
        p = simd.add_f64s(simd.mul_f64s(p, z), splat(c));
    }
    let mut q = simd.add_f64s(z, splat(Q0));
    for c in [Q1, Q2, Q3, Q4] {
        q = simd.add_f64s(simd.mul_f64s(q, z), splat(c));
    }
    let r = simd.div_f64s(simd.mul_f64s(z, p), q);
    let at = simd.add_f64s(simd.mul_f64s(u, r), u);
    let a = simd.add_f64s(base, simd.add_f64s(at, extra));
    // a >= 0: give it y's sign.
    simd.or_f64s(a, simd.and_f64s(y, splat(-0.0)))
}

#[cfg(test)]
/// asin(x) = atan2(x, sqrt((1 - x)(1 + x))) for |x| <= 1.
#[inline(always)]
pub(crate) fn asin<S: Simd>(simd: S, x: S::f64s) -> S::f64s {
    let one = simd.splat_f64s(1.0);
    let c = simd.sqrt_f64s(simd.mul_f64s(simd.sub_f64s(one, x), simd.add_f64s(one, x)));
    atan2_xpos(simd, x, c)
}

/// (g, c, sn) of [`super::Geometry::new`] (bit for bit) for finite q1, q2 >= 0 and finite s.
#[inline(always)]
pub(crate) fn geometry<S: Simd>(
    simd: S,
    q1: S::f64s,
    q2: S::f64s,
    s: S::f64s,
    sq1: S::f64s,
    sq2: S::f64s,
) -> (S::f64s, S::f64s, S::f64s) {
    let splat = |v: f64| simd.splat_f64s(v);
    let p = simd.mul_f64s(q1, q2);
    let ok = simd.and_m64s(
        simd.greater_than_or_equal_f64s(p, splat(f64::MIN_POSITIVE)),
        simd.less_than_or_equal_f64s(p, splat(f64::MAX)),
    );
    let g = simd.select_f64s(
        simd.equal_f64s(q1, q2),
        q1,
        simd.select_f64s(ok, simd.sqrt_f64s(p), simd.mul_f64s(sq1, sq2)),
    );
    let pos = simd.greater_than_f64s(g, splat(0.0));
    let safe_g = simd.select_f64s(pos, g, splat(1.0));
    let ratio = simd.min_f64s(simd.max_f64s(simd.div_f64s(s, safe_g), splat(-1.0)), splat(1.0));
    let c = simd.select_f64s(pos, ratio, splat(0.0));
    let one = splat(1.0);
    let sn = simd.sqrt_f64s(simd.mul_f64s(simd.sub_f64s(one, c), simd.add_f64s(one, c)));
    (g, c, sn)
}

/// Constants of the piecewise linear a min(x, 0) + b max(x, 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slopes {
    /// (a - b)^2.
    d2: f64,
    /// (a^2 + b^2) / 2.
    h: f64,
    /// a b.
    ab: f64,
}

impl Slopes {
    pub(crate) fn new(a: f64, b: f64) -> Self {
        Self { d2: (a - b) * (a - b), h: 0.5 * (a * a + b * b), ab: a * b }
    }
}

/// Piecewise linear (ReLU, leaky, linear): (E[phi phi], E[phi' phi']) as in
/// `closed::piecewise_linear`: k = h - d2 theta / (2 pi) for c >= 0 (exact at theta = 0),
/// a b + d2 (pi - theta) / (2 pi) for c < 0, with the angle atan2(sn, |c|).
#[inline(always)]
pub(crate) fn piecewise_linear<S: Simd>(
    simd: S,
    sl: Slopes,
    s: S::f64s,
    g: S::f64s,
    c: S::f64s,
    sn: S::f64s,
) -> (S::f64s, S::f64s) {
    let splat = |v: f64| simd.splat_f64s(v);
    let ang = atan2_xpos(simd, sn, simd.abs_f64s(c));
    let frac = simd.mul_f64s(splat(sl.d2), simd.mul_f64s(ang, splat(INV_TWO_PI)));
    let k = simd.select_f64s(
        simd.greater_than_or_equal_f64s(c, splat(0.0)),
        simd.sub_f64s(splat(sl.h), frac),
        simd.add_f64s(splat(sl.ab), frac),
    );
    let lin = simd.mul_f64s(splat(sl.d2), simd.mul_f64s(simd.mul_f64s(g, sn), splat(INV_TWO_PI)));
    (simd.add_f64s(lin, simd.mul_f64s(k, s)), k)
}

/// erf: (2 / pi) atan2(2 s, D) and (4 / pi) / D, D = hypot(sqrt(1 + 2 (q1 + q2)), 2 g sn), the
/// hypotenuse as m sqrt(1 + (n / m)^2) (m = max >= 1, no overflow; exact when n = 0).
#[inline(always)]
pub(crate) fn erf<S: Simd>(
    simd: S,
    q1: S::f64s,
    q2: S::f64s,
    s: S::f64s,
    g: S::f64s,
    sn: S::f64s,
) -> (S::f64s, S::f64s) {
    let splat = |v: f64| simd.splat_f64s(v);
    let two = splat(2.0);
    let a = simd.sqrt_f64s(simd.add_f64s(splat(1.0), simd.mul_f64s(two, simd.add_f64s(q1, q2))));
    let b = simd.mul_f64s(simd.mul_f64s(two, g), sn);
    let m = simd.max_f64s(a, b);
    let n = simd.min_f64s(a, b);
    let r = simd.div_f64s(n, m);
    let d = simd.mul_f64s(m, simd.sqrt_f64s(simd.add_f64s(splat(1.0), simd.mul_f64s(r, r))));
    let ang = atan2_xpos(simd, simd.mul_f64s(two, s), d);
    (simd.mul_f64s(splat(2.0 / PI), ang), simd.div_f64s(splat(4.0 / PI), d))
}

/// The closed-form families computed here.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Family {
    /// Piecewise linear with its slopes.
    Linear(Slopes),
    /// erf.
    Erf,
}

impl Family {
    /// The family of `act`, `None` for GELU, tanh and sigmoid.
    pub(crate) fn of(act: crate::activation::Activation) -> Option<Self> {
        use crate::activation::Activation;
        match act {
            Activation::Erf => Some(Self::Erf),
            Activation::Gelu | Activation::Tanh | Activation::Sigmoid => None,
            _ => {
                let (a, b) = act.slopes().unwrap_or((1.0, 1.0));
                Some(Self::Linear(Slopes::new(a, b)))
            }
        }
    }

    /// (E[phi phi], E[phi' phi']) from the covariance and its geometry.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn moments<S: Simd>(
        self,
        simd: S,
        q1: S::f64s,
        q2: S::f64s,
        s: S::f64s,
        g: S::f64s,
        c: S::f64s,
        sn: S::f64s,
    ) -> (S::f64s, S::f64s) {
        match self {
            Self::Linear(sl) => piecewise_linear(simd, sl, s, g, c, sn),
            Self::Erf => erf(simd, q1, q2, s, g, sn),
        }
    }

    /// One lane: [`Family::moments`] through [`pulp::Scalar`].
    #[inline(always)]
    pub(crate) fn scalar(self, p: &super::Geometry) -> (f64, f64) {
        self.moments(pulp::Scalar, p.q1, p.q2, p.s, p.g, p.c, p.sn)
    }
}
