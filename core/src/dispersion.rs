//! NTK entries at initialization for whole sweeps over depth and sigma_w2 (DESIGN §6):
//! `Theta(x_0, x_j) = sum_{l=1}^{L+1} G_l (w_l A_{l-1} + b)` with
//! `G_l = <delta^l(x_0), delta^l(x_j)>`, `A_l = <x^l(x_0), x^l(x_j)>`, `w_l = 1`, `b = 1`
//! (standard parameterization) or `w_l = sigma_w^2 / n_{l-1}`, `b = sigma_b^2` (NTK
//! parameterization), `b = 0` without biases. Study B's protocol (d = width = 100, depths 1..49,
//! 16 values of sigma_w2, 500 samples, 11 correlations) is one call per sample.
//!
//! **One draw serves a whole grid.** A sample draws unit-variance weights `Z^l` for hidden
//! layers `1..L_max`, unit biases `beta^l`, and a readout vector `v_L` for each depth `L`; the
//! network of depth `L` at `sigma_w2` is `W^l = sigma_w Z^l / sqrt(n_{l-1})` for `l <= L`,
//! `b^l = sigma_b beta^l`, readout `sigma_w v_L / sqrt(n_L)`. Its law is exactly the
//! initialization law of a depth-`L` network, so for each cell (depth, sigma_w2) the samples
//! are i.i.d. draws from the right distribution: every per-cell estimator (mean, D, bootstrap
//! interval) is unchanged. Only estimates of *different* cells of one sample are dependent
//! (common random numbers), which matters solely for joint statements across cells.
//!
//! **Positive homogeneity.** For the ReLU family (`phi(c u) = c phi(u)`, `phi'(c u) = phi'(u)`,
//! `c > 0`) in the standard parameterization with zero biases (`sigma_b2 = 0`, biases
//! trainable or not), run the network once at `sigma_w = 1` (unit pre-activations `u^l`,
//! activations `a^l`, signals `g^l`). Then `h^l = sigma_w^l u^l`, `x^l = sigma_w^l a^l`,
//! `delta^l = sigma_w^{L+1-l} g^l`, so with the unit-scale `G_l`, `A_l`
//! `Theta(sigma_w2) = sigma_w2^L sum_l G_l A_{l-1} + b sum_{l=1}^{L+1} sigma_w2^{L+1-l} G_l`:
//! every sigma_w2 is a polynomial evaluation ([`Terms::theta_scaled`]).
//!
//! **All depths in one backward sweep.** Signals of every depth of the chunk are propagated
//! together, deepest first; at layer `l` the block of depths `>= l` is one matrix product with
//! `Z^l`, and a new depth joins when the sweep reaches its last hidden layer. The work is
//! `sum_L L` layer products (the cost of one backprop per depth) but in a single pass over the
//! weights; zeros of the ReLU mask are skipped.

use crate::activation::Activation;
use crate::error::{check_len, Error, Pass};
use crate::rng;
use crate::spec::Parameterization;

/// The architecture family of one sweep group: widths `[input_dim, width x L, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Family {
    /// Input dimension n_0 = d.
    pub input_dim: usize,
    /// Hidden width M.
    pub width: usize,
    /// Hidden activation.
    pub activation: Activation,
    /// Whether layers have trainable biases (their gradients enter the NTK).
    pub bias: bool,
    /// NTK or standard parameterization.
    pub parameterization: Parameterization,
}

/// Philox stream of the sphere inputs.
pub const STREAM_INPUTS: u64 = 0;
/// Philox stream of hidden layer `i`'s (0-based) unit weights.
pub const fn weight_stream(i: usize) -> u64 {
    1 + 2 * i as u64
}
/// Philox stream of hidden layer `i`'s (0-based) unit biases.
pub const fn bias_stream(i: usize) -> u64 {
    2 + 2 * i as u64
}
/// Philox stream of the readout vector of the depth-`depth` network.
pub const fn readout_stream(depth: usize) -> u64 {
    (1 << 40) + depth as u64
}

impl Family {
    /// `true` when [`Terms::theta_scaled`] is exact: standard parameterization, positively
    /// homogeneous activation, zero bias variance.
    pub fn scalable(&self, sigma_b2: f64) -> bool {
        self.parameterization == Parameterization::Standard
            && self.activation.is_homogeneous()
            && (sigma_b2 == 0.0 || !self.bias)
    }

