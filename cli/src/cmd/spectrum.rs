//! `ntk spectrum`: conditioning and optimization in the kernel regime vs width and depth
//! (study C, question 1).
//!
//! Per (width, depth, seed) cell, on N digits with centred one-hot targets (k = 10, MSE):
//! - the full empirical NTK Theta_0 (N k x N k) at initialization, its eigenvalues, condition
//!   number and trace; again at the middle and end of training (with the relative change
//!   `||Theta_t - Theta_0||_F / ||Theta_0||_F`);
//! - full-batch GD with `eta = lr_scale N / lambda_max(Theta_0)`, whose measured loss is
//!   compared with the kernel-regime prediction (the linearized model trained by GD):
//!   `loss_t = (1 / 2N) sum_i (1 - eta lambda_i / N)^(2t) (u_i^T r_0)^2`, `r_0 = f_0 - y`
//!   (gradient flow: `exp(-2 eta lambda_i t / N)`);
//! - one Gauss-Newton (function-space natural-gradient) step
//!   `theta += J^T Theta_0^+ (y - f_0)`, computed without a Jacobian as the parameter
//!   gradient of `sum_i v_i . f(x_i)` with `v = Theta_0^+ (y - f_0)`; in the kernel regime it
//!   solves the MSE problem exactly (residual 0), at finite width it leaves a residual.

use std::path::PathBuf;

use clap::Args;
use ntk_core::ntk::OutputMode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{CliError, CliResult};
use crate::plot::{LineChart, Series};
use crate::studyc::data::{load_digits, Labelled, CLASSES};
use crate::studyc::linalg::{sym_eig, sym_eigenvalues};
use crate::studyc::net::{accuracy, mse, Net, Optimizer};
use crate::studyc::{
    cell_summary, check_lr_scale, run_study, timed, width_figures, Cell, Figure, Line, Phases,
    StudyArgs, Table,
};

/// Flags of `ntk spectrum`.
#[derive(Args, Clone, Debug)]
pub struct SpectrumArgs {
    /// Grid, network and output flags.
    #[command(flatten)]
    pub study: StudyArgs,
    /// Digits file (CSV, 64 pixels then the label).
    #[arg(long, default_value = "data/digits.csv.gz")]
    pub data: PathBuf,
    /// Training inputs N (a seeded shuffle of all classes; default 128, --quick 96).
    #[arg(long)]
    pub n_train: Option<usize>,
    /// Full-batch GD steps (default 300, --quick 150).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Learning rate as a fraction of the stability limit: eta = lr_scale N / lambda_max(Theta_0)
    /// (GD on the linearized model diverges above 2).
    #[arg(long, default_value_t = 1.0)]
    pub lr_scale: f64,
    /// Relative eigenvalue cut-off of the Gauss-Newton pseudo-inverse.
    #[arg(long, default_value_t = 1e-10)]
    pub rcond: f64,
    /// Seed of the data selection.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
}

/// A recomputed NTK during training.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// GD step.
    pub step: usize,
    /// Largest eigenvalue.
    pub lambda_max: f64,
    /// Smallest eigenvalue.
    pub lambda_min: f64,
    /// lambda_max / lambda_min.
    pub cond: f64,
    /// `||Theta_t - Theta_0||_F / ||Theta_0||_F`.
    pub rel_change: f64,
}

/// One cell's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpectrumCell {
    /// Parameter count P.
    pub params: usize,
    /// Eigenvalues of Theta_0, ascending (N k values).
    pub eig_init: Vec<f64>,
    /// trace(Theta_0), computed from the diagonal.
    pub trace_init: f64,
    /// Learning rate used.
    pub eta: f64,
    /// (step, measured loss, kernel-regime prediction).
    pub curve: Vec<(usize, f64, f64)>,
    /// Mean over logged steps of `|log10(measured / predicted)|`.
    pub curve_log_error: f64,
    /// Training accuracy after GD.
    pub train_accuracy: f64,
    /// `||y - f(theta_0 + dtheta_GN)|| / ||y - f_0||` measured.
    pub gn_residual: f64,
    /// The same ratio predicted by the kernel regime (the part outside the pseudo-inverse).
    pub gn_residual_kernel: f64,
    /// Loss after the Gauss-Newton step.
    pub gn_loss: f64,
    /// NTKs recomputed during training.
    pub checkpoints: Vec<Checkpoint>,
    /// Eigenvalues of the NTK at the end of training, ascending.
    pub eig_final: Vec<f64>,
    /// `||f_T - f_lin,T|| / ||f_0 - y||` on the training inputs after GD: the distance of the
    /// network from its linearization (the kernel regime: 0), relative to the initial residual.
    pub function_gap: f64,
    /// Seconds spent in empirical NTKs, eigendecompositions and training (forward/backward).
    pub phase_s: Phases,
    /// Wall time of the cell.
    pub time_s: f64,
}

