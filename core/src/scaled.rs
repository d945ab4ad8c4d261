//! Block floating point ("scaled") forward pass, backprop signals and empirical NTK, for
//! networks whose values overflow or underflow `f64` (sigma_w2 far from the edge of chaos at
//! large depth): every per-sample, per-layer vector `v` is a mantissa vector `m`
//! (`max |m_i|` in `[0.5, 1)`) beside a power-of-two exponent `e`, `v = 2^e m`, and the NTK
//! entries are [`Scaled`] numbers `m 2^e` whose logarithm is always available.
//!
//! Exactness: `phi(2^e m) = 2^e phi(m)` for the ReLU family and linear (positively
//! homogeneous), and backprop is linear in the signals, so for those activations the scaled
//! computation performs the same floating-point operations as [`crate::ntk::empirical_ntk`]
//! up to exact power-of-two rescalings (results agree to rounding, 1e-12 relative in the
//! tests). For erf, sigmoid, tanh and gelu, `phi(2^e m)` is evaluated elementwise on the
//! materialised value when `|2^e m| <= 2^600`; beyond, the saturated value (gelu: `relu`);
//! below `2^-600`, the first-order term `phi(0) + phi'(0) 2^e m` (exact in `f64`).
//!
//! Exponents are integers stored in the `f64` scratch (exact below 2^53).

use core::cmp::Ordering;
use core::ops::{Add, Div, Mul, Neg, Sub};

use crate::activation::Activation;
use crate::error::{check_len, check_shape, Error, Pass};
use crate::forward::{cache_len, cache_offset, check_finite};
use crate::kernel::{KernelInfo, Mlp};
use crate::ntk::OutputMode;
use crate::simd::{dot, gemm, gemm_scratch, MatMut, MatRef};
use crate::spec::{max_width, Parameterization, Spec};

/// A real number `m 2^e` with `|m|` in `[0.5, 1)` (or `m = 0`, `e = 0`): the range of `f64`
/// without its exponent limits.
///
/// ```
/// use ntk_core::scaled::Scaled;
/// let big = Scaled::new(1e300) * Scaled::new(1e300); // 1e600, beyond f64
/// assert!((big.ln() - 600.0 * core::f64::consts::LN_10).abs() < 1e-12);
/// assert_eq!(big.to_f64(), f64::INFINITY);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scaled {
    /// Mantissa, `|m|` in `[0.5, 1)` or 0.
    pub m: f64,
    /// Power-of-two exponent.
    pub e: i64,
}

impl Scaled {
    /// Zero.
    pub const ZERO: Self = Self { m: 0.0, e: 0 };

    /// `x` as a scaled number (`x` finite).
    pub fn new(x: f64) -> Self {
        Self::from_parts(x, 0)
    }

    /// `m 2^e`, normalised (`m` finite).
    pub fn from_parts(m: f64, e: i64) -> Self {
        if m == 0.0 || !m.is_finite() {
            return Self { m, e: if m == 0.0 { 0 } else { e } };
        }
        let (f, k) = libm::frexp(m);
        Self { m: f, e: e + k as i64 }
    }

    /// `self * 2^k`.
    pub fn mul_pow2(self, k: i64) -> Self {
        if self.m == 0.0 {
            self
        } else {
            Self { m: self.m, e: self.e + k }
        }
    }

    /// The nearest `f64` (`+-inf` or 0 out of range).
    pub fn to_f64(self) -> f64 {
        let e = self.e.clamp(-3000, 3000) as i32;
        libm::scalbn(self.m, e)
    }

    /// `ln |self|` (`-inf` for 0).
    pub fn ln(self) -> f64 {
        libm::log(libm::fabs(self.m)) + self.e as f64 * core::f64::consts::LN_2
    }

    /// `log10 |self|` (`-inf` for 0).
    pub fn log10(self) -> f64 {
        self.ln() * core::f64::consts::LOG10_E
    }

    /// `true` if the mantissa is finite.
    pub fn is_finite(self) -> bool {
        self.m.is_finite()
    }

    /// `true` if `m 2^e` is an `f64` of full precision: exactly 0, or normal
    /// (`2^-1022 <= |m 2^e| < 2^1024`, i.e. `-1021 <= e <= 1024` for `|m|` in `[0.5, 1)`).
    pub fn fits_f64(self) -> bool {
        self.m == 0.0 || (self.m.is_finite() && (-1021..=1024).contains(&self.e))
    }

