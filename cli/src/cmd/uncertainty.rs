//! `ntk uncertainty`: predictive uncertainty of wide networks vs width (study C, question 2).
//!
//! Synthetic regression `y = sin(a.x) + 0.5 cos(b.x) + noise` (`studyc::data::Regression`),
//! N training inputs `x ~ N(0, I_d)`, test inputs in distribution (`N(0, I_d)`) and out of
//! distribution (`N(0, 4 I_d)`). Per (width, depth, seed) cell (scalar output, MSE):
//! - a deep ensemble of M networks from independent initializations, each trained by
//!   full-batch GD (`eta = lr_scale N / lambda_max(Theta_0)` of the first member) or Adam:
//!   predictive mean and variance across members;
//! - the linearized Laplace approximation at the first member's trained parameters, in kernel
//!   form `p2 [Theta** - Theta*X (Theta_XX + (s2 / p2) I)^{-1} Theta_X*]`
//!   (`studyc::gauss`), mean = that member's prediction;
//! - the NTK-GP (infinite width, DESIGN §7) after the same GD schedule: the kernel-regime
//!   prediction of the ensemble (mean and variance);
//!
//! and for each: Gaussian NLL, RMSE, mean predictive std, and the regression calibration error
//! (predictions `N(mean, var + s2)`, s2 the noise variance).

use clap::{Args, ValueEnum};
use ntk_core::kernel::{kernel_diagonal, Mlp};
use ntk_core::ntk::OutputMode;
use ntk_core::rng::derive_seed;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::par_infinite_kernel;
use crate::error::{CliError, CliResult};
use crate::studyc::data::Regression;
use crate::studyc::gauss::{calibration, laplace_var, ntk_gp, Calibration, GpKernels, Prediction};
use crate::studyc::linalg::sym_eig;
use crate::studyc::net::{Net, Optimizer};
use crate::studyc::{
    cell_summary, check_lr_scale, run_study, timed, width_figures, Cell, Figure, Line, Phases,
    StudyArgs, Table,
};

/// Optimizer of the ensemble members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptArg {
    /// Full-batch gradient descent (what the NTK-GP predicts).
    Gd,
    /// Full-batch Adam (--adam-lr).
    Adam,
}

/// Flags of `ntk uncertainty`.
#[derive(Args, Clone, Debug)]
pub struct UncertaintyArgs {
    /// Grid, network and output flags.
    #[command(flatten)]
    pub study: StudyArgs,
    /// Input dimension d of the synthetic task.
    #[arg(long, default_value_t = 4)]
    pub input_dim: usize,
    /// Training inputs N (default 64, --quick 32).
    #[arg(long)]
    pub n_train: Option<usize>,
    /// Test inputs in and out of distribution, each (default 200, --quick 100).
    #[arg(long)]
    pub n_test: Option<usize>,
    /// Noise standard deviation of the targets (also the likelihood's).
    #[arg(long, default_value_t = 0.1)]
    pub noise_std: f64,
    /// Ensemble members M (default 5, --quick 4).
    #[arg(long)]
    pub ensemble: Option<usize>,
    /// Training steps per member (default 500, --quick 300).
    #[arg(long)]
    pub steps: Option<usize>,
    /// GD learning rate as a fraction of the stability limit N / lambda_max(Theta_0).
    #[arg(long, default_value_t = 1.0)]
    pub lr_scale: f64,
    /// Optimizer of the ensemble members.
    #[arg(long, value_enum, default_value_t = OptArg::Gd)]
    pub optimizer: OptArg,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub adam_lr: f64,
    /// Prior variance p2 of the Laplace approximation (1 = the NTK-parameterization init).
    #[arg(long, default_value_t = 1.0)]
    pub prior_var: f64,
    /// Seed of the synthetic task.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
}

/// Metrics of one method on the in- and out-of-distribution test sets.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Method {
    /// In distribution.
    pub id: Calibration,
    /// Out of distribution.
    pub ood: Calibration,
}

