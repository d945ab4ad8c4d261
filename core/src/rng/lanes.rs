//! Box–Muller over `L` lanes, written once for the scalar (`L = 1`) and the SIMD path.
//!
//! Every step is a fixed sequence of integer operations and correctly rounded IEEE `+ - * /`
//! and `sqrt` (Rust never contracts `a * b + c` into an FMA), so any lane count, instruction
//! set or target gives the same bits. The lane loops are plain array loops that LLVM
//! vectorises inside pulp's dispatched `#[target_feature]` context; `sqrt` goes through
//! [`pulp::Simd::sqrt_f64s`] because `libm::sqrt` is inline assembly.

use pulp::Simd;

use super::{M0, M1, W0, W1};

/// `2^-53`.
const TWO_M53: f64 = 1.0 / 9_007_199_254_740_992.0;

// ln: musl / FreeBSD `log` (error < 1 ulp), without its special cases (u1 is in [2^-53, 1]).
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
const LG1: f64 = f64::from_bits(0x3fe5_5555_5555_5593);
const LG2: f64 = f64::from_bits(0x3fd9_9999_9997_fa04);
const LG3: f64 = f64::from_bits(0x3fd2_4924_9422_9359);
const LG4: f64 = f64::from_bits(0x3fcc_71c5_1d8e_78af);
const LG5: f64 = f64::from_bits(0x3fc7_4664_96cb_03de);
const LG6: f64 = f64::from_bits(0x3fc3_9a09_d078_c69f);
const LG7: f64 = f64::from_bits(0x3fc2_f112_df3e_5244);

// sin / cos kernels on [-pi/4, pi/4]: fdlibm `__kernel_sin` / `__kernel_cos` (error < 1 ulp).
const S1: f64 = f64::from_bits(0xbfc5_5555_5555_5549);
const S2: f64 = f64::from_bits(0x3f81_1111_1110_f8a6);
const S3: f64 = f64::from_bits(0xbf2a_01a0_19c1_61d5);
const S4: f64 = f64::from_bits(0x3ec7_1de3_57b1_fe7d);
const S5: f64 = f64::from_bits(0xbe5a_e5e6_8a2b_9ceb);
const S6: f64 = f64::from_bits(0x3de5_d93a_5acf_d57c);
const C1: f64 = f64::from_bits(0x3fa5_5555_5555_554c);
const C2: f64 = f64::from_bits(0xbf56_c16c_16c1_5177);
const C3: f64 = f64::from_bits(0x3efa_01a0_19cb_1590);
const C4: f64 = f64::from_bits(0xbe92_7e4f_809c_52ad);
const C5: f64 = f64::from_bits(0x3e21_ee9e_bdb4_b1c4);
const C6: f64 = f64::from_bits(0xbda8_fae9_be88_38d4);

/// `2 pi / 2^53 = pi 2^-52` split as `3 * 2^-52` (exact products with 51-bit integers) plus
/// the correctly rounded `(pi - 3) 2^-52` (`0x3fc2_1fb5_4442_d184` is `pi - 3`).
const PI_HI: f64 = 3.0 / 4_503_599_627_370_496.0;
const PI_MID: f64 = f64::from_bits(0x3fc2_1fb5_4442_d184) / 4_503_599_627_370_496.0;

/// Runs `f` over every lane; `#[inline(always)]` keeps it inside the SIMD context.
macro_rules! lanes {
    ($l:ident in $n:expr => $body:expr) => {
        for $l in 0..$n {
            $body;
        }
    };
}

/// `ln(x)` for `x` in `[2^-53, 1]` (normal, positive), as musl's `log`:
/// `x = 2^k f`, `f` in `[sqrt(2)/2, sqrt(2))`, `s = (f - 1) / (f + 1)`,
/// `ln f = f - 1 - h + s (h + R(s^2))` with `h = (f - 1)^2 / 2`.
#[inline(always)]
pub(super) fn ln_unit(x: f64) -> f64 {
    let ui = x.to_bits();
    let hx = ((ui >> 32) as u32).wrapping_add(0x3ff0_0000 - 0x3fe6_a09e);
    let k = ((hx >> 20) as i32) - 0x3ff;
    let hx = (hx & 0x000f_ffff) + 0x3fe6_a09e;
    let f = f64::from_bits(((hx as u64) << 32) | (ui & 0xffff_ffff)) - 1.0;
    let hfsq = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let r = t2 + t1;
    let dk = k as f64;
    s * (hfsq + r) + dk * LN2_LO - hfsq + f + dk * LN2_HI
}

/// `(sin(x + y), cos(x + y))` for `|x + y| <= pi/4`, `|y| <= ulp(x) / 2` (fdlibm kernels).
#[inline(always)]
fn sincos_kernel(x: f64, y: f64) -> (f64, f64) {
    let z = x * x;
    let w = z * z;
    let r = S2 + z * (S3 + z * S4) + z * w * (S5 + z * S6);
    let v = z * x;
    let s = x - ((z * (0.5 * y - v * r) - y) - v * S1);
    let r = z * (C1 + z * (C2 + z * C3)) + w * w * (C4 + z * (C5 + z * C6));
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    let c = w + (((1.0 - w) - hz) + (z * r - x * y));
    (s, c)
}

