//! [`Spec`]: the architecture of a fully connected network, its parameter layout and the
//! `const fn` sizes that let firmware declare static buffers.
//!
//! `widths = [n_0, n_1, ..., n_L, n_{L+1}]`: input dimension, L hidden widths, output
//! dimension. Layer `i = 0..=L` (DESIGN's l = i + 1) maps `n_i -> n_{i+1}`; its weight
//! `W` (`n_{i+1} x n_i`, row-major, out-in like PyTorch's `nn.Linear`) is followed by its
//! bias (`n_{i+1}`) when biases are on.
//!
//! ```
//! use ntk_core::spec::{param_count, Spec, Parameterization};
//! use ntk_core::Activation;
//! // A fixed-size network for firmware: 4 -> 16 -> 16 -> 1.
//! const WIDTHS: [usize; 4] = [4, 16, 16, 1];
//! const P: usize = param_count(&WIDTHS, true);
//! static mut PARAMS: [f32; P] = [0.0; P];
//! assert_eq!(P, 4 * 16 + 16 + 16 * 16 + 16 + 16 + 1);
//! let spec = Spec::new(&WIDTHS, Activation::Relu, 2.0, 0.1, true, Parameterization::Ntk).unwrap();
//! assert_eq!(spec.depth(), 2);
//! ```

use core::fmt;
use core::str::FromStr;

use crate::activation::Activation;
use crate::error::{check_shape, Error};
use crate::real::Real;
use crate::rng;

/// How weights are scaled (DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Parameterization {
    /// `h = (sigma_w / sqrt(n_in)) W x + sigma_b b`, `W, b ~ N(0, 1)` (neural-tangents default).
    #[default]
    Ntk,
    /// `h = W x + b`, `W ~ N(0, sigma_w^2 / n_in)`, `b ~ N(0, sigma_b^2)`.
    Standard,
}

impl FromStr for Parameterization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "ntk" => Ok(Parameterization::Ntk),
            "standard" => Ok(Parameterization::Standard),
            _ => Err(Error::Parse { what: "parameterization" }),
        }
    }
}

impl fmt::Display for Parameterization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Parameterization::Ntk => "ntk",
            Parameterization::Standard => "standard",
        })
    }
}

/// Number of parameters of a network with these widths.
pub const fn param_count(widths: &[usize], bias: bool) -> usize {
    let mut p = 0;
    let mut i = 0;
    while i + 1 < widths.len() {
        p += widths[i] * widths[i + 1] + if bias { widths[i + 1] } else { 0 };
        i += 1;
    }
    p
}

/// Sum of `widths[1..]` (every layer's output width): `n` times this is the size of the
/// pre-activation cache of [`crate::forward::forward`] for `n` inputs.
pub const fn units(widths: &[usize]) -> usize {
    let mut s = 0;
    let mut i = 1;
    while i < widths.len() {
        s += widths[i];
        i += 1;
    }
    s
}

/// Largest of `widths`.
pub const fn max_width(widths: &[usize]) -> usize {
    let mut m = 0;
    let mut i = 0;
    while i < widths.len() {
        if widths[i] > m {
            m = widths[i];
        }
        i += 1;
    }
    m
}

/// A validated architecture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec<'a> {
    /// `[n_0, n_1, ..., n_{L+1}]`.
    pub widths: &'a [usize],
    /// Activation of the hidden layers (the readout is linear).
    pub activation: Activation,
    /// Weight variance sigma_w^2.
    pub sigma_w2: f64,
    /// Bias variance sigma_b^2.
    pub sigma_b2: f64,
    /// Whether layers have (trainable) biases.
    pub bias: bool,
    /// NTK or standard parameterization.
    pub parameterization: Parameterization,
}

