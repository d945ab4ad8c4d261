//! Training: the JVP of the linearized model against the explicit Jacobian, and the wide-network
//! regime of Lee et al. (2019): a wide network trained by small-step GD on MSE stays close to its
//! linearization and its NTK barely moves.

use ntk_core::backward::Loss;
use ntk_core::forward::{cache_len, forward, forward_scratch};
use ntk_core::linearized::{jvp, jvp_scratch};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::train::{predict, predict_scratch, train_step, train_step_scratch, Model, Optimizer};
use ntk_core::{Activation, Parameterization, Spec};
use ntk_tests::*;

fn init(spec: &Spec<'_>, seed: u64) -> Vec<f64> {
    let mut p = vec![0.0; spec.param_count()];
    spec.init(&mut p, seed).unwrap();
    p
}

/// J v from forward-mode tangents == the explicit Jacobian (per-sample backprop) times v:
/// 1e-12 relative, every activation and parameterization, k = 3 outputs.
#[test]
fn jvp_matches_explicit_jacobian() {
    let seed = test_seed();
    let widths = [4usize, 9, 7, 3];
    let n = 5;
    let xs = random_inputs(n, 4, seed);
    let x = xs.concat();
    for act in ntk_core::activation::ALL {
        for param in [Parameterization::Ntk, Parameterization::Standard] {
            for bias in [false, true] {
                let spec = Spec::new(&widths, act, 1.8, 0.3, bias, param).unwrap();
                let p = init(&spec, seed + 1);
                let v = init(&spec, seed + 2);
                let mut cache = vec![0.0; cache_len(&widths, n)];
                let mut s = vec![0.0; forward_scratch(&widths, n)];
                forward(&spec, &p, &x, n, &mut cache, &mut s).unwrap();
                let mut out = vec![0.0; n * 3];
                let mut s = vec![0.0; jvp_scratch(&widths, n)];
                jvp(&spec, &p, &x, n, &cache, &v, &mut out, &mut s).unwrap();
                let want: Vec<f64> = xs
                    .iter()
                    .flat_map(|xi| {
                        ref_jacobian(&spec, &p, xi)
                            .into_iter()
                            .map(|row| row.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>())
                    })
                    .collect();
                let e = rel_err(&out, &want);
                assert!(e < tol::NTK_F64, "{spec:?}: {e}");
            }
        }
    }
}

struct WideRun {
    /// ||f_T - f_lin,T|| / ||f_lin,T|| on train and test inputs.
    lin_distance: f64,
    /// ||f_T - f_lin,T|| / ||f_lin,T - f_0||: the deviation relative to how far f moved.
    lin_distance_of_change: f64,
    /// ||Theta_T - Theta_0||_F / ||Theta_0||_F on the train and test inputs.
    ntk_change: f64,
    /// Final over initial training loss.
    loss_ratio: f64,
}

