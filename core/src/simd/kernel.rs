//! The pulp kernels behind [`super::gemm`], [`super::gram_hadamard`] and [`super::dot`].
//!
//! Both matrix kernels are BLIS-style: a register-blocked micro-kernel computes an `MR x NR`
//! tile of the output, `MR = MV * lanes` rows as `MV` vectors times `NR` broadcast columns (32
//! vector registers, e.g. AVX-512: 4 x 6 = 24 accumulators, 32 x 6 tiles in `f64`; 16
//! registers, AVX2 and scalar: 3 x 4 = 12; a last panel of at most 2 or 4 columns of [`gemm`]
//! runs 2- or 4-column tiles). Operands are packed into zero-padded panels in the caller's
//! scratch, except in [`gemm`] where a unit stride allows reading them in place: `lhs` columns
//! as vectors when its row stride is 1 (and `KC` of its columns span at most 512 KiB), `rhs`
//! scalars broadcast straight from its rows or columns when either stride is 1 (the row-major
//! operands of a training step or an NTK layer are never packed on that side). Vectors run
//! along the output's rows, so an output with unit row stride is read and written with whole
//! vector loads; a row-major output is handled by transposing the whole problem, except one with
//! few rows (`8 m <= n`) whose `rhs` is contiguous along K (for at most 64 rows of `f32` also a
//! row-major `rhs`): that one is computed as it stands into a column-major copy in scratch,
//! transposed back at the end (and in first when `beta != 0`), so only the small `lhs` is
//! packed and `rhs` (a layer's weights) is read in place.
//!
//! [`gram_hadamard`] with operands contiguous along K and a destination contiguous along its rows
//! (every layer term of the NTK) runs the outer-product tiles of [`super::gram_rows`] instead,
//! with the same bits; the packed kernel here serves every other layout.
//!
//! Determinism: every output entry is the same FMA chain `acc = fma(x_p, y_p, acc)` over the
//! inner index `p` in increasing order (for [`gemm`] restarted at every `KC` boundary, fixed per
//! type; for [`gram_hadamard`] one unbroken chain per Gram matrix), then combined with the
//! destination by the same vector operations, whatever the tile, its size (tail tiles use the
//! same code with fewer vectors or columns), whether an operand was packed or read in place,
//! the orientation (`fma` is commutative in its factors) or [`Part`]. So an entry does not
//! depend on where it sits, on the operands' layouts or on how the caller tiles the output.

use super::elem::{Elem, MAX_LANES};
use super::gram_rows;
use super::nt;
use super::transpose;
use super::{
    round_up, MatMut, MatRef, Part, MC, MC_GRAM, MV_NARROW, MV_WIDE, NC, NC_GRAM, NR_NARROW,
    NR_WIDE,
};
use pulp::{Simd, WithSimd};

/// Runs `op` with the best instruction set of this machine (once per call).
#[cfg(not(test))]
#[inline(always)]
fn dispatch<Op: WithSimd>(op: Op) -> Op::Output {
    pulp::Arch::new().dispatch(op)
}

#[cfg(test)]
std::thread_local! {
    /// Test hook: 0 = best instruction set, 1 = pulp's scalar fallback, 2 = x86-64-v3 (AVX2).
    pub(crate) static FORCE_LEVEL: core::cell::Cell<u8> = const { core::cell::Cell::new(0) };
}

/// Runs `op` with the instruction set chosen by [`FORCE_LEVEL`] (tests only).
#[cfg(test)]
fn dispatch<Op: WithSimd>(op: Op) -> Op::Output {
    match FORCE_LEVEL.with(|l| l.get()) {
        1 => op.with_simd(pulp::Scalar::new()),
        #[cfg(target_arch = "x86_64")]
        2 => match pulp::x86::V3::try_new() {
            Some(v3) => Simd::vectorize(v3, op),
            None => pulp::Arch::new().dispatch(op),
        },
        _ => pulp::Arch::new().dispatch(op),
    }
}

