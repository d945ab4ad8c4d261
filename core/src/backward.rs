//! Manual backprop: signals `delta^l = phi'(h^l) .* (c_{l+1} W^{l+1})^T delta^{l+1}`
//! (DESIGN §3), loss gradients dL/df, and parameter gradients.
//!
//! A signal block holds `rows_per_input` rows per input: k rows (one per output) for the NTK,
//! one row (dL/df) for a loss gradient.

use crate::error::{check_len, check_shape, Error, Pass};
use crate::forward::{activations, all_finite, cache_len, pre_activations};
use crate::real::Real;
use crate::simd::{gemm, gemm_scratch, MatMut, MatRef};
use crate::spec::{max_width, Spec};

/// Scratch elements [`signals_step`] needs for `rows` signal rows.
pub const fn signals_step_scratch(widths: &[usize], rows: usize) -> usize {
    let m = max_width(widths);
    gemm_scratch(rows, m, m)
}

/// Readout signals `delta^{L+1}_a = e_a`: `dst` (n k x k) set to n stacked identities.
///
/// # Panics
/// If `dst.len() != n * k * k`.
#[track_caller]
pub fn signals_init<T: Real>(dst: &mut [T], n: usize, k: usize) {
    assert_eq!(dst.len(), n * k * k, "signals_init: shape");
    dst.fill(T::ZERO);
    for r in 0..n * k {
        dst[r * k + r % k] = T::ONE;
    }
}

/// One backprop step through layer `i` (`i >= 1`): from the signals at layer `i`'s output
/// `src` (rows x n_{i+1}) to the signals at layer `i - 1`'s output
/// `dst = (c_w src W_i) .* phi'(h_{i-1})` (rows x n_i), where `h_prev` (rows / rows_per_input
/// x n_i) are the pre-activations of layer `i - 1`.
///
/// # Errors
/// [`Error::NonFinite`] (layer `i`, backward) on overflow; [`Error::ShortBuffer`] on short scratch.
///
/// # Panics
/// If shapes disagree.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn signals_step<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    i: usize,
    dst: &mut [T],
    src: &[T],
    h_prev: &[T],
    rows_per_input: usize,
    scratch: &mut [T],
) -> Result<(), Error> {
    assert!(i >= 1 && i < spec.layers(), "signals_step: layer");
    let (n_in, n_out) = (spec.widths[i], spec.widths[i + 1]);
    let rows = src.len() / n_out;
    assert!(src.len() == rows * n_out && dst.len() == rows * n_in, "signals_step: shapes");
    assert!(rows_per_input > 0 && h_prev.len() * rows_per_input == rows * n_in, "signals_step: h");
    signals_product(spec, params, i, 0, dst, src, scratch)?;
    if !spec.activation.mul_dphi_rows(dst, h_prev, n_in, rows_per_input) {
        return Err(Error::NonFinite { layer: i, pass: Pass::Backward });
    }
    Ok(())
}

/// The product of [`signals_step`] before `.* phi'`, columns `j0..j0 + c` only:
/// `dst = c_w src W_i[:, j0..j0 + c]` (rows x c, row-major), with the bits of the whole
/// product's columns (so threads can split a wide layer's inputs: each reads only its columns
/// of `W_i`).
///
/// # Errors
/// [`Error::ShortBuffer`] on short scratch.
///
/// # Panics
/// If shapes disagree or the columns exceed n_i.
#[track_caller]
pub fn signals_product<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    i: usize,
    j0: usize,
    dst: &mut [T],
    src: &[T],
    scratch: &mut [T],
) -> Result<(), Error> {
    let (n_in, n_out) = (spec.widths[i], spec.widths[i + 1]);
    let rows = src.len() / n_out;
    let c = dst.len().checked_div(rows).unwrap_or(0);
    assert!(
        src.len() == rows * n_out && dst.len() == rows * c && j0 + c <= n_in,
        "signals_product: shapes"
    );
    let (w, _) = spec.layer(params, i);
    let cw = T::from_f64(spec.weight_multiplier(i));
    gemm(
        MatMut::row_major(dst, rows, c),
        cw,
        MatRef::row_major(src, rows, n_out),
        MatRef::strided(&w[j0..], n_out, c, n_in, 1),
        T::ZERO,
        scratch,
    )
}