/// Trains a ReLU network (standard parameterization, two hidden layers of `width`) and its
/// linearization with full-batch GD on MSE, eta = N / tr(Theta_0) (<= N / lambda_max: stable).
fn wide_run(width: usize, steps: u64, seed: u64) -> WideRun {
    let (d, n, nt) = (4usize, 8usize, 4usize);
    let widths = [d, width, width, 1];
    let spec =
        Spec::new(&widths, Activation::Relu, 2.0, 0.1, true, Parameterization::Standard).unwrap();
    let p0 = init(&spec, seed);
    let x = random_inputs(n, d, seed + 1).concat();
    let xt = random_inputs(nt, d, seed + 2).concat();
    let y: Vec<f64> = (0..n).map(|i| ntk_core::rng::normal(seed + 3, 0, i as u64)).collect();
    let all: Vec<f64> = x.iter().chain(&xt).copied().collect();
    let m = n + nt;
    let ntk = |p: &[f64]| {
        let mut out = vec![0.0; m * m];
        let mut s = vec![0.0; empirical_ntk_scratch(&widths, m, None)];
        empirical_ntk(&spec, p, &mut out, &all, None, OutputMode::Trace, &mut s).unwrap();
        out
    };
    let theta0 = ntk(&p0);
    let trace: f64 = (0..n).map(|i| theta0[i * m + i]).sum();
    let opt = Optimizer::gd(n as f64 / trace);
    let lin = Model::Linearized { params0: &p0 };
    let mut p = p0.clone();
    let mut delta = vec![0.0; p0.len()];
    let mut s = vec![0.0; train_step_scratch(&widths, true, n)];
    let (mut first, mut last) = (0.0, 0.0);
    for t in 0..steps {
        let l = train_step(
            &spec,
            Model::Network,
            &opt,
            Loss::Mse,
            &mut p,
            &mut [],
            &x,
            &y,
            n,
            t,
            &mut [],
            &mut s,
        )
        .unwrap();
        train_step(&spec, lin, &opt, Loss::Mse, &mut delta, &mut [], &x, &y, n, t, &mut [], &mut s)
            .unwrap();
        if t == 0 {
            first = l;
        }
        last = l;
    }
    let mut s = vec![0.0; predict_scratch(&widths, m)];
    let (mut f, mut fl, mut f0) = (vec![0.0; m], vec![0.0; m], vec![0.0; m]);
    predict(&spec, Model::Network, &p, &all, m, &mut f, &mut s).unwrap();
    predict(&spec, lin, &delta, &all, m, &mut fl, &mut s).unwrap();
    predict(&spec, Model::Network, &p0, &all, m, &mut f0, &mut s).unwrap();
    let moved: Vec<f64> = fl.iter().zip(&f0).map(|(a, b)| a - b).collect();
    let dev: Vec<f64> = f.iter().zip(&fl).map(|(a, b)| a - b).collect();
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    WideRun {
        lin_distance: rel_err(&f, &fl),
        lin_distance_of_change: norm(&dev) / norm(&moved),
        ntk_change: rel_err(&ntk(&p), &theta0),
        loss_ratio: last / first,
    }
}

/// Width 2048: after GD has removed most of the loss, the network is within 1e-2 (relative)
/// of its linearization and the NTK moved by less than 1e-2; a width-16 network trained the
/// same way moves its NTK far more (the check can fail).
#[test]
fn wide_network_follows_its_linearization() {
    let seed = test_seed();
    let wide = wide_run(2048, 20, seed);
    eprintln!(
        "width 2048: lin_distance {:.3e} (of change {:.3e}), ntk_change {:.3e}, loss ratio {:.3e}",
        wide.lin_distance, wide.lin_distance_of_change, wide.ntk_change, wide.loss_ratio
    );
    assert!(wide.loss_ratio < 0.5, "training did not progress: {}", wide.loss_ratio);
    assert!(wide.lin_distance < 1e-2, "{}", wide.lin_distance);
    assert!(wide.ntk_change < 1e-2, "{}", wide.ntk_change);
    let narrow = wide_run(16, 20, seed);
    eprintln!(
        "width 16: lin_distance {:.3e} (of change {:.3e}), ntk_change {:.3e}",
        narrow.lin_distance, narrow.lin_distance_of_change, narrow.ntk_change
    );
    assert!(narrow.ntk_change > 5.0 * wide.ntk_change);
    assert!(narrow.lin_distance_of_change > 5.0 * wide.lin_distance_of_change);
}

