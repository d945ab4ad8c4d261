//! [`Activation`]: the nonlinearities phi of DESIGN §2 and their derivatives phi'.

use core::fmt;
use core::str::FromStr;

use crate::error::Error;
use crate::real::Real;

/// 1 / sqrt(2).
const FRAC_1_SQRT_2: f64 = core::f64::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi).
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
/// 2 / sqrt(pi).
const FRAC_2_SQRT_PI: f64 = core::f64::consts::FRAC_2_SQRT_PI;

/// A pointwise nonlinearity phi. phi' at a ReLU kink is 0 (as JAX and PyTorch).
///
/// Names as on the command line: `relu`, `leaky-relu:ALPHA`, `abrelu:A,B`, `erf`, `sigmoid`,
/// `tanh`, `gelu`, `linear`.
///
/// ```
/// use ntk_core::Activation;
/// let a: Activation = "abrelu:-0.5,2".parse().unwrap();
/// assert_eq!(a, Activation::AbRelu { a: -0.5, b: 2.0 });
/// assert_eq!(a.phi(-2.0f64), 1.0);
/// assert_eq!(Activation::Relu.dphi(0.0f64), 0.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// max(x, 0).
    Relu,
    /// x for x > 0, alpha x otherwise.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f64,
    },
    /// a min(x, 0) + b max(x, 0) (neural-tangents' `ABRelu`).
    AbRelu {
        /// Slope for negative inputs.
        a: f64,
        /// Slope for positive inputs.
        b: f64,
    },
    /// erf(x).
    Erf,
    /// Logistic 1 / (1 + e^-x).
    Sigmoid,
    /// tanh(x).
    Tanh,
    /// Exact GELU x Phi(x), Phi the standard normal CDF (PyTorch's default).
    Gelu,
    /// Identity.
    Linear,
}

impl Activation {
    /// The slopes (a, b) of a piecewise-linear activation, `None` for smooth ones.
    pub const fn slopes(self) -> Option<(f64, f64)> {
        match self {
            Activation::Relu => Some((0.0, 1.0)),
            Activation::LeakyRelu { alpha } => Some((alpha, 1.0)),
            Activation::AbRelu { a, b } => Some((a, b)),
            Activation::Linear => Some((1.0, 1.0)),
            _ => None,
        }
    }

    /// `true` for positively homogeneous activations (phi(c x) = c phi(x), c > 0): the ReLU
    /// family and linear, for which power-of-two rescaling of a layer is exact.
    pub const fn is_homogeneous(self) -> bool {
        self.slopes().is_some()
    }

    /// phi(x).
    #[inline(always)]
    pub fn phi<T: Real>(self, x: T) -> T {
        match self {
            Activation::Relu => {
                if x > T::ZERO {
                    x
                } else {
                    T::ZERO
                }
            }
            Activation::LeakyRelu { alpha } => {
                if x > T::ZERO {
                    x
                } else {
                    T::from_f64(alpha) * x
                }
            }
            Activation::AbRelu { a, b } => {
                if x > T::ZERO {
                    T::from_f64(b) * x
                } else {
                    T::from_f64(a) * x
                }
            }
            Activation::Erf => x.erf(),
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => x * T::from_f64(0.5) * (-x * T::from_f64(FRAC_1_SQRT_2)).erfc(),
            Activation::Linear => x,
        }
    }

