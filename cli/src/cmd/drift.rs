//! `ntk drift`: study A's training grid. For every depth and every (sigma_w^2, sigma_b^2),
//! train a fresh network (default protocol: 128 digits, MSE, full-batch GD with a constant
//! learning rate, the stopping rule) and record the final relative NTK change on the probe
//! set and the minimal loss reached; heatmaps per depth with the chi_1 = 1 line.
//!
//! Sharding and resume through [`crate::sweep`], as `ntk dispersion`: each cell is a task that
//! writes `parts/<key>.json` atomically when it finishes; a rerun skips cells whose part
//! exists, `--shard I/N` (1-based) runs the cells whose index in the grid is I - 1 modulo N,
//! and `drift.csv` is assembled from the parts in canonical order. Cell seeds derive from the
//! global seed and the cell key, so a cell's result does not depend on the grid, the shard or
//! the thread count.

use std::path::PathBuf;

use clap::Args;
use ntk_core::rng::derive_seed;
use ntk_core::train::Plateau;
use ntk_core::{Activation, Parameterization, Spec};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::args::{parse_activation, RunArgs};
use crate::cmd::train::{
    lambda_max_over_n, optimizer, probe_indices, progress, train_run, LossArg, OptArg, StopReason,
    TrainConfig,
};
use crate::datasets;
use crate::error::{CliError, CliResult};
use crate::plot::Heatmap;
use crate::runinfo::RunInfo;
use crate::sweep::{self, Part, Row, Shard};

/// Flags of `ntk drift`.
#[derive(Args, Debug, Clone)]
pub struct DriftArgs {
    /// Activation.
    #[arg(long, default_value = "relu", value_parser = parse_activation)]
    pub activation: Activation,
    /// Depths (hidden layers), e.g. 3,10,20 or 1..20:1.
    #[arg(long, default_value = "3", value_parser = sweep::parse_usize_grid)]
    pub depths: std::vec::Vec<usize>,
    /// Width of every hidden layer.
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// sigma_w^2 values, e.g. 0.5,1,2 or 0.5..3:0.5.
    #[arg(long = "sigma-w2", default_value = "0.5..3:0.5", value_parser = sweep::parse_f64_grid)]
    pub sigma_w2: std::vec::Vec<f64>,
    /// sigma_b^2 values, e.g. 0.1..0.9:0.4.
    #[arg(long = "sigma-b2", default_value = "0.1,0.5,0.9", value_parser = sweep::parse_f64_grid)]
    pub sigma_b2: std::vec::Vec<f64>,
    /// Parameterization (study A: standard).
    #[arg(long, value_enum, default_value_t = crate::args::ParamArg::Standard)]
    pub parameterization: crate::args::ParamArg,
    /// Training samples of the digits.
    #[arg(long, default_value_t = 128)]
    pub train_size: usize,
    /// Learning rate (default: --lr-fraction x 2 / lambda_max(Theta_0 / N), per cell).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Fraction of the stability limit used as default learning rate.
    #[arg(long, default_value_t = 0.5)]
    pub lr_fraction: f64,
    /// Maximum steps per cell (study A: 1e5 with learning rate 1e-5).
    #[arg(long, default_value_t = 1000)]
    pub max_steps: u64,
    /// Stopping rule: minimal decrease over --patience steps.
    #[arg(long, default_value_t = 1e-7)]
    pub min_decrease: f64,
    /// See --min-decrease.
    #[arg(long, default_value_t = 100)]
    pub patience: u64,
    /// NTK probe set size (balanced over classes).
    #[arg(long, default_value_t = 100)]
    pub probe_size: usize,
    /// Run only shard I of N (1-based, as `ntk dispersion`), e.g. 3/8.
    #[arg(long, default_value = "1/1")]
    pub shard: Shard,
    /// Output directory (parts/, drift.csv, heatmaps, run.json).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Also write PNG figures.
    #[arg(long)]
    pub png: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
}

/// A grid cell.
#[derive(Clone, Copy, Debug)]
struct Cell {
    depth: usize,
    sigma_w2: f64,
    sigma_b2: f64,
}

impl Cell {
    fn key(&self) -> String {
        format!("depth{}_sw{}_sb{}", self.depth, self.sigma_w2, self.sigma_b2)
    }
    /// The cell's seed stream.
    fn stream(&self) -> u64 {
        sweep::fnv1a(&self.key())
    }
}

