//! `ntk forgetting`: catastrophic forgetting vs width against the linearized model
//! (study C, question 3).
//!
//! Task A: digits 0-4. Task B: digits 5-9 (`--task-b split`) or other images of 0-4 with a
//! fixed pixel permutation (`--task-b permuted`). One network with k = 10 outputs (centred
//! one-hot targets, MSE) is trained by full-batch GD on A, then on B, with the same
//! `eta = lr_scale N / max(lambda_max(Theta_AA), lambda_max(Theta_BB))`. Forgetting is the
//! increase of the loss on A's training set (and the drop of accuracy on held-out A images)
//! caused by training on B.
//!
//! Kernel-regime prediction: the linearized model `f_lin = f_0 + J_0 (theta - theta_0)` under
//! the same GD, in closed form with the full empirical NTK at initialization. After `t` GD steps
//! on a set S (n inputs) from outputs `f`, every input x moves by
//! `Theta_0(x, S) Theta_SS^{-1} (I - (I - eta Theta_SS / n)^t) (y_S - f(S))`
//! (the spectral function `(1 - (1 - eta lambda / n)^t) / lambda` is finite at `lambda -> 0`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use ntk_core::ntk::OutputMode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{CliError, CliResult};
use crate::studyc::data::{load_digits, Labelled, CLASSES};
use crate::studyc::linalg::{gd_filter, sym_eig};
use crate::studyc::net::{accuracy, mse, Net, Optimizer};
use crate::studyc::{
    cell_summary, check_lr_scale, run_study, timed, width_figures, Cell, Figure, Line, Phases,
    StudyArgs, Table,
};

/// The second task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskB {
    /// Digits 5-9 (class-incremental, shared 10-way head).
    Split,
    /// Other images of digits 0-4, pixels permuted by a fixed permutation.
    Permuted,
}

/// Flags of `ntk forgetting`.
#[derive(Args, Clone, Debug)]
pub struct ForgettingArgs {
    /// Grid, network and output flags.
    #[command(flatten)]
    pub study: StudyArgs,
    /// Digits file (CSV, 64 pixels then the label).
    #[arg(long, default_value = "data/digits.csv.gz")]
    pub data: PathBuf,
    /// The second task.
    #[arg(long, value_enum, default_value_t = TaskB::Split)]
    pub task_b: TaskB,
    /// Training images per task (default 100, --quick 60).
    #[arg(long)]
    pub n_task: Option<usize>,
    /// Held-out images of task A for accuracy (default 100, --quick 60).
    #[arg(long)]
    pub n_test: Option<usize>,
    /// GD steps on each task (default 300, --quick 100).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Learning rate as a fraction of the stability limit of the linearized model.
    #[arg(long, default_value_t = 1.0)]
    pub lr_scale: f64,
    /// Seed of the data selection and pixel permutation.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
}

/// Measured and linearized values of one quantity.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Pair {
    /// The finite network.
    pub measured: f64,
    /// The linearized model (kernel-regime prediction).
    pub kernel: f64,
}

/// One cell's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForgettingCell {
    /// Parameter count.
    pub params: usize,
    /// Learning rate.
    pub eta: f64,
    /// Loss on A's training set after training on A.
    pub loss_a_after_a: Pair,
    /// Loss on A's training set after training on B.
    pub loss_a_after_b: Pair,
    /// Loss on B's training set after training on B.
    pub loss_b_after_b: Pair,
    /// Accuracy on held-out A images after A.
    pub acc_a_after_a: Pair,
    /// Accuracy on held-out A images after B.
    pub acc_a_after_b: Pair,
    /// `||f_net - f_lin|| / ||f_lin - f_0||` on A's training set after B: how far the network
    /// is from its linearization, relative to how far it moved.
    pub function_gap: f64,
    /// Seconds in empirical NTKs, eigendecompositions and training.
    #[serde(default)]
    pub phase_s: Phases,
    /// Wall time.
    pub time_s: f64,
}

impl ForgettingCell {
    /// Loss forgetting (increase of A's training loss).
    pub fn forgetting(&self) -> Pair {
        Pair {
            measured: self.loss_a_after_b.measured - self.loss_a_after_a.measured,
            kernel: self.loss_a_after_b.kernel - self.loss_a_after_a.kernel,
        }
    }
    /// Accuracy forgetting (drop of held-out A accuracy).
    pub fn acc_drop(&self) -> Pair {
        Pair {
            measured: self.acc_a_after_a.measured - self.acc_a_after_b.measured,
            kernel: self.acc_a_after_a.kernel - self.acc_a_after_b.kernel,
        }
    }
}

/// Rows `r0..r1` (in units of `k`-blocks) of a row-major matrix with `cols` columns.
fn rows(m: &[f64], cols: usize, r0: usize, r1: usize) -> &[f64] {
    &m[r0 * cols..r1 * cols]
}

/// Matrix-vector product of a row-major `rows x cols` matrix.
fn matvec(m: &[f64], cols: usize, v: &[f64]) -> Vec<f64> {
    m.chunks_exact(cols).map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum()).collect()
}