#[inline(always)]
fn transpose_mut<T>(m: MatMut<'_, T>) -> MatMut<'_, T> {
    MatMut { data: m.data, rows: m.cols, cols: m.rows, rs: m.cs, cs: m.rs }
}

/// Packs rows `r0..r0 + rows` and columns `p0..p0 + kc` of `src` into panels of `panel` rows:
/// panel `q` starts at `q * panel * kc` and holds `out[p * w + r] = src(r0 + q * panel + r,
/// p0 + p)` with its height `h` padded with zeros to `w = round_up(h, granule)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn pack<T: Elem, S: Simd>(
    s: S,
    out: &mut [T],
    src: MatRef<'_, T>,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    panel: usize,
    granule: usize,
) {
    let zero = T::default();
    let mut q0 = 0;
    while q0 < rows {
        let h = panel.min(rows - q0);
        let w = round_up(h, granule);
        let buf = &mut out[q0 * kc..q0 * kc + w * kc];
        let row0 = r0 + q0;
        if src.rs == 1 {
            for (p, chunk) in buf.chunks_exact_mut(w).enumerate() {
                let off = row0 + (p0 + p) * src.cs;
                chunk[..h].copy_from_slice(&src.data[off..off + h]);
            }
        } else if src.cs == 1 {
            // Rows contiguous along p: transposed in blocks (in registers where available).
            let data = &src.data[row0 * src.rs + p0..];
            transpose::copy(s, data, src.rs, buf, w, (h, kc));
        } else {
            for r in 0..h {
                let off = (row0 + r) * src.rs + p0 * src.cs;
                for (p, chunk) in buf.chunks_exact_mut(w).enumerate() {
                    chunk[r] = src.data[off + p * src.cs];
                }
            }
        }
        if h < w {
            for chunk in buf.chunks_exact_mut(w) {
                chunk[h..].fill(zero);
            }
        }
        q0 += panel;
    }
}

/// The operands of one micro-tile over `kc` steps along K: at step `p`, `MV` vectors of `a`
/// at `a[p * a_step..]` and the `NR` scalars `b[p * b_step + b_off[j]]`. Packed panels have
/// `a_step = MV * lanes`, `b_step = NR`, `b_off[j] = j`; unpacked operands their own strides.
#[derive(Clone, Copy)]
pub(super) struct Panels<'a, T, const NR: usize> {
    pub a: &'a [T],
    pub a_step: usize,
    pub b: &'a [T],
    pub b_step: usize,
    pub b_off: [usize; NR],
    pub kc: usize,
}

impl<'a, T, const NR: usize> Panels<'a, T, NR> {
    /// Packed `MV * lanes x kc` panel `a` and `kc x NR` panel `b` (`a_step = MV * lanes`).
    #[inline(always)]
    fn packed(a: &'a [T], a_step: usize, b: &'a [T], kc: usize) -> Self {
        Self { a, a_step, b, b_step: NR, b_off: core::array::from_fn(|j| j), kc }
    }
}

/// `acc + sum_p a_p b_p^T` over the operands `x`: one accumulator vector per (column, row
/// vector), one FMA chain per entry.
#[inline(always)]
pub(super) fn accumulate<T: Elem, S: Simd, const MV: usize, const NR: usize>(
    s: S,
    mut acc: [[T::V<S>; MV]; NR],
    x: &Panels<'_, T, NR>,
) -> [[T::V<S>; MV]; NR] {
    let l = T::lanes::<S>();
    let kc = x.kc;
    if kc == 0 {
        return acc;
    }
    let b_max = x.b_off.iter().fold(0, |m, &o| m.max(o));
    assert!(
        core::mem::size_of::<T::V<S>>() == l * core::mem::size_of::<T>()
            && x.a.len() >= (kc - 1) * x.a_step + MV * l
            && x.b.len() > (kc - 1) * x.b_step + b_max,
        "accumulate: operands"
    );
    let (pa, pb) = (x.a.as_ptr(), x.b.as_ptr());
    for p in 0..kc {
        // SAFETY: `T::V<S>` is `l` lanes of `T` (asserted), and every element read lies in
        // `x.a` (`p * a_step + MV * l <= a.len()`) or `x.b` (`p * b_step + b_off[j] <
        // b.len()`), asserted above for the largest `p`.
        let a: [T::V<S>; MV] = core::array::from_fn(|v| unsafe {
            pa.add(p * x.a_step + v * l).cast::<T::V<S>>().read_unaligned()
        });
        for (col, &off) in acc.iter_mut().zip(&x.b_off) {
            // SAFETY: see above.
            let bj = T::splat(s, unsafe { *pb.add(p * x.b_step + off) });
            for (c, &av) in col.iter_mut().zip(&a) {
                *c = T::mul_add(s, av, bj, *c);
            }
        }
    }
    acc
}

/// Loads `dst(i..i + h, j)` (`h <= lanes`) into a vector, zero-padded.
#[inline(always)]
fn load_col<T: Elem, S: Simd>(s: S, dst: &MatMut<'_, T>, i: usize, j: usize, h: usize) -> T::V<S> {
    let base = i * dst.rs + j * dst.cs;
    if dst.rs == 1 {
        T::partial_load(s, &dst.data[base..base + h])
    } else {
        let mut buf = [T::default(); MAX_LANES];
        for (r, x) in buf[..h].iter_mut().enumerate() {
            *x = dst.data[base + r * dst.rs];
        }
        T::partial_load(s, &buf[..h])
    }
}

