//! `ntk train`: trains a network and its linearization side by side (DESIGN §7) and tracks,
//! at the steps of a [`Schedule`] (every K steps, an explicit list, or log-spaced as study B)
//! on a fixed probe set, the losses, accuracies, the relative NTK change
//! `||Theta_t - Theta_0||_F / ||Theta_0||_F`, study B's block statistics and the distance
//! between the network and its linearization.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ntk_core::backward::{loss_and_gradient, Loss};
use ntk_core::ntk::OutputMode;
use ntk_core::simd::MatRef;
use ntk_core::train::{predict, predict_scratch, Method, Model, Optimizer, Plateau};
use ntk_core::{Real, Spec};
use rayon::prelude::*;
use serde_json::json;

use crate::args::{NetArgs, Precision, RunArgs};
use crate::datasets::{self, Split, Task};
use crate::engine::{par_empirical_ntk, row_block, PerThread};
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

/// `--track`: a named schedule of tracked steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackPreset {
    /// 0, 1, 2, 5, 10, 20, 50, 100, 200, 500, ... (1, 2 and 5 in every decade).
    Log,
    /// Study B: 0, 1, 10, 20, 50, then every multiple of 100 (100, 200, ..., 3000).
    StudyB,
}

/// The steps at which a run is tracked. Step 0 and the last step of the run are always
/// tracked as well; listed steps after the last step are not reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Every K steps (`t % K == 0`); 0 tracks only the first and the last step.
    Every(u64),
    /// Exactly these steps.
    Steps(Vec<u64>),
    /// A named schedule.
    Preset(TrackPreset),
}

impl Schedule {
    /// Whether step `t` (updates done) is on the schedule (without the always-tracked first
    /// and last steps).
    pub fn contains(&self, t: u64) -> bool {
        match self {
            Schedule::Every(k) => *k > 0 && t.is_multiple_of(*k),
            Schedule::Steps(v) => v.binary_search(&t).is_ok(),
            Schedule::Preset(TrackPreset::Log) => {
                // t = m 10^e with m in {1, 2, 5}.
                let mut m = t;
                while m >= 10 && m.is_multiple_of(10) {
                    m /= 10;
                }
                t == 0 || matches!(m, 1 | 2 | 5)
            }
            Schedule::Preset(TrackPreset::StudyB) => {
                matches!(t, 0 | 1 | 10 | 20 | 50) || t.is_multiple_of(100)
            }
        }
    }

    /// The steps a run of `last` steps tracks: 0, the scheduled steps below `last`, and `last`.
    pub fn tracked_steps(&self, last: u64) -> Vec<u64> {
        let mut out = vec![0];
        match self {
            Schedule::Steps(v) => out.extend(v.iter().copied().filter(|&t| t > 0 && t < last)),
            _ => out.extend((1..last).filter(|&t| self.contains(t))),
        }
        if last > 0 {
            out.push(last);
        }
        out
    }

    /// The schedule of the flags: `--track-steps`, else `--track`, else `--track-every`.
    ///
    /// # Errors
    /// A usage error for `--track-every 0`.
    pub fn from_flags(
        every: u64,
        steps: Option<&[usize]>,
        preset: Option<TrackPreset>,
    ) -> CliResult<Self> {
        if let Some(v) = steps {
            let mut v: Vec<u64> = v.iter().map(|&t| t as u64).collect();
            v.sort_unstable();
            v.dedup();
            return Ok(Schedule::Steps(v));
        }
        if let Some(p) = preset {
            return Ok(Schedule::Preset(p));
        }
        if every == 0 {
            return Err(CliError::flag("--track-every", 0, "must be positive"));
        }
        Ok(Schedule::Every(every))
    }

