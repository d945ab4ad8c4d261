//! Invariant: the SIMD kernels `gemm`, `gram_hadamard` and `dot` agree with their scalar twins
//! on every shape and stride: bit for bit when all products and sums are exact (dyadic
//! entries), otherwise within `2 k eps sum |terms|` per entry; `beta = 0` ignores NaNs in `dst`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::{fuzz_target, Corpus};
use ntk_core::simd::{self, scalar, MatMut, MatRef, Part};
use ntk_core::Real;

const MAX_DIM: usize = 70;

/// Matrix entries: exact dyadics (`i8 / 16`, sums stay exact) or general finite values.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fill {
    Dyadic(u64),
    General(u64),
}

impl Fill {
    fn exact(self) -> bool {
        matches!(self, Fill::Dyadic(_))
    }
    fn values<T: Real>(self, len: usize, stream: u64) -> Vec<T> {
        (0..len)
            .map(|j| match self {
                Fill::Dyadic(seed) => {
                    let u = ntk_core::rng::uniform(seed, stream, j as u64);
                    T::from_f64(((u * 256.0) as i64 - 128) as f64 / 16.0)
                }
                Fill::General(seed) => T::from_f64(ntk_core::rng::normal(seed, stream, j as u64)),
            })
            .collect()
    }
}

/// A matrix layout: transposed or not, with extra row padding.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Layout {
    col_major: bool,
    pad: u8,
}

