//! Empirical NTK by structured derivatives (DESIGN §3):
//! `Theta = sum_l (D_l D_l^T) .* (c_l^2 A_{l-1} A_{l-1}^T + s^2)`,
//! with `A_{l-1}` the layer inputs, `D_l` the backpropagated signals, `c_l` the weight
//! multiplier and `s` the bias multiplier (`s = 0` without biases). Neural-tangents'
//! `empirical_ntk_fn(..., implementation=NtkImplementation.STRUCTURED_DERIVATIVES)`.
//!
//! Backprop streams over layers: a layer's signals are used for its Gram term and dropped.
//! The Gram terms are fused ([`crate::simd::gram_hadamard`]): no N x N temporary exists.

use crate::backward::{signals_init, signals_step, signals_step_scratch};
use crate::error::{check_len, check_shape, Error, Pass};
use crate::forward::{
    activations, cache_len, cache_offset, check_finite, forward_layer, forward_layer_scratch,
};
use crate::real::Real;
use crate::simd::{dot, gram_hadamard, gram_hadamard_scratch, max, MatMut, MatRef, Part};
use crate::spec::{max_width, Spec};

/// Which entries of the NTK to compute (neural-tangents' `trace_axes` / `diagonal_axes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// `N1 k x N2 k`, entry `[i k + a, j k + b] = Theta_ab(x_i, x'_j)`.
    Full,
    /// `N1 x N2`, the mean over outputs `(1/k) sum_a Theta_aa` (`trace_axes=(-1,)`).
    Trace,
    /// Length N, `(1/k) sum_a Theta_aa(x_i, x'_i)` (requires `N1 == N2`).
    Diagonal,
    /// `N x k x k`, the per-input output blocks `Theta_ab(x_i, x'_i)` (requires `N1 == N2`).
    DiagonalFull,
}

impl OutputMode {
    /// Number of output values for `n1`, `n2` inputs and `k` outputs.
    pub const fn len(self, n1: usize, n2: usize, k: usize) -> usize {
        match self {
            OutputMode::Full => n1 * k * n2 * k,
            OutputMode::Trace => n1 * n2,
            OutputMode::Diagonal => n1,
            OutputMode::DiagonalFull => n1 * k * k,
        }
    }
}

/// Scratch elements of [`empirical_ntk`]: one pool ([`pool_len`]) per input set and kernel
/// scratch.
pub const fn empirical_ntk_scratch(widths: &[usize], n1: usize, n2: Option<usize>) -> usize {
    let k = widths[widths.len() - 1];
    let m = max_width(widths);
    let mut s = pool_len(widths, n1);
    let mut nmax = n1;
    if let Some(n2) = n2 {
        s += pool_len(widths, n2);
        nmax = max(n1, n2);
    }
    let f = forward_layer_scratch(widths, nmax);
    let b = signals_step_scratch(widths, nmax * k);
    let g = gram_hadamard_scratch(nmax * k, nmax * k, m, k * m);
    s + max(max(f, b), g)
}

/// Whether the signals `S_j` sit at the low end of the free part of a pool (else at its top);
/// consecutive layers alternate.
const fn low(layers: usize, j: usize) -> bool {
    (layers - j).is_multiple_of(2)
}

/// Length of the NTK's work buffer (a "pool") for `n` inputs: the forward cache (every
/// layer's pre-activations, at [`cache_offset`]) followed by room for one layer's signals.
///
/// Backprop at layer `i` needs only `h_0 .. h_{i-1}` (the cache below `cache_offset(i)`), the
/// signals `S_{i+1}` at its output and the place where it writes its inputs
/// `A_i = phi(h_{i-1})` and then the signals `S_i` (n k x `widths[i]`) over them; the
/// pre-activations backprop has passed are free. `S_j` sits at `cache_offset(j)` (the low
/// end of that free part) or at the top of the pool, alternating ([`signals_offset`]), so
/// a pool holds the cache plus about one layer of signals. During the forward pass the top
/// holds one layer's inputs ([`forward_views`]).
pub const fn pool_len(widths: &[usize], n: usize) -> usize {
    let layers = widths.len() - 1;
    let k = widths[layers];
    let mut t = cache_len(widths, n) + n * k * k;
    let mut i = 1;
    while i < layers {
        let (l, r) = if low(layers, i) { (i, i + 1) } else { (i + 1, i) };
        t = max(t, cache_offset(widths, n, l) + n * k * (widths[l] + widths[r]));
        i += 1;
    }
    t
}

