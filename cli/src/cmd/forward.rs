//! `ntk forward`: runs a network on inputs and writes its outputs f (N x k).

use std::path::PathBuf;

use clap::Args;
use ntk_core::scaled::Scaled;
use ntk_core::Real;
use serde_json::json;

use crate::args::{NetArgs, Precision, RunArgs};
use crate::cmd::kernel::{auto, Repr};
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
    let (f, repr, negative) = match a.run.precision {
        Precision::F32 => (typed::<f32>(&spec, &a, &x)?, Repr::Plain, 0),
        Precision::F64 => {
            let plain = typed::<f64>(&spec, &a, &x).map(|m| vec![m.as_slice().to_vec()]);
            let (mut v, repr, neg) = auto(plain, || Ok(vec![scaled(&spec, &a, &x)?]))?;
            let f = Matrix::new(x.rows(), spec.output_dim(), v.pop().unwrap_or_default());
            (f, repr, neg)
        }
    };
    io::write_matrix(&a.out, &f, a.run.precision)?;
    if repr == Repr::Ln {
        eprintln!(
            "warning: the outputs leave the range of f64: wrote ln|f| (block floating point), \
             not f, to {} (see run.json)",
            a.out.display()
        );
    }
    let values = match repr {
        Repr::Plain => "f",
        Repr::ScaledValues => "f (block floating point)",
        Repr::Ln => "ln|f| (block floating point)",
    };
    info.write(
        dir_of(&a.out),
        json!({
            "outputs": [f.rows(), f.cols()],
            "scaled_representation": repr != Repr::Plain,
            "values": values,
            "negative_entries": (repr == Repr::Ln).then_some(negative),
        }),
    )
}

fn typed<T: Real>(spec: &ntk_core::Spec<'_>, a: &ForwardArgs, x: &Matrix) -> CliResult<Matrix> {
    let params = load_params::<T>(spec, &a.weights, a.run.seed)?;
    let xs = to_real::<T>(x);
    let cache = a.run.in_pool(|| crate::engine::par_forward(spec, &params, &xs, x.rows()))?;
    let f = ntk_core::forward::output(spec, &cache, x.rows());
    Ok(Matrix::new(x.rows(), spec.output_dim(), f.iter().map(|v| v.to_f64()).collect()))
}

/// The outputs `f = 2^e m` by [`ntk_core::scaled::forward_scaled`] (the exponent of the last
/// layer's pre-activations of each input beside its mantissas).
fn scaled(spec: &ntk_core::Spec<'_>, a: &ForwardArgs, x: &Matrix) -> CliResult<Vec<Scaled>> {
    use ntk_core::forward::cache_len;
    use ntk_core::scaled::{forward_scaled, forward_scaled_scratch};
    let params = load_params::<f64>(spec, &a.weights, a.run.seed)?;
    let n = x.rows();
    let mut cache = vec![0.0; cache_len(spec.widths, n)];
    let mut exps = vec![0.0; n * spec.layers()];
    let mut s = vec![0.0; forward_scaled_scratch(spec.widths, n)];
    forward_scaled(spec, &params, x.as_slice(), n, &mut cache, &mut exps, &mut s)?;
    let f = ntk_core::forward::output(spec, &cache, n);
    let e = &exps[(spec.layers() - 1) * n..];
    let k = spec.output_dim();
    Ok(f.iter().enumerate().map(|(i, &m)| Scaled::from_parts(m, e[i / k] as i64)).collect())
}
