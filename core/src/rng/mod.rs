//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC 2011) and standard normals.
//!
//! Every number is a pure function of `(seed, stream, index)`: a weight can be regenerated
//! instead of stored, and results are bit-identical across runs, platforms and thread counts.
//! Normal number `i` of a stream comes from Philox block `i / 2` through Box–Muller in f64
//! (so an f32 network is the rounding of the f64 one).

use crate::real::Real;

mod lanes;
pub mod reference;

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

/// Uniform in [0, 1) from 64 random bits.
#[inline(always)]
fn closed_open(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// The two standard normals of Philox block `blk` (Box–Muller in f64):
/// `u1 = (floor((w0 + 2^32 w1) / 2^11) + 1) 2^-53` in (0, 1],
/// `u2 = floor((w2 + 2^32 w3) / 2^11) 2^-53` in [0, 1), `r = sqrt(-2 ln u1)`,
/// result `(r cos 2 pi u2, r sin 2 pi u2)`.
///
/// `ln`, `sin` and `cos` are this crate's own fixed sequences of IEEE `+ - * /` (musl's `log`,
/// bit-equal to `libm::log`; fdlibm's sin/cos kernels after an exact reduction of `2 pi u2`),
/// so the bits are the same on every platform and equal to [`fill_normal`]'s SIMD path. They
/// are within 2 ulp of libm's sin/cos of the exact angle, and within `3.3 eps r` of the plain
/// libm Box–Muller ([`reference::normal_pair_libm`]), which first rounds `2 pi u2`.
#[inline]
pub fn normal_pair(seed: u64, stream: u64, blk: u64) -> (f64, f64) {
    let (mut z0, mut z1) = ([0.0], [0.0]);
    lanes::box_muller(pulp::Scalar, seed, stream, blk, &mut z0, &mut z1);
    (z0[0], z1[0])
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
    if index.is_multiple_of(2) {
        a
    } else {
        b
    }
}

/// `out[i] = normal(seed, stream, offset + i)`, rounded to `T`, bit for bit.
///
/// Runs 16 Philox blocks at a time on the widest SIMD pulp finds at run time (AVX-512, AVX2,
/// NEON, ...), then the scalar path for the ends.
pub fn fill_normal<T: Real>(out: &mut [T], seed: u64, stream: u64, offset: u64) {
    let mut out = out;
    // Odd start: the second half of a block.
    if offset % 2 == 1 {
        let Some((first, rest)) = out.split_first_mut() else { return };
        *first = T::from_f64(normal_pair(seed, stream, offset / 2).1);
        out = rest;
    }
    let blk = offset.div_ceil(2);
    let split = out.len() - out.len() % (2 * BLOCKS);
    let (body, tail) = out.split_at_mut(split);
    if !body.is_empty() {
        pulp::Arch::new().dispatch(FillNormal { out: body, seed, stream, blk });
    }
    let blk = blk.wrapping_add((split / 2) as u64);
    let mut pairs = tail.chunks_exact_mut(2);
    let mut b = blk;
    for pair in &mut pairs {
        let (a, c) = normal_pair(seed, stream, b);
        pair[0] = T::from_f64(a);
        pair[1] = T::from_f64(c);
        b = b.wrapping_add(1);
    }
    if let [last] = pairs.into_remainder() {
        *last = T::from_f64(normal_pair(seed, stream, b).0);
    }
}

/// Philox blocks per SIMD step of [`fill_normal`] (`2 * BLOCKS` normals).
const BLOCKS: usize = 16;

/// The SIMD body of [`fill_normal`]: `out.len()` is a multiple of `2 * BLOCKS` and `out[0]` is
/// the first normal of block `blk`.
struct FillNormal<'a, T> {
    out: &'a mut [T],
    seed: u64,
    stream: u64,
    blk: u64,
}