/// The study of one cell: sets A (train), T (held-out A), B (train). Public for the tests.
///
/// # Errors
/// Numerical failures.
pub fn forgetting_cell(
    net: &mut Net,
    a: &Labelled,
    t: &Labelled,
    b: &Labelled,
    steps: usize,
    lr_scale: f64,
) -> CliResult<ForgettingCell> {
    let start = std::time::Instant::now();
    let k = net.output_dim();
    let (na, nt, nb) = (a.len(), t.len(), b.len());
    let (ya, yt, yb) = (a.targets(), t.targets(), b.targets());
    // Cross kernels of all points [A; T; B] with A and with B (full, N k x n k).
    let mut all = a.x.clone();
    all.extend_from_slice(&t.x);
    all.extend_from_slice(&b.x);
    let mut ph = Phases::default();
    let th_a = timed(&mut ph.ntk, || net.ntk(&all, Some(&a.x), OutputMode::Full))?;
    let th_b = timed(&mut ph.ntk, || net.ntk(&all, Some(&b.x), OutputMode::Full))?;
    let (ca, cb) = (na * k, nb * k);
    let theta_aa = rows(&th_a, ca, 0, ca);
    let theta_bb = rows(&th_b, cb, (na + nt) * k, (na + nt + nb) * k);
    let (ea, eb) = timed(&mut ph.eig, || -> CliResult<_> {
        Ok((sym_eig(theta_aa, ca)?, sym_eig(theta_bb, cb)?))
    })?;
    let eta = lr_scale * na.min(nb) as f64 / ea.max().max(eb.max());

    // Linearized model, phase A then phase B, on all points.
    let f0 = net.predict(&all)?;
    let ra: Vec<f64> = ya.iter().zip(&f0[..ca]).map(|(y, f)| y - f).collect();
    let va = ea.apply(&ra, 1, |l| gd_filter(l, eta / na as f64, steps as f64));
    let da = matvec(&th_a, ca, &va);
    let f_lin_a: Vec<f64> = f0.iter().zip(&da).map(|(f, d)| f + d).collect();
    let boff = (na + nt) * k;
    let rb: Vec<f64> = yb.iter().zip(&f_lin_a[boff..]).map(|(y, f)| y - f).collect();
    let vb = eb.apply(&rb, 1, |l| gd_filter(l, eta / nb as f64, steps as f64));
    let db = matvec(&th_b, cb, &vb);
    let f_lin_b: Vec<f64> = f_lin_a.iter().zip(&db).map(|(f, d)| f + d).collect();

    // The network.
    let (f_net_a, f_net_b) = timed(&mut ph.train, || -> CliResult<_> {
        net.train(&a.x, &ya, steps, Optimizer::Gd { lr: eta }, |_, _| {})?;
        let f_net_a = net.predict(&all)?;
        net.train(&b.x, &yb, steps, Optimizer::Gd { lr: eta }, |_, _| {})?;
        Ok((f_net_a, net.predict(&all)?))
    })?;

    let toff = na * k;
    let loss = |f: &[f64], lo: usize, y: &[f64], n: usize| mse(&f[lo..lo + n * k], y, n);
    let acc = |f: &[f64]| accuracy(&f[toff..toff + nt * k], &yt, k);
    let pair = |m: f64, l: f64| Pair { measured: m, kernel: l };
    let gap_num: f64 =
        f_net_b[..ca].iter().zip(&f_lin_b[..ca]).map(|(x, y)| (x - y) * (x - y)).sum();
    let gap_den: f64 = f_lin_b[..ca].iter().zip(&f0[..ca]).map(|(x, y)| (x - y) * (x - y)).sum();
    Ok(ForgettingCell {
        params: net.params.len(),
        eta,
        loss_a_after_a: pair(loss(&f_net_a, 0, &ya, na), loss(&f_lin_a, 0, &ya, na)),
        loss_a_after_b: pair(loss(&f_net_b, 0, &ya, na), loss(&f_lin_b, 0, &ya, na)),
        loss_b_after_b: pair(loss(&f_net_b, boff, &yb, nb), loss(&f_lin_b, boff, &yb, nb)),
        acc_a_after_a: pair(acc(&f_net_a), acc(&f_lin_a)),
        acc_a_after_b: pair(acc(&f_net_b), acc(&f_lin_b)),
        function_gap: (gap_num / gap_den).sqrt(),
        phase_s: ph,
        time_s: start.elapsed().as_secs_f64(),
    })
}

