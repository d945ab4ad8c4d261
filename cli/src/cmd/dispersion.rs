//! `ntk dispersion`: statistics of the NTK entries `Theta(x_0, x_r)` at initialization over a
//! grid of activation x width x sigma_b2 x sigma_w2 x depth (DESIGN §6, study B); also the
//! engine of `ntk phase` and `ntk merge`.
//!
//! Cells that share (activation, width, sigma_b2) form a *group*: sample `s` of a group draws
//! its inputs and unit-variance weights from the seed `derive_seed(seed, group, s)` and that
//! one draw serves every sigma_w2 and every depth of the group (see `ntk_core::dispersion`
//! for why each cell's estimator is unchanged). A *task* is a group and a chunk of
//! `--depth-chunk` depths: the unit of sharding, progress and resume.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ntk_core::dispersion::{relu_ln_mean_theta, relu_mean_theta, sphere_inputs, Family, Terms};
use ntk_core::scaled::{suspect, Scaled, PLAIN_TOLERANCE};
use ntk_core::{rng, stats, Activation, Parameterization};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::f64::consts::LOG10_E;

use crate::args::{parse_activation, ParamArg, Precision, RunArgs};
use crate::error::{CliError, CliResult};
use crate::plot::{Heatmap, LineChart, Series};
use crate::runinfo::RunInfo;
use crate::sweep::{self, Part, Row, Shard};

/// Input protocol of `ntk dispersion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputProtocol {
    /// Fresh x, y uniform on the unit sphere of R^d per sample; x_r = r x + sqrt(1 - r^2) y.
    Sphere,
    /// The rows of `--x`: entries Theta(x_0, x_j), r = cosine of x_0 and x_j.
    Fixed,
}

/// Flags of `ntk dispersion`.
#[derive(Args, Debug)]
pub struct DispersionArgs {
    /// Activation (repeat the flag for several): relu, leaky-relu:ALPHA, abrelu:A,B, erf,
    /// sigmoid, tanh, gelu, linear.
    #[arg(long, default_value = "relu", value_parser = parse_activation, action = clap::ArgAction::Append)]
    pub activation: Vec<Activation>,
    /// Input dimension d (sphere protocol).
    #[arg(long, default_value_t = 100)]
    pub input_dim: usize,
    /// Hidden widths (list: 64,128 or range 100..400:100).
    #[arg(long, default_value = "100", value_parser = sweep::parse_usize_grid)]
    pub width: std::vec::Vec<usize>,
    /// Depths, i.e. numbers of hidden layers (e.g. 1..49 or 1,2,4,8).
    #[arg(long, default_value = "1..10", value_parser = sweep::parse_usize_grid)]
    pub depths: std::vec::Vec<usize>,
    /// Weight variances sigma_w2 (e.g. 0.5,1,2,3 or 0..5:0.1).
    #[arg(long = "sigma-w2", default_value = "2", value_parser = sweep::parse_f64_grid, allow_hyphen_values = true)]
    pub sigma_w2: std::vec::Vec<f64>,
    /// Bias variances sigma_b2 (biases are trainable even when 0).
    #[arg(long = "sigma-b2", default_value = "0", value_parser = sweep::parse_f64_grid, allow_hyphen_values = true)]
    pub sigma_b2: std::vec::Vec<f64>,
    /// Parameterization (the studies use standard).
    #[arg(long, value_enum, default_value_t = ParamArg::Standard)]
    pub parameterization: ParamArg,
    /// Layers without biases.
    #[arg(long)]
    pub no_bias: bool,
    /// Independent initializations per cell.
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    /// Input protocol.
    #[arg(long, value_enum, default_value_t = InputProtocol::Sphere)]
    pub inputs: InputProtocol,
    /// Input file for `--inputs fixed` (`.npy` or `.csv`, N x d).
    #[arg(long)]
    pub x: Option<PathBuf>,
    /// Correlations r of the entries Theta(x, x_r) (sphere protocol; r = 1 is the diagonal).
    #[arg(long, default_value = "1.0,0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1,0.0", value_parser = sweep::parse_f64_grid)]
    pub correlations: std::vec::Vec<f64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub sweep: SweepRunArgs,
}

/// Flags of every sweep command about the run itself.
#[derive(Args, Debug, Clone)]
pub struct SweepRunArgs {
    /// Bootstrap resamples for the dispersion's confidence interval.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Confidence level of the interval.
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
    /// Depths per task (the unit of sharding and resume; results do not depend on it).
    #[arg(long, default_value_t = 4)]
    pub depth_chunk: usize,
    /// Run only shard I of N (1-based), e.g. 3/8; merge the shards with `ntk merge`.
    #[arg(long, default_value = "1/1")]
    pub shard: Shard,
    /// Output directory (results, parts/ for resume, run.json).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Also write PNG figures.
    #[arg(long)]
    pub png: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
}

/// Everything that determines a sweep's numbers (stored in run.json; shards of one sweep
/// have equal configs).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepConfig {
    /// `dispersion` or `phase`.
    pub kind: String,
    /// Activation names.
    pub activations: Vec<String>,
    /// Input dimension (`0`: equal to the width).
    pub input_dim: usize,
    /// Hidden widths.
    pub widths: Vec<usize>,
    /// Depths.
    pub depths: Vec<usize>,
    /// sigma_w2 values.
    pub sigma_w2: Vec<f64>,
    /// sigma_b2 values.
    pub sigma_b2: Vec<f64>,
    /// `standard` or `ntk`.
    pub parameterization: String,
    /// Trainable biases.
    pub bias: bool,
    /// Samples per cell.
    pub samples: usize,
    /// Input protocol.
    pub inputs: InputProtocol,
    /// Input file (fixed protocol).
    pub x: Option<PathBuf>,
    /// Correlations (sphere protocol).
    pub correlations: Vec<f64>,
    /// Bootstrap resamples.
    pub bootstrap: usize,
    /// Confidence level.
    pub level: f64,
    /// Depths per task.
    pub depth_chunk: usize,
    /// Global seed.
    pub seed: u64,
}