/// One cell's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UncertaintyCell {
    /// Parameter count.
    pub params: usize,
    /// GD learning rate.
    pub eta: f64,
    /// Mean training loss of the members.
    pub train_loss: f64,
    /// Deep ensemble.
    pub ensemble: Method,
    /// Linearized Laplace (first member).
    pub laplace: Method,
    /// NTK-GP (infinite width), when computed.
    pub ntk_gp: Option<Method>,
    /// Mean ensemble variance over mean NTK-GP variance of f on the test points (in
    /// distribution, then out); the kernel regime predicts 1.
    pub ens_over_gp_var: Option<(f64, f64)>,
    /// Seconds in empirical NTKs (`ntk`), solves and eigendecompositions including the NTK-GP
    /// (`eig`), and training (`train`).
    #[serde(default)]
    pub phase_s: Phases,
    /// Wall time.
    pub time_s: f64,
}

/// The data of the study.
pub struct Task {
    /// Training inputs (n x d).
    pub x: Vec<f64>,
    /// Training targets.
    pub y: Vec<f64>,
    /// Test inputs, in distribution then out of distribution (2 m x d).
    pub xs: Vec<f64>,
    /// Test targets.
    pub ys: Vec<f64>,
    /// Noise variance s2.
    pub s2: f64,
}

/// Settings of one cell.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Members.
    pub members: usize,
    /// Steps per member.
    pub steps: usize,
    /// GD rate as a fraction of the stability limit.
    pub lr_scale: f64,
    /// Adam instead of GD (with this rate).
    pub adam_lr: Option<f64>,
    /// Laplace prior variance.
    pub prior_var: f64,
}

fn split(m: usize, mean: &[f64], var: &[f64], s2: f64, ys: &[f64]) -> Method {
    Method {
        id: calibration(&mean[..m], &var[..m], s2, &ys[..m]),
        ood: calibration(&mean[m..], &var[m..], s2, &ys[m..]),
    }
}

/// The study of one cell; `gp` gives the NTK-GP's (mean, var) on the test inputs for a GD
/// rate, when available. Public for the tests.
///
/// # Errors
/// Numerical failures.
pub fn uncertainty_cell(
    make: &dyn Fn(u64) -> CliResult<Net>,
    seed: u64,
    task: &Task,
    set: Settings,
    gp: Option<&dyn Fn(f64) -> CliResult<Prediction>>,
) -> CliResult<UncertaintyCell> {
    let start = std::time::Instant::now();
    let n = task.y.len();
    let ms = task.ys.len();
    let mut ph = Phases::default();
    let mut first = make(seed)?;
    let theta0 = timed(&mut ph.ntk, || first.ntk(&task.x, None, OutputMode::Trace))?;
    let eta = set.lr_scale * n as f64 / timed(&mut ph.eig, || sym_eig(&theta0, n))?.max();
    let opt = match set.adam_lr {
        Some(lr) => Optimizer::Adam { lr },
        None => Optimizer::Gd { lr: eta },
    };
    let mut preds = vec![];
    let mut train_loss = 0.0;
    for m in 0..set.members {
        let mut net =
            if m == 0 { first.clone() } else { make(derive_seed(seed, m as u64, 0x0e45))? };
        train_loss +=
            timed(&mut ph.train, || net.train(&task.x, &task.y, set.steps, opt, |_, _| {}))?
                / set.members as f64;
        preds.push(net.predict(&task.xs)?);
        if m == 0 {
            first = net;
        }
    }
    let mean: Vec<f64> =
        (0..ms).map(|i| preds.iter().map(|p| p[i]).sum::<f64>() / set.members as f64).collect();
    let var: Vec<f64> = (0..ms)
        .map(|i| {
            preds.iter().map(|p| (p[i] - mean[i]).powi(2)).sum::<f64>()
                / (set.members.max(2) - 1) as f64
        })
        .collect();
    let half = ms / 2;
    let ensemble = split(half, &mean, &var, task.s2, &task.ys);

    let (t_xx, t_sx, t_ss) = timed(&mut ph.ntk, || -> CliResult<_> {
        Ok((
            first.ntk(&task.x, None, OutputMode::Trace)?,
            first.ntk(&task.xs, Some(&task.x), OutputMode::Trace)?,
            first.ntk(&task.xs, Some(&task.xs), OutputMode::Diagonal)?,
        ))
    })?;
    let lap_var = timed(&mut ph.eig, || laplace_var(&t_xx, &t_sx, &t_ss, task.s2, set.prior_var))?;
    let laplace = split(half, &preds[0], &lap_var, task.s2, &task.ys);

    let (ntk_gp, ens_over_gp_var) = match gp {
        Some(gp) => {
            let (gm, gv) = timed(&mut ph.eig, || gp(eta))?;
            let ratio = |r: std::ops::Range<usize>| {
                var[r.clone()].iter().sum::<f64>() / gv[r].iter().sum::<f64>()
            };
            (
                Some(split(half, &gm, &gv, task.s2, &task.ys)),
                Some((ratio(0..half), ratio(half..ms))),
            )
        }
        None => (None, None),
    };
    Ok(UncertaintyCell {
        params: first.params.len(),
        eta,
        train_loss,
        ensemble,
        laplace,
        ntk_gp,
        ens_over_gp_var,
        phase_s: ph,
        time_s: start.elapsed().as_secs_f64(),
    })
}