/// The linearized model trained by the core (JVP / VJP in parameter space) against the
/// function-space formulas of DESIGN §7 (eigendecomposition of the full Theta_0 by faer):
/// t steps of GD match `f_0 + V (1 - (1 - eta Lambda / N)^t) V^T (y - f_0)` on the training
/// inputs and the Theta(x*, X) Theta^{-1} form at test inputs to 1e-9 (relative to the
/// displacement), and the gradient-flow closed form with `1 - e^{-eta Lambda t / N}` to 2e-3,
/// above the O(eta) discretization error, at most t (eta lambda_max / N)^2 / 2 = 1e-3 here.
#[test]
fn linearized_gd_matches_closed_form() {
    use ntk_cli::linear_model::{decay, linearized_outputs, SymEigen};
    let seed = test_seed();
    let (d, n, m, k) = (3usize, 6usize, 3usize, 2usize);
    let widths = [d, 32, 32, k];
    let spec = Spec::new(&widths, Activation::Tanh, 1.5, 0.2, true, Parameterization::Ntk).unwrap();
    let p0 = init(&spec, seed);
    let x = random_inputs(n, d, seed + 1).concat();
    let xt = random_inputs(m, d, seed + 2).concat();
    let y: Vec<f64> = (0..n * k).map(|i| ntk_core::rng::normal(seed + 3, 0, i as u64)).collect();
    let full = |x1: &[f64], x2: Option<&[f64]>| {
        let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |v| v.len() / d));
        let mut out = vec![0.0; n1 * k * n2 * k];
        let mut s = vec![0.0; empirical_ntk_scratch(&widths, n1, x2.map(|_| n2))];
        empirical_ntk(&spec, &p0, &mut out, x1, x2, OutputMode::Full, &mut s).unwrap();
        out
    };
    let theta = SymEigen::new(&full(&x, None), n * k).unwrap();
    let theta_tx = full(&xt, Some(&x));
    let steps = 2000u64;
    let eta = 1e-3 * n as f64 / theta.lambda_max();
    let lin = Model::Linearized { params0: &p0 };
    let mut delta = vec![0.0; p0.len()];
    let mut s = vec![0.0; train_step_scratch(&widths, true, n)];
    let opt = Optimizer::gd(eta);
    for t in 0..steps {
        train_step(&spec, lin, &opt, Loss::Mse, &mut delta, &mut [], &x, &y, n, t, &mut [], &mut s)
            .unwrap();
    }
    let out = |xs: &[f64], model, q: &[f64]| {
        let r = xs.len() / d;
        let mut o = vec![0.0; r * k];
        let mut s = vec![0.0; predict_scratch(&widths, r)];
        predict(&spec, model, q, xs, r, &mut o, &mut s).unwrap();
        o
    };
    let (fx, ft) = (out(&x, lin, &delta), out(&xt, lin, &delta));
    let (f0x, f0t) = (out(&x, Model::Network, &p0), out(&xt, Model::Network, &p0));
    let sub = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u - v).collect::<Vec<_>>();
    let (moved_x, moved_t) = (sub(&fx, &f0x), sub(&ft, &f0t));
    let t = steps as f64;
    let (gd_x, gd_t) =
        linearized_outputs(&theta, &theta_tx, &f0x, &f0t, &y, 1, decay(eta, n, t, true));
    let (gd_x, gd_t) = (sub(&gd_x, &f0x), sub(&gd_t, &f0t));
    let (e1, e2) = (rel_err(&moved_x, &gd_x), rel_err(&moved_t, &gd_t));
    assert!(e1 < 1e-9 && e2 < 1e-9, "discrete GD: train {e1:e}, test {e2:e}");
    let (fl_x, fl_t) =
        linearized_outputs(&theta, &theta_tx, &f0x, &f0t, &y, 1, decay(eta, n, t, false));
    let (fl_x, fl_t) = (sub(&fl_x, &f0x), sub(&fl_t, &f0t));
    let (e3, e4) = (rel_err(&moved_x, &fl_x), rel_err(&moved_t, &fl_t));
    eprintln!("closed form: discrete {e1:.2e} / {e2:.2e}, gradient flow {e3:.2e} / {e4:.2e}");
    assert!(e3 < 2e-3 && e4 < 2e-3, "gradient flow: train {e3:e}, test {e4:e}");
    // The discretization gap is really there (GD is not gradient flow).
    assert!(e3 > 1e-5, "{e3}");
}