/// CSV header of `dispersion.csv` and `phase.csv`.
pub const HEADER: &str = "activation,input_dim,width,depth,sigma_w2,sigma_b2,parameterization,\
bias,inputs,samples,r,mean,var,sem,dispersion,dispersion_lo,dispersion_hi,log_mean,log_var,exact_mean,\
log10_mean,log10_var,log10_exact_mean,representation";

/// Version of the row layout of the part files (in the task keys): 2 added the columns
/// `log10_mean,log10_var,log10_exact_mean,representation`.
const ROWS_FORMAT: &str = "rows-v2";

/// Runs `ntk dispersion`.
///
/// # Errors
/// Usage errors for bad flags; runtime errors for files and overflow.
pub fn run(a: DispersionArgs) -> CliResult {
    let mut depths = a.depths.clone();
    depths.sort_unstable();
    depths.dedup();
    let cfg = SweepConfig {
        kind: "dispersion".into(),
        activations: a.activation.iter().map(|x| x.to_string()).collect(),
        input_dim: a.input_dim,
        widths: a.width.clone(),
        depths,
        sigma_w2: a.sigma_w2.clone(),
        sigma_b2: a.sigma_b2.clone(),
        parameterization: Parameterization::from(a.parameterization).to_string(),
        bias: !a.no_bias,
        samples: a.samples,
        inputs: a.inputs,
        x: a.x.clone(),
        correlations: a.correlations.clone(),
        bootstrap: a.sweep.bootstrap,
        level: a.sweep.level,
        depth_chunk: a.sweep.depth_chunk,
        seed: a.sweep.run.seed,
    };
    run_sweep(&cfg, &a.sweep)
}

/// A validated sweep, ready to plan and run.
pub struct Plan {
    /// The configuration.
    pub cfg: SweepConfig,
    activations: Vec<Activation>,
    parameterization: Parameterization,
    /// Fixed inputs (rows), if any.
    fixed: Option<Vec<f64>>,
    /// Input dimension.
    input_dim_fixed: Option<usize>,
    /// Tasks in canonical order.
    pub tasks: Vec<Task>,
}

/// A group of cells sharing one draw per sample, restricted to a chunk of depths.
#[derive(Clone, Debug)]
pub struct Task {
    /// Part file stem.
    pub key: String,
    act: usize,
    width: usize,
    sigma_b2: f64,
    group_seed: u64,
    depths: Vec<usize>,
}

impl Task {
    /// Seed of sample `s` of this task's group (inputs and unit draw).
    pub fn sample_seed(&self, s: usize) -> u64 {
        rng::derive_seed(self.group_seed, 1, s as u64)
    }

    /// Relative cost of one sample (layer products: one backprop per depth plus the forward
    /// pass), the unit of the progress bar so that its ETA holds for deep chunks too.
    fn work(&self) -> u64 {
        self.depths.iter().sum::<usize>() as u64 + self.depths[self.depths.len() - 1] as u64
    }
}

impl Plan {
    /// Validates `cfg` (reading `--x` for the fixed protocol) and lists the tasks.
    ///
    /// # Errors
    /// Usage errors naming the flag.
    pub fn new(cfg: &SweepConfig) -> CliResult<Self> {
        let activations = cfg
            .activations
            .iter()
            .map(|s| parse_activation(s).map_err(|e| CliError::flag("--activation", s, e)))
            .collect::<CliResult<Vec<_>>>()?;
        let parameterization: Parameterization = cfg
            .parameterization
            .parse()
            .map_err(|_| CliError::flag("--parameterization", &cfg.parameterization, "unknown"))?;
        let nonempty = |flag: &str, n: usize| {
            if n == 0 {
                Err(CliError::flag(flag, "(empty)", "needs at least one value"))
            } else {
                Ok(())
            }
        };
        nonempty("--activation", activations.len())?;
        nonempty("--width", cfg.widths.len())?;
        nonempty("--depths", cfg.depths.len())?;
        nonempty("--sigma-w2", cfg.sigma_w2.len())?;
        nonempty("--sigma-b2", cfg.sigma_b2.len())?;
        if let Some(w) = cfg.widths.iter().find(|&&w| w == 0) {
            return Err(CliError::flag("--width", w, "widths must be positive"));
        }
        if cfg.depths[0] == 0 {
            return Err(CliError::flag("--depths", 0, "depths count hidden layers and start at 1"));
        }
        for (flag, v) in [("--sigma-w2", &cfg.sigma_w2), ("--sigma-b2", &cfg.sigma_b2)] {
            if let Some(x) = v.iter().find(|x| **x < 0.0) {
                return Err(CliError::flag(flag, x, "variances must be non-negative"));
            }
        }
        if cfg.samples < 2 {
            return Err(CliError::flag("--samples", cfg.samples, "need at least 2"));
        }
        if cfg.bootstrap == 0 {
            return Err(CliError::flag("--bootstrap", 0, "need at least 1 resample"));
        }
        if !(cfg.level > 0.0 && cfg.level < 1.0) {
            return Err(CliError::flag("--level", cfg.level, "must be in (0, 1)"));
        }
        if cfg.depth_chunk == 0 {
            return Err(CliError::flag("--depth-chunk", 0, "must be positive"));
        }
        let (fixed, input_dim_fixed) = match cfg.inputs {
            InputProtocol::Sphere => {
                if let Some(r) = cfg.correlations.iter().find(|r| !(-1.0..=1.0).contains(*r)) {
                    return Err(CliError::flag("--correlations", r, "must be in [-1, 1]"));
                }
                nonempty("--correlations", cfg.correlations.len())?;
                if cfg.input_dim == 0 && cfg.kind == "dispersion" {
                    return Err(CliError::flag("--input-dim", 0, "must be positive"));
                }
                (None, None)
            }
            InputProtocol::Fixed => {
                let p = cfg
                    .x
                    .as_ref()
                    .ok_or_else(|| CliError::flag("--inputs", "fixed", "needs --x FILE"))?;
                let m = crate::cmd::read_inputs("--x", p, None)?;
                (Some(m.as_slice().to_vec()), Some(m.cols()))
            }
        };
        let mut plan = Plan {
            cfg: cfg.clone(),
            activations,
            parameterization,
            fixed,
            input_dim_fixed,
            tasks: Vec::new(),
        };
        plan.tasks = plan.list_tasks();
        Ok(plan)
    }