impl<T: Real> pulp::WithSimd for FillNormal<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Self { out, seed, stream, mut blk } = self;
        let (mut z0, mut z1) = ([0.0; BLOCKS], [0.0; BLOCKS]);
        for chunk in out.chunks_exact_mut(2 * BLOCKS) {
            lanes::box_muller(simd, seed, stream, blk, &mut z0, &mut z1);
            for l in 0..BLOCKS {
                chunk[2 * l] = T::from_f64(z0[l]);
                chunk[2 * l + 1] = T::from_f64(z1[l]);
            }
            blk = blk.wrapping_add(BLOCKS as u64);
        }
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

    /// The SIMD batch equals the scalar `normal()` bit for bit, f64 and f32, at odd and even
    /// offsets (including near 2^64) and every length 0..70 plus a few long ones.
    #[test]
    fn fill_matches_pointwise_at_any_offset() {
        let offsets = [0u64, 1, 2, 3, 5, 16, 17, 31, 1 << 33, (1 << 33) + 1, u64::MAX - 2001];
        let lens = (0..70).chain([127, 128, 129, 1000, 1001]);
        let mut v = std::vec![0.0f64; 1001];
        let mut w = std::vec![0.0f32; 1001];
        for len in lens {
            for &off in &offsets {
                for (seed, stream) in [(9u64, 1u64), (u64::MAX, u64::MAX - 1), (0, 1 << 40)] {
                    fill_normal(&mut v[..len], seed, stream, off);
                    fill_normal(&mut w[..len], seed, stream, off);
                    for i in 0..len {
                        let z = normal(seed, stream, off.wrapping_add(i as u64));
                        assert_eq!(v[i].to_bits(), z.to_bits(), "f64 len {len} off {off} i {i}");
                        assert_eq!(w[i].to_bits(), (z as f32).to_bits(), "f32 len {len} off {off}");
                    }
                }
            }
        }
    }

    /// Every pulp dispatch level the machine has (scalar, AVX2, AVX-512, ...) gives the same
    /// bits as the scalar path.
    #[test]
    fn every_simd_level_matches_scalar() {
        fn run<S: pulp::Simd>(simd: S, out: &mut [f64], blk: u64) {
            simd.vectorize(FillNormal { out, seed: 77, stream: 5, blk });
        }
        let n = 64 * BLOCKS;
        let expect: std::vec::Vec<f64> = (0..n as u64).map(|i| normal(77, 5, 200 + i)).collect();
        let mut v = std::vec![0.0f64; n];
        run(pulp::Scalar, &mut v, 100);
        assert_eq!(v, expect, "pulp::Scalar");
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(simd) = pulp::x86::V3::try_new() {
                v.fill(0.0);
                run(simd, &mut v, 100);
                assert_eq!(v, expect, "V3");
            }
            if let Some(simd) = pulp::x86::V4::try_new() {
                v.fill(0.0);
                run(simd, &mut v, 100);
                assert_eq!(v, expect, "V4");
            }
        }
    }

    /// Distance in ulps between two finite doubles of the same sign (or both tiny).
    fn ulps(a: f64, b: f64) -> u64 {
        let key = |x: f64| {
            let b = x.to_bits() as i64;
            if b < 0 {
                i64::MIN - b
            } else {
                b
            }
        };
        key(a).abs_diff(key(b))
    }

    /// `(sin, cos)(2 pi n 2^-53)` by libm on an accurately reduced angle: `n = j 2^51 + m`,
    /// `a = m pi 2^-52` as a double-double (exact product by FMA, plus pi's tail), then
    /// `sin(a_hi + a_lo) = sin a_hi + a_lo cos a_hi`.
    fn sincos_turn_ref(n: u64) -> (f64, f64) {
        const PI_LO: f64 = 1.224_646_799_147_353_2e-16;
        let j = (n + (1 << 50)) >> 51;
        let m = n.wrapping_sub(j << 51) as i64 as f64;
        let p = m * core::f64::consts::PI;
        let e = m.mul_add(core::f64::consts::PI, -p) + m * PI_LO;
        let (hi, lo) =
            ((p + e) / 4_503_599_627_370_496.0, (e - ((p + e) - p)) / 4_503_599_627_370_496.0);
        let (sh, ch) = libm::sincos(hi);
        let (sa, ca) = (sh + lo * ch, ch - lo * sh);
        match j & 3 {
            0 => (sa, ca),
            1 => (ca, -sa),
            2 => (-sa, -ca),
            _ => (-ca, sa),
        }
    }

    /// Accuracy over 10^6 normals. Against libm's sincos of an accurately reduced angle
    /// ([`sincos_turn_ref`]; `r` is bit-identical since `ln` equals `libm::log`) the error is a
    /// few ulps of the result. Against the plain `libm` Box–Muller the difference is bounded
    /// by `|dz| <= 4 eps r`: libm first rounds the angle `fl(2 pi u2)`, an absolute error of
    /// up to `2 pi 2^-54`, which dominates near the zeros of sin and cos.
    #[test]
    fn accuracy_vs_libm() {
        let (mut max_ulp, mut max_ulp_bm, mut max_rel_r) = (0u64, 0u64, 0.0f64);
        for blk in 0..500_000u64 {
            let (a, b) = normal_pair(3, 1, blk);
            let (la, lb) = reference::normal_pair_libm(3, 1, blk);
            let w = block(3, 1, blk);
            let u1 = ((((w[0] as u64) | ((w[1] as u64) << 32)) >> 11) + 1) as f64;
            let r = libm::sqrt(-2.0 * libm::log(u1 * (1.0 / 9_007_199_254_740_992.0)));
            let (s, c) = sincos_turn_ref(((w[2] as u64) | ((w[3] as u64) << 32)) >> 11);
            for (x, y, l) in [(a, r * c, la), (b, r * s, lb)] {
                max_ulp = max_ulp.max(ulps(x, y));
                max_ulp_bm = max_ulp_bm.max(ulps(x, l));
                max_rel_r = max_rel_r.max((x - l).abs() / r);
            }
        }
        std::println!(
            "max ulp vs libm on exact angle: {max_ulp}; vs libm Box-Muller: {max_ulp_bm} ulp, \
             max |dz| / r = {:.2} eps",
            max_rel_r / f64::EPSILON
        );
        assert!(max_ulp <= 3, "max ulp {max_ulp}");
        assert!(max_rel_r <= 4.0 * f64::EPSILON, "max |dz|/r {max_rel_r:e}");
    }

    /// The own `ln` is bit-identical to `libm::log` on [2^-53, 1].
    #[test]
    fn ln_equals_libm() {
        for blk in 0..200_000u64 {
            let w = block(11, 2, blk);
            let m = ((((w[0] as u64) | ((w[1] as u64) << 32)) >> 11) + 1) >> (blk % 53);
            let x = m.max(1) as f64 * (1.0 / 9_007_199_254_740_992.0);
            assert_eq!(lanes::ln_unit(x).to_bits(), libm::log(x).to_bits(), "x = {x:e}");
        }
        for x in [1.0, 0.5, 1.0 / 9_007_199_254_740_992.0, 1.0 - f64::EPSILON / 2.0] {
            assert_eq!(lanes::ln_unit(x).to_bits(), libm::log(x).to_bits(), "x = {x:e}");
        }
    }

    /// sin/cos of an exactly reduced turn against libm on exactly representable angles near
    /// the quadrant boundaries and at random.
    #[test]
    fn sincos_turn_vs_libm() {
        let mut max = 0u64;
        for blk in 0..200_000u64 {
            let w = block(12, 3, blk);
            let n = (((w[2] as u64) | ((w[3] as u64) << 32)) >> 11) >> (blk % 40);
            // Reference on the exact angle: n small enough that TAU * n 2^-53 is accurate.
            let t = core::f64::consts::TAU * (n as f64 * (1.0 / 9_007_199_254_740_992.0));
            let (s, c) = lanes::sincos_turn(n);
            let (rs, rc) = libm::sincos(t);
            if t < 0.5 {
                max = max.max(ulps(s, rs)).max(ulps(c, rc));
            }
        }
        assert!(max <= 2, "max ulp {max}");
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
