//! `ntk phase`: study A's Fig. 1, log2 of the dispersion of Theta(x, x) over a grid of
//! sigma_w2 (x axis) and depth (y axis) for one activation, width and sigma_b2, with the
//! chi_1 = 1 line of mean-field theory (DESIGN §5, §6).

use clap::Args;
use ntk_core::{Activation, Parameterization};

use crate::args::{parse_activation, parse_variance, ParamArg};
use crate::cmd::dispersion::{run_sweep, InputProtocol, SweepConfig, SweepRunArgs};
use crate::error::CliResult;
use crate::sweep;

/// Flags of `ntk phase`.
#[derive(Args, Debug)]
pub struct PhaseArgs {
    /// Activation: relu, leaky-relu:ALPHA, abrelu:A,B, erf, sigmoid, tanh, gelu, linear.
    #[arg(long, default_value = "tanh", value_parser = parse_activation)]
    pub activation: Activation,
    /// Hidden width.
    #[arg(long, default_value_t = 100)]
    pub width: usize,
    /// Input dimension d (default: the width); x is uniform on the unit sphere of R^d.
    #[arg(long)]
    pub input_dim: Option<usize>,
    /// Depths (y axis), e.g. 1..90.
    #[arg(long, default_value = "1..90", value_parser = sweep::parse_usize_grid)]
    pub depths: std::vec::Vec<usize>,
    /// Weight variances (x axis), e.g. 0..5:0.1.
    #[arg(long = "sigma-w2", default_value = "0..5:0.1", value_parser = sweep::parse_f64_grid, allow_hyphen_values = true)]
    pub sigma_w2: std::vec::Vec<f64>,
    /// Bias variance.
    #[arg(long = "sigma-b2", default_value_t = 1.0, value_parser = parse_variance, allow_negative_numbers = true)]
    pub sigma_b2: f64,
    /// Parameterization (study A uses standard).
    #[arg(long, value_enum, default_value_t = ParamArg::Standard)]
    pub parameterization: ParamArg,
    /// Layers without biases.
    #[arg(long)]
    pub no_bias: bool,
    /// Independent initializations per cell.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub sweep: SweepRunArgs,
}

/// Runs `ntk phase`: writes phase.csv (the columns of dispersion.csv, r = 1), phase.svg
/// (and phase.png with --png) and run.json.
///
/// # Errors
/// Usage errors for bad flags; runtime errors for files and overflow.
pub fn run(a: PhaseArgs) -> CliResult {
    let mut depths = a.depths.clone();
    depths.sort_unstable();
    depths.dedup();
    let cfg = SweepConfig {
        kind: "phase".into(),
        activations: vec![a.activation.to_string()],
        input_dim: a.input_dim.unwrap_or(a.width),
        widths: vec![a.width],
        depths,
        sigma_w2: a.sigma_w2.clone(),
        sigma_b2: vec![a.sigma_b2],
        parameterization: Parameterization::from(a.parameterization).to_string(),
        bias: !a.no_bias,
        samples: a.samples,
        inputs: InputProtocol::Sphere,
        x: None,
        correlations: vec![1.0],
        bootstrap: a.sweep.bootstrap,
        level: a.sweep.level,
        depth_chunk: a.sweep.depth_chunk,
        seed: a.sweep.run.seed,
    };
    run_sweep(&cfg, &a.sweep)
}