    fn input_dim(&self, width: usize) -> usize {
        match (self.input_dim_fixed, self.cfg.input_dim) {
            (Some(d), _) => d,
            (None, 0) => width,
            (None, d) => d,
        }
    }

    fn family(&self, act: usize, width: usize) -> Family {
        Family {
            input_dim: self.input_dim(width),
            width,
            activation: self.activations[act],
            bias: self.cfg.bias,
            parameterization: self.parameterization,
        }
    }

    /// Number of entries per cell (correlations, or rows of the fixed inputs).
    pub fn entries(&self) -> usize {
        match &self.fixed {
            Some(x) => x.len() / self.input_dim_fixed.unwrap_or(1),
            None => self.cfg.correlations.len(),
        }
    }

    fn list_tasks(&self) -> Vec<Task> {
        let c = &self.cfg;
        let mut tasks = Vec::new();
        for (ai, a) in c.activations.iter().enumerate() {
            for &width in &c.widths {
                for &sb2 in &c.sigma_b2 {
                    let group = format!(
                        "{a}|d={}|m={width}|sb2={sb2}|{}|bias={}|{:?}|{:?}",
                        self.input_dim(width),
                        c.parameterization,
                        c.bias,
                        c.inputs,
                        c.x
                    );
                    let group_seed = rng::derive_seed(c.seed, sweep::fnv1a(&group), 0);
                    for chunk in c.depths.chunks(c.depth_chunk) {
                        // ROWS_FORMAT: parts of an older row layout are never reused.
                        let desc = format!(
                            "{group}|{chunk:?}|{:?}|{:?}|{}|{}|{}|{}|{ROWS_FORMAT}",
                            c.sigma_w2, c.correlations, c.samples, c.bootstrap, c.level, c.seed
                        );
                        let key = format!(
                            "{:016x}-d{}-{}-{:016x}",
                            sweep::fnv1a(&group),
                            chunk[0],
                            chunk[chunk.len() - 1],
                            sweep::fnv1a(&desc)
                        );
                        tasks.push(Task {
                            key,
                            act: ai,
                            width,
                            sigma_b2: sb2,
                            group_seed,
                            depths: chunk.to_vec(),
                        });
                    }
                }
            }
        }
        tasks
    }

    /// For run.json, per group (activation, width, sigma_b2): whether the homogeneous
    /// scaling was used, and whether (in how many rows of `cells`) the entries were computed
    /// in block floating point.
    fn groups(&self, cells: &[Cell]) -> serde_json::Value {
        let groups: Vec<_> = self
            .tasks
            .iter()
            .filter(|t| t.depths[0] == self.cfg.depths[0])
            .map(|t| {
                let act = &self.cfg.activations[t.act];
                let n = cells
                    .iter()
                    .filter(|c| {
                        c.scaled
                            && &c.activation == act
                            && c.width == t.width
                            && c.sigma_b2 == t.sigma_b2
                    })
                    .count();
                json!({
                    "activation": act, "width": t.width, "sigma_b2": t.sigma_b2,
                    "homogeneous_scaling": self.scaled(t),
                    "scaled_representation": n > 0, "scaled_rows": n,
                })
            })
            .collect();
        json!(groups)
    }

    /// Whether the group of `task` uses the homogeneous scaling (one unit-scale computation
    /// for every sigma_w2).
    pub fn scaled(&self, task: &Task) -> bool {
        self.family(task.act, task.width).scalable(task.sigma_b2)
    }

    /// Inputs of sample `seed`: row 0 is x_0, then one row per distinct entry; `map[e]` is
    /// the row of entry `e`.
    fn inputs(&self, d: usize, seed: u64) -> CliResult<(Vec<f64>, Vec<usize>)> {
        match &self.fixed {
            Some(x) => Ok((x.clone(), (0..x.len() / d).collect())),
            None => {
                let rs: Vec<f64> =
                    self.cfg.correlations.iter().copied().filter(|&r| r != 1.0).collect();
                let mut map = Vec::with_capacity(self.cfg.correlations.len());
                let mut next = 1;
                for &r in &self.cfg.correlations {
                    if r == 1.0 {
                        map.push(0);
                    } else {
                        map.push(next);
                        next += 1;
                    }
                }
                let mut x = vec![0.0; (1 + rs.len()) * d];
                sphere_inputs(&mut x, seed, d, &rs)?;
                Ok((x, map))
            }
        }
    }

