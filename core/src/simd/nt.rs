//! The "NT" GEMM kernel: both operands contiguous along the inner dimension (`lhs` rows and
//! `rhs` columns, the first layers' forward products). No packing: an `MR x NR` micro-tile keeps
//! one vector accumulator per output entry, loads `MR + NR` vectors straight from the row-major
//! operands per step along K, and reduces each accumulator horizontally at the end.
//!
//! Determinism: an entry is always `reduce_sum(acc)` of the same vector FMA chain over its
//! whole inner dimension (lane `t` accumulates `p = t, t + lanes, ...` in increasing order, the
//! tail as one zero-padded vector), then combined with the destination by the same scalar
//! expression; edge tiles run the same full-size code with clamped (repeated) rows whose
//! results are dropped, so an entry depends only on K (and the instruction set), never on its
//! position or the caller's blocking.

use super::elem::Elem;
use core::ops::{Add, Mul};
use pulp::{Simd, WithSimd};

/// Bytes of the `rhs` row block kept in L2 while the `lhs` tiles sweep it.
const L2_BLOCK_BYTES: usize = 512 * 1024;

/// Longest rows (bytes) for which [`gemm_nt`] serves a product. The forward product
/// `A W^T` (K = fan-in) is the NT case; measured with one thread (`ntk bench` phases, DESIGN §9
/// workloads): with the in-register transposing pack the packed GEMM wins from K = 256 `f32`
/// (W3 forward 2.23 -> 1.85 ms) and K = 512 / 256 before it (W2 forward 159 -> 185 GFLOP/s
/// `f32`, 55 -> 74 `f64`); the NT tiles keep the first layers (K = d = 32, 64).
const GEMM_NT_MAX_ROW_BYTES: usize = 512;

/// Whether [`gemm_nt`] serves an inner dimension `k` of `T`. The choice depends on K only,
/// so it never splits an output between the two paths.
#[inline(always)]
pub(crate) fn pays_gemm<T>(k: usize) -> bool {
    k * core::mem::size_of::<T>() <= GEMM_NT_MAX_ROW_BYTES
}

/// Micro-tile with 32 vector registers: 4 x 6 accumulators (+ 4 + 1 operand registers).
const MR_WIDE: usize = 4;
const NR_WIDE: usize = 6;
/// Micro-tile with 16 vector registers: 3 x 4 accumulators.
const MR_NARROW: usize = 3;
const NR_NARROW: usize = 4;

/// Rows of the block of `rhs` rows (each `k` elements) swept by one pass of the `lhs` tiles:
/// a whole number of `nr`-tiles, at least one.
#[inline(always)]
fn block_rows<T>(row_len: usize, nr: usize) -> usize {
    let bytes = row_len.max(1) * core::mem::size_of::<T>();
    (L2_BLOCK_BYTES / bytes / nr).max(1) * nr
}

/// `[sum_p a_i[p] b_j[p]]_{ij}`: every slice has the same length `k`.
#[inline(always)]
fn dot_tile<T: Elem, S: Simd, const MR: usize, const NR: usize>(
    s: S,
    a: [&[T]; MR],
    b: [&[T]; NR],
) -> [[T; NR]; MR] {
    let k = a[0].len();
    let l = T::lanes::<S>();
    let nv = k / l;
    let tail = k - nv * l;
    let av: [&[T::V<S>]; MR] = core::array::from_fn(|i| &T::as_simd::<S>(a[i]).0[..nv]);
    let bv: [&[T::V<S>]; NR] = core::array::from_fn(|j| &T::as_simd::<S>(b[j]).0[..nv]);
    let zero = T::splat(s, T::default());
    let mut acc = [[zero; NR]; MR];
    for p in 0..nv {
        let x: [T::V<S>; MR] = core::array::from_fn(|i| av[i][p]);
        for j in 0..NR {
            let y = bv[j][p];
            for i in 0..MR {
                acc[i][j] = T::mul_add(s, x[i], y, acc[i][j]);
            }
        }
    }
    if tail > 0 {
        let x: [T::V<S>; MR] = core::array::from_fn(|i| T::partial_load(s, &a[i][nv * l..]));
        for j in 0..NR {
            let y = T::partial_load(s, &b[j][nv * l..]);
            for i in 0..MR {
                acc[i][j] = T::mul_add(s, x[i], y, acc[i][j]);
            }
        }
    }
    let mut out = [[T::default(); NR]; MR];
    reduce_tile::<T, S, MR, NR>(s, acc, &mut out);
    out
}