    const fn weight_offset(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.width * self.input_dim + (i - 1) * self.width * self.width
        }
    }

    const fn fan_in(&self, i: usize) -> usize {
        if i == 0 {
            self.input_dim
        } else {
            self.width
        }
    }

    /// Elements of a draw for depths up to `max_depth` and `n_depths` readouts.
    pub const fn draw_len(&self, max_depth: usize, n_depths: usize) -> usize {
        self.weight_offset(max_depth) + (max_depth + n_depths) * self.width
    }

    /// Scratch elements of [`Family::terms`] for `n` inputs.
    pub const fn terms_scratch(&self, max_depth: usize, n_depths: usize, n: usize) -> usize {
        let m = if self.width > self.input_dim { self.width } else { self.input_dim };
        2 * max_depth * n * self.width + n * m + 2 * n_depths * n * self.width
    }

    /// Fills `buf` (`draw_len`) with sample `seed`'s unit draw: hidden weights
    /// `Z^l / sqrt(n_{l-1})` (`l = 1..=max(depths)`, row-major `n_l x n_{l-1}`), unit biases,
    /// then `v_L / sqrt(M)` for each depth of `depths` in order. Every value is a pure function
    /// of (seed, stream, index), whatever `depths` is.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] if `depths` is empty, has a zero or is not increasing;
    /// [`Error::ShapeMismatch`] if `buf` has the wrong length.
    pub fn draw(&self, buf: &mut [f64], seed: u64, depths: &[usize]) -> Result<(), Error> {
        let lmax = check_depths(depths)?;
        crate::error::check_shape("draw", buf, self.draw_len(lmax, depths.len()))?;
        let m = self.width;
        for i in 0..lmax {
            let (off, n_in) = (self.weight_offset(i), self.fan_in(i));
            let w = &mut buf[off..off + m * n_in];
            rng::fill_normal(w, seed, weight_stream(i), 0);
            let s = 1.0 / libm::sqrt(n_in as f64);
            w.iter_mut().for_each(|v| *v *= s);
        }
        let b0 = self.weight_offset(lmax);
        for i in 0..lmax {
            rng::fill_normal(&mut buf[b0 + i * m..b0 + (i + 1) * m], seed, bias_stream(i), 0);
        }
        let r0 = b0 + lmax * m;
        let s = 1.0 / libm::sqrt(m as f64);
        for (k, &depth) in depths.iter().enumerate() {
            let v = &mut buf[r0 + k * m..r0 + (k + 1) * m];
            rng::fill_normal(v, seed, readout_stream(depth), 0);
            v.iter_mut().for_each(|x| *x *= s);
        }
        Ok(())
    }

    /// Fills `params` (in `spec`'s layout) with the depth-`depths[k]` network of a unit draw
    /// `draw` ([`Family::draw`] with the same `depths`) at `spec`'s sigma_w2, sigma_b2:
    /// hidden weights `W^l = sigma_w Z^l / sqrt(n_{l-1})`, biases `b^l = sigma_b beta^l`,
    /// readout `sigma_w v_L / sqrt(M)` (standard parameterization), or the unit-variance
    /// `Z^l`, `beta^l`, `v_L` that the NTK parameterization multiplies by
    /// `sigma_w / sqrt(n_{l-1})`, `sigma_b`. The network [`Family::terms`] evaluates, for
    /// [`crate::ntk::empirical_ntk`] or [`crate::scaled::empirical_ntk_scaled`].
    ///
    /// # Errors
    /// As [`Family::draw`] for `depths`; [`Error::InvalidSpec`] if `spec` is not this family
    /// at depth `depths[k]` (widths `[d, M x depth, 1]`, same bias and parameterization);
    /// [`Error::ShapeMismatch`] for wrong buffer lengths.
    pub fn params(
        &self,
        params: &mut [f64],
        spec: &crate::spec::Spec<'_>,
        draw: &[f64],
        depths: &[usize],
        k: usize,
    ) -> Result<(), Error> {
        let lmax = check_depths(depths)?;
        let depth =
            *depths.get(k).ok_or(Error::InvalidSpec { field: "depths.index", value: k as f64 })?;
        let (m, w) = (self.width, spec.widths);
        let ok = w.len() == depth + 2
            && w[0] == self.input_dim
            && w[depth + 1] == 1
            && w[1..=depth].iter().all(|&n| n == m)
            && spec.bias == self.bias
            && spec.parameterization == self.parameterization;
        if !ok {
            return Err(Error::InvalidSpec { field: "widths", value: w.len() as f64 });
        }
        crate::error::check_shape("draw", draw, self.draw_len(lmax, depths.len()))?;
        crate::error::check_shape("params", params, spec.param_count())?;
        let ntk = self.parameterization == Parameterization::Ntk;
        let (sw, sb) = (libm::sqrt(spec.sigma_w2), libm::sqrt(spec.sigma_b2));
        for i in 0..=depth {
            let n_in = self.fan_in(i);
            let (wsrc, bsrc): (&[f64], &[f64]) = if i < depth {
                let off = self.weight_offset(i);
                let b0 = self.weight_offset(lmax) + i * m;
                (&draw[off..off + m * n_in], &draw[b0..b0 + m])
            } else {
                let r0 = self.weight_offset(lmax) + (lmax + k) * m;
                (&draw[r0..r0 + m], &[])
            };
            let (wt, bt) = spec.layer_mut(params, i);
            let unscale = libm::sqrt(n_in as f64);
            for (t, &z) in wt.iter_mut().zip(wsrc) {
                *t = if ntk { z * unscale } else { sw * z };
            }
            bt.fill(0.0);
            for (t, &z) in bt.iter_mut().zip(bsrc) {
                *t = if ntk { z } else { sb * z };
            }
        }
        Ok(())
    }

    /// Computes the layer terms of every depth in `depths` for the inputs `x` (`n x d`,
    /// row-major; the entries are `Theta(x_0, x_j)`, `j = 0..n`) at scale
    /// `sigma_w`, `sigma_b` from a unit draw `draw` ([`Family::draw`] with the same `depths`):
    /// `a[l n + j] = A_l` (`l = 0..=max_depth`) and `g[(k (max_depth + 1) + l - 1) n + j] = G_l`
    /// of depth `depths[k]` (`l = 1..=depths[k] + 1`, zero beyond).
    ///
    /// # Errors
    /// As [`Family::draw`] for `depths`; buffer errors; [`Error::NonFinite`] on overflow.
    #[allow(clippy::too_many_arguments)]
    pub fn terms(
        &self,
        a: &mut [f64],
        g: &mut [f64],
        draw: &[f64],
        depths: &[usize],
        x: &[f64],
        sigma_w: f64,
        sigma_b: f64,
        scratch: &mut [f64],
    ) -> Result<(), Error> {
        let lmax = check_depths(depths)?;
        let (m, d, nd) = (self.width, self.input_dim, depths.len());
        if d == 0 || m == 0 || x.is_empty() || !x.len().is_multiple_of(d) {
            return Err(Error::ShapeMismatch { what: "x", expected: d.max(1), got: x.len() });
        }
        let n = x.len() / d;
        crate::error::check_shape("draw", draw, self.draw_len(lmax, nd))?;
        crate::error::check_shape("a", a, (lmax + 1) * n)?;
        crate::error::check_shape("g", g, nd * (lmax + 1) * n)?;
        check_len("scratch", scratch, self.terms_scratch(lmax, nd, n))?;
        crate::forward::check_finite("x", x)?;
        let op = TermsOp { fam: self, a, g, draw, depths, x, n, sigma_w, sigma_b, scratch };
        pulp::Arch::new().dispatch(op)
    }
}

