//! The Gram tiles of [`gram_nt`](super::GramNt) run each entry's FMA chain in register passes,
//! in row tiles of two heights; the chain must be the one of the unblocked dot tiles of
//! [`GemmNt`]: bit for bit, at every instruction set, for inner dimensions of one pass, several
//! passes and a tail.

use super::{GemmNt, GramNt, Out, Rows};
use crate::real::Real;
use pulp::{Simd, WithSimd};
use std::{vec, vec::Vec};

/// Runs `op` with the best instruction set (level 0), pulp's scalar fallback (1) or, where the
/// CPU has it, x86-64-v3 (2; otherwise the best one again).
fn run<Op: WithSimd<Output = ()>>(level: u8, op: Op) {
    match level {
        1 => op.with_simd(pulp::Scalar::new()),
        #[cfg(target_arch = "x86_64")]
        2 if pulp::x86::V3::try_new().is_some() => {
            pulp::x86::V3::try_new().map_or((), |v3| Simd::vectorize(v3, op))
        }
        _ => pulp::Arch::new().dispatch(op),
    }
}

fn data<T: Real>(len: usize, seed: u64) -> Vec<T> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            T::from_f64((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
        })
        .collect()
}

/// `G = x x^T` (`n x n`, rows of `k`) by the Gram kernel twice: as the A-Gram (`d` = one
/// column of ones, `c = 1`, `shift = 0`) and as the D-Gram (`a` likewise; with `k = 1` the
/// outer-product path), both against the NT GEMM, entry by entry (entries below the diagonal
/// only with `upper` off).
fn gram_chain_is_the_dot_chain<T: Real + super::Elem>(n: usize, k: usize, upper: bool) {
    let mut x = data::<T>(n * k, (n * 1000 + k) as u64);
    // Products that underflow to -0 (the dot chain's zero lanes make them +0).
    let tiny = T::from_f64(if core::mem::size_of::<T>() == 4 { 1e-30 } else { 1e-200 });
    x[k] = tiny;
    x[2 * k] = -tiny;
    let ones = vec![T::ONE; n];
    let rows = |data, k| Rows { data, rows: n, rs: k };
    for level in 0..3 {
        let mut want = vec![T::ZERO; n * n];
        let dst = Out { data: &mut want, rs: n, cs: 1 };
        let (lhs, rhs) = (rows(&x, k), rows(&x, k));
        run(level, GemmNt { dst, alpha: T::ONE, lhs, rhs, k, beta: T::ZERO });
        for as_d in [false, true] {
            let (a, d, ka, kd) = if as_d { (&ones, &x, 1, k) } else { (&x, &ones, k, 1) };
            // `-0 + g` keeps the sign of a zero `g`.
            let mut got = vec![-T::ZERO; n * n];
            let dst = Out { data: &mut got, rs: n, cs: 1 };
            let (a, d) = (rows(a, ka), rows(d, kd));
            let (c, shift) = (T::ONE, T::ZERO);
            let op = GramNt { dst, a1: a, a2: a, d1: d, d2: d, ka, kd, c, shift, upper };
            run(level, op);
            for i in 0..n {
                for j in if upper { i } else { 0 }..n {
                    assert_eq!(
                        got[i * n + j].to_f64().to_bits(),
                        want[i * n + j].to_f64().to_bits(),
                        "level {level} n {n} k {k} upper {upper} as_d {as_d} entry ({i}, {j})"
                    );
                }
            }
        }
    }
}

#[test]
fn gram_passes_keep_the_dot_chain() {
    // f64 passes hold 512 elements with AVX-512, f32 1024 (4 KiB rows); 8-row tiles, the
    // last one of 4 rows when that covers it (41, 44).
    let cases =
        [(29, 1, false), (37, 600, true), (41, 1100, false), (44, 300, true), (64, 2063, true)];
    for (n, k, upper) in cases {
        gram_chain_is_the_dot_chain::<f64>(n, k, upper);
        gram_chain_is_the_dot_chain::<f32>(n, k, upper);
    }
}
