//! SIMD kernels (pulp) with scalar twins: packed GEMM and the fused Gram–Hadamard kernel.
//!
//! Every kernel here has a plain scalar twin in [`scalar`] that is its test oracle.
//! Matrices are strided views ([`MatRef`], [`MatMut`]) over caller-owned slices.

/// `impl WithSimd for $op` that runs `$run::<T, S, ..>` with the wide micro-tile constants
/// on instruction sets with 32 vector registers and the narrow ones otherwise.
macro_rules! register_tiles {
    ($op:ident, [$($bound:tt)+], $run:ident, ($w1:ident, $w2:ident), ($n1:ident, $n2:ident)) => {
        impl<T: $($bound)+> WithSimd for $op<'_, T> {
            type Output = ();

            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) {
                if S::REGISTER_COUNT >= 32 {
                    $run::<T, S, $w1, $w2>(s, self)
                } else {
                    $run::<T, S, $n1, $n2>(s, self)
                }
            }
        }
    };
}

mod elem;
mod gram_rows;
mod kernel;
mod nt;
pub mod scalar;
#[cfg(test)]
mod tests;
mod transpose;

use crate::error::{check_len, Error};
use crate::real::Real;

/// A read-only strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    /// Backing slice.
    pub data: &'a [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row stride (elements).
    pub rs: usize,
    /// Column stride (elements).
    pub cs: usize,
}

/// A mutable strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    /// Backing slice.
    pub data: &'a mut [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row stride (elements).
    pub rs: usize,
    /// Column stride (elements).
    pub cs: usize,
}

/// Index of the last element of a rows x cols view with strides (rs, cs), plus one.
#[inline]
const fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// Row-major `rows x cols` view (`rs = cols`, `cs = 1`).
    ///
    /// # Panics
    /// If `data` is shorter than `rows * cols`.
    #[track_caller]
    #[inline]
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// General strided view.
    ///
    /// # Panics
    /// If `data` does not cover the view.
    #[track_caller]
    #[inline]
    pub fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(data.len() >= extent(rows, cols, rs, cs), "MatRef: slice too short");
        Self { data, rows, cols, rs, cs }
    }

    /// The transpose (no copy).
    #[inline]
    pub fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Element (i, j).
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }

    /// Rows `r0..r0 + rows`.
    ///
    /// # Panics
    /// If out of range.
    #[track_caller]
    #[inline]
    pub fn rows(self, r0: usize, rows: usize) -> Self {
        assert!(r0 + rows <= self.rows);
        let off = if rows == 0 { 0 } else { r0 * self.rs };
        Self { data: &self.data[off.min(self.data.len())..], rows, ..self }
    }
}

impl<'a, T: Copy> MatMut<'a, T> {
    /// Row-major `rows x cols` view.
    ///
    /// # Panics
    /// If `data` is shorter than `rows * cols`.
    #[track_caller]
    #[inline]
    pub fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// General strided view.
    ///
    /// # Panics
    /// If `data` does not cover the view.
    #[track_caller]
    #[inline]
    pub fn strided(data: &'a mut [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(data.len() >= extent(rows, cols, rs, cs), "MatMut: slice too short");
        Self { data, rows, cols, rs, cs }
    }

    /// Element (i, j).
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }

    /// Mutable element (i, j).
    #[inline(always)]
    pub fn at_mut(&mut self, i: usize, j: usize) -> &mut T {
        &mut self.data[i * self.rs + j * self.cs]
    }

    /// Reborrow.
    #[inline]
    pub fn rb(&mut self) -> MatMut<'_, T> {
        MatMut { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }

    /// Read-only view.
    #[inline]
    pub fn as_ref(&self) -> MatRef<'_, T> {
        MatRef { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }
}

/// Which part of a square output a symmetric kernel must fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Every entry.
    Full,
    /// At least every entry with column >= row (the caller mirrors the rest).
    Upper,
}

