//! SIMD kernels against their scalar twins.
//!
//! Tolerances (one table, [`tol`]): entrywise, `|simd - scalar| <= TOL * bound`, where
//! `bound` is the same expression evaluated on absolute values (`|alpha| |lhs| |rhs| +
//! |beta| |dst|`, and likewise for the Gram–Hadamard update); TOL is 1e-12 for `f64` and
//! 1e-5 for `f32`. Elements of a backing slice outside a view must stay bit-identical.
//! Random values are `crate::rng::normal`; the seed comes from `NTK_TEST_SEED` (default
//! below) and is printed in every failure message.

use super::*;
use crate::rng;
use std::format;
use std::vec;
use std::vec::Vec;

/// Relative tolerance of a kernel against its scalar twin (see the module docs).
fn tol<T: Real>() -> f64 {
    if T::BYTES == 8 {
        1e-12
    } else {
        1e-5
    }
}

fn seed() -> u64 {
    std::env::var("NTK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed)
}

/// Value outside every view, to check the kernels do not write there.
const SENTINEL: f64 = 1234.5;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// `rs = cols, cs = 1`.
    RowMajor,
    /// `rs = 1, cs = rows`.
    ColMajor,
    /// A row-major `cols x rows` matrix seen through `.t()`.
    Transposed,
    /// `rs = 2 cols + 3, cs = 2` (holes between elements).
    Strided,
    /// `rs = 3, cs = 3 rows + 1`.
    StridedCol,
}

const LAYOUTS: [Layout; 5] =
    [Layout::RowMajor, Layout::ColMajor, Layout::Transposed, Layout::Strided, Layout::StridedCol];

/// A strided matrix stored at offset `off` of its own buffer (misaligned when `off` is odd).
struct Mat<T> {
    buf: Vec<T>,
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<T: Real> Mat<T> {
    fn new(layout: Layout, rows: usize, cols: usize, off: usize, seed: u64, stream: u64) -> Self {
        let (rs, cs) = match layout {
            Layout::RowMajor => (cols, 1),
            Layout::ColMajor | Layout::Transposed => (1, rows),
            Layout::Strided => (2 * cols + 3, 2),
            Layout::StridedCol => (3, 3 * rows + 1),
        };
        let len = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 };
        let mut m =
            Mat { buf: vec![T::from_f64(SENTINEL); off + len + 2], off, rows, cols, rs, cs };
        for i in 0..rows {
            for j in 0..cols {
                let x = rng::normal(seed, stream, (i * cols + j) as u64);
                m.buf[off + i * rs + j * cs] = T::from_f64(x);
            }
        }
        m
    }

    fn view(&self) -> MatRef<'_, T> {
        MatRef::strided(&self.buf[self.off..], self.rows, self.cols, self.rs, self.cs)
    }

    /// Through `.t()` for [`Layout::Transposed`] views (same strides, other constructor).
    fn view_as(&self, layout: Layout) -> MatRef<'_, T> {
        if layout == Layout::Transposed {
            MatRef::row_major(&self.buf[self.off..], self.cols, self.rows).t()
        } else {
            self.view()
        }
    }

    fn view_mut(&mut self) -> MatMut<'_, T> {
        MatMut::strided(&mut self.buf[self.off..], self.rows, self.cols, self.rs, self.cs)
    }

    fn at(&self, i: usize, j: usize) -> T {
        self.buf[self.off + i * self.rs + j * self.cs]
    }

    fn abs(&self) -> Self {
        Mat { buf: self.buf.iter().map(|x| x.abs()).collect(), ..*self }
    }

    fn fill(&mut self, x: T) {
        for i in 0..self.rows {
            for j in 0..self.cols {
                self.buf[self.off + i * self.rs + j * self.cs] = x;
            }
        }
    }
}

impl<T: Copy> Mat<T> {
    /// `true` at the buffer positions of the view.
    fn mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.buf.len()];
        for i in 0..self.rows {
            for j in 0..self.cols {
                mask[self.off + i * self.rs + j * self.cs] = true;
            }
        }
        mask
    }
}

/// `got` against `want` entrywise within `tol * bound`; entries outside the view unchanged
/// (`orig` is the buffer before the call); only entries with `keep(i, j)` are compared.
fn check<T: Real>(
    what: &str,
    got: &Mat<T>,
    want: &Mat<T>,
    bound: &Mat<T>,
    orig: &[T],
    keep: impl Fn(usize, usize) -> bool,
) {
    let tol = tol::<T>();
    for i in 0..got.rows {
        for j in 0..got.cols {
            if !keep(i, j) {
                continue;
            }
            let (g, w, b) =
                (got.at(i, j).to_f64(), want.at(i, j).to_f64(), bound.at(i, j).to_f64());
            assert!(
                (g - w).abs() <= tol * b + f64::MIN_POSITIVE,
                "{what} seed {}: ({i}, {j}) got {g} want {w} bound {b}",
                seed()
            );
        }
    }
    for ((x, y), inside) in got.buf.iter().zip(orig).zip(got.mask()) {
        if !inside {
            assert!(x.to_f64().to_bits() == y.to_f64().to_bits(), "{what}: wrote outside view");
        }
    }
}

/// Odd sizes 1..67, plus 0 and a few even ones around the micro-tile sizes.
fn sizes() -> Vec<usize> {
    let mut v: Vec<usize> = (1..67).step_by(2).collect();
    v.extend([0, 2, 8, 16, 24, 48, 64, 66]);
    v
}