/// Stores the first `h` lanes of `v` to `dst(i..i + h, j)`.
#[inline(always)]
fn store_col<T: Elem, S: Simd>(
    s: S,
    dst: &mut MatMut<'_, T>,
    i: usize,
    j: usize,
    h: usize,
    v: T::V<S>,
) {
    let base = i * dst.rs + j * dst.cs;
    if dst.rs == 1 {
        T::partial_store(s, &mut dst.data[base..base + h], v)
    } else {
        let mut buf = [T::default(); MAX_LANES];
        T::partial_store(s, &mut buf[..h], v);
        for (r, x) in buf[..h].iter().enumerate() {
            dst.data[base + r * dst.rs] = *x;
        }
    }
}

/// A bias `c b_t` added to every entry of a [`gemm`] output, `t` its column (`dst` seen as
/// in the call), or in the kernel's orientation its row (`rows`) or column.
#[derive(Clone, Copy)]
pub(crate) struct Bias<'a, T> {
    pub c: T,
    pub b: &'a [T],
    pub rows: bool,
}

/// How a finished tile `acc` meets the destination.
#[derive(Clone, Copy)]
enum Update<'a, T> {
    /// `d = alpha * acc` (first K block, `beta == 0`: `d` is not read).
    Overwrite,
    /// `d = beta * d + alpha * acc` (first K block).
    Scale(T),
    /// `d = c b + alpha * acc` (first K block; `d` is not read): the bits of `Scale(1)` on a
    /// `d` holding `c b`, as `fma(1, x, y) = x + y`.
    Bias(Bias<'a, T>),
    /// `d = d + alpha * acc` (later K blocks).
    Accumulate,
}

/// One `h x w` tile of [`gemm`] at `(i0, j0)` (`h <= MV * lanes`, `w <= NR`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_tile<T: Elem, S: Simd, const MV: usize, const NR: usize>(
    s: S,
    dst: &mut MatMut<'_, T>,
    i0: usize,
    j0: usize,
    h: usize,
    w: usize,
    x: &Panels<'_, T, NR>,
    alpha: T,
    update: Update<'_, T>,
) {
    let zero = [[T::splat(s, T::default()); MV]; NR];
    let acc = accumulate::<T, S, MV, NR>(s, zero, x);
    let l = T::lanes::<S>();
    let va = T::splat(s, alpha);
    // A bias's vectors `c b`, per row vector or per column, computed once per tile.
    let z = T::splat(s, T::default());
    let (mut bias_r, mut bias_c) = ([z; MV], [z; NR]);
    if let Update::Bias(Bias { c, b, rows }) = update {
        let vc = T::splat(s, c);
        if rows {
            for (v, x) in bias_r.iter_mut().enumerate().take(h.div_ceil(l)) {
                let r0 = v * l;
                *x = T::mul(s, vc, T::partial_load(s, &b[i0 + r0..i0 + r0 + l.min(h - r0)]));
            }
        } else {
            for (j, x) in bias_c.iter_mut().enumerate().take(w) {
                *x = T::mul(s, vc, T::splat(s, b[j0 + j]));
            }
        }
    }
    for (j, col) in acc.iter().enumerate().take(w) {
        for (v, &x) in col.iter().enumerate() {
            let r0 = v * l;
            if r0 >= h {
                break;
            }
            let hv = l.min(h - r0);
            let out = match update {
                Update::Overwrite => T::mul(s, va, x),
                Update::Scale(beta) => {
                    let old = load_col(s, dst, i0 + r0, j0 + j, hv);
                    T::mul_add(s, T::splat(s, beta), old, T::mul(s, va, x))
                }
                Update::Accumulate => {
                    let old = load_col(s, dst, i0 + r0, j0 + j, hv);
                    T::mul_add(s, va, x, old)
                }
                Update::Bias(Bias { rows, .. }) => {
                    T::add(s, if rows { bias_r[v] } else { bias_c[j] }, T::mul(s, va, x))
                }
            };
            store_col(s, dst, i0 + r0, j0 + j, hv, out);
        }
    }
}

/// Calls `$f::<T, S, mv, NR>(...)` with `mv = ceil(h / lanes)` in `1..=MV` (`MV <= 4`).
macro_rules! with_mv {
    ($f:ident, $T:ty, $S:ty, $MV:ident, $NR:ident, $mv:expr, ($($arg:expr),*)) => {
        match $mv {
            m if m == $MV => $f::<$T, $S, $MV, $NR>($($arg),*),
            1 => $f::<$T, $S, 1, $NR>($($arg),*),
            2 => $f::<$T, $S, 2, $NR>($($arg),*),
            3 => $f::<$T, $S, 3, $NR>($($arg),*),
            _ => $f::<$T, $S, 4, $NR>($($arg),*),
        }
    };
}