    /// A description for run.json.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Schedule::Every(k) => json!({ "every": k }),
            Schedule::Steps(v) => json!({ "steps": v }),
            Schedule::Preset(p) => json!({ "preset": p }),
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
    /// Track every K steps (and at steps 0 and the last step).
    #[arg(long, default_value_t = 100)]
    pub track_every: u64,
    /// Track exactly these steps (and the last step), e.g. study B's
    /// `0,1,10,20,50,100..3000:100`; items are N or A..B:STEP. Replaces --track-every.
    #[arg(long, value_parser = crate::sweep::parse_usize_grid,
          conflicts_with_all = ["track_every", "track"])]
    pub track_steps: Option<std::vec::Vec<usize>>,
    /// Track at a named schedule (and the last step): `log` (1, 2, 5 per decade) or `study-b`
    /// (0, 1, 10, 20, 50, then every 100). Replaces --track-every.
    #[arg(long, value_enum, conflicts_with = "track_every")]
    pub track: Option<TrackPreset>,
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
    /// Tracked steps (step 0 and the last step are always tracked).
    pub track: Schedule,
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
    let mut net_ws = ParStep::<T>::new(spec, b);
    let mut lin_ws =
        if cfg.linearized { ParStep::<T>::new(spec, b) } else { ParStep::new(spec, 0) };
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
        // Each step uses every thread of the pool (row blocks), bit-identical to the core's
        // train_step; the network first, then its linearization.
        let r_net = net_ws.step(
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
        );
        let r_lin = if cfg.linearized && r_net.is_ok() {
            lin_ws
                .step(spec, lin, &cfg.opt, cfg.loss, &mut delta, &mut lin_state, &x, &y, n, t)
                .map(Some)
        } else {
            Ok(None)
        };
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
        if last || cfg.track.contains(steps) {
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

/// Workspace of [`ParStep::step`]: one optimizer step of the core's
/// [`ntk_core::train::train_step`], computed with every thread of the rayon pool and equal to
/// it bit for bit.
///
/// The step runs the core's layer kernels in three parallel regions: (1) the forward pass
/// `h^l = c W^l x^{l-1} + c_b b^l`, `x^l = phi(h^l)` through all layers, one row block of
/// samples per work item; (2) for the linearized model, its JVP
/// `dh^l = c (dW^l x^{l-1} + W^l dx^{l-1}) + c_b db^l` the same way; (3) the backward pass as
/// two pipelined chains (see [`ParStep::backward`]): the signal backprop
/// `delta^l = phi'(h^l) .* (c W^{l+1})^T delta^{l+1}` of the whole batch on one thread, and
/// behind it, layer by layer, the weight gradients `dL/dW^l = c delta_l^T x^{l-1}` (each entry
/// keeps its whole reduction over the N samples) and the bias gradients `c_b sum_n delta_l`;
/// then the optimizer update over chunks of parameters. The core's
/// GEMM gives an entry the same value wherever it sits in the output, so no split changes a
/// bit: results are identical to the core step and to any thread count (on overflow the error
/// may name another layer than the core's).
/// Cost in FLOPs (a multiply-add is 2): forward `2 N sum_l n_{l-1} n_l`, weight gradients the
/// same, signals `2 N sum_{l>=2} n_{l-1} n_l`; the linearized model adds its JVP (forward count
/// plus the signal count) and skips the forward at theta_0, computed once per full batch and
/// kept.
///
/// Buffers are allocated once (for batches of up to `batch` samples) and reused by every step.
pub struct ParStep<T: Real> {
    rb: usize,
    /// Pre-activations h^l of every layer (the layout of the core's forward cache).
    cache: Vec<T>,
    /// Layer inputs phi(h^l) in the same layout (layer l's block feeds layer l + 1), when
    /// `acts_kept`.
    acts: Vec<T>,
    /// Whether the last forward pass kept its layer inputs in `acts`; otherwise (the network
    /// model with a piecewise-linear phi) they are recomputed from `cache` when needed, which
    /// is cheaper than writing and reading them back from memory.
    acts_kept: bool,
    /// One layer's inputs phi(h^{l-1}) of all samples, recomputed for its weight gradient.
    layer_inputs: Vec<T>,
    /// Signals delta^l = dL/dh^l of every layer, same layout.
    deltas: Vec<T>,
    /// Two tangent buffers of the JVP per row block.
    tangents: Vec<T>,
    /// GEMM scratch per row block (regions 1 and 2).
    block_scratch: Vec<T>,
    per_block: usize,
    /// GEMM scratch of the signal chain (region 3).
    sig_scratch: Vec<T>,
    /// GEMM scratch per pool thread (weight gradients, region 3).
    thread_scratch: PerThread<T>,
    f: Vec<T>,
    g: Vec<T>,
    grad: Vec<T>,
    xb: Vec<T>,
    yb: Vec<T>,
    perm: Vec<usize>,
    /// (theta_0, x, n) whose forward pass `cache` and `acts` hold (linearized, full batch).
    cache0: Option<(usize, usize, usize)>,
}

/// Splits a buffer in the forward-cache layout (layer i: n x widths[i + 1], layers one after
/// another) into row blocks of `rb` samples: `out[b][i]` is block b of layer i.
fn split_blocks<'a, T>(
    buf: &'a mut [T],
    widths: &[usize],
    n: usize,
    rb: usize,
) -> Vec<Vec<&'a mut [T]>> {
    let layers = widths.len() - 1;
    let mut out: Vec<Vec<&mut [T]>> =
        (0..n.div_ceil(rb)).map(|_| Vec::with_capacity(layers)).collect();
    let mut rest = buf;
    for &w in &widths[1..] {
        let (layer, r) = std::mem::take(&mut rest).split_at_mut(n * w);
        rest = r;
        for (b, c) in layer.chunks_mut(rb * w).enumerate() {
            out[b].push(c);
        }
    }
    out
}