/// The NTK-GP of a cell's architecture (infinite-width NNGP and NTK of `ntk_core::kernel` on
/// the task's inputs) as a function of the GD rate; `steps = None`: the infinite-time limit.
///
/// # Errors
/// Kernel recursion failures.
pub fn gp_fn(
    net: &Net,
    task: &Task,
    steps: Option<usize>,
) -> CliResult<impl Fn(f64) -> CliResult<Prediction> + use<>> {
    let spec = net.spec();
    let mlp = Mlp::from_spec(&spec);
    let d = net.input_dim();
    let (k_xx, t_xx, _) = par_infinite_kernel(&mlp, &task.x, None, d)?;
    let (k_sx, t_sx, _) = par_infinite_kernel(&mlp, &task.xs, Some(&task.x), d)?;
    let mut k_ss = vec![0.0; task.ys.len()];
    kernel_diagonal(Some(&mut k_ss), None, &task.xs, d, &mlp)?;
    let y = task.y.clone();
    Ok(move |eta: f64| {
        let kern = GpKernels { k_xx: &k_xx, k_sx: &k_sx, k_ss: &k_ss, t_xx: &t_xx, t_sx: &t_sx };
        ntk_gp(&kern, &y, eta, steps)
    })
}

/// Runs `ntk uncertainty`.
///
/// # Errors
/// Usage errors naming the flag; numerical errors.
pub fn run(a: UncertaintyArgs) -> CliResult {
    let s = &a.study;
    s.check()?;
    let n_train = a.n_train.unwrap_or(if s.quick { 32 } else { 64 });
    let n_test = a.n_test.unwrap_or(if s.quick { 100 } else { 200 });
    let members = a.ensemble.unwrap_or(if s.quick { 4 } else { 5 });
    let steps = a.steps.unwrap_or(if s.quick { 300 } else { 500 });
    if a.input_dim == 0 {
        return Err(CliError::flag("--input-dim", 0, "must be positive"));
    }
    if n_train < 2 || n_test < 1 {
        return Err(CliError::flag(
            "--n-train",
            n_train,
            "need at least 2 training and 1 test input",
        ));
    }
    if members < 2 {
        return Err(CliError::flag(
            "--ensemble",
            members,
            "need at least 2 members for a variance",
        ));
    }
    if !(a.noise_std.is_finite() && a.noise_std > 0.0) {
        return Err(CliError::flag("--noise-std", a.noise_std, "must be positive"));
    }
    if !(a.prior_var.is_finite() && a.prior_var > 0.0) {
        return Err(CliError::flag("--prior-var", a.prior_var, "must be positive"));
    }
    check_lr_scale(a.lr_scale)?;
    if !(a.adam_lr.is_finite() && a.adam_lr > 0.0) {
        return Err(CliError::flag("--adam-lr", a.adam_lr, "must be positive"));
    }
    let reg = Regression { d: a.input_dim, noise_std: a.noise_std, seed: a.data_seed };
    let (x, y) = reg.sample(n_train, 1.0, 0);
    let (mut xs, mut ys) = reg.sample(n_test, 1.0, 1);
    let (xo, yo) = reg.sample(n_test, 2.0, 2);
    xs.extend(xo);
    ys.extend(yo);
    let task = Task { x, y, xs, ys, s2: a.noise_std * a.noise_std };
    let set = Settings {
        members,
        steps,
        lr_scale: a.lr_scale,
        adam_lr: (a.optimizer == OptArg::Adam).then_some(a.adam_lr),
        prior_var: a.prior_var,
    };
    let specific = json!({
        "command": "uncertainty", "input_dim": a.input_dim, "n_train": n_train, "n_test": n_test,
        "noise_std": a.noise_std, "ensemble": members, "steps": steps, "lr_scale": a.lr_scale,
        "optimizer": a.optimizer, "adam_lr": a.adam_lr, "prior_var": a.prior_var, "data_seed": a.data_seed,
        "task": "y = sin(a.x) + 0.5 cos(b.x) + noise; test N(0, I) and N(0, 4 I)",
    });
    let net_cfg = s.net();
    let gd_steps = (a.optimizer == OptArg::Gd).then_some(steps);
    let compute = |c: &Cell| {
        let make = |seed: u64| Net::new(net_cfg, a.input_dim, c.width, c.depth, 1, seed);
        let gp = gp_fn(&make(c.seed)?, &task, gd_steps)?;
        uncertainty_cell(&make, c.seed, &task, set, Some(&gp))
    };
    run_study(s, "uncertainty", specific, compute, write_outputs, |c, r: &UncertaintyCell| {
        let fields = json!({"ensemble": r.ensemble, "laplace": r.laplace, "ntk_gp": r.ntk_gp,
            "ens_over_gp_var": r.ens_over_gp_var});
        cell_summary(c, fields, r.phase_s, r.time_s)
    })
}

