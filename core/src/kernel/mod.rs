//! Infinite-width kernels of a fully connected network: the NNGP kernel K and the NTK Theta
//! (DESIGN §4), allocation-free, in f64.
//!
//! NTK parameterization, for a pair (x, x') and (u, v) ~ N(0, Sigma^l) (a 2 x 2 covariance):
//!
//! ```text
//! Sigma^1 = sigma_w^2 <x, x'> / d + sigma_b^2,      Theta^1 = Sigma^1
//! Sigma^{l+1} = sigma_w^2 E[phi(u) phi(v)] + sigma_b^2
//! Theta^{l+1} = Sigma^{l+1} + sigma_w^2 E[phi'(u) phi'(v)] Theta^l
//! K = Sigma^{L+1}, Theta = Theta^{L+1}
//! ```
//!
//! This is neural-tangents'
//! `stax.serial(stax.Dense(n, W_std=sigma_w, b_std=sigma_b, parameterization='ntk'), stax.Relu(),
//! ... (L times) ..., stax.Dense(k, W_std=sigma_w, b_std=sigma_b, parameterization='ntk'))`
//! with `kernel_fn(x1, x2, ('nngp', 'ntk'))` (per output; the kernels are `K I_k`, `Theta I_k`);
//! without biases pass `b_std=None`. Standard parameterization (`parameterization='standard'`,
//! whose `Dense` out_dim is the width n_l): the NNGP recursion is the same, and the NTK, from
//! the empirical NTK of DESIGN §3 (weight gradients give <x^{l-1}, x'^{l-1}>, which tends to
//! n_{l-1} E[phi(u) phi(v)], bias gradients give 1), is
//!
//! ```text
//! Theta^1 = <x, x'> + 1,   Theta^{l+1} = n_l E[phi(u) phi(v)] + 1 + sigma_w^2 E[phi'(u) phi'(v)] Theta^l
//! ```
//!
//! Without biases every sigma_b^2 and `+ 1` is dropped. Gaussian expectations use closed forms
//! for the ReLU family, linear, erf and GELU ([`moments`]) and the trapezoid rule of
//! [`quadrature_moments`] for tanh and sigmoid.
//!
//! Numerics: c = s / sqrt(q1 q2) is clamped to [-1, 1]; theta = atan2(sqrt((1 - c)(1 + c)), c)
//! and pi - theta = atan2(sqrt((1 - c)(1 + c)), -c), so neither end cancels; a pair with c = 1
//! (the diagonal) gets theta = 0 exactly. neural-tangents' ReLU diagonal carries ~1e-8 round-off
//! (arctan2 of the square root of a difference of nearly equal numbers); ours is exact. A zero
//! variance uses the convention theta = pi / 2 (c = 0), as neural-tangents. Where the first
//! layer's sin^2 theta < 2^-10 (nearly parallel or antiparallel inputs), sin theta is taken
//! from g sin theta = sqrt(q1 q2 - s^2) computed from the inputs without cancellation
//! (`first_gn`): the rounding of c would leave it only sqrt(eps), which the smooth
//! activations' kernels multiply by sqrt(q) (huge inputs) and the chaotic phase by chi_1 per
//! layer.
//!
//! Speed: the closed forms of the ReLU family and erf are evaluated over SIMD lanes (pulp;
//! Cephes-style atan2 and asin, within 1 ulp of libm) with only correctly rounded operations and
//! no fused multiply-add, so one lane ([`pulp::Scalar`], used by [`moments`] and the diagonal
//! chains) and eight (AVX-512) give the same bits. erf uses Williams' arcsin form factored per
//! input: with r = 1 / sqrt(1 + 2 q) stored in each input's chain, rho = 2 s r1 r2 and
//! E[phi phi] = (2 / pi) asin(rho), E[phi' phi'] = (4 / pi) r1 r2 / sqrt((1 - rho)(1 + rho)):
//! one square root and two divisions per pair and layer (the unfactored hypot form, four and
//! five, remains the fallback where |rho| > 0.9375). [`kernel_rows`] runs tiles of 8 rows
//! against chunks of 64 columns, all layers of a pair while it sits in L1, with inner products in
//! a fixed 8-accumulator order that every instruction set reproduces.

mod closed;
mod quad;
mod saturated;
#[cfg(test)]
mod tests;
mod vector;

use crate::activation::Activation;
use crate::error::{check_len, check_shape, Error, Pass};
use crate::spec::{Parameterization, Spec};

/// Trapezoid-rule settings for activations without a closed form (tanh, sigmoid).
///
/// The step is h = pi a / (ln(1 / tol) + 5), a = 0.8 min(d / sqrt(q), 2) with d the distance of
/// phi's nearest complex singularity from the real axis (pi / 2 for tanh), over |z| <= Z,
/// Z = sqrt(2 (ln(1 / tol) + 12)); so the rule of step 2 h already reaches `tol`. Where tanh
/// saturates inside the disc (sqrt(q) Z > 40) or the grid would pass `max_nodes`, rules
/// around its kinks take over (`saturated`, fixed cost at any q, also to `tol`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quadrature {
    /// Target absolute error (default 1e-10).
    pub tol: f64,
    /// Largest number of trapezoid nodes per half-axis and dimension (default 2048).
    pub max_nodes: usize,
    /// A kernel evaluation fails with [`Error::NoConvergence`] when an error estimate exceeds
    /// this (default 1e-6; at the default `tol` and `max_nodes` a scan of tanh pairs over
    /// variances 1e-300..1e300 and c in [-1, 1] found none; a `tol` below what the finest
    /// step of the saturated rules reaches fails).
    pub max_error: f64,
}

impl Default for Quadrature {
    fn default() -> Self {
        Self { tol: 1e-10, max_nodes: 2048, max_error: 1e-6 }
    }
}

impl Quadrature {
    fn check(&self) -> Result<(), Error> {
        if !(self.tol > 0.0 && self.tol < 1.0) {
            return Err(Error::InvalidSpec { field: "quadrature.tol", value: self.tol });
        }
        if self.max_nodes < 2 {
            return Err(Error::InvalidSpec {
                field: "quadrature.max_nodes",
                value: self.max_nodes as f64,
            });
        }
        if self.max_error.is_nan() || self.max_error <= 0.0 {
            return Err(Error::InvalidSpec {
                field: "quadrature.max_error",
                value: self.max_error,
            });
        }
        Ok(())
    }

    /// Step h and nodes per half-axis n (h n = Z) for an analyticity strip |Im z| < `strip`.
    pub fn step(&self, strip: f64) -> (f64, usize) {
        quad::grid(strip, self)
    }
}

