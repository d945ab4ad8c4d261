//! `ntk kernel`: the empirical NTK of a finite network, or the infinite-width NTK and NNGP,
//! between input sets (DESIGN §3, §4, §8).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use ntk_core::ntk::OutputMode;
use ntk_core::Real;
use serde_json::json;

use crate::args::{NetArgs, Precision, RunArgs};
use crate::cmd::{check_dim, load_params, read_inputs, to_real, WeightArgs};
use crate::error::{CliError, CliResult};
use crate::io::{self, LabelColumn, Matrix};
use crate::runinfo::{dir_of, RunInfo};

/// `--method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// The finite network's NTK (structured derivatives).
    Empirical,
    /// The infinite-width NTK (and NNGP with --nngp-out).
    Infinite,
}

/// `--output-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// N1 k x N2 k.
    Full,
    /// N1 x N2, mean over outputs (neural-tangents trace_axes=(-1,)).
    Trace,
    /// Length N: Theta(x_i, x_i) averaged over outputs.
    Diagonal,
    /// N x k x k: the per-input output blocks (written as N x k^2).
    DiagonalFull,
}

impl From<ModeArg> for OutputMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Full => OutputMode::Full,
            ModeArg::Trace => OutputMode::Trace,
            ModeArg::Diagonal => OutputMode::Diagonal,
            ModeArg::DiagonalFull => OutputMode::DiagonalFull,
        }
    }
}