    /// `true` if the plain `f64` result `x` is this value to relative accuracy `rel`:
    /// `self` fits `f64` ([`Scaled::fits_f64`]), `x` is finite and
    /// `|x - self| <= rel |self|` (so an exact 0 only matches an exact 0).
    pub fn matches_f64(self, x: f64, rel: f64) -> bool {
        let v = self.to_f64();
        self.fits_f64() && x.is_finite() && libm::fabs(x - v) <= rel * libm::fabs(v)
    }
}

/// Relative agreement with the scaled value under which a suspect plain result is kept
/// (the scaled routines agree with the plain ones to 1e-12 where both are accurate).
pub const PLAIN_TOLERANCE: f64 = 1e-10;

/// `true` if a plain `f64` result may have left the range of `f64`, so that the scaled
/// computation is needed to tell: `x` is non-finite, zero or subnormal (`|x| < 2^-1022`).
/// (A zero can be exact, e.g. a dead ReLU network without biases: callers then compare with
/// the scaled value and keep the plain one when they agree.)
pub fn suspect(x: f64) -> bool {
    !x.is_finite() || libm::fabs(x) < f64::MIN_POSITIVE
}

/// The common exponent of a sample: the largest `e` of its nonzero values (0 if all are 0),
/// so that `|v_i| < 2^E` for every `i`.
pub fn common_exponent(v: &[Scaled]) -> i64 {
    v.iter().filter(|x| x.m != 0.0).map(|x| x.e).max().unwrap_or(0)
}

/// `out_i = v_i / 2^e`: the sample over its common exponent ([`common_exponent`]), a set of
/// `f64` values of magnitude below 1 whose moments are those of `v` up to exact powers of
/// two (values below `2^-1074` of the largest become 0).
///
/// # Panics
/// If `out.len() != v.len()`.
#[track_caller]
pub fn mantissas(out: &mut [f64], v: &[Scaled], e: i64) {
    assert_eq!(out.len(), v.len(), "mantissas: lengths");
    for (o, x) in out.iter_mut().zip(v) {
        *o = libm::scalbn(x.m, (x.e - e).clamp(-2000, 2000) as i32);
    }
}

impl Mul for Scaled {
    type Output = Self;
    /// `self * other`.
    fn mul(self, other: Self) -> Self {
        Self::from_parts(self.m * other.m, self.e + other.e)
    }
}

impl Add for Scaled {
    type Output = Self;
    /// `self + other` (one rounding, as in `f64`, when the exponents are close).
    fn add(self, other: Self) -> Self {
        if self.m == 0.0 {
            return other;
        }
        if other.m == 0.0 {
            return self;
        }
        let (hi, lo) = if self.e >= other.e { (self, other) } else { (other, self) };
        let shift = (lo.e - hi.e).max(-2000) as i32;
        Self::from_parts(hi.m + libm::scalbn(lo.m, shift), hi.e)
    }
}

impl Neg for Scaled {
    type Output = Self;
    fn neg(self) -> Self {
        Self { m: -self.m, e: self.e }
    }
}

impl Sub for Scaled {
    type Output = Self;
    fn sub(self, other: Self) -> Self {
        self + (-other)
    }
}

impl Div for Scaled {
    type Output = Self;
    /// `self / other` (`other` nonzero).
    fn div(self, other: Self) -> Self {
        Self::from_parts(self.m / other.m, self.e - other.e)
    }
}

impl PartialOrd for Scaled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (*self - *other).m.partial_cmp(&0.0)
    }
}

/// Exponent `t` with `max |row| = f 2^t`, `f` in `[0.5, 1)`; `None` for an all-zero row.
fn max_exponent(row: &[f64]) -> Option<i64> {
    let m = row.iter().fold(0.0f64, |m, v| m.max(libm::fabs(*v)));
    if m == 0.0 {
        None
    } else {
        Some(libm::frexp(m).1 as i64)
    }
}

/// Rescales `row` so that `max |row|` is in `[0.5, 1)`; returns the exponent to add.
fn normalize(row: &mut [f64]) -> i64 {
    match max_exponent(row) {
        Some(t) if t != 0 => {
            for v in row.iter_mut() {
                *v = libm::scalbn(*v, -t as i32);
            }
            t
        }
        _ => 0,
    }
}

/// Largest `|2^e m|` evaluated directly for smooth activations.
const DIRECT_MAX: i64 = 600;