impl<T: Real> ParStep<T> {
    /// A workspace for `spec` and batches of up to `batch` samples, with work items sized for
    /// the current rayon pool (one row block of samples per thread in the forward pass and
    /// the JVP, GEMM scratch per thread for the weight gradients; the split never changes
    /// results).
    pub fn new(spec: &Spec<'_>, batch: usize) -> Self {
        use ntk_core::simd::gemm_scratch;
        let w = spec.widths;
        let (d, k, m) = (spec.input_dim(), spec.output_dim(), ntk_core::spec::max_width(w));
        let batch = batch.max(1);
        // One row block per thread: each block streams every weight matrix once.
        let rb = row_block(batch);
        let blocks = batch.div_ceil(rb);
        let per_block = gemm_scratch(rb, m, m);
        let len = ntk_core::forward::cache_len(w, batch);
        Self {
            rb,
            cache: vec![T::ZERO; len],
            acts: vec![T::ZERO; len],
            acts_kept: false,
            layer_inputs: vec![T::ZERO; batch * m],
            deltas: vec![T::ZERO; len],
            tangents: vec![T::ZERO; blocks * 2 * rb * m],
            block_scratch: vec![T::ZERO; blocks * per_block],
            per_block,
            sig_scratch: vec![T::ZERO; gemm_scratch(batch, m, m)],
            thread_scratch: PerThread::new(gemm_scratch(m, m, batch)),
            f: vec![T::ZERO; batch * k],
            g: vec![T::ZERO; batch * k],
            grad: vec![T::ZERO; spec.param_count()],
            xb: vec![T::ZERO; batch * d],
            yb: vec![T::ZERO; batch * k],
            perm: Vec::new(),
            cache0: None,
        }
    }