/// Flags of `ntk kernel`.
#[derive(Args, Debug)]
pub struct KernelArgs {
    /// First input set (`.npy` or `.csv`, N1 x d).
    #[arg(long)]
    pub x1: PathBuf,
    /// Second input set (N2 x d); default: the first (the kernel is then symmetric).
    #[arg(long)]
    pub x2: Option<PathBuf>,
    /// Column of CSV inputs holding labels (dropped): index, `last`, or header name.
    #[arg(long)]
    pub label_column: Option<LabelColumn>,
    /// Output file for the NTK (`.npy` or `.csv`).
    #[arg(long)]
    pub out: PathBuf,
    /// Output file for the NNGP kernel (infinite method only).
    #[arg(long)]
    pub nngp_out: Option<PathBuf>,
    /// Empirical (finite network) or infinite-width kernel.
    #[arg(long, value_enum, default_value_t = Method::Empirical)]
    pub method: Method,
    /// Which entries to compute.
    #[arg(long, value_enum, default_value_t = ModeArg::Trace)]
    pub output_mode: ModeArg,
    /// Write ln|Theta| (and ln|K|) instead of the kernels, computed in block floating point
    /// (per-sample, per-layer power-of-two exponents): finite where Theta over- or underflows
    /// f64, e.g. at extreme sigma_w2 and depth. f64 only; single-threaded.
    #[arg(long)]
    pub log: bool,
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

/// Runs `ntk kernel`.
///
/// # Errors
/// Usage errors for bad flags, runtime errors for files and overflow.
pub fn run(a: KernelArgs) -> CliResult {
    let info = RunInfo::start(
        "kernel",
        json!({
            "x1": a.x1, "x2": a.x2, "out": a.out, "nngp_out": a.nngp_out,
            "method": format!("{:?}", a.method).to_lowercase(),
            "output_mode": format!("{:?}", a.output_mode).to_lowercase(),
            "activation": a.net.activation.to_string(), "sigma_w2": a.net.sigma_w2,
            "sigma_b2": a.net.sigma_b2, "parameterization": a.net.parameterization,
            "bias": !a.net.no_bias, "seed": a.run.seed, "precision": a.run.precision,
            "weights": a.weights.weights, "log": a.log,
        }),
    );
    if a.log && a.run.precision == Precision::F32 {
        return Err(CliError::flag("--log", "", "needs --precision f64"));
    }
    let x1 = read_inputs("--x1", &a.x1, a.label_column.as_ref())?;
    let x2 = match &a.x2 {
        Some(p) => Some(read_inputs("--x2", p, a.label_column.as_ref())?),
        None => None,
    };
    let widths = a.net.widths(x1.cols())?;
    let spec = a.net.spec(&widths)?;
    if let (Some(p), Some(x2)) = (&a.x2, &x2) {
        check_dim("--x2", p, x2, spec.input_dim())?;
    }
    let mode: OutputMode = a.output_mode.into();
    let (n1, n2, k) = (x1.rows(), x2.as_ref().map_or(x1.rows(), |m| m.rows()), spec.output_dim());
    if matches!(mode, OutputMode::Diagonal | OutputMode::DiagonalFull) && n1 != n2 {
        return Err(CliError::flag(
            "--output-mode",
            "diagonal",
            format!("needs as many inputs in --x2 ({n2}) as in --x1 ({n1})"),
        ));
    }
    let (rows, cols) = match mode {
        OutputMode::Full => (n1 * k, n2 * k),
        OutputMode::Trace => (n1, n2),
        OutputMode::Diagonal => (n1, 1),
        OutputMode::DiagonalFull => (n1, k * k),
    };
    let mut quadrature_error = None;
    let ntk = match a.method {
        Method::Empirical => {
            if a.nngp_out.is_some() {
                return Err(CliError::flag("--nngp-out", "", "only with --method infinite"));
            }
            let v = match a.run.precision {
                _ if a.log => log_empirical(&spec, &a, &x1, x2.as_ref())?,
                Precision::F32 => empirical::<f32>(&spec, &a, &x1, x2.as_ref())?,
                Precision::F64 => {
                    empirical::<f64>(&spec, &a, &x1, x2.as_ref()).map_err(overflow_hint)?
                }
            };
            Matrix::new(rows, cols, v)
        }
        Method::Infinite => {
            if a.weights.weights.is_some() {
                return Err(CliError::flag("--weights", "", "only with --method empirical"));
            }
            let mlp = ntk_core::kernel::Mlp::from_spec(&spec);
            let xs2 = x2.as_ref().map(|m| m.as_slice());
            if a.log && matches!(mode, OutputMode::Full | OutputMode::DiagonalFull) {
                // The k outputs are independent: off-diagonal output blocks are 0 (ln = -inf).
                return Err(CliError::flag(
                    "--log",
                    "",
                    "with --method infinite needs --output-mode trace or diagonal",
                ));
            }
            let (k_nngp, k_ntk, err) = if a.log {
                log_infinite(&mlp, x1.as_slice(), xs2, spec.input_dim())?
            } else {
                a.run.in_pool(|| {
                    crate::engine::par_infinite_kernel(&mlp, x1.as_slice(), xs2, spec.input_dim())
                })?
            };
            quadrature_error = Some(err);
            if let Some(p) = &a.nngp_out {
                io::write_matrix(p, &expand(&k_nngp, n1, n2, k, mode), a.run.precision)?;
            }
            expand(&k_ntk, n1, n2, k, mode)
        }
    };
    io::write_matrix(&a.out, &ntk, a.run.precision)?;
    info.write(
        dir_of(&a.out),
        json!({
            "ntk_shape": [rows, cols],
            "wall_time_compute_s": info.elapsed_s(),
            "max_quadrature_error": quadrature_error,
            "values": if a.log { "ln|kernel| (block floating point)" } else { "kernel" },
        }),
    )
}

fn empirical<T: Real>(
    spec: &ntk_core::Spec<'_>,
    a: &KernelArgs,
    x1: &Matrix,
    x2: Option<&Matrix>,
) -> CliResult<Vec<f64>> {
    let params = load_params::<T>(spec, &a.weights, a.run.seed)?;
    let (x1, x2) = (to_real::<T>(x1), x2.map(to_real::<T>));
    let mode = a.output_mode.into();
    let out = a
        .run
        .in_pool(|| crate::engine::par_empirical_ntk(spec, &params, &x1, x2.as_deref(), mode))?;
    Ok(out.iter().map(|v| v.to_f64()).collect())
}

/// Adds a hint to an overflow error of the plain f64 computation.
fn overflow_hint(e: CliError) -> CliError {
    match e {
        CliError::Runtime(m) if m.starts_with("non-finite value at layer") => {
            CliError::Runtime(format!("{m} (Theta leaves the range of f64: --log gives ln|Theta|)"))
        }
        e => e,
    }
}

/// ln|Theta| of the empirical NTK by [`ntk_core::scaled::empirical_ntk_scaled`].
fn log_empirical(
    spec: &ntk_core::Spec<'_>,
    a: &KernelArgs,
    x1: &Matrix,
    x2: Option<&Matrix>,
) -> CliResult<Vec<f64>> {
    use ntk_core::scaled::{empirical_ntk_scaled, empirical_ntk_scaled_scratch, Scaled};
    let params = load_params::<f64>(spec, &a.weights, a.run.seed)?;
    let mode: OutputMode = a.output_mode.into();
    let (n1, n2) = (x1.rows(), x2.map_or(x1.rows(), |m| m.rows()));
    let mut out = vec![Scaled::ZERO; mode.len(n1, n2, spec.output_dim())];
    let mut s = vec![0.0; empirical_ntk_scaled_scratch(spec.widths, n1, x2.map(|_| n2))];
    let xs2 = x2.map(|m| m.as_slice());
    empirical_ntk_scaled(spec, &params, &mut out, x1.as_slice(), xs2, mode, &mut s)?;
    Ok(out.iter().map(|v| v.ln()).collect())
}

/// ln|K| and ln|Theta| of the infinite-width kernels by [`ntk_core::scaled::kernel_scaled`].
fn log_infinite(
    mlp: &ntk_core::kernel::Mlp<'_>,
    x1: &[f64],
    x2: Option<&[f64]>,
    d: usize,
) -> CliResult<(Vec<f64>, Vec<f64>, f64)> {
    use ntk_core::scaled::{kernel_scaled, Scaled};
    let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |x| x.len() / d));
    let (mut k, mut t) = (vec![Scaled::ZERO; n1 * n2], vec![Scaled::ZERO; n1 * n2]);
    let info = kernel_scaled(Some(&mut k), Some(&mut t), x1, x2, d, mlp)?;
    let ln = |v: Vec<Scaled>| v.iter().map(|s| s.ln()).collect();
    Ok((ln(k), ln(t), info.max_quadrature_error))
}

/// Arranges a scalar-output infinite-width kernel (N1 x N2) per output mode: the k outputs
/// are independent and identically distributed, so `full` is `Theta (x) I_k` and `trace` is
/// Theta itself.
fn expand(t: &[f64], n1: usize, n2: usize, k: usize, mode: OutputMode) -> Matrix {
    match mode {
        OutputMode::Trace => Matrix::new(n1, n2, t.to_vec()),
        OutputMode::Full => {
            let mut m = Matrix::zeros(n1 * k, n2 * k);
            for i in 0..n1 {
                for j in 0..n2 {
                    for a in 0..k {
                        m[(i * k + a, j * k + a)] = t[i * n2 + j];
                    }
                }
            }
            m
        }
        OutputMode::Diagonal => Matrix::new(n1, 1, (0..n1).map(|i| t[i * n2 + i]).collect()),
        OutputMode::DiagonalFull => {
            let mut m = Matrix::zeros(n1, k * k);
            for i in 0..n1 {
                for a in 0..k {
                    m[(i, a * k + a)] = t[i * n2 + i];
                }
            }
            m
        }
    }
}