    /// Runs one task: the plain values of every cell, then the block floating point values
    /// of the cells that need them (see [`TaskValues`]).
    fn sample_task(&self, task: &Task, pb: &ProgressBar) -> CliResult<TaskValues> {
        let fam = self.family(task.act, task.width);
        let d = fam.input_dim;
        let scaled = fam.scalable(task.sigma_b2);
        let (ns, nd, ne, s_count) =
            (self.cfg.sigma_w2.len(), task.depths.len(), self.entries(), self.cfg.samples);
        let lmax = task.depths[nd - 1];
        let cell_err = |e: ntk_core::Error, sw2: Option<f64>, s: usize| {
            CliError::Runtime(format!(
                "{} width {} sigma_b2 {}{} sample {s}: {e}",
                fam.activation,
                fam.width,
                task.sigma_b2,
                sw2.map_or(String::new(), |v| format!(" sigma_w2 {v}"))
            ))
        };
        // Pass 1, plain f64: values and, per cell (si, k), whether it is suspect (an overflow
        // error, a suspect value or subnormal layer terms: see `ntk_core::scaled::suspect`).
        let per_sample: Vec<(Vec<f64>, Vec<bool>)> = (0..s_count)
            .into_par_iter()
            .map(|s| -> CliResult<(Vec<f64>, Vec<bool>)> {
                let seed = task.sample_seed(s);
                let (x, map) = self.inputs(d, seed)?;
                let n = x.len() / d;
                let mut draw = vec![0.0; fam.draw_len(lmax, nd)];
                fam.draw(&mut draw, seed, &task.depths)?;
                let mut a = vec![0.0; (lmax + 1) * n];
                let mut g = vec![0.0; nd * (lmax + 1) * n];
                let mut scratch = vec![0.0; fam.terms_scratch(lmax, nd, n)];
                let mut out = vec![f64::NAN; ns * nd * ne];
                let mut flag = vec![false; ns * nd];
                let subnormal = |v: &[f64]| v.iter().any(|t| *t != 0.0 && !t.is_normal());
                // Subnormal layer terms of depth index k (A_0..A_L, G_1..G_{L+1}).
                let weak = |a: &[f64], g: &[f64], lm: usize, k: usize, depth: usize| {
                    let gk = &g[k * (lm + 1) * n..][..(depth + 1) * n];
                    subnormal(&a[..(depth + 1) * n]) || subnormal(gk)
                };
                if scaled {
                    match fam.terms(&mut a, &mut g, &draw, &task.depths, &x, 1.0, 0.0, &mut scratch)
                    {
                        Err(ntk_core::Error::NonFinite { .. }) => flag.fill(true),
                        Err(e) => return Err(cell_err(e, None, s)),
                        Ok(()) => {
                            let t = Terms { a: &a, g: &g, n, max_depth: lmax };
                            for (k, &depth) in task.depths.iter().enumerate() {
                                let w = weak(&a, &g, lmax, k, depth);
                                for (si, &sw2) in self.cfg.sigma_w2.iter().enumerate() {
                                    flag[si * nd + k] = w;
                                    for (e, &j) in map.iter().enumerate() {
                                        out[(si * nd + k) * ne + e] =
                                            t.theta_scaled(&fam, sw2, k, depth, j);
                                    }
                                }
                            }
                        }
                    }
                } else {
                    for (si, &sw2) in self.cfg.sigma_w2.iter().enumerate() {
                        let (sw, sb) = (sw2.sqrt(), task.sigma_b2.sqrt());
                        let r = fam.terms(
                            &mut a,
                            &mut g,
                            &draw,
                            &task.depths,
                            &x,
                            sw,
                            sb,
                            &mut scratch,
                        );
                        match r {
                            Ok(()) => {
                                let t = Terms { a: &a, g: &g, n, max_depth: lmax };
                                for (k, &depth) in task.depths.iter().enumerate() {
                                    flag[si * nd + k] = weak(&a, &g, lmax, k, depth);
                                    for (e, &j) in map.iter().enumerate() {
                                        out[(si * nd + k) * ne + e] =
                                            t.theta_direct(&fam, sw2, task.sigma_b2, k, depth, j);
                                    }
                                }
                            }
                            // An overflow at the chunk's deepest depths: each depth alone (the
                            // same values as in the chunk), so that shallower depths keep their
                            // plain values whatever the chunking.
                            Err(ntk_core::Error::NonFinite { .. }) => {
                                for (k, &depth) in task.depths.iter().enumerate() {
                                    let one = [depth];
                                    let mut dr = vec![0.0; fam.draw_len(depth, 1)];
                                    fam.draw(&mut dr, seed, &one)?;
                                    let (a1, g1) =
                                        (&mut a[..(depth + 1) * n], &mut g[..(depth + 1) * n]);
                                    let sc = &mut scratch[..fam.terms_scratch(depth, 1, n)];
                                    match fam.terms(a1, g1, &dr, &one, &x, sw, sb, sc) {
                                        Err(ntk_core::Error::NonFinite { .. }) => {
                                            flag[si * nd + k] = true
                                        }
                                        Err(e) => return Err(cell_err(e, Some(sw2), s)),
                                        Ok(()) => {
                                            flag[si * nd + k] = weak(a1, g1, depth, 0, depth);
                                            let t = Terms { a: a1, g: g1, n, max_depth: depth };
                                            for (e, &j) in map.iter().enumerate() {
                                                out[(si * nd + k) * ne + e] = t.theta_direct(
                                                    &fam,
                                                    sw2,
                                                    task.sigma_b2,
                                                    0,
                                                    depth,
                                                    j,
                                                );
                                            }
                                        }
                                    }
                                }
                            }
                            Err(e) => return Err(cell_err(e, Some(sw2), s)),
                        }
                    }
                }
                for (c, f) in flag.iter_mut().enumerate() {
                    *f = *f || out[c * ne..(c + 1) * ne].iter().any(|v| suspect(*v));
                }
                pb.inc(task.work());
                Ok((out, flag))
            })
            .collect::<CliResult<_>>()?;
        let cells = ns * nd * ne;
        let mut plain = vec![0.0; cells * s_count];
        for (s, (v, _)) in per_sample.iter().enumerate() {
            for (c, &x) in v.iter().enumerate() {
                plain[c * s_count + s] = x;
            }
        }
        // Pass 2, block floating point, for every sample of the cells suspect in any sample.
        let todo: Vec<usize> =
            (0..ns * nd).filter(|&c| per_sample.iter().any(|(_, f)| f[c])).collect();
        let mut scaled_vals: Vec<Option<Vec<Scaled>>> = vec![None; ns * nd];
        if todo.is_empty() {
            return Ok(TaskValues { plain, scaled: scaled_vals });
        }
        let per_sample: Vec<Vec<Scaled>> = (0..s_count)
            .into_par_iter()
            .map(|s| -> CliResult<Vec<Scaled>> {
                let seed = task.sample_seed(s);
                let (x, map) = self.inputs(d, seed)?;
                let mut draw = vec![0.0; fam.draw_len(lmax, nd)];
                fam.draw(&mut draw, seed, &task.depths)?;
                let mut out = Vec::with_capacity(todo.len() * ne);
                for &c in &todo {
                    let (si, k) = (c / nd, c % nd);
                    let sw2 = self.cfg.sigma_w2[si];
                    let t = scaled_entries(&fam, task, &draw, &x, sw2, k)
                        .map_err(|e| cell_err(e, Some(sw2), s))?;
                    out.extend(map.iter().map(|&j| t[j]));
                }
                Ok(out)
            })
            .collect::<CliResult<_>>()?;
        for (t, &c) in todo.iter().enumerate() {
            let mut v = vec![Scaled::ZERO; ne * s_count];
            for (s, vals) in per_sample.iter().enumerate() {
                for e in 0..ne {
                    v[e * s_count + s] = vals[t * ne + e];
                }
            }
            // Keep the plain values where they are accurate after all (e.g. exact zeros).
            let p = (0..ne).flat_map(|e| {
                let q = (c * ne + e) * s_count;
                plain[q..q + s_count].iter().copied()
            });
            let accurate = p.zip(&v).all(|(p, v)| v.matches_f64(p, PLAIN_TOLERANCE));
            if !accurate {
                scaled_vals[c] = Some(v);
            }
        }
        Ok(TaskValues { plain, scaled: scaled_vals })
    }