/// `dst = beta * dst + alpha * lhs * rhs` with `k >= 1`; see [`gemm`].
pub(crate) struct Gemm<'a, T> {
    dst: MatMut<'a, T>,
    alpha: T,
    lhs: MatRef<'a, T>,
    rhs: MatRef<'a, T>,
    beta: T,
    /// Replaces `beta * dst` when set.
    bias: Option<Bias<'a, T>>,
    scratch: &'a mut [T],
    /// A row-major destination that `dst` (column-major, in scratch) stands for: copied into
    /// `dst` first when `beta != 0` (and no bias), and `dst` copied back into it at the end.
    out: Option<MatMut<'a, T>>,
}

register_tiles!(Gemm, [Elem], gemm_run, (MV_WIDE, NR_WIDE), (MV_NARROW, NR_NARROW));

/// Rows `ic..ic + mc` and inner indices `pc..pc + kc` of [`gemm`]'s `lhs` as its tiles read
/// them: in place before row `ic + packed`, from the packed panels `pa` from there on.
#[derive(Clone, Copy)]
struct LhsBlock<'a, T> {
    lhs: MatRef<'a, T>,
    pa: &'a [T],
    ic: usize,
    mc: usize,
    packed: usize,
    pc: usize,
    kc: usize,
}

/// The tiles of one column panel `j0..j0 + w` (`w <= NRX`) of a block of [`gemm`]: column `j`
/// of the panel at `b[p * b_step + j * b_cs]` (past `w` the last column is repeated and its
/// results dropped).
#[inline(always)]
fn gemm_panel<T: Elem, S: Simd, const MV: usize, const NRX: usize>(
    s: S,
    dst: &mut MatMut<'_, T>,
    blk: LhsBlock<'_, T>,
    j0: usize,
    w: usize,
    (b, b_step, b_cs): (&[T], usize, usize),
    (alpha, update): (T, Update<'_, T>),
) {
    let l = T::lanes::<S>();
    let mr = MV * l;
    let b_off = core::array::from_fn(|j| j.min(w - 1) * b_cs);
    for ir in (0..blk.mc).step_by(mr) {
        let (i0, h) = (blk.ic + ir, mr.min(blk.mc - ir));
        let mv = h.div_ceil(l);
        let (a, a_step) = if ir < blk.packed {
            (&blk.lhs.data[i0 + blk.pc * blk.lhs.cs..], blk.lhs.cs)
        } else {
            (&blk.pa[(ir - blk.packed) * blk.kc..], mv * l)
        };
        let x = Panels { a, a_step, b, b_step, b_off, kc: blk.kc };
        with_mv!(gemm_tile, T, S, MV, NRX, mv, (s, dst, i0, j0, h, w, &x, alpha, update));
    }
}

/// Largest span (bytes) of `KC` columns of a unit-row-stride `lhs` that [`gemm`] reads in
/// place instead of packing (beyond it the columns spread over too many pages).
const DIRECT_A_MAX_BYTES: usize = 512 * 1024;

/// Blocked loop of [`gemm`]: for each `NC` block of columns and `KC` block of the inner
/// dimension, the `MR x NR` tiles of each `MC` block of rows. `rhs` with a unit stride is read
/// in place (scalars broadcast from its columns or rows), otherwise packed once per block;
/// `lhs` with unit row stride is read in place (columns as vectors) unless its columns are far
/// apart, otherwise packed per `MC` block (and a last tile with a partial vector always is).
/// With `rhs` read in place the columns are one block (`NC` only bounds a packed `rhs`).
#[inline(always)]
fn gemm_run<T: Elem, S: Simd, const MV: usize, const NR: usize>(s: S, op: Gemm<'_, T>) {
    let Gemm { mut dst, alpha, lhs, rhs, beta, bias, scratch, out } = op;
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if let Some(out) = &out {
        if beta != T::default() && bias.is_none() {
            transpose::copy(s, out.data, out.rs, dst.data, dst.cs, (m, n));
        }
    }
    let l = T::lanes::<S>();
    let mr = MV * l;
    debug_assert!(l <= MAX_LANES);
    let kc_max = k.min(T::KC);
    let direct_a = lhs.rs == 1 && lhs.cs * kc_max * core::mem::size_of::<T>() <= DIRECT_A_MAX_BYTES;
    let direct_b = rhs.rs == 1 || rhs.cs == 1;
    let nc_max = if direct_b { n } else { NC };
    let (pb, pa) =
        scratch.split_at_mut(if direct_b { 0 } else { round_up(n.min(NC), NR) * kc_max });
    let mut jc = 0;
    while jc < n {
        let nc = nc_max.min(n - jc);
        let mut pc = 0;
        while pc < k {
            let kc = T::KC.min(k - pc);
            let update = if pc > 0 {
                Update::Accumulate
            } else if let Some(bias) = bias {
                Update::Bias(bias)
            } else if beta == T::default() {
                Update::Overwrite
            } else {
                Update::Scale(beta)
            };
            if !direct_b {
                pack(s, pb, rhs.t(), jc, nc, pc, kc, NR, NR);
            }
            let mut ic = 0;
            while ic < m {
                let mc = MC.min(m - ic);
                // Rows from `packed` on are read from `pa`.
                let packed = match (direct_a, mc % l) {
                    (false, _) => 0,
                    (true, 0) => mc,
                    (true, _) => (mc - 1) / mr * mr,
                };
                if packed < mc {
                    pack(s, pa, lhs, ic + packed, mc - packed, pc, kc, mr, l);
                }
                let blk = LhsBlock { lhs, pa: &*pa, ic, mc, packed, pc, kc };
                for jr in (0..nc).step_by(NR) {
                    let (j0, w) = (jc + jr, NR.min(nc - jr));
                    let b = if direct_b {
                        (&rhs.data[pc * rhs.rs + j0 * rhs.cs..], rhs.rs, rhs.cs)
                    } else {
                        (&pb[jr * kc..(jr + NR) * kc], NR, 1)
                    };
                    let (d, up) = (&mut dst, (alpha, update));
                    // A last panel of at most 2 or 4 columns runs narrower tiles.
                    if w <= 2 && NR > 2 {
                        gemm_panel::<T, S, MV, 2>(s, d, blk, j0, w, b, up);
                    } else if w <= 4 && NR > 4 {
                        gemm_panel::<T, S, MV, 4>(s, d, blk, j0, w, b, up);
                    } else {
                        gemm_panel::<T, S, MV, NR>(s, d, blk, j0, w, b, up);
                    }
                }
                ic += MC;
            }
            pc += kc;
        }
        jc += nc_max;
    }
    if let Some(out) = out {
        transpose::copy(s, dst.data, dst.cs, out.data, out.rs, (n, m));
    }
}

/// Scalar part of [`gemm`] for `k == 0`: `dst = beta * dst` (zero when `beta == 0`), or
/// `c b_j` in column `j` with a bias `(c, b)`.
fn scale<T: Elem + core::ops::Mul<Output = T>>(
    dst: &mut MatMut<'_, T>,
    beta: T,
    bias: Option<(T, &[T])>,
) {
    for i in 0..dst.rows {
        for j in 0..dst.cols {
            let x = dst.at_mut(i, j);
            *x = match bias {
                Some((c, b)) => c * b[j],
                None if beta == T::default() => T::default(),
                None => beta * *x,
            };
        }
    }
}

/// See [`super::gemm`] and, with `bias` (`(c, b)`, `b` one value per column), in place of
/// `beta`, [`super::gemm_bias`]; shapes and scratch length already checked.
pub(crate) fn gemm<'a, T: Elem + core::ops::Add<Output = T> + core::ops::Mul<Output = T>>(
    mut dst: MatMut<'a, T>,
    alpha: T,
    lhs: MatRef<'a, T>,
    rhs: MatRef<'a, T>,
    beta: T,
    bias: Option<(T, &'a [T])>,
    scratch: &'a mut [T],
) {
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if lhs.cols == 0 {
        scale(&mut dst, beta, bias);
        return;
    }
    if lhs.cs == 1 && rhs.rs == 1 && nt::pays_gemm::<T>(lhs.cols) {
        // Both operands contiguous along K: dot-product tiles, no packing.
        let k = lhs.cols;
        let op = nt::GemmNt {
            dst: nt::Out { data: dst.data, rs: dst.rs, cs: dst.cs },
            alpha,
            lhs: nt::Rows { data: lhs.data, rows: lhs.rows, rs: lhs.rs },
            rhs: nt::Rows { data: rhs.data, rows: rhs.cols, rs: rhs.cs },
            k,
            beta,
            bias,
        };
        return dispatch(op);
    }
    let (m, n) = (dst.rows, dst.cols);
    // A row-major `rhs` broadcast in place (its `KC` rows far apart, on few cache sets) pays for
    // at most 64 rows of `f32`, one AVX-512 row tile (W4's backprop, 64 x 2048 x 2048: 49 -> 56
    // FLOP/cycle), not where several row tiles read those rows again: `f64` 64 x 2048 x 2048
    // 20 -> 18, `f32` 256 x 2048 x 128 195 -> 128 GFLOP/s.
    let f32_rows = rhs.cs == 1 && core::mem::size_of::<T>() == 4 && dst.rows <= 64;
    // The bias runs along the columns of `dst`: the kernel's rows when it computes `dst^T`.
    let bias_as = |rows| bias.map(|(c, b)| Bias { c, b, rows });
    let op = if dst.cs == 1 && dst.rs != 1 && (rhs.rs == 1 || f32_rows) && super::few_rows(m, n) {
        // Row-major output with few rows: vectors along the rows of a column-major copy, `rhs`
        // broadcast in place, only the small `lhs` packed.
        let (tmp, scratch) = scratch.split_at_mut(m * n);
        let tmp = MatMut { data: tmp, rows: m, cols: n, rs: 1, cs: m };
        Gemm { dst: tmp, alpha, lhs, rhs, beta, bias: bias_as(false), scratch, out: Some(dst) }
    } else if dst.cs == 1 && dst.rs != 1 {
        // Row-major output: vectors along its rows by computing dst^T = rhs^T lhs^T.
        let (lhs, rhs) = (rhs.t(), lhs.t());
        let dst = transpose_mut(dst);
        Gemm { dst, alpha, lhs, rhs, beta, bias: bias_as(true), scratch, out: None }
    } else {
        Gemm { dst, alpha, lhs, rhs, beta, bias: bias_as(false), scratch, out: None }
    };
    dispatch(op)
}

/// Which tiles [`gram_hadamard`] may skip (in kernel orientation).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Every tile.
    All,
    /// Tiles holding some entry with `j >= i`.
    Upper,
    /// Tiles holding some entry with `i >= j` (an upper part seen transposed).
    Lower,
}

