//! Training (DESIGN §7): loss gradients through the manual backprop, full-batch gradient
//! descent, mini-batch SGD and Adam over the flat parameter vector, the linearized model
//! trained with the same optimizer, and study A's stopping rule.
//!
//! Everything is a pure function of its inputs and the optimizer's seed: the batch of step
//! `t` is a slice of a Fisher–Yates permutation drawn from `(seed, epoch)`, so a run is
//! reproducible and can be resumed at any step.
//!
//! ```
//! use ntk_core::backward::Loss;
//! use ntk_core::spec::param_count;
//! use ntk_core::train::{train_step, train_step_scratch, Model, Optimizer};
//! use ntk_core::{Activation, Parameterization, Spec};
//! const W: [usize; 3] = [2, 16, 1];
//! const N: usize = 4;
//! let spec = Spec::new(&W, Activation::Tanh, 1.0, 0.1, true, Parameterization::Ntk).unwrap();
//! let mut params = [0.0f64; param_count(&W, true)];
//! spec.init(&mut params, 1).unwrap();
//! let (x, y) = ([0.0, 1.0, 1.0, 0.0, -1.0, 0.5, 0.3, -0.7], [0.5, -0.5, 0.2, 0.1]);
//! let opt = Optimizer::gd(0.1);
//! let mut scratch = [0.0; train_step_scratch(&W, true, N)];
//! let mut first = 0.0;
//! let mut last = 0.0;
//! for t in 0..50 {
//!     last = train_step(&spec, Model::Network, &opt, Loss::Mse, &mut params, &mut [], &x, &y,
//!                       N, t, &mut [], &mut scratch).unwrap();
//!     if t == 0 { first = last; }
//! }
//! assert!(last < first);
//! ```

use crate::backward::{loss_and_gradient, param_gradient, param_gradient_scratch, Loss};
use crate::error::{check_len, check_shape, Error, Pass};
use crate::forward::{cache_len, forward, forward_scratch, output};
use crate::linearized::{jvp, jvp_scratch};
use crate::real::Real;
use crate::rng;
use crate::spec::{param_count, Spec};

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// `theta -= eta g` (gradient descent; full batch or mini-batch SGD).
    Sgd,
    /// Adam (Kingma & Ba 2015), as `torch.optim.Adam` / `optax.adam`:
    /// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
    /// `theta -= eta (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.
    Adam {
        /// Decay of the first moment (0.9).
        beta1: f64,
        /// Decay of the second moment (0.999).
        beta2: f64,
        /// Added to the root of the second moment (1e-8).
        eps: f64,
    },
}

impl Method {
    /// Adam with the usual constants (0.9, 0.999, 1e-8).
    pub const ADAM: Method = Method::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
}

/// An optimizer: update rule, learning rate eta, batch size and the seed of the batch order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Optimizer {
    /// Update rule.
    pub method: Method,
    /// Learning rate eta.
    pub learning_rate: f64,
    /// Mini-batch size; 0 (or at least the number of samples) means full batch.
    pub batch_size: usize,
    /// Seed of the batch order (unused for full batches).
    pub seed: u64,
}

impl Optimizer {
    /// Full-batch gradient descent with learning rate `eta`.
    pub const fn gd(learning_rate: f64) -> Self {
        Self { method: Method::Sgd, learning_rate, batch_size: 0, seed: 0 }
    }

