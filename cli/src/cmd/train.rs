//! `ntk train`: trains a network and its linearization side by side (DESIGN §7) and tracks,
//! every K steps on a fixed probe set, the losses, accuracies, the relative NTK change
//! `||Theta_t - Theta_0||_F / ||Theta_0||_F`, study B's block statistics and the distance
//! between the network and its linearization.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ntk_core::backward::{loss_and_gradient, Loss};
use ntk_core::ntk::OutputMode;
use ntk_core::train::{
    predict, predict_scratch, train_step, train_step_scratch, Method, Model, Optimizer, Plateau,
};
use ntk_core::{Real, Spec};
use serde_json::json;

use crate::args::{NetArgs, Precision, RunArgs};
use crate::datasets::{self, Split, Task};
use crate::engine::par_empirical_ntk;
use crate::error::{CliError, CliResult};
use crate::io::{self, LabelColumn, Matrix};
use crate::plot::{Heatmap, LineChart, Series};
use crate::runinfo::RunInfo;

/// `--optimizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptArg {
    /// Full-batch gradient descent.
    Gd,
    /// Mini-batch SGD (--batch-size, default 32).
    Sgd,
    /// Adam (0.9, 0.999, 1e-8); full batch unless --batch-size.
    Adam,
}

/// `--loss`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossArg {
    /// (1 / (2N)) sum ||f - y||^2.
    Mse,
    /// Softmax cross-entropy (classification).
    CrossEntropy,
}

impl From<LossArg> for Loss {
    fn from(l: LossArg) -> Self {
        match l {
            LossArg::Mse => Loss::Mse,
            LossArg::CrossEntropy => Loss::CrossEntropy,
        }
    }
}

/// Flags of `ntk train`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Data: `digits` (the shipped 8x8 digits), `sphere` (teacher regression), or a `.npy` /
    /// `.csv` file with a label column.
    #[arg(long, default_value = "digits")]
    pub data: String,
    /// Label column of a data file: index, `last` or header name.
    #[arg(long, default_value = "last")]
    pub label_column: LabelColumn,
    /// Labels of a data file: class indices (one-hot targets) or scalar regression targets.
    #[arg(long, value_enum, default_value_t = Task::Auto)]
    pub task: Task,
    /// Training samples (drawn by a seeded shuffle).
    #[arg(long, default_value_t = 128)]
    pub train_size: usize,
    /// Test samples (disjoint from the training samples).
    #[arg(long, default_value_t = 500)]
    pub test_size: usize,
    /// Input dimension of `sphere` data.
    #[arg(long, default_value_t = 16)]
    pub input_dim: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub net: NetArgs,
    /// Training loss.
    #[arg(long, value_enum, default_value_t = LossArg::Mse)]
    pub loss: LossArg,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptArg::Gd)]
    pub optimizer: OptArg,
    /// Learning rate. Default for gd / sgd: --lr-fraction x 2 / lambda_max(Theta_0 / N), with
    /// Theta_0 the full NTK of the training set at initialization; for adam 1e-3.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Fraction of the stability limit 2 / lambda_max(Theta_0 / N) used as default --lr.
    #[arg(long, default_value_t = 0.5)]
    pub lr_fraction: f64,
    /// Mini-batch size (sgd: default 32; adam: default full batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Maximum number of steps.
    #[arg(long, default_value_t = 10_000)]
    pub max_steps: u64,
    /// Stopping rule: stop when the loss has not decreased by --min-decrease over --patience
    /// consecutive steps (study A: 1e-7 over 100).
    #[arg(long, default_value_t = 1e-7)]
    pub min_decrease: f64,
    /// See --min-decrease.
    #[arg(long, default_value_t = 100)]
    pub patience: u64,
    /// Run all --max-steps steps (no stopping rule).
    #[arg(long)]
    pub no_stop: bool,
    /// Track every K steps (and at the last step).
    #[arg(long, default_value_t = 100)]
    pub track_every: u64,
    /// Probe set for the NTK: this many training points, balanced over classes and sorted by
    /// class (study B: 100, 10 per class).
    #[arg(long, default_value_t = 100)]
    pub probe_size: usize,
    /// Do not train the linearized model alongside (lin_* columns are then empty).
    #[arg(long)]
    pub no_linearized: bool,
    /// Output directory (trace.csv, run.json, ntk_0.npy, ntk_final.npy, figures).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Also write PNG figures.
    #[arg(long)]
    pub png: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
}