    /// The rows of one task from its values (statistics per cell entry, in parallel).
    fn rows(&self, task: &Task, vals: &TaskValues, counts: &[f64]) -> Vec<Row> {
        let fam = self.family(task.act, task.width);
        let (nd, ne, s) = (task.depths.len(), self.entries(), self.cfg.samples);
        let act_name = &self.cfg.activations[task.act];
        let act_csv =
            if act_name.contains(',') { format!("\"{act_name}\"") } else { act_name.clone() };
        let (rs, norm2) = self.entry_geometry(fam.input_dim);
        (0..self.cfg.sigma_w2.len() * nd * ne)
            .into_par_iter()
            .map(|c| {
                let (si, k, e) = (c / (nd * ne), (c / ne) % nd, c % ne);
                let (sw2, depth) = (self.cfg.sigma_w2[si], task.depths[k]);
                let st = match &vals.scaled[si * nd + k] {
                    Some(v) => CellStats::of_scaled(&v[e * s..(e + 1) * s], counts, &self.cfg),
                    None => CellStats::of_plain(&vals.plain[c * s..(c + 1) * s], counts, &self.cfg),
                };
                let exact = (e < rs.len()
                    && rs[e] == 1.0
                    && self.exact_applies(&fam, task.sigma_b2))
                .then(|| {
                    let (w, d) = (fam.width, fam.input_dim);
                    (
                        relu_mean_theta(sw2, depth, w, d, norm2, true),
                        relu_ln_mean_theta(sw2, depth, w, d, norm2, true) * LOG10_E,
                    )
                });
                let opt = |x: Option<f64>| x.map_or(String::new(), |x| x.to_string());
                let line = format!(
                    "{act_csv},{},{},{depth},{sw2},{},{},{},{},{s},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    fam.input_dim,
                    fam.width,
                    task.sigma_b2,
                    self.cfg.parameterization,
                    self.cfg.bias,
                    match self.cfg.inputs {
                        InputProtocol::Sphere => "sphere",
                        InputProtocol::Fixed => "fixed",
                    },
                    rs[e],
                    value(st.mean),
                    value(st.var),
                    value(st.sem),
                    st.dispersion,
                    st.lo,
                    st.hi,
                    st.log_mean,
                    st.log_var,
                    opt(exact.map(|x| x.0).filter(|x| x.is_normal())),
                    opt((st.mean.m > 0.0).then(|| st.mean.log10())),
                    opt((st.var.m > 0.0).then(|| st.var.log10())),
                    opt(exact.map(|x| x.1)),
                    if vals.scaled[si * nd + k].is_some() { "scaled" } else { "f64" },
                );
                Row {
                    activation: act_name.clone(),
                    width: fam.width,
                    sigma_b2: task.sigma_b2,
                    sigma_w2: sw2,
                    depth,
                    entry: e,
                    line,
                }
            })
            .collect()
    }

    /// r of each entry, and ||x_0||^2.
    fn entry_geometry(&self, d: usize) -> (Vec<f64>, f64) {
        match &self.fixed {
            Some(x) => {
                let dot = |i: usize, j: usize| -> f64 {
                    (0..d).map(|t| x[i * d + t] * x[j * d + t]).sum()
                };
                let n0 = dot(0, 0);
                let rs = (0..x.len() / d)
                    .map(|j| if j == 0 { 1.0 } else { dot(0, j) / (n0 * dot(j, j)).sqrt() })
                    .collect();
                (rs, n0)
            }
            None => (self.cfg.correlations.clone(), 1.0),
        }
    }

    fn exact_applies(&self, fam: &Family, sigma_b2: f64) -> bool {
        fam.activation == Activation::Relu
            && fam.parameterization == Parameterization::Standard
            && fam.bias
            && sigma_b2 == 0.0
    }
}

