//! Independent reference computations for the integration tests: per-sample forward and
//! backprop in plain loops (sharing no code with `ntk-core`'s batched kernels), explicit
//! Jacobians, finite differences, and J J^T.

use ntk_core::ntk::OutputMode;
use ntk_core::Spec;

/// Tolerances used across the tests (one table, as STYLE asks).
pub mod tol {
    /// Empirical NTK vs explicit J J^T in f64 (relative, normwise).
    pub const NTK_F64: f64 = 1e-12;
    /// The same in f32.
    pub const NTK_F32: f64 = 1e-4;
    /// Backprop vs central finite differences in f64, away from ReLU kinks.
    pub const FD: f64 = 1e-6;
}

/// Seed for random tests: `NTK_TEST_SEED` or a fixed default; printed so failures replay.
pub fn test_seed() -> u64 {
    let s = std::env::var("NTK_TEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20261122);
    eprintln!("NTK_TEST_SEED={s}");
    s
}

/// Per-layer pre-activations of one input (`hs[i]` has n_{i+1} values).
pub fn ref_forward(spec: &Spec<'_>, params: &[f64], x: &[f64]) -> Vec<Vec<f64>> {
    ref_forward_from(spec, params, 0, x.to_vec(), None)
}

/// Forward from layer `start`'s input `a` (or from the given pre-activation of layer
/// `start - 1` when `h_prev` is set), returning the pre-activations of layers `start..`.
pub fn ref_forward_from(
    spec: &Spec<'_>,
    params: &[f64],
    start: usize,
    a: Vec<f64>,
    h_prev: Option<Vec<f64>>,
) -> Vec<Vec<f64>> {
    let mut a = match h_prev {
        Some(h) => h.iter().map(|&v| spec.activation.phi(v)).collect(),
        None => a,
    };
    let mut hs = Vec::new();
    for i in start..spec.layers() {
        let (n_in, n_out) = (spec.widths[i], spec.widths[i + 1]);
        let (w, b) = spec.layer(params, i);
        let cw = spec.weight_multiplier(i);
        let cb = spec.bias_multiplier();
        let h: Vec<f64> = (0..n_out)
            .map(|r| {
                let mut acc = 0.0;
                for c in 0..n_in {
                    acc += w[r * n_in + c] * a[c];
                }
                cw * acc + if spec.bias { cb * b[r] } else { 0.0 }
            })
            .collect();
        a = h.iter().map(|&v| spec.activation.phi(v)).collect();
        hs.push(h);
    }
    hs
}

/// Explicit Jacobian `J[a][p] = d f_a / d theta_p` of one input by per-sample backprop.
pub fn ref_jacobian(spec: &Spec<'_>, params: &[f64], x: &[f64]) -> Vec<Vec<f64>> {
    let hs = ref_forward(spec, params, x);
    let k = spec.output_dim();
    let p = spec.param_count();
    let mut jac = vec![vec![0.0; p]; k];
    for (out, row) in jac.iter_mut().enumerate() {
        // delta at the readout: e_out.
        let mut delta: Vec<f64> = (0..k).map(|a| if a == out { 1.0 } else { 0.0 }).collect();
        for i in (0..spec.layers()).rev() {
            let (n_in, n_out) = (spec.widths[i], spec.widths[i + 1]);
            let a_in: Vec<f64> = if i == 0 {
                x.to_vec()
            } else {
                hs[i - 1].iter().map(|&v| spec.activation.phi(v)).collect()
            };
            let (w_off, b_off) = spec.offsets(i);
            let cw = spec.weight_multiplier(i);
            for r in 0..n_out {
                for c in 0..n_in {
                    row[w_off + r * n_in + c] = cw * delta[r] * a_in[c];
                }
                if spec.bias {
                    row[b_off + r] = spec.bias_multiplier() * delta[r];
                }
            }
            if i > 0 {
                let (w, _) = spec.layer(params, i);
                delta = (0..n_in)
                    .map(|c| {
                        let s: f64 = (0..n_out).map(|r| w[r * n_in + c] * delta[r]).sum();
                        cw * s * spec.activation.dphi(hs[i - 1][c])
                    })
                    .collect();
            }
        }
    }
    jac
}

/// Central finite-difference Jacobian of one input (step `eps`).
pub fn fd_jacobian(spec: &Spec<'_>, params: &[f64], x: &[f64], eps: f64) -> Vec<Vec<f64>> {
    let k = spec.output_dim();
    let mut jac = vec![vec![0.0; params.len()]; k];
    let mut p = params.to_vec();
    for j in 0..params.len() {
        let orig = p[j];
        p[j] = orig + eps;
        let fp = ref_forward(spec, &p, x).pop().unwrap();
        p[j] = orig - eps;
        let fm = ref_forward(spec, &p, x).pop().unwrap();
        p[j] = orig;
        for a in 0..k {
            jac[a][j] = (fp[a] - fm[a]) / (2.0 * eps);
        }
    }
    jac
}

/// `J(x1) J(x2)^T` arranged as `mode` (the reference NTK).
pub fn ref_ntk(
    spec: &Spec<'_>,
    params: &[f64],
    x1: &[Vec<f64>],
    x2: &[Vec<f64>],
    mode: OutputMode,
) -> Vec<f64> {
    let k = spec.output_dim();
    let j1: Vec<_> = x1.iter().map(|x| ref_jacobian(spec, params, x)).collect();
    let j2: Vec<_> = x2.iter().map(|x| ref_jacobian(spec, params, x)).collect();
    let dotp = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(a, b)| a * b).sum::<f64>();
    let (n1, n2) = (x1.len(), x2.len());
    let mut out = vec![0.0; mode.len(n1, n2, k)];
    for i in 0..n1 {
        for j in 0..n2 {
            for a in 0..k {
                for b in 0..k {
                    let t = dotp(&j1[i][a], &j2[j][b]);
                    match mode {
                        OutputMode::Full => out[(i * k + a) * n2 * k + j * k + b] = t,
                        OutputMode::Trace if a == b => out[i * n2 + j] += t / k as f64,
                        OutputMode::Diagonal if a == b && i == j => out[i] += t / k as f64,
                        OutputMode::DiagonalFull if i == j => out[(i * k + a) * k + b] = t,
                        _ => {}
                    }
                }
            }
        }
    }
    out
}

/// Normwise relative error `||a - b|| / ||b||`.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// `n` inputs of dimension `d` with standard normal entries from `seed`.
pub fn random_inputs(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| (0..d).map(|j| ntk_core::rng::normal(seed, 1000 + i as u64, j as u64)).collect())
        .collect()
}