/// Runs `ntk drift`.
///
/// # Errors
/// Usage errors for bad flags; runtime errors for files.
pub fn run(a: DriftArgs) -> CliResult {
    if a.depths.is_empty() || a.sigma_w2.is_empty() || a.sigma_b2.is_empty() {
        return Err(CliError::flag("--depths", "", "grids must not be empty"));
    }
    for &v in a.sigma_w2.iter().chain(&a.sigma_b2) {
        if !(v.is_finite() && v >= 0.0) {
            return Err(CliError::flag("--sigma-w2", v, "variances must be finite and >= 0"));
        }
    }
    let parts = a.out_dir.join("parts");
    std::fs::create_dir_all(&parts)
        .map_err(|e| CliError::Runtime(format!("{}: cannot create: {e}", parts.display())))?;
    let info = RunInfo::start(
        "drift",
        json!({
            "activation": a.activation.to_string(), "depths": a.depths, "width": a.width,
            "sigma_w2": a.sigma_w2, "sigma_b2": a.sigma_b2, "parameterization": a.parameterization,
            "train_size": a.train_size, "lr": a.lr, "lr_fraction": a.lr_fraction,
            "max_steps": a.max_steps, "min_decrease": a.min_decrease, "patience": a.patience,
            "probe_size": a.probe_size, "shard": a.shard, "seed": a.run.seed,
            "data": "digits", "loss": "mse", "optimizer": "gd", "precision": a.run.precision,
        }),
    );
    let mut cells = Vec::new();
    for &depth in &a.depths {
        for &sigma_b2 in &a.sigma_b2 {
            for &sigma_w2 in &a.sigma_w2 {
                cells.push(Cell { depth, sigma_w2, sigma_b2 });
            }
        }
    }
    let todo: Vec<Cell> = cells
        .iter()
        .enumerate()
        .filter(|(i, _)| a.shard.owns(*i))
        .map(|(_, c)| *c)
        .filter(|c| !sweep::part_done(&a.out_dir, &c.key()))
        .collect();
    let data = datasets::digits_split(a.train_size, 0, a.run.seed)?;
    let bar = progress(todo.len() as u64, a.run.quiet, "drift cells");
    let a2 = a.clone();
    a.run.in_pool(|| {
        todo.par_iter().try_for_each(|c| -> CliResult {
            let v = match a2.run.precision {
                crate::args::Precision::F32 => run_cell::<f32>(&a2, &data, c)?,
                crate::args::Precision::F64 => run_cell::<f64>(&a2, &data, c)?,
            };
            let row = Row {
                activation: a2.activation.to_string(),
                width: a2.width,
                sigma_b2: c.sigma_b2,
                sigma_w2: c.sigma_w2,
                depth: c.depth,
                entry: 0,
                line: line(c, &v),
            };
            sweep::write_part(&a2.out_dir, &Part { key: c.key(), rows: vec![row] })?;
            bar.inc(1);
            Ok(())
        })
    })?;
    bar.finish_and_clear();
    // Assemble whatever is complete (canonical order, as every sweep of ntk).
    let parts = sweep::read_parts(std::slice::from_ref(&a.out_dir))?;
    let keys: Vec<String> = cells.iter().map(Cell::key).collect();
    let rows = sweep::assemble(parts.values().filter(|p| keys.contains(&p.key)));
    sweep::write_table(&a.out_dir.join("drift.csv"), HEADER, &rows)?;
    let done: Vec<(Cell, Vec<f64>)> = rows
        .iter()
        .map(|r| {
            let c = Cell { depth: r.depth, sigma_w2: r.sigma_w2, sigma_b2: r.sigma_b2 };
            (c, r.line.split(',').map(|v| v.parse().unwrap_or(f64::NAN)).collect())
        })
        .collect();
    if done.len() == cells.len() {
        write_heatmaps(&a, &done)?;
    }
    info.write(
        &a.out_dir,
        json!({ "cells": cells.len(), "cells_done": done.len(), "cells_run_now": todo.len(),
                "complete": done.len() == cells.len() }),
    )
}

/// Columns of drift.csv.
pub const HEADER: &str =
    "depth,sigma_w2,sigma_b2,ntk_change,min_loss,final_train_loss,train_accuracy,steps,stop_reason,lr";
/// Columns of HEADER read by the heatmaps.
const NTK_CHANGE: usize = 3;
const MIN_LOSS: usize = 4;