/// Deterministic pick of `count` entries of `from`, varying with `salt`.
fn pick(from: &[usize], salt: usize, count: usize) -> Vec<usize> {
    (0..count).map(|t| from[(salt * 7919 + t * 104_729 + salt * t * 31) % from.len()]).collect()
}

#[allow(clippy::too_many_arguments)]
fn gemm_case<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    layouts: [Layout; 3],
    alpha: f64,
    beta: f64,
    nan_dst: bool,
    case: u64,
) {
    let s = seed();
    let off = (case % 2) as usize;
    let lhs = Mat::<T>::new(layouts[0], m, k, off, s, 3 * case);
    let rhs = Mat::<T>::new(layouts[1], k, n, 1 - off, s, 3 * case + 1);
    let mut dst = Mat::<T>::new(layouts[2], m, n, 1, s, 3 * case + 2);
    if nan_dst {
        dst.fill(T::from_f64(f64::NAN));
    }
    let (alpha, beta) = (T::from_f64(alpha), T::from_f64(beta));
    let orig = dst.buf.clone();
    let mut want = Mat { buf: dst.buf.clone(), ..dst };
    scalar::gemm(want.view_mut(), alpha, lhs.view(), rhs.view(), beta);
    let mut bound = dst.abs();
    if beta == T::ZERO {
        bound.fill(T::ZERO);
    }
    scalar::gemm(bound.view_mut(), alpha.abs(), lhs.abs().view(), rhs.abs().view(), beta.abs());
    let mut scratch = vec![T::from_f64(f64::NAN); gemm_scratch(m, n, k)];
    gemm(
        dst.view_mut(),
        alpha,
        lhs.view_as(layouts[0]),
        rhs.view_as(layouts[1]),
        beta,
        &mut scratch,
    )
    .unwrap();
    let what = format!("gemm<{}> {m}x{n}x{k} {layouts:?} alpha {alpha} beta {beta}", T::NAME);
    check(&what, &dst, &want, &bound, &orig, |_, _| true);
}

fn gemm_vs_scalar<T: Real>() {
    let sz = sizes();
    let mut case = 0u64;
    for (a, &m) in sz.iter().enumerate() {
        for (b, &n) in sz.iter().enumerate() {
            for k in pick(&sz, a * 41 + b, 2) {
                let layouts = [
                    LAYOUTS[(a + b) % 5],
                    LAYOUTS[(a + 2 * b + k) % 5],
                    LAYOUTS[(2 * a + b + 1) % 5],
                ];
                let (alpha, beta, nan) = match case % 4 {
                    0 => (1.0, 0.0, true),
                    1 => (-0.75, 1.0, false),
                    2 => (1.5, -0.5, false),
                    _ => (0.5, 0.0, false),
                };
                gemm_case::<T>(m, n, k, layouts, alpha, beta, nan, case);
                case += 1;
            }
        }
    }
    // K blocking (several KC blocks), MC and NC tails.
    for (i, &(m, n, k)) in
        [(200, 37, 600), (37, 201, 1100), (5, 1030, 3), (1030, 3, 5)].iter().enumerate()
    {
        for (l, &layout) in LAYOUTS.iter().enumerate() {
            let layouts = [layout, LAYOUTS[(l + 1) % 5], LAYOUTS[(l + 2 + i) % 5]];
            gemm_case::<T>(
                m,
                n,
                k,
                layouts,
                0.5,
                if l.is_multiple_of(2) { 0.0 } else { 2.0 },
                l == 0,
                1000,
            );
        }
    }
}

#[test]
fn gemm_matches_scalar_f64() {
    gemm_vs_scalar::<f64>();
}

#[test]
fn gemm_matches_scalar_f32() {
    gemm_vs_scalar::<f32>();
}

/// Runs `f` with dispatch forced to pulp's scalar fallback (the code path of `no_std` targets
/// without SIMD, 3 x 4 micro-tiles of one lane) and to AVX2 (16 registers, 3 x 4 vectors).
fn at_lower_levels(f: impl Fn()) {
    for level in [1, 2] {
        kernel::FORCE_LEVEL.with(|l| l.set(level));
        f();
    }
    kernel::FORCE_LEVEL.with(|l| l.set(0));
}

#[test]
fn gemm_matches_scalar_at_lower_levels() {
    at_lower_levels(|| {
        gemm_vs_scalar::<f64>();
        gemm_vs_scalar::<f32>();
    });
}

#[test]
fn gram_hadamard_matches_scalar_at_lower_levels() {
    at_lower_levels(|| {
        gram_vs_scalar::<f64>();
        gram_vs_scalar::<f32>();
    });
}

#[test]
fn dot_matches_scalar_at_lower_levels() {
    at_lower_levels(|| {
        dot_vs_scalar::<f64>();
        dot_vs_scalar::<f32>();
    });
}

