//! Mean-field phase theory of deep networks at initialization (DESIGN §5; Poole et al. 2016,
//! Schoenholz et al. 2017).
//!
//! Variance map q -> V(q) = sigma_w^2 E_z[phi(sqrt(q) z)^2] + sigma_b^2 with fixed point q*;
//! correlation map c -> (sigma_w^2 E[phi(u) phi(v)] + sigma_b^2) / q*, (u, v) ~ N(0, q* [[1, c],
//! [c, 1]]) with fixed point c*; chi_1 = sigma_w^2 E_z[phi'(sqrt(q*) z)^2] (ordered < 1 = edge of
//! chaos < chaotic); chi_c = sigma_w^2 E[phi'(u) phi'(v)] at c*; depth scales
//! xi_grad = -1 / ln chi_1 and xi_c = -1 / ln chi_c. These are the NNGP recursion of
//! [`crate::kernel`] on the diagonal and at one correlation, in the NTK or standard
//! parameterization alike (the NNGP does not depend on it).
//!
//! Gaussian expectations come from [`crate::kernel::moments`] (closed forms; for tanh and
//! sigmoid the trapezoid rule with tolerance 1e-12 in one dimension, 1e-11 in two).

use crate::activation::Activation;
use crate::error::Error;
use crate::kernel::{moments, Moments, Quadrature};

/// Quadrature used here.
const QUAD: Quadrature = Quadrature { tol: 1e-12, max_nodes: 4096, max_error: 1e-8 };
/// Quadrature of the two-dimensional expectations.
const QUAD2: Quadrature = Quadrature { tol: 1e-11, max_nodes: 4096, max_error: 1e-8 };
/// A variance beyond this is taken as divergence of the variance map.
const DIVERGED: f64 = 1e150;

/// Where (sigma_w^2, sigma_b^2) lies, from chi_1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// chi_1 < 1: correlations converge to 1, gradients vanish.
    Ordered,
    /// chi_1 = 1 within the tolerance.
    EdgeOfChaos,
    /// chi_1 > 1: nearby inputs decorrelate, gradients explode.
    Chaotic,
}

impl Phase {
    /// `EdgeOfChaos` if |chi_1 - 1| <= tol, else `Ordered` or `Chaotic`.
    pub fn from_chi_1(chi_1: f64, tol: f64) -> Self {
        if libm::fabs(chi_1 - 1.0) <= tol {
            Phase::EdgeOfChaos
        } else if chi_1 < 1.0 {
            Phase::Ordered
        } else {
            Phase::Chaotic
        }
    }
}

/// Everything mean-field theory says about (activation, sigma_w^2, sigma_b^2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanField {
    /// Fixed point q* of the variance map, `None` when q grows without bound.
    pub q_star: Option<f64>,
    /// Stable fixed point c* of the correlation map (1 in the ordered phase).
    pub c_star: f64,
    /// chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2] (its q -> infinity limit when q diverges).
    pub chi_1: f64,
    /// chi_c = sigma_w^2 E[phi'(u) phi'(v)] at c* (= chi_1 when c* = 1).
    pub chi_c: f64,
    /// -1 / ln chi_1 (infinite at the edge of chaos, negative when chi_1 > 1: a growth scale).
    pub xi_grad: f64,
    /// -1 / ln chi_c.
    pub xi_c: f64,
    /// The phase from chi_1 with tolerance 1e-9.
    pub phase: Phase,
}

fn check_sigmas(sigma_w2: f64, sigma_b2: f64) -> Result<(), Error> {
    for (field, v) in [("sigma_w2", sigma_w2), ("sigma_b2", sigma_b2)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::InvalidSpec { field, value: v });
        }
    }
    Ok(())
}

fn diag(act: Activation, q: f64) -> Result<Moments, Error> {
    moments(act, q, q, q, &QUAD)
}

/// V(q) = sigma_w^2 E_z[phi(sqrt(q) z)^2] + sigma_b^2: one layer of the NNGP diagonal.
///
/// ```
/// use ntk_core::phase::variance_map;
/// use ntk_core::Activation;
/// assert_eq!(variance_map(Activation::Relu, 1.5, 0.1, 2.0).unwrap(), 1.5 * 2.0 / 2.0 + 0.1);
/// ```
///
/// # Errors
/// [`Error::InvalidSpec`] for a negative or non-finite variance; [`Error::NoConvergence`]
/// from the quadrature.
pub fn variance_map(act: Activation, sigma_w2: f64, sigma_b2: f64, q: f64) -> Result<f64, Error> {
    check_sigmas(sigma_w2, sigma_b2)?;
    Ok(sigma_w2 * diag(act, q)?.phiphi + sigma_b2)
}