/// Everything a training run needs besides the network and the data.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Loss.
    pub loss: Loss,
    /// Optimizer (learning rate set).
    pub opt: Optimizer,
    /// Maximum number of steps.
    pub max_steps: u64,
    /// Stopping rule (None: run all steps).
    pub stop: Option<Plateau>,
    /// Track every K steps (0: only the first and last step).
    pub track_every: u64,
    /// Train the linearized model alongside.
    pub linearized: bool,
    /// Indices of the probe set in the training set.
    pub probe: Vec<usize>,
}

/// One tracked step.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TraceRow {
    /// Updates done.
    pub step: u64,
    /// Training loss of the network.
    pub train_loss: f64,
    /// Test loss of the network.
    pub test_loss: f64,
    /// Training accuracy (classification).
    pub train_accuracy: f64,
    /// Test accuracy (classification).
    pub test_accuracy: f64,
    /// `||Theta_t - Theta_0||_F / ||Theta_0||_F` on the probe set.
    pub ntk_change: f64,
    /// Mean within-class off-diagonal entry / mean diagonal entry of Theta_t (probe set).
    pub block_within: f64,
    /// Mean between-class entry / mean diagonal entry of Theta_t (probe set).
    pub block_between: f64,
    /// `||f_t - f_lin,t||_F / ||f_lin,t||_F` on the test set (the training set without one).
    pub lin_distance: f64,
    /// Training loss of the linearized model.
    pub lin_train_loss: f64,
    /// Test loss of the linearized model.
    pub lin_test_loss: f64,
    /// Seconds since the start of training.
    pub wall_time_s: f64,
}

/// Column names of trace.csv.
pub const TRACE_HEADER: [&str; 12] = [
    "step",
    "train_loss",
    "test_loss",
    "train_accuracy",
    "test_accuracy",
    "ntk_change",
    "block_within",
    "block_between",
    "lin_distance",
    "lin_train_loss",
    "lin_test_loss",
    "wall_time_s",
];

impl TraceRow {
    fn values(&self) -> [f64; 12] {
        [
            self.step as f64,
            self.train_loss,
            self.test_loss,
            self.train_accuracy,
            self.test_accuracy,
            self.ntk_change,
            self.block_within,
            self.block_between,
            self.lin_distance,
            self.lin_train_loss,
            self.lin_test_loss,
            self.wall_time_s,
        ]
    }
}

/// Why training ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The stopping rule fired.
    Plateau,
    /// `max_steps` reached.
    MaxSteps,
    /// A value overflowed (the learning rate is too large for this network).
    Diverged,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Tracked rows.
    pub rows: Vec<TraceRow>,
    /// Updates done.
    pub steps: u64,
    /// Why training ended.
    pub stop: StopReason,
    /// Smallest loss observed at a step (the step's batch loss).
    pub min_loss: f64,
    /// Probe NTK at initialization (P x P, trace over outputs).
    pub theta0: Vec<f64>,
    /// Probe NTK at the end.
    pub theta_final: Vec<f64>,
    /// Network test outputs at the end (n_test x k).
    pub test_outputs: Vec<f64>,
    /// Seconds per training step (network and linearization together, tracking excluded).
    pub step_time_s: f64,
}

/// The probe set: up to `size` training indices, balanced over classes (taken in data order,
/// one class after another) and sorted by class; without classes the first `size`.
pub fn probe_indices(labels: Option<&[usize]>, n: usize, size: usize) -> Vec<usize> {
    let size = size.min(n);
    let Some(labels) = labels else { return (0..size).collect() };
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut taken = vec![0usize; classes];
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let before = out.len();
        for c in 0..classes {
            if out.len() < size && taken[c] < by_class[c].len() {
                out.push(by_class[c][taken[c]]);
                taken[c] += 1;
            }
        }
        if out.len() == before {
            break;
        }
    }
    out.sort_by_key(|&i| (labels[i], i));
    out
}

/// Study B's block statistics of a P x P kernel with labels sorted by class:
/// (mean within-class off-diagonal entry, mean between-class entry) / mean diagonal entry.
pub fn block_stats(theta: &[f64], labels: &[usize]) -> (f64, f64) {
    let p = labels.len();
    let (mut diag, mut within, mut between) = (0.0, 0.0, 0.0);
    let (mut nw, mut nb) = (0usize, 0usize);
    for i in 0..p {
        for j in 0..p {
            let v = theta[i * p + j];
            if i == j {
                diag += v;
            } else if labels[i] == labels[j] {
                within += v;
                nw += 1;
            } else {
                between += v;
                nb += 1;
            }
        }
    }
    let d = diag / p as f64;
    (within / nw as f64 / d, between / nb as f64 / d)
}

