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
//! tan(3 pi / 8) and pi / 4, with the `MOREBITS` correction of pi / 2): about 1 ulp. asin is
//! Cephes' `asin` (x + x^3 P / Q up to 0.625, the expansion at 1 beyond): about 1 ulp, one
//! division, and a square root only for vectors with a lane beyond 0.625.
//!
//! Branches on "does any lane need this" (asin's outer region, erf's fallback) only skip work:
//! every lane's value is a select on its own predicate, so it does not depend on its neighbours.

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

/// Cephes `asin`, |x| <= 0.625: asin(x) = x + x^3 P(x^2) / Q(x^2) (Q monic).
const AS_P: [f64; 6] = [
    4.253_011_369_004_428e-3,
    -6.019_598_008_014_124e-1,
    5.444_622_390_564_711,
    -1.626_247_967_210_700_2e1,
    1.956_261_983_317_594_7e1,
    -8.198_089_802_484_824,
];
const AS_Q: [f64; 5] = [
    -1.474_091_372_988_853_8e1,
    7.049_610_280_856_842e1,
    -1.471_791_292_232_726e2,
    1.395_105_614_657_485_7e2,
    -4.918_853_881_490_881e1,
];
/// Cephes `asin`, |x| > 0.625: asin(1 - y) = pi / 2 - sqrt(2 y) (1 + y R(y) / S(y)) (S monic).
const AS_R: [f64; 5] = [
    2.967_721_961_301_243e-3,
    -5.634_242_780_008_963e-1,
    6.968_710_824_104_713,
    -2.556_901_049_652_825e1,
    2.853_665_548_261_061_6e1,
];
const AS_S: [f64; 4] = [
    -2.194_779_531_642_920_6e1,
    1.470_656_354_026_815e2,
    -3.838_770_957_603_691e2,
    3.424_398_657_913_078_5e2,
];
/// Where Cephes' `asin` switches from x + x^3 P / Q to the expansion at 1.
const ASIN_SPLIT: f64 = 0.625;

/// Horner's rule, highest coefficient first, one rounding per step (no FMA): Cephes' `polevl`
/// (`LEAD = None`) and `p1evl` (a monic polynomial, `LEAD = Some(1)`).
#[inline(always)]
fn horner<S: Simd>(simd: S, x: S::f64s, lead: Option<f64>, coefs: &[f64]) -> S::f64s {
    let (mut p, rest) = match lead {
        Some(_) => (simd.add_f64s(x, simd.splat_f64s(coefs[0])), &coefs[1..]),
        None => (simd.splat_f64s(coefs[0]), &coefs[1..]),
    };
    for &c in rest {
        p = simd.add_f64s(simd.mul_f64s(p, x), simd.splat_f64s(c));
    }
    p
}

/// `true` when some lane of `m` is set.
#[inline(always)]
pub(crate) fn any<S: Simd>(simd: S, m: S::m64s) -> bool {
    simd.first_true_m64s(m) < S::F64_LANES
}