/// Offset in a pool ([`pool_len`]) of the signals `S_j` at layer `j - 1`'s output
/// (n k x `widths[j]`, `1 <= j <= layers`; `S_layers` are the readout signals). Layer `j`'s
/// inputs `phi(h_{j-1})` are computed there just before backprop overwrites them with `S_j`.
pub const fn signals_offset(widths: &[usize], n: usize, j: usize) -> usize {
    let layers = widths.len() - 1;
    if low(layers, j) {
        cache_offset(widths, n, j)
    } else {
        pool_len(widths, n) - n * widths[layers] * widths[j]
    }
}

/// The signals `S_j` (n k x `widths[j]`) in a pool.
pub fn signals<'p, T>(pool: &'p [T], widths: &[usize], n: usize, j: usize) -> &'p [T] {
    let o = signals_offset(widths, n, j);
    &pool[o..o + n * widths[widths.len() - 1] * widths[j]]
}

/// Layer `i`'s inputs `phi(h_{i-1})` (n x `widths[i]`, `i >= 1`) once written to their place
/// in a pool ([`step_views`]).
pub fn layer_inputs<'p, T>(pool: &'p [T], widths: &[usize], n: usize, i: usize) -> &'p [T] {
    let o = signals_offset(widths, n, i);
    &pool[o..o + n * widths[i]]
}

/// Backprop buffers of layer `i` (`1 <= i < layers`) in a pool: the place of its inputs and
/// then of the signals `S_i` (n k x `widths[i]`, mutable), the signals `S_{i+1}` and the
/// pre-activations `h_{i-1}`.
///
/// # Panics
/// If `pool.len() != pool_len(widths, n)`.
pub fn step_views<'p, T>(
    pool: &'p mut [T],
    widths: &[usize],
    n: usize,
    i: usize,
) -> (&'p mut [T], &'p [T], &'p [T]) {
    assert_eq!(pool.len(), pool_len(widths, n), "step_views: pool");
    let k = widths[widths.len() - 1];
    let (at, len) = (signals_offset(widths, n, i), n * k * widths[i]);
    let (src_at, src_len) = (signals_offset(widths, n, i + 1), n * k * widths[i + 1]);
    let (lo, rest) = pool.split_at_mut(at);
    let (dst, hi) = rest.split_at_mut(len);
    let lo: &[T] = lo;
    let src =
        if src_at >= at { &hi[src_at - at - len..][..src_len] } else { &lo[src_at..][..src_len] };
    (dst, src, &lo[cache_offset(widths, n, i - 1)..cache_offset(widths, n, i)])
}

/// Forward pass buffers of layer `i` in a pool (or any buffer of at least
/// `cache_len(widths, n) + n * max_width(widths)` elements): the pre-activations `h_{i-1}`,
/// the place at the top of the buffer for layer `i`'s inputs `phi(h_{i-1})` (both empty for
/// `i = 0`), and `h_i`.
pub fn forward_views<'p, T>(
    pool: &'p mut [T],
    widths: &[usize],
    n: usize,
    i: usize,
) -> (&'p [T], &'p mut [T], &'p mut [T]) {
    let top = pool.len() - if i == 0 { 0 } else { n * widths[i] };
    let (cache, act) = pool.split_at_mut(top);
    let (done, rest) = cache.split_at_mut(cache_offset(widths, n, i));
    let prev = if i == 0 { &done[..0] } else { &done[cache_offset(widths, n, i - 1)..] };
    (prev, act, &mut rest[..n * widths[i + 1]])
}

/// Forward pass of `n` inputs into a pool (one thread).
fn forward_pool<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    x: &[T],
    n: usize,
    pool: &mut [T],
    gs: &mut [T],
) -> Result<(), Error> {
    check_finite("x", x)?;
    for i in 0..spec.layers() {
        let (prev, act, h) = forward_views(pool, spec.widths, n, i);
        let a: &[T] = if i == 0 {
            x
        } else {
            activations(spec, act, prev);
            act
        };
        forward_layer(spec, params, i, h, MatRef::row_major(a, n, spec.widths[i]), gs)?;
    }
    let k = spec.output_dim();
    let o = signals_offset(spec.widths, n, spec.layers());
    signals_init(&mut pool[o..o + n * k * k], n, k);
    Ok(())
}

/// Layer `i`'s inputs (`x` for `i = 0`, else prepared by [`prepare`]) and output signals.
fn layer_views<'p, T: Real>(
    widths: &[usize],
    pool: &'p [T],
    x: &'p [T],
    n: usize,
    i: usize,
) -> (MatRef<'p, T>, &'p [T]) {
    let a = if i == 0 { x } else { layer_inputs(pool, widths, n, i) };
    (MatRef::row_major(a, n, widths[i]), signals(pool, widths, n, i + 1))
}

