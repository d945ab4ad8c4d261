//! [`Real`]: the scalar trait (f32 and f64) over `libm`.
//!
//! Every transcendental goes through `libm`, never through std's inherent float methods:
//! in a `no_std` crate those silently resolve to std when std is in the build graph.

use core::fmt::{Debug, Display};
use core::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::simd::SimdReal;

/// A floating-point scalar: `f32` or `f64`.
///
/// Transcendentals are `libm`'s (with the `fast-math` feature, `f32::exp` is micromath's,
/// about 2e-3 relative error).
///
/// ```
/// use ntk_core::Real;
/// fn softplus<T: Real>(x: T) -> T { (T::ONE + x.exp()).ln() }
/// assert!((softplus(0.0f64) - core::f64::consts::LN_2).abs() < 1e-15);
/// assert!((softplus(0.0f32) - core::f32::consts::LN_2).abs() < 1e-6);
/// ```
pub trait Real:
    Copy
    + Default
    + PartialOrd
    + Debug
    + Display
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + SimdReal
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Machine epsilon.
    const EPSILON: Self;
    /// Largest finite value.
    const MAX: Self;
    /// Smallest positive normal value.
    const MIN_POSITIVE: Self;
    /// Name used in file formats and reports: `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Size in bytes.
    const BYTES: usize;

    /// Rounds an `f64` to this type.
    fn from_f64(x: f64) -> Self;
    /// Widens to `f64` (exact).
    fn to_f64(self) -> f64;
    /// `e^x`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Error function.
    fn erf(self) -> Self;
    /// Complementary error function `1 - erf(x)`, accurate in the tail.
    fn erfc(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// `x * 2^n`.
    fn scalbn(self, n: i32) -> Self;
    /// `true` if neither infinite nor NaN.
    fn is_finite(self) -> bool;
    /// `self * a + b` with one rounding.
    fn mul_add(self, a: Self, b: Self) -> Self;

    /// `true` for NaN.
    #[inline]
    fn is_nan_(self) -> bool {
        #[allow(clippy::eq_op)]
        let nan = self != self;
        nan
    }

    /// Larger of two values (NaN-ignoring, as `libm::fmax`).
    #[inline]
    fn max(self, other: Self) -> Self {
        if self >= other || other.is_nan_() {
            self
        } else {
            other
        }
    }
    /// Smaller of two values (NaN-ignoring).
    #[inline]
    fn min(self, other: Self) -> Self {
        if self <= other || other.is_nan_() {
            self
        } else {
            other
        }
    }
}

macro_rules! impl_real {
    ($t:ty, $name:literal, $exp:path, $ln:path, $sqrt:path, $tanh:path, $erf:path, $erfc:path,
     $fabs:path, $scalbn:path, $fma:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const EPSILON: Self = <$t>::EPSILON;
            const MAX: Self = <$t>::MAX;
            const MIN_POSITIVE: Self = <$t>::MIN_POSITIVE;
            const NAME: &'static str = $name;
            const BYTES: usize = core::mem::size_of::<$t>();
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                $ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                $sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn erfc(self) -> Self {
                $erfc(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $fabs(self)
            }
            #[inline(always)]
            fn scalbn(self, n: i32) -> Self {
                $scalbn(self, n)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                $fma(self, a, b)
            }
        }
    };
}

#[cfg(not(feature = "fast-math"))]
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    libm::expf(x)
}

/// micromath's exp: about 2e-3 relative error, opt-in through the `fast-math` feature.
#[cfg(feature = "fast-math")]
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    micromath::F32Ext::exp(x)
}

impl_real!(
    f32,
    "f32",
    exp_f32,
    libm::logf,
    libm::sqrtf,
    libm::tanhf,
    libm::erff,
    libm::erfcf,
    libm::fabsf,
    libm::scalbnf,
    libm::fmaf
);
impl_real!(
    f64,
    "f64",
    libm::exp,
    libm::log,
    libm::sqrt,
    libm::tanh,
    libm::erf,
    libm::erfc,
    libm::fabs,
    libm::scalbn,
    libm::fma
);

/// Sum of squares of a slice, accumulated in `f64`.
#[inline]
pub fn sum_sq<T: Real>(x: &[T]) -> f64 {
    x.iter().map(|v| v.to_f64() * v.to_f64()).sum()
}