    /// Checks the constants.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `learning_rate`, `beta1`, `beta2` or `eps` when not finite
    /// or out of range (eta > 0, 0 <= beta < 1, eps >= 0).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, value| Err(Error::InvalidSpec { field, value });
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate", self.learning_rate);
        }
        if let Method::Adam { beta1, beta2, eps } = self.method {
            if !(0.0..1.0).contains(&beta1) {
                return bad("beta1", beta1);
            }
            if !(0.0..1.0).contains(&beta2) {
                return bad("beta2", beta2);
            }
            if !(eps.is_finite() && eps >= 0.0) {
                return bad("eps", eps);
            }
        }
        Ok(())
    }

    /// Length of the optimizer state for `p` parameters (Adam: m and v; SGD: none).
    pub const fn state_len(&self, p: usize) -> usize {
        match self.method {
            Method::Sgd => 0,
            Method::Adam { .. } => 2 * p,
        }
    }

    /// Samples per step for a data set of `n` samples.
    pub const fn batch_len(&self, n: usize) -> usize {
        if self.batch_size == 0 || self.batch_size >= n {
            n
        } else {
            self.batch_size
        }
    }

    /// Applies update number `step` (0-based) with gradient `grad` to `params`; `state` is
    /// zero before the first step and is carried between steps.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for wrong lengths; [`Error::NonFinite`] (train pass) if a
    /// parameter (or an Adam moment) became NaN or infinite.
    pub fn update<T: Real>(
        &self,
        params: &mut [T],
        grad: &[T],
        state: &mut [T],
        step: u64,
    ) -> Result<(), Error> {
        check_shape("grad", grad, params.len())?;
        check_shape("state", state, self.state_len(params.len()))?;
        let (m, v) = state.split_at_mut(state.len() / 2);
        if self.update_slices(params, grad, m, v, step) {
            Ok(())
        } else {
            Err(Error::NonFinite { layer: 0, pass: Pass::Train })
        }
    }

    /// [`Optimizer::update`] on a slice of the parameters: `params`, `grad` and (Adam) the
    /// matching slices `m`, `v` of the two moment halves of the state (empty for SGD), so
    /// that callers can split the update into independent pieces (the arithmetic of every
    /// element is the same). Returns whether every updated parameter is finite; the check
    /// rides along the update (one pass over memory, no early exit, so it vectorizes).
    ///
    /// # Panics
    /// If the lengths differ (`m` and `v` must be empty for SGD).
    #[track_caller]
    pub fn update_slices<T: Real>(
        &self,
        params: &mut [T],
        grad: &[T],
        m: &mut [T],
        v: &mut [T],
        step: u64,
    ) -> bool {
        assert_eq!(params.len(), grad.len(), "update: grad length");
        let rule = match self.method {
            Method::Sgd => {
                assert!(m.is_empty() && v.is_empty(), "update: SGD has no state");
                Rule::Sgd { eta: T::from_f64(self.learning_rate) }
            }
            Method::Adam { beta1, beta2, eps } => {
                assert!(m.len() == params.len() && v.len() == params.len(), "update: state");
                let t = (step + 1) as f64;
                let bc1 = 1.0 - libm::pow(beta1, t);
                let bc2 = 1.0 - libm::pow(beta2, t);
                Rule::Adam {
                    step_size: T::from_f64(self.learning_rate / bc1),
                    inv_sqrt_bc2: T::from_f64(1.0 / libm::sqrt(bc2)),
                    b1: T::from_f64(beta1),
                    b2: T::from_f64(beta2),
                    eps: T::from_f64(eps),
                }
            }
        };
        pulp::Arch::new().dispatch(Update { rule, params, grad, m, v })
    }
}

/// One update rule with its constants in `T`.
#[derive(Clone, Copy)]
enum Rule<T> {
    Sgd { eta: T },
    Adam { step_size: T, inv_sqrt_bc2: T, b1: T, b2: T, eps: T },
}

/// SIMD body of [`Optimizer::update_slices`]: the plain loops, vectorized with the target
/// features of the instruction set pulp picks; returns whether every parameter is finite.
struct Update<'a, T> {
    rule: Rule<T>,
    params: &'a mut [T],
    grad: &'a [T],
    m: &'a mut [T],
    v: &'a mut [T],
}

