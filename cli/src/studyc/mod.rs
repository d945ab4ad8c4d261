//! Study C (does the kernel regime predict practice?): the flags, the grid of
//! (width, depth, seed) cells with per-cell resumable results, tables and figures shared by
//! `ntk spectrum`, `ntk uncertainty` and `ntk forgetting`.
//!
//! Sweeps: every cell's result is written atomically to `OUT/cells/w{W}_d{D}_s{S}.json`
//! together with the study configuration; a rerun with the same configuration skips finished
//! cells (resume), `--shard I/N` (`crate::sweep::Shard`, 1-based) computes only its cells,
//! and every run rebuilds the tables and figures from all finished cells (shards writing into
//! one directory need no merge step). Per-cell files are study C's own: `crate::sweep`'s parts
//! hold CSV rows of the dispersion sweeps, these hold typed per-cell results.

pub mod data;
pub mod gauss;
pub mod linalg;
pub mod net;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ntk_core::Activation;
use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::args::{parse_activation, parse_variance, ParamArg, Precision, RunArgs};
use crate::error::{CliError, CliResult};
use crate::io::{atomic_write, write_csv, write_json_atomic, Matrix};
use crate::plot::{LineChart, Series};
use crate::runinfo::RunInfo;
use crate::sweep::Shard;
use net::NetConfig;

/// Flags shared by the study C commands.
#[derive(Args, Clone, Debug)]
pub struct StudyArgs {
    /// Output directory (tables, figures, run.json, cells/).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Hidden widths of the grid, comma separated (default 64,128,256,512,1024; --quick 32..512).
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
    /// Numbers of hidden layers of the grid (default 1,2,4; --quick 1,3).
    #[arg(long, value_delimiter = ',')]
    pub depths: Option<Vec<usize>>,
    /// Initialization seeds per (width, depth): --seed, --seed + 1, ... (default 1).
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// A small study that finishes in under two minutes (explicit flags still win).
    #[arg(long)]
    pub quick: bool,
    /// Run only shard I of N (1-based, e.g. 3/8): cells I-1, I-1+N, ... of the grid; shards
    /// write into the same --out-dir.
    #[arg(long, default_value = "1/1")]
    pub shard: Shard,
    /// Also write PNG figures beside the SVGs.
    #[arg(long)]
    pub png: bool,
    /// Activation: relu, leaky-relu:ALPHA, abrelu:A,B, erf, sigmoid, tanh, gelu, linear.
    #[arg(long, default_value = "relu", value_parser = parse_activation)]
    pub activation: Activation,
    /// Weight variance sigma_w^2.
    #[arg(long = "sigma-w2", default_value_t = 2.0, value_parser = parse_variance)]
    pub sigma_w2: f64,
    /// Bias variance sigma_b^2.
    #[arg(long = "sigma-b2", default_value_t = 0.1, value_parser = parse_variance)]
    pub sigma_b2: f64,
    /// Parameterization (ntk: the kernel converges as width grows at a fixed learning rate).
    #[arg(long, value_enum, default_value_t = ParamArg::Ntk)]
    pub parameterization: ParamArg,
    /// Layers without biases.
    #[arg(long)]
    pub no_bias: bool,
    /// Seed, precision, threads, quiet.
    #[command(flatten)]
    pub run: RunArgs,
}

/// One point of the grid.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub struct Cell {
    /// Hidden width.
    pub width: usize,
    /// Number of hidden layers.
    pub depth: usize,
    /// Initialization seed.
    pub seed: u64,
}

impl StudyArgs {
    /// The hidden widths (after --quick defaults).
    pub fn width_list(&self) -> Vec<usize> {
        self.widths.clone().unwrap_or_else(|| {
            if self.quick {
                vec![32, 64, 128, 256, 512]
            } else {
                vec![64, 128, 256, 512, 1024]
            }
        })
    }

    /// The depths (after --quick defaults).
    pub fn depth_list(&self) -> Vec<usize> {
        self.depths.clone().unwrap_or_else(|| if self.quick { vec![1, 3] } else { vec![1, 2, 4] })
    }

    /// Validates the shared flags.
    ///
    /// # Errors
    /// Usage errors naming the flag.
    pub fn check(&self) -> CliResult {
        if self.run.precision != Precision::F64 {
            return Err(CliError::flag("--precision", "f32", "study C runs in f64 only"));
        }
        if let Some(w) = self.width_list().iter().find(|&&w| w == 0) {
            return Err(CliError::flag("--widths", w, "widths must be positive"));
        }
        if self.width_list().is_empty() {
            return Err(CliError::flag("--widths", "''", "give at least one width"));
        }
        if self.depth_list().is_empty() {
            return Err(CliError::flag("--depths", "''", "give at least one depth"));
        }
        if self.seeds == 0 {
            return Err(CliError::flag("--seeds", 0, "must be at least 1"));
        }
        Ok(())
    }