    /// One optimizer step (number `step`) of `model` on `(x, y)` (`n` samples), exactly as
    /// [`ntk_core::train::train_step`] (same batches, same bits); returns the batch loss
    /// before the update. For the linearized model the forward cache at theta_0 of a full
    /// batch is computed at the first step and reused while `params0`, `x` and `n` stay the
    /// same buffers.
    ///
    /// # Errors
    /// As [`ntk_core::train::train_step`]; [`ntk_core::Error::ShortBuffer`] when a batch
    /// exceeds the workspace's `batch`.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
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
        use ntk_core::error::{check_len, check_shape};
        let (d, k) = (spec.input_dim(), spec.output_dim());
        check_shape("x", x, n * d)?;
        check_shape("y", y, n * k)?;
        check_shape("params", params, spec.param_count())?;
        if n == 0 {
            return Err(ntk_core::Error::ShapeMismatch { what: "x", expected: d, got: 0 });
        }
        let b = opt.batch_len(n);
        check_len("batch", &self.f, b * k)?;
        let (mut xb, mut yb) = (std::mem::take(&mut self.xb), std::mem::take(&mut self.yb));
        let nb = if b == n {
            n
        } else {
            let per_epoch = n.div_ceil(b) as u64;
            self.perm.resize(n, 0);
            ntk_core::train::epoch_permutation(&mut self.perm, opt.seed, step / per_epoch);
            let j = (step % per_epoch) as usize;
            let idx = &self.perm[j * b..((j + 1) * b).min(n)];
            for (r, &i) in idx.iter().enumerate() {
                xb[r * d..(r + 1) * d].copy_from_slice(&x[i * d..(i + 1) * d]);
                yb[r * k..(r + 1) * k].copy_from_slice(&y[i * k..(i + 1) * k]);
            }
            idx.len()
        };
        let (xs, ys) = if b == n { (x, y) } else { (&xb[..nb * d], &yb[..nb * k]) };
        let r = self.loss_gradient(spec, model, params, xs, ys, nb, loss, b == n);
        (self.xb, self.yb) = (xb, yb);
        let value = r?;
        par_update(opt, params, &self.grad, state, step)?;
        Ok(value)
    }

    /// Loss and gradient (into `self.grad`) on one batch, as
    /// [`ntk_core::train::loss_gradient`].
    #[allow(clippy::too_many_arguments)]
    fn loss_gradient(
        &mut self,
        spec: &Spec<'_>,
        model: Model<'_, T>,
        params: &[T],
        x: &[T],
        y: &[T],
        n: usize,
        loss: Loss,
        full: bool,
    ) -> Result<f64, ntk_core::Error> {
        let k = spec.output_dim();
        let at = match model {
            Model::Network => {
                self.cache0 = None;
                self.forward(spec, params, x, n, !spec.activation.is_homogeneous())?;
                let f = ntk_core::forward::output(spec, &self.cache, n);
                self.f[..n * k].copy_from_slice(f);
                params
            }
            Model::Linearized { params0 } => {
                let key = (params0.as_ptr() as usize, x.as_ptr() as usize, n);
                if !(full && self.cache0 == Some(key)) {
                    self.cache0 = None;
                    self.forward(spec, params0, x, n, true)?;
                    if full {
                        self.cache0 = Some(key);
                    }
                }
                self.jvp(spec, params0, x, n, params)?;
                let f0 = ntk_core::forward::output(spec, &self.cache, n);
                for (o, &v) in self.f[..n * k].iter_mut().zip(f0) {
                    *o += v;
                }
                params0
            }
        };
        let value = ntk_core::backward::loss_and_gradient(
            loss,
            &mut self.g[..n * k],
            &self.f[..n * k],
            y,
            n,
        );
        ntk_core::train::check_loss(spec, value)?;
        self.backward(spec, at, x, n)?;
        Ok(value)
    }

    /// Region 1: the core's forward pass into `cache` (and, with `keep`, the layer inputs into
    /// `acts`), each row block through all layers.
    fn forward(
        &mut self,
        spec: &Spec<'_>,
        params: &[T],
        x: &[T],
        n: usize,
        keep: bool,
    ) -> Result<(), ntk_core::Error> {
        use ntk_core::forward::{activations, cache_len, check_finite, forward_layer};
        let (w, rb, d, layers) = (spec.widths, self.rb, spec.input_dim(), spec.layers());
        let m = ntk_core::spec::max_width(w);
        check_finite("x", x)?;
        let len = cache_len(w, n);
        let hs = split_blocks(&mut self.cache[..len], w, n, rb);
        let acts = if keep {
            split_blocks(&mut self.acts[..len], w, n, rb)
        } else {
            (0..n.div_ceil(rb)).map(|_| Vec::new()).collect()
        };
        self.acts_kept = keep;
        hs.into_par_iter()
            .zip(acts)
            .zip(x.par_chunks(rb * d))
            .zip(self.block_scratch.par_chunks_mut(self.per_block))
            .zip(self.tangents.par_chunks_mut(2 * rb * m))
            .try_for_each(|((((mut h, mut act), xb), gs), tmp)| {
                let rows = xb.len() / d;
                for i in 0..layers {
                    let (before, after) = h.split_at_mut(i);
                    let a: &[T] = if i == 0 {
                        xb
                    } else {
                        // Kept, or in a block buffer that the next layer overwrites.
                        let dst = match act.get_mut(i - 1) {
                            Some(dst) => &mut **dst,
                            None => &mut tmp[..rows * w[i]],
                        };
                        activations(spec, dst, before[i - 1]);
                        dst
                    };
                    forward_layer(spec, params, i, after[0], MatRef::row_major(a, rows, w[i]), gs)?;
                }
                Ok(())
            })
    }

    /// Layer `i`'s inputs for all n samples: `x` (i = 0) or `phi(h^{i-1})` from `acts`.
    fn inputs<'s>(spec: &Spec<'_>, acts: &'s [T], x: &'s [T], n: usize, i: usize) -> &'s [T] {
        if i == 0 {
            x
        } else {
            ntk_core::forward::pre_activations(spec, acts, n, i - 1)
        }
    }

    /// Region 2: the core's JVP `J(params0) v` (forward-mode tangents,
    /// [`ntk_core::linearized::jvp`]) into `f`, each row block through all layers, given the
    /// forward pass at `params0` in `cache` and `acts`.
    fn jvp(
        &mut self,
        spec: &Spec<'_>,
        params0: &[T],
        x: &[T],
        n: usize,
        v: &[T],
    ) -> Result<(), ntk_core::Error> {
        use ntk_core::forward::{forward_layer, pre_activations};
        use ntk_core::simd::{gemm, MatMut};
        let (w, rb, layers, k) = (spec.widths, self.rb, spec.layers(), spec.output_dim());
        let m = ntk_core::spec::max_width(w);
        let (cache, acts) = (&self.cache, &self.acts);
        self.f[..n * k]
            .par_chunks_mut(rb * k)
            .zip(self.tangents.par_chunks_mut(2 * rb * m))
            .zip(self.block_scratch.par_chunks_mut(self.per_block))
            .enumerate()
            .try_for_each(|(b, ((fb, tan), gs))| {
                let (r0, rows) = (b * rb, fb.len() / k);
                let (cur, next) = tan.split_at_mut(rb * m);
                let (mut cur, mut next) = (cur, next);
                for i in 0..layers {
                    let (n_in, n_out) = (w[i], w[i + 1]);
                    let a = &Self::inputs(spec, acts, x, n, i)[r0 * n_in..(r0 + rows) * n_in];
                    let dh = &mut next[..rows * n_out];
                    forward_layer(spec, v, i, dh, MatRef::row_major(a, rows, n_in), gs)?;
                    if i > 0 {
                        let (wt, _) = spec.layer(params0, i);
                        gemm(
                            MatMut::row_major(dh, rows, n_out),
                            T::from_f64(spec.weight_multiplier(i)),
                            MatRef::row_major(&cur[..rows * n_in], rows, n_in),
                            MatRef::row_major(wt, n_out, n_in).t(),
                            T::ONE,
                            gs,
                        )?;
                    }
                    if i + 1 < layers {
                        let h = pre_activations(spec, cache, n, i);
                        spec.activation.mul_dphi(dh, &h[r0 * n_out..(r0 + rows) * n_out]);
                    }
                    if !ntk_core::forward::all_finite(dh) {
                        return Err(ntk_core::Error::NonFinite {
                            layer: i + 1,
                            pass: ntk_core::Pass::Forward,
                        });
                    }
                    std::mem::swap(&mut cur, &mut next);
                }
                fb.copy_from_slice(&cur[..rows * k]);
                Ok(())
            })
    }

    /// Region 3: the core's parameter gradient ([`ntk_core::backward::param_gradient`]) of
    /// `g` into `grad` at `params`, given the forward pass at `params` in `cache` (and `acts`
    /// when kept), as two pipelined chains: one thread runs the signal backprop of the whole
    /// batch, layer by layer, and hands each finished `delta^l` to the other chain, which
    /// computes that layer's weight and bias gradients meanwhile (over blocks of output rows
    /// once the signals are done, so that every thread helps with the last layers). On one
    /// thread the two alternate layer by layer, so each `delta^l` is used while in cache.
    fn backward(
        &mut self,
        spec: &Spec<'_>,
        params: &[T],
        x: &[T],
        n: usize,
    ) -> Result<(), ntk_core::Error> {
        use ntk_core::backward::{bias_gradient, signals_step};
        use ntk_core::forward::{activations, all_finite, cache_len, pre_activations};
        use ntk_core::simd::{gemm, MatMut};
        use ntk_core::{Error, Pass};
        let (w, k, layers) = (spec.widths, spec.output_dim(), spec.layers());
        let Self {
            cache,
            acts,
            acts_kept,
            layer_inputs,
            deltas,
            sig_scratch,
            thread_scratch,
            g,
            grad,
            ..
        } = self;
        let (cache, acts, acts_kept, g) = (&cache[..], &acts[..], *acts_kept, &g[..n * k]);
        // Signals of every layer (n x n_l each, the forward-cache layout): one block of n rows.
        let mut dl =
            split_blocks(&mut deltas[..cache_len(w, n)], w, n, n).pop().unwrap_or_default();
        let mut gl = split_layers(spec, grad);
        let signals_done = AtomicBool::new(false);
        let mut signals = producer(|emit| {
            let Some(last) = dl.pop() else { return Ok(()) };
            last.copy_from_slice(g);
            let mut cur: &[T] = last;
            emit((layers - 1, cur));
            for i in (1..layers).rev() {
                let dst = dl.pop().unwrap_or_default();
                let h_prev = pre_activations(spec, cache, n, i - 1);
                signals_step(spec, params, i, dst, cur, h_prev, 1, sig_scratch)?;
                cur = dst;
                emit((i - 1, cur));
            }
            signals_done.store(true, Ordering::Release);
            Ok::<(), Error>(())
        });
        let cb = T::from_f64(spec.bias_multiplier());
        let threads = thread_scratch.threads();
        // Set when a gradient entry is not finite; checked on each block while it is in cache
        // and reported after the whole backward pass, as the core does.
        let bad = AtomicBool::new(false);
        let mut rg = Ok(());
        // The second chain's work on one message of the first.
        let mut gradients = consumer(|(i, d)| {
            let (n_in, n_out) = (w[i], w[i + 1]);
            let layer = gl.pop().unwrap_or_default();
            let (gw, gb) = layer.split_at_mut(n_out * n_in);
            let a: &[T] = if i == 0 || acts_kept {
                Self::inputs(spec, acts, x, n, i)
            } else {
                let a = &mut layer_inputs[..n * n_in];
                activations(spec, a, pre_activations(spec, cache, n, i - 1));
                a
            };
            // One block while the signal chain runs, then one per thread.
            let parts = if signals_done.load(Ordering::Acquire) { threads } else { 1 };
            let ob = n_out.div_ceil(parts);
            let gbs = gb.chunks_mut(ob).chain(std::iter::repeat_with(|| &mut [][..]));
            let items: Vec<_> = gw.chunks_mut(ob * n_in).zip(gbs).enumerate().collect();
            rg = rg.and(items.into_par_iter().try_for_each(|(blk, (gw, gb))| {
                let (r0, rows) = (blk * ob, gw.len() / n_in);
                thread_scratch.with(|gs| {
                    gemm(
                        MatMut::row_major(gw, rows, n_in),
                        T::from_f64(spec.weight_multiplier(i)),
                        MatRef::row_major(d, n, n_out).t().rows(r0, rows),
                        MatRef::row_major(a, n, n_in),
                        T::ZERO,
                        gs,
                    )
                })?;
                let mut ok = all_finite(gw);
                if !gb.is_empty() {
                    bias_gradient(gb, d, n_out, r0, cb);
                    ok &= all_finite(gb);
                }
                if !ok {
                    bad.store(true, Ordering::Relaxed);
                }
                Ok::<(), Error>(())
            }));
        });
        let rs = if threads == 1 {
            // One thread: each layer's gradients right after its signals, while they are in cache.
            signals(&mut gradients)
        } else {
            let (tx, rx) = std::sync::mpsc::channel::<Msg<'_, T>>();
            let mut send = consumer(move |m| {
                let _ = tx.send(m);
            });
            // The sender is dropped with the first closure, which ends the second's loop.
            rayon::join(move || signals(&mut send), || rx.into_iter().for_each(&mut gradients)).0
        };
        rs?;
        rg?;
        if bad.load(Ordering::Relaxed) {
            return Err(Error::NonFinite { layer: 0, pass: Pass::Backward });
        }
        Ok(())
    }
}

