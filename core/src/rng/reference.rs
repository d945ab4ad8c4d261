//! The `libm` Box–Muller that [`super::normal_pair`] replaced: the accuracy reference of the
//! tests and the baseline of the `rng` benchmark. Not bit-compatible with [`super::normal`].

use crate::real::Real;

/// `(r cos 2 pi u2, r sin 2 pi u2)`, `r = sqrt(-2 ln u1)`, with `u1`, `u2` as in
/// [`super::normal_pair`] and `libm`'s `log`, `sqrt`, `sincos` of `fl(2 pi u2)`.
#[inline]
pub fn normal_pair_libm(seed: u64, stream: u64, blk: u64) -> (f64, f64) {
    let w = super::block(seed, stream, blk);
    let u1 = (((w[0] as u64) | ((w[1] as u64) << 32)) >> 11) + 1;
    let u2 = ((w[2] as u64) | ((w[3] as u64) << 32)) >> 11;
    let u1 = u1 as f64 * (1.0 / 9_007_199_254_740_992.0);
    let u2 = u2 as f64 * (1.0 / 9_007_199_254_740_992.0);
    let r = libm::sqrt(-2.0 * libm::log(u1));
    let (s, c) = libm::sincos(core::f64::consts::TAU * u2);
    (r * c, r * s)
}

/// `out[i]` = normal `offset + i` of [`normal_pair_libm`], rounded to `T` (the former scalar
/// `fill_normal`: one Philox block per two outputs).
pub fn fill_normal_libm<T: Real>(out: &mut [T], seed: u64, stream: u64, offset: u64) {
    let mut out = out;
    if offset % 2 == 1 {
        let Some((first, rest)) = out.split_first_mut() else { return };
        *first = T::from_f64(normal_pair_libm(seed, stream, offset / 2).1);
        out = rest;
    }
    let mut blk = offset.div_ceil(2);
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        let (a, b) = normal_pair_libm(seed, stream, blk);
        pair[0] = T::from_f64(a);
        pair[1] = T::from_f64(b);
        blk = blk.wrapping_add(1);
    }
    if let [last] = pairs.into_remainder() {
        *last = T::from_f64(normal_pair_libm(seed, stream, blk).0);
    }
}