/// `phi(2^e m)` as `(value, relative)`: the value is `phi` itself (`relative = false`) or
/// `phi / 2^e` (`relative = true`).
fn phi_elem(act: Activation, m: f64, e: i64) -> (f64, bool) {
    if act.is_homogeneous() {
        return (act.phi(m), true);
    }
    if m == 0.0 {
        return (act.phi(0.0), false);
    }
    let t = e + libm::ilogb(m) as i64;
    if t > DIRECT_MAX {
        match act {
            Activation::Gelu => (if m > 0.0 { m } else { 0.0 }, true),
            _ => (act.phi(libm::copysign(libm::scalbn(1.0, DIRECT_MAX as i32), m)), false),
        }
    } else if t < -DIRECT_MAX {
        let p0 = act.phi(0.0f64);
        if p0 == 0.0 {
            (act.dphi(0.0f64) * m, true)
        } else {
            (p0, false)
        }
    } else {
        (act.phi(libm::scalbn(m, e as i32)), false)
    }
}

/// `phi'(2^e m)` (bounded for every activation, so never scaled).
fn dphi_elem(act: Activation, m: f64, e: i64) -> f64 {
    if act.is_homogeneous() || m == 0.0 {
        return act.dphi(m);
    }
    if e + libm::ilogb(m) as i64 > DIRECT_MAX {
        act.dphi(libm::copysign(libm::scalbn(1.0, DIRECT_MAX as i32), m))
    } else {
        act.dphi(libm::scalbn(m, e.max(-3000) as i32))
    }
}

/// Layer `i`'s inputs `a` (n x n_i mantissas) and their exponents `a_e`: the normalised
/// inputs `x` for `i = 0`, else `phi` of layer `i - 1`'s scaled pre-activations.
#[allow(clippy::too_many_arguments)]
fn layer_inputs(
    spec: &Spec<'_>,
    x: &[f64],
    cache: &[f64],
    exps: &[f64],
    n: usize,
    i: usize,
    a: &mut [f64],
    a_e: &mut [f64],
) {
    let n_in = spec.widths[i];
    let a = &mut a[..n * n_in];
    if i == 0 {
        for ((row, xr), e) in a.chunks_exact_mut(n_in).zip(x.chunks_exact(n_in)).zip(a_e) {
            row.copy_from_slice(xr);
            *e = normalize(row) as f64;
        }
    } else {
        let prev = &cache[cache_offset(spec.widths, n, i - 1)..][..n * n_in];
        for (r, (row, hr)) in a.chunks_exact_mut(n_in).zip(prev.chunks_exact(n_in)).enumerate() {
            a_e[r] = phi_row(spec.activation, row, hr, exps[(i - 1) * n + r] as i64) as f64;
        }
    }
}

/// `out = phi(2^e h) / 2^e'` for one row, normalised; returns `e'`.
fn phi_row(act: Activation, out: &mut [f64], h: &[f64], e: i64) -> i64 {
    if act.is_homogeneous() {
        act.apply(out, h);
        return e + normalize(out);
    }
    // Exponent of the largest output value, then every value relative to it.
    let mut top: Option<i64> = None;
    for &m in h {
        let (v, rel) = phi_elem(act, m, e);
        if v != 0.0 {
            let t = libm::ilogb(v) as i64 + if rel { e } else { 0 };
            top = Some(top.map_or(t, |x| x.max(t)));
        }
    }
    let Some(top) = top else {
        out.fill(0.0);
        return 0;
    };
    for (o, &m) in out.iter_mut().zip(h) {
        let (v, rel) = phi_elem(act, m, e);
        let shift = (if rel { e } else { 0 }) - top;
        *o = libm::scalbn(v, shift.clamp(-2000, 2000) as i32);
    }
    top + normalize(out)
}

/// Scratch elements of [`forward_scaled`] for `n` inputs.
pub const fn forward_scaled_scratch(widths: &[usize], n: usize) -> usize {
    let m = max_width(widths);
    n * m + n + gemm_scratch(n, m, m)
}