/// Largest depth of a strictly increasing list of positive depths.
fn check_depths(depths: &[usize]) -> Result<usize, Error> {
    let ok = !depths.is_empty() && depths[0] > 0 && depths.windows(2).all(|w| w[0] < w[1]);
    if ok {
        Ok(depths[depths.len() - 1])
    } else {
        Err(Error::InvalidSpec {
            field: "depths",
            value: depths.first().copied().unwrap_or(0) as f64,
        })
    }
}

struct TermsOp<'a> {
    fam: &'a Family,
    a: &'a mut [f64],
    g: &'a mut [f64],
    draw: &'a [f64],
    depths: &'a [usize],
    x: &'a [f64],
    n: usize,
    sigma_w: f64,
    sigma_b: f64,
    scratch: &'a mut [f64],
}

impl pulp::WithSimd for TermsOp<'_> {
    type Output = Result<(), Error>;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Self::Output {
        terms_impl(self)
    }
}

/// `sum a_i b_i` with eight interleaved partial sums (a fixed order on every instruction set).
#[inline(always)]
fn dot8(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, ra) = (a.chunks_exact(8), a.chunks_exact(8).remainder());
    let rb = b.chunks_exact(8).remainder();
    for (x, y) in ca.zip(b.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[inline(always)]
fn terms_impl(op: TermsOp<'_>) -> Result<(), Error> {
    let TermsOp { fam, a, g, draw, depths, x, n, sigma_w, sigma_b, scratch } = op;
    let (m, d, nd) = (fam.width, fam.input_dim, depths.len());
    let lmax = depths[nd - 1];
    let act = fam.activation;
    let b0 = fam.weight_offset(lmax);
    let r0 = b0 + lmax * m;
    let (h, rest) = scratch.split_at_mut(lmax * n * m);
    let (dh, rest) = rest.split_at_mut(lmax * n * m);
    let (prev, rest) = rest.split_at_mut(n * m.max(d));
    let (mut cur, rest) = rest.split_at_mut(nd * n * m);
    let mut next = &mut rest[..nd * n * m];

    // Forward: h^{i+1} = sigma_w Z_i x^i + sigma_b beta_i, A_{i} = <x^i(x_0), x^i(x_j)>.
    for j in 0..n {
        a[j] = dot8(&x[..d], &x[j * d..(j + 1) * d]);
    }
    for i in 0..lmax {
        let n_in = fam.fan_in(i);
        let w = &draw[fam.weight_offset(i)..fam.weight_offset(i) + m * n_in];
        let bias = &draw[b0 + i * m..b0 + (i + 1) * m];
        let input: &[f64] = if i == 0 { x } else { &prev[..n * n_in] };
        let hi = &mut h[i * n * m..(i + 1) * n * m];
        for j in 0..n {
            let xj = &input[j * n_in..(j + 1) * n_in];
            for (o, ho) in hi[j * m..(j + 1) * m].iter_mut().enumerate() {
                let mut v = sigma_w * dot8(&w[o * n_in..(o + 1) * n_in], xj);
                if fam.bias {
                    v += sigma_b * bias[o];
                }
                *ho = v;
            }
        }
        if hi.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { layer: i + 1, pass: Pass::Forward });
        }
        // phi'(h) once per unit: backprop multiplies by it for every depth of the chunk.
        let dhi = &mut dh[i * n * m..(i + 1) * n * m];
        if act == Activation::Tanh {
            // One tanh per unit: phi = t, phi' = 1 - t^2 (the same expressions as Activation).
            for ((p, q), &v) in prev[..n * m].iter_mut().zip(dhi.iter_mut()).zip(hi.iter()) {
                let t = libm::tanh(v);
                *p = t;
                *q = 1.0 - t * t;
            }
        } else {
            for (t, &v) in dhi.iter_mut().zip(hi.iter()) {
                *t = act.dphi(v);
            }
            act.apply(&mut prev[..n * m], hi);
        }
        for j in 0..n {
            a[(i + 1) * n + j] = dot8(&prev[..m], &prev[j * m..(j + 1) * m]);
        }
    }

    // Backward, all depths at once: block k of the signal buffer holds depth depths[nd-1-k].
    g.fill(0.0);
    let mut active = 0;
    for l in (1..=lmax).rev() {
        let hl = &dh[(l - 1) * n * m..l * n * m];
        if active < nd && depths[nd - 1 - active] == l {
            let di = nd - 1 - active;
            let v = &draw[r0 + di * m..r0 + (di + 1) * m];
            let blk = &mut cur[active * n * m..(active + 1) * n * m];
            for j in 0..n {
                let row = &mut blk[j * m..(j + 1) * m];
                for ((r, &vi), &p) in row.iter_mut().zip(v).zip(&hl[j * m..(j + 1) * m]) {
                    *r = sigma_w * vi * p;
                }
            }
            g[(di * (lmax + 1) + l) * n..(di * (lmax + 1) + l + 1) * n].fill(1.0);
            active += 1;
        }
        for k in 0..active {
            let di = nd - 1 - k;
            let blk = &cur[k * n * m..(k + 1) * n * m];
            for j in 0..n {
                g[(di * (lmax + 1) + l - 1) * n + j] = dot8(&blk[..m], &blk[j * m..(j + 1) * m]);
            }
        }
        if l == 1 {
            break;
        }
        // delta^{l-1} = phi'(h^{l-1}) .* (sigma_w Z_{l-1}^T delta^l), Z_{l-1}: n_l x n_{l-1}.
        let w = &draw[fam.weight_offset(l - 1)..fam.weight_offset(l - 1) + m * m];
        let hp = &dh[(l - 2) * n * m..(l - 1) * n * m];
        // Four signal rows per sweep over Z_{l-1} (its rows stay in L1 for the four); each
        // output element still sums o = 0..m in order, so the result does not depend on it.
        let rows = active * n;
        let mut r0 = 0;
        while r0 < rows {
            let nb = (rows - r0).min(4);
            let blk = &mut next[r0 * m..(r0 + nb) * m];
            blk.fill(0.0);
            for o in 0..m {
                let wrow = &w[o * m..(o + 1) * m];
                for (b, dst) in blk.chunks_exact_mut(m).enumerate() {
                    let s = cur[(r0 + b) * m + o];
                    if s != 0.0 {
                        for (t, &wv) in dst.iter_mut().zip(wrow) {
                            *t += s * wv;
                        }
                    }
                }
            }
            for (b, dst) in blk.chunks_exact_mut(m).enumerate() {
                let j = (r0 + b) % n;
                for (t, &p) in dst.iter_mut().zip(&hp[j * m..(j + 1) * m]) {
                    *t = *t * sigma_w * p;
                }
            }
            r0 += nb;
        }
        if next[..active * n * m].iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { layer: l, pass: Pass::Backward });
        }
        core::mem::swap(&mut cur, &mut next);
    }
    Ok(())
}