fn run_cell<T: ntk_core::Real>(
    a: &DriftArgs,
    data: &datasets::Split,
    c: &Cell,
) -> CliResult<Value> {
    let mut widths = vec![data.d];
    widths.extend(std::iter::repeat_n(a.width, c.depth));
    widths.push(data.k);
    let param: Parameterization = a.parameterization.into();
    let spec = Spec::new(&widths, a.activation, c.sigma_w2, c.sigma_b2, true, param)?;
    let seed = derive_seed(a.run.seed, c.stream(), 0);
    let mut p0 = vec![T::ZERO; spec.param_count()];
    spec.init(&mut p0, seed)?;
    let x: Vec<T> = data.x_train.iter().map(|&v| T::from_f64(v)).collect();
    let t0 = std::time::Instant::now();
    let lam = lambda_max_over_n(&spec, &p0, &x);
    let lr = match (a.lr, &lam) {
        (Some(lr), _) => lr,
        (None, Ok(l)) if *l > 0.0 && l.is_finite() => a.lr_fraction * 2.0 / l,
        // The kernel overflowed at initialization: nothing trains here.
        _ => {
            return Ok(json!({"key": c.key(), "depth": c.depth, "sigma_w2": c.sigma_w2,
                "sigma_b2": c.sigma_b2, "ntk_change": null, "min_loss": null, "steps": 0,
                "stop_reason": "diverged", "lr": null}))
        }
    };
    let cfg = TrainConfig {
        loss: LossArg::Mse.into(),
        opt: optimizer(OptArg::Gd, lr, None, seed)?,
        max_steps: a.max_steps,
        stop: Some(Plateau::new(a.min_decrease, a.patience)),
        track: crate::cmd::train::Schedule::Every(0),
        linearized: false,
        probe: probe_indices(data.labels_train.as_deref(), data.n_train(), a.probe_size),
    };
    let o = train_run(&spec, &p0, data, &cfg, &indicatif::ProgressBar::hidden())?;
    let last = o.rows.last().cloned().unwrap_or_default();
    let finite = |v: f64| if v.is_finite() { json!(v) } else { json!(null) };
    Ok(json!({
        "key": c.key(), "depth": c.depth, "sigma_w2": c.sigma_w2, "sigma_b2": c.sigma_b2,
        "ntk_change": finite(last.ntk_change), "min_loss": finite(o.min_loss),
        "final_train_loss": finite(last.train_loss), "train_accuracy": finite(last.train_accuracy),
        "steps": o.steps, "stop_reason": o.stop, "lr": lr,
        "lambda_max_theta0_over_n": lam.ok(), "wall_time_s": t0.elapsed().as_secs_f64(),
        "diverged": o.stop == StopReason::Diverged,
    }))
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// A cell's CSV line (HEADER).
fn line(c: &Cell, v: &Value) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{}",
        c.depth,
        c.sigma_w2,
        c.sigma_b2,
        num(v, "ntk_change"),
        num(v, "min_loss"),
        num(v, "final_train_loss"),
        num(v, "train_accuracy"),
        num(v, "steps"),
        v.get("stop_reason").and_then(Value::as_str).unwrap_or(""),
        num(v, "lr"),
    )
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

fn write_heatmaps(a: &DriftArgs, done: &[(Cell, Vec<f64>)]) -> CliResult {
    let (xs, ys) = (sorted(&a.sigma_w2), sorted(&a.sigma_b2));
    // The chi_1 = 1 line over a fine sigma_b^2 grid spanning the plot.
    let (lo, hi) = (ys[0], ys[ys.len() - 1]);
    let eoc: Vec<(f64, f64)> = (0..=50)
        .filter_map(|i| {
            let sb = lo + (hi - lo) * i as f64 / 50.0;
            ntk_core::phase::eoc_sigma_w2(a.activation, sb).ok().map(|sw| (sw, sb))
        })
        .collect();
    for &depth in &sorted(&a.depths.iter().map(|&d| d as f64).collect::<Vec<_>>()) {
        let depth = depth as usize;
        let grid = |f: &dyn Fn(&[f64]) -> f64| -> Vec<Vec<f64>> {
            ys.iter()
                .map(|&sb| {
                    xs.iter()
                        .map(|&sw| {
                            done.iter()
                                .find(|(c, _)| {
                                    c.depth == depth && c.sigma_w2 == sw && c.sigma_b2 == sb
                                })
                                .map_or(f64::NAN, |(_, v)| f(v))
                        })
                        .collect()
                })
                .collect()
        };
        let common = |title: String, z_label: &str, z, z_range| Heatmap {
            title,
            x_label: "sigma_w^2".into(),
            y_label: "sigma_b^2".into(),
            z_label: z_label.into(),
            xs: xs.clone(),
            ys: ys.clone(),
            z,
            z_range,
            overlays: vec![("chi_1 = 1".into(), eoc.clone())],
        };
        common(
            format!("NTK change after training, {} depth {depth} width {}", a.activation, a.width),
            "log2 NTK change",
            grid(&|v| v[NTK_CHANGE].log2()),
            Some((-8.0, 0.0)),
        )
        .write(&a.out_dir.join(format!("drift_change_depth{depth}.svg")), a.png)?;
        common(
            format!("Minimal loss, {} depth {depth} width {}", a.activation, a.width),
            "log10 min loss",
            grid(&|v| v[MIN_LOSS].log10()),
            None,
        )
        .write(&a.out_dir.join(format!("drift_loss_depth{depth}.svg")), a.png)?;
    }
    Ok(())
}