/// A training loss on the outputs f (n x k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// `(1 / (2 n)) sum_i ||f_i - y_i||^2`.
    Mse,
    /// `-(1 / n) sum_i sum_a y_ia log softmax(f_i)_a` (y one-hot or soft labels).
    CrossEntropy,
}

/// Loss value and its gradient `g = dL/df` (n x k) for outputs `f` and targets `y`.
///
/// ```
/// use ntk_core::backward::{loss_and_gradient, Loss};
/// let (f, y) = ([1.0f64, 3.0], [0.0, 1.0]);
/// let mut g = [0.0; 2];
/// let l = loss_and_gradient(Loss::Mse, &mut g, &f, &y, 2);
/// assert_eq!(l, (1.0 + 4.0) / 4.0);
/// assert_eq!(g, [0.5, 1.0]);
/// ```
///
/// # Panics
/// If the lengths differ or are not a multiple of `n`.
#[track_caller]
pub fn loss_and_gradient<T: Real>(loss: Loss, g: &mut [T], f: &[T], y: &[T], n: usize) -> f64 {
    assert!(
        g.len() == f.len() && f.len() == y.len() && n > 0 && f.len().is_multiple_of(n),
        "loss: shapes"
    );
    let k = f.len() / n;
    let inv_n = 1.0 / n as f64;
    let mut total = 0.0f64;
    match loss {
        Loss::Mse => {
            for ((gi, &fi), &yi) in g.iter_mut().zip(f).zip(y) {
                let r = fi.to_f64() - yi.to_f64();
                total += 0.5 * r * r;
                *gi = T::from_f64(r * inv_n);
            }
        }
        Loss::CrossEntropy => {
            for ((gr, fr), yr) in
                g.chunks_exact_mut(k).zip(f.chunks_exact(k)).zip(y.chunks_exact(k))
            {
                let m = fr.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
                let z: f64 = fr.iter().map(|v| libm::exp(v.to_f64() - m)).sum();
                let lse = m + libm::log(z);
                let ysum: f64 = yr.iter().map(|v| v.to_f64()).sum();
                for ((ga, &fa), &ya) in gr.iter_mut().zip(fr).zip(yr) {
                    let logp = fa.to_f64() - lse;
                    total -= ya.to_f64() * logp;
                    *ga = T::from_f64((libm::exp(logp) * ysum - ya.to_f64()) * inv_n);
                }
            }
        }
    }
    total * inv_n
}

/// Bias gradient of output units `j0 .. j0 + gb.len()` of a layer:
/// `gb[j] = c_b sum_r d[r][j0 + j]` over the rows of the signals `d` (rows x `n_out`,
/// row-major), summed in row order and vectorized across units.
///
/// # Panics
/// If `d` is not whole rows of `n_out` or the units exceed `n_out`.
#[track_caller]
pub fn bias_gradient<T: Real>(gb: &mut [T], d: &[T], n_out: usize, j0: usize, cb: T) {
    assert!(
        n_out > 0 && d.len().is_multiple_of(n_out) && j0 + gb.len() <= n_out,
        "bias_gradient: shapes"
    );
    pulp::Arch::new().dispatch(BiasGradient { gb, d, n_out, j0, cb });
}

/// SIMD body of [`bias_gradient`]: the plain loops, vectorized across units with the target
/// features of the instruction set pulp picks.
struct BiasGradient<'a, T> {
    gb: &'a mut [T],
    d: &'a [T],
    n_out: usize,
    j0: usize,
    cb: T,
}

impl<T: Real> pulp::WithSimd for BiasGradient<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        // Blocks of `B` units summed in registers over all rows, then the tail unit by unit.
        const B: usize = 64;
        let Self { gb, d, n_out, j0, cb } = self;
        let mut blocks = gb.chunks_exact_mut(B);
        let mut j = j0;
        for out in &mut blocks {
            let mut acc = [T::ZERO; B];
            for row in d.chunks_exact(n_out) {
                for (a, &v) in acc.iter_mut().zip(&row[j..j + B]) {
                    *a += v;
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                *o = a * cb;
            }
            j += B;
        }
        for (t, o) in blocks.into_remainder().iter_mut().enumerate() {
            let mut acc = T::ZERO;
            for row in d.chunks_exact(n_out) {
                acc += row[j + t];
            }
            *o = acc * cb;
        }
    }
}