impl<T: Real> pulp::WithSimd for Update<'_, T> {
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> bool {
        let Self { rule, params, grad, m, v } = self;
        let mut bad = false;
        match rule {
            Rule::Sgd { eta } => {
                for (p, &g) in params.iter_mut().zip(grad) {
                    *p -= eta * g;
                    bad |= !p.is_finite();
                }
            }
            Rule::Adam { step_size, inv_sqrt_bc2, b1, b2, eps } => {
                let (c1, c2) = (T::ONE - b1, T::ONE - b2);
                for (((p, &g), m), v) in params.iter_mut().zip(grad).zip(m).zip(v) {
                    *m = b1 * *m + c1 * g;
                    *v = b2 * *v + c2 * g * g;
                    *p -= step_size * *m / (v.sqrt() * inv_sqrt_bc2 + eps);
                    // g^2 can overflow while p stays finite (the step then vanishes).
                    bad |= !(p.is_finite() & m.is_finite() & v.is_finite());
                }
            }
        }
        !bad
    }
}

/// What is trained: the network itself, or its linearization around `params0`.
#[derive(Clone, Copy, Debug)]
pub enum Model<'a, T> {
    /// `f(x; theta)`; the trained vector is theta.
    Network,
    /// `f_lin(x; theta) = f(x; theta_0) + J_0(x) (theta - theta_0)`; the trained vector is the
    /// displacement `theta - theta_0` (zero at the start), `params0` is theta_0.
    Linearized {
        /// theta_0.
        params0: &'a [T],
    },
}

/// Scratch elements [`predict`] needs for `n` inputs.
pub const fn predict_scratch(widths: &[usize], n: usize) -> usize {
    let (f, j) = (forward_scratch(widths, n), jvp_scratch(widths, n));
    cache_len(widths, n) + if f > j { f } else { j }
}

/// Outputs `out` (n x k) of `model` at `params` for inputs `x` (n x n_0).
///
/// # Errors
/// As [`forward`] and [`jvp`].
#[allow(clippy::too_many_arguments)]
pub fn predict<T: Real>(
    spec: &Spec<'_>,
    model: Model<'_, T>,
    params: &[T],
    x: &[T],
    n: usize,
    out: &mut [T],
    scratch: &mut [T],
) -> Result<(), Error> {
    check_shape("out", out, n * spec.output_dim())?;
    check_len("scratch", scratch, predict_scratch(spec.widths, n))?;
    let (cache, rest) = scratch.split_at_mut(cache_len(spec.widths, n));
    model_outputs(spec, model, params, x, n, cache, out, rest)
}

/// Forward at theta (network) or theta_0 (linearized) into `cache`, outputs into `out`.
#[allow(clippy::too_many_arguments)]
fn model_outputs<T: Real>(
    spec: &Spec<'_>,
    model: Model<'_, T>,
    params: &[T],
    x: &[T],
    n: usize,
    cache: &mut [T],
    out: &mut [T],
    scratch: &mut [T],
) -> Result<(), Error> {
    match model {
        Model::Network => {
            forward(spec, params, x, n, cache, scratch)?;
            out.copy_from_slice(output(spec, cache, n));
        }
        Model::Linearized { params0 } => {
            forward(spec, params0, x, n, cache, scratch)?;
            jvp(spec, params0, x, n, cache, params, out, scratch)?;
            for (o, &f0) in out.iter_mut().zip(output(spec, cache, n)) {
                *o += f0;
            }
        }
    }
    Ok(())
}

/// Scratch elements [`loss_gradient`] needs for `n` inputs.
pub const fn loss_gradient_scratch(widths: &[usize], n: usize) -> usize {
    let k = widths[widths.len() - 1];
    let (p, g) =
        (predict_scratch(widths, n), cache_len(widths, n) + param_gradient_scratch(widths, n));
    2 * n * k + if p > g { p } else { g }
}