    /// phi'(x); 0 at a ReLU kink (x = 0), `a` at the kink of leaky / AB ReLU.
    #[inline(always)]
    pub fn dphi<T: Real>(self, x: T) -> T {
        match self {
            Activation::Relu => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            Activation::LeakyRelu { alpha } => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::from_f64(alpha)
                }
            }
            Activation::AbRelu { a, b } => T::from_f64(if x > T::ZERO { b } else { a }),
            Activation::Erf => T::from_f64(FRAC_2_SQRT_PI) * (-x * x).exp(),
            Activation::Sigmoid => {
                let s = sigmoid(x);
                s * (T::ONE - s)
            }
            Activation::Tanh => {
                let t = x.tanh();
                T::ONE - t * t
            }
            Activation::Gelu => {
                let cdf = T::from_f64(0.5) * (-x * T::from_f64(FRAC_1_SQRT_2)).erfc();
                let pdf = T::from_f64(FRAC_1_SQRT_2PI) * (T::from_f64(-0.5) * x * x).exp();
                cdf + x * pdf
            }
            Activation::Linear => T::ONE,
        }
    }

    /// `out[i] = phi(h[i])`, vectorized with the widest SIMD instruction set found at run
    /// time (the same arithmetic per element as [`Activation::phi`]).
    ///
    /// # Panics
    /// If the lengths differ.
    #[track_caller]
    pub fn apply<T: Real>(self, out: &mut [T], h: &[T]) {
        assert_eq!(out.len(), h.len());
        pulp::Arch::new().dispatch(Pointwise { act: self, out, h, derivative: false });
    }

    /// `g[i] *= phi'(h[i])`: the pointwise step of backprop, vectorized as
    /// [`Activation::apply`].
    ///
    /// # Panics
    /// If the lengths differ.
    #[track_caller]
    pub fn mul_dphi<T: Real>(self, g: &mut [T], h: &[T]) {
        assert_eq!(g.len(), h.len());
        pulp::Arch::new().dispatch(Pointwise { act: self, out: g, h, derivative: true });
    }

    /// `g_r *= phi'(h_{r / rows_per_input})` for every row `g_r` (length `len`) of `g`, where
    /// `h` holds one row per `rows_per_input` rows of `g` (the backprop step of signal blocks
    /// with several rows per input); returns whether every result is finite. One dispatch,
    /// each row checked while it is in cache.
    ///
    /// # Panics
    /// If `g` is not `rows_per_input` rows of length `len` per row of `h`.
    #[track_caller]
    pub fn mul_dphi_rows<T: Real>(
        self,
        g: &mut [T],
        h: &[T],
        len: usize,
        rows_per_input: usize,
    ) -> bool {
        assert!(
            len > 0 && rows_per_input > 0 && g.len() == h.len() * rows_per_input,
            "mul_dphi_rows: shapes"
        );
        pulp::Arch::new().dispatch(MulDphiRows { act: self, g, h, len, rows_per_input })
    }

    /// The loop of [`Activation::apply`] (lengths checked by the caller).
    #[inline(always)]
    fn apply_loop<T: Real>(self, out: &mut [T], h: &[T]) {
        match self {
            // Branch-free forms that the compiler vectorises.
            Activation::Relu => {
                for (o, &x) in out.iter_mut().zip(h) {
                    *o = if x > T::ZERO { x } else { T::ZERO };
                }
            }
            Activation::Linear => out.copy_from_slice(h),
            _ => {
                for (o, &x) in out.iter_mut().zip(h) {
                    *o = self.phi(x);
                }
            }
        }
    }

    /// The loop of [`Activation::mul_dphi`] (lengths checked by the caller).
    #[inline(always)]
    fn mul_dphi_loop<T: Real>(self, g: &mut [T], h: &[T]) {
        match self {
            Activation::Relu => {
                for (o, &x) in g.iter_mut().zip(h) {
                    *o = if x > T::ZERO { *o } else { T::ZERO };
                }
            }
            Activation::Linear => {}
            _ => {
                for (o, &x) in g.iter_mut().zip(h) {
                    *o *= self.dphi(x);
                }
            }
        }
    }
}

/// SIMD body of [`Activation::apply`] (`out = phi(h)`) and, with `derivative`, of
/// [`Activation::mul_dphi`] (`out *= phi'(h)`): the plain loops, compiled with the target
/// features of the instruction set pulp picks so that they vectorize at its full width.
struct Pointwise<'a, T> {
    act: Activation,
    out: &'a mut [T],
    h: &'a [T],
    derivative: bool,
}