impl SpectrumCell {
    /// Condition number at initialization.
    pub fn cond_init(&self) -> f64 {
        self.eig_init.last().copied().unwrap_or(f64::NAN)
            / self.eig_init.first().copied().unwrap_or(f64::NAN)
    }
}

fn frob_rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// The study of one cell (public for the tests).
///
/// # Errors
/// Numerical failures (non-finite values, eigensolver).
#[allow(clippy::too_many_arguments)]
pub fn spectrum_cell(
    net: &mut Net,
    x: &[f64],
    y: &[f64],
    steps: usize,
    lr_scale: f64,
    rcond: f64,
) -> CliResult<SpectrumCell> {
    let start = std::time::Instant::now();
    let k = net.output_dim();
    let n = y.len() / k;
    let nk = n * k;
    let mut ph = Phases::default();
    let theta0 = timed(&mut ph.ntk, || net.ntk(x, None, OutputMode::Full))?;
    let eig = timed(&mut ph.eig, || sym_eig(&theta0, nk))?;
    let trace_init = (0..nk).map(|i| theta0[i * nk + i]).sum();
    let lmax = eig.max();
    let eta = lr_scale * n as f64 / lmax;
    let f0 = net.predict(x)?;
    let r0: Vec<f64> = f0.iter().zip(y).map(|(f, t)| f - t).collect();
    let c = eig.coords(&r0, 1);
    let coef: Vec<f64> = (0..nk).map(|i| c[(i, 0)] * c[(i, 0)]).collect();
    let predict = |t: usize| -> f64 {
        eig.values
            .iter()
            .zip(&coef)
            .map(|(&l, &c2)| (1.0 - eta * l / n as f64).powi(2 * t as i32) * c2)
            .sum::<f64>()
            / (2.0 * n as f64)
    };

    // Gauss-Newton step from theta_0: v = Theta^+ (y - f_0), dtheta = J^T v.
    let cut = rcond * lmax;
    let minus_r0: Vec<f64> = r0.iter().map(|v| -v).collect();
    let v = eig.apply(&minus_r0, 1, |l| if l > cut { 1.0 / l } else { 0.0 });
    let f_gn = timed(&mut ph.train, || -> CliResult<Vec<f64>> {
        let dtheta = net.vjp(x, &v)?;
        let mut gn = net.clone();
        gn.params.iter_mut().zip(&dtheta).for_each(|(p, d)| *p += d);
        gn.predict(x)
    })?;
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let r_gn: Vec<f64> = f_gn.iter().zip(y).map(|(f, t)| f - t).collect();
    let gn_residual = norm(&r_gn) / norm(&r0);
    let kept: f64 =
        eig.values.iter().zip(&coef).filter(|(&l, _)| l <= cut).map(|(_, &c2)| c2).sum();
    let gn_residual_kernel = kept.max(0.0).sqrt() / norm(&r0);
    let gn_loss = mse(&f_gn, y, n);

    // GD with checkpoints of the NTK in the middle and at the end.
    let mut curve = vec![];
    let log_every = (steps / 100).max(1);
    let mid = steps / 2;
    let mut checkpoints = vec![];
    let mut eig_final = vec![];
    let segments = if mid > 0 && mid < steps { vec![mid, steps - mid] } else { vec![steps] };
    let mut done = 0;
    for seg in segments {
        timed(&mut ph.train, || {
            net.train(x, y, seg, Optimizer::Gd { lr: eta }, |t, l| {
                let s = done + t;
                if (t > 0 || done == 0) && (s % log_every == 0 || s == steps) {
                    curve.push((s, l, predict(s)));
                }
            })
        })?;
        done += seg;
        let theta = timed(&mut ph.ntk, || net.ntk(x, None, OutputMode::Full))?;
        let mut values = timed(&mut ph.eig, || sym_eigenvalues(&theta, nk))?;
        values.sort_by(f64::total_cmp);
        let (lo, hi) = (values[0], values[nk - 1]);
        checkpoints.push(Checkpoint {
            step: done,
            lambda_max: hi,
            lambda_min: lo,
            cond: hi / lo,
            rel_change: frob_rel(&theta, &theta0),
        });
        if done == steps {
            eig_final = values;
        }
    }
    // The linearized model after `steps` GD steps: f_lin - y = (I - eta Theta_0 / N)^T (f_0 - y).
    let r_lin = eig.apply(&r0, 1, |l| (1.0 - eta * l / n as f64).powi(steps as i32));
    let f_t = net.predict(x)?;
    let gap: f64 = f_t.iter().zip(y).zip(&r_lin).map(|((f, t), r)| (f - t - r) * (f - t - r)).sum();
    let function_gap = gap.sqrt() / norm(&r0);
    let logs: Vec<f64> = curve.iter().map(|&(_, m, p)| (m / p).log10().abs()).collect();
    let curve_log_error = logs.iter().sum::<f64>() / logs.len().max(1) as f64;
    let train_accuracy = accuracy(&f_t, y, k);
    Ok(SpectrumCell {
        params: net.params.len(),
        eig_init: eig.values,
        trace_init,
        eta,
        curve,
        curve_log_error,
        train_accuracy,
        gn_residual,
        gn_residual_kernel,
        gn_loss,
        checkpoints,
        eig_final,
        function_gap,
        phase_s: ph,
        time_s: start.elapsed().as_secs_f64(),
    })
}