/// The two Gaussian expectations of one covariance: E[phi(u) phi(v)] and E[phi'(u) phi'(v)].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    /// E[phi(u) phi(v)].
    pub phiphi: f64,
    /// E[phi'(u) phi'(v)].
    pub dphidphi: f64,
    /// Estimated absolute error of either (0 for closed forms): |T_h - T_2h|.
    pub err: f64,
    /// Function evaluations (0 for closed forms).
    pub nodes: usize,
}

/// The covariance [[q1, s], [s, q2]] in the form the formulas use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub(crate) q1: f64,
    pub(crate) q2: f64,
    pub(crate) s: f64,
    /// sqrt(q1 q2), exactly q1 when q1 == q2.
    pub(crate) g: f64,
    /// s / g clamped to [-1, 1]; 0 when g = 0.
    pub(crate) c: f64,
    /// sqrt((1 - c)(1 + c)) = sin theta.
    pub(crate) sn: f64,
}

impl Geometry {
    #[inline(always)]
    pub(crate) fn new(q1: f64, q2: f64, s: f64, sq1: f64, sq2: f64) -> Self {
        // One rounding less than sq1 * sq2 when the product is representable.
        let p = q1 * q2;
        let g = if q1 == q2 {
            q1
        } else if p.is_finite() && p >= f64::MIN_POSITIVE {
            libm::sqrt(p)
        } else {
            sq1 * sq2
        };
        let c = if g > 0.0 { (s / g).clamp(-1.0, 1.0) } else { 0.0 };
        Self { q1, q2, s, g, c, sn: libm::sqrt((1.0 - c) * (1.0 + c)) }
    }

    /// With sin theta = gn / g (at most 1) where `gn` = g sin theta is known without
    /// cancellation ([`first_gn`]) and g > 0; as [`vector::exact_sn`], bit for bit.
    #[inline(always)]
    pub(crate) fn with_gn(mut self, gn: Option<f64>) -> Self {
        self.sn = vector::exact_sn(pulp::Scalar, self.g, self.sn, gn);
        self
    }

    /// Whether sin theta is small enough that the rounding of c costs it accuracy (its
    /// relative error is about eps / sin^2 theta): then the first layer takes [`first_gn`].
    #[inline(always)]
    fn near_parallel(&self) -> bool {
        self.sn * self.sn < NEAR_PARALLEL
    }
}

/// sin^2 theta below which the first layer recomputes g sin theta from the inputs
/// ([`first_gn`]); above it the rounding of c leaves sin theta within ~1e-13 relative.
const NEAR_PARALLEL: f64 = 1.0 / 1024.0;

/// g sin theta = sqrt(q1 q2 - s^2) of the first layer's covariance of the inputs (x, y),
/// without forming that difference: with a = sigma_w^2 / d and b = sigma_b^2,
/// q1 q2 - s^2 = a^2 |x|^2 |r|^2 + a b |x - y|^2, where r = y - t x (t = <x, y> / |x|^2) is
/// y's component orthogonal to x. Each component of r is one fused multiply-add (rounded once)
/// and t is refined once from <x, r>, so |r| is right to a few ulp of itself down to
/// ~eps^2 |y| (exactly parallel inputs such as y = -3 x give ~eps^2, where chords of unit
/// vectors would give eps); the inputs are scaled by powers of two first, so no sum overflows
/// or underflows, and the |x - y| term is skipped without biases. Used where c = s / g is close
/// to +-1, where sqrt((1 - c)(1 + c)) keeps only sqrt(eps) of sin theta.
fn first_gn(x: &[f64], y: &[f64], a: f64, b: f64) -> f64 {
    if x == y {
        return 0.0;
    }
    // The same bits for (x, y) and (y, x): the pair in a fixed order (of their bit patterns).
    let (x, y) = if y.iter().map(|v| v.to_bits()).lt(x.iter().map(|v| v.to_bits())) {
        (y, x)
    } else {
        (x, y)
    };
    // Powers of two (exact scalings) near the largest |x_i|, |y_i|.
    let scale = |v: &[f64]| {
        let m = v.iter().fold(0.0f64, |m, e| m.max(e.abs()));
        if m > 0.0 {
            libm::scalbn(1.0, libm::ilogb(m))
        } else {
            1.0
        }
    };
    let (sx, sy) = (scale(x), scale(y));
    let pairs = || x.iter().zip(y).map(|(&xi, &yi)| (xi / sx, yi / sy));
    let sa = libm::sqrt(a);
    let nx2: f64 = pairs().map(|(u, _)| u * u).sum();
    let cross = if nx2 > 0.0 {
        let t = pairs().map(|(u, v)| u * v).sum::<f64>() / nx2;
        let r = |(u, v): (f64, f64)| libm::fma(-t, u, v);
        let t2 = pairs().map(|p| p.0 * r(p)).sum::<f64>() / nx2;
        let rr: f64 = pairs().map(|p| libm::fma(-t2, p.0, r(p))).map(|e| e * e).sum();
        // sqrt(a) |x| <= sqrt(q1) and sqrt(a) |r| <= sqrt(q2): neither factor overflows.
        (sa * sx * libm::sqrt(nx2)) * (sa * sy * libm::sqrt(rr))
    } else {
        0.0
    };
    let bias = if b > 0.0 {
        let m = sx.max(sy);
        let dd: f64 = x.iter().zip(y).map(|(&xi, &yi)| (xi / m - yi / m) * (xi / m - yi / m)).sum();
        (sa * m * libm::sqrt(dd)) * libm::sqrt(b)
    } else {
        0.0
    };
    libm::hypot(cross, bias)
}

/// One variance q of a diagonal chain with the per-input factors the closed forms use (the
/// values [`kernel_chains`] stores for each layer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Var {
    pub(crate) q: f64,
    /// sqrt(q).
    pub(crate) sq: f64,
    /// 1 / sqrt(1 + 2 q) (erf).
    pub(crate) r: f64,
}

impl Var {
    #[inline(always)]
    pub(crate) fn new(q: f64) -> Self {
        Self { q, sq: libm::sqrt(q), r: vector::erf_factor(q) }
    }

    /// Layer `l` of a stored chain.
    #[inline(always)]
    fn stored(chain: &[f64], l: usize) -> Self {
        let o = CHAIN_VALUES * l;
        Self { q: chain[o], sq: chain[o + 1], r: chain[o + 2] }
    }

