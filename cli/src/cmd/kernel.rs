//! `ntk kernel`: the empirical NTK of a finite network, or the infinite-width NTK and NNGP,
//! between input sets (DESIGN §3, §4, §8).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use ntk_core::ntk::OutputMode;
use ntk_core::scaled::{Scaled, PLAIN_TOLERANCE};
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
    // Entries < 0 among those written as ln|value| (their sign is not in the file).
    let mut negative_entries = 0;
    let (ntk, repr) = match a.method {
        Method::Empirical => {
            if a.nngp_out.is_some() {
                return Err(CliError::flag("--nngp-out", "", "only with --method infinite"));
            }
            let scaled = || scaled_empirical(&spec, &a, &x1, x2.as_ref());
            let (v, repr) = match a.run.precision {
                _ if a.log => {
                    let v = scaled()?;
                    negative_entries = negatives(&v);
                    (ln(&v), Repr::Ln)
                }
                Precision::F32 => {
                    (empirical::<f32>(&spec, &a, &x1, x2.as_ref()).map_err(f32_hint)?, Repr::Plain)
                }
                Precision::F64 => {
                    let plain = empirical::<f64>(&spec, &a, &x1, x2.as_ref());
                    let plain = plain.map(|v| vec![v]);
                    let (mut v, repr, neg) = auto(plain, || Ok(vec![scaled()?]))?;
                    negative_entries = neg;
                    (v.pop().unwrap_or_default(), repr)
                }
            };
            (Matrix::new(rows, cols, v), repr)
        }
        Method::Infinite => {
            if a.weights.weights.is_some() {
                return Err(CliError::flag("--weights", "", "only with --method empirical"));
            }
            let mlp = ntk_core::kernel::Mlp::from_spec(&spec);
            let xs2 = x2.as_ref().map(|m| m.as_slice());
            let d = spec.input_dim();
            let needs_trace = || {
                // The k outputs are independent: off-diagonal output blocks are 0 (ln = -inf).
                CliError::flag(
                    "--log",
                    "",
                    "with --method infinite needs --output-mode trace or diagonal",
                )
            };
            let full = matches!(mode, OutputMode::Full | OutputMode::DiagonalFull);
            if a.log && full {
                return Err(needs_trace());
            }
            let err = std::cell::Cell::new(0.0);
            let scaled = || -> CliResult<Vec<Vec<Scaled>>> {
                let (k, t, e) = scaled_infinite(&mlp, x1.as_slice(), xs2, d)?;
                err.set(e);
                Ok(vec![k, t])
            };
            let (mut kt, repr) = if a.log {
                let v = scaled()?;
                negative_entries = v.iter().map(|x| negatives(x)).sum();
                (v.iter().map(|x| ln(x)).collect(), Repr::Ln)
            } else {
                let plain = a
                    .run
                    .in_pool(|| crate::engine::par_infinite_kernel(&mlp, x1.as_slice(), xs2, d));
                let plain = plain.map(|(k, t, e)| {
                    err.set(e);
                    vec![k, t]
                });
                let (v, repr, neg) = auto(plain, scaled)?;
                negative_entries = neg;
                (v, repr)
            };
            if repr == Repr::Ln && full {
                return Err(CliError::Runtime(format!(
                    "{}: Theta leaves the range of f64 and ln|Theta| is written only for \
                     --output-mode trace or diagonal (the off-diagonal output blocks are 0)",
                    a.out.display()
                )));
            }
            quadrature_error = Some(err.get());
            let (k_ntk, k_nngp) = (kt.pop().unwrap_or_default(), kt.pop().unwrap_or_default());
            if let Some(p) = &a.nngp_out {
                io::write_matrix(p, &expand(&k_nngp, n1, n2, k, mode), a.run.precision)?;
            }
            (expand(&k_ntk, n1, n2, k, mode), repr)
        }
    };
    io::write_matrix(&a.out, &ntk, a.run.precision)?;
    if repr == Repr::Ln && !a.log {
        let files = match &a.nngp_out {
            Some(p) => format!("{} and {}", a.out.display(), p.display()),
            None => a.out.display().to_string(),
        };
        eprintln!(
            "warning: the kernel leaves the range of f64: wrote ln|kernel| (block floating \
             point), not the kernel, to {files} (see run.json)"
        );
    }
    let negative = if repr == Repr::Ln { Some(negative_entries) } else { None };
    info.write(
        dir_of(&a.out),
        json!({
            "ntk_shape": [rows, cols],
            "wall_time_compute_s": info.elapsed_s(),
            "max_quadrature_error": quadrature_error,
            "scaled_representation": repr != Repr::Plain,
            "values": repr.describe(),
            "negative_entries": negative,
        }),
    )
}

/// How the numbers of an output file were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repr {
    /// The plain computation (its values are in range, or agree with the scaled ones).
    Plain,
    /// The block floating point computation; every value fits `f64` and is written as is.
    ScaledValues,
    /// The block floating point computation, written as `ln|value|`.
    Ln,
}

impl Repr {
    fn describe(self) -> &'static str {
        match self {
            Repr::Plain => "kernel",
            Repr::ScaledValues => "kernel (block floating point)",
            Repr::Ln => "ln|kernel| (block floating point)",
        }
    }
}

