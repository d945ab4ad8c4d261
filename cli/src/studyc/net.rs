//! A network that owns its widths and parameters (f64), with the operations study C needs:
//! outputs, vector-Jacobian products `J^T v`, the full empirical NTK, and full-batch
//! training (gradient descent and Adam).
//!
//! Training runs `ntk_core::train::train_step` (full batch; gradient descent or Adam).

use ntk_core::backward::{param_gradient, param_gradient_scratch, Loss};
use ntk_core::forward::{cache_len, forward, forward_scratch, output};
use ntk_core::ntk::OutputMode;
use ntk_core::train::{self, train_step, train_step_scratch, Model};
use ntk_core::{Activation, Parameterization, Spec};

use crate::engine::par_empirical_ntk;
use crate::error::{CliError, CliResult};

/// The architecture shared by every cell of a study (widths and seed vary per cell).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct NetConfig {
    /// Hidden activation.
    #[serde(serialize_with = "ser_display")]
    pub activation: Activation,
    /// Weight variance sigma_w^2.
    pub sigma_w2: f64,
    /// Bias variance sigma_b^2.
    pub sigma_b2: f64,
    /// Trainable biases.
    pub bias: bool,
    /// Parameterization.
    #[serde(serialize_with = "ser_display")]
    pub parameterization: Parameterization,
}

fn ser_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A fully connected network `d -> width x depth -> k` with its parameters.
#[derive(Clone, Debug)]
pub struct Net {
    widths: Vec<usize>,
    cfg: NetConfig,
    /// Parameters in the layout of [`Spec`].
    pub params: Vec<f64>,
}

/// Full-batch optimizer.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Optimizer {
    /// `theta -= lr * grad`.
    Gd {
        /// Learning rate eta.
        lr: f64,
    },
    /// Adam (Kingma & Ba) with beta1 = 0.9, beta2 = 0.999, eps = 1e-8.
    Adam {
        /// Learning rate.
        lr: f64,
    },
}

impl Net {
    /// A network with `depth` hidden layers of `width` units, initialised from `seed`.
    ///
    /// # Errors
    /// A usage error for an invalid architecture.
    pub fn new(
        cfg: NetConfig,
        d: usize,
        width: usize,
        depth: usize,
        k: usize,
        seed: u64,
    ) -> CliResult<Self> {
        let mut widths = vec![d];
        widths.extend(std::iter::repeat_n(width, depth));
        widths.push(k);
        let spec = Spec::new(
            &widths,
            cfg.activation,
            cfg.sigma_w2,
            cfg.sigma_b2,
            cfg.bias,
            cfg.parameterization,
        )
        .map_err(|e| CliError::Usage(format!("invalid network: {e}")))?;
        let mut params = vec![0.0; spec.param_count()];
        spec.init(&mut params, seed)?;
        Ok(Self { widths, cfg, params })
    }

    /// The validated spec (fields checked in [`Net::new`]).
    pub fn spec(&self) -> Spec<'_> {
        Spec {
            widths: &self.widths,
            activation: self.cfg.activation,
            sigma_w2: self.cfg.sigma_w2,
            sigma_b2: self.cfg.sigma_b2,
            bias: self.cfg.bias,
            parameterization: self.cfg.parameterization,
        }
    }

    /// Widths `[d, n_1, ..., k]`.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Input dimension d.
    pub fn input_dim(&self) -> usize {
        self.widths[0]
    }

    /// Output dimension k.
    pub fn output_dim(&self) -> usize {
        self.widths[self.widths.len() - 1]
    }

    fn rows(&self, x: &[f64]) -> usize {
        x.len() / self.input_dim()
    }

    /// Outputs f(x) (n x k, row-major).
    ///
    /// # Errors
    /// Non-finite values (naming layer and pass).
    pub fn predict(&self, x: &[f64]) -> CliResult<Vec<f64>> {
        let n = self.rows(x);
        let spec = self.spec();
        let mut cache = vec![0.0; cache_len(&self.widths, n)];
        let mut scratch = vec![0.0; forward_scratch(&self.widths, n)];
        forward(&spec, &self.params, x, n, &mut cache, &mut scratch)?;
        Ok(output(&spec, &cache, n).to_vec())
    }

    /// `J^T v = d/dtheta sum_{i,a} v_ia f_a(x_i)` (length P) for `v` (n x k): one backward pass,
    /// no Jacobian.
    ///
    /// # Errors
    /// Non-finite values.
    pub fn vjp(&self, x: &[f64], v: &[f64]) -> CliResult<Vec<f64>> {
        let n = self.rows(x);
        let spec = self.spec();
        let mut cache = vec![0.0; cache_len(&self.widths, n)];
        let mut fs = vec![0.0; forward_scratch(&self.widths, n)];
        forward(&spec, &self.params, x, n, &mut cache, &mut fs)?;
        let mut grad = vec![0.0; self.params.len()];
        let mut scratch = vec![0.0; param_gradient_scratch(&self.widths, n)];
        param_gradient(&spec, &self.params, x, n, &cache, v, &mut grad, &mut scratch)?;
        Ok(grad)
    }

    /// Empirical NTK between `x1` and `x2` (`None`: x1) in `mode` (the parallel engine, same
    /// values for any thread count).
    ///
    /// # Errors
    /// Non-finite values.
    pub fn ntk(&self, x1: &[f64], x2: Option<&[f64]>, mode: OutputMode) -> CliResult<Vec<f64>> {
        par_empirical_ntk(&self.spec(), &self.params, x1, x2, mode)
    }

    /// Trains on `(x, y)` (MSE, `(1 / 2n) sum ||f - y||^2`) for `steps` full-batch updates of
    /// `ntk_core::train`; `log(t, loss_t)` receives the loss after `t` updates for
    /// `t = 0..=steps`.
    ///
    /// # Errors
    /// Non-finite values (a diverging run names the layer and pass).
    pub fn train(
        &mut self,
        x: &[f64],
        y: &[f64],
        steps: usize,
        opt: Optimizer,
        mut log: impl FnMut(usize, f64),
    ) -> CliResult<f64> {
        let n = self.rows(x);
        let core_opt = match opt {
            Optimizer::Gd { lr } => train::Optimizer::gd(lr),
            Optimizer::Adam { lr } => train::Optimizer {
                method: train::Method::ADAM,
                learning_rate: lr,
                batch_size: 0,
                seed: 0,
            },
        };
        core_opt.validate()?;
        let w = self.widths.clone();
        let c = self.cfg;
        let spec = Spec {
            widths: &w,
            activation: c.activation,
            sigma_w2: c.sigma_w2,
            sigma_b2: c.sigma_b2,
            bias: c.bias,
            parameterization: c.parameterization,
        };
        let mut state = vec![0.0; core_opt.state_len(self.params.len())];
        let mut scratch = vec![0.0; train_step_scratch(&w, spec.bias, n)];
        for t in 0..steps {
            let loss = train_step(
                &spec,
                Model::Network,
                &core_opt,
                Loss::Mse,
                &mut self.params,
                &mut state,
                x,
                y,
                n,
                t as u64,
                &mut [],
                &mut scratch,
            );
            let loss = match loss {
                Err(e @ ntk_core::Error::NonFinite { .. }) => {
                    return Err(CliError::Runtime(format!(
                        "training diverged at step {t} ({e}); lower the learning rate"
                    )))
                }
                r => r?,
            };
            log(t, loss);
        }
        let loss = mse(&self.predict(x)?, y, n);
        log(steps, loss);
        if !loss.is_finite() {
            return Err(CliError::Runtime(format!(
                "training diverged (loss {loss}); lower the learning rate"
            )));
        }
        Ok(loss)
    }
}