impl Layout {
    /// Backing length and strides of a rows x cols view.
    fn make(self, rows: usize, cols: usize) -> (usize, usize, usize) {
        let pad = (self.pad % 5) as usize;
        if self.col_major {
            let ld = rows + pad;
            (ld * cols, 1, ld)
        } else {
            let ld = cols + pad;
            (ld * rows, ld, 1)
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Gemm {
        m: u8,
        n: u8,
        k: u8,
        la: Layout,
        lb: Layout,
        lc: Layout,
        alpha: i8,
        beta: i8,
        nan_dst: bool,
    },
    Gram {
        m: u8,
        n: u8,
        ka: u8,
        kd: u8,
        l: [Layout; 5],
        c: i8,
        s: i8,
        symmetric: bool,
    },
    Dot {
        len: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Case {
    fill: Fill,
    f32: bool,
    op: Op,
}

fn view<T: Real>(buf: &[T], l: Layout, r: usize, c: usize) -> MatRef<'_, T> {
    let (_, rs, cs) = l.make(r, c);
    MatRef::strided(buf, r, c, rs, cs)
}

/// Per-entry bound: `2 (k + 2) eps sum_p |terms|` (zero when exact).
fn close<T: Real>(got: T, want: T, abs_sum: f64, k: usize, exact: bool) -> bool {
    if exact {
        return got.to_f64() == want.to_f64() || (got != got && want != want);
    }
    let eps = T::EPSILON.to_f64();
    (got.to_f64() - want.to_f64()).abs() <= 2.0 * (k as f64 + 2.0) * eps * abs_sum + 1e-300
}

fn run<T: Real>(fill: Fill, op: &Op) -> Corpus {
    // Dyadic products and sums fit f64's mantissa; f32's is too short for alpha * acc.
    let exact = fill.exact() && T::BYTES == 8;
    match *op {
        Op::Gemm { m, n, k, la, lb, lc, alpha, beta, nan_dst } => {
            let (m, n, k) = (m as usize, n as usize, k as usize);
            if m > MAX_DIM || n > MAX_DIM || k > MAX_DIM {
                return Corpus::Reject;
            }
            let (alpha, beta) = (T::from_f64(alpha as f64 / 8.0), T::from_f64(beta as f64 / 8.0));
            let a = fill.values::<T>(la.make(m, k).0, 1);
            let b = fill.values::<T>(lb.make(k, n).0, 2);
            let (clen, crs, ccs) = lc.make(m, n);
            let mut c0 = fill.values::<T>(clen, 3);
            if nan_dst && beta == T::ZERO {
                c0.iter_mut().for_each(|v| *v = T::from_f64(f64::NAN));
            }
            let mut c1 = c0.clone();
            let mut c2 = c0.clone();
            let (av, bv) = (view(&a, la, m, k), view(&b, lb, k, n));
            let mut scratch = vec![T::ZERO; simd::gemm_scratch(m, n, k)];
            simd::gemm(MatMut::strided(&mut c1, m, n, crs, ccs), alpha, av, bv, beta, &mut scratch)
                .expect("exact scratch");
            scalar::gemm(MatMut::strided(&mut c2, m, n, crs, ccs), alpha, av, bv, beta);
            for i in 0..m {
                for j in 0..n {
                    let idx = i * crs + j * ccs;
                    let mut abs = 0.0;
                    for p in 0..k {
                        abs += (av.at(i, p).to_f64() * bv.at(p, j).to_f64()).abs();
                    }
                    abs *= alpha.to_f64().abs();
                    if beta != T::ZERO {
                        abs += (beta.to_f64() * c0[idx].to_f64()).abs();
                    }
                    assert!(
                        close(c1[idx], c2[idx], abs, k, exact),
                        "gemm ({i},{j}): {} vs {}",
                        c1[idx],
                        c2[idx]
                    );
                    assert!(!(beta == T::ZERO && c1[idx] != c1[idx]), "gemm: NaN from dst");
                }
            }
            // Elements outside the view are untouched.
            for (idx, (x, y)) in c1.iter().zip(&c0).enumerate() {
                let (i, j) =
                    if lc.col_major { (idx % ccs, idx / ccs) } else { (idx / crs, idx % crs) };
                if i >= m || j >= n {
                    assert!(
                        x.to_f64().to_bits() == y.to_f64().to_bits(),
                        "gemm wrote padding {idx}"
                    );
                }
            }
        }
        Op::Gram { m, n, ka, kd, l, c, s, symmetric } => {
            let (m, ka, kd) = (m as usize, ka as usize, kd as usize);
            let n = if symmetric { m } else { n as usize };
            if m > MAX_DIM || n > MAX_DIM || ka > MAX_DIM || kd > MAX_DIM {
                return Corpus::Reject;
            }
            let (c, s) = (T::from_f64(c as f64 / 8.0), T::from_f64(s as f64 / 8.0));
            let a1 = fill.values::<T>(l[0].make(m, ka).0, 1);
            let d1 = fill.values::<T>(l[2].make(m, kd).0, 3);
            let (a2, d2, la2, ld2) = if symmetric {
                (a1.clone(), d1.clone(), l[0], l[2])
            } else {
                (
                    fill.values::<T>(l[1].make(n, ka).0, 2),
                    fill.values::<T>(l[3].make(n, kd).0, 4),
                    l[1],
                    l[3],
                )
            };
            let (olen, ors, ocs) = l[4].make(m, n);
            let o0 = fill.values::<T>(olen, 5);
            let (mut o1, mut o2) = (o0.clone(), o0.clone());
            let (a1v, a2v) = (view(&a1, l[0], m, ka), view(&a2, la2, n, ka));
            let (d1v, d2v) = (view(&d1, l[2], m, kd), view(&d2, ld2, n, kd));
            let part = if symmetric { Part::Upper } else { Part::Full };
            let mut scratch = vec![T::ZERO; simd::gram_hadamard_scratch(m, n, ka, kd)];
            simd::gram_hadamard(
                MatMut::strided(&mut o1, m, n, ors, ocs),
                a1v,
                a2v,
                d1v,
                d2v,
                c,
                s,
                part,
                &mut scratch,
            )
            .expect("exact scratch");
            scalar::gram_hadamard(
                MatMut::strided(&mut o2, m, n, ors, ocs),
                a1v,
                a2v,
                d1v,
                d2v,
                c,
                s,
                part,
            );
            for i in 0..m {
                for j in 0..n {
                    if symmetric && j < i {
                        continue;
                    }
                    let idx = i * ors + j * ocs;
                    let (mut ga, mut gd) = (0.0, 0.0);
                    for p in 0..ka {
                        ga += (a1v.at(i, p).to_f64() * a2v.at(j, p).to_f64()).abs();
                    }
                    for p in 0..kd {
                        gd += (d1v.at(i, p).to_f64() * d2v.at(j, p).to_f64()).abs();
                    }
                    let abs =
                        (c.to_f64().abs() * ga + s.to_f64().abs()) * gd + o0[idx].to_f64().abs();
                    assert!(
                        close(o1[idx], o2[idx], abs, ka + kd, exact),
                        "gram_hadamard ({i},{j}): {} vs {}",
                        o1[idx],
                        o2[idx]
                    );
                }
            }
        }
        Op::Dot { len } => {
            let len = len as usize;
            if len > 4096 {
                return Corpus::Reject;
            }
            let a = fill.values::<T>(len, 1);
            let b = fill.values::<T>(len, 2);
            let abs: f64 = a.iter().zip(&b).map(|(x, y)| (x.to_f64() * y.to_f64()).abs()).sum();
            let (got, want) = (simd::dot(&a, &b), scalar::dot(&a, &b));
            assert!(close(got, want, abs, len, exact), "dot: {got} vs {want}");
        }
    }
    Corpus::Keep
}

fuzz_target!(|case: Case| -> Corpus {
    if case.f32 {
        run::<f32>(case.fill, &case.op)
    } else {
        run::<f64>(case.fill, &case.op)
    }
});