/// Fraction of rows whose argmax equals the label.
pub fn accuracy(f: &[f64], labels: &[usize]) -> f64 {
    let k = f.len() / labels.len().max(1);
    let hits = f
        .chunks_exact(k)
        .zip(labels)
        .filter(|(row, &l)| {
            let best = row.iter().enumerate().fold(0, |b, (a, &v)| if v > row[b] { a } else { b });
            best == l
        })
        .count();
    hits as f64 / labels.len() as f64
}

/// `||a - b||_F / ||b||_F`.
pub fn rel_dist(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn to_t<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

fn to_f64<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Largest eigenvalue of the full NTK of `x` (n inputs, all k outputs) divided by n: the
/// curvature that bounds stable gradient descent on MSE (eta < 2 / lambda_max(Theta / N)).
///
/// # Errors
/// Overflow in the NTK, eigensolver failure.
pub fn lambda_max_over_n<T: Real>(spec: &Spec<'_>, params: &[T], x: &[T]) -> CliResult<f64> {
    let n = x.len() / spec.input_dim();
    let dim = n * spec.output_dim();
    let theta = to_f64(&par_empirical_ntk(spec, params, x, None, OutputMode::Full)?);
    crate::linear_model::deterministic();
    let m = crate::linear_model::to_mat(&theta, dim, dim);
    let vals = m
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| CliError::Runtime(format!("eigenvalues of Theta_0 failed: {e:?}")))?;
    Ok(vals.last().copied().unwrap_or(0.0) / n as f64)
}

/// Model outputs on `x` (f64).
fn outputs<T: Real>(
    spec: &Spec<'_>,
    model: Model<'_, T>,
    params: &[T],
    x: &[T],
) -> CliResult<Vec<f64>> {
    let n = x.len() / spec.input_dim();
    let mut out = vec![T::ZERO; n * spec.output_dim()];
    let mut s = vec![T::ZERO; predict_scratch(spec.widths, n)];
    predict(spec, model, params, x, n, &mut out, &mut s)?;
    Ok(to_f64(&out))
}

fn loss_value(loss: Loss, f: &[f64], y: &[f64], k: usize) -> f64 {
    if y.is_empty() {
        return f64::NAN;
    }
    let mut g = vec![0.0; f.len()];
    loss_and_gradient(loss, &mut g, f, y, y.len() / k)
}