    #[inline(always)]
    fn store(&self, chain: &mut [f64], l: usize) {
        let o = CHAIN_VALUES * l;
        (chain[o], chain[o + 1], chain[o + 2]) = (self.q, self.sq, self.r);
    }
}

/// Values per layer in a diagonal chain: (q, sqrt q, 1 / sqrt(1 + 2 q)).
const CHAIN_VALUES: usize = 3;

#[inline(always)]
fn pair_moments(
    act: Activation,
    v1: &Var,
    v2: &Var,
    s: f64,
    gn: Option<f64>,
    quad: &Quadrature,
) -> Result<Moments, Error> {
    let done =
        |(phiphi, dphidphi): (f64, f64)| Ok(Moments { phiphi, dphidphi, err: 0.0, nodes: 0 });
    if let Some(f) = vector::Family::of(act) {
        return done(f.scalar(v1, v2, s, gn));
    }
    let p = &Geometry::new(v1.q, v2.q, s, v1.sq, v2.sq).with_gn(gn);
    match act {
        Activation::Gelu => done(closed::gelu(p)),
        _ => {
            let m = quad::pair(act, p, quad);
            if m.err > quad.max_error || !(m.phiphi.is_finite() && m.dphidphi.is_finite()) {
                return Err(Error::NoConvergence { what: "gaussian quadrature" });
            }
            Ok(m)
        }
    }
}

fn check_covariance(q1: f64, q2: f64, s: f64) -> Result<(), Error> {
    for (field, v) in [("q1", q1), ("q2", q2)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::InvalidSpec { field, value: v });
        }
    }
    if !s.is_finite() {
        return Err(Error::InvalidSpec { field: "s", value: s });
    }
    Ok(())
}

fn check_activation(act: Activation) -> Result<(), Error> {
    match act {
        Activation::LeakyRelu { alpha } if !alpha.is_finite() => {
            Err(Error::InvalidSpec { field: "activation", value: alpha })
        }
        Activation::AbRelu { a, b } if !(a.is_finite() && b.is_finite()) => {
            Err(Error::InvalidSpec { field: "activation", value: a + b })
        }
        _ => Ok(()),
    }
}

/// E[phi(u) phi(v)] and E[phi'(u) phi'(v)] for (u, v) ~ N(0, [[q1, s], [s, q2]]): closed forms
/// for the ReLU family, linear, erf and GELU, the trapezoid rule for tanh and sigmoid.
///
/// ReLU: sqrt(q1 q2) (sin theta + (pi - theta) c) / (2 pi) and (pi - theta) / (2 pi) (Cho & Saul
/// 2009); erf: (2 / pi) asin(2 s / sqrt((1 + 2 q1)(1 + 2 q2))) (Williams 1997); GELU: derived
/// here by Stein's lemma and the bivariate orthant probability (see the source of `closed`).
///
/// ```
/// use ntk_core::kernel::{moments, Quadrature};
/// use ntk_core::Activation;
/// let m = moments(Activation::Relu, 2.0, 2.0, 2.0, &Quadrature::default()).unwrap();
/// assert_eq!((m.phiphi, m.dphidphi), (1.0, 0.5)); // exact on the diagonal
/// let t = moments(Activation::Tanh, 12.0, 12.0, 6.0, &Quadrature::default()).unwrap();
/// assert!(t.err < 1e-10);
/// ```
///
/// # Errors
/// [`Error::InvalidSpec`] for a negative or non-finite variance or covariance;
/// [`Error::NoConvergence`] when the quadrature's error estimate exceeds `quad.max_error`.
pub fn moments(
    act: Activation,
    q1: f64,
    q2: f64,
    s: f64,
    quad: &Quadrature,
) -> Result<Moments, Error> {
    check_covariance(q1, q2, s)?;
    check_activation(act)?;
    quad.check()?;
    pair_moments(act, &Var::new(q1), &Var::new(q2), s, None, quad)
}

/// E[phi(u)^2] and E[phi'(u)^2] for u ~ N(0, q): [`moments`] at q1 = q2 = s = q (bit for bit).
///
/// # Errors
/// As [`moments`].
pub fn moments_diag(act: Activation, q: f64, quad: &Quadrature) -> Result<Moments, Error> {
    moments(act, q, q, q, quad)
}

/// [`moments`] by the tensor trapezoid rule for every activation (no closed form used), with
/// its error estimate |T_h - T_2h|. Exponentially convergent for analytic phi (tanh, sigmoid,
/// erf, GELU); only algebraically for the kinked ReLU family.
///
/// # Errors
/// [`Error::InvalidSpec`] for bad variances or settings.
pub fn quadrature_moments(
    act: Activation,
    q1: f64,
    q2: f64,
    s: f64,
    quad: &Quadrature,
) -> Result<Moments, Error> {
    check_covariance(q1, q2, s)?;
    check_activation(act)?;
    quad.check()?;
    Ok(quad::pair(act, &Geometry::new(q1, q2, s, libm::sqrt(q1), libm::sqrt(q2)), quad))
}

/// The architecture whose infinite-width kernels are computed (DESIGN §2, §4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mlp<'a> {
    /// Activation of the hidden layers (the readout is linear).
    pub activation: Activation,
    /// Number of hidden layers L (0 is a linear model).
    pub depth: usize,
    /// Weight variance sigma_w^2 (every layer, the readout included).
    pub sigma_w2: f64,
    /// Bias variance sigma_b^2.
    pub sigma_b2: f64,
    /// Whether layers have (trainable) biases.
    pub bias: bool,
    /// NTK or standard parameterization.
    pub parameterization: Parameterization,
    /// Hidden widths n_1..n_L (standard parameterization only): `depth` values, or one value
    /// for all layers.
    pub widths: &'a [usize],
    /// Quadrature settings for tanh and sigmoid.
    pub quadrature: Quadrature,
}

impl<'a> Mlp<'a> {
    /// NTK parameterization with biases and the default quadrature.
    pub const fn new(activation: Activation, depth: usize, sigma_w2: f64, sigma_b2: f64) -> Self {
        Self {
            activation,
            depth,
            sigma_w2,
            sigma_b2,
            bias: true,
            parameterization: Parameterization::Ntk,
            widths: &[],
            quadrature: Quadrature { tol: 1e-10, max_nodes: 2048, max_error: 1e-6 },
        }
    }

    /// Standard parameterization with hidden widths `widths` (`depth` values or one for all).
    pub const fn standard(mut self, widths: &'a [usize]) -> Self {
        self.parameterization = Parameterization::Standard;
        self.widths = widths;
        self
    }

