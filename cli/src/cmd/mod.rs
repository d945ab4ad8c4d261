//! One module per command, plus what several commands share: loading inputs and networks.

pub mod bench;
pub mod dispersion;
pub mod drift;
pub mod forgetting;
pub mod forward;
pub mod kernel;
pub mod merge;
pub mod phase;
pub mod spectrum;
pub mod theory;
pub mod train;
pub mod uncertainty;
pub mod variance;

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use ntk_core::{Real, Spec};

use crate::error::{CliError, CliResult};
use crate::io::{self, LabelColumn, Layout, Matrix};

/// Reads an `N x d` input matrix from `.npy`, `.csv` or `.csv.gz` (labels split off with
/// `label_column`), rejecting empty data; `flag` names the option in errors.
///
/// # Errors
/// A runtime error naming the file (unreadable, malformed, non-finite or no values).
pub fn read_inputs(
    flag: &str,
    path: &Path,
    label_column: Option<&LabelColumn>,
) -> CliResult<Matrix> {
    let m = io::read_dataset(path, label_column)?.x;
    if m.rows() == 0 || m.cols() == 0 {
        return Err(CliError::Runtime(format!(
            "{flag} {}: no data ({} x {})",
            path.display(),
            m.rows(),
            m.cols()
        )));
    }
    Ok(m)
}

/// Where the weights come from: `--weights FILE` with `--weights-layout`, else `--seed`.
#[derive(Args, Clone, Debug)]
pub struct WeightArgs {
    /// Weights file (`.safetensors` or `.npz`): per layer a 2-D weight and a 1-D bias, names
    /// sorting naturally (`0.weight`, `0.bias`, `2.weight`, ... or `W0`, `b0`, ...). With
    /// `--parameterization ntk` the stored values are the unit-variance parameters.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Layout of 2-D weights in the file: out-in (PyTorch nn.Linear) or in-out (JAX).
    #[arg(long, value_enum, default_value_t = LayoutArg::OutIn)]
    pub weights_layout: LayoutArg,
}

/// `--weights-layout` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// out x in (PyTorch `nn.Linear.weight`).
    OutIn,
    /// in x out (JAX / Flax `Dense` kernel).
    InOut,
}

/// The flat parameter vector (core layout) of the network: loaded from `--weights` or drawn
/// from `seed`.
///
/// # Errors
/// Runtime errors naming the weights file and the tensor whose shape disagrees with the flags.
pub fn load_params<T: Real>(spec: &Spec<'_>, w: &WeightArgs, seed: u64) -> CliResult<Vec<T>> {
    let mut params = vec![T::ZERO; spec.param_count()];
    match &w.weights {
        None => spec.init(&mut params, seed)?,
        Some(path) => {
            let layout = match w.weights_layout {
                LayoutArg::OutIn => Layout::OutIn,
                LayoutArg::InOut => Layout::InOut,
            };
            let layers = io::load_weights(path, layout)?;
            io::validate_weights(path, &layers, spec.widths, spec.bias)?;
            for (i, l) in layers.iter().enumerate() {
                let (wd, bd) = spec.layer_mut(&mut params, i);
                for (d, &s) in wd.iter_mut().zip(l.weight.as_slice()) {
                    *d = T::from_f64(s);
                }
                if let Some(b) = &l.bias {
                    for (d, &s) in bd.iter_mut().zip(b) {
                        *d = T::from_f64(s);
                    }
                }
            }
        }
    }
    Ok(params)
}

/// Converts an f64 matrix to a flat `Vec<T>`.
pub fn to_real<T: Real>(m: &Matrix) -> Vec<T> {
    m.as_slice().iter().map(|&v| T::from_f64(v)).collect()
}

/// Checks that `x` has `d` columns, naming the flag.
///
/// # Errors
/// A usage error.
pub fn check_dim(flag: &str, path: &Path, x: &Matrix, d: usize) -> CliResult {
    if x.cols() != d {
        return Err(CliError::flag(
            flag,
            path.display(),
            format!("has {} columns, expected {d} (the input dimension)", x.cols()),
        ));
    }
    Ok(())
}