/// Trains `params0` (and its linearization) on `data` as `cfg` says; `bar` advances by one
/// per step.
///
/// # Errors
/// Data or buffer errors of the core (divergence is not an error: it ends the run with
/// [`StopReason::Diverged`]).
pub fn train_run<T: Real>(
    spec: &Spec<'_>,
    params0: &[T],
    data: &Split,
    cfg: &TrainConfig,
    bar: &ProgressBar,
) -> CliResult<TrainOutcome> {
    let (n, nt, k) = (data.n_train(), data.n_test(), spec.output_dim());
    let (x, y) = (to_t::<T>(&data.x_train), to_t::<T>(&data.y_train));
    let xt = to_t::<T>(&data.x_test);
    let d = data.d;
    let probe_x: Vec<T> =
        cfg.probe.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect();
    let probe_labels: Option<Vec<usize>> =
        data.labels_train.as_ref().map(|l| cfg.probe.iter().map(|&i| l[i]).collect());
    let p = params0.len();
    let mut params = params0.to_vec();
    let mut delta = vec![T::ZERO; p];
    let state_len = cfg.opt.state_len(p);
    let (mut state, mut lin_state) = (vec![T::ZERO; state_len], vec![T::ZERO; state_len]);
    let b = cfg.opt.batch_len(n);
    let scratch_len = train_step_scratch(spec.widths, spec.bias, b);
    let (mut s1, mut s2) = (vec![T::ZERO; scratch_len], vec![T::ZERO; scratch_len]);
    let (mut perm1, mut perm2) = (vec![0usize; n], vec![0usize; n]);
    let lin = Model::Linearized { params0 };
    let probe_ntk = |q: &[T]| -> CliResult<Vec<f64>> {
        if probe_x.is_empty() {
            return Ok(Vec::new());
        }
        Ok(to_f64(&par_empirical_ntk(spec, q, &probe_x, None, OutputMode::Trace)?))
    };
    let theta0 = probe_ntk(params0)?;
    let start = Instant::now();
    let mut step_time = 0.0;
    let track = |t: u64, params: &[T], delta: &[T], theta: &[f64]| -> CliResult<TraceRow> {
        let f = outputs(spec, Model::Network, params, &x)?;
        let ft = if nt > 0 { outputs(spec, Model::Network, params, &xt)? } else { Vec::new() };
        let mut row = TraceRow {
            step: t,
            train_loss: loss_value(cfg.loss, &f, &data.y_train, k),
            test_loss: loss_value(cfg.loss, &ft, &data.y_test, k),
            ntk_change: if theta.is_empty() { f64::NAN } else { rel_dist(theta, &theta0) },
            wall_time_s: start.elapsed().as_secs_f64(),
            ..TraceRow::default()
        };
        (row.train_accuracy, row.test_accuracy) = match (&data.labels_train, &data.labels_test) {
            (Some(l), Some(lt)) => {
                (accuracy(&f, l), if nt > 0 { accuracy(&ft, lt) } else { f64::NAN })
            }
            _ => (f64::NAN, f64::NAN),
        };
        (row.block_within, row.block_between) = match &probe_labels {
            Some(l) if !theta.is_empty() => block_stats(theta, l),
            _ => (f64::NAN, f64::NAN),
        };
        if cfg.linearized {
            let fl = outputs(spec, lin, delta, &x)?;
            row.lin_train_loss = loss_value(cfg.loss, &fl, &data.y_train, k);
            if nt > 0 {
                let flt = outputs(spec, lin, delta, &xt)?;
                row.lin_test_loss = loss_value(cfg.loss, &flt, &data.y_test, k);
                row.lin_distance = rel_dist(&ft, &flt);
            } else {
                row.lin_test_loss = f64::NAN;
                row.lin_distance = rel_dist(&f, &fl);
            }
        } else {
            (row.lin_train_loss, row.lin_test_loss, row.lin_distance) =
                (f64::NAN, f64::NAN, f64::NAN);
        }
        Ok(row)
    };
    let mut rows = vec![track(0, &params, &delta, &theta0)?];
    let mut stop_rule = cfg.stop;
    let mut min_loss = f64::INFINITY;
    let mut stop = StopReason::MaxSteps;
    let mut steps = 0u64;
    let mut last_theta = theta0.clone();
    while steps < cfg.max_steps {
        let t = steps;
        let t0 = Instant::now();
        // The network and its linearization step concurrently (one core each).
        let (r_net, r_lin) = rayon::join(
            || {
                train_step(
                    spec,
                    Model::Network,
                    &cfg.opt,
                    cfg.loss,
                    &mut params,
                    &mut state,
                    &x,
                    &y,
                    n,
                    t,
                    &mut perm1,
                    &mut s1,
                )
            },
            || {
                if cfg.linearized {
                    train_step(
                        spec,
                        lin,
                        &cfg.opt,
                        cfg.loss,
                        &mut delta,
                        &mut lin_state,
                        &x,
                        &y,
                        n,
                        t,
                        &mut perm2,
                        &mut s2,
                    )
                    .map(Some)
                } else {
                    Ok(None)
                }
            },
        );
        step_time += t0.elapsed().as_secs_f64();
        let loss = match (r_net, r_lin) {
            (Ok(l), Ok(_)) => l,
            (Err(ntk_core::Error::NonFinite { .. }), _)
            | (_, Err(ntk_core::Error::NonFinite { .. })) => {
                stop = StopReason::Diverged;
                break;
            }
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        steps += 1;
        bar.inc(1);
        min_loss = min_loss.min(loss);
        let plateau = stop_rule.as_mut().is_some_and(|r| r.observe(loss));
        let last = plateau || steps == cfg.max_steps;
        if last || (cfg.track_every > 0 && steps.is_multiple_of(cfg.track_every)) {
            last_theta = match probe_ntk(&params) {
                Ok(th) => th,
                Err(_) => {
                    stop = StopReason::Diverged;
                    break;
                }
            };
            rows.push(track(steps, &params, &delta, &last_theta)?);
        }
        if plateau {
            stop = StopReason::Plateau;
            break;
        }
    }
    if stop == StopReason::Diverged && rows.last().is_some_and(|r| r.step != steps) {
        // Parameters before the failed step are finite: record them.
        if let Ok(th) = probe_ntk(&params) {
            last_theta = th;
            if let Ok(r) = track(steps, &params, &delta, &last_theta) {
                rows.push(r);
            }
        }
    }
    let test_outputs =
        if nt > 0 { outputs(spec, Model::Network, &params, &xt)? } else { Vec::new() };
    Ok(TrainOutcome {
        rows,
        steps,
        stop,
        min_loss,
        theta0,
        theta_final: last_theta,
        test_outputs,
        step_time_s: step_time / steps.max(1) as f64,
    })
}

/// Samples per block of [`par_full_batch_step`]: fixed, so results do not depend on the
/// number of threads.
pub const TRAIN_BLOCK: usize = 64;

/// One full-batch optimizer step (number `step`) of `model` on all `n` samples, with the
/// loss gradient computed over fixed blocks of [`TRAIN_BLOCK`] samples in parallel:
/// `L = sum_b (n_b / n) L_b`, `grad = sum_b (n_b / n) grad_b`, summed in block order (so
/// bit-identical for any thread count; equal to the core's single-block step up to rounding).
/// Returns the loss before the update.
///
/// # Errors
/// As [`ntk_core::train::train_step`] (overflow is reported as the core's `NonFinite`).
#[allow(clippy::too_many_arguments)]
pub fn par_full_batch_step<T: Real>(
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
) -> Result<f64, ntk_core::Error> {
    use ntk_core::train::{loss_gradient, loss_gradient_scratch};
    use rayon::prelude::*;
    let (d, k, p) = (spec.input_dim(), spec.output_dim(), params.len());
    let blocks = n.div_ceil(TRAIN_BLOCK);
    let frozen: &[T] = params;
    let parts: Vec<(f64, Vec<T>)> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let (r0, r1) = (b * TRAIN_BLOCK, ((b + 1) * TRAIN_BLOCK).min(n));
            let nb = r1 - r0;
            let mut grad = vec![T::ZERO; p];
            let mut s = vec![T::ZERO; loss_gradient_scratch(spec.widths, nb)];
            let (xb, yb) = (&x[r0 * d..r1 * d], &y[r0 * k..r1 * k]);
            let l = loss_gradient(spec, model, frozen, xb, yb, nb, loss, &mut grad, &mut s)?;
            Ok((l * nb as f64 / n as f64, grad))
        })
        .collect::<Result<_, ntk_core::Error>>()?;
    let mut grad = vec![T::ZERO; p];
    let mut value = 0.0;
    for (b, (l, g)) in parts.iter().enumerate() {
        let w = T::from_f64((((b + 1) * TRAIN_BLOCK).min(n) - b * TRAIN_BLOCK) as f64 / n as f64);
        value += l;
        for (a, &v) in grad.iter_mut().zip(g) {
            *a += w * v;
        }
    }
    opt.update(params, &grad, state, step)?;
    Ok(value)
}