/// Fixed point q* = V(q*) reached by iterating V from `q0`, to 1e-15 relative or 1e-30
/// absolute (so a q* below ~1e-30, from sigma_b^2 that small, has only that absolute
/// accuracy); `Ok(None)` when q grows without bound (e.g. ReLU with sigma_w^2 > 2, or
/// sigma_w^2 = 2 and sigma_b^2 > 0) or passes 1e150, which is taken as divergence (for
/// every phi, so a closed-form q* that large, or infinite in f64, is `None` too).
///
/// Piecewise-linear phi: V(q) = m q + sigma_b^2, m = sigma_w^2 (a^2 + b^2) / 2, so
/// q* = sigma_b^2 / (1 - m) for m < 1 and every q is fixed (q* = q0) for m = 1, sigma_b^2 = 0.
/// Otherwise: iteration, then bisection on V(q) - q from a bracket grown in the direction of
/// motion (V is increasing, so iteration converges monotonically to the first root).
///
/// # Errors
/// [`Error::InvalidSpec`] for bad variances or `q0`; [`Error::NoConvergence`].
pub fn q_star(
    act: Activation,
    sigma_w2: f64,
    sigma_b2: f64,
    q0: f64,
) -> Result<Option<f64>, Error> {
    check_sigmas(sigma_w2, sigma_b2)?;
    if !(q0.is_finite() && q0 >= 0.0) {
        return Err(Error::InvalidSpec { field: "q0", value: q0 });
    }
    if let Some((a, b)) = act.slopes() {
        let m = sigma_w2 * 0.5 * (a * a + b * b);
        return Ok(if m < 1.0 {
            Some(sigma_b2 / (1.0 - m)).filter(|&q| q <= DIVERGED)
        } else if m == 1.0 && sigma_b2 == 0.0 {
            Some(q0)
        } else {
            None
        });
    }
    fixed_point(
        |q| Ok(sigma_w2 * diag(act, q)?.phiphi + sigma_b2),
        q0,
        sigma_b2,
        f64::INFINITY,
        1e-30,
    )
}

/// The correlation map c -> (sigma_w^2 E[phi(u) phi(v)] + sigma_b^2) / q,
/// (u, v) ~ N(0, q [[1, c], [c, 1]]), at a fixed point q = q* of the variance map.
///
/// # Errors
/// [`Error::InvalidSpec`] for q <= 0, |c| > 1 or bad variances; [`Error::NoConvergence`].
pub fn correlation_map(
    act: Activation,
    sigma_w2: f64,
    sigma_b2: f64,
    q: f64,
    c: f64,
) -> Result<f64, Error> {
    check_sigmas(sigma_w2, sigma_b2)?;
    if !(q.is_finite() && q > 0.0) {
        return Err(Error::InvalidSpec { field: "q", value: q });
    }
    if !(-1.0..=1.0).contains(&c) {
        return Err(Error::InvalidSpec { field: "c", value: c });
    }
    let s = if c == 1.0 { q } else { c * q };
    Ok((sigma_w2 * moments(act, q, q, s, &QUAD2)?.phiphi + sigma_b2) / q)
}

/// Stable fixed point c* of [`correlation_map`] at q, iterating from `c0` (then bisecting).
///
/// # Errors
/// As [`correlation_map`].
pub fn c_star(
    act: Activation,
    sigma_w2: f64,
    sigma_b2: f64,
    q: f64,
    c0: f64,
) -> Result<f64, Error> {
    let r = fixed_point(|c| correlation_map(act, sigma_w2, sigma_b2, q, c), c0, -1.0, 1.0, 1e-15)?;
    r.ok_or(Error::NoConvergence { what: "correlation fixed point" })
}

