//! [`Elem`]: the bridge from a scalar type (`f32`, `f64`) to pulp's vector type for an
//! instruction set `S`, so that one generic kernel serves both precisions.

use pulp::Simd;

/// Widest vector (in elements) of any pulp instruction set: 512 bits of `f32`.
pub(crate) const MAX_LANES: usize = 16;

/// A scalar with a pulp vector type `V<S>` for every instruction set `S`.
///
/// Every method is `#[inline(always)]` so that it is compiled with the target features of the
/// `WithSimd::with_simd` body it is called from.
pub(crate) trait Elem: Copy + Default + PartialEq + 'static {
    /// The vector of `Self` for instruction set `S`.
    type V<S: Simd>: Copy;
    /// K-blocking of [`super::gemm`] (elements of the inner dimension per packed block).
    const KC: usize;
    /// Elements per vector.
    fn lanes<S: Simd>() -> usize;
    /// All lanes equal to `x`.
    fn splat<S: Simd>(s: S, x: Self) -> Self::V<S>;
    /// `a * b + c` (fused where the hardware has FMA, otherwise two roundings).
    fn mul_add<S: Simd>(s: S, a: Self::V<S>, b: Self::V<S>, c: Self::V<S>) -> Self::V<S>;
    /// `a * b`.
    fn mul<S: Simd>(s: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
    /// `a + b`.
    fn add<S: Simd>(s: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
    /// Splits `x` into whole vectors (unaligned) and a tail.
    fn as_simd<S: Simd>(x: &[Self]) -> (&[Self::V<S>], &[Self]);
    /// Splits `x` into whole mutable vectors (unaligned) and a tail.
    fn as_mut_simd<S: Simd>(x: &mut [Self]) -> (&mut [Self::V<S>], &mut [Self]);
    /// Loads `x.len() <= lanes` elements, the other lanes zero.
    fn partial_load<S: Simd>(s: S, x: &[Self]) -> Self::V<S>;
    /// Stores the first `x.len() <= lanes` lanes of `v`.
    fn partial_store<S: Simd>(s: S, x: &mut [Self], v: Self::V<S>);
    /// Sum of the lanes.
    fn reduce_sum<S: Simd>(s: S, v: Self::V<S>) -> Self;
}

macro_rules! impl_elem {
    ($t:ty, $kc:expr, $v:ident, $lanes:ident, $splat:ident, $fma:ident, $mul:ident, $add:ident,
     $as_simd:ident, $as_mut_simd:ident, $pload:ident, $pstore:ident, $sum:ident) => {
        impl Elem for $t {
            type V<S: Simd> = S::$v;
            const KC: usize = $kc;
            #[inline(always)]
            fn lanes<S: Simd>() -> usize {
                S::$lanes
            }
            #[inline(always)]
            fn splat<S: Simd>(s: S, x: Self) -> Self::V<S> {
                s.$splat(x)
            }
            #[inline(always)]
            fn mul_add<S: Simd>(s: S, a: Self::V<S>, b: Self::V<S>, c: Self::V<S>) -> Self::V<S> {
                s.$fma(a, b, c)
            }
            #[inline(always)]
            fn mul<S: Simd>(s: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S> {
                s.$mul(a, b)
            }
            #[inline(always)]
            fn add<S: Simd>(s: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S> {
                s.$add(a, b)
            }
            #[inline(always)]
            fn as_simd<S: Simd>(x: &[Self]) -> (&[Self::V<S>], &[Self]) {
                S::$as_simd(x)
            }
            #[inline(always)]
            fn as_mut_simd<S: Simd>(x: &mut [Self]) -> (&mut [Self::V<S>], &mut [Self]) {
                S::$as_mut_simd(x)
            }
            #[inline(always)]
            fn partial_load<S: Simd>(s: S, x: &[Self]) -> Self::V<S> {
                s.$pload(x)
            }
            #[inline(always)]
            fn partial_store<S: Simd>(s: S, x: &mut [Self], v: Self::V<S>) {
                s.$pstore(x, v)
            }
            #[inline(always)]
            fn reduce_sum<S: Simd>(s: S, v: Self::V<S>) -> Self {
                s.$sum(v)
            }
        }
    };
}

impl_elem!(
    f64,
    super::KC_F64,
    f64s,
    F64_LANES,
    splat_f64s,
    mul_add_e_f64s,
    mul_f64s,
    add_f64s,
    as_simd_f64s,
    as_mut_simd_f64s,
    partial_load_f64s,
    partial_store_f64s,
    reduce_sum_f64s
);
impl_elem!(
    f32,
    super::KC_F32,
    f32s,
    F32_LANES,
    splat_f32s,
    mul_add_e_f32s,
    mul_f32s,
    add_f32s,
    as_simd_f32s,
    as_mut_simd_f32s,
    partial_load_f32s,
    partial_store_f32s,
    reduce_sum_f32s
);