#[allow(clippy::too_many_arguments)]
fn gram_case<T: Real>(
    m: usize,
    n: usize,
    ka: usize,
    kd: usize,
    layouts: [Layout; 3],
    c: f64,
    shift: f64,
    part: Part,
    case: u64,
) {
    let s = seed();
    let off = (case % 2) as usize;
    let sym = part == Part::Upper;
    let n = if sym { m } else { n };
    let a1 = Mat::<T>::new(layouts[0], m, ka, off, s, 5 * case);
    let d1 = Mat::<T>::new(layouts[1], m, kd, 1 - off, s, 5 * case + 1);
    let a2 = if sym {
        Mat { buf: a1.buf.clone(), ..a1 }
    } else {
        Mat::new(layouts[1], n, ka, 1, s, 5 * case + 2)
    };
    let d2 = if sym {
        Mat { buf: d1.buf.clone(), ..d1 }
    } else {
        Mat::new(layouts[0], n, kd, 0, s, 5 * case + 3)
    };
    let mut dst = Mat::<T>::new(layouts[2], m, n, 1, s, 5 * case + 4);
    let (c, shift) = (T::from_f64(c), T::from_f64(shift));
    let orig = dst.buf.clone();
    let mut want = Mat { buf: dst.buf.clone(), ..dst };
    let (a1v, a2v, d1v, d2v) = (a1.view(), a2.view(), d1.view(), d2.view());
    scalar::gram_hadamard(want.view_mut(), a1v, a2v, d1v, d2v, c, shift, part);
    let mut bound = dst.abs();
    let (a1a, a2a, d1a, d2a) = (a1.abs(), a2.abs(), d1.abs(), d2.abs());
    let (c_abs, s_abs) = (c.abs(), shift.abs());
    let abs_views = (a1a.view(), a2a.view(), d1a.view(), d2a.view());
    scalar::gram_hadamard(
        bound.view_mut(),
        abs_views.0,
        abs_views.1,
        abs_views.2,
        abs_views.3,
        c_abs,
        s_abs,
        part,
    );
    let mut scratch = vec![T::from_f64(f64::NAN); gram_hadamard_scratch(m, n, ka, kd)];
    gram_hadamard(
        dst.view_mut(),
        a1.view_as(layouts[0]),
        a2.view_as(if sym { layouts[0] } else { layouts[1] }),
        d1.view_as(layouts[1]),
        d2.view_as(if sym { layouts[1] } else { layouts[0] }),
        c,
        shift,
        part,
        &mut scratch,
    )
    .unwrap();
    let what = format!("gram_hadamard<{}> {m}x{n} ka {ka} kd {kd} {layouts:?} {part:?}", T::NAME);
    if sym {
        // Below the diagonal the kernel may leave the destination as it was.
        check(&what, &dst, &want, &bound, &orig, |i, j| j >= i);
    } else {
        check(&what, &dst, &want, &bound, &orig, |_, _| true);
    }
}

fn gram_vs_scalar<T: Real>() {
    let sz = sizes();
    let mut case = 0u64;
    for (a, &m) in sz.iter().enumerate() {
        for (b, &n) in sz.iter().enumerate() {
            let ks = pick(&sz, a * 13 + b * 5, 2);
            let layouts =
                [LAYOUTS[(a + b) % 5], LAYOUTS[(a + 3 * b + 1) % 5], LAYOUTS[(2 * a + b) % 5]];
            let part = if b.is_multiple_of(3) { Part::Upper } else { Part::Full };
            if part == Part::Upper && b % 2 == 1 {
                // Upper only needs a square: cover it once per m.
                continue;
            }
            let (c, shift) = if case.is_multiple_of(2) { (0.5, 1.0) } else { (-2.0, 0.0) };
            gram_case::<T>(m, n, ks[0], ks[1], layouts, c, shift, part, case);
            case += 1;
        }
    }
    // Long inner dimensions and NC_GRAM tails.
    for (l, &layout) in LAYOUTS.iter().enumerate() {
        let layouts = [layout, LAYOUTS[(l + 1) % 5], LAYOUTS[(l + 3) % 5]];
        gram_case::<T>(61, 300, 700, 33, layouts, 0.25, 1.0, Part::Full, 2000 + l as u64);
        gram_case::<T>(270, 270, 9, 130, layouts, 0.25, 1.0, Part::Upper, 3000 + l as u64);
        gram_case::<T>(7, 520, 5, 3, layouts, -1.0, 0.5, Part::Full, 4000 + l as u64);
        gram_case::<T>(520, 6, 0, 3, layouts, -1.0, 0.5, Part::Full, 5000 + l as u64);
    }
}

#[test]
fn gram_hadamard_matches_scalar_f64() {
    gram_vs_scalar::<f64>();
}

#[test]
fn gram_hadamard_matches_scalar_f32() {
    gram_vs_scalar::<f32>();
}

fn dot_vs_scalar<T: Real>() {
    let s = seed();
    for len in (0..67).chain([255, 256, 257, 1000]) {
        for off in 0..2 {
            let a: Vec<T> =
                (0..len + 1).map(|i| T::from_f64(rng::normal(s, 7, i as u64))).collect();
            let b: Vec<T> =
                (0..len + 1).map(|i| T::from_f64(rng::normal(s, 8, i as u64))).collect();
            let (a, b) = (&a[off..off + len], &b[1 - off..1 - off + len]);
            let got = dot(a, b).to_f64();
            let want = scalar::dot(a, b).to_f64();
            let bound: f64 = a.iter().zip(b).map(|(x, y)| (x.to_f64() * y.to_f64()).abs()).sum();
            assert!(
                (got - want).abs() <= tol::<T>() * bound + f64::MIN_POSITIVE,
                "dot<{}> len {len} seed {s}: got {got} want {want}",
                T::NAME
            );
        }
    }
}