/// `(1 / 2n) sum ||f - y||^2` for n rows.
pub fn mse(f: &[f64], y: &[f64], n: usize) -> f64 {
    0.5 * f.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / n as f64
}

/// Fraction of rows whose argmax of `f` equals the argmax of `y` (k columns).
pub fn accuracy(f: &[f64], y: &[f64], k: usize) -> f64 {
    let argmax = |r: &[f64]| {
        r.iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0
    };
    let n = f.len() / k;
    let hits =
        f.chunks_exact(k).zip(y.chunks_exact(k)).filter(|(a, b)| argmax(a) == argmax(b)).count();
    hits as f64 / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NetConfig {
        NetConfig {
            activation: Activation::Tanh,
            sigma_w2: 1.5,
            sigma_b2: 0.1,
            bias: true,
            parameterization: Parameterization::Ntk,
        }
    }

    #[test]
    fn vjp_is_the_transpose_of_the_ntk_factor() {
        // <J^T u, J^T v> = u^T Theta v for the full NTK.
        let net = Net::new(cfg(), 3, 7, 2, 2, 4).unwrap();
        let x: Vec<f64> = (0..12).map(|i| ntk_core::rng::normal(1, 0, i)).collect();
        let u: Vec<f64> = (0..8).map(|i| ntk_core::rng::normal(2, 0, i)).collect();
        let v: Vec<f64> = (0..8).map(|i| ntk_core::rng::normal(3, 0, i)).collect();
        let (ju, jv) = (net.vjp(&x, &u).unwrap(), net.vjp(&x, &v).unwrap());
        let lhs: f64 = ju.iter().zip(&jv).map(|(a, b)| a * b).sum();
        let theta = net.ntk(&x, None, OutputMode::Full).unwrap();
        let rhs: f64 =
            (0..8).map(|i| (0..8).map(|j| u[i] * theta[i * 8 + j] * v[j]).sum::<f64>()).sum();
        assert!((lhs - rhs).abs() < 1e-12 * rhs.abs().max(1.0), "{lhs} {rhs}");
    }

    #[test]
    fn gd_decreases_loss_and_adam_runs() {
        let x: Vec<f64> = (0..20).map(|i| ntk_core::rng::normal(5, 0, i)).collect();
        let y: Vec<f64> = (0..10).map(|i| (i as f64).sin()).collect();
        for opt in [Optimizer::Gd { lr: 0.1 }, Optimizer::Adam { lr: 0.01 }] {
            let mut net = Net::new(cfg(), 2, 16, 1, 1, 0).unwrap();
            let mut curve = vec![];
            let last = net.train(&x, &y, 50, opt, |t, l| curve.push((t, l))).unwrap();
            assert_eq!(curve.len(), 51);
            assert_eq!(curve[50].1, last);
            assert!(last < 0.5 * curve[0].1, "{opt:?}: {} -> {last}", curve[0].1);
            assert!((mse(&net.predict(&x).unwrap(), &y, 10) - last).abs() < 1e-14);
        }
    }
}