impl<'a> Spec<'a> {
    /// Validates and builds a spec.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for fewer than two widths, a zero width, or a variance that is
    /// negative or not finite.
    pub fn new(
        widths: &'a [usize],
        activation: Activation,
        sigma_w2: f64,
        sigma_b2: f64,
        bias: bool,
        parameterization: Parameterization,
    ) -> Result<Self, Error> {
        if widths.len() < 2 {
            return Err(Error::InvalidSpec { field: "widths.len", value: widths.len() as f64 });
        }
        if let Some(&w) = widths.iter().find(|&&w| w == 0) {
            return Err(Error::InvalidSpec { field: "widths", value: w as f64 });
        }
        if !(sigma_w2.is_finite() && sigma_w2 >= 0.0) {
            return Err(Error::InvalidSpec { field: "sigma_w2", value: sigma_w2 });
        }
        if !(sigma_b2.is_finite() && sigma_b2 >= 0.0) {
            return Err(Error::InvalidSpec { field: "sigma_b2", value: sigma_b2 });
        }
        match activation {
            Activation::LeakyRelu { alpha } if !alpha.is_finite() => {
                return Err(Error::InvalidSpec { field: "activation", value: alpha })
            }
            Activation::AbRelu { a, b } if !(a.is_finite() && b.is_finite()) => {
                return Err(Error::InvalidSpec { field: "activation", value: a + b })
            }
            _ => {}
        }
        Ok(Self { widths, activation, sigma_w2, sigma_b2, bias, parameterization })
    }

    /// Number of hidden layers L.
    pub const fn depth(&self) -> usize {
        self.widths.len() - 2
    }
    /// Number of dense layers L + 1.
    pub const fn layers(&self) -> usize {
        self.widths.len() - 1
    }
    /// Input dimension n_0.
    pub const fn input_dim(&self) -> usize {
        self.widths[0]
    }
    /// Output dimension k = n_{L+1}.
    pub const fn output_dim(&self) -> usize {
        self.widths[self.widths.len() - 1]
    }
    /// Number of parameters.
    pub const fn param_count(&self) -> usize {
        param_count(self.widths, self.bias)
    }
    /// Offsets of layer `i`'s weight and bias in the parameter vector.
    ///
    /// # Panics
    /// If `i >= self.layers()`.
    pub const fn offsets(&self, i: usize) -> (usize, usize) {
        assert!(i < self.layers());
        let mut off = 0;
        let mut j = 0;
        while j < i {
            off += self.widths[j] * self.widths[j + 1]
                + if self.bias { self.widths[j + 1] } else { 0 };
            j += 1;
        }
        (off, off + self.widths[i] * self.widths[i + 1])
    }

    /// Forward multiplier of layer `i`'s weight: `sigma_w / sqrt(n_i)` (ntk) or 1 (standard).
    pub fn weight_multiplier(&self, i: usize) -> f64 {
        match self.parameterization {
            Parameterization::Ntk => libm::sqrt(self.sigma_w2 / self.widths[i] as f64),
            Parameterization::Standard => 1.0,
        }
    }
    /// Forward multiplier of the biases: `sigma_b` (ntk) or 1 (standard).
    pub fn bias_multiplier(&self) -> f64 {
        match self.parameterization {
            Parameterization::Ntk => libm::sqrt(self.sigma_b2),
            Parameterization::Standard => 1.0,
        }
    }
    /// The bias term of a layer's NTK factor `c^2 <x, x'> + s^2`: `s^2` with `s` the bias
    /// multiplier, 0 without biases.
    pub fn bias_gram_factor(&self) -> f64 {
        if self.bias {
            self.bias_multiplier() * self.bias_multiplier()
        } else {
            0.0
        }
    }
    /// Standard deviation of layer `i`'s stored weights at initialization.
    pub fn weight_init_std(&self, i: usize) -> f64 {
        match self.parameterization {
            Parameterization::Ntk => 1.0,
            Parameterization::Standard => libm::sqrt(self.sigma_w2 / self.widths[i] as f64),
        }
    }
    /// Standard deviation of the stored biases at initialization.
    pub fn bias_init_std(&self) -> f64 {
        match self.parameterization {
            Parameterization::Ntk => 1.0,
            Parameterization::Standard => libm::sqrt(self.sigma_b2),
        }
    }