/// Runs `ntk spectrum`.
///
/// # Errors
/// Usage errors naming the flag; I/O and numerical errors.
pub fn run(a: SpectrumArgs) -> CliResult {
    let s = &a.study;
    s.check()?;
    let n_train = a.n_train.unwrap_or(if s.quick { 96 } else { 128 });
    let steps = a.steps.unwrap_or(if s.quick { 150 } else { 300 });
    if n_train < 2 {
        return Err(CliError::flag("--n-train", n_train, "need at least 2 inputs"));
    }
    check_lr_scale(a.lr_scale)?;
    if !(a.rcond >= 0.0 && a.rcond < 1.0) {
        return Err(CliError::flag("--rcond", a.rcond, "must be in [0, 1)"));
    }
    let digits = load_digits(&a.data)?;
    let order = digits.shuffled_indices(a.data_seed);
    let all: Vec<usize> = (0..CLASSES).collect();
    let train: Labelled = digits.select(&order, &all, 0, n_train);
    if train.len() < n_train {
        return Err(CliError::flag(
            "--n-train",
            n_train,
            format!("only {} images available", train.len()),
        ));
    }
    let y = train.targets();
    let specific = json!({
        "command": "spectrum", "data": a.data, "n_train": n_train, "steps": steps,
        "lr_scale": a.lr_scale, "rcond": a.rcond, "data_seed": a.data_seed,
        "targets": "centred one-hot (k = 10), MSE", "optimizer": "full-batch GD",
    });
    let net_cfg = s.net();
    let compute = |c: &Cell| {
        let mut net = Net::new(net_cfg, train.d, c.width, c.depth, CLASSES, c.seed)?;
        spectrum_cell(&mut net, &train.x, &y, steps, a.lr_scale, a.rcond)
    };
    run_study(s, "spectrum", specific, compute, write_outputs, |c, r: &SpectrumCell| {
        let fields = json!({"cond_init": r.cond_init(),
            "gn_residual": r.gn_residual, "curve_log_error": r.curve_log_error,
            "loss_final": r.curve.last().map(|v| v.1), "loss_final_kernel": r.curve.last().map(|v| v.2),
            "ntk_rel_change": r.checkpoints.last().map(|c| c.rel_change), "function_gap": r.function_gap});
        cell_summary(c, fields, r.phase_s, r.time_s)
    })
}