/// A message of [`ParStep::backward`]'s signal chain: a finished layer's index and signals.
type Msg<'a, T> = (usize, &'a [T]);

/// Gives a message consumer one lifetime for its messages (a closure annotated with `Msg<'_,
/// T>` would otherwise have to accept every lifetime).
fn consumer<'a, T: 'a, F: FnMut(Msg<'a, T>)>(f: F) -> F {
    f
}

/// As [`consumer`], for the producer of the messages.
fn producer<'a, T: 'a, R, F: FnMut(&mut dyn FnMut(Msg<'a, T>)) -> R>(f: F) -> F {
    f
}

/// Splits a buffer in the parameter layout into its layers (weights then biases of each).
fn split_layers<'a, T>(spec: &Spec<'_>, buf: &'a mut [T]) -> Vec<&'a mut [T]> {
    let w = spec.widths;
    let mut out = Vec::with_capacity(spec.layers());
    let mut rest = buf;
    for i in 0..spec.layers() {
        let len = w[i + 1] * w[i] + if spec.bias { w[i + 1] } else { 0 };
        let (layer, r) = std::mem::take(&mut rest).split_at_mut(len);
        out.push(layer);
        rest = r;
    }
    out
}

/// [`Optimizer::update`] over chunks of the parameters in parallel (elementwise, so equal to
/// it bit for bit), through [`Optimizer::update_slices`].
///
/// # Errors
/// As [`Optimizer::update`].
pub fn par_update<T: Real>(
    opt: &Optimizer,
    params: &mut [T],
    grad: &[T],
    state: &mut [T],
    step: u64,
) -> Result<(), ntk_core::Error> {
    use ntk_core::error::check_shape;
    const CHUNK: usize = 1 << 14;
    check_shape("grad", grad, params.len())?;
    check_shape("state", state, opt.state_len(params.len()))?;
    let (m, v) = state.split_at_mut(state.len() / 2);
    let ok = if m.is_empty() {
        params
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .map(|(p, g)| opt.update_slices(p, g, &mut [], &mut [], step))
            .reduce(|| true, |a, b| a && b)
    } else {
        params
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .map(|(((p, g), m), v)| opt.update_slices(p, g, m, v, step))
            .reduce(|| true, |a, b| a && b)
    };
    if ok {
        Ok(())
    } else {
        Err(ntk_core::Error::NonFinite { layer: 0, pass: ntk_core::Pass::Train })
    }
}

/// One full-batch optimizer step with both cores: [`ParStep::step`] with a fresh workspace
/// (equal to [`ntk_core::train::train_step`] bit for bit, for any thread count).
///
/// # Errors
/// As [`ntk_core::train::train_step`].
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
    let full = Optimizer { batch_size: 0, ..*opt };
    ParStep::new(spec, n).step(spec, model, &full, loss, params, state, x, y, n, step)
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
    Schedule::from_flags(a.track_every, a.track_steps.as_deref(), a.track)?;
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
        "track": Schedule::from_flags(a.track_every, a.track_steps.as_deref(), a.track)
            .map_or(json!(null), |s| s.to_json()),
        "probe_size": a.probe_size,
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
        track: Schedule::from_flags(a.track_every, a.track_steps.as_deref(), a.track)?,
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

    /// The parallel step equals the core's train_step bit for bit, with 1, 2 and 4 threads:
    /// network and linearized model, GD, mini-batch SGD and Adam, with and without biases,
    /// tanh (layer inputs kept) and ReLU (recomputed)
    /// (150 samples: row blocks of 150, 75 + 75 and 38 x 3 + 36; SGD batches of 64 and 22;
    /// widths 40 and 33: uneven output-row blocks).
    #[test]
    fn parallel_step_is_the_core_step_bit_for_bit() {
        use ntk_core::train::{train_step, train_step_scratch};
        let widths = [5usize, 40, 33, 3];
        let n = 150;
        let x: Vec<f64> = (0..n * 5).map(|i| ntk_core::rng::normal(3, 0, i as u64)).collect();
        let y: Vec<f64> = (0..n * 3).map(|i| ntk_core::rng::normal(4, 0, i as u64)).collect();
        use ntk_core::{Activation, Parameterization};
        for (bias, param, act) in [
            (true, Parameterization::Standard, Activation::Tanh),
            (false, Parameterization::Ntk, Activation::Relu),
            (true, Parameterization::Standard, Activation::Relu),
        ] {
            let spec = Spec::new(&widths, act, 1.5, 0.1, bias, param).unwrap();
            let mut p0 = vec![0.0f64; spec.param_count()];
            spec.init(&mut p0, 2).unwrap();
            for opt in [
                Optimizer::gd(1e-2),
                Optimizer { method: Method::Sgd, learning_rate: 1e-2, batch_size: 64, seed: 5 },
                Optimizer { method: Method::ADAM, learning_rate: 1e-2, batch_size: 0, seed: 0 },
            ] {
                for linearized in [false, true] {
                    let model = |q0: &[f64]| -> Vec<f64> { q0.to_vec() };
                    let base = model(&p0);
                    let start = if linearized { vec![0.0; p0.len()] } else { p0.clone() };
                    let m = if linearized {
                        Model::Linearized { params0: &base }
                    } else {
                        Model::Network
                    };
                    let mut p = start.clone();
                    let mut st = vec![0.0; opt.state_len(p.len())];
                    let mut s = vec![0.0; train_step_scratch(&widths, bias, opt.batch_len(n))];
                    let mut perm = vec![0; n];
                    let core: Vec<f64> = (0..4)
                        .map(|t| {
                            train_step(
                                &spec,
                                m,
                                &opt,
                                Loss::Mse,
                                &mut p,
                                &mut st,
                                &x,
                                &y,
                                n,
                                t,
                                &mut perm,
                                &mut s,
                            )
                            .unwrap()
                        })
                        .collect();
                    for threads in [1, 2, 4] {
                        let pool =
                            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        let mut q = start.clone();
                        let mut sq = vec![0.0; opt.state_len(q.len())];
                        let l: Vec<f64> = pool.install(|| {
                            let mut ws = ParStep::new(&spec, opt.batch_len(n));
                            (0..4)
                                .map(|t| {
                                    ws.step(
                                        &spec,
                                        m,
                                        &opt,
                                        Loss::Mse,
                                        &mut q,
                                        &mut sq,
                                        &x,
                                        &y,
                                        n,
                                        t,
                                    )
                                    .unwrap()
                                })
                                .collect()
                        });
                        let what = format!(
                            "{param:?} {act} bias {bias} {opt:?} lin {linearized} t{threads}"
                        );
                        assert_eq!(l, core, "{what}");
                        assert!(
                            q.iter().zip(&p).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{what}"
                        );
                        assert_eq!(sq, st, "{what}");
                    }
                }
            }
        }
    }

    /// A step whose first layer's weight gradient overflows (f32: an input feature near
    /// `f32::MAX` that the forward pass multiplies by zero weights; found after all other
    /// layers' gradients) or whose update overflows (huge learning rate) fails as the core's
    /// step and leaves the parameters as it does: unchanged after the backward error, updated
    /// after the train-pass error.
    #[test]
    fn failing_step_leaves_params_as_the_core() {
        use ntk_core::train::{train_step, train_step_scratch};
        use ntk_core::{Activation, Error, Parameterization, Pass};
        let widths = [5usize, 40, 33, 3];
        let n = 150;
        let spec = Spec::new(&widths, Activation::Relu, 2.0, 0.1, true, Parameterization::Standard)
            .unwrap();
        let mut p0 = vec![0.0f32; spec.param_count()];
        spec.init(&mut p0, 2).unwrap();
        // W_0 is 40 x 5, row-major: column 0 zero.
        p0.iter_mut().step_by(5).take(40).for_each(|v| *v = 0.0);
        for (big, eta, pass) in [(f32::MAX, 1e-3, Pass::Backward), (1.0, 1e37, Pass::Train)] {
            let x: Vec<f32> = (0..n * 5)
                .map(
                    |i| if i % 5 == 0 { big } else { ntk_core::rng::normal(3, 0, i as u64) as f32 },
                )
                .collect();
            let y = vec![1e3f32; n * 3];
            let opt = Optimizer::gd(eta);
            let mut p = p0.clone();
            let mut s = vec![0.0; train_step_scratch(&widths, true, n)];
            let core = train_step(
                &spec,
                Model::Network,
                &opt,
                Loss::Mse,
                &mut p,
                &mut [],
                &x,
                &y,
                n,
                0,
                &mut [],
                &mut s,
            );
            assert!(matches!(core, Err(Error::NonFinite { pass: q, .. }) if q == pass), "{core:?}");
            assert_eq!(p == p0, pass == Pass::Backward);
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut q = p0.clone();
                let r = pool.install(|| {
                    ParStep::new(&spec, n).step(
                        &spec,
                        Model::Network,
                        &opt,
                        Loss::Mse,
                        &mut q,
                        &mut [],
                        &x,
                        &y,
                        n,
                        0,
                    )
                });
                assert!(matches!(r, Err(Error::NonFinite { pass: q, .. }) if q == pass), "{r:?}");
                assert!(q.iter().zip(&p).all(|(a, b)| a.to_bits() == b.to_bits()), "t{threads}");
            }
        }
    }

    /// An overflowing loss (outputs ~1e190, gradient finite) fails the parallel step as it
    /// fails the core's, before the update, for any thread count.
    #[test]
    fn overflowing_loss_fails_before_the_update() {
        use ntk_core::{Activation, Error, Parameterization, Pass};
        let widths = [1usize, 1];
        let spec =
            Spec::new(&widths, Activation::Relu, 1.0, 0.0, false, Parameterization::Standard)
                .unwrap();
        let (x, y) = ([1e-10f64, -1e-10], [0.5f64, -0.5]);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut p = [1e200f64];
            let r = pool.install(|| {
                ParStep::new(&spec, 2).step(
                    &spec,
                    Model::Network,
                    &Optimizer::gd(1e-3),
                    Loss::Mse,
                    &mut p,
                    &mut [],
                    &x,
                    &y,
                    2,
                    0,
                )
            });
            assert!(matches!(r, Err(Error::NonFinite { layer: 1, pass: Pass::Loss })), "{r:?}");
            assert_eq!(p, [1e200]);
        }
    }

    /// Every schedule tracks step 0, exactly its own steps before the last, and the last step.
    #[test]
    fn schedules_track_the_requested_steps() {
        let log = Schedule::Preset(TrackPreset::Log);
        assert_eq!(log.tracked_steps(250), [0, 1, 2, 5, 10, 20, 50, 100, 200, 250]);
        assert_eq!(log.tracked_steps(1000), [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]);
        let b = Schedule::Preset(TrackPreset::StudyB);
        assert_eq!(b.tracked_steps(450), [0, 1, 10, 20, 50, 100, 200, 300, 400, 450]);
        let list = Schedule::from_flags(100, Some(&[50, 0, 7, 7, 3, 999]), None).unwrap();
        assert_eq!(list, Schedule::Steps(vec![0, 3, 7, 50, 999]));
        assert_eq!(list.tracked_steps(60), [0, 3, 7, 50, 60]);
        assert!(!list.contains(4) && list.contains(7));
        assert_eq!(Schedule::Every(10).tracked_steps(25), [0, 10, 20, 25]);
        assert_eq!(Schedule::Every(0).tracked_steps(25), [0, 25]);
        assert_eq!(Schedule::Every(10).tracked_steps(0), [0]);
        assert!(Schedule::from_flags(0, None, None).is_err());
        assert_eq!(Schedule::from_flags(0, None, Some(TrackPreset::Log)).unwrap(), log);
    }

    #[test]
    fn accuracy_by_hand() {
        let f = [0.1, 0.9, 0.8, 0.2, 0.3, 0.7];
        assert_eq!(accuracy(&f, &[1, 0, 0]), 2.0 / 3.0);
    }
}