/// `(sin, cos)(2 pi n / 2^53)` for `n < 2^53`, exactly reduced:
/// `n = j 2^51 + m`, `|m| <= 2^50`, angle `j pi/2 + m pi 2^-52`.
#[inline(always)]
pub(super) fn sincos_turn(n: u64) -> (f64, f64) {
    let j = (n + (1 << 50)) >> 51;
    let m = n.wrapping_sub(j << 51) as i64;
    let mf = m as f64;
    let hi = mf * PI_HI; // exact: |m| <= 2^50 times a 2-bit constant
    let mid = mf * PI_MID;
    let x = hi + mid;
    let y = (hi - x) + mid;
    let (sa, ca) = sincos_kernel(x, y);
    let swap = j & 1 == 1;
    let (s, c) = if swap { (ca, sa) } else { (sa, ca) };
    let s = f64::from_bits(s.to_bits() ^ ((j & 2) << 62));
    let c = f64::from_bits(c.to_bits() ^ (((j + 1) & 2) << 62));
    (s, c)
}

/// `out[l] = sqrt(out[l])` through pulp (`libm::sqrt` is inline assembly and does not
/// vectorise); correctly rounded everywhere.
#[inline(always)]
fn sqrt_lanes<S: Simd, const L: usize>(simd: S, v: &mut [f64; L]) {
    let (head, tail) = S::as_mut_simd_f64s(v);
    for x in head {
        *x = simd.sqrt_f64s(*x);
    }
    for x in tail {
        *x = libm::sqrt(*x);
    }
}

/// Philox4x32-10 on `L` counters `c[.][l]` under one key, in place: pulp's
/// `widening_mul_u32s` (`mul_epu32`) on whole vectors, scalar rounds for the leftover lanes.
#[inline(always)]
fn philox_lanes<S: Simd, const L: usize>(simd: S, c: &mut [[u32; L]; 4], key: [u32; 2]) {
    let [c0, c1, c2, c3] = c;
    let (v0, t0) = S::as_mut_simd_u32s(c0);
    let (v1, t1) = S::as_mut_simd_u32s(c1);
    let (v2, t2) = S::as_mut_simd_u32s(c2);
    let (v3, t3) = S::as_mut_simd_u32s(c3);
    let (m0, m1) = (simd.splat_u32s(M0), simd.splat_u32s(M1));
    for (((x0, x1), x2), x3) in v0.iter_mut().zip(v1).zip(v2).zip(v3) {
        let (mut a0, mut a1, mut a2, mut a3) = (*x0, *x1, *x2, *x3);
        let (mut k0, mut k1) = (key[0], key[1]);
        for _ in 0..10 {
            let (lo0, hi0) = simd.widening_mul_u32s(m0, a0);
            let (lo1, hi1) = simd.widening_mul_u32s(m1, a2);
            a0 = simd.xor_u32s(simd.xor_u32s(hi1, a1), simd.splat_u32s(k0));
            a1 = lo1;
            a2 = simd.xor_u32s(simd.xor_u32s(hi0, a3), simd.splat_u32s(k1));
            a3 = lo0;
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        (*x0, *x1, *x2, *x3) = (a0, a1, a2, a3);
    }
    for (((x0, x1), x2), x3) in t0.iter_mut().zip(t1).zip(t2).zip(t3) {
        [*x0, *x1, *x2, *x3] = super::philox4x32_10([*x0, *x1, *x2, *x3], key);
    }
}

/// Box–Muller of Philox blocks `blk, blk + 1, ..., blk + L - 1` of `(seed, stream)`:
/// `u1 = (w01 >> 11 + 1) 2^-53`, `u2 = (w23 >> 11) 2^-53`, `r = sqrt(-2 ln u1)`,
/// `z0[l] = r cos(2 pi u2)`, `z1[l] = r sin(2 pi u2)`.
#[inline(always)]
pub(super) fn box_muller<S: Simd, const L: usize>(
    simd: S,
    seed: u64,
    stream: u64,
    blk: u64,
    z0: &mut [f64; L],
    z1: &mut [f64; L],
) {
    // Philox4x32-10, lane l on counter (blk + l, stream).
    let mut c = [[0u32; L]; 4];
    lanes!(l in L => {
        let b = blk.wrapping_add(l as u64);
        c[0][l] = b as u32;
        c[1][l] = (b >> 32) as u32;
        c[2][l] = stream as u32;
        c[3][l] = (stream >> 32) as u32;
    });
    philox_lanes(simd, &mut c, [seed as u32, (seed >> 32) as u32]);
    let [c0, c1, c2, c3] = c;

    // r^2 = -2 ln u1, then r.
    let mut r = [0f64; L];
    lanes!(l in L => {
        let bits = (c0[l] as u64) | ((c1[l] as u64) << 32);
        let u1 = ((bits >> 11) + 1) as f64 * TWO_M53;
        r[l] = -2.0 * ln_unit(u1);
    });
    sqrt_lanes(simd, &mut r);

    lanes!(l in L => {
        let bits = (c2[l] as u64) | ((c3[l] as u64) << 32);
        let (s, c) = sincos_turn(bits >> 11);
        z0[l] = r[l] * c;
        z1[l] = r[l] * s;
    });
}