/// Read access to the output of [`Family::terms`] and the NTK entries it determines.
#[derive(Clone, Copy, Debug)]
pub struct Terms<'a> {
    /// `A_l` values, `(max_depth + 1) x n`.
    pub a: &'a [f64],
    /// `G_l` values, `n_depths x (max_depth + 1) x n`.
    pub g: &'a [f64],
    /// Number of inputs n.
    pub n: usize,
    /// Largest depth of the chunk.
    pub max_depth: usize,
}

impl Terms<'_> {
    /// `A_l` of pair `j`.
    #[inline]
    pub fn a(&self, l: usize, j: usize) -> f64 {
        self.a[l * self.n + j]
    }
    /// `G_l` (`l >= 1`) of the depth with index `k` and pair `j`.
    #[inline]
    pub fn g(&self, k: usize, l: usize, j: usize) -> f64 {
        self.g[(k * (self.max_depth + 1) + l - 1) * self.n + j]
    }

    /// `Theta(x_0, x_j) = sum_{l=1}^{L+1} G_l (w_l A_{l-1} + b)` for terms computed at the
    /// network's own scale (`sigma_w = sqrt(sigma_w2)`, `sigma_b = sqrt(sigma_b2)`).
    pub fn theta_direct(
        &self,
        fam: &Family,
        sigma_w2: f64,
        sigma_b2: f64,
        k: usize,
        depth: usize,
        j: usize,
    ) -> f64 {
        let b = match (fam.bias, fam.parameterization) {
            (false, _) => 0.0,
            (true, Parameterization::Standard) => 1.0,
            (true, Parameterization::Ntk) => sigma_b2,
        };
        (1..=depth + 1)
            .map(|l| {
                let w = match fam.parameterization {
                    Parameterization::Standard => 1.0,
                    Parameterization::Ntk => sigma_w2 / fam.fan_in(l - 1) as f64,
                };
                self.g(k, l, j) * (w * self.a(l - 1, j) + b)
            })
            .sum()
    }

    /// `Theta = sigma_w2^L sum_l G_l A_{l-1} + b sum_{l=1}^{L+1} sigma_w2^{L+1-l} G_l` from
    /// unit-scale terms (`sigma_w = 1`, `sigma_b = 0`); exact when [`Family::scalable`].
    pub fn theta_scaled(
        &self,
        fam: &Family,
        sigma_w2: f64,
        k: usize,
        depth: usize,
        j: usize,
    ) -> f64 {
        let p: f64 = (1..=depth + 1).map(|l| self.g(k, l, j) * self.a(l - 1, j)).sum();
        let q = if fam.bias {
            (1..=depth + 1).fold(0.0, |q, l| q * sigma_w2 + self.g(k, l, j))
        } else {
            0.0
        };
        libm::pow(sigma_w2, depth as f64) * p + q
    }
}

