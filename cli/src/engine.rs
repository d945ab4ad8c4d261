//! The parallel empirical NTK: the core's layer kernels over fixed row blocks and output row
//! bands, run by rayon. Block boundaries do not depend on the thread count and every kernel
//! gives an entry the same value wherever it sits, so results are bit-identical for any
//! `--threads`.

use std::sync::Mutex;

use ntk_core::backward::{signals_init, signals_product, signals_step};
use ntk_core::error::{Error, Pass};
use ntk_core::forward::{activations, cache_len, check_finite, forward_layer, forward_layer_cols};
use ntk_core::ntk::{
    accumulate_rows, finish, forward_views, layer_inputs, pool_len, signals, signals_offset,
    step_views, OutputMode,
};
use ntk_core::simd::{gemm_scratch, gram_hadamard_scratch, MatRef};
use ntk_core::spec::max_width;
use ntk_core::{Real, Spec};
use rayon::prelude::*;

use crate::error::CliResult;
use crate::recycle;
use crate::team::{with_pool_team, Team};

/// Inputs per forward / backward work item: one item per thread, so each thread packs a
/// layer's weights once (each kernel gives an entry the same value whatever block it is in,
/// so the split never changes results).
pub fn row_block(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads()).max(8)
}

/// Row bands `(row0, rows)` of the Gram work items: one per thread (the Gram kernel packs the
/// column panels of each call, so fewer, taller bands pack less: W2 `f64`, 1 thread, Gram
/// phase 17.1 -> 14.6 ms against three bands per thread). In the symmetric
/// case band `b` holds the rows whose upper-triangle work `sum_i (n - i)` falls in the `b`-th
/// equal share (rounded to multiples of 4 rows), so the first bands are thinner; otherwise the
/// bands are equal. Entries do not depend on the bands, so neither do results.
pub fn bands(n: usize, symmetric: bool) -> Vec<(usize, usize)> {
    let count = rayon::current_num_threads().min(n.div_ceil(8)).max(1);
    let total = (n * (n + 1) / 2) as f64;
    let mut cuts = vec![0];
    for b in 1..count {
        let r = if symmetric {
            // Solve n r - r (r - 1) / 2 = total * b / count for r (work of rows 0..r).
            let w = total * b as f64 / count as f64;
            let nf = n as f64 + 0.5;
            nf - (nf * nf - 2.0 * w).max(0.0).sqrt()
        } else {
            (n * b) as f64 / count as f64
        };
        let r = ((r / 4.0).round() as usize * 4).min(n);
        if r > *cuts.last().unwrap_or(&0) {
            cuts.push(r);
        }
    }
    cuts.push(n);
    cuts.dedup();
    cuts.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

/// One scratch buffer per rayon thread of the current pool, taken from [`recycle`] once per
/// call (a work item uses its thread's; in a fresh buffer, pages a kernel never touches are
/// never mapped in) and given back when dropped.
pub(crate) struct PerThread<T: Real>(Vec<Mutex<Vec<T>>>);

impl<T: Real> PerThread<T> {
    /// `len` elements for each thread of the current pool.
    pub(crate) fn new(len: usize) -> Self {
        Self((0..rayon::current_num_threads()).map(|_| Mutex::new(recycle::take(len))).collect())
    }

    /// Threads of the pool it was made for.
    pub(crate) fn threads(&self) -> usize {
        self.0.len()
    }

    /// Runs `f` with the calling thread's buffer (by its index in the current
    /// [`crate::team::Team`], else in the rayon pool).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> R {
        let i = crate::team::current_index().or_else(rayon::current_thread_index).unwrap_or(0)
            % self.0.len();
        f(&mut self.0[i].lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<T: Real> Drop for PerThread<T> {
    fn drop(&mut self) {
        for m in self.0.drain(..) {
            recycle::give(m.into_inner().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// GEMM scratch of a forward layer `i` and of backprop through it for `n` inputs with `k`
/// signal rows each, in row blocks or column bands ([`col_bands`]; the exact shapes, not the
/// widest layer's).
fn gemm_scratch_len(widths: &[usize], n: usize, k: usize) -> usize {
    // A product with `width` outputs, `r` rows per input and inner dimension `kk`: all rows
    // against one column band, or one row block against all columns.
    let product = |r: usize, width: usize, kk: usize| match col_bands(n, width) {
        Some(b) => gemm_scratch(n * r, b[0].1, kk),
        None => gemm_scratch(row_block(n) * r, width, kk),
    };
    (0..widths.len() - 1)
        .map(|i| {
            let (n_in, n_out) = (widths[i], widths[i + 1]);
            let back = if i > 0 { product(k, n_in, n_out) } else { 0 };
            product(1, n_out, n_in).max(back)
        })
        .max()
        .unwrap_or(0)
}

/// Column bands `(j0, cols)`, one per thread, of a layer product with `width` outputs for `n`
/// inputs, when it is split by columns instead of row blocks: with several threads and few
/// rows per thread against a wide layer (`8 rows <= width`, as W4's 64 rows per thread
/// against width 2048), so that each thread reads its share of the weights instead of all of
/// them. Bands are multiples of 16 columns (whole cache lines of `f32`).
fn col_bands(n: usize, width: usize) -> Option<Vec<(usize, usize)>> {
    let t = rayon::current_num_threads();
    if t < 2 || 8 * row_block(n) > width {
        return None;
    }
    let c = width.div_ceil(t).next_multiple_of(16);
    Some((0..width).step_by(c).map(|j| (j, c.min(width - j))).collect())
}

/// `dst` (`rows x width`, row-major) by column bands: `f(j0, block)` fills the `rows x cols`
/// row-major block of each band (bands in parallel), then the blocks are copied into `dst` in
/// row blocks of `rb` rows (in parallel) and `g(r0, block of dst)` finishes each.
fn by_columns<T: Real, E: Send>(
    team: &Team,
    bands: &[(usize, usize)],
    (rows, width, rb): (usize, usize, usize),
    dst: &mut [T],
    f: impl Fn(usize, &mut [T]) -> Result<(), E> + Sync,
    g: impl Fn(usize, &mut [T]) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let mut tmp = recycle::take::<T>(rows * width);
    let mut rest = tmp.as_mut_slice();
    let mut parts = Vec::with_capacity(bands.len());
    for &(j0, c) in bands {
        let (part, r) = std::mem::take(&mut rest).split_at_mut(rows * c);
        parts.push((j0, part));
        rest = r;
    }
    team.try_for_each(parts, |(j0, part)| f(j0, part))?;
    let tmp_ref = &tmp;
    team.try_for_each(dst.chunks_mut(rb * width).enumerate(), |(b, d)| {
        let r0 = b * rb;
        let mut off = 0;
        for &(j0, c) in bands {
            let part = &tmp_ref[off + r0 * c..];
            for (drow, prow) in d.chunks_exact_mut(width).zip(part.chunks_exact(c)) {
                drow[j0..j0 + c].copy_from_slice(prow);
            }
            off += rows * c;
        }
        g(r0, d)
    })?;
    recycle::give(tmp);
    Ok(())
}

/// Forward pass of `n` inputs into `pool` ([`ntk_core::ntk::pool_len`], or the cache plus
/// `n * max_width` for the inputs of a layer), layer by layer, row blocks in parallel: the
/// pre-activations land at [`ntk_core::forward::cache_offset`].
fn forward_into<T: Real>(
    team: &Team,
    spec: &Spec<'_>,
    params: &[T],
    x: &[T],
    n: usize,
    pool: &mut [T],
    gs: &PerThread<T>,
) -> CliResult {
    let w = spec.widths;
    check_finite("x", x)?;
    let rb = row_block(n);
    let layer = |i: usize, h: &mut [T], a: &[T]| {
        let a = MatRef::row_major(a, a.len() / w[i], w[i]);
        gs.with(|gs| forward_layer(spec, params, i, h, a, gs))
    };
    for i in 0..spec.layers() {
        let (prev, act, h) = forward_views(pool, w, n, i);
        if let Some(bands) = col_bands(n, w[i + 1]) {
            // Every band needs every input: the inputs first, then the bands.
            let a: &[T] = if i == 0 {
                x
            } else {
                let blocks = act.chunks_mut(rb * w[i]).zip(prev.chunks(rb * w[i]));
                team.for_each(blocks, |(a, p)| activations(spec, a, p));
                act
            };
            let a = MatRef::row_major(a, n, w[i]);
            let f =
                |j0, h: &mut [T]| gs.with(|gs| forward_layer_cols(spec, params, i, j0, h, a, gs));
            by_columns(team, &bands, (n, w[i + 1], rb), h, f, |_, _| Ok(()))?;
            continue;
        }
        let hs = h.chunks_mut(rb * w[i + 1]);
        if i == 0 {
            team.try_for_each(hs.zip(x.chunks(rb * w[0])), |(h, x)| layer(0, h, x))?;
        } else {
            // A block's inputs phi(h) are computed by the thread that multiplies them, in the
            // same work item: one phase per layer, and no block crosses cores in between.
            let blocks = hs.zip(act.chunks_mut(rb * w[i]).zip(prev.chunks(rb * w[i])));
            team.try_for_each(blocks, |(h, (a, p))| {
                activations(spec, a, p);
                layer(i, h, a)
            })?;
        }
    }
    Ok(())
}

/// Forward pass of `n` inputs, layer by layer, row blocks in parallel: returns the cache of
/// pre-activations (layout of [`ntk_core::forward::forward`]).
///
/// # Errors
/// Non-finite inputs or overflow, naming the layer.
pub fn par_forward<T: Real>(spec: &Spec<'_>, params: &[T], x: &[T], n: usize) -> CliResult<Vec<T>> {
    let w = spec.widths;
    let mut cache = vec![T::ZERO; cache_len(w, n) + n * max_width(w)];
    let gs = PerThread::new(gemm_scratch_len(w, n, 1));
    with_pool_team(|team| forward_into(team, spec, params, x, n, &mut cache, &gs))?;
    cache.truncate(cache_len(w, n));
    Ok(cache)
}

/// One input set during the parallel NTK: its inputs and its pool
/// ([`ntk_core::ntk::pool_len`]: the forward cache, then room for one layer of signals, which
/// backprop writes over the pre-activations it has passed).
struct Set<'x, T: Real> {
    x: &'x [T],
    n: usize,
    pool: Vec<T>,
}

impl<'x, T: Real> Set<'x, T> {
    /// An empty pool for `x`.
    fn alloc(spec: &Spec<'_>, x: &'x [T]) -> Self {
        let n = x.len() / spec.input_dim();
        Self { x, n, pool: recycle::take(pool_len(spec.widths, n)) }
    }

    /// Runs the forward pass into the pool and sets the readout signals.
    fn forward(
        &mut self,
        team: &Team,
        spec: &Spec<'_>,
        params: &[T],
        gs: &PerThread<T>,
    ) -> CliResult {
        let (w, k, n, x) = (spec.widths, spec.output_dim(), self.n, self.x);
        let pool = &mut self.pool;
        forward_into(team, spec, params, x, n, pool, gs)?;
        let o = signals_offset(w, n, spec.layers());
        signals_init(&mut pool[o..o + n * k * k], n, k);
        Ok(())
    }

    /// Computes layer `i`'s inputs into their place in the pool (parallel over row blocks).
    fn prepare(&mut self, team: &Team, spec: &Spec<'_>, i: usize) {
        if i > 0 {
            let (w, n) = (spec.widths, self.n);
            let (dst, _, h) = step_views(&mut self.pool, w, n, i);
            let rb = row_block(n);
            let blocks = dst[..n * w[i]].chunks_mut(rb * w[i]).zip(h.chunks(rb * w[i]));
            team.for_each(blocks, |(a, p)| activations(spec, a, p));
        }
    }

    /// Layer `i`'s inputs (after [`Self::prepare`]) and output signals.
    fn views(&self, spec: &Spec<'_>, i: usize) -> (&[T], &[T]) {
        let (w, n) = (spec.widths, self.n);
        let a = if i == 0 { self.x } else { layer_inputs(&self.pool, w, n, i) };
        (a, signals(&self.pool, w, n, i + 1))
    }

    /// Backprop through layer `i` (parallel over row blocks of inputs).
    fn step(
        &mut self,
        team: &Team,
        spec: &Spec<'_>,
        params: &[T],
        i: usize,
        gs: &PerThread<T>,
    ) -> CliResult {
        let (w, n, k) = (spec.widths, self.n, spec.output_dim());
        let (dst, src, h_prev) = step_views(&mut self.pool, w, n, i);
        let rb = row_block(n);
        if let Some(bands) = col_bands(n, w[i]) {
            let f =
                |j0, d: &mut [T]| gs.with(|gs| signals_product(spec, params, i, j0, d, src, gs));
            let g = |r0: usize, d: &mut [T]| {
                let h = &h_prev[r0 / k * w[i]..][..d.len() / k];
                match spec.activation.mul_dphi_rows(d, h, w[i], k) {
                    true => Ok(()),
                    false => Err(Error::NonFinite { layer: i, pass: Pass::Backward }),
                }
            };
            return Ok(by_columns(team, &bands, (n * k, w[i], rb * k), dst, f, g)?);
        }
        let rows = rb * k;
        let blocks = dst
            .chunks_mut(rows * w[i])
            .zip(src.chunks(rows * w[i + 1]))
            .zip(h_prev.chunks(rb * w[i]));
        team.try_for_each(blocks, |((dst, src), h)| {
            gs.with(|gs| signals_step(spec, params, i, dst, src, h, k, gs))
        })?;
        Ok(())
    }
}

impl<T: Real> Drop for Set<'_, T> {
    fn drop(&mut self) {
        recycle::give(std::mem::take(&mut self.pool));
    }
}

/// Wall-clock seconds spent in each phase of [`par_empirical_ntk_timed`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Phases {
    /// Forward passes (both input sets).
    pub forward: f64,
    /// Recomputing the layer inputs `phi(h)` from the cached pre-activations.
    pub activations: f64,
    /// Backprop of the signals (`signals_step`).
    pub backward: f64,
    /// Fused Gram–Hadamard accumulation and the finishing step.
    pub gram: f64,
}

/// Seconds since `t`, added to `acc`; restarts `t`.
fn lap(t: &mut std::time::Instant, acc: &mut f64) {
    let now = std::time::Instant::now();
    *acc += (now - *t).as_secs_f64();
    *t = now;
}

/// The empirical NTK between `x1` and `x2` (`None`: `x2 = x1`, with symmetry) in `mode`,
/// using the current rayon pool. Same values, bit for bit, as
/// [`ntk_core::ntk::empirical_ntk`] with any number of threads.
///
/// # Errors
/// Non-finite inputs, overflow (naming layer and pass), shape errors.
pub fn par_empirical_ntk<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    x1: &[T],
    x2: Option<&[T]>,
    mode: OutputMode,
) -> CliResult<Vec<T>> {
    par_empirical_ntk_timed(spec, params, x1, x2, mode).map(|(out, _)| out)
}

/// [`par_empirical_ntk`] that also reports the time spent in each phase.
///
/// # Errors
/// As [`par_empirical_ntk`].
pub fn par_empirical_ntk_timed<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    x1: &[T],
    x2: Option<&[T]>,
    mode: OutputMode,
) -> CliResult<(Vec<T>, Phases)> {
    with_pool_team(|team| ntk_in_team(team, spec, params, x1, x2, mode))
}

/// [`par_empirical_ntk_timed`] on `team`.
fn ntk_in_team<T: Real>(
    team: &Team,
    spec: &Spec<'_>,
    params: &[T],
    x1: &[T],
    x2: Option<&[T]>,
    mode: OutputMode,
) -> CliResult<(Vec<T>, Phases)> {
    let (d, k) = (spec.input_dim(), spec.output_dim());
    let mut ph = Phases::default();
    let mut t = std::time::Instant::now();
    let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |x| x.len() / d));
    if matches!(mode, OutputMode::Diagonal | OutputMode::DiagonalFull) && n1 != n2 {
        return Err(crate::CliError::Usage(format!(
            "--output-mode diagonal needs as many inputs in --x2 ({n2}) as in --x1 ({n1})"
        )));
    }
    let symmetric = x2.is_none();
    let bands = bands(n1, symmetric);
    let bd = bands.iter().map(|b| b.1).max().unwrap_or(0);
    let m = max_width(spec.widths);
    // Pools first: once they are freed, the caller's next buffers reuse their touched pages.
    let mut s1 = Set::alloc(spec, x1);
    let mut s2 = x2.map(|x2| Set::alloc(spec, x2));
    let gram = gram_hadamard_scratch(bd * k, n2 * k, m, k * m);
    let gemm = gemm_scratch_len(spec.widths, n1, k).max(gemm_scratch_len(spec.widths, n2, k));
    let gs = PerThread::new(gemm.max(gram));
    s1.forward(team, spec, params, &gs)?;
    if let Some(s2) = s2.as_mut() {
        s2.forward(team, spec, params, &gs)?;
    }
    lap(&mut t, &mut ph.forward);
    let len = mode.len(n1, n2, k);
    if len == 0 {
        return Ok((Vec::new(), ph));
    }
    let mut out = vec![T::ZERO; len];
    let row_len = len / n1;
    let s = T::from_f64(spec.bias_gram_factor());
    for i in (0..spec.layers()).rev() {
        let c = T::from_f64(spec.weight_multiplier(i) * spec.weight_multiplier(i));
        let (n_in, n_out) = (spec.widths[i], spec.widths[i + 1]);
        s1.prepare(team, spec, i);
        if let Some(s2) = s2.as_mut() {
            s2.prepare(team, spec, i);
        }
        lap(&mut t, &mut ph.activations);
        {
            let (a1, d1) = s1.views(spec, i);
            let (a2, d2) = match &s2 {
                Some(s2) => s2.views(spec, i),
                None => (a1, d1),
            };
            let a2 = MatRef::row_major(a2, n2, n_in);
            let mut work = Vec::with_capacity(bands.len());
            let mut rest = out.as_mut_slice();
            for &(row0, rows) in &bands {
                let (band, r) = std::mem::take(&mut rest).split_at_mut(rows * row_len);
                work.push((row0, rows, band));
                rest = r;
            }
            team.try_for_each(work, |(row0, rows, band)| {
                let a1b = MatRef::row_major(&a1[row0 * n_in..(row0 + rows) * n_in], rows, n_in);
                let d1b = &d1[row0 * k * n_out..(row0 + rows) * k * n_out];
                gs.with(|gs| {
                    accumulate_rows(
                        band, mode, a1b, a2, d1b, d2, k, n_out, c, s, symmetric, row0, gs,
                    )
                })
            })?;
        }
        lap(&mut t, &mut ph.gram);
        if i > 0 {
            s1.step(team, spec, params, i, &gs)?;
            if let Some(s2) = s2.as_mut() {
                s2.step(team, spec, params, i, &gs)?;
            }
        }
        lap(&mut t, &mut ph.backward);
    }
    finish(&mut out, mode, n1, k, symmetric)?;
    lap(&mut t, &mut ph.gram);
    Ok((out, ph))
}