    /// With or without biases.
    pub const fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// With quadrature settings `quadrature`.
    pub const fn with_quadrature(mut self, quadrature: Quadrature) -> Self {
        self.quadrature = quadrature;
        self
    }

    /// The architecture of `spec` (its input dimension is the `d` of [`kernel`]; its output
    /// dimension does not enter: the kernels are per output).
    pub fn from_spec(spec: &Spec<'a>) -> Self {
        let l = spec.depth();
        Self {
            activation: spec.activation,
            depth: l,
            sigma_w2: spec.sigma_w2,
            sigma_b2: spec.sigma_b2,
            bias: spec.bias,
            parameterization: spec.parameterization,
            widths: &spec.widths[1..=l],
            quadrature: Quadrature::default(),
        }
    }

    fn prepare(&self) -> Result<Prepared<'a>, Error> {
        for (field, v) in [("sigma_w2", self.sigma_w2), ("sigma_b2", self.sigma_b2)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::InvalidSpec { field, value: v });
            }
        }
        check_activation(self.activation)?;
        self.quadrature.check()?;
        let standard = self.parameterization == Parameterization::Standard;
        if standard && self.depth > 0 {
            let n = self.widths.len();
            if n != 1 && n != self.depth {
                return Err(Error::InvalidSpec { field: "widths.len", value: n as f64 });
            }
            if let Some(&w) = self.widths.iter().find(|&&w| w == 0) {
                return Err(Error::InvalidSpec { field: "widths", value: w as f64 });
            }
        }
        Ok(Prepared {
            family: vector::Family::of(self.activation),
            act: self.activation,
            depth: self.depth,
            sw: self.sigma_w2,
            sb: if self.bias { self.sigma_b2 } else { 0.0 },
            beta: if self.bias { 1.0 } else { 0.0 },
            standard,
            widths: self.widths,
            quad: self.quadrature,
        })
    }
}

/// Facts about a kernel computation that are not errors.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KernelInfo {
    /// Largest quadrature error estimate of any Gaussian expectation (0 for closed forms).
    pub max_quadrature_error: f64,
    /// Total quadrature function evaluations.
    pub quadrature_nodes: u64,
}

impl KernelInfo {
    #[inline(always)]
    fn add(&mut self, m: &Moments) {
        if m.err > self.max_quadrature_error {
            self.max_quadrature_error = m.err;
        }
        self.quadrature_nodes += m.nodes as u64;
    }
}

struct Prepared<'a> {
    /// The closed form evaluated over SIMD lanes, if any (ReLU family, erf).
    family: Option<vector::Family>,
    act: Activation,
    depth: usize,
    sw: f64,
    sb: f64,
    beta: f64,
    standard: bool,
    widths: &'a [usize],
    quad: Quadrature,
}

impl Prepared<'_> {
    /// n_l for l = 1..=L.
    #[inline(always)]
    fn width(&self, l: usize) -> f64 {
        (if self.widths.len() == 1 { self.widths[0] } else { self.widths[l - 1] }) as f64
    }

    /// (Sigma^1, Theta^1) from <x, x'>.
    #[inline(always)]
    fn first(&self, ip: f64, d: usize) -> (f64, f64) {
        let s = self.sw * (ip / d as f64) + self.sb;
        (s, if self.standard { ip + self.beta } else { s })
    }

    /// [`first_gn`] of the pair (x, y) whose first-layer covariance has s and the chains'
    /// variances `vx`, `vy`, when it is nearly (anti)parallel; `None` otherwise.
    #[inline(always)]
    fn first_gn(&self, x: &[f64], y: &[f64], vx: &Var, vy: &Var, s: f64) -> Option<f64> {
        let p = Geometry::new(vx.q, vy.q, s, vx.sq, vy.sq);
        p.near_parallel().then(|| first_gn(x, y, self.sw / x.len() as f64, self.sb))
    }

    /// One layer: (Sigma^{l+1}, Theta^{l+1}) from the moments at layer l.
    #[inline(always)]
    fn step(&self, l: usize, m: &Moments, theta: f64) -> (f64, f64) {
        let s = self.sw * m.phiphi + self.sb;
        let sdot = self.sw * m.dphidphi;
        let t = if self.standard {
            self.width(l) * m.phiphi + self.beta + sdot * theta
        } else {
            s + sdot * theta
        };
        (s, t)
    }

    /// The diagonal chain of one input: (K, Theta), storing [`Var`] of q^l, l = 1..=L+1.
    fn diag(
        &self,
        x: &[f64],
        mut store: Option<&mut [f64]>,
        info: &mut KernelInfo,
    ) -> Result<(f64, f64), Error> {
        let (mut q, mut t) = self.first(dot(x, x), x.len());
        for l in 0..=self.depth {
            if !(q.is_finite() && t.is_finite()) {
                return Err(Error::NonFinite { layer: l + 1, pass: Pass::Kernel });
            }
            let v = Var::new(q);
            if let Some(st) = store.as_deref_mut() {
                v.store(st, l);
            }
            if l == self.depth {
                break;
            }
            let m = pair_moments(self.act, &v, &v, q, None, &self.quad)?;
            info.add(&m);
            (q, t) = self.step(l + 1, &m, t);
        }
        Ok((q, t))
    }

    /// The 2 x 2 recursion of one pair, given both diagonal chains.
    #[inline(always)]
    fn pair(
        &self,
        x: &[f64],
        y: &[f64],
        cx: &[f64],
        cy: &[f64],
        info: &mut KernelInfo,
    ) -> Result<(f64, f64), Error> {
        let (mut s, mut t) = self.first(dot(x, y), x.len());
        for l in 0..self.depth {
            if !(s.is_finite() && t.is_finite()) {
                return Err(Error::NonFinite { layer: l + 1, pass: Pass::Kernel });
            }
            let (vx, vy) = (Var::stored(cx, l), Var::stored(cy, l));
            let gn = if l == 0 { self.first_gn(x, y, &vx, &vy, s) } else { None };
            let m = pair_moments(self.act, &vx, &vy, s, gn, &self.quad)?;
            info.add(&m);
            (s, t) = self.step(l + 1, &m, t);
        }
        if !(s.is_finite() && t.is_finite()) {
            return Err(Error::NonFinite { layer: self.depth + 1, pass: Pass::Kernel });
        }
        Ok((s, t))
    }
}

/// Accumulators of [`dot_rows`].
const DOT_ACC: usize = 8;

/// <x, y> through one lane ([`dot_rows`] with [`pulp::Scalar`]).
#[inline(always)]
fn dot(x: &[f64], y: &[f64]) -> f64 {
    dot_rows(pulp::Scalar, [x], y)[0]
}