/// The values of one task: plain `f64` entries of every cell, and block floating point
/// entries of the cells (sigma_w2, depth) where the plain ones are not accurate.
///
/// A cell is computed in block floating point when, in some sample, the plain computation
/// overflowed, gave a suspect entry (non-finite, zero or subnormal:
/// [`ntk_core::scaled::suspect`]) or subnormal layer terms, *and* the scaled entries of the
/// cell (every sample) differ from the plain ones by more than
/// [`ntk_core::scaled::PLAIN_TOLERANCE`] or do not fit `f64`. Elsewhere the plain values are
/// used unchanged.
struct TaskValues {
    /// `[((si * nd + k) * ne + e) * samples + s]`.
    plain: Vec<f64>,
    /// Per cell `si * nd + k`: the scaled entries `[e * samples + s]`, if used.
    scaled: Vec<Option<Vec<Scaled>>>,
}

/// `Theta(x_0, x_j)` (`j` over the rows of `x`) of the depth-`task.depths[k]` network of the
/// unit draw `draw` at `sigma_w2`, in block floating point:
/// [`ntk_core::scaled::empirical_ntk_scaled`] on the parameters of [`Family::params`].
fn scaled_entries(
    fam: &Family,
    task: &Task,
    draw: &[f64],
    x: &[f64],
    sigma_w2: f64,
    k: usize,
) -> Result<Vec<Scaled>, ntk_core::Error> {
    use ntk_core::scaled::{empirical_ntk_scaled, empirical_ntk_scaled_scratch};
    let (d, depth) = (fam.input_dim, task.depths[k]);
    let n = x.len() / d;
    let mut widths = vec![fam.width; depth + 2];
    (widths[0], widths[depth + 1]) = (d, 1);
    let spec = ntk_core::Spec::new(
        &widths,
        fam.activation,
        sigma_w2,
        task.sigma_b2,
        fam.bias,
        fam.parameterization,
    )?;
    let mut p = vec![0.0; spec.param_count()];
    fam.params(&mut p, &spec, draw, &task.depths, k)?;
    let mut out = vec![Scaled::ZERO; n];
    let mut s = vec![0.0; empirical_ntk_scaled_scratch(&widths, 1, Some(n))];
    let full = ntk_core::ntk::OutputMode::Full;
    empirical_ntk_scaled(&spec, &p, &mut out, &x[..d], Some(x), full, &mut s)?;
    Ok(out)
}

/// Statistics of one cell entry (DESIGN §6). Mean, variance and standard error are
/// [`Scaled`] numbers, computed over the sample's common power-of-two exponent `E`
/// ([`ntk_core::scaled::common_exponent`]): `stats::moments` and the bootstrap of the values
/// `t_i / 2^E`, then scaled back by `2^E` (`2^2E` for the variance). Scaling by a power of two
/// is exact, so these equal the plain `f64` statistics bit for bit wherever those neither
/// overflow nor underflow, and the dispersion `E[T^2] / E[T]^2` and its interval, which do
/// not depend on a common scale, are finite at any scale.
struct CellStats {
    mean: Scaled,
    var: Scaled,
    sem: Scaled,
    dispersion: f64,
    lo: f64,
    hi: f64,
    /// Mean and unbiased variance of `ln t_i` (NaN if some `t_i <= 0`).
    log_mean: f64,
    log_var: f64,
}

impl CellStats {
    /// From plain values; the log-moments are those of `stats::moments` on the values.
    fn of_plain(v: &[f64], counts: &[f64], cfg: &SweepConfig) -> Self {
        let m = stats::moments(v);
        let sv: Vec<Scaled> = v.iter().map(|&x| Scaled::new(x)).collect();
        Self { log_mean: m.log_mean, log_var: m.log_var, ..Self::common(&sv, counts, cfg) }
    }

    /// From block floating point values; the log-moments are those of `ln t_i = ln m_i +
    /// e_i ln 2`.
    fn of_scaled(v: &[Scaled], counts: &[f64], cfg: &SweepConfig) -> Self {
        let (log_mean, log_var) = if v.iter().all(|x| x.m > 0.0) {
            let l: Vec<f64> = v.iter().map(|x| x.ln()).collect();
            let m = stats::moments(&l);
            (m.mean, m.var)
        } else {
            (f64::NAN, f64::NAN)
        };
        Self { log_mean, log_var, ..Self::common(v, counts, cfg) }
    }

    fn common(v: &[Scaled], counts: &[f64], cfg: &SweepConfig) -> Self {
        use ntk_core::scaled::{common_exponent, mantissas};
        let e = common_exponent(v);
        let mut t = vec![0.0; v.len()];
        mantissas(&mut t, v, e);
        let m = stats::moments(&t);
        let mut work = vec![0.0; cfg.bootstrap];
        let (lo, hi) = stats::bootstrap_dispersion(&mut work, &t, counts, cfg.bootstrap, cfg.level);
        Self {
            mean: Scaled::from_parts(m.mean, e),
            var: Scaled::from_parts(m.var, 2 * e),
            sem: Scaled::from_parts(m.sem, e),
            dispersion: m.dispersion,
            lo,
            hi,
            log_mean: f64::NAN,
            log_var: f64::NAN,
        }
    }
}

/// A CSV field for `x`: its value if it fits `f64` ([`Scaled::fits_f64`]), else empty.
fn value(x: Scaled) -> String {
    if x.fits_f64() {
        x.to_f64().to_string()
    } else {
        String::new()
    }
}

fn progress(run: &RunArgs, total: u64, cells: usize) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(total),
        if run.quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
    );
    pb.set_style(
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {percent}%, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(format!("cells 0/{cells}"));
    pb
}