/// `dst += (c * a1 a2^T + s) .* (d1 d2^T)`; see [`gram_hadamard`].
pub(crate) struct Gram<'a, T> {
    dst: MatMut<'a, T>,
    a1: MatRef<'a, T>,
    a2: MatRef<'a, T>,
    d1: MatRef<'a, T>,
    d2: MatRef<'a, T>,
    c: T,
    shift: T,
    keep: Keep,
    scratch: &'a mut [T],
}

register_tiles!(Gram, [Elem], gram_run, (MV_WIDE, NR_WIDE), (MV_NARROW, NR_NARROW));

/// Loads a tile of accumulators stored by [`store_tile`].
#[inline(always)]
fn load_tile<T: Elem, S: Simd, const MV: usize, const NR: usize>(buf: &[T]) -> [[T::V<S>; MV]; NR] {
    let l = T::lanes::<S>();
    let (v, _) = T::as_simd::<S>(&buf[..MV * NR * l]);
    let (v, _) = pulp::as_arrays::<MV, _>(v);
    core::array::from_fn(|j| v[j])
}

/// Stores a tile of accumulators (`NR * MV` vectors, column after column).
#[inline(always)]
fn store_tile<T: Elem, S: Simd, const MV: usize, const NR: usize>(
    buf: &mut [T],
    acc: &[[T::V<S>; MV]; NR],
) {
    let l = T::lanes::<S>();
    let (v, _) = T::as_mut_simd::<S>(&mut buf[..MV * NR * l]);
    for (out, x) in v.chunks_exact_mut(MV).zip(acc) {
        out.copy_from_slice(x);
    }
}