/// chi_1 = sigma_w^2 E_z[phi'(sqrt(q) z)^2]; `q = f64::INFINITY` gives the limit (sigma_w^2 / 2
/// for GELU, 0 for bounded phi). For piecewise-linear phi, sigma_w^2 (a^2 + b^2) / 2 for every
/// q (ReLU: sigma_w^2 / 2 exactly).
///
/// ```
/// use ntk_core::phase::chi_1;
/// use ntk_core::Activation;
/// assert_eq!(chi_1(Activation::Relu, 3.0, 1e300).unwrap(), 1.5);
/// assert_eq!(chi_1(Activation::Tanh, 1.3, 0.0).unwrap(), 1.3);
/// ```
///
/// # Errors
/// [`Error::InvalidSpec`] for a negative or NaN argument; [`Error::NoConvergence`].
pub fn chi_1(act: Activation, sigma_w2: f64, q: f64) -> Result<f64, Error> {
    check_sigmas(sigma_w2, 0.0)?;
    if q.is_nan() || q < 0.0 {
        return Err(Error::InvalidSpec { field: "q", value: q });
    }
    if let Some((a, b)) = act.slopes() {
        return Ok(sigma_w2 * 0.5 * (a * a + b * b));
    }
    if q == f64::INFINITY {
        return Ok(match act {
            Activation::Gelu => 0.5 * sigma_w2,
            _ => 0.0,
        });
    }
    Ok(sigma_w2 * diag(act, q)?.dphidphi)
}

/// chi_c = sigma_w^2 E[phi'(u) phi'(v)], (u, v) ~ N(0, q [[1, c], [c, 1]]).
///
/// # Errors
/// As [`correlation_map`].
pub fn chi_c(act: Activation, sigma_w2: f64, q: f64, c: f64) -> Result<f64, Error> {
    check_sigmas(sigma_w2, 0.0)?;
    if !(q.is_finite() && q >= 0.0) {
        return Err(Error::InvalidSpec { field: "q", value: q });
    }
    if !(-1.0..=1.0).contains(&c) {
        return Err(Error::InvalidSpec { field: "c", value: c });
    }
    if c == 1.0 {
        return chi_1(act, sigma_w2, q);
    }
    Ok(sigma_w2 * moments(act, q, q, c * q, &QUAD2)?.dphidphi)
}

/// q*, c*, chi_1, chi_c, the depth scales and the phase of (act, sigma_w^2, sigma_b^2);
/// q* is reached from q0 = 1 (which matters only when every q is fixed, e.g. ReLU at
/// (2, 0)) and c* from c0 = 0.5. When q diverges, chi_1 is its q -> infinity limit and c* = 1
/// (the homogeneous limit of the correlation map, whose only fixed point is 1 for ReLU).
/// When q* = 0 (odd phi, sigma_b^2 = 0, ordered), c* = 1.
///
/// ```
/// use ntk_core::phase::{mean_field, Phase};
/// use ntk_core::Activation;
/// let m = mean_field(Activation::Relu, 2.5, 0.1).unwrap();
/// assert_eq!((m.q_star, m.chi_1, m.phase), (None, 1.25, Phase::Chaotic));
/// let t = mean_field(Activation::Tanh, 2.5, 0.05).unwrap(); // EOC at sigma_w^2 = 1.76
/// assert!(t.q_star.unwrap() > 0.0 && t.c_star < 1.0 && t.phase == Phase::Chaotic);
/// ```
///
/// # Errors
/// [`Error::InvalidSpec`] for bad variances; [`Error::NoConvergence`].
pub fn mean_field(act: Activation, sigma_w2: f64, sigma_b2: f64) -> Result<MeanField, Error> {
    let q = q_star(act, sigma_w2, sigma_b2, 1.0)?;
    let chi1 = chi_1(act, sigma_w2, q.unwrap_or(f64::INFINITY))?;
    let (c, chic) = match q {
        Some(q) if q > 0.0 => {
            let c = c_star(act, sigma_w2, sigma_b2, q, 0.5)?;
            (c, chi_c(act, sigma_w2, q, c)?)
        }
        _ => (1.0, chi1),
    };
    Ok(MeanField {
        q_star: q,
        c_star: c,
        chi_1: chi1,
        chi_c: chic,
        xi_grad: -1.0 / libm::log(chi1),
        xi_c: -1.0 / libm::log(chic),
        phase: Phase::from_chi_1(chi1, 1e-9),
    })
}