    /// Draws the parameters for `seed`: layer `i`'s weight `j` is
    /// `std_w * rng::normal(seed, 2 i, j)` and its bias `j` is `std_b * rng::normal(seed, 2 i + 1, j)`,
    /// so every parameter is a pure function of (seed, layer, index).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `params.len() != self.param_count()`.
    pub fn init<T: Real>(&self, params: &mut [T], seed: u64) -> Result<(), Error> {
        check_shape("params", params, self.param_count())?;
        for i in 0..self.layers() {
            let (w, b) = self.offsets(i);
            let nw = self.widths[i] * self.widths[i + 1];
            rng::fill_normal(&mut params[w..w + nw], seed, 2 * i as u64, 0);
            scale(&mut params[w..w + nw], self.weight_init_std(i));
            if self.bias {
                let nb = self.widths[i + 1];
                rng::fill_normal(&mut params[b..b + nb], seed, 2 * i as u64 + 1, 0);
                scale(&mut params[b..b + nb], self.bias_init_std());
            }
        }
        Ok(())
    }

    /// Layer `i`'s weight (`n_{i+1} x n_i`, row-major) and bias (empty without biases).
    ///
    /// # Panics
    /// If `params` is shorter than the parameter count or `i` is out of range.
    #[track_caller]
    pub fn layer<'p, T>(&self, params: &'p [T], i: usize) -> (&'p [T], &'p [T]) {
        let (w, b) = self.offsets(i);
        let nb = if self.bias { self.widths[i + 1] } else { 0 };
        (&params[w..b], &params[b..b + nb])
    }

    /// Mutable twin of [`Spec::layer`].
    ///
    /// # Panics
    /// If `params` is shorter than the parameter count or `i` is out of range.
    #[track_caller]
    pub fn layer_mut<'p, T>(&self, params: &'p mut [T], i: usize) -> (&'p mut [T], &'p mut [T]) {
        let (w, b) = self.offsets(i);
        let nb = if self.bias { self.widths[i + 1] } else { 0 };
        let (wpart, rest) = params[w..b + nb].split_at_mut(b - w);
        (wpart, rest)
    }
}

fn scale<T: Real>(x: &mut [T], s: f64) {
    let s = T::from_f64(s);
    for v in x {
        *v *= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_specs() {
        let w = [3, 0, 1];
        assert!(matches!(
            Spec::new(&w, Activation::Relu, 1.0, 0.0, true, Parameterization::Ntk),
            Err(Error::InvalidSpec { field: "widths", .. })
        ));
        let w = [3, 2, 1];
        for (sw, sb, field) in
            [(-1.0, 0.0, "sigma_w2"), (f64::NAN, 0.0, "sigma_w2"), (1.0, f64::INFINITY, "sigma_b2")]
        {
            assert!(matches!(
                Spec::new(&w, Activation::Relu, sw, sb, true, Parameterization::Ntk),
                Err(Error::InvalidSpec { field: f, .. }) if f == field
            ));
        }
        assert!(Spec::new(&[3], Activation::Relu, 1.0, 0.0, true, Parameterization::Ntk).is_err());
    }

    #[test]
    fn layout_covers_params_exactly() {
        let w = [3, 5, 4, 2];
        for bias in [false, true] {
            let s = Spec::new(&w, Activation::Tanh, 1.5, 0.2, bias, Parameterization::Standard)
                .unwrap();
            let mut end = 0;
            for i in 0..s.layers() {
                let (wo, bo) = s.offsets(i);
                assert_eq!(wo, end);
                end = bo + if bias { w[i + 1] } else { 0 };
            }
            assert_eq!(end, s.param_count());
        }
    }

    #[test]
    fn init_is_deterministic_and_scaled() {
        let w = [10, 400, 1];
        let s =
            Spec::new(&w, Activation::Relu, 2.0, 0.0, true, Parameterization::Standard).unwrap();
        let mut a = [0.0f64; 10 * 400 + 400 + 400 + 1];
        let mut b = a;
        s.init(&mut a, 5).unwrap();
        s.init(&mut b, 5).unwrap();
        assert_eq!(a, b);
        let (w0, b0) = s.layer(&a, 0);
        let var = w0.iter().map(|x| x * x).sum::<f64>() / w0.len() as f64;
        assert!((var - 0.2).abs() < 0.02, "{var}");
        assert!(b0.iter().all(|&x| x == 0.0));
    }
}