/// Block floating point forward pass: fills `cache` (as [`crate::forward::forward`]'s, but
/// holding mantissas) and `exps` (`n * layers`, layer-major: `exps[i * n + r]` is the
/// exponent of layer `i`'s pre-activations of input `r`), so that
/// `h^{i+1}(x_r) = 2^exps[i n + r] cache_i[r]`.
///
/// # Errors
/// [`Error::NonFiniteInput`] for bad inputs; [`Error::NonFinite`] if a mantissa is not
/// finite (non-finite or astronomically large parameters); buffer errors for wrong lengths.
#[allow(clippy::too_many_arguments)]
pub fn forward_scaled(
    spec: &Spec<'_>,
    params: &[f64],
    x: &[f64],
    n: usize,
    cache: &mut [f64],
    exps: &mut [f64],
    scratch: &mut [f64],
) -> Result<(), Error> {
    let widths = spec.widths;
    check_shape("x", x, n * spec.input_dim())?;
    check_shape("params", params, spec.param_count())?;
    check_len("cache", cache, cache_len(widths, n))?;
    check_len("exps", exps, n * spec.layers())?;
    check_len("scratch", scratch, forward_scaled_scratch(widths, n))?;
    check_finite("x", x)?;
    let m = max_width(widths);
    let (act, rest) = scratch.split_at_mut(n * m);
    let (act_e, gs) = rest.split_at_mut(n);
    let cb = spec.bias_multiplier();
    for i in 0..spec.layers() {
        let (n_in, n_out) = (widths[i], widths[i + 1]);
        layer_inputs(spec, x, cache, exps, n, i, act, act_e);
        let a = &act[..n * n_in];
        let off = cache_offset(widths, n, i);
        let h = &mut cache[off..off + n * n_out];
        let (w, b) = spec.layer(params, i);
        let cw = spec.weight_multiplier(i);
        let wt = MatRef::row_major(w, n_out, n_in).t();
        gemm(MatMut::row_major(h, n, n_out), cw, MatRef::row_major(a, n, n_in), wt, 0.0, gs)?;
        let bias_e = if spec.bias {
            b.iter().fold(None, |t: Option<i64>, &v| {
                if v * cb == 0.0 {
                    t
                } else {
                    let x = libm::ilogb(v * cb) as i64 + 1;
                    Some(t.map_or(x, |t| t.max(x)))
                }
            })
        } else {
            None
        };
        for (r, row) in h.chunks_exact_mut(n_out).enumerate() {
            if row.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite { layer: i + 1, pass: Pass::Forward });
            }
            // h = 2^ea u + cb b, put over the larger of the two exponents.
            let ea = act_e[r] as i64;
            let ue = max_exponent(row).map(|t| t + ea);
            let top = match (ue, bias_e) {
                (Some(u), Some(bb)) => u.max(bb),
                (Some(u), None) => u,
                (None, Some(bb)) => bb,
                (None, None) => 0,
            };
            let su = (ea - top).clamp(-2000, 2000) as i32;
            let sb = (-top).clamp(-2000, 2000) as i32;
            for (j, v) in row.iter_mut().enumerate() {
                let mut y = libm::scalbn(*v, su);
                if spec.bias {
                    y += libm::scalbn(cb * b[j], sb);
                }
                *v = y;
            }
            if row.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite { layer: i + 1, pass: Pass::Forward });
            }
            exps[i * n + r] = (top + normalize(row)) as f64;
        }
    }
    Ok(())
}

/// Scratch elements of [`empirical_ntk_scaled`].
pub const fn empirical_ntk_scaled_scratch(widths: &[usize], n1: usize, n2: Option<usize>) -> usize {
    let k = widths[widths.len() - 1];
    let m = max_width(widths);
    let layers = widths.len() - 1;
    let mut s = side_len(widths, n1, k, m, layers);
    let mut nmax = n1;
    if let Some(n2) = n2 {
        s += side_len(widths, n2, k, m, layers);
        if n2 > nmax {
            nmax = n2;
        }
    }
    let f = forward_scaled_scratch(widths, nmax);
    let b = gemm_scratch(nmax * k, m, m);
    s + if f > b { f } else { b }
}

const fn side_len(widths: &[usize], n: usize, k: usize, m: usize, layers: usize) -> usize {
    // cache, exps, activations + exps, two signal blocks + exps.
    cache_len(widths, n) + n * layers + n * m + n + 2 * (n * k * m + n)
}

/// One input set's buffers.
struct Side<'a> {
    n: usize,
    cache: &'a mut [f64],
    exps: &'a mut [f64],
    act: &'a mut [f64],
    act_e: &'a mut [f64],
    cur: &'a mut [f64],
    cur_e: &'a mut [f64],
    next: &'a mut [f64],
    next_e: &'a mut [f64],
}

impl<'a> Side<'a> {
    fn new(widths: &[usize], n: usize, buf: &'a mut [f64]) -> (Self, &'a mut [f64]) {
        let k = widths[widths.len() - 1];
        let m = max_width(widths);
        let (cache, buf) = buf.split_at_mut(cache_len(widths, n));
        let (exps, buf) = buf.split_at_mut(n * (widths.len() - 1));
        let (act, buf) = buf.split_at_mut(n * m);
        let (act_e, buf) = buf.split_at_mut(n);
        let (cur, buf) = buf.split_at_mut(n * k * m);
        let (cur_e, buf) = buf.split_at_mut(n);
        let (next, buf) = buf.split_at_mut(n * k * m);
        let (next_e, buf) = buf.split_at_mut(n);
        (Self { n, cache, exps, act, act_e, cur, cur_e, next, next_e }, buf)
    }