/// Layer `i`'s inputs `phi(h_{i-1})` (`i >= 1`) into their place in a pool.
fn prepare<T: Real>(spec: &Spec<'_>, pool: &mut [T], n: usize, i: usize) {
    let (dst, _, h) = step_views(pool, spec.widths, n, i);
    activations(spec, &mut dst[..n * spec.widths[i]], h);
}

/// One backprop step through layer `i` in a pool: `S_{i+1}` to `S_i`.
fn step<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    pool: &mut [T],
    n: usize,
    i: usize,
    gs: &mut [T],
) -> Result<(), Error> {
    let (dst, src, h) = step_views(pool, spec.widths, n, i);
    signals_step(spec, params, i, dst, src, h, spec.output_dim(), gs)
}

/// The empirical NTK of the network `params` between `x1` (n1 x n_0) and `x2` (n2 x n_0;
/// `None` means `x2 = x1`, computed with symmetry), written to `out`
/// (`mode.len(n1, n2, k)` values, row-major).
///
/// ```
/// use ntk_core::{ntk::*, spec::param_count, Activation, Parameterization, Spec};
/// const W: [usize; 3] = [3, 16, 1];
/// let spec = Spec::new(&W, Activation::Relu, 2.0, 0.1, true, Parameterization::Ntk).unwrap();
/// let mut params = [0.0f64; param_count(&W, true)];
/// spec.init(&mut params, 1).unwrap();
/// let x = [1.0, 0.0, 0.5, -0.2, 0.3, 0.9];
/// let mut theta = [0.0; 4];
/// let mut scratch = [0.0; empirical_ntk_scratch(&W, 2, None)];
/// empirical_ntk(&spec, &params, &mut theta, &x, None, OutputMode::Trace, &mut scratch).unwrap();
/// assert_eq!(theta[1], theta[2]);
/// assert!(theta[0] > 0.0);
/// ```
///
/// # Errors
/// Buffer errors for wrong lengths; [`Error::NonFiniteInput`] for bad inputs;
/// [`Error::NonFinite`] naming the layer and pass where values overflowed.
#[allow(clippy::too_many_arguments)]
pub fn empirical_ntk<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    out: &mut [T],
    x1: &[T],
    x2: Option<&[T]>,
    mode: OutputMode,
    scratch: &mut [T],
) -> Result<(), Error> {
    let widths = spec.widths;
    let (d, k) = (spec.input_dim(), spec.output_dim());
    check_shape("params", params, spec.param_count())?;
    let (n1, n2) = input_counts(d, x1, x2, mode)?;
    check_shape("out", out, mode.len(n1, n2, k))?;
    check_len("scratch", scratch, empirical_ntk_scratch(widths, n1, x2.map(|_| n2)))?;

    let (p1, rest) = scratch.split_at_mut(pool_len(widths, n1));
    let (mut p2, gs) = match x2 {
        Some(_) => {
            let (p, r) = rest.split_at_mut(pool_len(widths, n2));
            (Some(p), r)
        }
        None => (None, rest),
    };
    forward_pool(spec, params, x1, n1, p1, gs)?;
    if let (Some(p2), Some(x2)) = (p2.as_deref_mut(), x2) {
        forward_pool(spec, params, x2, n2, p2, gs)?;
    }

    out.fill(T::ZERO);
    let s = T::from_f64(spec.bias_gram_factor());
    for i in (0..spec.layers()).rev() {
        let c = T::from_f64(spec.weight_multiplier(i) * spec.weight_multiplier(i));
        let n_out = widths[i + 1];
        if i > 0 {
            prepare(spec, p1, n1, i);
            if let Some(p2) = p2.as_deref_mut() {
                prepare(spec, p2, n2, i);
            }
        }
        let (a1, d1) = layer_views(widths, p1, x1, n1, i);
        match (p2.as_deref(), x2) {
            (Some(p2), Some(x2)) => {
                let (a2, d2) = layer_views(widths, p2, x2, n2, i);
                accumulate_rows(out, mode, a1, a2, d1, d2, k, n_out, c, s, false, 0, gs)?;
            }
            _ => accumulate_rows(out, mode, a1, a1, d1, d1, k, n_out, c, s, true, 0, gs)?,
        }
        if i > 0 {
            step(spec, params, p1, n1, i, gs)?;
            if let Some(p2) = p2.as_deref_mut() {
                step(spec, params, p2, n2, i, gs)?;
            }
        }
    }
    finish(out, mode, n1, k, x2.is_none())
}