/// What one register pass of [`gram_tile`] does with its accumulators.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Park them in the tile's buffer (a Gram pass that is not the last one).
    Park,
    /// Last pass of `d1 d2^T`: `dst = fma(fma(c, ga, s), gd, dst)` with `ga` from its buffer.
    Finish,
}

/// One register pass of a [`gram_hadamard`] tile over `kc` inner elements: `acc` starts at zero
/// (`first`) or at the parked partial sums in `part`, runs the FMA chain, then is parked again
/// or, at the very end, combined with `ga` and added into `dst`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gram_tile<T: Elem, S: Simd, const MV: usize, const NR: usize>(
    s: S,
    dst: &mut MatMut<'_, T>,
    (i0, j0, h, w): (usize, usize, usize, usize),
    (a, b, kc): (&[T], &[T], usize),
    first: bool,
    pass: Pass,
    part: &mut [T],
    ga: &[T],
    (c, shift): (T, T),
) {
    let init =
        if first { [[T::splat(s, T::default()); MV]; NR] } else { load_tile::<T, S, MV, NR>(part) };
    let acc = accumulate::<T, S, MV, NR>(s, init, &Panels::packed(a, MV * T::lanes::<S>(), b, kc));
    if pass == Pass::Park {
        store_tile::<T, S, MV, NR>(part, &acc);
        return;
    }
    let ga = load_tile::<T, S, MV, NR>(ga);
    let l = T::lanes::<S>();
    let (vc, vs) = (T::splat(s, c), T::splat(s, shift));
    for (j, (ca, cd)) in ga.iter().zip(&acc).enumerate().take(w) {
        for (v, (&xa, &xd)) in ca.iter().zip(cd).enumerate() {
            let r0 = v * l;
            if r0 >= h {
                break;
            }
            let hv = l.min(h - r0);
            let old = load_col(s, dst, i0 + r0, j0 + j, hv);
            let out = T::mul_add(s, T::mul_add(s, vc, xa, vs), xd, old);
            store_col(s, dst, i0 + r0, j0 + j, hv, out);
        }
    }
}