    fn forward(
        &mut self,
        spec: &Spec<'_>,
        params: &[f64],
        x: &[f64],
        gs: &mut [f64],
    ) -> Result<(), Error> {
        forward_scaled(spec, params, x, self.n, self.cache, self.exps, gs)?;
        let k = spec.output_dim();
        crate::backward::signals_init(&mut self.cur[..self.n * k * k], self.n, k);
        self.cur_e.fill(0.0);
        Ok(())
    }

    /// Fills the input activations of layer `i` (mantissas and exponents).
    fn activations(&mut self, spec: &Spec<'_>, x: &[f64], i: usize) {
        layer_inputs(spec, x, self.cache, self.exps, self.n, i, self.act, self.act_e);
    }

    /// Signals from layer `i`'s output to layer `i - 1`'s output.
    fn step(
        &mut self,
        spec: &Spec<'_>,
        params: &[f64],
        i: usize,
        gs: &mut [f64],
    ) -> Result<(), Error> {
        let k = spec.output_dim();
        let (n, n_in, n_out) = (self.n, spec.widths[i], spec.widths[i + 1]);
        let rows = n * k;
        let (w, _) = spec.layer(params, i);
        let dst = &mut self.next[..rows * n_in];
        gemm(
            MatMut::row_major(dst, rows, n_in),
            spec.weight_multiplier(i),
            MatRef::row_major(&self.cur[..rows * n_out], rows, n_out),
            MatRef::row_major(w, n_out, n_in),
            0.0,
            gs,
        )?;
        let h_prev = &self.cache[cache_offset(spec.widths, n, i - 1)..][..n * n_in];
        for r in 0..n {
            let he = self.exps[(i - 1) * n + r] as i64;
            let hr = &h_prev[r * n_in..(r + 1) * n_in];
            let block = &mut dst[r * k * n_in..(r + 1) * k * n_in];
            for row in block.chunks_exact_mut(n_in) {
                for (v, &m) in row.iter_mut().zip(hr) {
                    *v *= dphi_elem(spec.activation, m, he);
                }
            }
            if block.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite { layer: i, pass: Pass::Backward });
            }
            self.next_e[r] = self.cur_e[r] + normalize(block) as f64;
        }
        core::mem::swap(&mut self.cur, &mut self.next);
        core::mem::swap(&mut self.cur_e, &mut self.next_e);
        Ok(())
    }
}