fn write_outputs(s: &StudyArgs, done: &[(Cell, SpectrumCell)]) -> CliResult {
    let dir = &s.out_dir;
    let mut cells = Table::cells(&[
        "n_k",
        "lambda_max_init",
        "lambda_min_init",
        "cond_init",
        "trace_init",
        "eta",
        "loss_init",
        "loss_final",
        "loss_final_kernel",
        "curve_log_error",
        "train_accuracy",
        "gn_residual",
        "gn_residual_kernel",
        "gn_loss",
        "lambda_max_final",
        "cond_final",
        "ntk_rel_change_mid",
        "ntk_rel_change_final",
        "function_gap",
    ]);
    let mut curves = Table::new(&["width", "depth", "seed", "step", "loss", "loss_kernel"]);
    let mut eigs = Table::new(&["width", "depth", "seed", "stage", "rank", "eigenvalue"]);
    for (c, r) in done {
        let (w, d, sd) = (c.width as f64, c.depth as f64, c.seed as f64);
        let first = r.curve.first().copied().unwrap_or((0, f64::NAN, f64::NAN));
        let last = r.curve.last().copied().unwrap_or((0, f64::NAN, f64::NAN));
        let ck = |i: usize| r.checkpoints.get(i);
        let fin = r.checkpoints.last();
        let middle = [
            r.eig_init.len() as f64,
            r.eig_init.last().copied().unwrap_or(f64::NAN),
            r.eig_init.first().copied().unwrap_or(f64::NAN),
            r.cond_init(),
            r.trace_init,
            r.eta,
            first.1,
            last.1,
            last.2,
            r.curve_log_error,
            r.train_accuracy,
            r.gn_residual,
            r.gn_residual_kernel,
            r.gn_loss,
            fin.map_or(f64::NAN, |c| c.lambda_max),
            fin.map_or(f64::NAN, |c| c.cond),
            ck(0).map_or(f64::NAN, |c| c.rel_change),
            fin.map_or(f64::NAN, |c| c.rel_change),
            r.function_gap,
        ];
        cells.push_cell(c, r.params, &middle, r.phase_s, r.time_s);
        for &(t, m, p) in &r.curve {
            curves.push(&[w, d, sd, t as f64, m, p]);
        }
        for (stage, vals) in [(0.0, &r.eig_init), (1.0, &r.eig_final)] {
            for (rank, v) in vals.iter().rev().enumerate() {
                eigs.push(&[w, d, sd, stage, rank as f64, *v]);
            }
        }
    }
    cells.write(dir, "spectrum_cells.csv")?;
    curves.write(dir, "loss_curves.csv")?;
    eigs.write(dir, "eigenvalues.csv")?;

    width_figures(
        s,
        done,
        &[
            Figure {
                name: "cond_vs_width.svg",
                title: "NTK condition number (solid: init, dashed: end of GD)",
                y_label: "lambda_max / lambda_min",
                log_y: true,
                lines: vec![
                    Line::solid("init", |r: &SpectrumCell| r.cond_init()),
                    Line::dashed("trained", |r: &SpectrumCell| {
                        r.checkpoints.last().map_or(f64::NAN, |c| c.cond)
                    }),
                ],
            },
            Figure {
                name: "gn_residual_vs_width.svg",
                title: "Gauss-Newton step: relative residual (kernel regime: ~0)",
                y_label: "||y - f_GN|| / ||y - f_0||",
                log_y: true,
                lines: vec![Line::solid("GN", |r: &SpectrumCell| r.gn_residual)],
            },
            Figure {
                name: "loss_prediction_error_vs_width.svg",
                title: "GD loss vs kernel-regime prediction: mean |log10(measured / predicted)|",
                y_label: "mean |log10 ratio|",
                log_y: true,
                lines: vec![Line::solid("GD", |r: &SpectrumCell| r.curve_log_error)],
            },
            Figure {
                name: "function_gap_vs_width.svg",
                title: "Network vs linearized model after GD (kernel regime: 0)",
                y_label: "||f_T - f_lin,T|| / ||f_0 - y||",
                log_y: true,
                lines: vec![Line::solid("gap", |r: &SpectrumCell| r.function_gap)],
            },
            Figure {
                name: "ntk_change_vs_width.svg",
                title: "Relative NTK change during GD (dashed: middle)",
                y_label: "||Theta_t - Theta_0||_F / ||Theta_0||_F",
                log_y: true,
                lines: vec![
                    Line::solid("end", |r: &SpectrumCell| {
                        r.checkpoints.last().map_or(f64::NAN, |c| c.rel_change)
                    }),
                    Line::dashed("middle", |r: &SpectrumCell| {
                        r.checkpoints.first().map_or(f64::NAN, |c| c.rel_change)
                    }),
                ],
            },
        ],
    )?;

    // Per depth: loss curves (first seed) and the spectrum at init, one line per width.
    let first_seed = s.run.seed;
    for depth in s.depth_list() {
        let mut curves = vec![];
        let mut spectra = vec![];
        for (c, r) in done.iter().filter(|(c, _)| c.depth == depth && c.seed == first_seed) {
            curves.push(Series {
                label: format!("width {}", c.width),
                points: r.curve.iter().map(|&(t, m, _)| (t as f64, m)).collect(),
                dashed: false,
            });
            curves.push(Series {
                label: format!("width {} (kernel)", c.width),
                points: r.curve.iter().map(|&(t, _, p)| (t as f64, p)).collect(),
                dashed: true,
            });
            let lmax = r.eig_init.last().copied().unwrap_or(1.0);
            spectra.push(Series {
                label: format!("width {}", c.width),
                points: r
                    .eig_init
                    .iter()
                    .rev()
                    .enumerate()
                    .map(|(i, v)| ((i + 1) as f64, v / lmax))
                    .collect(),
                dashed: false,
            });
        }
        if curves.is_empty() {
            continue;
        }
        LineChart {
            title: format!("GD loss, depth {depth}: measured (solid) vs kernel regime (dashed)"),
            x_label: "step".into(),
            y_label: "MSE loss".into(),
            log_y: true,
            log_x: false,
            series: curves,
        }
        .write(&dir.join(format!("loss_curves_depth{depth}.svg")), s.png)?;
        LineChart {
            title: format!("NTK spectrum at init, depth {depth}"),
            x_label: "rank".into(),
            y_label: "lambda_i / lambda_max".into(),
            log_y: true,
            log_x: true,
            series: spectra,
        }
        .write(&dir.join(format!("spectrum_init_depth{depth}.svg")), s.png)?;
    }
    Ok(())
}