/// Numbers of inputs `(n1, n2)` of `x1` and `x2` (`None`: `x2 = x1`) with `d` features each.
///
/// # Errors
/// [`Error::ShapeMismatch`] when a length is not a multiple of `d`, or when a diagonal mode
/// gets sets of different sizes.
pub(crate) fn input_counts<T>(
    d: usize,
    x1: &[T],
    x2: Option<&[T]>,
    mode: OutputMode,
) -> Result<(usize, usize), Error> {
    if !x1.len().is_multiple_of(d) {
        return Err(Error::ShapeMismatch { what: "x1", expected: x1.len() / d * d, got: x1.len() });
    }
    let n1 = x1.len() / d;
    let n2 = match x2 {
        Some(x2) if !x2.len().is_multiple_of(d) => {
            return Err(Error::ShapeMismatch {
                what: "x2",
                expected: x2.len() / d * d,
                got: x2.len(),
            })
        }
        Some(x2) => x2.len() / d,
        None => n1,
    };
    if matches!(mode, OutputMode::Diagonal | OutputMode::DiagonalFull) && n1 != n2 {
        return Err(Error::ShapeMismatch { what: "x2", expected: n1 * d, got: n2 * d });
    }
    Ok((n1, n2))
}

/// Completes an accumulated kernel: mirrors a symmetric one ([`mirror`]), takes the mean over
/// outputs in `trace` / `diagonal` mode, and checks that every value is finite.
///
/// # Errors
/// [`Error::NonFinite`] (pass `Ntk`) if a value overflowed.
pub fn finish<T: Real>(
    out: &mut [T],
    mode: OutputMode,
    n1: usize,
    k: usize,
    symmetric: bool,
) -> Result<(), Error> {
    if symmetric {
        mirror(out, mode, n1, k);
    }
    if matches!(mode, OutputMode::Trace | OutputMode::Diagonal) && k > 1 {
        let inv = T::ONE / T::from_f64(k as f64);
        out.iter_mut().for_each(|v| *v *= inv);
    }
    if out.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { layer: 0, pass: Pass::Ntk });
    }
    Ok(())
}