/// `out[i][j] = ` the sum of the lanes of `acc[i][j]`, by one fixed tree for every entry
/// (pulp's `reduce_sum`, or on AVX-512 the same halving tree computed for 8 or 16 entries at
/// once by transposing adds).
// Constant-bound index loops keep the accumulators in registers (no address is taken).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn reduce_tile<T: Elem, S: Simd, const MR: usize, const NR: usize>(
    s: S,
    acc: [[T::V<S>; NR]; MR],
    out: &mut [[T; NR]; MR],
) {
    #[cfg(target_arch = "x86_64")]
    if core::mem::size_of::<T::V<S>>() == 64 {
        // A 512-bit pulp vector exists only with the AVX-512 instruction set (pulp's `V4`).
        // The accumulators are copied out with constant indices only (so that they stay in
        // registers during the FMA loop), into groups of `lanes` zero-padded vectors.
        let l = T::lanes::<S>();
        let zero = T::splat(s, T::default());
        let mut flat = [[zero; 16]; 2];
        for i in 0..MR {
            for j in 0..NR {
                let t = i * NR + j;
                flat[t / 16][t % 16] = acc[i][j];
            }
        }
        let mut sums = [[T::default(); 16]; 4];
        let groups = (MR * NR).div_ceil(l);
        for g in 0..groups {
            let v = &flat[(g * l) / 16][(g * l) % 16..];
            // SAFETY: `S` is pulp's AVX-512 token, so `avx512f` is available; `T::V<S>` is a
            // 64-byte plain vector of `T` (f64 x 8 or f32 x 16), as are `__m512d` / `__m512`.
            unsafe {
                if l == 8 {
                    let w: [x86::__m512d; 8] = core::array::from_fn(|u| {
                        core::mem::transmute_copy::<T::V<S>, x86::__m512d>(&v[u])
                    });
                    let r = x86::reduce8_f64(w);
                    let r: [T; 8] = core::mem::transmute_copy(&r);
                    sums[g][..8].copy_from_slice(&r);
                } else {
                    let w: [x86::__m512; 16] = core::array::from_fn(|u| {
                        core::mem::transmute_copy::<T::V<S>, x86::__m512>(&v[u])
                    });
                    let r = x86::reduce16_f32(w);
                    sums[g] = core::mem::transmute_copy(&r);
                }
            }
        }
        for i in 0..MR {
            for j in 0..NR {
                let t = i * NR + j;
                out[i][j] = sums[t / l][t % l];
            }
        }
        return;
    }
    for i in 0..MR {
        for j in 0..NR {
            out[i][j] = T::reduce_sum(s, acc[i][j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;
    pub(super) use core::arch::x86_64::{__m512, __m512d};

    /// Lane sums of 8 vectors of 8 `f64`: `((l_t + l_{t+4}) + (l_{t+2} + l_{t+6}))` pairs, then
    /// lane 0 + lane 1 (the tree of pulp's `reduce_sum`), entry `e` in lane `e` of the result.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn reduce8_f64(v: [__m512d; 8]) -> [f64; 8] {
        // Level 1: 256-bit halves. s[p] = [v_{2p} (4 lanes), v_{2p+1} (4 lanes)].
        let s: [__m512d; 4] = core::array::from_fn(|p| {
            let (x, y) = (v[2 * p], v[2 * p + 1]);
            let lo = _mm512_shuffle_f64x2::<0b01_00_01_00>(x, y);
            let hi = _mm512_shuffle_f64x2::<0b11_10_11_10>(x, y);
            _mm512_add_pd(lo, hi)
        });
        // Level 2: 128-bit blocks. r[q] = [v_{4q}, v_{4q+1}, v_{4q+2}, v_{4q+3}] (2 lanes each).
        let r: [__m512d; 2] = core::array::from_fn(|q| {
            let (x, y) = (s[2 * q], s[2 * q + 1]);
            let lo = _mm512_shuffle_f64x2::<0b10_00_10_00>(x, y);
            let hi = _mm512_shuffle_f64x2::<0b11_01_11_01>(x, y);
            _mm512_add_pd(lo, hi)
        });
        // Level 3: lanes. Block b = [v_b, v_{4+b}].
        let t = _mm512_add_pd(_mm512_unpacklo_pd(r[0], r[1]), _mm512_unpackhi_pd(r[0], r[1]));
        // SAFETY: same size, plain data.
        let t: [f64; 8] = unsafe { core::mem::transmute::<__m512d, [f64; 8]>(t) };
        [t[0], t[2], t[4], t[6], t[1], t[3], t[5], t[7]]
    }

    /// Lane sums of 16 vectors of 16 `f32` by the halving tree (256, 128, 64, 32 bits).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn reduce16_f32(v: [__m512; 16]) -> [f32; 16] {
        let v: [__m512d; 16] = core::array::from_fn(|u| _mm512_castps_pd(v[u]));
        // Level 1: s[p] = [v_{2p} (8), v_{2p+1} (8)].
        let s: [__m512; 8] = core::array::from_fn(|p| {
            let (x, y) = (v[2 * p], v[2 * p + 1]);
            let lo = _mm512_castpd_ps(_mm512_shuffle_f64x2::<0b01_00_01_00>(x, y));
            let hi = _mm512_castpd_ps(_mm512_shuffle_f64x2::<0b11_10_11_10>(x, y));
            _mm512_add_ps(lo, hi)
        });
        // Level 2: r[q] = [v_{4q}, .., v_{4q+3}] (4 lanes each, one 128-bit block each).
        let r: [__m512; 4] = core::array::from_fn(|q| {
            let (x, y) = (_mm512_castps_pd(s[2 * q]), _mm512_castps_pd(s[2 * q + 1]));
            let lo = _mm512_castpd_ps(_mm512_shuffle_f64x2::<0b10_00_10_00>(x, y));
            let hi = _mm512_castpd_ps(_mm512_shuffle_f64x2::<0b11_01_11_01>(x, y));
            _mm512_add_ps(lo, hi)
        });
        // Level 3 (64-bit pairs): u[h] block b = [v_{8h+b} (2), v_{8h+4+b} (2)].
        let u: [__m512; 2] = core::array::from_fn(|h| {
            let (x, y) = (_mm512_castps_pd(r[2 * h]), _mm512_castps_pd(r[2 * h + 1]));
            let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
            _mm512_add_ps(lo, hi)
        });
        // Level 4 (lanes): block b = [v_b, v_{4+b}, v_{8+b}, v_{12+b}].
        let lo = _mm512_shuffle_ps::<0b10_00_10_00>(u[0], u[1]);
        let hi = _mm512_shuffle_ps::<0b11_01_11_01>(u[0], u[1]);
        let t = _mm512_add_ps(lo, hi);
        // SAFETY: same size, plain data.
        let t: [f32; 16] = unsafe { core::mem::transmute::<__m512, [f32; 16]>(t) };
        core::array::from_fn(|e| t[(e % 4) * 4 + e / 4])
    }
}

/// Row `i` (`k` contiguous elements) of a view with unit column stride.
#[inline(always)]
fn row<T>(data: &[T], rs: usize, i: usize, k: usize) -> &[T] {
    &data[i * rs..i * rs + k]
}

/// A row-major-like operand: rows of `k` contiguous elements, `rs` apart.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub rs: usize,
}

impl<'a, T> Rows<'a, T> {
    #[inline(always)]
    fn get(&self, i: usize, k: usize) -> &'a [T] {
        row(self.data, self.rs, i.min(self.rows - 1), k)
    }
}