/// The [`Phase`] of (act, sigma_w^2, sigma_b^2) with tolerance `tol` on |chi_1 - 1|.
///
/// # Errors
/// As [`mean_field`].
pub fn phase(act: Activation, sigma_w2: f64, sigma_b2: f64, tol: f64) -> Result<Phase, Error> {
    let q = q_star(act, sigma_w2, sigma_b2, 1.0)?;
    Ok(Phase::from_chi_1(chi_1(act, sigma_w2, q.unwrap_or(f64::INFINITY))?, tol))
}

/// The edge of chaos: sigma_w^2 with chi_1(sigma_w^2; sigma_b^2) = 1, by bisection on
/// sigma_w^2 (bracket [0, 2^k] grown until chi_1 > 1). Piecewise linear: 2 / (a^2 + b^2)
/// for every sigma_b^2. tanh at sigma_b^2 = 0: 1.
///
/// ```
/// use ntk_core::phase::eoc_sigma_w2;
/// use ntk_core::Activation;
/// assert_eq!(eoc_sigma_w2(Activation::Relu, 0.3).unwrap(), 2.0);
/// let w = eoc_sigma_w2(Activation::Tanh, 0.05).unwrap();
/// assert!(w > 1.0 && w < 2.0);
/// ```
///
/// # Errors
/// [`Error::InvalidSpec`] for a bad sigma_b^2 or an activation with phi' = 0;
/// [`Error::NoConvergence`] when chi_1 stays below 1 up to sigma_w^2 = 2^20, or jumps over 1
/// without crossing it (GELU with small sigma_b^2: see the code).
pub fn eoc_sigma_w2(act: Activation, sigma_b2: f64) -> Result<f64, Error> {
    check_sigmas(1.0, sigma_b2)?;
    if let Some((a, b)) = act.slopes() {
        let m = 0.5 * (a * a + b * b);
        if !(m > 0.0 && m.is_finite()) {
            return Err(Error::InvalidSpec { field: "activation", value: m });
        }
        return Ok(1.0 / m);
    }
    // q* from q0 = 1, as in `mean_field` and `phase`, so that they agree on either side.
    let excess = |w: f64| -> Result<f64, Error> {
        let q = q_star(act, w, sigma_b2, 1.0)?;
        Ok(chi_1(act, w, q.unwrap_or(f64::INFINITY))? - 1.0)
    };
    let (mut lo, mut hi) = (0.0, 1.0);
    let (mut e_lo, mut e_hi) = (excess(lo)?, excess(hi)?);
    while e_hi <= 0.0 {
        (lo, e_lo) = (hi, e_hi);
        hi *= 2.0;
        if hi > 1048576.0 {
            return Err(Error::NoConvergence { what: "edge of chaos bracket" });
        }
        e_hi = excess(hi)?;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi || hi - lo <= 1e-14 * hi {
            break;
        }
        let e = excess(mid)?;
        if e > 0.0 {
            (hi, e_hi) = (mid, e);
        } else {
            (lo, e_lo) = (mid, e);
        }
    }
    // chi_1 may jump over 1 instead of crossing it: where the variance map has two fixed
    // points (GELU with small sigma_b^2: a stable small q* with chi_1 ~ sigma_w^2 / 4, and
    // beyond an unstable one divergence with chi_1 = sigma_w^2 / 2), q* from q0 = 1 switches
    // branch at the sigma_w^2 that puts the unstable point at 1. That is a phase boundary
    // but not chi_1 = 1.
    if e_hi - e_lo > 1e-6 {
        return Err(Error::NoConvergence { what: "edge of chaos (chi_1 jumps over 1)" });
    }
    Ok(0.5 * (lo + hi))
}

/// `out[i] = eoc_sigma_w2(act, sigma_b2[i])`: the chi_1 = 1 line of a phase diagram.
///
/// # Errors
/// [`Error::ShapeMismatch`] if the lengths differ; as [`eoc_sigma_w2`].
pub fn eoc_curve(out: &mut [f64], act: Activation, sigma_b2: &[f64]) -> Result<(), Error> {
    crate::error::check_shape("out", out, sigma_b2.len())?;
    for (o, &sb) in out.iter_mut().zip(sigma_b2) {
        *o = eoc_sigma_w2(act, sb)?;
    }
    Ok(())
}