/// The automatic switch to block floating point for the `f64` arrays `plain` (or its error):
/// if the plain computation succeeded and no value is suspect ([`ntk_core::scaled::suspect`]:
/// non-finite, zero or subnormal), it is the answer; otherwise (or on a non-finite error)
/// the scaled arrays are computed, and the plain values are kept if every one matches its
/// scaled value to [`PLAIN_TOLERANCE`] (e.g. exact zeros), the scaled values are written if they all
/// fit `f64` ([`Scaled::fits_f64`]), and `ln|value|` otherwise.
/// Also returns the number of negative values written as `ln|value|`.
pub fn auto(
    plain: CliResult<Vec<Vec<f64>>>,
    scaled: impl FnOnce() -> CliResult<Vec<Vec<Scaled>>>,
) -> CliResult<(Vec<Vec<f64>>, Repr, usize)> {
    let plain = match plain {
        Ok(v) if !v.iter().flatten().any(|x| ntk_core::scaled::suspect(*x)) => {
            return Ok((v, Repr::Plain, 0))
        }
        Ok(v) => Some(v),
        Err(CliError::Runtime(m)) if m.starts_with("non-finite value at layer") => None,
        Err(e) => return Err(e),
    };
    let s = scaled()?;
    let all = |f: &dyn Fn(&Scaled, f64) -> bool, p: Option<&Vec<Vec<f64>>>| {
        s.iter()
            .enumerate()
            .all(|(i, v)| v.iter().enumerate().all(|(j, x)| f(x, p.map_or(f64::NAN, |p| p[i][j]))))
    };
    if let Some(p) =
        plain.as_ref().filter(|p| all(&|x, y| x.matches_f64(y, PLAIN_TOLERANCE), Some(p)))
    {
        return Ok((p.clone(), Repr::Plain, 0));
    }
    if all(&|x, _| x.fits_f64(), None) {
        let v = s.iter().map(|v| v.iter().map(|x| x.to_f64()).collect()).collect();
        return Ok((v, Repr::ScaledValues, 0));
    }
    let neg = s.iter().map(|v| negatives(v)).sum();
    Ok((s.iter().map(|v| ln(v)).collect(), Repr::Ln, neg))
}

/// `ln|v_i|`.
fn ln(v: &[Scaled]) -> Vec<f64> {
    v.iter().map(|x| x.ln()).collect()
}

/// Number of negative values.
fn negatives(v: &[Scaled]) -> usize {
    v.iter().filter(|x| x.m < 0.0).count()
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
    // Converted on the pool's thread: glibc gives each thread its own heap, and only there is
    // the engine's freed memory reused (2 MiB less peak RSS on W2 in f32).
    a.run.in_pool(|| {
        let out = crate::engine::par_empirical_ntk(spec, &params, &x1, x2.as_deref(), mode)?;
        Ok(out.iter().map(|v| v.to_f64()).collect())
    })
}

/// Adds a hint to an overflow error of the plain f32 computation (the block floating point
/// switch is f64 only).
fn f32_hint(e: CliError) -> CliError {
    match e {
        CliError::Runtime(m) if m.starts_with("non-finite value at layer") => CliError::Runtime(
            format!("{m} (Theta leaves the range of f32: --precision f64 switches to block floating point, --log gives ln|Theta|)"),
        ),
        e => e,
    }
}

/// The empirical NTK by [`ntk_core::scaled::empirical_ntk_scaled`].
fn scaled_empirical(
    spec: &ntk_core::Spec<'_>,
    a: &KernelArgs,
    x1: &Matrix,
    x2: Option<&Matrix>,
) -> CliResult<Vec<Scaled>> {
    use ntk_core::scaled::{empirical_ntk_scaled, empirical_ntk_scaled_scratch};
    let params = load_params::<f64>(spec, &a.weights, a.run.seed)?;
    let mode: OutputMode = a.output_mode.into();
    let (n1, n2) = (x1.rows(), x2.map_or(x1.rows(), |m| m.rows()));
    let mut out = vec![Scaled::ZERO; mode.len(n1, n2, spec.output_dim())];
    let mut s = vec![0.0; empirical_ntk_scaled_scratch(spec.widths, n1, x2.map(|_| n2))];
    let xs2 = x2.map(|m| m.as_slice());
    empirical_ntk_scaled(spec, &params, &mut out, x1.as_slice(), xs2, mode, &mut s)?;
    Ok(out)
}

/// The infinite-width K and Theta (and the quadrature error) by
/// [`ntk_core::scaled::kernel_scaled`].
fn scaled_infinite(
    mlp: &ntk_core::kernel::Mlp<'_>,
    x1: &[f64],
    x2: Option<&[f64]>,
    d: usize,
) -> CliResult<(Vec<Scaled>, Vec<Scaled>, f64)> {
    use ntk_core::scaled::kernel_scaled;
    let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |x| x.len() / d));
    let (mut k, mut t) = (vec![Scaled::ZERO; n1 * n2], vec![Scaled::ZERO; n1 * n2]);
    let info = kernel_scaled(Some(&mut k), Some(&mut t), x1, x2, d, mlp)?;
    Ok((k, t, info.max_quadrature_error))
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
