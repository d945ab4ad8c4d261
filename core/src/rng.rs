//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC 2011) and standard normals.
//!
//! Every number is a pure function of `(seed, stream, index)`: a weight can be regenerated
//! instead of stored, and results are bit-identical across runs, platforms and thread counts.
//! Normal number `i` of a stream comes from Philox block `i / 2` through Box–Muller in f64
//! (so an f32 network is the rounding of the f64 one).

use crate::real::Real;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: 4 random words from a 128-bit counter and a 64-bit key.
///
/// ```
/// // Known answer from the Random123 distribution (kat_vectors).
/// let out = ntk_core::rng::philox4x32_10([0; 4], [0; 2]);
/// assert_eq!(out, [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
/// ```
#[inline]
pub const fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    let mut round = 0;
    while round < 10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        round += 1;
    }
    c
}

/// The Philox block `block` of stream `stream` under `seed`.
#[inline]
pub const fn block(seed: u64, stream: u64, block: u64) -> [u32; 4] {
    philox4x32_10(
        [block as u32, (block >> 32) as u32, stream as u32, (stream >> 32) as u32],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// A 64-bit hash of `(seed, a, b)` through Philox: derives independent seeds for sweep cells
/// and samples (`derive_seed(global, cell, sample)`).
#[inline]
pub const fn derive_seed(seed: u64, a: u64, b: u64) -> u64 {
    let r = philox4x32_10(
        [a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32],
        [seed as u32 ^ 0x5EED_0001, (seed >> 32) as u32 ^ 0x0D15_EA5E],
    );
    (r[0] as u64) | ((r[1] as u64) << 32)
}

/// Uniform in (0, 1] from 64 random bits (53 significant bits).
#[inline(always)]
fn open_closed(bits: u64) -> f64 {
    ((bits >> 11) + 1) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// Uniform in [0, 1) from 64 random bits.
#[inline(always)]
fn closed_open(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// The two standard normals of one Philox block (Box–Muller in f64).
#[inline]
pub fn normal_pair(seed: u64, stream: u64, blk: u64) -> (f64, f64) {
    let w = block(seed, stream, blk);
    let u1 = open_closed((w[0] as u64) | ((w[1] as u64) << 32));
    let u2 = closed_open((w[2] as u64) | ((w[3] as u64) << 32));
    let r = libm::sqrt(-2.0 * libm::log(u1));
    let (s, c) = libm::sincos(core::f64::consts::TAU * u2);
    (r * c, r * s)
}

/// Standard normal number `index` of stream `stream` under `seed`.
///
/// ```
/// use ntk_core::rng::{normal, fill_normal};
/// let mut v = [0.0f64; 5];
/// fill_normal(&mut v, 42, 3, 10);
/// assert_eq!(v[2], normal(42, 3, 12));
/// ```
#[inline]
pub fn normal(seed: u64, stream: u64, index: u64) -> f64 {
    let (a, b) = normal_pair(seed, stream, index / 2);
    if index % 2 == 0 {
        a
    } else {
        b
    }
}

/// `out[i] = normal(seed, stream, offset + i)`, rounded to `T`.
pub fn fill_normal<T: Real>(out: &mut [T], seed: u64, stream: u64, offset: u64) {
    let mut i = 0usize;
    let mut idx = offset;
    // Odd start: the second half of a block.
    if idx % 2 == 1 && !out.is_empty() {
        out[0] = T::from_f64(normal_pair(seed, stream, idx / 2).1);
        i = 1;
        idx += 1;
    }
    while i + 1 < out.len() {
        let (a, b) = normal_pair(seed, stream, idx / 2);
        out[i] = T::from_f64(a);
        out[i + 1] = T::from_f64(b);
        i += 2;
        idx += 2;
    }
    if i < out.len() {
        out[i] = T::from_f64(normal_pair(seed, stream, idx / 2).0);
    }
}

/// Uniform number `index` in [0, 1) of stream `stream` under `seed`.
#[inline]
pub fn uniform(seed: u64, stream: u64, index: u64) -> f64 {
    let w = block(seed, stream, index);
    closed_open((w[0] as u64) | ((w[1] as u64) << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of Philox4x32-10 from Random123's kat_vectors.
    #[test]
    fn philox_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn fill_matches_pointwise_at_any_offset() {
        for off in 0..5u64 {
            let mut v = [0.0f64; 7];
            fill_normal(&mut v, 9, 1, off);
            for (i, x) in v.iter().enumerate() {
                assert_eq!(*x, normal(9, 1, off + i as u64));
            }
        }
    }

    /// Mean, variance, skewness and kurtosis of 10^6 normals within 5 standard errors.
    #[test]
    fn normal_moments() {
        let n = 1_000_000u64;
        let (mut s1, mut s2, mut s3, mut s4) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..n {
            let z = normal(2024, 7, i);
            s1 += z;
            s2 += z * z;
            s3 += z * z * z;
            s4 += z * z * z * z;
        }
        let nf = n as f64;
        let se = |var: f64| 5.0 * libm::sqrt(var / nf);
        assert!((s1 / nf).abs() < se(1.0), "mean {}", s1 / nf);
        assert!((s2 / nf - 1.0).abs() < se(2.0), "var {}", s2 / nf);
        assert!((s3 / nf).abs() < se(15.0), "third moment {}", s3 / nf);
        assert!((s4 / nf - 3.0).abs() < se(96.0), "fourth moment {}", s4 / nf);
    }
}