/// `<x[p], y>` for `R` rows at once, each `y` element loaded once. The summation order is fixed
/// whatever the instruction set: [`DOT_ACC`] accumulators (accumulator k takes the products
/// k, k + 8, k + 16, ... of the first 8 floor(len / 8) elements, in that order, one rounding per
/// multiply and per add), summed as ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), then the
/// remaining products added one by one. The accumulators are lanes of one vector (AVX-512),
/// two (AVX2) or eight scalars, so every path gives the same bits (and <x, x> is the same
/// whichever side x is on: the product commutes).
#[inline(always)]
fn dot_rows<S: pulp::Simd, const R: usize>(simd: S, x: [&[f64]; R], y: &[f64]) -> [f64; R] {
    let lanes = S::F64_LANES;
    debug_assert!(DOT_ACC.is_multiple_of(lanes));
    let nv = DOT_ACC / lanes;
    let len = y.len();
    let n8 = len / DOT_ACC * DOT_ACC;
    let x = x.map(|v| &v[..len]);
    let zero = simd.splat_f64s(0.0);
    let mut acc = [[zero; DOT_ACC]; R];
    for c in (0..n8).step_by(DOT_ACC) {
        let (yv, _) = S::as_simd_f64s(&y[c..c + DOT_ACC]);
        for p in 0..R {
            let (xv, _) = S::as_simd_f64s(&x[p][c..c + DOT_ACC]);
            for v in 0..nv {
                acc[p][v] = simd.add_f64s(acc[p][v], simd.mul_f64s(xv[v], yv[v]));
            }
        }
    }
    let mut out = [0.0; R];
    for p in 0..R {
        let mut a = [0.0f64; DOT_ACC];
        let (av, _) = S::as_mut_simd_f64s(&mut a);
        av.copy_from_slice(&acc[p][..nv]);
        let mut s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        for c in n8..len {
            s += x[p][c] * y[c];
        }
        out[p] = s;
    }
    out
}

/// Columns per chunk of the vector path (a multiple of every lane count).
const CHUNK: usize = 64;
/// Rows per tile of the vector path: each column's chain values and input are loaded once per
/// tile.
const TILE: usize = 8;
/// [`Prepared::step`] over lanes, the same operations in the same order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn step<S: pulp::Simd>(
    simd: S,
    pr: &Prepared<'_>,
    sw: S::f64s,
    sb: S::f64s,
    beta: S::f64s,
    width: S::f64s,
    ff: S::f64s,
    dd: S::f64s,
    t: S::f64s,
) -> (S::f64s, S::f64s) {
    let s_new = simd.add_f64s(simd.mul_f64s(sw, ff), sb);
    let sdot = simd.mul_f64s(sw, dd);
    let carry = simd.mul_f64s(sdot, t);
    let t_new = if pr.standard {
        simd.add_f64s(simd.add_f64s(simd.mul_f64s(width, ff), beta), carry)
    } else {
        simd.add_f64s(s_new, carry)
    };
    (s_new, t_new)
}

/// `acc + (s 0 + t 0)`: stays 0 (up to sign) while `s` and `t` are finite, NaN once one is not.
#[inline(always)]
fn nonfinite_acc<S: pulp::Simd>(simd: S, acc: S::f64s, s: S::f64s, t: S::f64s) -> S::f64s {
    let zero = simd.splat_f64s(0.0);
    simd.add_f64s(acc, simd.add_f64s(simd.mul_f64s(s, zero), simd.mul_f64s(t, zero)))
}

/// [`kernel_rows`] for the closed forms of [`vector::Family`]: tiles of [`TILE`] rows against
/// chunks of [`CHUNK`] columns; every pair runs the 2 x 2 recursion layer by layer in SIMD lanes
/// (lanes outside a row's columns padded), through the same lane code whatever its position,
/// so an entry's bits do not depend on the band, tile, chunk or lane that computes it (nor on
/// the instruction set).
struct VectorRows<'a, 'p> {
    pr: &'a Prepared<'p>,
    fam: vector::Family,
    nngp: Option<&'a mut [f64]>,
    ntk: Option<&'a mut [f64]>,
    row0: usize,
    n: usize,
    x1_all: &'a [f64],
    c1_all: &'a [f64],
    x2: &'a [f64],
    c2: &'a [f64],
    d: usize,
    n2: usize,
    symmetric: bool,
}

/// Per-chunk state: (Sigma, Theta) of each pair of the tile and the gathered chain values of the
/// columns at the current layer.
struct ChunkBufs {
    s: [[f64; CHUNK]; TILE],
    t: [[f64; CHUNK]; TILE],
    q2: [f64; CHUNK],
    /// The family's per-input value ([`vector::Family::aux`]) of the columns.
    a2: [f64; CHUNK],
    /// The first layer's g sin theta of each pair ([`Prepared::first_gn`]), -1 where it is
    /// not needed (reset after the first layer).
    gn: [[f64; CHUNK]; TILE],
}

/// Fills `buf` with `f` of each column of a chunk (`cols`: `per` chain values per column,
/// at least one column) and repeats the last value over the tail lanes up to `mp`.
#[inline(always)]
fn gather(buf: &mut [f64; CHUNK], cols: &[f64], per: usize, mp: usize, f: impl Fn(&[f64]) -> f64) {
    let m = cols.len() / per;
    for (x, col) in buf.iter_mut().zip(cols.chunks_exact(per)) {
        *x = f(col);
    }
    let last = buf[m - 1];
    buf[m..mp].fill(last);
}

impl pulp::WithSimd for VectorRows<'_, '_> {
    type Output = Result<KernelInfo, Error>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> Self::Output {
        self.run(simd)
    }
}