/// The fixed point of an increasing map f on [lo, hi] reached by iteration from x0: iterate,
/// then grow a bracket in the direction of motion (approaching a boundary geometrically, so a
/// root just inside it is not skipped) and bisect on f(x) - x. `None` if x passes `DIVERGED`.
fn fixed_point(
    mut f: impl FnMut(f64) -> Result<f64, Error>,
    x0: f64,
    lo: f64,
    hi: f64,
    abs_tol: f64,
) -> Result<Option<f64>, Error> {
    let r = fixed_point_near(&mut f, x0, lo, hi, abs_tol)?;
    // Within abs_tol of a fixed lower end (q* = 0 for odd phi or GELU with sigma_b^2 = 0,
    // approached only geometrically or algebraically): the end itself.
    if let Some(x) = r {
        if x - lo <= abs_tol && f(lo)? == lo {
            return Ok(Some(lo));
        }
    }
    Ok(r)
}

fn fixed_point_near(
    f: &mut impl FnMut(f64) -> Result<f64, Error>,
    x0: f64,
    lo: f64,
    hi: f64,
    abs_tol: f64,
) -> Result<Option<f64>, Error> {
    let close = |a: f64, b: f64| {
        libm::fabs(a - b) <= 1e-15 * libm::fmax(libm::fabs(a), libm::fabs(b)) + abs_tol
    };
    let diverged = |y: f64| !y.is_finite() || y > DIVERGED;
    // The answer once y = f(x) has diverged or is a fixed point.
    let settled = |x: f64, y: f64| {
        if diverged(y) {
            Some(None)
        } else {
            close(x, y).then(|| Some(y.clamp(lo, hi)))
        }
    };
    let mut x = x0.clamp(lo, hi);
    let mut y = f(x)?;
    for _ in 0..64 {
        if let Some(r) = settled(x, y) {
            return Ok(r);
        }
        let x1 = y.clamp(lo, hi);
        let y1 = f(x1)?;
        if let Some(r) = settled(x1, y1) {
            return Ok(r);
        }
        // A monotone contraction x, x1, y1 with ratio r: Aitken's estimate of its limit,
        // x1 + (y1 - x1) / (1 - r) (exact for a linear map), at most 99 steps ahead, taken
        // when it lies inside [lo, hi] (an end may be an unstable fixed point, as c = 1 in the
        // chaotic phase) and lowers the residual |f(x) - x|. Plain iteration needs
        // ln(tol) / ln(r) steps (tanh's correlation map at sigma_w^2 ~ 1e4: r ~ 0.64, 0.16 s a
        // step, 12 s for c*; 1.6 s with these steps).
        let r = (y1 - x1) / (x1 - x);
        if r > 0.0 && r <= 0.99 {
            let a = x1 + (y1 - x1) / (1.0 - r);
            if a > lo && a < hi {
                let ya = f(a)?;
                if !diverged(ya) && libm::fabs(ya - a) < libm::fabs(y1 - x1) {
                    (x, y) = (a, ya);
                    continue;
                }
            }
        }
        x = y1.clamp(lo, hi);
        y = f(x)?;
    }
    let up = y > x;
    let (mut a, mut step) = (x, libm::fabs(y - x));
    let bound = if up { hi } else { lo };
    // Grow: b moves away from a by step (doubling), but at most half-way to the bound.
    let mut b;
    loop {
        b = if up { a + step } else { a - step };
        let half = 0.5 * (a + bound);
        if (up && b > half) || (!up && b < half) {
            b = half;
        }
        if !b.is_finite() || b > DIVERGED {
            return Ok(None);
        }
        if bound.is_finite() && close(b, bound) {
            return Ok(Some(bound));
        }
        let g = f(b)? - b;
        if g == 0.0 {
            return Ok(Some(b));
        }
        if (g > 0.0) != up {
            break;
        }
        a = b;
        step *= 2.0;
    }
    // Bisect: f(a) - a has the sign of the motion, f(b) - b the other.
    for _ in 0..2000 {
        let m = 0.5 * (a + b);
        if m == a || m == b || close(a, b) {
            break;
        }
        let g = f(m)? - m;
        if g == 0.0 {
            return Ok(Some(m));
        }
        if (g > 0.0) == up {
            a = m;
        } else {
            b = m;
        }
    }
    Ok(Some(0.5 * (a + b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::ALL;

    /// Aitken steps: a slow linear contraction (ratio 0.99, 3400 plain steps to 1e-15; the
    /// plain iteration gives up after 64 and bisects) is solved in a dozen evaluations, and a
    /// map with a stable (0.25) and an unstable (0.75) fixed point still gives the stable one
    /// from just below the unstable one.
    #[test]
    fn fixed_point_accelerates_to_the_stable_point() {
        let mut calls = 0;
        let mut lin = |x: f64| {
            calls += 1;
            Ok(0.99 * x + 0.01 * 0.3)
        };
        let r = fixed_point(&mut lin, 0.9, -1.0, 1.0, 1e-15).unwrap().unwrap();
        // The stopping rule bounds the step |f(x) - x| <= ~1e-15, so the error is up to
        // 1 / (1 - 0.99) times that.
        assert!(libm::fabs(r - 0.3) < 1e-12 && calls <= 12, "{r} after {calls} calls");
        for x0 in [0.0, 0.5, 0.7, 0.749] {
            let mut calls = 0;
            let mut quad = |x: f64| {
                calls += 1;
                Ok(x * x + 0.1875)
            };
            let r = fixed_point(&mut quad, x0, 0.0, 1.0, 1e-15).unwrap().unwrap();
            assert!(libm::fabs(r - 0.25) < 1e-15 && calls <= 40, "from {x0}: {r} after {calls}");
        }
    }

    #[test]
    fn relu_variance_map_and_fixed_points() {
        for (sw, sb, q) in
            [(1.5, 0.1, 2.0), (2.0, 0.0, 0.37), (3.0, 1.0, 1e-200), (0.5, 2.0, 1e200)]
        {
            assert_eq!(variance_map(Activation::Relu, sw, sb, q).unwrap(), sw * (q * 0.5) + sb);
        }
        // q is preserved at sigma_w^2 = 2, sigma_b^2 = 0.
        assert_eq!(variance_map(Activation::Relu, 2.0, 0.0, 0.37).unwrap(), 0.37);
        assert_eq!(q_star(Activation::Relu, 2.0, 0.0, 0.37).unwrap(), Some(0.37));
        assert_eq!(q_star(Activation::Relu, 1.5, 1.0, 1.0).unwrap(), Some(4.0));
        assert_eq!(q_star(Activation::Relu, 2.0, 0.5, 1.0).unwrap(), None);
        assert_eq!(q_star(Activation::Relu, 3.0, 0.0, 1.0).unwrap(), None);
        // A q* past 1e150 is divergence whether closed-form or iterated (a closed-form q*
        // of 2.67e307 / 0.023 was infinite: CI's fuzz find, crash-982135f0).
        assert_eq!(q_star(Activation::Relu, 1.0, 0.9e150, 1.0).unwrap(), None);
        assert_eq!(q_star(Activation::Relu, 1.0, 0.4e150, 1.0).unwrap(), Some(0.8e150));
        assert_eq!(q_star(Activation::Linear, 0.977, 2.67e307, 1.0).unwrap(), None);
        assert_eq!(q_star(Activation::Tanh, 1e151, 0.0, 1.0).unwrap(), None);
        // chi_1 = sigma_w^2 / 2 whatever q, even when q diverges.
        for sw in [0.5, 2.0, 3.5] {
            let m = mean_field(Activation::Relu, sw, 0.3).unwrap();
            assert_eq!(m.chi_1, sw / 2.0);
        }
        assert_eq!(mean_field(Activation::Relu, 1.0, 1.0).unwrap().phase, Phase::Ordered);
        assert_eq!(mean_field(Activation::Relu, 2.0, 0.0).unwrap().phase, Phase::EdgeOfChaos);
        assert_eq!(mean_field(Activation::Relu, 3.0, 1.0).unwrap().phase, Phase::Chaotic);
        assert_eq!(phase(Activation::Relu, 1.5, 1.0, 1e-9).unwrap(), Phase::Ordered);
    }

    /// Smooth activations: V(q*) = q*, c* = 1 is a fixed point of the correlation map, and the
    /// stable c* found is a fixed point with chi_c < 1 when it is below 1.
    #[test]
    fn fixed_points_are_fixed() {
        for act in [Activation::Tanh, Activation::Erf, Activation::Sigmoid, Activation::Gelu] {
            for (sw, sb) in [(0.8, 0.1), (1.5, 0.05), (2.5, 0.5), (1.2, 0.0)] {
                let Some(q) = q_star(act, sw, sb, 1.0).unwrap() else {
                    assert!(act == Activation::Gelu && sw > 2.0);
                    continue;
                };
                let v = variance_map(act, sw, sb, q).unwrap();
                assert!(libm::fabs(v - q) <= 1e-12 * q + 1e-25, "{act} ({sw}, {sb}): {v} vs {q}");
                if q > 0.0 {
                    let one = correlation_map(act, sw, sb, q, 1.0).unwrap();
                    assert!(libm::fabs(one - 1.0) < 1e-11, "{act} ({sw}, {sb}) q {q}: {one}");
                    let m = mean_field(act, sw, sb).unwrap();
                    let c = correlation_map(act, sw, sb, q, m.c_star).unwrap();
                    assert!(
                        libm::fabs(c - m.c_star) < 1e-9,
                        "{act} ({sw}, {sb}): {c} vs {}",
                        m.c_star
                    );
                    if m.c_star < 1.0 - 1e-6 {
                        assert!(
                            m.chi_c < 1.0 && m.xi_c > 0.0 && m.phase == Phase::Chaotic,
                            "{m:?}"
                        );
                    }
                    assert!(m.chi_1 < 1.0 || m.phase != Phase::Ordered);
                }
            }
        }
    }

    /// Deep in the chaotic phase q* ~ sigma_w^2: V(q) = sigma_w^2 (1 - E[sech^2(sqrt(q) z)]) +
    /// sigma_b^2 and chi_1 = sigma_w^2 E[sech^4] by the saturated rule, against their large-q
    /// series (`kernel::tests::tanh_and_sigmoid_at_any_variance`) with k = 1 / sqrt(2 pi q):
    /// q* = sw (1 - k (2 - pi^2 / 12 q)) + sb and chi_1 = sw k (4/3 - (pi^2 - 6) / 18 q), up to
    /// relative terms O(q^-2).
    #[test]
    fn tanh_deep_in_the_chaotic_phase() {
        use core::f64::consts::PI;
        for sw in [1e6, 1e10, 1e100] {
            let q = q_star(Activation::Tanh, sw, 0.5, 1.0).unwrap().unwrap();
            let k = 1.0 / libm::sqrt(2.0 * PI * q);
            let v = variance_map(Activation::Tanh, sw, 0.5, q).unwrap();
            assert!(libm::fabs(v - q) <= 1e-14 * q, "sw {sw}: V(q*) {v} vs {q}");
            let series = sw * (1.0 - k * (2.0 - PI * PI / (12.0 * q))) + 0.5;
            assert!(libm::fabs(q - series) <= 1e-13 * q, "sw {sw}: q* {q} vs {series}");
            let x = chi_1(Activation::Tanh, sw, q).unwrap();
            let series = sw * k * (4.0 / 3.0 - (PI * PI - 6.0) / (18.0 * q));
            assert!(libm::fabs(x - series) <= 1e-11 * x, "sw {sw}: chi_1 {x} vs {series}");
        }
    }

    #[test]
    fn tanh_edge_of_chaos() {
        // sigma_b^2 = 0: q* = 0 for sigma_w^2 <= 1, chi_1 = sigma_w^2 phi'(0)^2.
        assert_eq!(q_star(Activation::Tanh, 0.9, 0.0, 1.0).unwrap(), Some(0.0));
        assert_eq!(chi_1(Activation::Tanh, 0.9, 0.0).unwrap(), 0.9);
        let w = eoc_sigma_w2(Activation::Tanh, 0.0).unwrap();
        assert!(libm::fabs(w - 1.0) < 1e-5, "{w}");
        // Along the curve chi_1 = 1, and the border moves with sigma_b^2 (it does not for ReLU).
        let sb = [0.01, 0.05, 0.1, 0.3, 1.0];
        let mut w = [0.0; 5];
        eoc_curve(&mut w, Activation::Tanh, &sb).unwrap();
        for i in 0..5 {
            let q = q_star(Activation::Tanh, w[i], sb[i], 1.0).unwrap().unwrap();
            let c1 = chi_1(Activation::Tanh, w[i], q).unwrap();
            assert!(libm::fabs(c1 - 1.0) < 1e-9, "{}: {c1}", sb[i]);
            assert!(i == 0 || w[i] > w[i - 1]);
            assert_eq!(phase(Activation::Tanh, 0.9 * w[i], sb[i], 1e-6).unwrap(), Phase::Ordered);
            assert_eq!(phase(Activation::Tanh, 1.1 * w[i], sb[i], 1e-6).unwrap(), Phase::Chaotic);
        }
        let mut r = [0.0; 5];
        eoc_curve(&mut r, Activation::Relu, &sb).unwrap();
        assert_eq!(r, [2.0; 5]);
        let m = mean_field(Activation::Tanh, w[2], sb[2]).unwrap();
        assert_eq!(m.phase, Phase::EdgeOfChaos);
        assert!(m.xi_grad > 1e6 || m.xi_grad < -1e6);
    }

    #[test]
    fn gelu_divergence_and_limits() {
        // GELU grows like ReLU at large q: from q0 = 1, q diverges at (3, 0.1) and chi_1 is the
        // limit sigma_w^2 / 2 (for 2 < sigma_w^2 < 4 a small stable q* also exists: V ~ q / 4).
        let m = mean_field(Activation::Gelu, 3.0, 0.1).unwrap();
        assert_eq!(m.q_star, None);
        assert_eq!(m.chi_1, 1.5);
        assert_eq!(chi_1(Activation::Tanh, 2.0, f64::INFINITY).unwrap(), 0.0);
        let q = q_star(Activation::Gelu, 1.5, 0.1, 1.0).unwrap().unwrap();
        assert!(q.is_finite() && q > 0.1);
    }

    /// Where GELU's variance map has two fixed points (small sigma_b^2), chi_1 from q0 = 1
    /// jumps from ~sigma_w^2 / 4 to sigma_w^2 / 2 over 1 (fuzz `phase`, crash-afb99084: at
    /// sigma_b^2 = 1.78e-4 the edge was given as 2.35 with chi_1 = 0.59 there); that is an
    /// error now, and where an edge is returned chi_1 is 1 at it and the phase flips across it.
    #[test]
    fn edge_of_chaos_has_chi_1_one_or_is_an_error() {
        for sb in [0.0, 1.78e-4, 0.01, 0.1] {
            let r = eoc_sigma_w2(Activation::Gelu, sb);
            assert!(matches!(r, Err(Error::NoConvergence { .. })), "{sb}: {r:?}");
        }
        for act in [Activation::Gelu, Activation::Tanh, Activation::Erf, Activation::Sigmoid] {
            for sb in [0.3, 1.0, 10.0] {
                let w = eoc_sigma_w2(act, sb).unwrap();
                let q = q_star(act, w, sb, 1.0).unwrap().unwrap();
                let x = chi_1(act, w, q).unwrap();
                assert!(libm::fabs(x - 1.0) < 1e-9, "{act} {sb}: chi_1 {x} at {w}");
                assert_eq!(phase(act, 0.999 * w, sb, 1e-9).unwrap(), Phase::Ordered);
                assert_eq!(phase(act, 1.001 * w, sb, 1e-9).unwrap(), Phase::Chaotic);
            }
        }
    }

    #[test]
    fn every_activation_gives_finite_results_or_typed_errors() {
        for act in ALL {
            for (sw, sb) in [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (2.0, 0.1), (4.0, 2.0)] {
                match mean_field(act, sw, sb) {
                    Ok(m) => {
                        assert!(m.chi_1.is_finite() && m.chi_c.is_finite() && !m.c_star.is_nan());
                        assert!(
                            !m.xi_grad.is_nan() && !m.xi_c.is_nan(),
                            "{act} ({sw}, {sb}): {m:?}"
                        );
                    }
                    Err(e) => panic!("{act} ({sw}, {sb}): {e:?}"),
                }
            }
        }
        assert!(matches!(
            mean_field(Activation::Tanh, -1.0, 0.0),
            Err(Error::InvalidSpec { field: "sigma_w2", .. })
        ));
        assert!(matches!(
            correlation_map(Activation::Tanh, 1.0, 0.0, 1.0, 1.5),
            Err(Error::InvalidSpec { field: "c", .. })
        ));
        assert!(q_star(Activation::Erf, 1.0, f64::NAN, 1.0).is_err());
        assert!(matches!(
            eoc_sigma_w2(Activation::Linear, f64::INFINITY),
            Err(Error::InvalidSpec { .. })
        ));
        assert!(eoc_curve(&mut [0.0; 2], Activation::Tanh, &[0.1]).is_err());
    }
}
