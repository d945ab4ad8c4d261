//! The linearized network `f_lin(x; theta) = f(x; theta_0) + J_0(x) (theta - theta_0)`
//! (Lee et al. 2019, DESIGN §7) without materializing the Jacobian `J_0`.
//!
//! `J_0 v` is a Jacobian–vector product by forward-mode tangent propagation through the
//! network at `theta_0` (neural-tangents' `linearize`, `jax.jvp`):
//! `dh^l = c_w (dW^l x^{l-1} + W^l dx^{l-1}) + c_b db^l`, `dx^l = phi'(h^l) .* dh^l`,
//! `dx^0 = 0`; its cost is about twice a forward pass. `J_0^T g` is
//! [`crate::backward::param_gradient`] at `theta_0`.

use crate::error::{check_len, check_shape, Error, Pass};
use crate::forward::{
    activations, cache_len, forward_layer, forward_layer_scratch, pre_activations,
};
use crate::real::Real;
use crate::simd::{gemm, MatMut, MatRef};
use crate::spec::{max_width, Spec};

/// Scratch elements [`jvp`] needs for `n` inputs.
pub const fn jvp_scratch(widths: &[usize], n: usize) -> usize {
    3 * n * max_width(widths) + forward_layer_scratch(widths, n)
}

/// Jacobian–vector product `out = J(x) v` (n x k, row-major) of the network at `params`,
/// for a tangent `v` laid out like the parameters, given the forward `cache` of the same
/// inputs `x` at `params`.
///
/// Equivalent to `jax.jvp(lambda p: f(p, x), (params,), (v,))[1]`.
///
/// # Errors
/// Buffer errors for wrong lengths; [`Error::NonFinite`] (tangent overflow).
#[allow(clippy::too_many_arguments)]
pub fn jvp<T: Real>(
    spec: &Spec<'_>,
    params: &[T],
    x: &[T],
    n: usize,
    cache: &[T],
    v: &[T],
    out: &mut [T],
    scratch: &mut [T],
) -> Result<(), Error> {
    let widths = spec.widths;
    check_shape("params", params, spec.param_count())?;
    check_shape("v", v, spec.param_count())?;
    check_shape("x", x, n * spec.input_dim())?;
    check_shape("out", out, n * spec.output_dim())?;
    check_len("cache", cache, cache_len(widths, n))?;
    check_len("scratch", scratch, jvp_scratch(widths, n))?;
    let m = max_width(widths);
    let (act, rest) = scratch.split_at_mut(n * m);
    let (cur, rest) = rest.split_at_mut(n * m);
    let (next, gs) = rest.split_at_mut(n * m);
    let (mut cur, mut next) = (cur, next);
    for i in 0..spec.layers() {
        let (n_in, n_out) = (widths[i], widths[i + 1]);
        let a: &[T] = if i == 0 {
            x
        } else {
            activations(spec, &mut act[..n * n_in], pre_activations(spec, cache, n, i - 1));
            &act[..n * n_in]
        };
        // dW x^{l-1} + db: the forward layer with the tangent as parameters.
        let dh = &mut next[..n * n_out];
        forward_layer(spec, v, i, dh, MatRef::row_major(a, n, n_in), gs)?;
        if i > 0 {
            // + W dx^{l-1}, dx^{l-1} = phi'(h^{l-1}) .* dh^{l-1} (already in `cur`).
            let (w, _) = spec.layer(params, i);
            let cw = T::from_f64(spec.weight_multiplier(i));
            gemm(
                MatMut::row_major(dh, n, n_out),
                cw,
                MatRef::row_major(&cur[..n * n_in], n, n_in),
                MatRef::row_major(w, n_out, n_in).t(),
                T::ONE,
                gs,
            )?;
        }
        if i + 1 < spec.layers() {
            spec.activation.mul_dphi(dh, pre_activations(spec, cache, n, i));
        }
        if dh.iter().any(|t| !t.is_finite()) {
            return Err(Error::NonFinite { layer: i + 1, pass: Pass::Forward });
        }
        core::mem::swap(&mut cur, &mut next);
    }
    out.copy_from_slice(&cur[..out.len()]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{forward, forward_scratch, output};
    use crate::Parameterization;
    use std::vec;
    use std::vec::Vec;

    /// J v against a central difference of the outputs along v: 1e-7 relative (f64).
    #[test]
    fn jvp_matches_directional_difference() {
        let widths = [3usize, 7, 6, 2];
        let n = 4;
        for act in crate::activation::ALL {
            for p in [Parameterization::Ntk, Parameterization::Standard] {
                let spec = Spec::new(&widths, act, 1.6, 0.2, true, p).unwrap();
                let mut params = vec![0.0f64; spec.param_count()];
                spec.init(&mut params, 3).unwrap();
                let mut v = vec![0.0f64; params.len()];
                crate::rng::fill_normal(&mut v, 4, 0, 0);
                let x: Vec<f64> = (0..n * 3).map(|i| crate::rng::normal(5, 0, i as u64)).collect();
                let run = |q: &[f64]| {
                    let mut cache = vec![0.0; cache_len(&widths, n)];
                    let mut s = vec![0.0; forward_scratch(&widths, n)];
                    forward(&spec, q, &x, n, &mut cache, &mut s).unwrap();
                    cache
                };
                let cache = run(&params);
                let mut out = vec![0.0; n * 2];
                let mut s = vec![0.0; jvp_scratch(&widths, n)];
                jvp(&spec, &params, &x, n, &cache, &v, &mut out, &mut s).unwrap();
                let e = 1e-6;
                let qp: Vec<f64> = params.iter().zip(&v).map(|(a, b)| a + e * b).collect();
                let qm: Vec<f64> = params.iter().zip(&v).map(|(a, b)| a - e * b).collect();
                let (cp, cm) = (run(&qp), run(&qm));
                let (fp, fm) = (output(&spec, &cp, n), output(&spec, &cm, n));
                let mut num = 0.0;
                let mut den = 0.0;
                for j in 0..out.len() {
                    let fd = (fp[j] - fm[j]) / (2.0 * e);
                    num += (fd - out[j]) * (fd - out[j]);
                    den += fd * fd;
                }
                let rel = libm::sqrt(num / den);
                assert!(rel < 1e-7, "{act} {p}: {rel}");
            }
        }
    }
}
