//! [`Error`]: what can go wrong with data (never with shapes, which are programmer errors).

use core::fmt;

/// A pass through the network, named in [`Error::NonFinite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Forward pass (pre-activations `h^l`).
    Forward,
    /// Backward pass (signals `delta^l` or parameter gradients).
    Backward,
    /// Gram accumulation of the empirical NTK.
    Ntk,
    /// Infinite-width kernel recursion.
    Kernel,
    /// Training update.
    Train,
    /// The training loss of the outputs (MSE or cross-entropy).
    Loss,
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
            Pass::Ntk => "ntk",
            Pass::Kernel => "kernel",
            Pass::Train => "train",
            Pass::Loss => "loss",
        })
    }
}

/// Errors of `ntk-core`. Each variant carries the facts needed to act on it.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// An architecture field is out of range (`field` names it, `value` is what was given).
    InvalidSpec {
        /// The offending field, e.g. `"sigma_w2"` or `"widths[2]"`.
        field: &'static str,
        /// The value given (as f64; widths are converted).
        value: f64,
    },
    /// A scratch or output slice is shorter than required.
    ShortBuffer {
        /// Which buffer, e.g. `"scratch"`, `"params"`.
        buffer: &'static str,
        /// Elements required.
        needed: usize,
        /// Elements given.
        got: usize,
    },
    /// A slice has the wrong length for the shapes given.
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// Expected number of elements.
        expected: usize,
        /// Actual number of elements.
        got: usize,
    },
    /// A NaN or infinity appeared; `layer` is 1-based (0 = the input).
    NonFinite {
        /// Layer index (0 = inputs, L+1 = readout).
        layer: usize,
        /// Which pass.
        pass: Pass,
    },
    /// An input value (data, not architecture) is NaN or infinite.
    NonFiniteInput {
        /// Which argument.
        what: &'static str,
        /// Flat index of the first bad element.
        index: usize,
    },
    /// A string could not be parsed (e.g. an activation name).
    Parse {
        /// What was being parsed.
        what: &'static str,
    },
    /// An iterative method did not converge.
    NoConvergence {
        /// Which method.
        what: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::InvalidSpec { field, value } => write!(f, "invalid {field}: {value}"),
            Error::ShortBuffer { buffer, needed, got } => {
                write!(f, "{buffer} too short: need {needed} elements, got {got}")
            }
            Error::ShapeMismatch { what, expected, got } => {
                write!(f, "{what} has {got} elements, expected {expected}")
            }
            Error::NonFinite { layer, pass } => {
                write!(f, "non-finite value at layer {layer} in the {pass} pass")
            }
            Error::NonFiniteInput { what, index } => {
                write!(f, "non-finite value in {what} at index {index}")
            }
            Error::Parse { what } => write!(f, "cannot parse {what}"),
            Error::NoConvergence { what } => write!(f, "{what} did not converge"),
        }
    }
}

impl core::error::Error for Error {}

/// Checks `buf.len() >= needed`, naming the buffer otherwise.
#[inline]
pub fn check_len<T>(buffer: &'static str, buf: &[T], needed: usize) -> Result<(), Error> {
    if buf.len() < needed {
        Err(Error::ShortBuffer { buffer, needed, got: buf.len() })
    } else {
        Ok(())
    }
}

/// Checks `buf.len() == expected`.
#[inline]
pub fn check_shape<T>(what: &'static str, buf: &[T], expected: usize) -> Result<(), Error> {
    if buf.len() != expected {
        Err(Error::ShapeMismatch { what, expected, got: buf.len() })
    } else {
        Ok(())
    }
}