/// Writes the sphere protocol's inputs into `x` (`(1 + rs.len()) x d`): `x_0 = x`, then
/// `x_r = r x + sqrt(1 - r^2) y` for each `r` of `rs`, with `x`, `y` independent and uniform on
/// the unit sphere of R^d (normalised Gaussian vectors from stream [`STREAM_INPUTS`]).
///
/// # Errors
/// [`Error::ShapeMismatch`] if `x` has the wrong length; [`Error::InvalidSpec`] for `r`
/// outside [-1, 1].
pub fn sphere_inputs(x: &mut [f64], seed: u64, d: usize, rs: &[f64]) -> Result<(), Error> {
    crate::error::check_shape("x", x, (1 + rs.len()) * d)?;
    if let Some(&r) = rs.iter().find(|r| !(-1.0..=1.0).contains(*r)) {
        return Err(Error::InvalidSpec { field: "correlation", value: r });
    }
    if d == 0 {
        return Ok(());
    }
    let (x0, rest) = x.split_at_mut(d);
    rng::fill_normal(x0, seed, STREAM_INPUTS, 0);
    let nx = libm::sqrt(crate::real::sum_sq(x0));
    x0.iter_mut().for_each(|v| *v /= nx);
    // y is the same for every r: each row draws it (no heap), then mixes it with x.
    for row in rest.chunks_exact_mut(d) {
        rng::fill_normal(row, seed, STREAM_INPUTS, d as u64);
    }
    for (row, &r) in rest.chunks_exact_mut(d).zip(rs) {
        let ny = libm::sqrt(crate::real::sum_sq(row));
        let s = libm::sqrt(1.0 - r * r);
        for (v, &u) in row.iter_mut().zip(x0.iter()) {
            *v = r * u + s * (*v / ny);
        }
    }
    Ok(())
}

/// Exact `E[Theta(x, x)]` of a ReLU network in the standard parameterization with
/// `sigma_b2 = 0` (DESIGN §6), `l` hidden layers of width M, input dimension n_0:
/// `(sigma_w2/2)^l ||x||^2 (1 + l M / n_0) + sum_{j=0}^{l} (sigma_w2/2)^j`, the sum present
/// only with (trainable) biases.
pub fn relu_mean_theta(
    sigma_w2: f64,
    depth: usize,
    width: usize,
    input_dim: usize,
    norm2: f64,
    bias: bool,
) -> f64 {
    let q = sigma_w2 / 2.0;
    let l = depth as f64;
    let main = libm::pow(q, l) * norm2 * (1.0 + l * width as f64 / input_dim as f64);
    let tail = if bias { (0..=depth).map(|j| libm::pow(q, j as f64)).sum() } else { 0.0 };
    main + tail
}