/// A progress bar on stderr for `len` steps, hidden with `quiet` or when stderr is not a
/// terminal.
pub fn progress(len: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// The optimizer of the flags, with learning rate `lr`.
///
/// # Errors
/// Usage errors naming --batch-size or --lr.
pub fn optimizer(
    kind: OptArg,
    lr: f64,
    batch_size: Option<usize>,
    seed: u64,
) -> CliResult<Optimizer> {
    if batch_size == Some(0) {
        return Err(CliError::flag("--batch-size", 0, "must be positive"));
    }
    let (method, batch) = match kind {
        OptArg::Gd => {
            if let Some(bs) = batch_size {
                return Err(CliError::flag(
                    "--batch-size",
                    bs,
                    "gd is full batch; use --optimizer sgd",
                ));
            }
            (Method::Sgd, 0)
        }
        OptArg::Sgd => (Method::Sgd, batch_size.unwrap_or(32)),
        OptArg::Adam => (Method::ADAM, batch_size.unwrap_or(0)),
    };
    let opt = Optimizer {
        method,
        learning_rate: lr,
        batch_size: batch,
        seed: ntk_core::rng::derive_seed(seed, 0xBA7C, 0),
    };
    opt.validate().map_err(|_| CliError::flag("--lr", lr, "must be a positive finite number"))?;
    Ok(opt)
}

/// Loads the data of `--data`.
///
/// # Errors
/// Usage errors for bad sizes, runtime errors for files.
pub fn load_data(a: &TrainArgs) -> CliResult<Split> {
    let seed = a.run.seed;
    match a.data.as_str() {
        "digits" => datasets::digits_split(a.train_size, a.test_size, seed),
        "sphere" => {
            datasets::sphere_split(a.train_size, a.test_size, a.input_dim, a.net.out_dim, seed)
        }
        path => {
            let p = Path::new(path);
            if !p.exists() {
                return Err(CliError::flag(
                    "--data",
                    path,
                    "expected digits, sphere, or an existing .npy / .csv file",
                ));
            }
            datasets::file_split(p, &a.label_column, a.task, a.train_size, a.test_size, seed)
        }
    }
}

/// Output dimension: the number of classes for classification (then --out-dim must be 1 or
/// equal), the target dimension for regression.
///
/// # Errors
/// A usage error naming --out-dim.
pub fn output_dim(net: &NetArgs, data: &Split) -> CliResult<usize> {
    if net.out_dim != 1 && net.out_dim != data.k {
        return Err(CliError::flag(
            "--out-dim",
            net.out_dim,
            format!("the data has {} targets per sample", data.k),
        ));
    }
    Ok(data.k)
}

/// Runs `ntk train`.
///
/// # Errors
/// Usage errors for bad flags, runtime errors for files.
pub fn run(a: TrainArgs) -> CliResult {
    if a.track_every == 0 {
        return Err(CliError::flag("--track-every", 0, "must be positive"));
    }
    if !(a.lr_fraction > 0.0 && a.lr_fraction.is_finite()) {
        return Err(CliError::flag("--lr-fraction", a.lr_fraction, "must be positive"));
    }
    if a.loss == LossArg::CrossEntropy && a.data == "sphere" {
        return Err(CliError::flag("--loss", "cross-entropy", "needs class labels (not sphere)"));
    }
    let data = load_data(&a)?;
    let mut net = a.net.clone();
    net.out_dim = output_dim(&a.net, &data)?;
    let widths = net.widths(data.d)?;
    let spec = net.spec(&widths)?;
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| CliError::Runtime(format!("{}: cannot create: {e}", a.out_dir.display())))?;
    let info = RunInfo::start("train", config_json(&a, &data, &widths));
    let a2 = a.clone();
    let (outcome, lr, lam) = a.run.in_pool(move || match a2.run.precision {
        Precision::F32 => train_typed::<f32>(&spec, &a2, &data),
        Precision::F64 => train_typed::<f64>(&spec, &a2, &data),
    })?;
    write_outputs(&a, &outcome)?;
    let last = outcome.rows.last().cloned().unwrap_or_default();
    if outcome.stop == StopReason::Diverged {
        eprintln!("warning: training diverged after {} steps (try a smaller --lr)", outcome.steps);
    }
    info.write(
        &a.out_dir,
        json!({
            "learning_rate": lr,
            "lambda_max_theta0_over_n": lam,
            "steps": outcome.steps,
            "stop_reason": outcome.stop,
            "min_loss": outcome.min_loss,
            "final": last,
            "step_time_s": outcome.step_time_s,
            "steps_per_s": 1.0 / outcome.step_time_s,
            "probe_size": outcome.theta0.len().isqrt(),
        }),
    )
}