/// Runs a sweep into `r.out_dir`: the tasks of the shard not yet done, then the tables and
/// figures from every part present.
///
/// # Errors
/// Usage and runtime errors.
pub fn run_sweep(cfg: &SweepConfig, r: &SweepRunArgs) -> CliResult {
    if r.run.precision != Precision::F64 {
        return Err(CliError::flag("--precision", "f32", "dispersion sweeps run in f64 only"));
    }
    let info = RunInfo::start(&cfg.kind, json!({ "sweep": cfg, "shard": r.shard, "png": r.png }));
    let plan = Plan::new(cfg)?;
    std::fs::create_dir_all(&r.out_dir).map_err(|e| {
        CliError::Runtime(format!("{}: cannot create directory: {e}", r.out_dir.display()))
    })?;
    let mine: Vec<&Task> =
        plan.tasks.iter().enumerate().filter(|(t, _)| r.shard.owns(*t)).map(|(_, t)| t).collect();
    let todo: Vec<&Task> =
        mine.iter().copied().filter(|t| !sweep::part_done(&r.out_dir, &t.key)).collect();
    let skipped = mine.len() - todo.len();
    let mut counts = vec![0.0; cfg.bootstrap * cfg.samples];
    stats::bootstrap_counts(
        &mut counts,
        rng::derive_seed(cfg.seed, u64::MAX, 0),
        cfg.samples,
        cfg.bootstrap,
    );
    let total = todo.iter().map(|t| t.work()).sum::<u64>() * cfg.samples as u64;
    let (done, compute_s) = r.run.in_pool(|| {
        let cells_of = |t: &Task| t.depths.len() * cfg.sigma_w2.len();
        let cells: usize = todo.iter().map(|t| cells_of(t)).sum::<usize>();
        let pb = progress(&r.run, total, cells);
        let t0 = std::time::Instant::now();
        let mut cells_done = 0;
        for task in &todo {
            let vals = plan.sample_task(task, &pb)?;
            let rows = plan.rows(task, &vals, &counts);
            sweep::write_part(&r.out_dir, &Part { key: task.key.clone(), rows })?;
            cells_done += cells_of(task);
            pb.set_message(format!("cells {cells_done}/{cells}"));
        }
        pb.finish_and_clear();
        Ok((todo.len(), t0.elapsed().as_secs_f64()))
    })?;
    let results = finish(&plan, std::slice::from_ref(&r.out_dir), &r.out_dir, r.png)?;
    let groups = results["groups"].clone();
    let any_scaled = groups
        .as_array()
        .is_some_and(|g| g.iter().any(|x| x["scaled_representation"].as_bool() == Some(true)));
    info.write(
        &r.out_dir,
        json!({
            "tasks_total": plan.tasks.len(), "tasks_in_shard": mine.len(),
            "tasks_computed": done, "tasks_skipped_done": skipped,
            "compute_time_s": compute_s, "threads": r.run.thread_count(),
            "groups": groups,
            "scaled_representation": any_scaled,
            "precision": "f64",
            "tables": results,
        }),
    )
}

/// Writes the table and figures of `plan` from the parts found in `dirs` into `out_dir`;
/// returns a summary for run.json.
///
/// # Errors
/// Runtime errors for unreadable parts or unwritable outputs.
pub fn finish(
    plan: &Plan,
    dirs: &[PathBuf],
    out_dir: &Path,
    png: bool,
) -> CliResult<serde_json::Value> {
    let parts = sweep::read_parts(dirs)?;
    let wanted: std::collections::BTreeSet<&str> =
        plan.tasks.iter().map(|t| t.key.as_str()).collect();
    let present: Vec<&Part> = parts.values().filter(|p| wanted.contains(p.key.as_str())).collect();
    let rows = sweep::assemble(present.iter().copied());
    let kind = plan.cfg.kind.as_str();
    let csv = out_dir.join(format!("{kind}.csv"));
    sweep::write_table(&csv, HEADER, &rows)?;
    let table = parse_rows(&rows);
    let mut summary = json!({
        "csv": csv, "rows": rows.len(),
        "tasks_present": present.len(), "tasks_missing": plan.tasks.len() - present.len(),
    });
    summary["groups"] = plan.groups(&table);
    if kind == "phase" {
        phase_figure(plan, &table, &out_dir.join("phase.svg"), png)?;
    } else {
        let check = figures(plan, &table, out_dir, png)?;
        summary["exact_mean_check"] = check;
    }
    Ok(summary)
}

/// Parsed numeric view of a row (the fields the figures need).
struct Cell {
    activation: String,
    width: usize,
    depth: usize,
    sigma_w2: f64,
    sigma_b2: f64,
    entry: usize,
    mean: f64,
    sem: f64,
    dispersion: f64,
    exact: Option<f64>,
    log10_mean: Option<f64>,
    log10_var: Option<f64>,
    log10_exact: Option<f64>,
    /// The entries were computed in block floating point.
    scaled: bool,
}

fn parse_rows(rows: &[Row]) -> Vec<Cell> {
    rows.iter()
        .map(|r| {
            // The activation may be quoted and contain commas: parse the numeric tail.
            let f: Vec<&str> = r.line.rsplitn(HEADER.split(',').count() - 1, ',').collect();
            // rsplitn yields fields from the end: representation is f[0], log10_exact_mean
            // f[1], log10_var f[2], log10_mean f[3], exact_mean f[4], dispersion f[9], sem
            // f[10], mean f[12].
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
            let opt = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
            Cell {
                activation: r.activation.clone(),
                width: r.width,
                depth: r.depth,
                sigma_w2: r.sigma_w2,
                sigma_b2: r.sigma_b2,
                entry: r.entry,
                mean: num(12),
                sem: num(10),
                dispersion: num(9),
                exact: opt(4),
                log10_mean: opt(3),
                log10_var: opt(2),
                log10_exact: opt(1),
                scaled: f.first() == Some(&"scaled"),
            }
        })
        .collect()
}