/// Scratch elements [`param_gradient`] needs for `n` inputs.
pub const fn param_gradient_scratch(widths: &[usize], n: usize) -> usize {
    let m = max_width(widths);
    let (a, b) = (gemm_scratch(m, m, n), gemm_scratch(n, m, m));
    3 * n * m + if a > b { a } else { b }
}

/// Parameter gradient `grad` of a loss with `g = dL/df` (n x k), given a filled forward
/// `cache` of the same inputs `x`: `dL/dW_i = c_w delta_i^T x^i`, `dL/db_i = c_b sum_n delta_i`.
///
/// # Errors
/// [`Error::NonFinite`] on overflow; buffer errors for wrong lengths.
#[allow(clippy::too_many_arguments)]
pub fn param_gradient<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    x: &[T],
    n: usize,
    cache: &[T],
    g: &[T],
    grad: &mut [T],
    scratch: &mut [T],
) -> Result<(), Error> {
    let widths = spec.widths;
    check_shape("params", params, spec.param_count())?;
    check_shape("grad", grad, spec.param_count())?;
    check_shape("x", x, n * spec.input_dim())?;
    check_shape("g", g, n * spec.output_dim())?;
    check_len("cache", cache, cache_len(widths, n))?;
    check_len("scratch", scratch, param_gradient_scratch(widths, n))?;
    let m = max_width(widths);
    let (delta, rest) = scratch.split_at_mut(n * m);
    let (delta2, rest) = rest.split_at_mut(n * m);
    let (act, gs) = rest.split_at_mut(n * m);
    let (mut cur, mut next) = (delta, delta2);
    cur[..g.len()].copy_from_slice(g);
    let cb = T::from_f64(spec.bias_multiplier());
    for i in (0..spec.layers()).rev() {
        let (n_in, n_out) = (widths[i], widths[i + 1]);
        let d = &cur[..n * n_out];
        let a: &[T] = if i == 0 {
            x
        } else {
            activations(spec, &mut act[..n * n_in], pre_activations(spec, cache, n, i - 1));
            &act[..n * n_in]
        };
        let (gw, gb) = spec.layer_mut(grad, i);
        let cw = T::from_f64(spec.weight_multiplier(i));
        gemm(
            MatMut::row_major(gw, n_out, n_in),
            cw,
            MatRef::row_major(d, n, n_out).t(),
            MatRef::row_major(a, n, n_in),
            T::ZERO,
            gs,
        )?;
        if spec.bias {
            bias_gradient(gb, d, n_out, 0, cb);
        }
        if i > 0 {
            let h_prev = pre_activations(spec, cache, n, i - 1);
            signals_step(spec, params, i, &mut next[..n * n_in], d, h_prev, 1, gs)?;
            core::mem::swap(&mut cur, &mut next);
        }
    }
    if !all_finite(grad) {
        return Err(Error::NonFinite { layer: 0, pass: Pass::Backward });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bias_gradient;

    /// `bias_gradient` equals the plain row-order sum times c_b bit for bit, for unit ranges
    /// covering register blocks, tails and offsets.
    #[test]
    fn bias_gradient_is_the_row_sum() {
        let (rows, n_out) = (23usize, 150usize);
        let d: std::vec::Vec<f32> =
            (0..rows * n_out).map(|i| crate::rng::normal(5, 0, i as u64) as f32).collect();
        let cb = 0.7f32;
        for (j0, len) in [(0usize, 150usize), (0, 64), (3, 70), (64, 86), (149, 1), (10, 0)] {
            let mut gb = std::vec![f32::NAN; len];
            bias_gradient(&mut gb, &d, n_out, j0, cb);
            for (j, &v) in gb.iter().enumerate() {
                let mut acc = 0.0f32;
                for r in 0..rows {
                    acc += d[r * n_out + j0 + j];
                }
                assert_eq!(v.to_bits(), (acc * cb).to_bits(), "{j0} {len} {j}");
            }
        }
    }
}