    /// The network configuration.
    pub fn net(&self) -> NetConfig {
        NetConfig {
            activation: self.activation,
            sigma_w2: self.sigma_w2,
            sigma_b2: self.sigma_b2,
            bias: !self.no_bias,
            parameterization: self.parameterization.into(),
        }
    }

    /// Every cell of the grid, depth-major, then width, then seed.
    pub fn cells(&self) -> Vec<Cell> {
        let mut v = vec![];
        for &depth in &self.depth_list() {
            for &width in &self.width_list() {
                for s in 0..self.seeds {
                    v.push(Cell { width, depth, seed: self.run.seed + s });
                }
            }
        }
        v
    }

    /// The configuration that cell results depend on (recorded in every cell file).
    pub fn config_json(&self, specific: Value) -> Value {
        json!({
            "net": self.net(),
            "study": specific,
        })
    }

    /// A progress bar over `n` items (hidden with --quiet or when stderr is not a terminal).
    pub fn progress(&self, n: usize, what: &str) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(
            Some(n as u64),
            if self.run.quiet {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} cells, {elapsed} (eta {eta})",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_string());
        pb
    }
}

/// A finished cell's file: the configuration and the result.
#[derive(Serialize, serde::Deserialize)]
struct CellFile<R> {
    config: Value,
    cell: Cell,
    result: R,
}

fn cell_path(dir: &Path, c: &Cell) -> PathBuf {
    dir.join("cells").join(format!("w{}_d{}_s{}.json", c.width, c.depth, c.seed))
}

/// Outcome of [`run_cells`].
pub struct Sweep<R> {
    /// Finished cells (all shards), in grid order.
    pub done: Vec<(Cell, R)>,
    /// Cells computed by this run.
    pub computed: usize,
    /// Cells of the grid not finished yet (other shards).
    pub missing: usize,
}

/// Runs `compute` on the cells of this shard that have no result in `dir` yet (in parallel,
/// each result written atomically as soon as it is done), then loads every finished cell.
///
/// # Errors
/// A usage error if `dir` holds cells of another configuration; errors of `compute`, I/O
/// errors naming the file.
pub fn run_cells<R, F>(
    args: &StudyArgs,
    config: &Value,
    what: &str,
    compute: F,
) -> CliResult<Sweep<R>>
where
    R: Serialize + DeserializeOwned + Send,
    F: Fn(&Cell) -> CliResult<R> + Sync,
{
    let dir = &args.out_dir;
    std::fs::create_dir_all(dir.join("cells")).map_err(|e| {
        CliError::Runtime(format!("{}: cannot create: {e}", dir.join("cells").display()))
    })?;
    let cells = args.cells();
    let load = |c: &Cell| -> CliResult<Option<R>> {
        let path = cell_path(dir, c);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CliError::Runtime(format!("{}: {e}", path.display()))),
        };
        let f: CellFile<R> = serde_json::from_str(&text).map_err(|e| {
            CliError::Runtime(format!("{}: not a cell result of this command: {e}", path.display()))
        })?;
        if &f.config != config {
            return Err(CliError::Usage(format!(
                "--out-dir {}: {} holds a cell of a different configuration; use a new --out-dir",
                dir.display(),
                path.display()
            )));
        }
        Ok(Some(f.result))
    };
    let mut todo = vec![];
    for (i, c) in cells.iter().enumerate() {
        if args.shard.owns(i) && load(c)?.is_none() {
            todo.push(*c);
        }
    }
    let pb = args.progress(todo.len(), what);
    let computed = todo.len();
    args.run.in_pool(|| {
        todo.par_iter().try_for_each(|c| -> CliResult {
            let result = compute(c)?;
            let file = CellFile { config: config.clone(), cell: *c, result };
            let v = serde_json::to_value(&file)
                .map_err(|e| CliError::Runtime(format!("cell result: {e}")))?;
            write_json_atomic(&cell_path(dir, c), &v)?;
            pb.inc(1);
            Ok(())
        })
    })?;
    pb.finish_and_clear();
    let mut done = vec![];
    let mut missing = 0;
    for c in &cells {
        match load(c)? {
            Some(r) => done.push((*c, r)),
            None => missing += 1,
        }
    }
    Ok(Sweep { done, computed, missing })
}