/// `ln E[Theta(x, x)]` of [`relu_mean_theta`] without overflow or underflow, for every
/// sigma_w2 > 0 and depth: with `q = sigma_w2 / 2`, the log-sum-exp of
/// `l ln q + ln(||x||^2 (1 + l M / n_0))` and (with biases) `ln sum_{j=0}^{l} q^j`, which is
/// `ln(-expm1((l+1) ln q)) - ln(1 - q)` for `q < 1`, `ln(l + 1)` for `q = 1`, and
/// `(l+1) ln q + ln(-expm1(-(l+1) ln q)) - ln(q - 1)` for `q > 1`.
pub fn relu_ln_mean_theta(
    sigma_w2: f64,
    depth: usize,
    width: usize,
    input_dim: usize,
    norm2: f64,
    bias: bool,
) -> f64 {
    let q = sigma_w2 / 2.0;
    let (l, lq) = (depth as f64, libm::log(q));
    let lql = if depth == 0 { 0.0 } else { l * lq };
    let main = lql + libm::log(norm2 * (1.0 + l * width as f64 / input_dim as f64));
    if !bias {
        return main;
    }
    let l1 = l + 1.0;
    let tail = if q < 1.0 {
        libm::log(-libm::expm1(l1 * lq)) - libm::log(1.0 - q)
    } else if q == 1.0 {
        libm::log(l1)
    } else {
        l1 * lq + libm::log(-libm::expm1(-l1 * lq)) - libm::log(q - 1.0)
    };
    let (hi, lo) = if main >= tail { (main, tail) } else { (tail, main) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + libm::log1p(libm::exp(lo - hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
    use crate::spec::Spec;
    use std::vec;
    use std::vec::Vec;

    #[allow(clippy::too_many_arguments)]
    fn reference(
        fam: &Family,
        sw2: f64,
        sb2: f64,
        draw: &[f64],
        depths: &[usize],
        k: usize,
        x: &[f64],
        j: usize,
    ) -> f64 {
        let mut widths = vec![fam.input_dim];
        widths.extend(core::iter::repeat_n(fam.width, depths[k]));
        widths.push(1);
        let spec =
            Spec::new(&widths, fam.activation, sw2, sb2, fam.bias, fam.parameterization).unwrap();
        let mut p = vec![0.0; spec.param_count()];
        fam.params(&mut p, &spec, draw, depths, k).unwrap();
        let d = fam.input_dim;
        let mut out = [0.0];
        let mut s = vec![0.0; empirical_ntk_scratch(&widths, 1, Some(1))];
        empirical_ntk(
            &spec,
            &p,
            &mut out,
            &x[..d],
            Some(&x[j * d..(j + 1) * d]),
            OutputMode::Full,
            &mut s,
        )
        .unwrap();
        out[0]
    }

    fn run_terms(
        fam: &Family,
        seed: u64,
        depths: &[usize],
        x: &[f64],
        sw: f64,
        sb: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let lmax = depths[depths.len() - 1];
        let n = x.len() / fam.input_dim;
        let mut draw = vec![0.0; fam.draw_len(lmax, depths.len())];
        fam.draw(&mut draw, seed, depths).unwrap();
        let mut a = vec![0.0; (lmax + 1) * n];
        let mut g = vec![0.0; depths.len() * (lmax + 1) * n];
        let mut s = vec![0.0; fam.terms_scratch(lmax, depths.len(), n)];
        fam.terms(&mut a, &mut g, &draw, depths, x, sw, sb, &mut s).unwrap();
        (draw, a, g)
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-300)
    }

    /// Every entry of the engine equals `empirical_ntk` on the same weights (1e-12 relative).
    #[test]
    fn direct_terms_match_empirical_ntk() {
        let fams = [
            (Activation::Relu, true, Parameterization::Standard, 1.7f64, 0.0f64),
            (Activation::Relu, true, Parameterization::Standard, 2.3, 0.4),
            (Activation::Tanh, true, Parameterization::Ntk, 1.3, 0.3),
            (Activation::Erf, true, Parameterization::Standard, 2.5, 1.0),
            (Activation::LeakyRelu { alpha: 0.2 }, false, Parameterization::Standard, 2.0, 0.0),
            (Activation::Gelu, false, Parameterization::Ntk, 0.8, 0.0),
        ];
        for (ci, &(activation, bias, parameterization, sw2, sb2)) in fams.iter().enumerate() {
            let fam = Family { input_dim: 5, width: 7, activation, bias, parameterization };
            let depths = [1, 2, 4, 5];
            let mut x = vec![0.0; 4 * 5];
            sphere_inputs(&mut x, 100 + ci as u64, 5, &[0.9, 0.5, 0.0]).unwrap();
            let (draw, a, g) = run_terms(&fam, 7 + ci as u64, &depths, &x, sw2.sqrt(), sb2.sqrt());
            let t = Terms { a: &a, g: &g, n: 4, max_depth: 5 };
            for (k, &depth) in depths.iter().enumerate() {
                for j in 0..4 {
                    let ours = t.theta_direct(&fam, sw2, sb2, k, depth, j);
                    let want = reference(&fam, sw2, sb2, &draw, &depths, k, &x, j);
                    assert!(
                        rel(ours, want) < 1e-12,
                        "case {ci} depth {depth} j {j}: {ours} vs {want}"
                    );
                }
            }
        }
    }

    /// One unit-scale computation gives every sigma_w2 (positive homogeneity), checked against
    /// `empirical_ntk` at each sigma_w2 including 0.
    #[test]
    fn scaled_terms_match_empirical_ntk_at_every_sigma() {
        let fams = [
            (Activation::Relu, true),
            (Activation::Relu, false),
            (Activation::AbRelu { a: -0.5, b: 1.5 }, true),
            (Activation::Linear, true),
        ];
        for (ci, &(activation, bias)) in fams.iter().enumerate() {
            let fam = Family {
                input_dim: 6,
                width: 8,
                activation,
                bias,
                parameterization: Parameterization::Standard,
            };
            assert!(fam.scalable(0.0));
            assert!(!fam.scalable(0.5) || !bias);
            let depths = [1, 3, 6];
            let mut x = vec![0.0; 3 * 6];
            sphere_inputs(&mut x, 3, 6, &[0.7, 0.1]).unwrap();
            let (draw, a, g) = run_terms(&fam, 40 + ci as u64, &depths, &x, 1.0, 0.0);
            let t = Terms { a: &a, g: &g, n: 3, max_depth: 6 };
            for sw2 in [0.0, 0.5, 1.0, 2.0, 3.5] {
                for (k, &depth) in depths.iter().enumerate() {
                    for j in 0..3 {
                        let ours = t.theta_scaled(&fam, sw2, k, depth, j);
                        let want = reference(&fam, sw2, 0.0, &draw, &depths, k, &x, j);
                        assert!(
                            rel(ours, want) < 1e-12 || (ours - want).abs() < 1e-14,
                            "case {ci} sw2 {sw2} depth {depth} j {j}: {ours} vs {want}"
                        );
                    }
                }
            }
        }
        assert!(!Family {
            input_dim: 1,
            width: 1,
            activation: Activation::Tanh,
            bias: true,
            parameterization: Parameterization::Standard
        }
        .scalable(0.0));
    }

    /// A depth's entries do not depend on which other depths share the draw.
    #[test]
    fn entries_do_not_depend_on_the_chunk() {
        let fam = Family {
            input_dim: 4,
            width: 6,
            activation: Activation::Tanh,
            bias: true,
            parameterization: Parameterization::Standard,
        };
        let mut x = vec![0.0; 2 * 4];
        sphere_inputs(&mut x, 1, 4, &[0.3]).unwrap();
        let (_, a1, g1) = run_terms(&fam, 9, &[2, 3, 5], &x, 1.2, 0.5);
        let (_, a2, g2) = run_terms(&fam, 9, &[3], &x, 1.2, 0.5);
        let t1 = Terms { a: &a1, g: &g1, n: 2, max_depth: 5 };
        let t2 = Terms { a: &a2, g: &g2, n: 2, max_depth: 3 };
        for j in 0..2 {
            assert_eq!(
                t1.theta_direct(&fam, 1.44, 0.25, 1, 3, j),
                t2.theta_direct(&fam, 1.44, 0.25, 0, 3, j)
            );
        }
    }

    #[test]
    fn sphere_inputs_have_the_requested_geometry() {
        let d = 400;
        let mut x = vec![0.0; 3 * d];
        sphere_inputs(&mut x, 5, d, &[1.0, 0.6]).unwrap();
        let dot = |i: usize, j: usize| (0..d).map(|k| x[i * d + k] * x[j * d + k]).sum::<f64>();
        assert!((dot(0, 0) - 1.0).abs() < 1e-14);
        assert_eq!(&x[..d], &x[d..2 * d]);
        // <x, x_r> = r + sqrt(1 - r^2) <x, y>, with <x, y> ~ N(0, 1/d).
        assert!((dot(0, 2) - 0.6).abs() < 4.0 * 0.8 / (d as f64).sqrt());
        assert!((dot(2, 2) - 1.0).abs() < 4.0 * 2.0 * 0.48 / (d as f64).sqrt());
        assert!(sphere_inputs(&mut x, 5, d, &[1.5, 0.0]).is_err());
    }

    /// Sample mean of Theta(x, x) within 4 standard errors of the exact mean at every sigma_w2
    /// of study B and depths 1..8 (width = d = 20, 400 samples, scaled path).
    #[test]
    fn sample_mean_matches_exact_relu_mean() {
        let sigmas =
            [0.5, 0.8, 1.0, 1.2, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.5, 3.0, 3.5];
        let (d, m, s) = (20, 20, 400);
        let depths: Vec<usize> = (1..=8).collect();
        let fam = Family {
            input_dim: d,
            width: m,
            activation: Activation::Relu,
            bias: true,
            parameterization: Parameterization::Standard,
        };
        let mut vals = vec![0.0; sigmas.len() * depths.len() * s];
        for i in 0..s {
            let mut x = vec![0.0; d];
            sphere_inputs(&mut x, crate::rng::derive_seed(3, 0, i as u64), d, &[]).unwrap();
            let (_, a, g) =
                run_terms(&fam, crate::rng::derive_seed(3, 0, i as u64), &depths, &x, 1.0, 0.0);
            let t = Terms { a: &a, g: &g, n: 1, max_depth: 8 };
            for (si, &sw2) in sigmas.iter().enumerate() {
                for (k, &depth) in depths.iter().enumerate() {
                    vals[(si * depths.len() + k) * s + i] = t.theta_scaled(&fam, sw2, k, depth, 0);
                }
            }
        }
        for (si, &sw2) in sigmas.iter().enumerate() {
            for (k, &depth) in depths.iter().enumerate() {
                let v = &vals[(si * depths.len() + k) * s..(si * depths.len() + k + 1) * s];
                let mo = crate::stats::moments(v);
                let exact = relu_mean_theta(sw2, depth, m, d, 1.0, true);
                assert!(mo.dispersion >= 1.0);
                assert!(
                    (mo.mean - exact).abs() < 4.0 * mo.sem,
                    "sw2 {sw2} depth {depth}: mean {} exact {exact} sem {}",
                    mo.mean,
                    mo.sem
                );
            }
        }
    }

    /// D -> 1 as the width grows at fixed depth (ReLU, sigma_w2 = 2, depth 4, d = 16, 300 samples).
    #[test]
    fn dispersion_decreases_to_one_with_width() {
        let mut prev = f64::INFINITY;
        for m in [8, 32, 128] {
            let fam = Family {
                input_dim: 16,
                width: m,
                activation: Activation::Relu,
                bias: true,
                parameterization: Parameterization::Standard,
            };
            let vals: Vec<f64> = (0..300)
                .map(|i| {
                    let seed = crate::rng::derive_seed(1, m as u64, i);
                    let mut x = vec![0.0; 16];
                    sphere_inputs(&mut x, seed, 16, &[]).unwrap();
                    let (_, a, g) = run_terms(&fam, seed, &[4], &x, 1.0, 0.0);
                    Terms { a: &a, g: &g, n: 1, max_depth: 4 }.theta_scaled(&fam, 2.0, 0, 4, 0)
                })
                .collect();
            let dd = crate::stats::moments(&vals).dispersion;
            // D - 1 ~ C depth / width: quadrupling the width must at least halve it
            // (measured: 1.72, 0.33, 0.10).
            assert!(
                dd >= 1.0 && dd - 1.0 < 0.5 * (prev - 1.0),
                "width {m}: D = {dd}, previous {prev}"
            );
            prev = dd;
        }
    }

    /// The forward norm of a He-initialised ReLU network has the exact dispersion
    /// `D(||x^L||^2) = (1 + 5/M)^L` (each layer multiplies it by `(2/M) sum_i relu(z_i)^2`,
    /// `E = 1`, `E[.^2] = 1 + 5/M`): checked on the engine's `A_L` within 4 bootstrap
    /// standard errors (M = 50, L = 3, 3000 samples).
    #[test]
    fn forward_norm_dispersion_is_exact() {
        let (d, m, l, s) = (20, 50, 3, 3000);
        let fam = Family {
            input_dim: d,
            width: m,
            activation: Activation::Relu,
            bias: true,
            parameterization: Parameterization::Standard,
        };
        let al: Vec<f64> = (0..s)
            .map(|i| {
                let seed = crate::rng::derive_seed(9, 9, i as u64);
                let mut x = vec![0.0; d];
                sphere_inputs(&mut x, seed, d, &[]).unwrap();
                let (_, a, _) = run_terms(&fam, seed, &[l], &x, 2f64.sqrt(), 0.0);
                a[l]
            })
            .collect();
        let dd = crate::stats::moments(&al).dispersion;
        let b = 400;
        let mut c = vec![0.0; b * s];
        crate::stats::bootstrap_counts(&mut c, 1, s, b);
        let mut w = vec![0.0; b];
        let (lo, hi) = crate::stats::bootstrap_dispersion(&mut w, &al, &c, b, 0.6827);
        let truth = (1.0 + 5.0 / m as f64).powi(l as i32);
        assert!((dd - truth).abs() < 4.0 * (hi - lo) / 2.0, "D = {dd} [{lo}, {hi}], exact {truth}");
    }

    /// The log form equals ln of the plain exact mean wherever that is a normal f64
    /// (1e-13 relative in ln), and stays finite (and monotone in depth) where it is not.
    #[test]
    fn ln_exact_mean_matches_plain_and_extends_it() {
        for bias in [false, true] {
            for sw2 in [1e-4, 0.5, 1.9, 2.0, 2.1, 3.5, 1e4] {
                let mut prev = f64::NAN;
                for depth in [1usize, 2, 5, 30, 100, 500, 1000] {
                    let plain = relu_mean_theta(sw2, depth, 16, 8, 1.3, bias);
                    let ln = relu_ln_mean_theta(sw2, depth, 16, 8, 1.3, bias);
                    assert!(ln.is_finite(), "sw2 {sw2} depth {depth} bias {bias}");
                    if plain.is_normal() {
                        let want = plain.ln();
                        assert!(
                            (ln - want).abs() <= 1e-13 * want.abs().max(1.0),
                            "sw2 {sw2} depth {depth} bias {bias}: {ln} vs {want}"
                        );
                    }
                    if sw2 > 2.0 {
                        assert!(
                            prev.is_nan() || ln >= prev,
                            "not increasing at sw2 {sw2} depth {depth}"
                        );
                    }
                    prev = ln;
                }
            }
        }
        // sigma_w2 = 1e4, depth 1000 with biases: q^1000 (1 + 1000 M / n_0) + (q^1001 - 1) / (q - 1)
        // with q = 5000 is q^1000 (2001 + q / (q - 1)) up to a relative 1e-3700.
        let ln = relu_ln_mean_theta(1e4, 1000, 16, 8, 1.0, true);
        let want = 1000.0 * 5000f64.ln() + (2001.0 + 5000.0 / 4999.0f64).ln();
        assert!((ln - want).abs() < 1e-10, "{ln} vs {want}");
    }

    /// The block floating point fallback of `ntk dispersion` (`empirical_ntk_scaled` on
    /// [`Family::params`]) equals the engine's plain entries where those are finite (1e-12
    /// relative), for homogeneous and non-homogeneous families, biases or not.
    #[test]
    fn scaled_ntk_on_family_params_matches_terms() {
        use crate::scaled::{empirical_ntk_scaled, empirical_ntk_scaled_scratch, Scaled};
        let fams = [
            (Activation::Relu, true, Parameterization::Standard, 1.7f64, 0.0f64),
            (Activation::Relu, true, Parameterization::Standard, 2.3, 0.4),
            (Activation::Relu, false, Parameterization::Ntk, 40.0, 0.0),
            (Activation::Tanh, true, Parameterization::Ntk, 1.3, 0.3),
            (Activation::Erf, true, Parameterization::Standard, 2.5, 1.0),
        ];
        for (ci, &(activation, bias, parameterization, sw2, sb2)) in fams.iter().enumerate() {
            let fam = Family { input_dim: 5, width: 7, activation, bias, parameterization };
            let depths = [1, 3, 6];
            let mut x = vec![0.0; 3 * 5];
            sphere_inputs(&mut x, 50 + ci as u64, 5, &[0.8, 0.1]).unwrap();
            let (draw, a, g) = run_terms(&fam, 3 + ci as u64, &depths, &x, sw2.sqrt(), sb2.sqrt());
            let t = Terms { a: &a, g: &g, n: 3, max_depth: 6 };
            for (k, &depth) in depths.iter().enumerate() {
                let mut widths = vec![7; depth + 2];
                widths[0] = 5;
                widths[depth + 1] = 1;
                let spec =
                    Spec::new(&widths, activation, sw2, sb2, bias, parameterization).unwrap();
                let mut p = vec![0.0; spec.param_count()];
                fam.params(&mut p, &spec, &draw, &depths, k).unwrap();
                let mut out = [Scaled::ZERO; 3];
                let mut s = vec![0.0; empirical_ntk_scaled_scratch(&widths, 1, Some(3))];
                empirical_ntk_scaled(
                    &spec,
                    &p,
                    &mut out,
                    &x[..5],
                    Some(&x),
                    OutputMode::Full,
                    &mut s,
                )
                .unwrap();
                for (j, o) in out.iter().enumerate() {
                    let want = t.theta_direct(&fam, sw2, sb2, k, depth, j);
                    let got = o.to_f64();
                    assert!(
                        rel(got, want) < 1e-12,
                        "case {ci} depth {depth} j {j}: {got} vs {want}"
                    );
                }
            }
            // A spec of another depth or family is refused.
            let spec =
                Spec::new(&[5, 7, 1], activation, sw2, sb2, !bias, parameterization).unwrap();
            let mut p = vec![0.0; spec.param_count()];
            assert!(fam.params(&mut p, &spec, &draw, &depths, 0).is_err());
        }
    }
}