fn config_json(a: &TrainArgs, data: &Split, widths: &[usize]) -> serde_json::Value {
    json!({
        "data": a.data, "data_description": data.description, "train_size": data.n_train(),
        "test_size": data.n_test(), "widths": widths, "activation": a.net.activation.to_string(),
        "sigma_w2": a.net.sigma_w2, "sigma_b2": a.net.sigma_b2,
        "parameterization": a.net.parameterization, "bias": !a.net.no_bias,
        "loss": a.loss, "optimizer": a.optimizer, "lr": a.lr, "lr_fraction": a.lr_fraction,
        "batch_size": a.batch_size, "max_steps": a.max_steps,
        "stopping_rule": if a.no_stop { json!(null) } else {
            json!({"min_decrease": a.min_decrease, "patience": a.patience}) },
        "track_every": a.track_every, "probe_size": a.probe_size,
        "linearized": !a.no_linearized, "seed": a.run.seed, "precision": a.run.precision,
        "threads": a.run.thread_count(),
    })
}

/// Learning rate, lambda_max(Theta_0 / N), outcome.
fn train_typed<T: Real>(
    spec: &Spec<'_>,
    a: &TrainArgs,
    data: &Split,
) -> CliResult<(TrainOutcome, f64, f64)> {
    let mut params0 = vec![T::ZERO; spec.param_count()];
    spec.init(&mut params0, a.run.seed)?;
    let x = to_t::<T>(&data.x_train);
    let lam = lambda_max_over_n(spec, &params0, &x)?;
    let lr = match (a.lr, a.optimizer) {
        (Some(lr), _) => lr,
        (None, OptArg::Adam) => 1e-3,
        (None, _) => a.lr_fraction * 2.0 / lam,
    };
    let cfg = TrainConfig {
        loss: a.loss.into(),
        opt: optimizer(a.optimizer, lr, a.batch_size, a.run.seed)?,
        max_steps: a.max_steps,
        stop: (!a.no_stop).then(|| Plateau::new(a.min_decrease, a.patience)),
        track_every: a.track_every,
        linearized: !a.no_linearized,
        probe: probe_indices(data.labels_train.as_deref(), data.n_train(), a.probe_size),
    };
    let bar = progress(a.max_steps, a.run.quiet, "train");
    let out = train_run(spec, &params0, data, &cfg, &bar)?;
    bar.finish_and_clear();
    Ok((out, lr, lam))
}