/// Loss of `model` at `params` on `(x, y)` (n samples) and its gradient `grad` with respect
/// to the trained vector: `J^T dL/df` (network) or `J_0^T dL/df_lin` (linearized).
///
/// # Errors
/// As [`forward`], [`jvp`] and [`param_gradient`]; [`Error::ShapeMismatch`] for `y`.
#[allow(clippy::too_many_arguments)]
pub fn loss_gradient<T: Real>(
    spec: &Spec<'_>,
    model: Model<'_, T>,
    params: &[T],
    x: &[T],
    y: &[T],
    n: usize,
    loss: Loss,
    grad: &mut [T],
    scratch: &mut [T],
) -> Result<f64, Error> {
    let k = spec.output_dim();
    check_shape("y", y, n * k)?;
    check_len("scratch", scratch, loss_gradient_scratch(spec.widths, n))?;
    if n == 0 {
        return Err(Error::ShapeMismatch { what: "x", expected: spec.input_dim(), got: 0 });
    }
    let (f, rest) = scratch.split_at_mut(n * k);
    let (g, rest) = rest.split_at_mut(n * k);
    let (cache, rest) = rest.split_at_mut(cache_len(spec.widths, n));
    model_outputs(spec, model, params, x, n, cache, f, rest)?;
    let value = loss_and_gradient(loss, g, f, y, n);
    check_loss(spec, value)?;
    let at = match model {
        Model::Network => params,
        Model::Linearized { params0 } => params0,
    };
    param_gradient(spec, at, x, n, cache, g, grad, rest)?;
    Ok(value)
}

/// The loss of a step must be finite: an overflowing loss (outputs far from the targets) is
/// reported even where its gradient is still finite, before any parameter changes.
///
/// # Errors
/// [`Error::NonFinite`] (the readout layer, [`Pass::Loss`]) if `value` is NaN or infinite.
pub fn check_loss(spec: &Spec<'_>, value: f64) -> Result<(), Error> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite { layer: spec.layers(), pass: Pass::Loss })
    }
}

/// Fills `perm` with the batch order of epoch `epoch`: a Fisher–Yates shuffle of
/// `0..perm.len()` whose swap `i` uses `rng::uniform(seed, epoch, i)`.
pub fn epoch_permutation(perm: &mut [usize], seed: u64, epoch: u64) {
    for (i, p) in perm.iter_mut().enumerate() {
        *p = i;
    }
    for i in (1..perm.len()).rev() {
        let u = rng::uniform(seed, epoch, i as u64);
        let j = ((u * (i + 1) as f64) as usize).min(i);
        perm.swap(i, j);
    }
}

/// Scratch elements [`train_step`] needs for a batch of `batch` samples.
pub const fn train_step_scratch(widths: &[usize], bias: bool, batch: usize) -> usize {
    let (d, k) = (widths[0], widths[widths.len() - 1]);
    batch * (d + k) + param_count(widths, bias) + loss_gradient_scratch(widths, batch)
}