/// Blocked loop of [`gram_hadamard`]: for each block of `NC_GRAM` rows of `a2`, `d2` (packed
/// over all of `ka`, `kd`) and each block of `MC_GRAM` rows of `a1`, `d1` (packed likewise), the
/// Gram tiles run in register passes of `KC` inner elements (first `a`, then `d`); between passes
/// a tile's accumulators are parked in a per-block buffer, so each entry is still one FMA chain
/// and the packed `KC`-slices stay in cache. The last `d` pass applies the Hadamard update.
#[inline(always)]
fn gram_run<T: Elem, S: Simd, const MV: usize, const NR: usize>(s: S, op: Gram<'_, T>) {
    let Gram { mut dst, a1, a2, d1, d2, c, shift, keep, scratch } = op;
    let (m, n, ka, kd) = (dst.rows, dst.cols, a1.cols, d1.cols);
    let l = T::lanes::<S>();
    let mr = MV * l;
    debug_assert!(l <= MAX_LANES);
    let nb = round_up(n.min(NC_GRAM), NR);
    let mb = round_up(m.min(MC_GRAM), l);
    let (pba, rest) = scratch.split_at_mut(nb * ka);
    let (pbd, rest) = rest.split_at_mut(nb * kd);
    let (paa, rest) = rest.split_at_mut(mb * ka);
    let (pad, rest) = rest.split_at_mut(mb * kd);
    let (buf_a, rest) = rest.split_at_mut(mb * nb);
    let buf_d = &mut rest[..mb * nb];
    let mut jc = 0;
    while jc < n {
        let nc = NC_GRAM.min(n - jc);
        let nbx = round_up(nc, NR);
        pack_chunks(s, pba, a2, jc, nc, ka, NR, NR, nbx);
        pack_chunks(s, pbd, d2, jc, nc, kd, NR, NR, nbx);
        let mut ic = 0;
        while ic < m {
            let mc = MC_GRAM.min(m - ic);
            let needed = match keep {
                Keep::All => true,
                Keep::Upper => jc + nc > ic,
                Keep::Lower => ic + mc > jc,
            };
            if !needed {
                ic += MC_GRAM;
                continue;
            }
            let mbx = round_up(mc, l);
            pack_chunks(s, paa, a1, ic, mc, ka, mr, l, mbx);
            pack_chunks(s, pad, d1, ic, mc, kd, mr, l, mbx);
            for (pa, pb, kk, is_d) in [(&*paa, &*pba, ka, false), (&*pad, &*pbd, kd, true)] {
                let mut p0 = 0;
                loop {
                    let kc = T::KC.min(kk - p0);
                    let last = p0 + kc == kk;
                    let pass = if is_d && last { Pass::Finish } else { Pass::Park };
                    let (pa, pb) = (&pa[p0 * mbx..], &pb[p0 * nbx..]);
                    for jr in (0..nc).step_by(NR) {
                        let (j0, w) = (jc + jr, NR.min(nc - jr));
                        let b = &pb[jr * kc..(jr + NR) * kc];
                        for ir in (0..mc).step_by(mr) {
                            let (i0, h) = (ic + ir, mr.min(mc - ir));
                            let skip = match keep {
                                Keep::All => false,
                                Keep::Upper => j0 + w <= i0,
                                Keep::Lower => i0 + h <= j0,
                            };
                            if skip {
                                continue;
                            }
                            let hp = round_up(h, l);
                            let a = &pa[ir * kc..(ir + hp) * kc];
                            let t = ir * nbx + jr * hp;
                            let (part, ga) = if is_d {
                                (&mut buf_d[t..t + NR * hp], &buf_a[t..t + NR * hp])
                            } else {
                                (&mut buf_a[t..t + NR * hp], &[][..])
                            };
                            let d = &mut dst;
                            with_mv!(
                                gram_tile,
                                T,
                                S,
                                MV,
                                NR,
                                hp / l,
                                (
                                    s,
                                    d,
                                    (i0, j0, h, w),
                                    (a, b, kc),
                                    p0 == 0,
                                    pass,
                                    part,
                                    ga,
                                    (c, shift)
                                )
                            );
                        }
                    }
                    p0 += kc;
                    if last {
                        break;
                    }
                }
            }
            ic += MC_GRAM;
        }
        jc += NC_GRAM;
    }
}

