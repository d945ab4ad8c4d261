//! Library behind the `ntk` command: one module per command (`cmd`), plus file formats
//! (`io`), figures (`plot`), the parallel NTK engine (`engine`) and shared flags (`args`).

pub mod args;
pub mod cmd;
pub mod datasets;
pub mod engine;
pub mod error;
pub mod io;
pub mod linear_model;
pub mod placement;
pub mod plot;
pub mod recycle;
pub mod runinfo;
pub mod studyc;
pub mod sweep;
pub mod team;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::{CliError, CliResult};

/// ntk: when does Neural Tangent Kernel theory describe finite networks?
#[derive(Parser, Debug)]
#[command(name = "ntk", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `ntk`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a network on inputs and write its outputs (a smoke test of a setup).
    Forward(cmd::forward::ForwardArgs),
    /// Empirical (finite network) or infinite-width NTK / NNGP of input sets.
    Kernel(cmd::kernel::KernelArgs),
    /// Time the standard workloads against the GEMM roofline.
    Bench(cmd::bench::BenchArgs),
    /// NTK statistics at initialization over a grid (mean, variance, dispersion, log-moments).
    Dispersion(cmd::dispersion::DispersionArgs),
    /// Phase diagram: log2 dispersion of Theta(x, x) over sigma_w2 x depth.
    Phase(cmd::phase::PhaseArgs),
    /// Merge the output directories of a sharded sweep.
    Merge(cmd::merge::MergeArgs),
    /// Train a network and its linearization, tracking the NTK change (studies A and B).
    Train(cmd::train::TrainArgs),
    /// Study A's training grid: NTK change and minimal loss over sigma_w2 x sigma_b2.
    Drift(cmd::drift::DriftArgs),
    /// Study A's output variance (Theorem 3) beside the NTK-GP and trained ensembles.
    Variance(cmd::variance::VarianceArgs),
    /// Study C: NTK spectrum, kernel-regime GD loss and Gauss-Newton step vs width and depth.
    Spectrum(cmd::spectrum::SpectrumArgs),
    /// Study C: NTK-GP, linearized Laplace and deep-ensemble uncertainty vs width.
    Uncertainty(cmd::uncertainty::UncertaintyArgs),
    /// Study C: catastrophic forgetting vs width against the linearized (NTK) model.
    Forgetting(cmd::forgetting::ForgettingArgs),
    /// Mean-field phase quantities (q*, chi_1, depth scales, phase, edge of chaos).
    Theory(cmd::theory::TheoryArgs),
}

/// Runs a parsed command.
///
/// # Errors
/// Whatever the command returns.
pub fn run(cli: Cli) -> CliResult {
    // Commands that compute many kernels keep the engine's buffers between calls; one-shot
    // ones free them, so that writing the result reuses that memory.
    let one_shot = matches!(cli.command, Command::Forward(_) | Command::Kernel(_));
    let _keep = (!one_shot).then(recycle::Keep::new);
    match cli.command {
        Command::Forward(a) => cmd::forward::run(a),
        Command::Kernel(a) => cmd::kernel::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Dispersion(a) => cmd::dispersion::run(a),
        Command::Phase(a) => cmd::phase::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Drift(a) => cmd::drift::run(a),
        Command::Variance(a) => cmd::variance::run(a),
        Command::Spectrum(a) => cmd::spectrum::run(a),
        Command::Uncertainty(a) => cmd::uncertainty::run(a),
        Command::Forgetting(a) => cmd::forgetting::run(a),
        Command::Theory(a) => cmd::theory::run(a),
    }
}

/// Parses `args`, runs, prints `error: ...` on failure; exit code 2 for usage errors and 1 for
/// runtime errors.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A clap error as one line: the message without clap's usage and `--help` hints, its
/// remaining lines (e.g. the list of missing flags) joined by spaces.
fn one_line(rendered: &str) -> String {
    let msg = rendered.split("\n\nUsage:").next().unwrap_or(rendered);
    let msg = msg.split("\n\nFor more information").next().unwrap_or(msg);
    msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}