/// Where a cell's time went.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct Phases {
    /// Empirical NTKs.
    pub ntk: f64,
    /// Eigendecompositions.
    pub eig: f64,
    /// Training and the Gauss-Newton step (forward and backward passes).
    pub train: f64,
}

/// Runs `f`, adding its wall time to `acc`.
pub fn timed<R>(acc: &mut f64, f: impl FnOnce() -> R) -> R {
    let t = std::time::Instant::now();
    let r = f();
    *acc += t.elapsed().as_secs_f64();
    r
}

/// A table with a header, written as CSV.
pub struct Table {
    header: Vec<String>,
    rows: Vec<f64>,
}

/// The leading columns of a per-cell table ([`Table::cells`]).
const CELL_KEY: [&str; 4] = ["width", "depth", "seed", "params"];
/// The trailing columns of a per-cell table ([`Table::cells`]): seconds per phase, wall time.
const CELL_TIME: [&str; 4] = ["ntk_s", "eig_s", "train_s", "time_s"];

impl Table {
    /// An empty table with these columns.
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|s| s.to_string()).collect(), rows: vec![] }
    }

    /// An empty per-cell table: `width, depth, seed, params`, then `middle`, then
    /// `ntk_s, eig_s, train_s, time_s` (rows by [`Table::push_cell`]).
    pub fn cells(middle: &[&str]) -> Self {
        Self::new(&[&CELL_KEY[..], middle, &CELL_TIME[..]].concat())
    }

    /// Appends a row.
    ///
    /// # Panics
    /// If the row length differs from the header's.
    #[track_caller]
    pub fn push(&mut self, row: &[f64]) {
        assert_eq!(row.len(), self.header.len(), "Table::push: row length");
        self.rows.extend_from_slice(row);
    }

    /// Appends a row of a [`Table::cells`] table: the cell and its parameter count, `middle`,
    /// then the cell's seconds per phase and wall time.
    ///
    /// # Panics
    /// If the row length differs from the header's.
    #[track_caller]
    pub fn push_cell(
        &mut self,
        c: &Cell,
        params: usize,
        middle: &[f64],
        phases: Phases,
        time_s: f64,
    ) {
        let key = [c.width as f64, c.depth as f64, c.seed as f64, params as f64];
        let time = [phases.ntk, phases.eig, phases.train, time_s];
        self.push(&[&key[..], middle, &time[..]].concat());
    }

    /// Writes `dir/name` atomically.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn write(self, dir: &Path, name: &str) -> CliResult {
        let cols = self.header.len();
        let m = Matrix::new(self.rows.len() / cols, cols, self.rows);
        let header = self.header;
        atomic_write(&dir.join(name), |w| {
            write_csv(w, &m, Some(&header), crate::io::Precision::F64)
        })?;
        Ok(())
    }
}

/// Mean over seeds of `value(cell result)` per (depth, width): one series per depth, points
/// (width, mean), skipping non-finite values.
pub fn per_depth<R>(
    done: &[(Cell, R)],
    value: impl Fn(&R) -> f64,
) -> BTreeMap<usize, Vec<(f64, f64)>> {
    let mut acc: BTreeMap<(usize, usize), (f64, usize)> = BTreeMap::new();
    for (c, r) in done {
        let v = value(r);
        if v.is_finite() {
            let e = acc.entry((c.depth, c.width)).or_insert((0.0, 0));
            e.0 += v;
            e.1 += 1;
        }
    }
    let mut out: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for ((d, w), (s, n)) in acc {
        out.entry(d).or_default().push((w as f64, s / n as f64));
    }
    out
}

/// One quantity of a width figure: its label, its value per cell result, solid or dashed.
pub struct Line<'a, R> {
    label: &'a str,
    value: Box<dyn Fn(&R) -> f64 + 'a>,
    dashed: bool,
}

impl<'a, R> Line<'a, R> {
    /// A solid line of `value`.
    pub fn solid(label: &'a str, value: impl Fn(&R) -> f64 + 'a) -> Self {
        Self { label, value: Box::new(value), dashed: false }
    }

    /// A dashed (reference) line of `value`.
    pub fn dashed(label: &'a str, value: impl Fn(&R) -> f64 + 'a) -> Self {
        Self { label, value: Box::new(value), dashed: true }
    }
}

/// A "quantity vs width, one line per depth (and quantity)" figure, written by
/// [`width_figures`] to `OUT/name`.
pub struct Figure<'a, R> {
    /// File name (`.svg`).
    pub name: &'a str,
    /// Title.
    pub title: &'a str,
    /// Y axis label.
    pub y_label: &'a str,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The quantities (with more than one, labels read "quantity, depth D").
    pub lines: Vec<Line<'a, R>>,
}

