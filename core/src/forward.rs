//! Batched forward pass: `h^{l} = c_w W^{l} x^{l-1} + c_b b^{l}`, `x^l = phi(h^l)` (DESIGN §2).
//!
//! The cache holds every layer's pre-activations `h` (N x n_{i+1} for layer i, layers one
//! after another); post-activations are recomputed from it when needed, so the cache is
//! `N * sum(widths[1..])` values. The last block is the output f (N x k).

use crate::error::{check_len, Error, Pass};
use crate::real::Real;
use crate::simd::{gemm, gemm_bias, gemm_scratch, MatMut, MatRef};
use crate::spec::{max_width, units, Spec};

/// Length of the forward cache for `n` inputs.
pub const fn cache_len(widths: &[usize], n: usize) -> usize {
    n * units(widths)
}

/// Offset of layer `i`'s pre-activations in the cache of `n` inputs.
pub const fn cache_offset(widths: &[usize], n: usize, i: usize) -> usize {
    let mut off = 0;
    let mut j = 1;
    while j <= i {
        off += widths[j];
        j += 1;
    }
    n * off
}

/// Scratch elements [`forward`] needs for `n` inputs.
pub const fn forward_scratch(widths: &[usize], n: usize) -> usize {
    let m = max_width(widths);
    n * m + gemm_scratch(n, m, m)
}

/// Scratch elements [`forward_layer`] needs for `rows` inputs.
pub const fn forward_layer_scratch(widths: &[usize], rows: usize) -> usize {
    let m = max_width(widths);
    gemm_scratch(rows, m, m)
}

/// Layer `i` on a block of inputs: `h = c_w a W_i^T + c_b 1 b_i^T`, `a` rows x n_i,
/// `h` rows x n_{i+1} (row-major).
///
/// # Errors
/// [`Error::NonFinite`] (layer `i + 1`, forward) if `h` has a NaN or infinity;
/// [`Error::ShortBuffer`] if `scratch` is short.
///
/// # Panics
/// If the shapes disagree with the spec.
#[track_caller]
pub fn forward_layer<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    i: usize,
    h: &mut [T],
    a: MatRef<'_, T>,
    scratch: &mut [T],
) -> Result<(), Error> {
    assert!(h.len() == a.rows * spec.widths[i + 1], "forward_layer: shapes");
    forward_layer_cols(spec, params, i, 0, h, a, scratch)
}

/// Columns `j0..j0 + c` of [`forward_layer`] (outputs `j0..j0 + c` of layer `i`) into `h`
/// (rows x c, row-major), with the bits of the whole layer's (so threads can split a wide
/// layer's outputs: each reads only its rows of `W_i`).
///
/// # Errors
/// As [`forward_layer`].
///
/// # Panics
/// If the shapes disagree with the spec or the columns exceed n_{i+1}.
#[track_caller]
pub fn forward_layer_cols<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    i: usize,
    j0: usize,
    h: &mut [T],
    a: MatRef<'_, T>,
    scratch: &mut [T],
) -> Result<(), Error> {
    let (n_in, n_out) = (spec.widths[i], spec.widths[i + 1]);
    let c = h.len().checked_div(a.rows).unwrap_or(0);
    assert!(a.cols == n_in && h.len() == a.rows * c && j0 + c <= n_out, "forward_layer: shapes");
    let (w, b) = spec.layer(params, i);
    let w = &w[j0 * n_in..(j0 + c) * n_in];
    let cw = T::from_f64(spec.weight_multiplier(i));
    let (wt, h_mat) = (MatRef::row_major(w, c, n_in).t(), MatMut::row_major(h, a.rows, c));
    if spec.bias {
        // The bias in the GEMM's store: no pass over `h` before it.
        let cb = T::from_f64(spec.bias_multiplier());
        gemm_bias(h_mat, cw, a, wt, (cb, &b[j0..j0 + c]), scratch)?;
    } else {
        gemm(h_mat, cw, a, wt, T::ZERO, scratch)?;
    }
    if !all_finite(h) {
        return Err(Error::NonFinite { layer: i + 1, pass: Pass::Forward });
    }
    Ok(())
}

/// Writes `phi(h)` of layer `i`'s pre-activations into `out` (the input of layer `i + 1`).
#[inline]
pub fn activations<T: Real>(spec: &Spec<'_>, out: &mut [T], h: &[T]) {
    spec.activation.apply(out, h);
}

/// Checks that every input value is finite.
///
/// # Errors
/// [`Error::NonFiniteInput`] naming `what` and the first bad index.
pub fn check_finite<T: Real>(what: &'static str, x: &[T]) -> Result<(), Error> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFiniteInput { what, index }),
        None => Ok(()),
    }
}