/// dispersion.svg (D of the first entry against depth / width, per sigma_w2) with the
/// Hanin–Nica curve for He-initialised ReLU, and mean_check.svg where the exact mean applies.
fn figures(plan: &Plan, cells: &[Cell], out_dir: &Path, png: bool) -> CliResult<serde_json::Value> {
    let entry_r = plan.entry_geometry(plan.input_dim(plan.cfg.widths[0])).0[0];
    let mut chart = LineChart {
        title: format!("NTK dispersion of Θ(x, x_r), r = {entry_r}"),
        x_label: "depth / width".into(),
        y_label: "D = E[Θ²] / E[Θ]²".into(),
        log_y: true,
        ..Default::default()
    };
    let mut check = LineChart {
        title: "Exact-mean check: sample mean / E[Θ(x,x)] (ReLU, σ_b² = 0)".into(),
        x_label: "depth / width".into(),
        y_label: "sample mean / exact mean".into(),
        ..Default::default()
    };
    let (mut within, mut checked, mut worst) = (0usize, 0usize, 0.0f64);
    let groups = group_keys(cells);
    let multi = groups.len() > 1;
    for (act, width, sb2) in &groups {
        for &sw2 in &plan.cfg.sigma_w2 {
            let sel: Vec<&Cell> = cells
                .iter()
                .filter(|c| {
                    c.entry == 0
                        && &c.activation == act
                        && c.width == *width
                        && c.sigma_b2 == *sb2
                        && c.sigma_w2 == sw2
                })
                .collect();
            if sel.is_empty() {
                continue;
            }
            let label = if multi {
                format!("{act} M={width} σ_b²={sb2} σ_w²={sw2}")
            } else {
                format!("σ_w² = {sw2}")
            };
            let beta = |c: &Cell| c.depth as f64 / c.width as f64;
            chart.series.push(Series {
                label: label.clone(),
                points: sel.iter().map(|c| (beta(c), c.dispersion)).collect(),
                dashed: false,
            });
            if act == "relu" && sw2 == 2.0 && *sb2 == 0.0 {
                let c0 = sel[0];
                let scale = c0.dispersion / (5.0 * beta(c0)).exp();
                chart.series.push(Series {
                    label: format!("Hanin–Nica C·exp(5β), β = depth/width (M={width})"),
                    points: sel.iter().map(|c| (beta(c), scale * (5.0 * beta(c)).exp())).collect(),
                    dashed: true,
                });
            }
            let n = plan.cfg.samples as f64;
            let ex: Vec<(f64, f64, f64)> = sel
                .iter()
                .filter_map(|c| match c.exact {
                    Some(e) if c.mean.is_finite() && c.sem.is_finite() => {
                        Some((beta(c), c.mean / e, (c.mean - e) / c.sem))
                    }
                    // Beyond f64: mean / exact and sem / exact from the log10 columns.
                    _ => {
                        let (lm, lv, le) = (c.log10_mean?, c.log10_var?, c.log10_exact?);
                        let q = 10f64.powf(lm - le);
                        let se = 10f64.powf(0.5 * lv - 0.5 * n.log10() - le);
                        Some((beta(c), q, (q - 1.0) / se))
                    }
                })
                .collect();
            if !ex.is_empty() {
                for &(_, _, z) in &ex {
                    checked += 1;
                    if z.abs() <= 4.0 {
                        within += 1;
                    }
                    worst = worst.max(z.abs());
                }
                check.series.push(Series {
                    label,
                    points: ex.iter().map(|&(b, q, _)| (b, q)).collect(),
                    dashed: false,
                });
            }
        }
    }
    if checked > 0 {
        // The exact-mean check of DESIGN §6, summarised on the dispersion figure itself.
        chart.title = format!("{}; exact mean: {within}/{checked} cells within 4 SE", chart.title);
    }
    chart.write(&out_dir.join(format!("{}.svg", plan.cfg.kind)), png)?;
    if checked > 0 {
        let xs: Vec<f64> = cells.iter().map(|c| c.depth as f64 / c.width as f64).collect();
        let (x0, x1) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        check.series.push(Series {
            label: "exact".into(),
            points: vec![(x0, 1.0), (x1, 1.0)],
            dashed: true,
        });
        check.write(&out_dir.join("mean_check.svg"), png)?;
    }
    Ok(json!({ "cells_checked": checked, "within_4_se": within, "max_abs_z": worst }))
}

fn group_keys(cells: &[Cell]) -> Vec<(String, usize, f64)> {
    let mut g: Vec<(String, usize, f64)> =
        cells.iter().map(|c| (c.activation.clone(), c.width, c.sigma_b2)).collect();
    g.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.total_cmp(&b.2)));
    g.dedup();
    g
}

fn phase_figure(plan: &Plan, cells: &[Cell], path: &Path, png: bool) -> CliResult {
    let c = &plan.cfg;
    let mut xs = c.sigma_w2.clone();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let ys: Vec<f64> = c.depths.iter().map(|&d| d as f64).collect();
    let mut z = vec![vec![f64::NAN; xs.len()]; ys.len()];
    for cell in cells.iter().filter(|x| x.entry == 0) {
        let ix = xs.iter().position(|&v| v == cell.sigma_w2);
        let iy = c.depths.iter().position(|&v| v == cell.depth);
        if let (Some(ix), Some(iy)) = (ix, iy) {
            z[iy][ix] = cell.dispersion.log2();
        }
    }
    let act = plan.activations[0];
    let sb2 = c.sigma_b2[0];
    let mut overlays = Vec::new();
    // The chi_1 = 1 line at this sigma_b2 (DESIGN §5): a vertical line in (sigma_w2, depth).
    if let Ok(s) = ntk_core::phase::eoc_sigma_w2(act, sb2) {
        if s >= xs[0] && s <= xs[xs.len() - 1] {
            overlays.push(("χ₁ = 1".to_string(), vec![(s, ys[0]), (s, ys[ys.len() - 1])]));
        }
    }
    Heatmap {
        title: format!(
            "log₂ E[Θ(x,x)²]/E[Θ(x,x)]², {act}, width {}, σ_b² = {sb2}, {} samples",
            c.widths[0], c.samples
        ),
        x_label: "σ_w²".into(),
        y_label: "depth".into(),
        z_label: "log₂ D".into(),
        xs,
        ys,
        z,
        z_range: Some((0.0, 7.0)),
        overlays,
    }
    .write(path, png)
}