impl VectorRows<'_, '_> {
    #[inline(always)]
    fn run<S: pulp::Simd>(mut self, simd: S) -> Result<KernelInfo, Error> {
        let (d, n2) = (self.d, self.n2);
        let mut info = KernelInfo::default();
        let z = [0.0; CHUNK];
        let mut b =
            ChunkBufs { s: [z; TILE], t: [z; TILE], q2: z, a2: z, gn: [[-1.0; CHUNK]; TILE] };
        for r0 in (0..self.n).step_by(TILE) {
            let rows = (self.n - r0).min(TILE);
            let i0 = self.row0 + r0;
            // Row p of the tile takes columns from[p]..n2 (past the diagonal when symmetric).
            let mut from = [n2; TILE];
            for p in 0..rows {
                let i = i0 + p;
                from[p] = 0;
                if self.symmetric {
                    // The diagonal from the chain: exact (c = 1, theta = 0).
                    let xi = &self.x1_all[i * d..(i + 1) * d];
                    let (k, t) = self.pr.diag(xi, None, &mut info)?;
                    if let Some(o) = self.nngp.as_deref_mut() {
                        o[(r0 + p) * n2 + i] = k;
                    }
                    if let Some(o) = self.ntk.as_deref_mut() {
                        o[(r0 + p) * n2 + i] = t;
                    }
                    from[p] = i + 1;
                }
            }
            let mut jb = from[0];
            while jb < n2 {
                let m = (n2 - jb).min(CHUNK);
                // Row p's columns in the chunk: lo[p]..m.
                let lo = from.map(|f| f.saturating_sub(jb).min(m));
                self.chunk(simd, i0, rows, jb, m, lo, &mut b)?;
                for p in 0..rows {
                    let o = (r0 + p) * n2 + jb;
                    if let Some(out) = self.nngp.as_deref_mut() {
                        out[o + lo[p]..o + m].copy_from_slice(&b.s[p][lo[p]..m]);
                    }
                    if let Some(out) = self.ntk.as_deref_mut() {
                        out[o + lo[p]..o + m].copy_from_slice(&b.t[p][lo[p]..m]);
                    }
                }
                jb += m;
            }
        }
        Ok(info)
    }

    /// Pairs (i0 + p, jb + k), p < rows, lo[p] <= k < m, into `b.s[p][k]` (K) and `b.t[p][k]`
    /// (Theta).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn chunk<S: pulp::Simd>(
        &self,
        simd: S,
        i0: usize,
        rows: usize,
        jb: usize,
        m: usize,
        lo: [usize; TILE],
        b: &mut ChunkBufs,
    ) -> Result<(), Error> {
        let (pr, d, c2) = (self.pr, self.d, self.c2);
        let per = kernel_chain_len(pr.depth);
        let lanes = S::F64_LANES;
        let mp = m.div_ceil(lanes) * lanes;
        // A tile row past the band (rows < TILE) repeats the last row and is never used.
        let row = |p: usize| {
            let i = i0 + p.min(rows - 1);
            &self.x1_all[i * d..(i + 1) * d]
        };
        let xs: [&[f64]; TILE] = core::array::from_fn(row);
        // Row p's first vector (none when it has no column in the chunk). Its lanes before lo[p]
        // hold the pairs (i0 + p, jb + k <= i0 + p): real pairs (run without the first layer's
        // exact sin theta, so not always the bits of their mirror images), bounded by the
        // diagonal chains, so finite when those are; never written.
        debug_assert!(lo[0] == 0);
        let v0 = lo.map(|l| if l < m { l / lanes } else { mp / lanes });
        for k in 0..m {
            let j = jb + k;
            let ip = dot_rows(simd, xs, &self.x2[j * d..(j + 1) * d]);
            for (p, &v) in ip[..rows].iter().enumerate() {
                (b.s[p][k], b.t[p][k]) = pr.first(v, d);
            }
        }
        // Pairs the first layer may find nearly (anti)parallel: |s| >= (1 - 2^-9) sqrt(q1 q2)
        // over lanes (a superset of sin^2 theta < NEAR_PARALLEL), then the exact test and
        // g sin theta from the inputs per pair ([`Prepared::first_gn`], as the scalar path).
        let mut near = [false; TILE];
        gather(&mut b.a2, &c2[jb * per..(jb + m) * per], per, mp, |col| Var::stored(col, 0).sq);
        let (sq2v, _) = S::as_simd_f64s(&b.a2[..mp]);
        let wide = simd.splat_f64s(1.0 - 1.0 / 512.0);
        for p in 0..rows {
            let vx = Var::stored(&self.c1_all[(i0 + p) * per..], 0);
            let sq1 = simd.splat_f64s(vx.sq);
            let (sv, _) = S::as_simd_f64s(&b.s[p][..mp]);
            for v in v0[p]..mp / lanes {
                let lim = simd.mul_f64s(wide, simd.mul_f64s(sq1, sq2v[v]));
                if !vector::any(simd, simd.greater_than_or_equal_f64s(simd.abs_f64s(sv[v]), lim)) {
                    continue;
                }
                for k in (v * lanes).max(lo[p])..((v + 1) * lanes).min(m) {
                    let j = jb + k;
                    let vy = Var::stored(&c2[j * per..], 0);
                    let y = &self.x2[j * d..(j + 1) * d];
                    if let Some(g) = pr.first_gn(xs[p], y, &vx, &vy, b.s[p][k]) {
                        b.gn[p][k] = g;
                        near[p] = true;
                    }
                }
            }
        }
        // Tail lanes repeat the last column (finite when it is, as above; never written).
        for (s, t) in b.s[..rows].iter_mut().zip(&mut b.t[..rows]) {
            let (sl, tl) = (s[m - 1], t[m - 1]);
            s[m..mp].fill(sl);
            t[m..mp].fill(tl);
        }
        let splat = |v: f64| simd.splat_f64s(v);
        let (sw, sb, beta, zero) = (splat(pr.sw), splat(pr.sb), splat(pr.beta), splat(0.0));
        // Sum of x * 0 over the values: NaN iff one of them is not finite.
        let mut acc = zero;
        for ((s, t), &v0) in b.s[..rows].iter().zip(&b.t[..rows]).zip(&v0[..rows]) {
            let (sv, _) = S::as_simd_f64s(&s[..mp]);
            let (tv, _) = S::as_simd_f64s(&t[..mp]);
            for (&s, &t) in sv[v0..].iter().zip(&tv[v0..]) {
                acc = nonfinite_acc(simd, acc, s, t);
            }
        }
        if vector::any(simd, simd.not_m64s(simd.equal_f64s(acc, acc))) {
            return Err(Error::NonFinite { layer: 1, pass: Pass::Kernel });
        }
        let aux = self.fam.aux_offset();
        for l in 0..pr.depth {
            let o = CHAIN_VALUES * l;
            let cols = &c2[jb * per..(jb + m) * per];
            gather(&mut b.q2, cols, per, mp, |col| col[o]);
            gather(&mut b.a2, cols, per, mp, |col| col[o + aux]);
            let width = splat(if pr.standard { pr.width(l + 1) } else { 0.0 });
            let (qv, _) = S::as_simd_f64s(&b.q2[..mp]);
            let (av, _) = S::as_simd_f64s(&b.a2[..mp]);
            let tile = b.s[..rows].iter_mut().zip(&mut b.t[..rows]).zip(&v0[..rows]);
            for (p, ((s, t), &v0)) in tile.enumerate() {
                let (gnv, _) = S::as_simd_f64s(&b.gn[p][..mp]);
                let gn = |v: usize| (l == 0 && near[p]).then(|| gnv[v]);
                let ci = &self.c1_all[(i0 + p) * per..(i0 + p + 1) * per];
                let v1 = Var::stored(ci, l);
                let (q1, a1) = (splat(v1.q), splat(self.fam.aux(&v1)));
                let (sv, _) = S::as_mut_simd_f64s(&mut s[..mp]);
                let (tv, _) = S::as_mut_simd_f64s(&mut t[..mp]);
                let nv = mp / lanes;
                let mut v = v0;
                // Two independent vectors per step: more work in flight behind the divider.
                while v < nv {
                    let two = v + 1 < nv;
                    let w = if two { v + 1 } else { v };
                    let (ff0, dd0) = self.fam.moments(simd, q1, qv[v], sv[v], a1, av[v], gn(v));
                    let (ff1, dd1) = self.fam.moments(simd, q1, qv[w], sv[w], a1, av[w], gn(w));
                    let (s0, t0) = step(simd, pr, sw, sb, beta, width, ff0, dd0, tv[v]);
                    let (s1, t1) = step(simd, pr, sw, sb, beta, width, ff1, dd1, tv[w]);
                    acc = nonfinite_acc(simd, acc, s0, t0);
                    (sv[v], tv[v]) = (s0, t0);
                    if two {
                        acc = nonfinite_acc(simd, acc, s1, t1);
                        (sv[w], tv[w]) = (s1, t1);
                    }
                    v += 2;
                }
            }
            if vector::any(simd, simd.not_m64s(simd.equal_f64s(acc, acc))) {
                return Err(Error::NonFinite { layer: l + 2, pass: Pass::Kernel });
            }
            if l == 0 {
                for (gn, _) in b.gn.iter_mut().zip(&near).filter(|(_, &n)| n) {
                    gn.fill(-1.0);
                }
            }
        }
        Ok(())
    }
}