/// Per-type SIMD entry points, implemented for `f32` and `f64` (dispatched once through
/// `pulp::Arch`). Use the generic wrappers [`gemm`], [`gram_hadamard`], [`dot`] instead.
pub trait SimdReal: Sized + Copy {
    /// See [`gemm`] and, with `bias`, [`gemm_bias`]; arguments already checked.
    fn simd_gemm(
        dst: MatMut<'_, Self>,
        alpha: Self,
        lhs: MatRef<'_, Self>,
        rhs: MatRef<'_, Self>,
        beta: Self,
        bias: Option<(Self, &[Self])>,
        scratch: &mut [Self],
    );
    /// See [`gram_hadamard`]; arguments already checked.
    #[allow(clippy::too_many_arguments)]
    fn simd_gram_hadamard(
        dst: MatMut<'_, Self>,
        a1: MatRef<'_, Self>,
        a2: MatRef<'_, Self>,
        d1: MatRef<'_, Self>,
        d2: MatRef<'_, Self>,
        c: Self,
        s: Self,
        part: Part,
        scratch: &mut [Self],
    );
    /// See [`dot`].
    fn simd_dot(a: &[Self], b: &[Self]) -> Self;
}

// Blocking (in elements). The scratch sizes below hold for every instruction set pulp may pick:
// vectors have 1, 2, 4, 8 or 16 lanes (so packed lhs panels round up to 16) and micro-tiles
// are NR_WIDE (32 vector registers) or NR_NARROW columns wide.
/// Most lanes of any pulp vector (`f32` on AVX-512).
const LANES_MAX: usize = 16;
/// Vectors per micro-tile column with 32 vector registers (AVX-512, NEON).
const MV_WIDE: usize = 4;
/// Micro-tile columns with 32 vector registers.
const NR_WIDE: usize = 6;
/// Vectors per micro-tile column with 16 vector registers (AVX2, scalar).
const MV_NARROW: usize = 3;
/// Micro-tile columns with 16 vector registers.
const NR_NARROW: usize = 4;
/// Rows of lhs per packed block of [`gemm`].
const MC: usize = 192;
/// Columns of rhs per packed block of [`gemm`] (a multiple of both NRs).
const NC: usize = 1020;
/// Inner-dimension block for `f64` (packed panels of [`gemm`], register passes of
/// [`gram_hadamard`]).
const KC_F64: usize = 256;
/// Inner-dimension block for `f32`.
const KC_F32: usize = 512;
/// A row-major `m x n` output of [`gemm`] has few rows when `FEW_ROWS * m <= n`.
const FEW_ROWS: usize = 8;
/// Rows of `a1`/`d1` per packed block of [`gram_hadamard`].
const MC_GRAM: usize = 192;
/// Rows of `a2`/`d2` per packed block of [`gram_hadamard`] (a multiple of both NRs).
const NC_GRAM: usize = 504;

const fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

pub(crate) const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

pub(crate) const fn round_up(x: usize, g: usize) -> usize {
    x.div_ceil(g) * g
}

/// `n` rounded up to whole micro-tile columns, for either micro-tile width.
const fn pad_nr(n: usize) -> usize {
    max(round_up(n, NR_WIDE), round_up(n, NR_NARROW))
}

/// Packed lhs block plus packed rhs block for one orientation and one K block.
const fn gemm_scratch_oriented(m: usize, n: usize, k: usize, kc: usize) -> usize {
    (round_up(min(m, MC), LANES_MAX) + pad_nr(min(n, NC))) * min(k, kc)
}

/// Whether [`gemm`] computes a row-major `m x n` output whose `rhs` is contiguous along K (for
/// at most 64 rows of `f32` also row-major) with vectors along its rows, into a column-major copy in scratch:
/// `rhs` (`k x n`) is then read in place and only the `m x k` `lhs` is packed, instead of
/// packing all of `rhs` for few rows.
pub(crate) const fn few_rows(m: usize, n: usize) -> bool {
    FEW_ROWS * m <= n
}