/// SIMD body of [`Activation::mul_dphi_rows`].
struct MulDphiRows<'a, T> {
    act: Activation,
    g: &'a mut [T],
    h: &'a [T],
    len: usize,
    rows_per_input: usize,
}

impl<T: Real> pulp::WithSimd for MulDphiRows<'_, T> {
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> bool {
        let Self { act, g, h, len, rows_per_input } = self;
        let mut bad = false;
        for (r, row) in g.chunks_exact_mut(len).enumerate() {
            let p = r / rows_per_input;
            act.mul_dphi_loop(row, &h[p * len..(p + 1) * len]);
            for v in row.iter() {
                bad |= !v.is_finite();
            }
        }
        !bad
    }
}

impl<T: Real> pulp::WithSimd for Pointwise<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        if self.derivative {
            self.act.mul_dphi_loop(self.out, self.h);
        } else {
            self.act.apply_loop(self.out, self.h);
        }
    }
}

/// Logistic function, stable for large |x|.
#[inline(always)]
fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

impl FromStr for Activation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let err = Error::Parse { what: "activation" };
        let (name, args) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let num = |t: &str| t.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        Ok(match (name.trim().to_ascii_lowercase_fixed().as_str(), args) {
            ("relu", None) => Activation::Relu,
            ("leaky-relu" | "leaky_relu" | "leakyrelu", Some(a)) => {
                Activation::LeakyRelu { alpha: num(a).ok_or(err)? }
            }
            ("leaky-relu" | "leaky_relu" | "leakyrelu", None) => {
                Activation::LeakyRelu { alpha: 0.01 }
            }
            ("abrelu", Some(a)) => {
                let (x, y) = a.split_once(',').ok_or(err)?;
                Activation::AbRelu { a: num(x).ok_or(err)?, b: num(y).ok_or(err)? }
            }
            ("erf", None) => Activation::Erf,
            ("sigmoid" | "logistic", None) => Activation::Sigmoid,
            ("tanh", None) => Activation::Tanh,
            ("gelu", None) => Activation::Gelu,
            ("linear" | "identity", None) => Activation::Linear,
            _ => return Err(err),
        })
    }
}

/// Lower-casing into a fixed buffer (no allocation).
trait LowerFixed {
    fn to_ascii_lowercase_fixed(&self) -> heapless::String<16>;
}

impl LowerFixed for str {
    fn to_ascii_lowercase_fixed(&self) -> heapless::String<16> {
        let mut out = heapless::String::new();
        for c in self.chars() {
            if out.push(c.to_ascii_lowercase()).is_err() {
                // Too long to be a known name: return something that matches nothing.
                out.clear();
                return out;
            }
        }
        out
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Activation::Relu => f.write_str("relu"),
            Activation::LeakyRelu { alpha } => write!(f, "leaky-relu:{alpha}"),
            Activation::AbRelu { a, b } => write!(f, "abrelu:{a},{b}"),
            Activation::Erf => f.write_str("erf"),
            Activation::Sigmoid => f.write_str("sigmoid"),
            Activation::Tanh => f.write_str("tanh"),
            Activation::Gelu => f.write_str("gelu"),
            Activation::Linear => f.write_str("linear"),
        }
    }
}