fn write_outputs(a: &TrainArgs, o: &TrainOutcome) -> CliResult {
    let dir = &a.out_dir;
    let table: Vec<f64> = o.rows.iter().flat_map(|r| r.values()).collect();
    let m = Matrix::new(o.rows.len(), TRACE_HEADER.len(), table);
    let header: Vec<String> = TRACE_HEADER.iter().map(|s| s.to_string()).collect();
    io::atomic_write(&dir.join("trace.csv"), |w| {
        io::write_csv(w, &m, Some(&header), io::Precision::F64)
    })?;
    let p = o.theta0.len().isqrt();
    if p > 0 {
        for (name, th) in [("ntk_0.npy", &o.theta0), ("ntk_final.npy", &o.theta_final)] {
            io::write_matrix(&dir.join(name), &Matrix::new(p, p, th.clone()), io::Precision::F64)?;
        }
    }
    let col = |f: fn(&TraceRow) -> f64| -> Vec<(f64, f64)> {
        o.rows.iter().map(|r| (r.step as f64, f(r))).collect()
    };
    let series = |label: &str, f: fn(&TraceRow) -> f64, dashed: bool| Series {
        label: label.to_string(),
        points: col(f),
        dashed,
    };
    let mut loss_series = vec![
        series("train (network)", |r| r.train_loss, false),
        series("test (network)", |r| r.test_loss, false),
    ];
    if !a.no_linearized {
        loss_series.push(series("train (linearized)", |r| r.lin_train_loss, true));
        loss_series.push(series("test (linearized)", |r| r.lin_test_loss, true));
    }
    LineChart {
        title: "Loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        log_y: true,
        log_x: false,
        series: loss_series,
    }
    .write(&dir.join("loss.svg"), a.png)?;
    let mut change =
        vec![series("||Theta_t - Theta_0||_F / ||Theta_0||_F", |r| r.ntk_change, false)];
    if !a.no_linearized {
        change.push(series("||f - f_lin|| / ||f_lin|| (test)", |r| r.lin_distance, false));
    }
    LineChart {
        title: "NTK change and distance to the linearized model".into(),
        x_label: "step".into(),
        y_label: "relative change".into(),
        log_y: true,
        log_x: false,
        series: change,
    }
    .write(&dir.join("ntk_change.svg"), a.png)?;
    if o.rows.iter().any(|r| r.block_within.is_finite()) {
        LineChart {
            title: "NTK block structure (probe set)".into(),
            x_label: "step".into(),
            y_label: "mean block entry / mean diagonal".into(),
            log_y: false,
            log_x: false,
            series: vec![
                series("within class", |r| r.block_within, false),
                series("between classes", |r| r.block_between, false),
            ],
        }
        .write(&dir.join("ntk_blocks.svg"), a.png)?;
    }
    if p > 0 {
        let logabs = |th: &[f64]| -> Vec<Vec<f64>> {
            (0..p).map(|i| (0..p).map(|j| th[i * p + j].abs().log10()).collect()).collect()
        };
        let (z0, z1) = (logabs(&o.theta0), logabs(&o.theta_final));
        let fin = z0.iter().chain(&z1).flatten().copied().filter(|v| v.is_finite());
        let range = fin.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let idx: Vec<f64> = (0..p).map(|i| i as f64).collect();
        for (name, z, when) in [("ntk_0.svg", z0, "initialization"), ("ntk_final.svg", z1, "end")] {
            Heatmap {
                title: format!(
                    "NTK on the probe set at {when} (step {})",
                    if when == "end" { o.steps } else { 0 }
                ),
                x_label: "probe input (sorted by class)".into(),
                y_label: "probe input (sorted by class)".into(),
                z_label: "log10 |Theta|".into(),
                xs: idx.clone(),
                ys: idx.clone(),
                z,
                z_range: (range.0 <= range.1).then_some(range),
                overlays: Vec::new(),
            }
            .write(&dir.join(name), a.png)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_balanced_and_sorted() {
        let labels = [2, 0, 1, 2, 2, 0, 1, 1, 2, 0];
        let p = probe_indices(Some(&labels), 10, 6);
        assert_eq!(p, vec![1, 5, 2, 6, 0, 3]);
        assert_eq!(probe_indices(None, 10, 4), vec![0, 1, 2, 3]);
        assert_eq!(probe_indices(Some(&labels), 10, 50).len(), 10);
    }

    #[test]
    fn block_stats_by_hand() {
        // Two classes of two: diag 2, within 1, between 0.5.
        let th = [2.0, 1.0, 0.5, 0.5, 1.0, 2.0, 0.5, 0.5, 0.5, 0.5, 2.0, 1.0, 0.5, 0.5, 1.0, 2.0];
        assert_eq!(block_stats(&th, &[0, 0, 1, 1]), (0.5, 0.25));
    }

    /// The block-parallel full-batch step equals the core's single-block step (1e-12) and is
    /// bit-identical with 1 and 2 threads (150 samples: blocks of 64, 64, 22).
    #[test]
    fn parallel_step_matches_core_step() {
        let widths = [5usize, 12, 3];
        let spec = Spec::new(
            &widths,
            ntk_core::Activation::Tanh,
            1.5,
            0.1,
            true,
            ntk_core::Parameterization::Standard,
        )
        .unwrap();
        let mut p0 = vec![0.0f64; spec.param_count()];
        spec.init(&mut p0, 2).unwrap();
        let n = 150;
        let x: Vec<f64> = (0..n * 5).map(|i| ntk_core::rng::normal(3, 0, i as u64)).collect();
        let y: Vec<f64> = (0..n * 3).map(|i| ntk_core::rng::normal(4, 0, i as u64)).collect();
        let opt = Optimizer { method: Method::ADAM, learning_rate: 1e-2, batch_size: 0, seed: 0 };
        let run_par = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut p = p0.clone();
            let mut st = vec![0.0; opt.state_len(p.len())];
            let l: Vec<f64> = pool.install(|| {
                (0..3)
                    .map(|t| {
                        par_full_batch_step(
                            &spec,
                            Model::Network,
                            &opt,
                            Loss::Mse,
                            &mut p,
                            &mut st,
                            &x,
                            &y,
                            n,
                            t,
                        )
                        .unwrap()
                    })
                    .collect()
            });
            (l, p)
        };
        let (l1, p1) = run_par(1);
        let (l2, p2) = run_par(2);
        assert_eq!((&l1, &p1), (&l2, &p2));
        let mut p = p0.clone();
        let mut st = vec![0.0; opt.state_len(p.len())];
        let mut s = vec![0.0; train_step_scratch(&widths, true, n)];
        for (t, &lp) in l1.iter().enumerate() {
            let l = train_step(
                &spec,
                Model::Network,
                &opt,
                Loss::Mse,
                &mut p,
                &mut st,
                &x,
                &y,
                n,
                t as u64,
                &mut [],
                &mut s,
            )
            .unwrap();
            assert!((l - lp).abs() < 1e-12 * l, "{l} vs {lp}");
        }
        assert!(rel_dist(&p1, &p) < 1e-12, "{}", rel_dist(&p1, &p));
    }

    #[test]
    fn accuracy_by_hand() {
        let f = [0.1, 0.9, 0.8, 0.2, 0.3, 0.7];
        assert_eq!(accuracy(&f, &[1, 0, 0]), 2.0 / 3.0);
    }
}