/// One optimizer step (number `step`, 0-based) of `model` on the data `(x, y)` of `n`
/// samples; returns the loss on the step's batch before the update.
///
/// Full batch: all samples. Mini-batches of size B: epoch `e = step / ceil(n / B)`, batch
/// `j = step % ceil(n / B)` is `perm[j B .. min((j + 1) B, n)]` of [`epoch_permutation`]`(e)`
/// (`perm` is caller scratch of length `n`, unused for full batches).
///
/// # Errors
/// Buffer and data errors of [`loss_gradient`] and [`Optimizer::update`].
#[allow(clippy::too_many_arguments)]
pub fn train_step<T: Real>(
    spec: &Spec<'_>,
    model: Model<'_, T>,
    opt: &Optimizer,
    loss: Loss,
    params: &mut [T],
    state: &mut [T],
    x: &[T],
    y: &[T],
    n: usize,
    step: u64,
    perm: &mut [usize],
    scratch: &mut [T],
) -> Result<f64, Error> {
    let (d, k, p) = (spec.input_dim(), spec.output_dim(), spec.param_count());
    check_shape("x", x, n * d)?;
    check_shape("y", y, n * k)?;
    let b = opt.batch_len(n);
    check_len("scratch", scratch, train_step_scratch(spec.widths, spec.bias, b))?;
    let (xb, rest) = scratch.split_at_mut(b * d);
    let (yb, rest) = rest.split_at_mut(b * k);
    let (grad, rest) = rest.split_at_mut(p);
    let value = if b == n {
        loss_gradient(spec, model, params, x, y, n, loss, grad, rest)?
    } else {
        check_len("perm", perm, n)?;
        let per_epoch = n.div_ceil(b) as u64;
        let perm = &mut perm[..n];
        epoch_permutation(perm, opt.seed, step / per_epoch);
        let j = (step % per_epoch) as usize;
        let idx = &perm[j * b..((j + 1) * b).min(n)];
        let nb = idx.len();
        for (r, &i) in idx.iter().enumerate() {
            xb[r * d..(r + 1) * d].copy_from_slice(&x[i * d..(i + 1) * d]);
            yb[r * k..(r + 1) * k].copy_from_slice(&y[i * k..(i + 1) * k]);
        }
        loss_gradient(spec, model, params, &xb[..nb * d], &yb[..nb * k], nb, loss, grad, rest)?
    };
    opt.update(params, grad, state, step)?;
    Ok(value)
}

/// Study A's stopping rule: stop once the loss has not gone at least `min_decrease` below
/// its reference value for `patience` consecutive steps. The reference is the first loss
/// and is reset to the current loss each time the loss beats it by `min_decrease`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plateau {
    /// Required decrease (study A: 1e-7).
    pub min_decrease: f64,
    /// Steps without that decrease before stopping (study A: 100).
    pub patience: u64,
    reference: f64,
    since: u64,
}

impl Plateau {
    /// Study A's rule: 1e-7 over 100 steps.
    pub const STUDY_A: Plateau = Plateau::new(1e-7, 100);

    /// A rule with the given constants.
    pub const fn new(min_decrease: f64, patience: u64) -> Self {
        Self { min_decrease, patience, reference: f64::INFINITY, since: 0 }
    }