fn write_outputs(s: &StudyArgs, done: &[(Cell, UncertaintyCell)]) -> CliResult {
    let mut t = Table::cells(&[
        "eta",
        "train_loss",
        "method",
        "split",
        "nll",
        "rmse",
        "mean_std",
        "calibration_error",
        "ens_over_gp_var",
    ]);
    for (c, r) in done {
        let methods = [(0.0, Some(&r.ensemble)), (1.0, Some(&r.laplace)), (2.0, r.ntk_gp.as_ref())];
        for (code, m) in methods {
            let Some(m) = m else { continue };
            for (sp, cal) in [(0.0, &m.id), (1.0, &m.ood)] {
                let gap = match r.ens_over_gp_var {
                    Some((a, b)) if code == 0.0 => {
                        if sp == 0.0 {
                            a
                        } else {
                            b
                        }
                    }
                    _ => f64::NAN,
                };
                let middle =
                    [r.eta, r.train_loss, code, sp, cal.nll, cal.rmse, cal.mean_std, cal.ece, gap];
                t.push_cell(c, r.params, &middle, r.phase_s, r.time_s);
            }
        }
    }
    t.write(&s.out_dir, "uncertainty_cells.csv")?;
    // One metric of the three methods (the NTK-GP dashed).
    let methods = |f: fn(&Method) -> f64| {
        vec![
            Line::solid("ensemble", move |r: &UncertaintyCell| f(&r.ensemble)),
            Line::solid("Laplace", move |r: &UncertaintyCell| f(&r.laplace)),
            Line::dashed("NTK-GP", move |r: &UncertaintyCell| {
                r.ntk_gp.as_ref().map_or(f64::NAN, f)
            }),
        ]
    };
    width_figures(
        s,
        done,
        &[
            Figure {
                name: "nll_in_distribution_vs_width.svg",
                title: "Gaussian NLL, in distribution",
                y_label: "NLL",
                log_y: false,
                lines: methods(|m| m.id.nll),
            },
            Figure {
                name: "nll_out_of_distribution_vs_width.svg",
                title: "Gaussian NLL, out of distribution (x ~ N(0, 4 I))",
                y_label: "NLL",
                log_y: false,
                lines: methods(|m| m.ood.nll),
            },
            Figure {
                name: "calibration_error_vs_width.svg",
                title: "Regression calibration error, in distribution",
                y_label: "mean |coverage - p|",
                log_y: false,
                lines: methods(|m| m.id.ece),
            },
            Figure {
                name: "predictive_std_ood_vs_width.svg",
                title: "Mean predictive std of f, out of distribution",
                y_label: "std",
                log_y: true,
                lines: methods(|m| m.ood.mean_std),
            },
            Figure {
                name: "ensemble_vs_ntk_gp_vs_width.svg",
                title: "Ensemble variance / NTK-GP variance (kernel regime: 1)",
                y_label: "mean var_ens / mean var_gp",
                log_y: true,
                lines: vec![
                    Line::solid("in distribution", |r: &UncertaintyCell| {
                        r.ens_over_gp_var.map_or(f64::NAN, |v| v.0)
                    }),
                    Line::dashed("out of distribution", |r: &UncertaintyCell| {
                        r.ens_over_gp_var.map_or(f64::NAN, |v| v.1)
                    }),
                ],
            },
        ],
    )
}