/// A destination seen as `(i, j) -> data[i * rs + j * cs]`.
pub(crate) struct Out<'a, T> {
    pub data: &'a mut [T],
    pub rs: usize,
    pub cs: usize,
}

/// `dst = beta * dst + alpha * lhs rhs^T` over rows of `lhs` (m x k) and of `rhs` (n x k),
/// or with a bias `(c, b)` `dst = c b_j + alpha * (lhs rhs^T)_{ij}` (the bits of `beta = 1`
/// on a `dst` holding `c b_j`).
pub(crate) struct GemmNt<'a, T> {
    pub dst: Out<'a, T>,
    pub alpha: T,
    pub lhs: Rows<'a, T>,
    pub rhs: Rows<'a, T>,
    pub k: usize,
    pub beta: T,
    pub bias: Option<(T, &'a [T])>,
}

register_tiles!(
    GemmNt,
    [Elem + Add<Output = T> + Mul<Output = T>],
    gemm_nt_run,
    (MR_WIDE, NR_WIDE),
    (MR_NARROW, NR_NARROW)
);

#[inline(always)]
fn gemm_nt_run<
    T: Elem + Add<Output = T> + Mul<Output = T>,
    S: Simd,
    const MR: usize,
    const NR: usize,
>(
    s: S,
    op: GemmNt<'_, T>,
) {
    let GemmNt { dst, alpha, lhs, rhs, k, beta, bias } = op;
    let (m, n) = (lhs.rows, rhs.rows);
    let zero = T::default();
    let nb = block_rows::<T>(k, NR);
    let mut jb = 0;
    while jb < n {
        let je = n.min(jb + nb);
        for i0 in (0..m).step_by(MR) {
            let a: [&[T]; MR] = core::array::from_fn(|i| lhs.get(i0 + i, k));
            let h = MR.min(m - i0);
            for j0 in (jb..je).step_by(NR) {
                let b: [&[T]; NR] = core::array::from_fn(|j| rhs.get(j0 + j, k));
                let w = NR.min(je - j0);
                let r = dot_tile::<T, S, MR, NR>(s, a, b);
                for (i, ri) in r.iter().enumerate().take(h) {
                    let base = (i0 + i) * dst.rs + j0 * dst.cs;
                    for (j, &x) in ri.iter().enumerate().take(w) {
                        let d = &mut dst.data[base + j * dst.cs];
                        *d = match bias {
                            Some((c, b)) => c * b[j0 + j] + alpha * x,
                            None if beta == zero => alpha * x,
                            None => beta * *d + alpha * x,
                        };
                    }
                }
            }
        }
        jb = je;
    }
}