/// Writes each figure of `figures` from the mean over seeds of its quantities per
/// (depth, width), log-scaled width axis.
///
/// # Errors
/// I/O and drawing errors naming the file.
pub fn width_figures<R>(
    args: &StudyArgs,
    done: &[(Cell, R)],
    figures: &[Figure<'_, R>],
) -> CliResult {
    for fig in figures {
        let mut series = vec![];
        for line in &fig.lines {
            for (depth, points) in per_depth(done, &line.value) {
                let label = if fig.lines.len() > 1 {
                    format!("{}, depth {depth}", line.label)
                } else {
                    format!("depth {depth}")
                };
                series.push(Series { label, points, dashed: line.dashed });
            }
        }
        LineChart {
            title: fig.title.to_string(),
            x_label: "hidden width".to_string(),
            y_label: fig.y_label.to_string(),
            log_y: fig.log_y,
            log_x: true,
            series,
        }
        .write(&args.out_dir.join(fig.name), args.png)?;
    }
    Ok(())
}

/// Checks `--lr-scale`: the fraction of the stability limit of GD on the linearized model.
///
/// # Errors
/// A usage error unless `0 < lr_scale < 2`.
pub fn check_lr_scale(lr_scale: f64) -> CliResult {
    if !(lr_scale > 0.0 && lr_scale < 2.0) {
        return Err(CliError::flag(
            "--lr-scale",
            lr_scale,
            "must be in (0, 2) for GD to be stable",
        ));
    }
    Ok(())
}

/// Runs a study C command after its flags are checked: records the configuration
/// (`specific` under "study") in `run.json` and every cell file, computes this shard's
/// missing cells with `compute` (single-threaded linear algebra within a cell), rebuilds the
/// tables and figures from all finished cells with `write_outputs`, and writes `run.json`
/// with `summary` of every finished cell under "cells" (see [`cell_summary`]).
///
/// # Errors
/// Those of [`run_cells`], `write_outputs` and [`finish`].
pub fn run_study<R, F>(
    s: &StudyArgs,
    name: &str,
    specific: Value,
    compute: F,
    write_outputs: impl FnOnce(&StudyArgs, &[(Cell, R)]) -> CliResult,
    summary: impl Fn(&Cell, &R) -> Value,
) -> CliResult
where
    R: Serialize + DeserializeOwned + Send,
    F: Fn(&Cell) -> CliResult<R> + Sync,
{
    faer::set_global_parallelism(faer::Par::Seq);
    let config = s.config_json(specific);
    let info = RunInfo::start(
        name,
        json!({"config": config, "widths": s.width_list(), "depths": s.depth_list(), "seeds": s.seeds, "seed": s.run.seed}),
    );
    let sweep = run_cells(s, &config, name, compute)?;
    write_outputs(s, &sweep.done)?;
    let cells: Vec<Value> = sweep.done.iter().map(|(c, r)| summary(c, r)).collect();
    finish(s, &info, &sweep, json!({"cells": cells}))
}

/// A cell's entry in `run.json`: `fields` with the cell (`width`, `depth`, `seed`), its seconds
/// per phase (`phase_s`) and wall time (`time_s`) added.
pub fn cell_summary(c: &Cell, fields: Value, phases: Phases, time_s: f64) -> Value {
    let mut v = fields;
    if let Value::Object(m) = &mut v {
        m.insert("width".into(), json!(c.width));
        m.insert("depth".into(), json!(c.depth));
        m.insert("seed".into(), json!(c.seed));
        m.insert("phase_s".into(), json!(phases));
        m.insert("time_s".into(), json!(time_s));
    }
    v
}

/// Writes `run.json` with the sweep bookkeeping merged into `results`.
///
/// # Errors
/// I/O errors naming the file.
pub fn finish<R>(
    args: &StudyArgs,
    info: &RunInfo,
    sweep: &Sweep<R>,
    mut results: Value,
) -> CliResult {
    if let Value::Object(m) = &mut results {
        m.insert("cells_total".into(), json!(sweep.done.len() + sweep.missing));
        m.insert("cells_done".into(), json!(sweep.done.len()));
        m.insert("cells_computed_this_run".into(), json!(sweep.computed));
        m.insert("cells_missing".into(), json!(sweep.missing));
    }
    info.write(&args.out_dir, results)?;
    if !args.run.quiet {
        eprintln!(
            "{} of {} cells done ({} computed now) in {:.1} s; results in {}",
            sweep.done.len(),
            sweep.done.len() + sweep.missing,
            sweep.computed,
            info.elapsed_s(),
            args.out_dir.display()
        );
    }
    Ok(())
}