    /// Records the loss of one step; `true` means stop. A non-finite loss stops at once.
    pub fn observe(&mut self, loss: f64) -> bool {
        if !loss.is_finite() {
            return true;
        }
        if loss <= self.reference - self.min_decrease || self.reference == f64::INFINITY {
            self.reference = loss;
            self.since = 0;
            false
        } else {
            self.since += 1;
            self.since >= self.patience
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Activation, Parameterization};
    use std::vec;
    use std::vec::Vec;

    /// Adam's first two steps against a hand computation (g = 0.5 then -0.25, eta = 0.1).
    #[test]
    fn adam_matches_hand_computation() {
        let opt = Optimizer {
            method: Method::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 },
            learning_rate: 0.1,
            batch_size: 0,
            seed: 0,
        };
        let mut p = [1.0f64];
        let mut s = [0.0f64; 2];
        opt.update(&mut p, &[0.5], &mut s, 0).unwrap();
        // m = 0.05, v = 0.00025; mhat = 0.5, vhat = 0.25: p = 1 - 0.1 * 0.5 / (0.5 + 1e-8).
        let p1 = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8);
        assert!((p[0] - p1).abs() < 1e-15, "{} vs {p1}", p[0]);
        opt.update(&mut p, &[-0.25], &mut s, 1).unwrap();
        let m = 0.9 * 0.05 + 0.1 * -0.25;
        let v = 0.999 * 0.00025 + 0.001 * 0.0625;
        let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.999 * 0.999));
        let p2 = p1 - 0.1 * mh / (libm::sqrt(vh) + 1e-8);
        assert!((p[0] - p2).abs() < 1e-15, "{} vs {p2}", p[0]);
        assert!((s[0] - m).abs() < 1e-17 && (s[1] - v).abs() < 1e-18);
    }

    #[test]
    fn sgd_update_and_validation() {
        let opt = Optimizer::gd(0.5);
        let mut p = [1.0f32, -2.0];
        opt.update(&mut p, &[2.0, -4.0], &mut [], 0).unwrap();
        assert_eq!(p, [0.0, 0.0]);
        assert!(Optimizer::gd(0.0).validate().is_err());
        assert!(Optimizer::gd(f64::NAN).validate().is_err());
        let adam = Optimizer { method: Method::Adam { beta1: 1.0, beta2: 0.9, eps: 0.0 }, ..opt };
        assert!(matches!(adam.validate(), Err(Error::InvalidSpec { field: "beta1", .. })));
        let mut q = [1.0f64];
        assert!(matches!(
            Optimizer::gd(1e308).update(&mut q, &[-1e308], &mut [], 0),
            Err(Error::NonFinite { pass: Pass::Train, .. })
        ));
    }

    /// Adam's second moment overflowing (g^2 > f64::MAX) while the parameter stays finite (its
    /// step then vanishes) is an error of the update, not a silently frozen parameter.
    #[test]
    fn adam_moment_overflow_is_an_error() {
        let opt = Optimizer { method: Method::ADAM, learning_rate: 0.1, batch_size: 0, seed: 0 };
        let mut p = [1.0f64, 1.0];
        let mut s = [0.0f64; 4];
        let r = opt.update(&mut p, &[0.5, 1e200], &mut s, 0);
        assert!(matches!(r, Err(Error::NonFinite { pass: Pass::Train, .. })), "{r:?}");
        assert!(p.iter().all(|v| v.is_finite()) && s[3].is_infinite(), "{p:?} {s:?}");
        // A finite g^2 of the same order is fine.
        let mut s = [0.0f64; 4];
        assert!(opt.update(&mut p, &[0.5, 1e150], &mut s, 0).is_ok());
    }

    /// A loss that overflows while its gradient does not (outputs ~1e190 against targets of
    /// order 1: squared error 1e380, gradient w.r.t. the weight 1e180) fails the step before
    /// the update: parameters and state untouched.
    #[test]
    fn overflowing_loss_is_an_error_before_the_update() {
        let widths = [1usize, 1];
        let spec =
            Spec::new(&widths, Activation::Relu, 1.0, 0.0, false, Parameterization::Standard)
                .unwrap();
        let (x, y) = ([1e-10f64, -1e-10], [0.5f64, -0.5]);
        for opt in [Optimizer::gd(1e-3), Optimizer { method: Method::ADAM, ..Optimizer::gd(1e-3) }]
        {
            let mut state = vec![0.0; opt.state_len(1)];
            let mut s = vec![0.0; train_step_scratch(&widths, false, 2)];
            let mut step = |p: &mut [f64], state: &mut [f64]| {
                let m = Model::Network;
                train_step(&spec, m, &opt, Loss::Mse, p, state, &x, &y, 2, 0, &mut [], &mut s)
            };
            let mut p = [1e200f64];
            let r = step(&mut p, &mut state);
            assert!(matches!(r, Err(Error::NonFinite { layer: 1, pass: Pass::Loss })), "{r:?}");
            assert_eq!(p, [1e200]);
            assert!(state.iter().all(|&v| v == 0.0));
            // The same network with outputs ~1e150 trains (loss 1e300, gradient finite).
            let r = step(&mut [1e160f64], &mut state);
            assert!(r.is_ok_and(|l| l.is_finite() && l > 1e299), "{opt:?}");
        }
    }

    /// The update split into pieces with `update_slices` equals the whole update bit for bit
    /// (SGD and Adam), and a non-finite parameter in any piece is reported.
    #[test]
    fn update_in_pieces_is_the_update() {
        let p0: Vec<f32> = (0..37).map(|i| crate::rng::normal(1, 0, i) as f32).collect();
        let g: Vec<f32> = (0..37).map(|i| crate::rng::normal(2, 0, i) as f32).collect();
        for opt in [Optimizer::gd(0.3), Optimizer { method: Method::ADAM, ..Optimizer::gd(0.3) }] {
            let (mut a, mut b) = (p0.clone(), p0.clone());
            let mut sa = vec![0.5f32; opt.state_len(37)];
            let mut sb = sa.clone();
            for step in 0..3 {
                opt.update(&mut a, &g, &mut sa, step).unwrap();
                let half = sb.len() / 2;
                let (m, v) = sb.split_at_mut(half);
                let adam = !m.is_empty();
                for (lo, hi) in [(0, 10), (10, 11), (11, 37)] {
                    let (m, v): (&mut [f32], &mut [f32]) =
                        if adam { (&mut m[lo..hi], &mut v[lo..hi]) } else { (&mut [], &mut []) };
                    assert!(opt.update_slices(&mut b[lo..hi], &g[lo..hi], m, v, step));
                }
            }
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{opt:?}");
            assert!(sa.iter().zip(&sb).all(|(x, y)| x.to_bits() == y.to_bits()), "{opt:?}");
        }
        let mut p = [1.0f32, f32::MAX, 2.0];
        assert!(!Optimizer::gd(1.0).update_slices(
            &mut p,
            &[0.0, -f32::MAX, 0.0],
            &mut [],
            &mut [],
            0
        ));
    }

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let mut a = [0usize; 37];
        let mut b = [0usize; 37];
        epoch_permutation(&mut a, 3, 5);
        epoch_permutation(&mut b, 3, 5);
        assert_eq!(a, b);
        let mut seen = [false; 37];
        a.iter().for_each(|&i| seen[i] = true);
        assert!(seen.iter().all(|&s| s));
        epoch_permutation(&mut b, 3, 6);
        assert_ne!(a, b);
    }

    #[test]
    fn plateau_rule() {
        let mut r = Plateau::new(1e-7, 3);
        assert!(!r.observe(1.0));
        assert!(!r.observe(0.5));
        // 0.5 - 1e-8: not enough for three steps.
        assert!(!r.observe(0.5 - 1e-8));
        assert!(!r.observe(0.5 - 2e-8));
        assert!(r.observe(0.5 - 3e-8));
        let mut r = Plateau::new(1e-7, 3);
        for i in 0..100 {
            assert!(!r.observe(1.0 - i as f64 * 1e-6));
        }
        assert!(r.observe(f64::NAN));
    }

    fn setup(widths: &[usize]) -> (Spec<'_>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let spec = Spec::new(widths, Activation::Tanh, 1.5, 0.1, true, Parameterization::Standard)
            .unwrap();
        let mut p = vec![0.0; spec.param_count()];
        spec.init(&mut p, 11).unwrap();
        let n = 12;
        let x: Vec<f64> = (0..n * widths[0]).map(|i| rng::normal(1, 2, i as u64)).collect();
        let k = spec.output_dim();
        let y: Vec<f64> =
            (0..n * k).map(|i| if i % k == (i / k) % k { 1.0 } else { 0.0 }).collect();
        (spec, p, x, y)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        spec: &Spec<'_>,
        model: Model<'_, f64>,
        opt: &Optimizer,
        loss: Loss,
        p: &mut [f64],
        x: &[f64],
        y: &[f64],
        steps: u64,
    ) -> Vec<f64> {
        let n = y.len() / spec.output_dim();
        let mut state = vec![0.0; opt.state_len(p.len())];
        let mut perm = vec![0; n];
        let mut s = vec![0.0; train_step_scratch(spec.widths, spec.bias, opt.batch_len(n))];
        (0..steps)
            .map(|t| {
                train_step(spec, model, opt, loss, p, &mut state, x, y, n, t, &mut perm, &mut s)
                    .unwrap()
            })
            .collect()
    }

    /// Full-batch GD with a small step decreases the loss at every step (MSE and CE), and
    /// every optimizer is bit-reproducible.
    #[test]
    fn gd_decreases_loss_and_runs_are_deterministic() {
        let widths = [3usize, 20, 20, 3];
        let (spec, p0, x, y) = setup(&widths);
        for loss in [Loss::Mse, Loss::CrossEntropy] {
            let mut p = p0.clone();
            let l = run(&spec, Model::Network, &Optimizer::gd(0.05), loss, &mut p, &x, &y, 30);
            assert!(l.windows(2).all(|w| w[1] < w[0]), "{loss:?}: {l:?}");
        }
        for opt in [
            Optimizer::gd(0.05),
            Optimizer { method: Method::Sgd, learning_rate: 0.05, batch_size: 5, seed: 9 },
            Optimizer { method: Method::ADAM, learning_rate: 1e-3, batch_size: 4, seed: 9 },
        ] {
            let (mut a, mut b) = (p0.clone(), p0.clone());
            let la = run(&spec, Model::Network, &opt, Loss::Mse, &mut a, &x, &y, 7);
            let lb = run(&spec, Model::Network, &opt, Loss::Mse, &mut b, &x, &y, 7);
            assert_eq!(la, lb);
            assert_eq!(a, b);
        }
    }

    /// Mini-batch SGD over one epoch visits every sample once: with eta = 0 the batch
    /// losses of an epoch average (weighted by batch size) to the full-batch loss.
    #[test]
    fn sgd_epoch_covers_the_data() {
        let widths = [3usize, 8, 3];
        let (spec, p0, x, y) = setup(&widths);
        let n = 12;
        let opt = Optimizer { method: Method::Sgd, learning_rate: 1e-300, batch_size: 5, seed: 4 };
        let mut p = p0.clone();
        let l = run(&spec, Model::Network, &opt, Loss::Mse, &mut p, &x, &y, 3);
        let sizes = [5.0, 5.0, 2.0];
        let avg: f64 = l.iter().zip(sizes).map(|(a, s)| a * s).sum::<f64>() / n as f64;
        let mut full = p0.clone();
        let lf =
            run(&spec, Model::Network, &Optimizer::gd(1e-300), Loss::Mse, &mut full, &x, &y, 1);
        assert!((avg - lf[0]).abs() < 1e-14 * lf[0], "{avg} vs {}", lf[0]);
    }

    /// The linearized model starts at the network (zero displacement) with the same loss
    /// and gradient, and its loss under GD with MSE is a convex quadratic that decreases.
    #[test]
    fn linearized_model_starts_at_the_network() {
        let widths = [3usize, 16, 16, 3];
        let (spec, p0, x, y) = setup(&widths);
        let n = 12;
        let mut s = vec![0.0; loss_gradient_scratch(&widths, n)];
        let mut g1 = vec![0.0; p0.len()];
        let mut g2 = vec![0.0; p0.len()];
        let zero = vec![0.0; p0.len()];
        let lin = Model::Linearized { params0: &p0 };
        let l1 = loss_gradient(&spec, Model::Network, &p0, &x, &y, n, Loss::Mse, &mut g1, &mut s)
            .unwrap();
        let l2 = loss_gradient(&spec, lin, &zero, &x, &y, n, Loss::Mse, &mut g2, &mut s).unwrap();
        assert_eq!(l1, l2);
        assert_eq!(g1, g2);
        let mut delta = zero.clone();
        let l = run(&spec, lin, &Optimizer::gd(0.05), Loss::Mse, &mut delta, &x, &y, 20);
        assert!(l.windows(2).all(|w| w[1] < w[0]), "{l:?}");
    }
}