/// The infinite-width NNGP and NTK (`n1 x n2` each, `x2 = None`: symmetric) of `mlp`, row
/// bands in parallel; bit-identical to [`ntk_core::kernel::kernel`] for any thread count.
/// Returns (nngp, ntk, largest quadrature error estimate).
///
/// # Errors
/// Typed core errors (non-finite inputs, overflow, quadrature failure) as runtime errors.
pub fn par_infinite_kernel(
    mlp: &ntk_core::kernel::Mlp<'_>,
    x1: &[f64],
    x2: Option<&[f64]>,
    d: usize,
) -> CliResult<(Vec<f64>, Vec<f64>, f64)> {
    use ntk_core::kernel::{kernel_chains, kernel_rows};
    let per = ntk_core::kernel::kernel_chain_len(mlp.depth);
    let n1 = x1.len() / d;
    let chains = |x: &[f64]| -> CliResult<(Vec<f64>, f64)> {
        let n = x.len() / d;
        let mut c = vec![0.0; n * per];
        let rb = row_block(n);
        let errs = c
            .par_chunks_mut(rb * per)
            .zip(x.par_chunks(rb * d))
            .map(|(c, x)| kernel_chains(c, x, d, mlp).map(|i| i.max_quadrature_error))
            .collect::<Result<Vec<f64>, _>>()?;
        Ok((c, errs.into_iter().fold(0.0, f64::max)))
    };
    let (c1, mut err) = chains(x1)?;
    let c2 = match x2 {
        Some(x2) => {
            let (c, e) = chains(x2)?;
            err = err.max(e);
            Some(c)
        }
        None => None,
    };
    let n2 = x2.map_or(n1, |x| x.len() / d);
    let mut k = vec![0.0; n1 * n2];
    let mut t = vec![0.0; n1 * n2];
    // Small bands: the symmetric case gives early rows far more pairs than late ones.
    let bd = n1.div_ceil(16 * rayon::current_num_threads()).max(1);
    let errs = k
        .par_chunks_mut(bd * n2)
        .zip(t.par_chunks_mut(bd * n2))
        .enumerate()
        .map(|(b, (kb, tb))| {
            kernel_rows(Some(kb), Some(tb), b * bd, x1, &c1, x2, c2.as_deref(), d, mlp)
                .map(|i| i.max_quadrature_error)
        })
        .collect::<Result<Vec<f64>, _>>()?;
    err = errs.into_iter().fold(err, f64::max);
    if x2.is_none() {
        for o in [&mut k, &mut t] {
            ntk_core::ntk::mirror(o, OutputMode::Trace, n1, 1);
        }
    }
    Ok((k, t, err))
}
