//! Structured fuzz inputs shared by the targets: networks (architecture, activation,
//! variances, parameterization), input batches and parameter vectors, each built from an
//! `Arbitrary` description and capped in size (`None` means "reject this case").

use arbitrary::Arbitrary;
use ntk_core::{Activation, Parameterization, Spec};

/// An activation; slopes of the piecewise-linear ones are `i8 / 16`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ActChoice {
    /// ReLU.
    Relu,
    /// Leaky ReLU with alpha = v / 16.
    Leaky(i8),
    /// ABReLU with a, b = v / 16.
    AbRelu(i8, i8),
    /// erf.
    Erf,
    /// Logistic.
    Sigmoid,
    /// tanh.
    Tanh,
    /// GELU.
    Gelu,
    /// Identity.
    Linear,
}

impl ActChoice {
    /// The activation.
    pub fn get(self) -> Activation {
        match self {
            ActChoice::Relu => Activation::Relu,
            ActChoice::Leaky(a) => Activation::LeakyRelu { alpha: a as f64 / 16.0 },
            ActChoice::AbRelu(a, b) => {
                Activation::AbRelu { a: a as f64 / 16.0, b: b as f64 / 16.0 }
            }
            ActChoice::Erf => Activation::Erf,
            ActChoice::Sigmoid => Activation::Sigmoid,
            ActChoice::Tanh => Activation::Tanh,
            ActChoice::Gelu => Activation::Gelu,
            ActChoice::Linear => Activation::Linear,
        }
    }
}

/// A variance (or a scale): mostly inside the range [1e-4, 1e4], sometimes far
/// outside it or not a valid variance at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Variance {
    /// `10^(-4 + 8 u / 65535)`: log-uniform in [1e-4, 1e4].
    InRange(u16),
    /// `10^(v / 100)`: from 1e-328 (0) to inf.
    Wide(i16),
    /// `v / 4`: 0, 0.25, ..., 2.0 (the ReLU edge of chaos), ...
    Grid(u8),
    /// Anything, including negative, NaN and infinite values.
    Raw(f64),
}

impl Variance {
    /// The value.
    pub fn get(self) -> f64 {
        match self {
            Variance::InRange(u) => 10f64.powf(-4.0 + 8.0 * u as f64 / 65535.0),
            Variance::Wide(v) => 10f64.powf(v as f64 / 100.0),
            Variance::Grid(v) => v as f64 / 4.0,
            Variance::Raw(v) => v,
        }
    }
}

/// Hidden layer shapes.
#[derive(Arbitrary, Debug, Clone)]
pub enum Hidden {
    /// `depth` hidden layers of the same `width`.
    Uniform {
        /// Number of hidden layers.
        depth: u16,
        /// Their width.
        width: u8,
    },
    /// Any widths.
    Custom(Vec<u8>),
}

/// Size limits of a target.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Most hidden layers.
    pub depth: usize,
    /// Widest layer (input, hidden or output).
    pub width: usize,
    /// Most parameters.
    pub params: usize,
    /// Most inputs in a batch.
    pub n: usize,
}

/// A network description.
#[derive(Arbitrary, Debug, Clone)]
pub struct Net {
    /// n_0.
    pub input_dim: u8,
    /// n_1..n_L.
    pub hidden: Hidden,
    /// k.
    pub out_dim: u8,
    /// phi.
    pub activation: ActChoice,
    /// sigma_w^2.
    pub sigma_w2: Variance,
    /// sigma_b^2.
    pub sigma_b2: Variance,
    /// Trainable biases.
    pub bias: bool,
    /// NTK (true) or standard parameterization.
    pub ntk: bool,
    /// Initialization seed.
    pub seed: u64,
    /// Overwrite one parameter (index modulo the count) with this value.
    pub tweak: Option<(u32, f64)>,
}

impl Net {
    /// The widths `[n_0, hidden.., k]`, or `None` if a cap is exceeded.
    pub fn widths(&self, caps: &Caps) -> Option<Vec<usize>> {
        let mut w = vec![self.input_dim as usize];
        match &self.hidden {
            Hidden::Uniform { depth, width } => {
                let depth = *depth as usize;
                if depth > caps.depth {
                    return None;
                }
                w.extend(std::iter::repeat_n(*width as usize, depth));
            }
            Hidden::Custom(v) => {
                if v.len() > caps.depth {
                    return None;
                }
                w.extend(v.iter().map(|&x| x as usize));
            }
        }
        w.push(self.out_dim as usize);
        let p = ntk_core::spec::param_count(&w, self.bias);
        if w.iter().any(|&x| x > caps.width) || p > caps.params {
            return None;
        }
        Some(w)
    }

    /// The spec over `widths` (an `Err` for invalid variances or zero widths).
    pub fn spec<'a>(&self, widths: &'a [usize]) -> Result<Spec<'a>, ntk_core::Error> {
        let p = if self.ntk { Parameterization::Ntk } else { Parameterization::Standard };
        Spec::new(
            widths,
            self.activation.get(),
            self.sigma_w2.get(),
            self.sigma_b2.get(),
            self.bias,
            p,
        )
    }

    /// Parameters initialized from `seed`, with the tweak applied.
    pub fn params(&self, spec: &Spec<'_>) -> Vec<f64> {
        let mut p = vec![0.0; spec.param_count()];
        spec.init(&mut p, self.seed).expect("params has the right length");
        if let Some((i, v)) = self.tweak {
            if !p.is_empty() {
                let n = p.len();
                p[i as usize % n] = v;
            }
        }
        p
    }
}

/// A special value injected into an input batch.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Special {
    /// NaN.
    Nan,
    /// +inf.
    Inf,
    /// -inf.
    NegInf,
    /// Zero.
    Zero,
    /// Any value.
    Value(f64),
}

/// An input batch: `n` rows of `scale * N(0, 1)` entries from `seed`, optionally with one
/// special value.
#[derive(Arbitrary, Debug, Clone)]
pub struct Inputs {
    /// Number of rows (capped).
    pub n: u8,
    /// Scale of the entries.
    pub scale: Variance,
    /// Seed of the entries.
    pub seed: u64,
    /// One entry (index modulo the size) replaced.
    pub special: Option<(u16, Special)>,
}

impl Inputs {
    /// The rows (n x d, row-major), or `None` if `n` exceeds the cap.
    pub fn build(&self, d: usize, caps: &Caps) -> Option<Vec<f64>> {
        let n = self.n as usize;
        if n > caps.n {
            return None;
        }
        let scale = self.scale.get();
        let mut x: Vec<f64> =
            (0..n * d).map(|j| scale * ntk_core::rng::normal(self.seed, 77, j as u64)).collect();
        if let (Some((i, s)), false) = (self.special, x.is_empty()) {
            let len = x.len();
            x[i as usize % len] = match s {
                Special::Nan => f64::NAN,
                Special::Inf => f64::INFINITY,
                Special::NegInf => f64::NEG_INFINITY,
                Special::Zero => 0.0,
                Special::Value(v) => v,
            };
        }
        Some(x)
    }
}

/// Rounds a slice to f32.
pub fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}
