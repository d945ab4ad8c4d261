//! Flags shared by several commands: the network ([`NetArgs`]) and the run ([`RunArgs`]).

use clap::{Args, ValueEnum};
use ntk_core::{Activation, Parameterization, Spec};

use crate::error::{CliError, CliResult};

pub use crate::io::Precision;

/// Weight parameterization (DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamArg {
    /// NTK parameterization (neural-tangents' default).
    Ntk,
    /// Standard parameterization (the studies' experiments).
    Standard,
}

impl From<ParamArg> for Parameterization {
    fn from(p: ParamArg) -> Self {
        match p {
            ParamArg::Ntk => Parameterization::Ntk,
            ParamArg::Standard => Parameterization::Standard,
        }
    }
}

/// Parses an activation name for clap (`relu`, `leaky-relu:0.1`, `abrelu:-1,1`, `erf`, ...).
pub fn parse_activation(s: &str) -> Result<Activation, String> {
    s.parse().map_err(|_| {
        format!(
            "unknown activation {s:?} (expected relu, leaky-relu:ALPHA, abrelu:A,B, erf, \
             sigmoid, tanh, gelu or linear)"
        )
    })
}

/// Parses a non-negative finite variance.
pub fn parse_variance(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not a non-negative finite variance")),
        Err(_) => Err(format!("cannot parse {s:?} as a number")),
    }
}

/// The architecture and initialization of a fully connected network.
#[derive(Args, Clone, Debug)]
pub struct NetArgs {
    /// Activation: relu, leaky-relu:ALPHA, abrelu:A,B, erf, sigmoid, tanh, gelu, linear.
    #[arg(long, default_value = "relu", value_parser = parse_activation)]
    pub activation: Activation,
    /// Number of hidden layers L.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Width of every hidden layer.
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    /// Hidden widths, comma separated (overrides --depth and --width).
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
    /// Number of outputs k.
    #[arg(long, default_value_t = 1)]
    pub out_dim: usize,
    /// Weight variance sigma_w^2.
    #[arg(long = "sigma-w2", default_value_t = 2.0, value_parser = parse_variance, allow_negative_numbers = true)]
    pub sigma_w2: f64,
    /// Bias variance sigma_b^2.
    #[arg(long = "sigma-b2", default_value_t = 0.0, value_parser = parse_variance, allow_negative_numbers = true)]
    pub sigma_b2: f64,
    /// Parameterization.
    #[arg(long, value_enum, default_value_t = ParamArg::Ntk)]
    pub parameterization: ParamArg,
    /// Layers without biases (by default biases exist and are trainable even when sigma_b2 = 0).
    #[arg(long)]
    pub no_bias: bool,
}

impl NetArgs {
    /// `[d, n_1, ..., n_L, k]` for input dimension `d`.
    ///
    /// # Errors
    /// A usage error for a zero width or output dimension.
    pub fn widths(&self, d: usize) -> CliResult<Vec<usize>> {
        let hidden = match &self.widths {
            Some(w) => w.clone(),
            None => vec![self.width; self.depth],
        };
        if let Some(w) = hidden.iter().find(|&&w| w == 0) {
            return Err(CliError::flag("--width", w, "widths must be positive"));
        }
        if self.out_dim == 0 {
            return Err(CliError::flag("--out-dim", 0, "must be positive"));
        }
        let mut v = Vec::with_capacity(hidden.len() + 2);
        v.push(d);
        v.extend(hidden);
        v.push(self.out_dim);
        Ok(v)
    }

    /// The validated spec over `widths`.
    ///
    /// # Errors
    /// A usage error naming the field.
    pub fn spec<'a>(&self, widths: &'a [usize]) -> CliResult<Spec<'a>> {
        Spec::new(
            widths,
            self.activation,
            self.sigma_w2,
            self.sigma_b2,
            !self.no_bias,
            self.parameterization.into(),
        )
        .map_err(|e| match e {
            ntk_core::Error::InvalidSpec { field, value } => {
                CliError::flag(&format!("--{}", field.replace('_', "-")), value, "invalid value")
            }
            e => e.into(),
        })
    }
}

/// Flags every command has.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Random seed (every weight is a pure function of seed, layer and index).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Floating-point precision.
    #[arg(long, value_enum, default_value_t = Precision::F64)]
    pub precision: Precision,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// Runs `f` in a rayon pool of `--threads` workers.
    ///
    /// # Errors
    /// A usage error for `--threads 0`, or whatever `f` returns.
    pub fn in_pool<R: Send>(&self, f: impl FnOnce() -> CliResult<R> + Send) -> CliResult<R> {
        let n = match self.threads {
            Some(0) => return Err(CliError::flag("--threads", 0, "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| CliError::Runtime(format!("cannot start {n} threads: {e}")))?;
        pool.install(f)
    }

    /// The number of threads `in_pool` uses.
    pub fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}