#[test]
fn dot_matches_scalar() {
    dot_vs_scalar::<f64>();
    dot_vs_scalar::<f32>();
}

fn bits<T: Real>(x: T) -> u64 {
    x.to_f64().to_bits()
}

/// A sub-block of the product, computed on its own (other layout, other scratch), equals the
/// same entries of the full product bit for bit.
fn gemm_deterministic<T: Real>() {
    let s = seed();
    let (m, n, k) = (100, 90, 1100);
    let lhs = Mat::<T>::new(Layout::RowMajor, m, k, 0, s, 20);
    let rhs = Mat::<T>::new(Layout::Strided, k, n, 1, s, 21);
    for beta in [0.0, 0.5] {
        let beta = T::from_f64(beta);
        let mut full = Mat::<T>::new(Layout::RowMajor, m, n, 0, s, 22);
        let init = Mat { buf: full.buf.clone(), ..full };
        let mut scratch = vec![T::ZERO; gemm_scratch(m, n, k)];
        let alpha = T::from_f64(0.75);
        gemm(full.view_mut(), alpha, lhs.view(), rhs.view(), beta, &mut scratch).unwrap();
        for (layout, (i0, rows), (j0, cols)) in [
            (Layout::ColMajor, (13, 37), (29, 41)),
            (Layout::RowMajor, (1, 1), (0, 90)),
            (Layout::Strided, (99, 1), (89, 1)),
            (Layout::StridedCol, (50, 50), (3, 5)),
        ] {
            let mut sub = Mat::<T>::new(layout, rows, cols, 1, s, 0);
            for i in 0..rows {
                for j in 0..cols {
                    sub.buf[1 + i * sub.rs + j * sub.cs] = init.at(i0 + i, j0 + j);
                }
            }
            let l = lhs.view().rows(i0, rows);
            let r = MatRef::strided(&rhs.buf[1 + j0 * rhs.cs..], k, cols, rhs.rs, rhs.cs);
            let mut scratch = vec![T::ZERO; gemm_scratch(rows, cols, k)];
            gemm(sub.view_mut(), alpha, l, r, beta, &mut scratch).unwrap();
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        bits(sub.at(i, j)),
                        bits(full.at(i0 + i, j0 + j)),
                        "gemm<{}> block ({i0}, {j0}) {layout:?} entry ({i}, {j})",
                        T::NAME
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_is_tile_independent() {
    gemm_deterministic::<f64>();
    gemm_deterministic::<f32>();
}

/// Whatever the layouts, so whether an operand is packed or read in place (`lhs` columns as
/// vectors, `rhs` columns or rows broadcast, the last partial vector of rows packed, the
/// columns past an edge repeated) and whichever orientation a row-major `dst` makes (the whole
/// problem transposed, or few rows computed along the rows), every entry has the same bits. K is beyond the NT kernel's reach, so the packed kernel serves all
/// layouts; sizes cover partial vectors and tiles, several `KC` blocks, `MC` blocks and a
/// column-major `lhs` too far spread to be read in place.
fn gemm_layouts_agree<T: Real>() {
    let s = seed();
    let shapes = [
        (67, 13, 300),
        (5, 29, 600),
        (130, 7, 257),
        (16, 66, 520),
        (200, 5, 130),
        (260, 3, 520),
        // Few rows (a row-major `dst` with `8 m <= n` runs along its rows) and just not.
        (9, 72, 530),
        (10, 79, 300),
        (5, 66, 270),
    ];
    for (case, &(m, n, k)) in shapes.iter().enumerate() {
        let case = case as u64;
        let (alpha, beta) =
            (T::from_f64(0.75), T::from_f64(if case.is_multiple_of(2) { 0.0 } else { 0.5 }));
        let product = |la: Layout, lb: Layout, ld: Layout| {
            let lhs = Mat::<T>::new(la, m, k, 1, s, 3 * case);
            let rhs = Mat::<T>::new(lb, k, n, 0, s, 3 * case + 1);
            let mut dst = Mat::<T>::new(ld, m, n, 1, s, 3 * case + 2);
            let mut scratch = vec![T::from_f64(f64::NAN); gemm_scratch(m, n, k)];
            let (l, r) = (lhs.view_as(la), rhs.view_as(lb));
            gemm(dst.view_mut(), alpha, l, r, beta, &mut scratch).unwrap();
            dst
        };
        let want = product(Layout::Strided, Layout::Strided, Layout::ColMajor);
        for la in LAYOUTS {
            for lb in LAYOUTS {
                for ld in [Layout::RowMajor, Layout::ColMajor] {
                    let got = product(la, lb, ld);
                    for i in 0..m {
                        for j in 0..n {
                            assert_eq!(
                                bits(got.at(i, j)),
                                bits(want.at(i, j)),
                                "gemm<{}> {m}x{n}x{k} lhs {la:?} rhs {lb:?} dst {ld:?} ({i}, {j})",
                                T::NAME
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_is_layout_independent() {
    gemm_layouts_agree::<f64>();
    gemm_layouts_agree::<f32>();
    at_lower_levels(|| {
        gemm_layouts_agree::<f64>();
        gemm_layouts_agree::<f32>();
    });
}

/// [`gemm_bias`] gives the bits of [`gemm`] with `beta = 1` on a `dst` whose rows are `c b`,
/// and writes nothing outside the view (`dst` starts as NaN: it is never read), on every path:
/// the NT tiles (small K, `lhs` rows and `rhs` columns contiguous), few rows of a row-major
/// `dst`, the transposed problem (row-major `dst`), a column-major or strided `dst` as it stands,
/// partial tiles, several `KC` blocks and K = 0.
fn gemm_bias_vs_fill<T: Real>() {
    let s = seed();
    let shapes = [
        (128, 256, 64),
        (37, 29, 16),
        (9, 72, 530),
        (33, 264, 300),
        (67, 13, 300),
        (130, 7, 600),
        (5, 66, 1030),
        (6, 5, 0),
    ];
    for (case, &(m, n, k)) in shapes.iter().enumerate() {
        let case = case as u64;
        let b: Vec<T> = (0..n).map(|j| T::from_f64(rng::normal(s, 100 + case, j as u64))).collect();
        let (alpha, c) = (T::from_f64(-0.75), T::from_f64(0.3));
        for (la, lb, ld) in [
            (Layout::RowMajor, Layout::Transposed, Layout::RowMajor),
            (Layout::RowMajor, Layout::RowMajor, Layout::RowMajor),
            (Layout::ColMajor, Layout::Transposed, Layout::ColMajor),
            (Layout::Strided, Layout::StridedCol, Layout::Strided),
            (Layout::Transposed, Layout::ColMajor, Layout::StridedCol),
        ] {
            let lhs = Mat::<T>::new(la, m, k, 1, s, 3 * case);
            let rhs = Mat::<T>::new(lb, k, n, 0, s, 3 * case + 1);
            let (l, r) = (lhs.view_as(la), rhs.view_as(lb));
            let mut want = Mat::<T>::new(ld, m, n, 1, s, 3 * case + 2);
            for i in 0..m {
                for (j, &bj) in b.iter().enumerate() {
                    want.buf[want.off + i * want.rs + j * want.cs] = c * bj;
                }
            }
            let mut scratch = vec![T::from_f64(f64::NAN); gemm_scratch(m, n, k)];
            gemm(want.view_mut(), alpha, l, r, T::ONE, &mut scratch).unwrap();
            let mut got = Mat::<T>::new(ld, m, n, 1, s, 3 * case + 2);
            got.fill(T::from_f64(f64::NAN));
            let orig = got.buf.clone();
            gemm_bias(got.view_mut(), alpha, l, r, (c, &b), &mut scratch).unwrap();
            let what = format!("gemm_bias<{}> {m}x{n}x{k} {la:?} {lb:?} {ld:?}", T::NAME);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(bits(got.at(i, j)), bits(want.at(i, j)), "{what} ({i}, {j})");
                }
            }
            for ((x, y), inside) in got.buf.iter().zip(&orig).zip(got.mask()) {
                assert!(inside || bits(*x) == bits(*y), "{what}: wrote outside view");
            }
        }
    }
}

#[test]
fn gemm_bias_is_gemm_on_bias_rows() {
    gemm_bias_vs_fill::<f64>();
    gemm_bias_vs_fill::<f32>();
    at_lower_levels(|| {
        gemm_bias_vs_fill::<f64>();
        gemm_bias_vs_fill::<f32>();
    });
}

/// The few-rows path of a row-major `dst` (`8 m <= n` and `rhs` contiguous along K, or for
/// at most 64 rows of `f32` row-major: vectors along the rows of a column-major copy in scratch, `rhs` broadcast
/// in place) gives the bits
/// of a column-major `dst`, also as a sub-block of a wider matrix, with `beta` 0 (NaN in `dst`)
/// and 1, partial tiles and several `KC` blocks; a shape just outside the rule too. It also
/// matches the scalar twin without writing outside the view (`lhs` packed or read in place).
fn gemm_few_rows<T: Real>() {
    let s = seed();
    let shapes = [(1, 8, 140), (9, 72, 530), (10, 79, 300), (33, 264, 1030), (64, 520, 200)];
    for (case, &(m, n, k)) in shapes.iter().enumerate() {
        assert_eq!(few_rows(m, n), case != 2, "{m}x{n}");
        let case = case as u64;
        let lhs = Mat::<T>::new(Layout::RowMajor, m, k, 1, s, 3 * case);
        let rhs = Mat::<T>::new(Layout::Transposed, k, n, 0, s, 3 * case + 1);
        let rhs_rm = Mat::<T>::new(Layout::RowMajor, k, n, 0, s, 3 * case + 1);
        let mut scratch = vec![T::from_f64(f64::NAN); gemm_scratch(m, n, k)];
        let rhs_views = [rhs.view_as(Layout::Transposed), rhs_rm.view()];
        for (r, beta) in rhs_views.into_iter().flat_map(|r| [(r, 0.0), (r, 1.0)]) {
            let l = lhs.view();
            let (alpha, beta) = (T::from_f64(-0.75), T::from_f64(beta));
            let mut want = Mat::<T>::new(Layout::ColMajor, m, n, 0, s, 3 * case + 2);
            let init = Mat { buf: want.buf.clone(), ..want };
            gemm(want.view_mut(), alpha, l, r, beta, &mut scratch).unwrap();
            let rs = n + 5;
            let mut buf = vec![T::from_f64(SENTINEL); m * rs];
            for i in 0..m {
                for j in 0..n {
                    buf[1 + i * rs + j] =
                        if beta == T::ZERO { T::from_f64(f64::NAN) } else { init.at(i, j) };
                }
            }
            let orig = buf.clone();
            let dst = MatMut::strided(&mut buf[1..], m, n, rs, 1);
            gemm(dst, alpha, l, r, beta, &mut scratch).unwrap();
            for (x, (&y, &o)) in buf.iter().zip(&orig).enumerate() {
                let (i, j) = ((x.max(1) - 1) / rs, (x.max(1) - 1) % rs);
                let what = format!("gemm<{}> {m}x{n}x{k} beta {beta} ({i}, {j})", T::NAME);
                if x == 0 || j >= n {
                    assert_eq!(bits(y), bits(o), "{what}: wrote outside view");
                } else {
                    assert_eq!(bits(y), bits(want.at(i, j)), "{what}");
                }
            }
        }
        gemm_case::<T>(
            m,
            n,
            k,
            [Layout::RowMajor, Layout::Transposed, Layout::RowMajor],
            0.5,
            1.0,
            false,
            case,
        );
        gemm_case::<T>(
            m,
            n,
            k,
            [Layout::ColMajor, Layout::ColMajor, Layout::RowMajor],
            0.5,
            0.0,
            true,
            case,
        );
    }
}

#[test]
fn gemm_few_rows_path() {
    gemm_few_rows::<f64>();
    gemm_few_rows::<f32>();
    at_lower_levels(|| {
        gemm_few_rows::<f64>();
        gemm_few_rows::<f32>();
    });
}

/// `0.125 + (c a[i0..] a[j0..]^T + shift) .* (d[i0..] d[j0..]^T)` for a `rows x cols` block
/// in `layout` (output filled from stream `salt`, then overwritten to 0.125).
#[allow(clippy::too_many_arguments)]
fn gram_block<T: Real>(
    a: &Mat<T>,
    d: &Mat<T>,
    (c, shift): (T, T),
    layout: Layout,
    part: Part,
    (i0, rows): (usize, usize),
    (j0, cols): (usize, usize),
    salt: u64,
) -> Mat<T> {
    let mut out = Mat::<T>::new(layout, rows, cols, 0, seed(), salt);
    out.fill(T::from_f64(0.125));
    let mut scratch = vec![T::ZERO; gram_hadamard_scratch(rows, cols, a.cols, d.cols)];
    let (av, dv) = (a.view(), d.view());
    gram_hadamard(
        out.view_mut(),
        av.rows(i0, rows),
        av.rows(j0, cols),
        dv.rows(i0, rows),
        dv.rows(j0, cols),
        c,
        shift,
        part,
        &mut scratch,
    )
    .unwrap();
    out
}

/// Full, Upper, a sub-block and a row-major / column-major destination give the same bits.
fn gram_deterministic<T: Real>() {
    let s = seed();
    let (m, ka, kd) = (131, 77, 300);
    let a = Mat::<T>::new(Layout::RowMajor, m, ka, 0, s, 30);
    let d = Mat::<T>::new(Layout::ColMajor, m, kd, 1, s, 31);
    let (c, shift) = (T::from_f64(0.3), T::from_f64(1.0));
    let run =
        |layout, part, rows, cols| gram_block(&a, &d, (c, shift), layout, part, rows, cols, 32);
    let full = run(Layout::RowMajor, Part::Full, (0, m), (0, m));
    let check_same = |what: &str, got: &Mat<T>, i0: usize, j0: usize, upper: bool| {
        for i in 0..got.rows {
            for j in 0..got.cols {
                if !upper || j >= i {
                    assert_eq!(
                        bits(got.at(i, j)),
                        bits(full.at(i0 + i, j0 + j)),
                        "gram_hadamard<{}> {what} ({i}, {j})",
                        T::NAME
                    );
                }
            }
        }
    };
    check_same("upper row-major", &run(Layout::RowMajor, Part::Upper, (0, m), (0, m)), 0, 0, true);
    check_same("upper col-major", &run(Layout::ColMajor, Part::Upper, (0, m), (0, m)), 0, 0, true);
    check_same("full strided", &run(Layout::Strided, Part::Full, (0, m), (0, m)), 0, 0, false);
    let blk = run(Layout::ColMajor, Part::Full, (17, 60), (40, 53));
    check_same("block", &blk, 17, 40, false);
    let blk = run(Layout::RowMajor, Part::Upper, (30, 70), (30, 70));
    check_same("diagonal block", &blk, 30, 30, true);
}

#[test]
fn gram_hadamard_is_tile_independent() {
    gram_deterministic::<f64>();
    gram_deterministic::<f32>();
}

#[test]
fn exact_scratch_is_enough_and_one_less_is_short() {
    for &(m, n, k) in &[(1, 1, 1), (7, 300, 33), (300, 7, 600), (64, 64, 64), (1, 2000, 1)] {
        let lhs = vec![1.0f64; m * k];
        let rhs = vec![1.0f64; k * n];
        let mut dst = vec![0.0f64; m * n];
        let need = gemm_scratch(m, n, k);
        let mut scratch = vec![0.0f64; need];
        let (l, r) = (MatRef::row_major(&lhs, m, k), MatRef::row_major(&rhs, k, n));
        gemm(MatMut::row_major(&mut dst, m, n), 1.0, l, r, 0.0, &mut scratch).unwrap();
        assert!(dst.iter().all(|&x| x == k as f64));
        let err = gemm(MatMut::row_major(&mut dst, m, n), 1.0, l, r, 0.0, &mut scratch[1..]);
        assert_eq!(err, Err(Error::ShortBuffer { buffer: "scratch", needed: need, got: need - 1 }));
        // f32 shares the size.
        let (lf, rf) = (vec![1.0f32; m * k], vec![1.0f32; k * n]);
        let mut df = vec![0.0f32; m * n];
        let mut sf = vec![0.0f32; need];
        let (l, r) = (MatRef::row_major(&lf, m, k), MatRef::row_major(&rf, k, n));
        gemm(MatMut::row_major(&mut df, m, n), 1.0, l, r, 0.0, &mut sf).unwrap();
        assert!(gemm(MatMut::row_major(&mut df, m, n), 1.0, l, r, 0.0, &mut sf[1..]).is_err());

        let (ka, kd) = (k, k / 2 + 1);
        let need = gram_hadamard_scratch(m, n, ka, kd);
        let (a1, a2) = (vec![1.0f64; m * ka], vec![1.0f64; n * ka]);
        let (d1, d2) = (vec![1.0f64; m * kd], vec![1.0f64; n * kd]);
        let views = (
            MatRef::row_major(&a1, m, ka),
            MatRef::row_major(&a2, n, ka),
            MatRef::row_major(&d1, m, kd),
            MatRef::row_major(&d2, n, kd),
        );
        let mut scratch = vec![0.0f64; need];
        let mut dst = vec![0.0f64; m * n];
        let (a1, a2, d1, d2) = views;
        let out = MatMut::row_major(&mut dst, m, n);
        gram_hadamard(out, a1, a2, d1, d2, 1.0, 0.0, Part::Full, &mut scratch).unwrap();
        assert!(dst.iter().all(|&x| x == (ka * kd) as f64));
        let out = MatMut::row_major(&mut dst, m, n);
        let err = gram_hadamard(out, a1, a2, d1, d2, 1.0, 0.0, Part::Full, &mut scratch[1..]);
        assert_eq!(err, Err(Error::ShortBuffer { buffer: "scratch", needed: need, got: need - 1 }));
    }
    // Empty problems need nothing.
    assert_eq!(gemm_scratch(0, 5, 5), 0);
    assert_eq!(gram_hadamard_scratch(5, 0, 5, 5), 0);
}

#[test]
fn gemm_k_zero_scales_or_clears() {
    let mut dst = [f64::NAN, 2.0];
    let e: [f64; 0] = [];
    let (l, r) = (MatRef::row_major(&e, 1, 0), MatRef::row_major(&e, 0, 2));
    gemm(MatMut::row_major(&mut dst, 1, 2), 1.0, l, r, 0.0, &mut []).unwrap();
    assert_eq!(dst, [0.0, 0.0]);
    let mut dst = [1.0f64, 2.0];
    gemm(MatMut::row_major(&mut dst, 1, 2), 1.0, l, r, 3.0, &mut []).unwrap();
    assert_eq!(dst, [3.0, 6.0]);
}

/// The paths for operands contiguous along K (the NT GEMM: row-major `lhs`, `rhs` a row-major
/// matrix seen through `.t()`; the row Gram: row-major `a1`, `a2`, `d1`, `d2`) against the
/// scalar twins,
/// odd sizes and K tails, every destination layout, misaligned slices, NaN destinations.
fn nt_vs_scalar<T: Real>() {
    let sz = sizes();
    let mut case = 7000u64;
    for (a, &m) in sz.iter().enumerate() {
        for (b, &n) in sz.iter().enumerate().step_by(3) {
            let k = pick(&sz, a * 3 + b, 1)[0];
            let dl = LAYOUTS[(a + b) % 5];
            let (alpha, beta, nan) = match case % 3 {
                0 => (1.0, 0.0, true),
                1 => (-0.75, 1.0, false),
                _ => (1.5, -0.5, false),
            };
            gemm_case::<T>(
                m,
                n,
                k,
                [Layout::RowMajor, Layout::Transposed, dl],
                alpha,
                beta,
                nan,
                case,
            );
            let part = if b % 2 == 0 { Part::Full } else { Part::Upper };
            let kd = pick(&sz, a + 5 * b, 1)[0];
            let ls = [Layout::RowMajor, Layout::RowMajor, dl];
            gram_case::<T>(m, n, k, kd, ls, 0.5, 1.0, part, case);
            case += 1;
        }
    }
    // Long K (several vectors and a tail), more rows than one L2 block.
    let ls = [Layout::RowMajor, Layout::Transposed, Layout::RowMajor];
    gemm_case::<T>(13, 300, 1019, ls, 0.5, 0.0, true, 7900);
    gemm_case::<T>(29, 77, 509, ls, -1.0, 0.5, false, 7904);
    gemm_case::<T>(70, 1100, 129, ls, 0.5, 2.0, false, 7901);
    let ls = [Layout::RowMajor, Layout::RowMajor, Layout::ColMajor];
    gram_case::<T>(61, 300, 700, 33, ls, 0.25, 1.0, Part::Full, 7902);
    gram_case::<T>(130, 130, 509, 1, ls, 0.25, 1.0, Part::Upper, 7903);
    let ls = [Layout::RowMajor, Layout::RowMajor, Layout::RowMajor];
    gram_case::<T>(20, 90, 1300, 2200, ls, 0.25, 1.0, Part::Full, 7905);
    gram_case::<T>(515, 515, 5, 3, ls, -0.5, 1.0, Part::Upper, 7906);
}

#[test]
fn nt_paths_match_scalar() {
    nt_vs_scalar::<f64>();
    nt_vs_scalar::<f32>();
    at_lower_levels(|| {
        nt_vs_scalar::<f64>();
        nt_vs_scalar::<f32>();
    });
}

/// The NT GEMM path: an entry has the same bits whatever block of the output it is computed in
/// (row blocks of `lhs` as the CLI's forward pass splits it, column blocks, other destination
/// layouts).
fn nt_deterministic<T: Real>() {
    let s = seed();
    let (m, n, k) = (61, 103, 509);
    let lhs = Mat::<T>::new(Layout::RowMajor, m, k, 1, s, 40);
    let w = Mat::<T>::new(Layout::RowMajor, n, k, 0, s, 41);
    let alpha = T::from_f64(0.75);
    let mut full = Mat::<T>::new(Layout::RowMajor, m, n, 0, s, 42);
    let mut scratch = vec![T::ZERO; gemm_scratch(m, n, k)];
    gemm(full.view_mut(), alpha, lhs.view(), w.view().t(), T::ZERO, &mut scratch).unwrap();
    for (layout, (i0, rows), (j0, cols)) in [
        (Layout::RowMajor, (5, 9), (0, n)),
        (Layout::ColMajor, (13, 37), (29, 41)),
        (Layout::Strided, (60, 1), (102, 1)),
        (Layout::RowMajor, (0, m), (7, 1)),
    ] {
        let mut sub = Mat::<T>::new(layout, rows, cols, 1, s, 0);
        let l = lhs.view().rows(i0, rows);
        let r = w.view().rows(j0, cols).t();
        let mut scratch = vec![T::ZERO; gemm_scratch(rows, cols, k)];
        gemm(sub.view_mut(), alpha, l, r, T::ZERO, &mut scratch).unwrap();
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(
                    bits(sub.at(i, j)),
                    bits(full.at(i0 + i, j0 + j)),
                    "gemm nt<{}> block ({i0}, {j0}) {layout:?} entry ({i}, {j})",
                    T::NAME
                );
            }
        }
    }
}

/// The Gram kernels: an entry has the same bits whatever the band of rows against all later
/// columns, `Part`, and destination layout (row-major: the outer-product path over K-major
/// panels; column-major or strided: the packed path), for `m` inputs with rows of `ka`, `kd`.
fn gram_layouts_agree<T: Real>(m: usize, ka: usize, kd: usize) {
    let s = seed();
    let a = Mat::<T>::new(Layout::RowMajor, m, ka, 0, s, 43);
    let d = Mat::<T>::new(Layout::RowMajor, m, kd, 1, s, 44);
    let (c, shift) = (T::from_f64(0.3), T::from_f64(1.0));
    let run =
        |layout, part, rows, cols| gram_block(&a, &d, (c, shift), layout, part, rows, cols, 45);
    let full = run(Layout::RowMajor, Part::Full, (0, m), (0, m));
    let (h, q) = (m / 2, m / 4);
    for (layout, part, (i0, rows), (j0, cols)) in [
        (Layout::RowMajor, Part::Upper, (0, m), (0, m)),
        (Layout::ColMajor, Part::Upper, (0, m), (0, m)),
        (Layout::ColMajor, Part::Full, (0, m), (0, m)),
        (Layout::Strided, Part::Full, (0, m), (0, m)),
        (Layout::RowMajor, Part::Full, (q, h - q), (q, m - q)),
        (Layout::RowMajor, Part::Upper, (h, m - h), (h, m - h)),
        (Layout::RowMajor, Part::Upper, (q + 3, 13.min(m - q - 3)), (q + 3, m - q - 3)),
        (Layout::ColMajor, Part::Full, (5, h), (q, 9)),
    ] {
        let got = run(layout, part, (i0, rows), (j0, cols));
        for i in 0..rows {
            for j in 0..cols {
                if part == Part::Full || j >= i {
                    assert_eq!(
                        bits(got.at(i, j)),
                        bits(full.at(i0 + i, j0 + j)),
                        "gram<{}> m {m} ka {ka} kd {kd} {layout:?} {part:?} ({i0}, {j0}) \
                         entry ({i}, {j})",
                        T::NAME
                    );
                }
            }
        }
    }
}

/// One chunk of K; K in several panel chunks (over 1024 elements with AVX-512, 2048 with
/// AVX2) with an empty A; several row blocks (over 512 rows) with one signal per input.
fn gram_paths_agree<T: Real>() {
    gram_layouts_agree::<T>(61, 77, 300);
    gram_layouts_agree::<T>(37, 0, 2100);
    gram_layouts_agree::<T>(530, 3, 1);
}

#[test]
fn gram_paths_are_tile_and_layout_independent() {
    gram_paths_agree::<f64>();
    gram_paths_agree::<f32>();
    at_lower_levels(|| {
        gram_paths_agree::<f64>();
        gram_paths_agree::<f32>();
    });
}

#[test]
fn nt_paths_are_tile_independent() {
    nt_deterministic::<f64>();
    nt_deterministic::<f32>();
    at_lower_levels(|| {
        nt_deterministic::<f64>();
        nt_deterministic::<f32>();
    });
}