fn rows(what: &'static str, x: &[f64], d: usize) -> Result<usize, Error> {
    let n = x.len() / d;
    check_shape(what, x, n * d)?;
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFiniteInput { what, index });
    }
    Ok(n)
}

/// Values per input in [`kernel_chains`]: 3 (L + 1) (q^l, sqrt q^l and 1 / sqrt(1 + 2 q^l) for
/// l = 1..=L+1).
pub const fn kernel_chain_len(depth: usize) -> usize {
    CHAIN_VALUES * (depth + 1)
}

/// Scratch length (f64 values) for [`kernel`]: [`kernel_chain_len`] = 3 (L + 1) per input of x1
/// and x2; pass `n2 = 0` when x2 is `None`.
pub const fn kernel_scratch(n1: usize, n2: usize, depth: usize) -> usize {
    (n1 + n2) * kernel_chain_len(depth)
}

/// NNGP `K(x1_i, x2_j)` and NTK `Theta(x1_i, x2_j)` of [`Mlp`] into `nngp` and `ntk`
/// (N1 x N2, row-major; either may be `None`), for x1 (N1 x d) and x2 (N2 x d) row-major;
/// `x2 = None` means x2 = x1 (symmetric: half the pairs, diagonal from the diagonal chain).
///
/// Cost: one diagonal chain per input, then L Gaussian-moment evaluations per pair. The
/// neural-tangents equivalent is `kernel_fn(x1, x2, ('nngp', 'ntk'))` of the `stax.serial`
/// stack described in the module documentation.
///
/// ```
/// use ntk_core::kernel::{kernel, kernel_scratch, Mlp};
/// use ntk_core::Activation;
/// let x = [1.0, 0.0, 0.6, 0.8]; // two inputs in R^2
/// let mlp = Mlp::new(Activation::Relu, 3, 2.0, 0.0);
/// let (mut k, mut t) = ([0.0; 4], [0.0; 4]);
/// let mut scratch = [0.0; kernel_scratch(2, 0, 3)];
/// kernel(Some(&mut k), Some(&mut t), &x, None, 2, &mlp, &mut scratch).unwrap();
/// // sigma_w^2 = 2, sigma_b^2 = 0: K(x, x) = 2 ||x||^2 / d at every depth, Theta(x, x) = (L + 1) K.
/// assert_eq!(k[0], 1.0);
/// assert_eq!(t[0], 4.0);
/// assert_eq!(k[1], k[2]);
/// ```
///
/// # Errors
/// [`Error::InvalidSpec`] for a bad [`Mlp`] or `d = 0`; [`Error::ShapeMismatch`] when a length
/// is not a multiple of `d` or an output is not N1 x N2; [`Error::ShortBuffer`] for short
/// scratch; [`Error::NonFiniteInput`]; [`Error::NonFinite`] when the recursion overflows;
/// [`Error::NoConvergence`] from the quadrature.
pub fn kernel(
    mut nngp: Option<&mut [f64]>,
    mut ntk: Option<&mut [f64]>,
    x1: &[f64],
    x2: Option<&[f64]>,
    d: usize,
    mlp: &Mlp,
    scratch: &mut [f64],
) -> Result<KernelInfo, Error> {
    let pr = mlp.prepare()?;
    if d == 0 {
        return Err(Error::InvalidSpec { field: "d", value: 0.0 });
    }
    let n1 = rows("x1", x1, d)?;
    let n2 = match x2 {
        Some(x2) => rows("x2", x2, d)?,
        None => n1,
    };
    if let Some(k) = nngp.as_deref() {
        check_shape("nngp", k, n1 * n2)?;
    }
    if let Some(t) = ntk.as_deref() {
        check_shape("ntk", t, n1 * n2)?;
    }
    let per = kernel_chain_len(pr.depth);
    let extra = if x2.is_some() { n2 } else { 0 };
    check_len("scratch", scratch, kernel_scratch(n1, extra, pr.depth))?;
    let (c1, c2) = scratch[..(n1 + extra) * per].split_at_mut(n1 * per);
    let mut info = kernel_chains(c1, x1, d, mlp)?;
    if let Some(x2) = x2 {
        let i2 = kernel_chains(c2, x2, d, mlp)?;
        info.max_quadrature_error = info.max_quadrature_error.max(i2.max_quadrature_error);
        info.quadrature_nodes += i2.quadrature_nodes;
    }
    let c2: Option<&[f64]> = if x2.is_some() { Some(c2) } else { None };
    let i3 = kernel_rows(nngp.as_deref_mut(), ntk.as_deref_mut(), 0, x1, c1, x2, c2, d, mlp)?;
    info.max_quadrature_error = info.max_quadrature_error.max(i3.max_quadrature_error);
    info.quadrature_nodes += i3.quadrature_nodes;
    if x2.is_none() {
        for o in [nngp, ntk].into_iter().flatten() {
            crate::ntk::mirror(o, crate::ntk::OutputMode::Trace, n1, 1);
        }
    }
    Ok(info)
}

