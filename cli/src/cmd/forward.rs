//! `ntk forward`: runs a network on inputs and writes its outputs f (N x k).

use std::path::PathBuf;

use clap::Args;
use ntk_core::Real;
use serde_json::json;

use crate::args::{NetArgs, Precision, RunArgs};
use crate::cmd::{check_dim, load_params, read_inputs, to_real, WeightArgs};
use crate::error::CliResult;
use crate::io::{self, LabelColumn, Matrix};
use crate::runinfo::{dir_of, RunInfo};

/// Flags of `ntk forward`.
#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Inputs (`.npy` or `.csv`, N x d).
    #[arg(long)]
    pub x: PathBuf,
    /// Column of a CSV input holding labels (dropped): index, `last`, or header name.
    #[arg(long)]
    pub label_column: Option<LabelColumn>,
    /// Output file (`.npy` or `.csv`).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub net: NetArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub weights: WeightArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
}

/// Runs `ntk forward`.
///
/// # Errors
/// Usage errors for bad flags, runtime errors for files and overflow.
pub fn run(a: ForwardArgs) -> CliResult {
    let info = RunInfo::start("forward", json!({ "x": a.x, "out": a.out, "seed": a.run.seed }));
    let x = read_inputs("--x", &a.x, a.label_column.as_ref())?;
    let widths = a.net.widths(x.cols())?;
    let spec = a.net.spec(&widths)?;
    check_dim("--x", &a.x, &x, spec.input_dim())?;
    let f = match a.run.precision {
        Precision::F32 => typed::<f32>(&spec, &a, &x)?,
        Precision::F64 => typed::<f64>(&spec, &a, &x)?,
    };
    io::write_matrix(&a.out, &f, a.run.precision)?;
    info.write(dir_of(&a.out), json!({ "outputs": [f.rows(), f.cols()] }))
}

fn typed<T: Real>(spec: &ntk_core::Spec<'_>, a: &ForwardArgs, x: &Matrix) -> CliResult<Matrix> {
    let params = load_params::<T>(spec, &a.weights, a.run.seed)?;
    let xs = to_real::<T>(x);
    let cache = a.run.in_pool(|| crate::engine::par_forward(spec, &params, &xs, x.rows()))?;
    let f = ntk_core::forward::output(spec, &cache, x.rows());
    Ok(Matrix::new(x.rows(), spec.output_dim(), f.iter().map(|v| v.to_f64()).collect()))
}