/// The empirical NTK (as [`crate::ntk::empirical_ntk`], same arguments and layout) in block
/// floating point, as [`Scaled`] entries: finite mantissas and exact exponents even where
/// `Theta` over- or underflows `f64`, e.g. ReLU at sigma_w2 = 1e4 and depth 1000
/// (`Theta ~ 10^4000`). `out[i].ln()` is `ln |Theta_i|`.
///
/// ```
/// use ntk_core::{scaled::*, ntk::OutputMode, spec::param_count, Activation, Parameterization, Spec};
/// const W: [usize; 202] = { let mut w = [16usize; 202]; w[0] = 4; w[201] = 1; w };
/// let spec = Spec::new(&W, Activation::Relu, 1e4, 0.0, false, Parameterization::Ntk).unwrap();
/// let mut params = vec![0.0; param_count(&W, false)];
/// spec.init(&mut params, 3).unwrap();
/// let x = [1.0, -0.5, 0.25, 2.0];
/// let mut theta = [Scaled::ZERO; 1];
/// let mut scratch = vec![0.0; empirical_ntk_scaled_scratch(&W, 1, None)];
/// empirical_ntk_scaled(&spec, &params, &mut theta, &x, None, OutputMode::Trace, &mut scratch).unwrap();
/// assert!(theta[0].log10() > 600.0); // far beyond f64
/// ```
///
/// # Errors
/// As [`crate::ntk::empirical_ntk`]; [`Error::NonFinite`] only for non-finite or
/// astronomically large parameters, never for the scale of the network.
#[allow(clippy::too_many_arguments)]
pub fn empirical_ntk_scaled(
    spec: &Spec<'_>,
    params: &[f64],
    out: &mut [Scaled],
    x1: &[f64],
    x2: Option<&[f64]>,
    mode: OutputMode,
    scratch: &mut [f64],
) -> Result<(), Error> {
    let widths = spec.widths;
    let (d, k) = (spec.input_dim(), spec.output_dim());
    check_shape("params", params, spec.param_count())?;
    let (n1, n2) = crate::ntk::input_counts(d, x1, x2, mode)?;
    check_shape("out", out, mode.len(n1, n2, k))?;
    check_len("scratch", scratch, empirical_ntk_scaled_scratch(widths, n1, x2.map(|_| n2)))?;

    let (mut s1, rest) = Side::new(widths, n1, scratch);
    let (mut s2, gs) = match x2 {
        Some(_) => {
            let (s, r) = Side::new(widths, n2, rest);
            (Some(s), r)
        }
        None => (None, rest),
    };
    s1.forward(spec, params, x1, gs)?;
    if let (Some(s2), Some(x2)) = (s2.as_mut(), x2) {
        s2.forward(spec, params, x2, gs)?;
    }
    out.fill(Scaled::ZERO);
    let s = spec.bias_gram_factor();
    for i in (0..spec.layers()).rev() {
        let c = spec.weight_multiplier(i) * spec.weight_multiplier(i);
        let (n_in, n_out) = (widths[i], widths[i + 1]);
        s1.activations(spec, x1, i);
        if let (Some(s2), Some(x2)) = (s2.as_mut(), x2) {
            s2.activations(spec, x2, i);
        }
        let t = s2.as_ref().unwrap_or(&s1);
        let (a1, a1e, d1, d1e) = (&s1.act[..], &s1.act_e[..], &s1.cur[..], &s1.cur_e[..]);
        let (a2, a2e, d2, d2e) = (&t.act[..], &t.act_e[..], &t.cur[..], &t.cur_e[..]);
        let pair = |p: usize, q: usize| {
            // (c <a_p, a_q> + s) over 2^(e_p + e_q).
            let gram = c * dot(&a1[p * n_in..(p + 1) * n_in], &a2[q * n_in..(q + 1) * n_in]);
            let ga = Scaled::new(gram).mul_pow2(a1e[p] as i64 + a2e[q] as i64) + Scaled::new(s);
            (ga, d1e[p] as i64 + d2e[q] as i64)
        };
        let sig = |p: usize, a: usize, q: usize, b: usize| {
            dot(
                &d1[(p * k + a) * n_out..(p * k + a + 1) * n_out],
                &d2[(q * k + b) * n_out..(q * k + b + 1) * n_out],
            )
        };
        for p in 0..n1 {
            let qs = match mode {
                OutputMode::Diagonal | OutputMode::DiagonalFull => p..p + 1,
                _ => 0..n2,
            };
            for q in qs {
                let (ga, de) = pair(p, q);
                match mode {
                    OutputMode::Trace | OutputMode::Diagonal => {
                        let gd: f64 = (0..k).map(|a| sig(p, a, q, a)).sum();
                        let idx = if mode == OutputMode::Trace { p * n2 + q } else { p };
                        out[idx] = out[idx] + (ga * Scaled::new(gd)).mul_pow2(de);
                    }
                    OutputMode::Full | OutputMode::DiagonalFull => {
                        for a in 0..k {
                            for b in 0..k {
                                let idx = if mode == OutputMode::Full {
                                    (p * k + a) * n2 * k + q * k + b
                                } else {
                                    (p * k + a) * k + b
                                };
                                let term = (ga * Scaled::new(sig(p, a, q, b))).mul_pow2(de);
                                out[idx] = out[idx] + term;
                            }
                        }
                    }
                }
            }
        }
        if i > 0 {
            s1.step(spec, params, i, gs)?;
            if let Some(s2) = s2.as_mut() {
                s2.step(spec, params, i, gs)?;
            }
        }
    }
    if matches!(mode, OutputMode::Trace | OutputMode::Diagonal) && k > 1 {
        let inv = Scaled::new(1.0 / k as f64);
        out.iter_mut().for_each(|v| *v = *v * inv);
    }
    if out.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { layer: 0, pass: Pass::Ntk });
    }
    Ok(())
}

impl Scaled {
    /// `sqrt(self)` (`self >= 0`).
    pub fn sqrt(self) -> Self {
        if self.m == 0.0 {
            return self;
        }
        // m 2^e with e even, then halve the exponent.
        let (m, e) = if self.e % 2 == 0 { (self.m, self.e) } else { (2.0 * self.m, self.e - 1) };
        Self::from_parts(libm::sqrt(m), e / 2)
    }
}

/// The 2 x 2 covariance of one pair at one layer, in block floating point.
#[derive(Clone, Copy)]
struct Cov {
    q1: Scaled,
    q2: Scaled,
    s: Scaled,
}

