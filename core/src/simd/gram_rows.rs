//! The Gram–Hadamard kernel for operands whose rows are contiguous along K (every layer term
//! of the NTK): `dst += (c a1 a2^T + shift) .* (d1 d2^T)` by outer products, so no entry needs
//! a horizontal reduction.
//!
//! For each block of `NB = NV * lanes` columns (rows of `a2`, `d2`), the block's rows are
//! transposed into a K-major panel in scratch (at most [`PANEL_BYTES`]; longer K in chunks).
//! Tiles of `MR` rows of `a1` (scalars broadcast straight from their rows) times `NV` panel
//! vectors then hold `MR x NV` vector accumulators: entries of `dst` along its rows, so the
//! Hadamard update reads and writes whole vectors of `dst`'s rows. A tile's A-Gram (and any
//! unfinished chunk) is parked in scratch until the D-Gram of the same tile finishes. With
//! `upper`, a tile starts at the vector holding its first diagonal entry, and a block's rows
//! below its last column are skipped.
//!
//! Determinism: each Gram entry is the FMA chain `g = fma(x2[j, p], x1[i, p], g)` over `p`
//! increasing from `g = 0`, unbroken across chunks (parked in memory), and then `dst =
//! fma(fma(c, ga, shift), gd, dst)`: the bits of the packed kernel (`fma` is commutative in
//! its factors), whatever the tile, block, chunk or row band an entry falls in.

use super::elem::{Elem, MAX_LANES};
use super::kernel::{accumulate, pack, Panels};
use super::MatRef;
use pulp::{Simd, WithSimd};

/// Bytes of the K-major panel of one column block (kept in L2 while the row tiles sweep it).
const PANEL_BYTES: usize = 192 * 1024;

/// Rows of `a1`, `d1` per row block (bounds the parked partial Gram tiles).
const MCB: usize = 512;

/// Panel vectors per tile (columns `NV * lanes`).
const NV: usize = 3;

/// Rows per tile with 32 vector registers (8 x 3 accumulators + 3 + 1 operands), and with 16.
const MR_WIDE: usize = 8;
const MR_NARROW: usize = 4;

/// Scratch elements (`f32` or `f64`, any instruction set) of [`GramRows`] for `m` rows of
/// `a1`, `d1` and inner dimensions `ka`, `kd`: one panel and two parked tile blocks.
pub(crate) const fn scratch(m: usize, ka: usize, kd: usize) -> usize {
    let nb = NV * MAX_LANES;
    let k = if ka > kd { ka } else { kd };
    let panel = k * nb;
    let panel_max = PANEL_BYTES / 4;
    let rows = if m < MCB { m } else { MCB };
    (if panel < panel_max { panel } else { panel_max }) + 2 * rows * nb
}

/// `dst += (c a1 a2^T + shift) .* (d1 d2^T)`, `dst` row-major (`m x n`, rows `rs` apart);
/// with `upper`, only entries with `j >= i` need to be right.
pub(crate) struct GramRows<'a, T> {
    pub dst: &'a mut [T],
    pub rs: usize,
    pub a1: MatRef<'a, T>,
    pub a2: MatRef<'a, T>,
    pub d1: MatRef<'a, T>,
    pub d2: MatRef<'a, T>,
    pub c: T,
    pub shift: T,
    pub upper: bool,
    pub scratch: &'a mut [T],
}

impl<T: Elem> WithSimd for GramRows<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        if S::REGISTER_COUNT >= 32 {
            run::<T, S, MR_WIDE>(s, self)
        } else {
            run::<T, S, MR_NARROW>(s, self)
        }
    }
}

/// What a tile does with its accumulators after a chunk.
struct Finish<'a, T> {
    /// `dst` from the tile's first entry on (rows `rs` apart), `w` valid columns.
    dst: &'a mut [T],
    rs: usize,
    w: usize,
    /// The tile's parked A-Gram (rows `nb` apart).
    ga: &'a [T],
    c: T,
    shift: T,
}

/// One tile over one chunk: `acc` starts at zero (`first`) or at the parked sums in `park`
/// (rows `nb` apart), runs the FMA chains over `x`, and is parked again or, with `finish`,
/// combined into `dst`. Only the first `h` rows are read or written.
#[inline(always)]
fn tile<T: Elem, S: Simd, const MR: usize, const MV: usize>(
    s: S,
    x: &Panels<'_, T, MR>,
    h: usize,
    first: bool,
    (park, nb): (&mut [T], usize),
    finish: Option<Finish<'_, T>>,
) {
    let l = T::lanes::<S>();
    let zero = T::splat(s, T::default());
    let mut acc = [[zero; MV]; MR];
    if !first {
        for (r, row) in acc.iter_mut().enumerate().take(h) {
            for (v, a) in row.iter_mut().enumerate() {
                *a = load::<T, S>(s, &park[r * nb + v * l..], l);
            }
        }
    }
    let acc = accumulate::<T, S, MV, MR>(s, acc, x);
    let Some(f) = finish else {
        for (r, row) in acc.iter().enumerate().take(h) {
            for (v, &a) in row.iter().enumerate() {
                store::<T, S>(s, &mut park[r * nb + v * l..], l, a);
            }
        }
        return;
    };
    let (vc, vs) = (T::splat(s, f.c), T::splat(s, f.shift));
    for (r, row) in acc.iter().enumerate().take(h) {
        for (v, &gd) in row.iter().enumerate() {
            let col = v * l;
            if col >= f.w {
                break;
            }
            let hv = l.min(f.w - col);
            let (o, g) = (r * f.rs + col, r * nb + col);
            let ga = load::<T, S>(s, &f.ga[g..], hv);
            let old = load::<T, S>(s, &f.dst[o..], hv);
            let new = T::mul_add(s, T::mul_add(s, vc, ga, vs), gd, old);
            store::<T, S>(s, &mut f.dst[o..], hv, new);
        }
    }
}