/// Every activation once (leaky and AB ReLU with representative slopes), for tests.
pub const ALL: [Activation; 8] = [
    Activation::Relu,
    Activation::LeakyRelu { alpha: 0.1 },
    Activation::AbRelu { a: -0.5, b: 1.5 },
    Activation::Erf,
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Gelu,
    Activation::Linear,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// phi' against a central difference of phi, away from kinks: relative 1e-8 in f64.
    #[test]
    fn derivative_matches_finite_difference() {
        for act in ALL {
            for i in -40..=40 {
                let x = i as f64 * 0.173 + 0.011;
                let h = 1e-6;
                let fd = (act.phi(x + h) - act.phi(x - h)) / (2.0 * h);
                let d = act.dphi(x);
                assert!((fd - d).abs() <= 1e-8 * (1.0 + d.abs()), "{act} at {x}: {fd} vs {d}");
            }
        }
    }

    /// The dispatched (vectorized) passes equal their loops run as plain scalar code, bit for
    /// bit (any NaN counts as equal to any NaN: which operand's NaN an instruction returns
    /// may depend on the operand order the compiler picks), over lengths with vector tails,
    /// signed zeros, NaN and infinities; the fused finiteness flag of `mul_dphi_rows` matches
    /// a direct check.
    #[test]
    fn vectorized_passes_match_their_scalar_loops() {
        fn case<T: Real>(len: usize) -> (std::vec::Vec<T>, std::vec::Vec<T>) {
            let special = [0.0, -0.0, f64::NAN, f64::INFINITY, -f64::INFINITY, 1e300];
            let v = |s: u64| {
                (0..len)
                    .map(|i| {
                        let x = crate::rng::normal(s, 0, i as u64);
                        T::from_f64(if i % 13 == 5 { special[(i / 13) % 6] } else { x })
                    })
                    .collect::<std::vec::Vec<T>>()
            };
            (v(1), v(2))
        }
        fn check<T: Real>() {
            let bits = |v: &[T]| {
                let canonical = |x: f64| if x.is_nan() { f64::NAN } else { x };
                v.iter().map(|x| canonical(x.to_f64()).to_bits()).collect::<std::vec::Vec<_>>()
            };
            for act in ALL {
                for len in [0usize, 1, 15, 16, 17, 63, 257] {
                    let (h, g) = case::<T>(len);
                    let (mut a, mut b) = (std::vec![T::ZERO; len], std::vec![T::ZERO; len]);
                    act.apply(&mut a, &h);
                    act.apply_loop(&mut b, &h);
                    assert_eq!(bits(&a), bits(&b), "{act} apply {len}");
                    let (mut a, mut b) = (g.clone(), g.clone());
                    act.mul_dphi(&mut a, &h);
                    act.mul_dphi_loop(&mut b, &h);
                    assert_eq!(bits(&a), bits(&b), "{act} mul_dphi {len}");
                }
                // Rows of 19 with 3 rows per input row of h.
                let (h, _) = case::<T>(4 * 19);
                let (g, _) = case::<T>(12 * 19);
                let (g, h) = (g.iter().map(|&v| if v.is_finite() { v } else { T::ONE }), h);
                let g: std::vec::Vec<T> = g.collect();
                let (mut a, mut b) = (g.clone(), g.clone());
                let ok = act.mul_dphi_rows(&mut a, &h, 19, 3);
                for (r, row) in b.chunks_exact_mut(19).enumerate() {
                    act.mul_dphi_loop(row, &h[(r / 3) * 19..(r / 3 + 1) * 19]);
                }
                assert_eq!(bits(&a), bits(&b), "{act} mul_dphi_rows");
                assert_eq!(ok, b.iter().all(|v| v.is_finite()), "{act} mul_dphi_rows flag");
            }
        }
        check::<f32>();
        check::<f64>();
    }

    #[test]
    fn parse_round_trip() {
        for act in ALL {
            let mut buf = heapless::String::<64>::new();
            core::fmt::write(&mut buf, format_args!("{act}")).unwrap();
            assert_eq!(buf.parse::<Activation>().unwrap(), act);
        }
        assert!("softmax".parse::<Activation>().is_err());
        assert!("leaky-relu:nan".parse::<Activation>().is_err());
        assert!("a-very-long-unknown-activation-name".parse::<Activation>().is_err());
    }

    #[test]
    fn gelu_and_sigmoid_tails_are_finite() {
        for x in [-1e4f64, -50.0, 50.0, 1e4] {
            for act in [Activation::Gelu, Activation::Sigmoid] {
                assert!(act.phi(x).is_finite() && act.dphi(x).is_finite());
            }
        }
        assert_eq!(Activation::Sigmoid.phi(-1000.0f64), 0.0);
    }
}