/// Adds one layer's term `(c A1 A2^T + s) .* (D1 D2^T)`, arranged per `mode`, to a band of
/// output rows. `d1` holds `a1.rows * k` rows of length `n_out` (k per input), likewise `d2`;
/// `a1` / `d1` are the inputs `row0..row0 + a1.rows` of the first set and `out` holds exactly
/// those rows of the output (all columns, row-major), while `a2` / `d2` are the whole second
/// set (`row0 = 0` and all rows: the whole output). Every entry gets the same value whatever
/// the band, so bands can run on different threads with bit-identical results. With
/// `symmetric` (A1 = A2, D1 = D2) only the upper part needed by [`mirror`] is filled.
///
/// # Errors
/// [`Error::ShortBuffer`] if `scratch` is short.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_rows<T: Real>(
    out: &mut [T],
    mode: OutputMode,
    a1: MatRef<'_, T>,
    a2: MatRef<'_, T>,
    d1: &[T],
    d2: &[T],
    k: usize,
    n_out: usize,
    c: T,
    s: T,
    symmetric: bool,
    row0: usize,
    scratch: &mut [T],
) -> Result<(), Error> {
    let (n1, n2) = (a1.rows, a2.rows);
    if n1 == 0 || n2 == 0 {
        // Nothing to add; strided output views below would start past the empty `out`.
        return Ok(());
    }
    // Symmetric: only columns from row0 on are needed (the rest is mirrored).
    let col0 = if symmetric { row0 } else { 0 };
    let (a2_all, d2_all) = (a2, d2);
    let (a2, d2) = (a2.rows(col0, n2 - col0), &d2[col0 * k * n_out..]);
    let m2 = n2 - col0;
    let part = if symmetric { Part::Upper } else { Part::Full };
    match mode {
        OutputMode::Trace => gram_hadamard(
            MatMut::strided(&mut out[col0..], n1, m2, n2, 1),
            a1,
            a2,
            MatRef::row_major(d1, n1, k * n_out),
            MatRef::row_major(d2, m2, k * n_out),
            c,
            s,
            part,
            scratch,
        ),
        OutputMode::Full => {
            let nk2 = n2 * k;
            for a in 0..k {
                for b in 0..k {
                    if symmetric && b < a {
                        continue;
                    }
                    // Off-diagonal output blocks (a < b) are mirrored whole: all columns.
                    let (c0, a2, d2, part) =
                        if a == b { (col0, a2, d2, part) } else { (0, a2_all, d2_all, Part::Full) };
                    let m2 = n2 - c0;
                    gram_hadamard(
                        MatMut::strided(&mut out[a * nk2 + c0 * k + b..], n1, m2, k * nk2, k),
                        a1,
                        a2,
                        MatRef::strided(&d1[a * n_out..], n1, n_out, k * n_out, 1),
                        MatRef::strided(&d2[b * n_out..], m2, n_out, k * n_out, 1),
                        c,
                        s,
                        part,
                        scratch,
                    )?;
                }
            }
            Ok(())
        }
        OutputMode::Diagonal | OutputMode::DiagonalFull => {
            // Input row0 + i of set 1 pairs with input row0 + i of set 2 (local row i of a2).
            let a2 = if symmetric { a2 } else { a2.rows(row0, n1) };
            let d2 = if symmetric { d2 } else { &d2[row0 * k * n_out..] };
            for i in 0..n1 {
                let ra1 = &a1.data[i * a1.rs..i * a1.rs + a1.cols];
                let ra2 = &a2.data[i * a2.rs..i * a2.rs + a2.cols];
                let ga = c * dot(ra1, ra2) + s;
                let r1 = &d1[i * k * n_out..(i + 1) * k * n_out];
                let r2 = &d2[i * k * n_out..(i + 1) * k * n_out];
                if mode == OutputMode::Diagonal {
                    out[i] += ga * dot(r1, r2);
                } else {
                    for a in 0..k {
                        for b in 0..k {
                            let da = &r1[a * n_out..(a + 1) * n_out];
                            let db = &r2[b * n_out..(b + 1) * n_out];
                            out[(i * k + a) * k + b] += ga * dot(da, db);
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

/// Completes a symmetric kernel filled by [`accumulate_rows`] with `symmetric = true` (any square
/// matrix whose upper triangle is filled, with `Trace` and `k = 1`).
pub fn mirror<T: Real>(out: &mut [T], mode: OutputMode, n: usize, k: usize) {
    let dim = match mode {
        OutputMode::Trace => n,
        OutputMode::Full => n * k,
        _ => return,
    };
    let kk = if mode == OutputMode::Full { k } else { 1 };
    if kk == 1 {
        // Square blocks, so that the transposed reads stay in cache.
        const B: usize = 32;
        for ib in (0..dim).step_by(B) {
            for jb in (0..=ib).step_by(B) {
                for i in ib..(ib + B).min(dim) {
                    for j in jb..(jb + B).min(i) {
                        out[i * dim + j] = out[j * dim + i];
                    }
                }
            }
        }
        return;
    }
    // Entry (p, q) with p = (i, a), q = (j, b) was computed iff a < b, or a == b and j >= i.
    for p in 0..dim {
        for q in 0..dim {
            let (i, a, j, b) = (p / kk, p % kk, q / kk, q % kk);
            if a > b || (a == b && j < i) {
                out[p * dim + q] = out[q * dim + p];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every buffer a layer of the NTK reads or writes lies inside the pool, above the
    /// pre-activations still needed, and apart from the other buffers of that layer.
    #[test]
    fn pool_layout_keeps_live_buffers_apart() {
        let shapes: [&[usize]; 9] = [
            &[3, 1],
            &[3, 5, 1],
            &[4, 16, 16, 2],
            &[64, 1024, 1024, 1024, 1],
            &[5, 2, 9, 3],
            &[7, 30, 4, 20, 6],
            &[2, 8, 8, 8, 8, 8, 3],
            &[10, 3, 40, 1],
            &[6, 40, 3, 3, 12],
        ];
        for w in shapes {
            for n in [0, 1, 3, 8] {
                let (layers, t) = (w.len() - 1, pool_len(w, n));
                let k = w[layers];
                let slot = |j: usize| {
                    let o = signals_offset(w, n, j);
                    o..o + n * k * w[j]
                };
                assert!(slot(layers).start >= cache_len(w, n) && slot(layers).end <= t);
                for i in 1..layers {
                    let (dst, src) = (slot(i), slot(i + 1));
                    let live = cache_offset(w, n, i);
                    assert!(
                        dst.end <= t && dst.start >= live && src.start >= live,
                        "{w:?} {n} {i}"
                    );
                    assert!(dst.end <= src.start || src.end <= dst.start, "{w:?} {n} {i}");
                    assert!(t - n * w[i] >= cache_offset(w, n, i + 1), "{w:?} {n} {i}: forward");
                }
            }
        }
    }
}