/// The column-major copy of a row-major output with few rows (`m` clamped to the most rows
/// that still count as few, so the size grows with `m`) plus one packed `lhs` block.
const fn gemm_scratch_few_rows(m: usize, n: usize, k: usize, kc: usize) -> usize {
    let m = min(m, n / FEW_ROWS);
    m * n + round_up(min(m, MC), LANES_MAX) * min(k, kc)
}

/// Scratch elements [`gemm`] needs for an `m x k` times `k x n` product (`f32` or `f64`):
/// one packed block of at most `192 x KC` of `lhs` and `KC x 1020` of `rhs` (`KC` = 256 for
/// `f64`, 512 for `f32`), padded to whole micro-panels, for either orientation; for a
/// row-major output with `8 m <= n` rows, at least the `m x n` output and a packed `lhs` block.
pub const fn gemm_scratch(m: usize, n: usize, k: usize) -> usize {
    if m == 0 || n == 0 || k == 0 {
        return 0;
    }
    let few_rows =
        max(gemm_scratch_few_rows(m, n, k, KC_F64), gemm_scratch_few_rows(m, n, k, KC_F32));
    max(
        few_rows,
        max(
            max(gemm_scratch_oriented(m, n, k, KC_F64), gemm_scratch_oriented(n, m, k, KC_F64)),
            max(gemm_scratch_oriented(m, n, k, KC_F32), gemm_scratch_oriented(n, m, k, KC_F32)),
        ),
    )
}

/// Packed blocks of both sides over `ka + kd`, and two partial Gram tiles of the block.
const fn gram_hadamard_scratch_oriented(m: usize, n: usize, ka: usize, kd: usize) -> usize {
    let mb = round_up(min(m, MC_GRAM), LANES_MAX);
    let nb = pad_nr(min(n, NC_GRAM));
    (mb + nb) * (ka + kd) + 2 * mb * nb
}

/// Scratch elements [`gram_hadamard`] needs (`f32` or `f64`), enough for either kernel: the
/// packed one (blocks of at most 192 rows of `a1`, `d1` and 504 rows of `a2`, `d2`, all of
/// `ka + kd`, plus two partial Gram tiles of such a block, either orientation) and the one for
/// row-major operands (a K-major panel of at most 192 KiB and two partial tiles of at most 512
/// rows; the pages of the larger part it never touches).
pub const fn gram_hadamard_scratch(m: usize, n: usize, ka: usize, kd: usize) -> usize {
    if m == 0 || n == 0 {
        return 0;
    }
    let packed = max(
        gram_hadamard_scratch_oriented(m, n, ka, kd),
        gram_hadamard_scratch_oriented(n, m, ka, kd),
    );
    max(packed, gram_rows::scratch(m, ka, kd))
}

/// `dst = beta * dst + alpha * lhs * rhs` (`dst` m x n, `lhs` m x k, `rhs` k x n).
/// With `beta = 0`, `dst` is overwritten (NaNs in it do not propagate).
///
/// # Errors
/// [`Error::ShortBuffer`] if `scratch` is shorter than [`gemm_scratch`].
///
/// # Panics
/// If the shapes do not agree.
#[track_caller]
pub fn gemm<T: Real>(
    dst: MatMut<'_, T>,
    alpha: T,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    beta: T,
    scratch: &mut [T],
) -> Result<(), Error> {
    checked_gemm(dst, alpha, lhs, rhs, beta, None, scratch)
}

/// [`gemm`] or [`gemm_bias`] after the shape and scratch checks.
#[track_caller]
fn checked_gemm<T: Real>(
    dst: MatMut<'_, T>,
    alpha: T,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    beta: T,
    bias: Option<(T, &[T])>,
    scratch: &mut [T],
) -> Result<(), Error> {
    assert!(
        dst.rows == lhs.rows
            && dst.cols == rhs.cols
            && lhs.cols == rhs.rows
            && bias.is_none_or(|(_, b)| b.len() == dst.cols),
        "gemm: shapes"
    );
    check_len("scratch", scratch, gemm_scratch(dst.rows, dst.cols, lhs.cols))?;
    T::simd_gemm(dst, alpha, lhs, rhs, beta, bias, scratch);
    Ok(())
}