/// Whether every value of `x` is finite: one pass without early exit, vectorized with the
/// widest SIMD instruction set found at run time.
pub fn all_finite<T: Real>(x: &[T]) -> bool {
    pulp::Arch::new().dispatch(AllFinite(x))
}

/// SIMD body of [`all_finite`]: a plain fold that the compiler vectorizes with the target
/// features of the instruction set pulp picks.
struct AllFinite<'a, T>(&'a [T]);

impl<T: Real> pulp::WithSimd for AllFinite<'_, T> {
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> bool {
        let mut bad = false;
        for v in self.0 {
            bad |= !v.is_finite();
        }
        !bad
    }
}

/// Forward pass of `n` inputs `x` (n x n_0, row-major) through the network, filling `cache`
/// with every layer's pre-activations; the output f (n x k) is the cache's last block.
///
/// ```
/// use ntk_core::{forward::*, spec::param_count, Activation, Parameterization, Spec};
/// const W: [usize; 3] = [2, 8, 1];
/// const N: usize = 3;
/// let spec = Spec::new(&W, Activation::Tanh, 1.0, 0.1, true, Parameterization::Ntk).unwrap();
/// let mut params = [0.0f64; param_count(&W, true)];
/// spec.init(&mut params, 7).unwrap();
/// let mut cache = [0.0; cache_len(&W, N)];
/// let mut scratch = [0.0; forward_scratch(&W, N)];
/// let x = [0.1, 0.2, -0.3, 0.4, 0.0, 1.0];
/// forward(&spec, &params, &x, N, &mut cache, &mut scratch).unwrap();
/// let f = output(&spec, &cache, N);
/// assert_eq!(f.len(), N);
/// ```
///
/// # Errors
/// [`Error::NonFiniteInput`] for bad inputs, [`Error::NonFinite`] naming the first layer
/// that overflowed, [`Error::ShortBuffer`] / [`Error::ShapeMismatch`] for wrong buffers.
pub fn forward<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    x: &[T],
    n: usize,
    cache: &mut [T],
    scratch: &mut [T],
) -> Result<(), Error> {
    let widths = spec.widths;
    crate::error::check_shape("x", x, n * spec.input_dim())?;
    crate::error::check_shape("params", params, spec.param_count())?;
    check_len("cache", cache, cache_len(widths, n))?;
    check_len("scratch", scratch, forward_scratch(widths, n))?;
    check_finite("x", x)?;
    let (act, gs) = scratch.split_at_mut(n * max_width(widths));
    for i in 0..spec.layers() {
        let (done, rest) = cache.split_at_mut(cache_offset(widths, n, i));
        let h = &mut rest[..n * widths[i + 1]];
        if i == 0 {
            forward_layer(spec, params, 0, h, MatRef::row_major(x, n, widths[0]), gs)?;
        } else {
            let prev = &done[cache_offset(widths, n, i - 1)..];
            let a = &mut act[..n * widths[i]];
            activations(spec, a, prev);
            forward_layer(spec, params, i, h, MatRef::row_major(a, n, widths[i]), gs)?;
        }
    }
    Ok(())
}

/// The output block f (n x k) of a filled cache.
pub fn output<'c, T>(spec: &Spec<'_>, cache: &'c [T], n: usize) -> &'c [T] {
    let off = cache_offset(spec.widths, n, spec.layers() - 1);
    &cache[off..off + n * spec.output_dim()]
}

/// Layer `i`'s pre-activations (n x n_{i+1}) in a filled cache.
pub fn pre_activations<'c, T>(spec: &Spec<'_>, cache: &'c [T], n: usize, i: usize) -> &'c [T] {
    let off = cache_offset(spec.widths, n, i);
    &cache[off..off + n * spec.widths[i + 1]]
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    /// `all_finite` against a direct check, with one bad value at every position of vector
    /// heads, bodies and tails.
    #[test]
    fn all_finite_finds_every_bad_value() {
        fn check<T: crate::Real>() {
            for len in [0usize, 1, 16, 37] {
                let clean = std::vec![T::ONE; len];
                assert!(all_finite(&clean));
                for pos in 0..len {
                    for bad in [f64::NAN, f64::INFINITY, -f64::INFINITY] {
                        let mut v = clean.clone();
                        v[pos] = T::from_f64(bad);
                        assert!(!all_finite(&v), "{} {len} {pos} {bad}", T::NAME);
                    }
                }
            }
        }
        check::<f32>();
        check::<f64>();
    }
}
