//! Library behind the `ntk` command: one module per command (`cmd`), plus file formats
//! (`io`), figures (`plot`), the parallel NTK engine (`engine`) and shared flags (`args`).

pub mod args;
pub mod cmd;
pub mod datasets;
pub mod engine;
pub mod error;
pub mod io;
pub mod linear_model;
pub mod plot;
pub mod runinfo;

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
    /// Train a network and its linearization, tracking the NTK change (studies A and B).
    Train(cmd::train::TrainArgs),
    /// Study A's training grid: NTK change and minimal loss over sigma_w2 x sigma_b2.
    Drift(cmd::drift::DriftArgs),
    /// Study A's output variance (Theorem 3) beside the NTK-GP and trained ensembles.
    Variance(cmd::variance::VarianceArgs),
    /// Mean-field phase quantities (q*, chi_1, depth scales, phase, edge of chaos).
    Theory(cmd::theory::TheoryArgs),
}

/// Runs a parsed command.
///
/// # Errors
/// Whatever the command returns.
pub fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Forward(a) => cmd::forward::run(a),
        Command::Kernel(a) => cmd::kernel::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Drift(a) => cmd::drift::run(a),
        Command::Variance(a) => cmd::variance::run(a),
        Command::Theory(a) => cmd::theory::run(a),
    }
}

/// Parses `args`, runs, prints `error: ...` on failure; exit code 2 for usage errors and 1 for
/// runtime errors.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
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