/// [`pack`] of rows `r0..r0 + rows`, all `k` columns, chunk by chunk of `T::KC` columns: chunk
/// `p0` starts at `p0 * padded` (`padded` = the rows rounded up as [`pack`] pads them), so the
/// panels of one register pass are contiguous.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack_chunks<T: Elem, S: Simd>(
    s: S,
    out: &mut [T],
    src: MatRef<'_, T>,
    r0: usize,
    rows: usize,
    k: usize,
    panel: usize,
    granule: usize,
    padded: usize,
) {
    let mut p0 = 0;
    while p0 < k {
        let kc = T::KC.min(k - p0);
        pack(s, &mut out[p0 * padded..], src, r0, rows, p0, kc, panel, granule);
        p0 += kc;
    }
}

/// See [`super::gram_hadamard`]; shapes and scratch length already checked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gram_hadamard<
    'a,
    T: Elem + core::ops::Add<Output = T> + core::ops::Mul<Output = T>,
>(
    dst: MatMut<'a, T>,
    a1: MatRef<'a, T>,
    a2: MatRef<'a, T>,
    d1: MatRef<'a, T>,
    d2: MatRef<'a, T>,
    c: T,
    shift: T,
    part: Part,
    scratch: &'a mut [T],
) {
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if a1.cs == 1 && a2.cs == 1 && d1.cs == 1 && d2.cs == 1 && dst.cs == 1 {
        // Every operand contiguous along K, `dst` along its rows (every NTK layer term):
        // outer-product tiles over K-major panels of `a2`, `d2`.
        let op = gram_rows::GramRows {
            dst: dst.data,
            rs: dst.rs,
            a1,
            a2,
            d1,
            d2,
            c,
            shift,
            upper: part == Part::Upper,
            scratch,
        };
        return dispatch(op);
    }
    let op = if dst.cs == 1 && dst.rs != 1 {
        // Row-major output: dst^T += (c a2 a1^T + s) .* (d2 d1^T), vectors along its rows.
        let keep = if part == Part::Upper { Keep::Lower } else { Keep::All };
        let dst = transpose_mut(dst);
        Gram { dst, a1: a2, a2: a1, d1: d2, d2: d1, c, shift, keep, scratch }
    } else {
        let keep = if part == Part::Upper { Keep::Upper } else { Keep::All };
        Gram { dst, a1, a2, d1, d2, c, shift, keep, scratch }
    };
    dispatch(op)
}

/// `sum_i a_i b_i` with four vector accumulators.
pub(crate) struct Dot<'a, T> {
    a: &'a [T],
    b: &'a [T],
}

impl<T: Elem> WithSimd for Dot<'_, T> {
    type Output = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> T {
        let (av, at) = T::as_simd::<S>(self.a);
        let (bv, bt) = T::as_simd::<S>(self.b);
        let (a4, a1) = pulp::as_arrays::<4, _>(av);
        let (b4, b1) = pulp::as_arrays::<4, _>(bv);
        let zero = T::splat(s, T::default());
        let mut acc = [zero; 4];
        for (x, y) in a4.iter().zip(b4) {
            for i in 0..4 {
                acc[i] = T::mul_add(s, x[i], y[i], acc[i]);
            }
        }
        for (i, (&x, &y)) in a1.iter().zip(b1).enumerate() {
            acc[i] = T::mul_add(s, x, y, acc[i]);
        }
        let (x, y) = (T::partial_load(s, at), T::partial_load(s, bt));
        acc[3] = T::mul_add(s, x, y, acc[3]);
        let sum = T::add(s, T::add(s, acc[0], acc[1]), T::add(s, acc[2], acc[3]));
        T::reduce_sum(s, sum)
    }
}

/// See [`super::dot`]; lengths already checked.
pub(crate) fn dot<T: Elem>(a: &[T], b: &[T]) -> T {
    dispatch(Dot { a, b })
}