/// `sigma_w2 * v + sigma_b2` (the bias term only with biases).
fn affine(sw: f64, v: Scaled, sb: f64) -> Scaled {
    v * Scaled::new(sw) + Scaled::new(sb)
}

/// Infinite-width NNGP `K` and NTK `Theta` (the recursions of [`crate::kernel::kernel`], same
/// arguments and layout) with every variance, covariance and NTK value a [`Scaled`] number:
/// "log-domain variances" that neither overflow nor underflow at any depth, e.g. ReLU at
/// sigma_w2 = 1e4 and depth 1000 (`K ~ 10^3700`).
///
/// For the ReLU family and linear, `E[phi(u) phi(v)] = sqrt(q1 q2) J(c)` and
/// `E[phi'(u) phi'(v)] = J'(c)` depend on the scale only through `sqrt(q1 q2)`, so `J` and `J'`
/// are evaluated at unit variances ([`crate::kernel::moments`] at `(1, 1, c)`) and the scale is
/// carried exactly. Other activations evaluate the moments at the `f64` variances (bounded for
/// erf, tanh and sigmoid; an error for gelu once they overflow), and only the NTK, which grows
/// geometrically in depth for any activation, is scaled. With `x2 = None` each pair is
/// computed once and mirrored, so both kernels are exactly symmetric.
///
/// # Errors
/// As [`crate::kernel::kernel`]: invalid [`Mlp`] values, shapes, non-finite inputs, quadrature
/// failures; [`Error::NonFinite`] only for gelu variances beyond `f64`.
#[allow(clippy::too_many_arguments)]
pub fn kernel_scaled(
    mut nngp: Option<&mut [Scaled]>,
    mut ntk: Option<&mut [Scaled]>,
    x1: &[f64],
    x2: Option<&[f64]>,
    d: usize,
    mlp: &Mlp<'_>,
) -> Result<KernelInfo, Error> {
    for (field, v) in [("sigma_w2", mlp.sigma_w2), ("sigma_b2", mlp.sigma_b2)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::InvalidSpec { field, value: v });
        }
    }
    let standard = mlp.parameterization == Parameterization::Standard;
    if standard && mlp.depth > 0 {
        let n = mlp.widths.len();
        if n != 1 && n != mlp.depth {
            return Err(Error::InvalidSpec { field: "widths.len", value: n as f64 });
        }
        if let Some(&w) = mlp.widths.iter().find(|&&w| w == 0) {
            return Err(Error::InvalidSpec { field: "widths", value: w as f64 });
        }
    }
    if d == 0 {
        return Err(Error::InvalidSpec { field: "d", value: 0.0 });
    }
    let rows = |what: &'static str, x: &[f64]| -> Result<usize, Error> {
        check_shape(what, x, x.len() / d * d)?;
        check_finite(what, x)?;
        Ok(x.len() / d)
    };
    let n1 = rows("x1", x1)?;
    let (xs2, n2) = match x2 {
        Some(x2) => (x2, rows("x2", x2)?),
        None => (x1, n1),
    };
    if let Some(k) = nngp.as_deref() {
        check_shape("nngp", k, n1 * n2)?;
    }
    if let Some(t) = ntk.as_deref() {
        check_shape("ntk", t, n1 * n2)?;
    }
    let (sw, act) = (mlp.sigma_w2, mlp.activation);
    let (sb, beta) = if mlp.bias { (mlp.sigma_b2, 1.0) } else { (0.0, 0.0) };
    let width =
        |l: usize| (if mlp.widths.len() == 1 { mlp.widths[0] } else { mlp.widths[l - 1] }) as f64;
    let mut info = KernelInfo::default();
    let mut moments = |q1: f64, q2: f64, s: f64| -> Result<crate::kernel::Moments, Error> {
        let m = crate::kernel::moments(act, q1, q2, s, &mlp.quadrature)?;
        info.max_quadrature_error = info.max_quadrature_error.max(m.err);
        info.quadrature_nodes += m.nodes as u64;
        Ok(m)
    };
    let unit = if act.is_homogeneous() { Some(moments(1.0, 1.0, 1.0)?) } else { None };
    // <x, y> without overflow for inputs up to f64::MAX: over the inputs' own exponents.
    let ip = |x: &[f64], y: &[f64]| {
        let (ex, ey) = (max_exponent(x).unwrap_or(0), max_exponent(y).unwrap_or(0));
        let (sx, sy) = (-ex as i32, -ey as i32);
        let dot: f64 =
            x.iter().zip(y).map(|(a, b)| libm::scalbn(*a, sx) * libm::scalbn(*b, sy)).sum();
        Scaled::new(dot).mul_pow2(ex + ey)
    };
    // With x2 = x1 each pair is computed once and mirrored: (x, y) and (y, x) would run the
    // quadrature in different orders, so the kernel is exactly symmetric only this way.
    let symmetric = x2.is_none();
    for i in 0..n1 {
        let x = &x1[i * d..(i + 1) * d];
        for j in if symmetric { i } else { 0 }..n2 {
            let y = &xs2[j * d..(j + 1) * d];
            let inv_d = Scaled::new(1.0 / d as f64);
            let first = |v: Scaled| affine(sw, v * inv_d, sb);
            let mut c = Cov { q1: first(ip(x, x)), q2: first(ip(y, y)), s: first(ip(x, y)) };
            let mut t = if standard { ip(x, y) + Scaled::new(beta) } else { c.s };
            for l in 1..=mlp.depth {
                // E[phi phi] for (q1, q2, s) and E[phi' phi'] for the pair.
                let (pp1, pp2, pps, dd) = match unit {
                    Some(u) => {
                        let g = (c.q1 * c.q2).sqrt();
                        let corr =
                            if g.m == 0.0 { 0.0 } else { (c.s / g).to_f64().clamp(-1.0, 1.0) };
                        let m = moments(1.0, 1.0, corr)?;
                        let k = Scaled::new(u.phiphi);
                        (c.q1 * k, c.q2 * k, g * Scaled::new(m.phiphi), m.dphidphi)
                    }
                    None => {
                        let (q1, q2, s) = (c.q1.to_f64(), c.q2.to_f64(), c.s.to_f64());
                        if !(q1.is_finite() && q2.is_finite()) {
                            return Err(Error::NonFinite { layer: l, pass: Pass::Kernel });
                        }
                        let m = moments(q1, q2, s)?;
                        let (m1, m2) = (moments(q1, q1, q1)?, moments(q2, q2, q2)?);
                        let sc = Scaled::new;
                        (sc(m1.phiphi), sc(m2.phiphi), sc(m.phiphi), m.dphidphi)
                    }
                };
                let sdot_t = t * Scaled::new(sw * dd);
                let next = Cov {
                    q1: affine(sw, pp1, sb),
                    q2: affine(sw, pp2, sb),
                    s: affine(sw, pps, sb),
                };
                t = if standard {
                    pps * Scaled::new(width(l)) + Scaled::new(beta) + sdot_t
                } else {
                    next.s + sdot_t
                };
                c = next;
            }
            if !(c.s.is_finite() && t.is_finite()) {
                return Err(Error::NonFinite { layer: mlp.depth + 1, pass: Pass::Kernel });
            }
            for (out, v) in [(nngp.as_deref_mut(), c.s), (ntk.as_deref_mut(), t)] {
                if let Some(o) = out {
                    o[i * n2 + j] = v;
                    if symmetric {
                        o[j * n2 + i] = v;
                    }
                }
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_and_common_exponent() {
        assert!(Scaled::new(1.0).fits_f64() && Scaled::ZERO.fits_f64());
        assert!(Scaled::new(f64::MIN_POSITIVE).fits_f64() && Scaled::new(f64::MAX).fits_f64());
        assert!(!Scaled::new(f64::MIN_POSITIVE / 2.0).fits_f64());
        assert!(!(Scaled::new(f64::MAX) * Scaled::new(2.0)).fits_f64());
        assert!(Scaled::new(3.0).matches_f64(3.0 + 1e-15, 1e-12));
        assert!(!Scaled::new(3.0).matches_f64(f64::INFINITY, 1e-12));
        assert!(Scaled::ZERO.matches_f64(0.0, 1e-12) && !Scaled::ZERO.matches_f64(1e-300, 1e-12));
        assert!(suspect(0.0) && suspect(1e-310) && suspect(f64::NAN) && suspect(-f64::INFINITY));
        assert!(!suspect(f64::MIN_POSITIVE) && !suspect(-1e300));
        let v = [Scaled::from_parts(0.75, 3000), Scaled::ZERO, Scaled::from_parts(-0.5, 2990)];
        let e = common_exponent(&v);
        assert_eq!(e, 3000);
        let mut m = [0.0; 3];
        mantissas(&mut m, &v, e);
        assert_eq!(m, [0.75, 0.0, -0.5 / 1024.0]);
        assert_eq!(common_exponent(&[Scaled::ZERO]), 0);
    }
}