/// `dst = alpha * lhs * rhs + 1 (c b)^T` (`b` one value per column of `dst`): the bits of
/// [`gemm`] with `beta = 1` on a `dst` whose every row is `c b` (`fma(1, x, y) = x + y`), without
/// reading `dst` (a layer's `h = c_w a W^T + c_b 1 b^T` with no bias fill).
///
/// # Errors
/// [`Error::ShortBuffer`] if `scratch` is shorter than [`gemm_scratch`].
///
/// # Panics
/// If the shapes do not agree.
#[track_caller]
pub fn gemm_bias<T: Real>(
    dst: MatMut<'_, T>,
    alpha: T,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    bias: (T, &[T]),
    scratch: &mut [T],
) -> Result<(), Error> {
    checked_gemm(dst, alpha, lhs, rhs, T::ZERO, Some(bias), scratch)
}

/// `dst += (c * a1 a2^T + s) .* (d1 d2^T)`: one layer's term of the structured NTK
/// (DESIGN §3), fused so that neither Gram matrix is formed.
///
/// `dst` m x n, `a1` m x ka, `a2` n x ka, `d1` m x kd, `d2` n x kd. With [`Part::Upper`] the
/// kernel may skip entries below the diagonal (requires `a1 == a2`, `d1 == d2`).
///
/// # Errors
/// [`Error::ShortBuffer`] if `scratch` is shorter than [`gram_hadamard_scratch`].
///
/// # Panics
/// If the shapes do not agree.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn gram_hadamard<T: Real>(
    dst: MatMut<'_, T>,
    a1: MatRef<'_, T>,
    a2: MatRef<'_, T>,
    d1: MatRef<'_, T>,
    d2: MatRef<'_, T>,
    c: T,
    s: T,
    part: Part,
    scratch: &mut [T],
) -> Result<(), Error> {
    assert!(
        dst.rows == a1.rows
            && dst.rows == d1.rows
            && dst.cols == a2.rows
            && dst.cols == d2.rows
            && a1.cols == a2.cols
            && d1.cols == d2.cols,
        "gram_hadamard: shapes"
    );
    check_len("scratch", scratch, gram_hadamard_scratch(dst.rows, dst.cols, a1.cols, d1.cols))?;
    T::simd_gram_hadamard(dst, a1, a2, d1, d2, c, s, part, scratch);
    Ok(())
}

/// `sum_i a[i] b[i]`.
///
/// # Panics
/// If the lengths differ.
#[track_caller]
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    assert_eq!(a.len(), b.len(), "dot: lengths");
    T::simd_dot(a, b)
}

macro_rules! impl_simd_real {
    ($t:ty) => {
        impl SimdReal for $t {
            fn simd_gemm(
                dst: MatMut<'_, Self>,
                alpha: Self,
                lhs: MatRef<'_, Self>,
                rhs: MatRef<'_, Self>,
                beta: Self,
                bias: Option<(Self, &[Self])>,
                scratch: &mut [Self],
            ) {
                kernel::gemm(dst, alpha, lhs, rhs, beta, bias, scratch)
            }
            fn simd_gram_hadamard(
                dst: MatMut<'_, Self>,
                a1: MatRef<'_, Self>,
                a2: MatRef<'_, Self>,
                d1: MatRef<'_, Self>,
                d2: MatRef<'_, Self>,
                c: Self,
                s: Self,
                part: Part,
                scratch: &mut [Self],
            ) {
                kernel::gram_hadamard(dst, a1, a2, d1, d2, c, s, part, scratch)
            }
            fn simd_dot(a: &[Self], b: &[Self]) -> Self {
                kernel::dot(a, b)
            }
        }
    };
}
impl_simd_real!(f32);
impl_simd_real!(f64);
