//! In-register transposes of `lanes x lanes` blocks for the transposing pack of the GEMM
//! (`out[p * w + r] = src(r, p)` with rows of `src` contiguous along `p`) and its column-major
//! copy of a row-major output. Pure data movement: every GEMM result is the same bits as with
//! the scalar copies.

use super::elem::Elem;
use pulp::Simd;

/// Whether [`block`] transposes in registers for `S` (AVX-512).
#[inline(always)]
pub(crate) fn available<T: Elem, S: Simd>() -> bool {
    cfg!(target_arch = "x86_64") && core::mem::size_of::<T::V<S>>() == 64
}

/// `dst[p * ds + r] = src[r * rs + p]` for `r < rows`, `p < cols`: `lanes x lanes` blocks in
/// registers where [`available`], the rest (and every block elsewhere) element by element in
/// blocks of 8 x 8.
///
/// # Panics
/// If an element lies outside its slice.
#[inline(always)]
pub(crate) fn copy<T: Elem, S: Simd>(
    s: S,
    src: &[T],
    rs: usize,
    dst: &mut [T],
    ds: usize,
    (rows, cols): (usize, usize),
) {
    let b = if available::<T, S>() { T::lanes::<S>() } else { 8 };
    for rb in (0..rows).step_by(b) {
        let rh = b.min(rows - rb);
        for pb in (0..cols).step_by(b) {
            let pn = b.min(cols - pb);
            let (src, dst) = (&src[rb * rs + pb..], &mut dst[pb * ds + rb..]);
            if rh == b && pn == b && block(s, src, rs, dst, ds) {
                continue;
            }
            for p in 0..pn {
                for (r, x) in dst[p * ds..p * ds + rh].iter_mut().enumerate() {
                    *x = src[r * rs + p];
                }
            }
        }
    }
}

/// Transposes the `lanes x lanes` block of `src` (row `r` at `src[r * rs..]`) into `dst`
/// (row `p` at `dst[p * ds..]`) when `S` is AVX-512 (`lanes` = 8 `f64` or 16 `f32`); returns
/// `false`, touching nothing, on other instruction sets.
///
/// # Panics
/// If a row of the block lies outside its slice.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) fn block<T: Elem, S: Simd>(
    _s: S,
    src: &[T],
    rs: usize,
    dst: &mut [T],
    ds: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if core::mem::size_of::<T::V<S>>() == 64 {
        let l = T::lanes::<S>();
        assert!(src.len() >= (l - 1) * rs + l && dst.len() >= (l - 1) * ds + l, "transpose");
        // SAFETY: a 512-bit pulp vector exists only with AVX-512F (pulp's `V4` token `S` was
        // obtained by runtime detection); `T` is f64 (l = 8) or f32 (l = 16), plain data of the
        // intrinsics' element type; every row read or written lies in its slice (asserted).
        unsafe {
            if l == 8 {
                x86::transpose8_f64(src.as_ptr().cast(), rs, dst.as_mut_ptr().cast(), ds);
            } else {
                x86::transpose16_f32(src.as_ptr().cast(), rs, dst.as_mut_ptr().cast(), ds);
            }
        }
        return true;
    }
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// `[a lanes 0, 2 | b lanes 0, 2]` and `[a lanes 1, 3 | b lanes 1, 3]` (128-bit lanes).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn split_pd(a: __m512d, b: __m512d) -> (__m512d, __m512d) {
        (_mm512_shuffle_f64x2::<0b10_00_10_00>(a, b), _mm512_shuffle_f64x2::<0b11_01_11_01>(a, b))
    }

    /// 8 x 8 `f64`: row `r` of `src` (stride `rs`) becomes column `r` of `dst` (stride `ds`).
    ///
    /// # Safety
    /// AVX-512F; the 8 rows of 8 values at `src` and `dst` are readable / writable.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose8_f64(src: *const f64, rs: usize, dst: *mut f64, ds: usize) {
        // SAFETY: the caller guarantees the rows.
        let r: [__m512d; 8] = core::array::from_fn(|i| unsafe { _mm512_loadu_pd(src.add(i * rs)) });
        // t[2g] = [r_{2g} r_{2g+1}] at even columns, t[2g+1] at odd columns (per 128-bit lane).
        let t: [__m512d; 8] = core::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_pd(a, b)
            } else {
                _mm512_unpackhi_pd(a, b)
            }
        });
        let (u0, u1) = split_pd(t[0], t[2]);
        let (u2, u3) = split_pd(t[1], t[3]);
        let (u4, u5) = split_pd(t[4], t[6]);
        let (u6, u7) = split_pd(t[5], t[7]);
        let (o0, o4) = split_pd(u0, u4);
        let (o1, o5) = split_pd(u2, u6);
        let (o2, o6) = split_pd(u1, u5);
        let (o3, o7) = split_pd(u3, u7);
        for (p, o) in [o0, o1, o2, o3, o4, o5, o6, o7].into_iter().enumerate() {
            // SAFETY: the caller guarantees the rows.
            unsafe { _mm512_storeu_pd(dst.add(p * ds), o) };
        }
    }

    /// `split_pd` on `f32` vectors (the same 128-bit lane moves).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn split_ps(a: __m512, b: __m512) -> (__m512, __m512) {
        (_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
    }

    /// 16 x 16 `f32`: row `r` of `src` (stride `rs`) becomes column `r` of `dst` (stride `ds`).
    ///
    /// # Safety
    /// AVX-512F; the 16 rows of 16 values at `src` and `dst` are readable / writable.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16_f32(src: *const f32, rs: usize, dst: *mut f32, ds: usize) {
        // SAFETY: the caller guarantees the rows.
        let r: [__m512; 16] = core::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.add(i * rs)) });
        // Pairs of rows interleaved: lo = columns 4k, 4k+1; hi = 4k+2, 4k+3 (per 128-bit lane k).
        let t: [__m512; 16] = core::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // v[4g + j]: lane k holds rows 4g..4g+3 of column 4k + j.
        let mut v = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (lo0, hi0) = (_mm512_castps_pd(t[4 * g]), _mm512_castps_pd(t[4 * g + 2]));
            let (lo1, hi1) = (_mm512_castps_pd(t[4 * g + 1]), _mm512_castps_pd(t[4 * g + 3]));
            v[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, hi0));
            v[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, hi0));
            v[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo1, hi1));
            v[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo1, hi1));
        }
        // Column 4k + j gathers lane k of v[j], v[4 + j], v[8 + j], v[12 + j].
        for j in 0..4 {
            let (a, b) = split_ps(v[j], v[4 + j]);
            let (c, d) = split_ps(v[8 + j], v[12 + j]);
            let (k0, k2) = split_ps(a, c);
            let (k1, k3) = split_ps(b, d);
            for (k, o) in [k0, k1, k2, k3].into_iter().enumerate() {
                // SAFETY: the caller guarantees the rows.
                unsafe { _mm512_storeu_ps(dst.add((4 * k + j) * ds), o) };
            }
        }
    }
}