/// Runs `ntk forgetting`.
///
/// # Errors
/// Usage errors naming the flag; I/O and numerical errors.
pub fn run(a: ForgettingArgs) -> CliResult {
    let s = &a.study;
    s.check()?;
    let n_task = a.n_task.unwrap_or(if s.quick { 60 } else { 100 });
    let n_test = a.n_test.unwrap_or(if s.quick { 60 } else { 100 });
    let steps = a.steps.unwrap_or(if s.quick { 100 } else { 300 });
    if n_task < 1 || n_test < 1 {
        return Err(CliError::flag(
            "--n-task",
            n_task,
            "need at least one training and one test image",
        ));
    }
    check_lr_scale(a.lr_scale)?;
    let digits = load_digits(&a.data)?;
    let order = digits.shuffled_indices(a.data_seed);
    let first: Vec<usize> = (0..5).collect();
    let second: Vec<usize> = (5..CLASSES).collect();
    let task_a = digits.select(&order, &first, 0, n_task);
    let test_a = digits.select(&order, &first, n_task, n_test);
    let task_b = match a.task_b {
        TaskB::Split => digits.select(&order, &second, 0, n_task),
        TaskB::Permuted => {
            let d = digits.d;
            let pix = Labelled { x: vec![], d: 1, labels: vec![0; d] };
            let perm = pix.shuffled_indices(a.data_seed ^ 0x5eed);
            digits.select(&order, &first, n_task + n_test, n_task).permute_pixels(&perm)
        }
    };
    for (set, n, flag) in [
        (&task_a, n_task, "--n-task"),
        (&test_a, n_test, "--n-test"),
        (&task_b, n_task, "--n-task"),
    ] {
        if set.len() < n {
            return Err(CliError::flag(
                flag,
                n,
                format!("only {} images of the task available", set.len()),
            ));
        }
    }
    let specific = json!({
        "command": "forgetting", "data": a.data, "task_b": a.task_b, "n_task": n_task, "n_test": n_test,
        "steps": steps, "lr_scale": a.lr_scale, "data_seed": a.data_seed,
        "targets": "centred one-hot (k = 10), MSE", "optimizer": "full-batch GD",
    });
    let net_cfg = s.net();
    let compute = |c: &Cell| {
        let mut net = Net::new(net_cfg, digits.d, c.width, c.depth, CLASSES, c.seed)?;
        forgetting_cell(&mut net, &task_a, &test_a, &task_b, steps, a.lr_scale)
    };
    run_study(s, "forgetting", specific, compute, write_outputs, |c, r: &ForgettingCell| {
        let fields = json!({"forgetting": r.forgetting(), "acc_drop": r.acc_drop(), "function_gap": r.function_gap});
        cell_summary(c, fields, r.phase_s, r.time_s)
    })
}

/// A measured/linearized quantity of a cell.
type PairOf = fn(&ForgettingCell) -> Pair;

/// The measured/linearized quantities of a cell, by CSV column (`NAME`, `NAME_kernel`).
const PAIRS: [(&str, PairOf); 7] = [
    ("loss_a_after_a", |r| r.loss_a_after_a),
    ("loss_a_after_b", |r| r.loss_a_after_b),
    ("loss_b_after_b", |r| r.loss_b_after_b),
    ("acc_a_after_a", |r| r.acc_a_after_a),
    ("acc_a_after_b", |r| r.acc_a_after_b),
    ("forgetting", ForgettingCell::forgetting),
    ("acc_drop", ForgettingCell::acc_drop),
];

fn write_outputs(s: &StudyArgs, done: &[(Cell, ForgettingCell)]) -> CliResult {
    let pairs: Vec<String> =
        PAIRS.iter().flat_map(|(name, _)| [name.to_string(), format!("{name}_kernel")]).collect();
    let mut columns = vec!["eta"];
    columns.extend(pairs.iter().map(String::as_str));
    columns.push("function_gap");
    let mut t = Table::cells(&columns);
    for (c, r) in done {
        let mut middle = vec![r.eta];
        middle.extend(PAIRS.iter().flat_map(|(_, f)| [f(r).measured, f(r).kernel]));
        middle.push(r.function_gap);
        t.push_cell(c, r.params, &middle, r.phase_s, r.time_s);
    }
    t.write(&s.out_dir, "forgetting_cells.csv")?;
    // A pair as a figure's lines: the network solid, the linearized model dashed.
    let lines = |f: PairOf| {
        vec![
            Line::solid("network", move |r: &ForgettingCell| f(r).measured),
            Line::dashed("linearized", move |r: &ForgettingCell| f(r).kernel),
        ]
    };
    width_figures(
        s,
        done,
        &[
            Figure {
                name: "forgetting_vs_width.svg",
                title: "Forgetting: increase of task-A loss after task B (solid: network, dashed: linearized)",
                y_label: "loss_A(after B) - loss_A(after A)",
                log_y: false,
                lines: lines(ForgettingCell::forgetting),
            },
            Figure {
                name: "accuracy_drop_vs_width.svg",
                title: "Held-out task-A accuracy drop after task B (solid: network, dashed: linearized)",
                y_label: "acc_A(after A) - acc_A(after B)",
                log_y: false,
                lines: lines(ForgettingCell::acc_drop),
            },
            Figure {
                name: "function_gap_vs_width.svg",
                title: "Distance of the network from its linearization on task A after B",
                y_label: "||f_net - f_lin|| / ||f_lin - f_0||",
                log_y: true,
                lines: vec![Line::solid("gap", |r: &ForgettingCell| r.function_gap)],
            },
        ],
    )
}