/// The diagonal chains of every input of `x` (N x d): `(q^l, sqrt q^l, 1 / sqrt(1 + 2 q^l))`
/// for l = 1..=L+1, [`kernel_chain_len`] values per input, into `chains` (the per-input part of
/// [`kernel_scratch`]).
///
/// # Errors
/// As [`kernel`].
pub fn kernel_chains(
    chains: &mut [f64],
    x: &[f64],
    d: usize,
    mlp: &Mlp,
) -> Result<KernelInfo, Error> {
    let pr = mlp.prepare()?;
    if d == 0 {
        return Err(Error::InvalidSpec { field: "d", value: 0.0 });
    }
    let n = rows("x", x, d)?;
    let per = kernel_chain_len(pr.depth);
    check_len("chains", chains, n * per)?;
    let mut info = KernelInfo::default();
    for i in 0..n {
        pr.diag(&x[i * d..(i + 1) * d], Some(&mut chains[i * per..(i + 1) * per]), &mut info)?;
    }
    Ok(info)
}

/// A band of rows of [`kernel`]: rows `row0..row0 + n` where `x1_rows` (n x d) and
/// `c1_rows` are those inputs and their [`kernel_chains`]. `x2` / `c2` are the whole second set;
/// `x2 = None` means the second set is `x1_all`/`c1_all` = the symmetric case, where only the
/// entries with column >= row are written (the caller mirrors). Outputs are `n x N2`
/// row-major. Entries equal those of [`kernel`] bit for bit, so bands can run in parallel.
///
/// # Errors
/// As [`kernel`].
#[allow(clippy::too_many_arguments)]
pub fn kernel_rows(
    mut nngp: Option<&mut [f64]>,
    mut ntk: Option<&mut [f64]>,
    row0: usize,
    x1_all: &[f64],
    c1_all: &[f64],
    x2: Option<&[f64]>,
    c2: Option<&[f64]>,
    d: usize,
    mlp: &Mlp,
) -> Result<KernelInfo, Error> {
    let pr = mlp.prepare()?;
    if d == 0 {
        return Err(Error::InvalidSpec { field: "d", value: 0.0 });
    }
    let per = kernel_chain_len(pr.depth);
    let (x2, c2, symmetric) = match (x2, c2) {
        (Some(x2), Some(c2)) => (x2, c2, false),
        _ => (x1_all, c1_all, true),
    };
    let n_all1 = rows("x1", x1_all, d)?;
    let n2 = rows("x2", x2, d)?;
    check_len("chains", c1_all, n_all1 * per)?;
    check_len("chains", c2, n2 * per)?;
    let out_len = nngp.as_deref().or(ntk.as_deref()).map_or(0, |o| o.len());
    let n = out_len / n2.max(1);
    if row0 + n > n_all1 {
        return Err(Error::ShapeMismatch {
            what: "rows",
            expected: n_all1 - row0.min(n_all1),
            got: n,
        });
    }
    if let Some(fam) = pr.family {
        let op = VectorRows {
            pr: &pr,
            fam,
            nngp,
            ntk,
            row0,
            n,
            x1_all,
            c1_all,
            x2,
            c2,
            d,
            n2,
            symmetric,
        };
        return pulp::Arch::new().dispatch(op);
    }
    let mut info = KernelInfo::default();
    let mut put = |i: usize, j: usize, (k, t): (f64, f64)| {
        if let Some(o) = nngp.as_deref_mut() {
            o[i * n2 + j] = k;
        }
        if let Some(o) = ntk.as_deref_mut() {
            o[i * n2 + j] = t;
        }
    };
    for r in 0..n {
        let i = row0 + r;
        let (xi, ci) = (&x1_all[i * d..(i + 1) * d], &c1_all[i * per..(i + 1) * per]);
        let j0 = if symmetric { i } else { 0 };
        for j in j0..n2 {
            let (xj, cj) = (&x2[j * d..(j + 1) * d], &c2[j * per..(j + 1) * per]);
            let v = if symmetric && j == i {
                // The diagonal from the chain: exact (c = 1, theta = 0) and bit-identical to
                // kernel_diagonal.
                pr.diag(xi, None, &mut info)?
            } else {
                pr.pair(xi, xj, ci, cj, &mut info)?
            };
            put(r, j, v);
        }
    }
    Ok(info)
}

/// The diagonal K(x_i, x_i) and Theta(x_i, x_i) (length N each; either may be `None`) of
/// [`Mlp`] for x (N x d, row-major): one-dimensional expectations only, no scratch.
///
/// ```
/// use ntk_core::kernel::{kernel_diagonal, Mlp};
/// use ntk_core::Activation;
/// let mlp = Mlp::new(Activation::Erf, 2, 1.5, 0.1);
/// let mut t = [0.0; 2];
/// kernel_diagonal(None, Some(&mut t), &[1.0, 2.0, 0.0, 0.0], 2, &mlp).unwrap();
/// assert!(t[0] > t[1] && t[1] > 0.0);
/// ```
///
/// # Errors
/// As [`kernel`].
pub fn kernel_diagonal(
    mut nngp: Option<&mut [f64]>,
    mut ntk: Option<&mut [f64]>,
    x: &[f64],
    d: usize,
    mlp: &Mlp,
) -> Result<KernelInfo, Error> {
    let pr = mlp.prepare()?;
    if d == 0 {
        return Err(Error::InvalidSpec { field: "d", value: 0.0 });
    }
    let n = rows("x", x, d)?;
    if let Some(k) = nngp.as_deref() {
        check_shape("nngp", k, n)?;
    }
    if let Some(t) = ntk.as_deref() {
        check_shape("ntk", t, n)?;
    }
    let mut info = KernelInfo::default();
    for i in 0..n {
        let (k, t) = pr.diag(&x[i * d..(i + 1) * d], None, &mut info)?;
        if let Some(o) = nngp.as_deref_mut() {
            o[i] = k;
        }
        if let Some(o) = ntk.as_deref_mut() {
            o[i] = t;
        }
    }
    Ok(info)
}