/// The first `h <= lanes` elements of `x` as a vector, zero-padded (a plain load when whole).
#[inline(always)]
fn load<T: Elem, S: Simd>(s: S, x: &[T], h: usize) -> T::V<S> {
    if h == T::lanes::<S>() {
        T::as_simd::<S>(&x[..h]).0[0]
    } else {
        T::partial_load(s, &x[..h])
    }
}

/// Stores the first `h <= lanes` lanes of `v` to `x` (a plain store when whole).
#[inline(always)]
fn store<T: Elem, S: Simd>(s: S, x: &mut [T], h: usize, v: T::V<S>) {
    if h == T::lanes::<S>() {
        T::as_mut_simd::<S>(&mut x[..h]).0[0] = v;
    } else {
        T::partial_store(s, &mut x[..h], v)
    }
}

/// Row blocks of `MCB` rows, column blocks of `NV * lanes` columns; per block the A-Gram of
/// every tile (parked), then the D-Gram finishing into `dst`.
#[inline(always)]
fn run<T: Elem, S: Simd, const MR: usize>(s: S, op: GramRows<'_, T>) {
    let GramRows { dst, rs, a1, a2, d1, d2, c, shift, upper, scratch } = op;
    let (m, n, ka, kd) = (a1.rows, a2.rows, a1.cols, d1.cols);
    let l = T::lanes::<S>();
    let nb = NV * l;
    let kc_max = (PANEL_BYTES / core::mem::size_of::<T>() / nb).max(1);
    let (panel, rest) = scratch.split_at_mut(kc_max.min(ka.max(kd)) * nb);
    let (park_a, rest) = rest.split_at_mut(m.min(MCB) * nb);
    let park_d = &mut rest[..m.min(MCB) * nb];
    for ic in (0..m).step_by(MCB) {
        let mc = MCB.min(m - ic);
        for jb in (0..n).step_by(nb) {
            let je = n.min(jb + nb);
            // Rows of the block with an entry to compute (with `upper`, those above `je`).
            let rows = if upper { mc.min(je.saturating_sub(ic)) } else { mc };
            if rows == 0 {
                continue;
            }
            for (is_d, x1, x2, k) in [(false, a1, a2, ka), (true, d1, d2, kd)] {
                let mut p0 = 0;
                loop {
                    let kc = kc_max.min(k - p0);
                    let last = p0 + kc == k;
                    if kc > 0 {
                        // panel[p * nb + j] = x2[jb + j, p0 + p], zero past the block.
                        pack(s, panel, x2, jb, je - jb, p0, kc, nb, nb);
                    }
                    for i0 in (0..rows).step_by(MR) {
                        let (i, h) = (ic + i0, MR.min(rows - i0));
                        // First column: the block's, or the vector holding entry (i, i).
                        let j0 = if upper { jb.max(i / l * l) } else { jb };
                        let off = (j0 - jb, i0 * nb + j0 - jb);
                        let x = Panels {
                            a: if kc == 0 { &[] } else { &panel[off.0..] },
                            a_step: nb,
                            b: if kc == 0 { &[] } else { &x1.data[i * x1.rs + p0..] },
                            b_step: 1,
                            b_off: core::array::from_fn(|r| r.min(h - 1) * x1.rs),
                            kc,
                        };
                        let (park, ga) = if is_d {
                            (&mut park_d[off.1..], Some(&park_a[off.1..]))
                        } else {
                            (&mut park_a[off.1..], None)
                        };
                        let finish = ga.filter(|_| last).map(|ga| Finish {
                            dst: &mut dst[i * rs + j0..],
                            rs,
                            w: je - j0,
                            ga,
                            c,
                            shift,
                        });
                        let t = (park, nb);
                        match (je - j0).div_ceil(l) {
                            1 => tile::<T, S, MR, 1>(s, &x, h, p0 == 0, t, finish),
                            2 => tile::<T, S, MR, 2>(s, &x, h, p0 == 0, t, finish),
                            _ => tile::<T, S, MR, NV>(s, &x, h, p0 == 0, t, finish),
                        }
                    }
                    p0 += kc;
                    if last {
                        break;
                    }
                }
            }
        }
    }
}