/// asin(x) for |x| <= 1 (Cephes' `asin`, about 1 ulp): x + x^3 P(x^2) / Q(x^2) for |x| <= 0.625;
/// beyond, with y = 1 - |x|, pi / 4 - ((sqrt(2 y) y R(y) / S(y) - MOREBITS) - (pi / 4 -
/// sqrt(2 y))). One division, and one square root only when a lane has |x| > 0.625 (the other
/// lanes do not depend on whether it is taken). asin(+-0) = +-0, asin(+-1) = +-pi / 2.
#[inline(always)]
pub(crate) fn asin<S: Simd>(simd: S, x: S::f64s) -> S::f64s {
    let splat = |v: f64| simd.splat_f64s(v);
    let a = simd.abs_f64s(x);
    let z = simd.mul_f64s(a, a);
    let mut num = simd.mul_f64s(z, horner(simd, z, None, &AS_P));
    let mut den = horner(simd, z, Some(1.0), &AS_Q);
    let big = simd.greater_than_f64s(a, splat(ASIN_SPLIT));
    let far = any(simd, big);
    let y = simd.sub_f64s(splat(1.0), a);
    if far {
        num = simd.select_f64s(big, simd.mul_f64s(y, horner(simd, y, None, &AS_R)), num);
        den = simd.select_f64s(big, horner(simd, y, Some(1.0), &AS_S), den);
    }
    let ratio = simd.div_f64s(num, den);
    let mut r = simd.add_f64s(simd.mul_f64s(a, ratio), a);
    if far {
        let t = simd.sqrt_f64s(simd.add_f64s(y, y));
        let u = simd.sub_f64s(simd.mul_f64s(t, ratio), splat(MOREBITS));
        let v = simd.sub_f64s(simd.sub_f64s(splat(FRAC_PI_4), t), u);
        r = simd.select_f64s(big, simd.add_f64s(v, splat(FRAC_PI_4)), r);
    }
    simd.or_f64s(r, simd.and_f64s(x, splat(-0.0)))
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

/// sin theta = min(gn / g, 1) in the lanes where `gn` = g sin theta is given (finite, >= 0)
/// and g > 0, `sn` elsewhere: the first layer's sin theta without the rounding of c
/// ([`super::Geometry::with_gn`] is this through one lane).
#[inline(always)]
pub(crate) fn exact_sn<S: Simd>(simd: S, g: S::f64s, sn: S::f64s, gn: Option<S::f64s>) -> S::f64s {
    let Some(gn) = gn else { return sn };
    let zero = simd.splat_f64s(0.0);
    // gn in [0, MAX] (not where |x - x'|^2 overflowed) and g > 0.
    let finite = simd.less_than_or_equal_f64s(gn, simd.splat_f64s(f64::MAX));
    let m = simd.and_m64s(
        simd.and_m64s(simd.greater_than_or_equal_f64s(gn, zero), finite),
        simd.greater_than_f64s(g, zero),
    );
    if !any(simd, m) {
        return sn;
    }
    let safe_g = simd.select_f64s(m, g, simd.splat_f64s(1.0));
    let exact = simd.min_f64s(simd.div_f64s(gn, safe_g), simd.splat_f64s(1.0));
    simd.select_f64s(m, exact, sn)
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

/// erf, the unfactored form: (2 / pi) atan2(2 s, D) and (4 / pi) / D,
/// D = hypot(sqrt(1 + 2 (q1 + q2)), 2 g sn), the hypotenuse as m sqrt(1 + (n / m)^2) with
/// m = max at least 1 (no overflow; exact when n = 0). No cancellation at any c, no overflow at
/// any variance: the fallback of [`erf`] where the factored form loses accuracy.
#[inline(always)]
pub(crate) fn erf_hypot<S: Simd>(
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

/// Largest |rho| for which [`erf`] uses the factored form: there 1 - rho^2 >= 0.12, so the
/// rounding of rho (a few ulp) moves 1 - rho^2 by at most ~30 ulp relative.
pub(crate) const ERF_FACTORED_MAX: f64 = 0.9375;

/// erf: E[phi phi] = (2 / pi) asin(rho), E[phi' phi'] = (4 / pi) r1 r2 / sqrt((1 - rho)(1 + rho)),
/// rho = 2 s r1 r2, with the per-input factors r = 1 / sqrt(1 + 2 q) ([`erf_factor`]) computed
/// once per input and layer: one square root and two divisions per pair instead of four and five.
/// This is Williams' (1997) form, (1 + 2 q1)(1 + 2 q2) - 4 s^2 = (1 - rho^2) / (r1 r2)^2.
///
/// Where |rho| > [`ERF_FACTORED_MAX`] (1 - rho^2 would amplify the rounding of rho: large
/// variances near c = +-1) or r1 r2 is not a normal number (variances beyond ~1e307), or rho is
/// not finite, the lane takes [`erf_hypot`] instead (computed only when some lane needs it; a
/// lane's value does not depend on its neighbours).
#[inline(always)]
pub(crate) fn erf<S: Simd>(
    simd: S,
    q1: S::f64s,
    q2: S::f64s,
    s: S::f64s,
    r1: S::f64s,
    r2: S::f64s,
    gn: Option<S::f64s>,
) -> (S::f64s, S::f64s) {
    let splat = |v: f64| simd.splat_f64s(v);
    let one = splat(1.0);
    let rr = simd.mul_f64s(r1, r2);
    let rho = simd.mul_f64s(simd.add_f64s(s, s), rr);
    // NaN (inf * 0) compares false: such lanes take the fallback.
    let fast = simd.and_m64s(
        simd.less_than_or_equal_f64s(simd.abs_f64s(rho), splat(ERF_FACTORED_MAX)),
        simd.greater_than_or_equal_f64s(rr, splat(f64::MIN_POSITIVE)),
    );
    // Fallback lanes run the factored form at rho = 0 (finite, and no |rho| > 0.625 branch).
    let rho = simd.select_f64s(fast, rho, splat(0.0));
    let w = simd.sqrt_f64s(simd.mul_f64s(simd.sub_f64s(one, rho), simd.add_f64s(one, rho)));
    let mut ff = simd.mul_f64s(splat(2.0 / PI), asin(simd, rho));
    let mut dd = simd.div_f64s(simd.mul_f64s(splat(4.0 / PI), rr), w);
    let slow = simd.not_m64s(fast);
    if any(simd, slow) {
        // sqrt is correctly rounded: the chains' sqrt q, bit for bit.
        let (sq1, sq2) = (simd.sqrt_f64s(q1), simd.sqrt_f64s(q2));
        let (g, _, sn) = geometry(simd, q1, q2, s, sq1, sq2);
        let sn = exact_sn(simd, g, sn, gn);
        let (f2, d2) = erf_hypot(simd, q1, q2, s, g, sn);
        ff = simd.select_f64s(slow, f2, ff);
        dd = simd.select_f64s(slow, d2, dd);
    }
    (ff, dd)
}

/// The per-input factor of [`erf`]: 1 / sqrt(1 + 2 q) (0 when 1 + 2 q overflows).
#[inline(always)]
pub(crate) fn erf_factor(q: f64) -> f64 {
    1.0 / libm::sqrt(1.0 + 2.0 * q)
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

    /// Which per-input value of a chain layer ([`super::Var`]) the family reads besides q:
    /// sqrt q (ReLU family) or 1 / sqrt(1 + 2 q) (erf), as an offset into the layer's values.
    #[inline(always)]
    pub(crate) fn aux_offset(self) -> usize {
        match self {
            Self::Linear(_) => 1,
            Self::Erf => 2,
        }
    }

    /// The value of `v` at [`Family::aux_offset`].
    #[inline(always)]
    pub(crate) fn aux(self, v: &super::Var) -> f64 {
        match self {
            Self::Linear(_) => v.sq,
            Self::Erf => v.r,
        }
    }

    /// (E[phi phi], E[phi' phi']) of the covariance [[q1, s], [s, q2]], from each input's q and
    /// [`Family::aux`] value, and where given g sin theta ([`exact_sn`]).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn moments<S: Simd>(
        self,
        simd: S,
        q1: S::f64s,
        q2: S::f64s,
        s: S::f64s,
        a1: S::f64s,
        a2: S::f64s,
        gn: Option<S::f64s>,
    ) -> (S::f64s, S::f64s) {
        match self {
            Self::Linear(sl) => {
                let (g, c, sn) = geometry(simd, q1, q2, s, a1, a2);
                let sn = exact_sn(simd, g, sn, gn);
                piecewise_linear(simd, sl, s, g, c, sn)
            }
            Self::Erf => erf(simd, q1, q2, s, a1, a2, gn),
        }
    }

    /// One lane: [`Family::moments`] through [`pulp::Scalar`].
    #[inline(always)]
    pub(crate) fn scalar(
        self,
        v1: &super::Var,
        v2: &super::Var,
        s: f64,
        gn: Option<f64>,
    ) -> (f64, f64) {
        self.moments(pulp::Scalar, v1.q, v2.q, s, self.aux(v1), self.aux(v2), gn)
    }
}
