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
use crate::forward::{activations, cache_len, forward, forward_scratch, pre_activations};
use crate::real::Real;
use crate::simd::{dot, gram_hadamard, gram_hadamard_scratch, MatMut, MatRef, Part};
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

/// Scratch elements of [`empirical_ntk`]: the forward caches of both input sets, one layer of
/// inputs and two layers of signals per set, and kernel scratch.
pub const fn empirical_ntk_scratch(widths: &[usize], n1: usize, n2: Option<usize>) -> usize {
    let k = widths[widths.len() - 1];
    let m = max_width(widths);
    let mut s = side_len(widths, n1, k, m);
    let mut nmax = n1;
    if let Some(n2) = n2 {
        s += side_len(widths, n2, k, m);
        if n2 > nmax {
            nmax = n2;
        }
    }
    let f = forward_scratch(widths, nmax);
    let b = signals_step_scratch(widths, nmax * k);
    let g = gram_hadamard_scratch(nmax * k, nmax * k, m, k * m);
    s + max3(f, b, g)
}

const fn side_len(widths: &[usize], n: usize, k: usize, m: usize) -> usize {
    cache_len(widths, n) + n * m + 2 * n * k * m
}

const fn max3(a: usize, b: usize, c: usize) -> usize {
    let ab = if a > b { a } else { b };
    if ab > c {
        ab
    } else {
        c
    }
}

/// Splits `buf` into consecutive slices of the given lengths (the rest is returned last).
fn carve<'a, T, const K: usize>(
    mut buf: &'a mut [T],
    lens: [usize; K],
) -> ([&'a mut [T]; K], &'a mut [T]) {
    let mut out: [&'a mut [T]; K] = core::array::from_fn(|_| <&mut [T]>::default());
    for (o, len) in out.iter_mut().zip(lens) {
        let (a, b) = core::mem::take(&mut buf).split_at_mut(len);
        *o = a;
        buf = b;
    }
    (out, buf)
}

/// One input set's buffers during the NTK computation.
struct Side<'a, T> {
    n: usize,
    cache: &'a mut [T],
    act: &'a mut [T],
    cur: &'a mut [T],
    next: &'a mut [T],
}

impl<'a, T: Real> Side<'a, T> {
    fn new(widths: &[usize], n: usize, buf: &'a mut [T]) -> (Self, &'a mut [T]) {
        let k = widths[widths.len() - 1];
        let m = max_width(widths);
        let ([cache, act, cur, next], rest) =
            carve(buf, [cache_len(widths, n), n * m, n * k * m, n * k * m]);
        (Self { n, cache, act, cur, next }, rest)
    }

    /// Layer `i`'s input activations (n x n_i) and output signals (n k x n_{i+1}).
    fn views<'s>(&'s mut self, spec: &Spec<'_>, x: &'s [T], i: usize) -> (MatRef<'s, T>, &'s [T]) {
        let (n_in, n_out) = (spec.widths[i], spec.widths[i + 1]);
        let a = if i == 0 {
            x
        } else {
            let len = self.n * n_in;
            activations(
                spec,
                &mut self.act[..len],
                pre_activations(spec, self.cache, self.n, i - 1),
            );
            &self.act[..len]
        };
        (MatRef::row_major(a, self.n, n_in), &self.cur[..self.n * spec.output_dim() * n_out])
    }

    /// Moves the signals from layer `i`'s output to layer `i - 1`'s output.
    fn step(&mut self, spec: &Spec<'_>, params: &[T], i: usize, gs: &mut [T]) -> Result<(), Error> {
        let k = spec.output_dim();
        let rows = self.n * k;
        let h_prev = pre_activations(spec, self.cache, self.n, i - 1);
        signals_step(
            spec,
            params,
            i,
            &mut self.next[..rows * spec.widths[i]],
            &self.cur[..rows * spec.widths[i + 1]],
            h_prev,
            k,
            gs,
        )?;
        core::mem::swap(&mut self.cur, &mut self.next);
        Ok(())
    }
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

    let (mut s1, rest) = Side::new(widths, n1, scratch);
    let (mut s2, gs) = match x2 {
        Some(_) => {
            let (s, r) = Side::new(widths, n2, rest);
            (Some(s), r)
        }
        None => (None, rest),
    };
    forward(spec, params, x1, n1, s1.cache, gs)?;
    signals_init(&mut s1.cur[..n1 * k * k], n1, k);
    if let (Some(s2), Some(x2)) = (s2.as_mut(), x2) {
        forward(spec, params, x2, n2, s2.cache, gs)?;
        signals_init(&mut s2.cur[..n2 * k * k], n2, k);
    }

    out.fill(T::ZERO);
    let s = T::from_f64(spec.bias_gram_factor());
    for i in (0..spec.layers()).rev() {
        let c = T::from_f64(spec.weight_multiplier(i) * spec.weight_multiplier(i));
        let n_out = widths[i + 1];
        let (a1, d1) = s1.views(spec, x1, i);
        match (s2.as_mut(), x2) {
            (Some(s2), Some(x2)) => {
                let (a2, d2) = s2.views(spec, x2, i);
                accumulate_rows(out, mode, a1, a2, d1, d2, k, n_out, c, s, false, 0, gs)?;
            }
            _ => accumulate_rows(out, mode, a1, a1, d1, d1, k, n_out, c, s, true, 0, gs)?,
        }
        if i > 0 {
            s1.step(spec, params, i, gs)?;
            if let Some(s2) = s2.as_mut() {
                s2.step(spec, params, i, gs)?;
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
