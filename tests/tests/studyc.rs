//! Study C (`ntk spectrum`, `ntk uncertainty`, `ntk forgetting`): the kernel-form formulas
//! against parameter-space references built from explicit Jacobians, and the approach of
//! finite networks to their kernel-regime predictions as width grows (small scale).

use ntk_cli::cmd::forgetting::forgetting_cell;
use ntk_cli::cmd::spectrum::spectrum_cell;
use ntk_cli::studyc::data::Labelled;
use ntk_cli::studyc::gauss::laplace_var;
use ntk_cli::studyc::linalg::sym_eig;
use ntk_cli::studyc::net::{Net, NetConfig};
use ntk_core::ntk::OutputMode;
use ntk_core::{Activation, Parameterization};
use ntk_tests::{random_inputs, ref_jacobian, rel_err, test_seed};

fn cfg(activation: Activation) -> NetConfig {
    NetConfig {
        activation,
        sigma_w2: 1.5,
        sigma_b2: 0.1,
        bias: true,
        parameterization: Parameterization::Ntk,
    }
}

fn flat(v: &[Vec<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

/// Solves `A X = B` for symmetric positive definite `A` (n x n) by plain Cholesky (a
/// reference independent of faer).
fn cholesky_solve(a: &[f64], n: usize, b: &[f64], m: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            l[i * n + j] = if i == j { s.sqrt() } else { s / l[j * n + j] };
        }
    }
    let mut x = b.to_vec();
    for c in 0..m {
        for i in 0..n {
            let s: f64 = x[i * m + c] - (0..i).map(|k| l[i * n + k] * x[k * m + c]).sum::<f64>();
            x[i * m + c] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 =
                x[i * m + c] - (i + 1..n).map(|k| l[k * n + i] * x[k * m + c]).sum::<f64>();
            x[i * m + c] = s / l[i * n + i];
        }
    }
    x
}

#[test]
fn laplace_kernel_form_equals_parameter_form() {
    // var f(x*) = J* (J^T J / s2 + I / p2)^{-1} J*^T (P x P) against
    // p2 [Theta** - Theta*X (Theta_XX + s2/p2 I)^{-1} Theta_X*] (N x N), to 1e-8.
    let seed = test_seed();
    for (act, param) in
        [(Activation::Tanh, Parameterization::Ntk), (Activation::Relu, Parameterization::Standard)]
    {
        let mut c = cfg(act);
        c.parameterization = param;
        let net = Net::new(c, 3, 6, 2, 1, seed).unwrap();
        let spec = net.spec();
        let (xtr, xte) = (random_inputs(7, 3, seed ^ 1), random_inputs(5, 3, seed ^ 2));
        let p = net.params.len();
        let jac = |xs: &[Vec<f64>]| -> Vec<Vec<f64>> {
            xs.iter().map(|x| ref_jacobian(&spec, &net.params, x).remove(0)).collect()
        };
        let (j, js) = (jac(&xtr), jac(&xte));
        for (s2, p2) in [(0.01, 1.0), (0.3, 0.2)] {
            let mut prec = vec![0.0; p * p];
            for a in 0..p {
                for b in 0..p {
                    prec[a * p + b] = j.iter().map(|r| r[a] * r[b]).sum::<f64>() / s2;
                }
                prec[a * p + a] += 1.0 / p2;
            }
            let mut jst = vec![0.0; p * js.len()];
            for (i, r) in js.iter().enumerate() {
                for a in 0..p {
                    jst[a * js.len() + i] = r[a];
                }
            }
            let sol = cholesky_solve(&prec, p, &jst, js.len());
            let want: Vec<f64> = (0..js.len())
                .map(|i| (0..p).map(|a| js[i][a] * sol[a * js.len() + i]).sum())
                .collect();
            let (x, xs) = (flat(&xtr), flat(&xte));
            let t_xx = net.ntk(&x, None, OutputMode::Trace).unwrap();
            let t_sx = net.ntk(&xs, Some(&x), OutputMode::Trace).unwrap();
            let t_ss = net.ntk(&xs, Some(&xs), OutputMode::Diagonal).unwrap();
            let got = laplace_var(&t_xx, &t_sx, &t_ss, s2, p2).unwrap();
            let err = rel_err(&got, &want);
            assert!(err < 1e-8, "{act:?} {param:?} s2={s2} p2={p2}: {err:e}\n{got:?}\n{want:?}");
        }
    }
}

#[test]
fn ntk_eigenvalues_match_trace_and_reconstruct() {
    // Full NTK (N k x N k) of a small net: sum of eigenvalues = trace = sum of squared
    // Jacobian rows (explicit reference Jacobian); U diag(lambda) U^T = Theta.
    let seed = test_seed();
    let net = Net::new(cfg(Activation::Erf), 4, 9, 3, 3, seed).unwrap();
    let xs = random_inputs(6, 4, seed ^ 3);
    let theta = net.ntk(&flat(&xs), None, OutputMode::Full).unwrap();
    let nk = 18;
    let e = sym_eig(&theta, nk).unwrap();
    let jtrace: f64 = xs
        .iter()
        .flat_map(|x| ref_jacobian(&net.spec(), &net.params, x))
        .map(|row| row.iter().map(|v| v * v).sum::<f64>())
        .sum();
    let esum: f64 = e.values.iter().sum();
    assert!((esum - jtrace).abs() < 1e-11 * jtrace, "{esum} {jtrace}");
    assert!(e.min() > -1e-12 * e.max());
    let id: Vec<f64> = (0..nk * nk).map(|i| if i / nk == i % nk { 1.0 } else { 0.0 }).collect();
    let rec = e.apply(&id, nk, |l| l);
    assert!(rel_err(&rec, &theta) < 1e-12, "{}", rel_err(&rec, &theta));
}

fn toy_classes(n: usize, d: usize, seed: u64) -> Labelled {
    // Inputs on a sphere of radius sqrt(d) with a label from the sign pattern of two coordinates.
    let xs = random_inputs(n, d, seed);
    let mut x = vec![];
    let mut labels = vec![];
    for r in &xs {
        let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        x.extend(r.iter().map(|v| v / norm * (d as f64).sqrt()));
        labels.push(usize::from(r[0] > 0.0) + 2 * usize::from(r[1] > 0.0));
    }
    Labelled { x, d, labels }
}

#[test]
fn wider_networks_follow_the_kernel_regime() {
    // Gauss-Newton residual (kernel regime: 0), distance from the linearized model after GD and
    // NTK change shrink with width (mean over 2 seeds, 10 outputs); the loss curve's deviation
    // from the kernel prediction is much smaller at the widest than at the narrowest width.
    let seed = test_seed();
    let data = toy_classes(12, 5, seed);
    let y = data.targets();
    let mut all = vec![];
    for width in [32, 256, 1024] {
        let mut acc = [0.0; 4];
        for s in 0..2 {
            let mut net = Net::new(cfg(Activation::Tanh), 5, width, 2, 10, seed + s).unwrap();
            let r = spectrum_cell(&mut net, &data.x, &y, 40, 1.0, 1e-10).unwrap();
            assert!(r.gn_residual_kernel < 1e-6, "{}", r.gn_residual_kernel);
            let change = r.checkpoints.last().unwrap().rel_change;
            for (a, v) in
                acc.iter_mut().zip([r.gn_residual, r.function_gap, change, r.curve_log_error])
            {
                *a += v / 2.0;
            }
        }
        eprintln!("width {width}: GN residual, function gap, NTK change, loss log error: {acc:?}");
        if let Some(p) = all.last() {
            let p: &[f64; 4] = p;
            for q in 0..3 {
                assert!(acc[q] < 0.6 * p[q], "quantity {q} did not shrink: {p:?} -> {acc:?}");
            }
        }
        all.push(acc);
    }
    let (first, last) = (all[0], all[2]);
    assert!(last[3] < first[3] / 3.0, "{first:?} -> {last:?}");
    assert!(last[0] < 0.1 && last[1] < 0.05, "{last:?}");
}

#[test]
fn forgetting_approaches_the_linearized_prediction() {
    // Relative gap between the network's and the linearized model's outputs after two tasks,
    // and the error of the predicted forgetting, shrink with width.
    let seed = test_seed();
    let a = toy_classes(10, 4, seed ^ 5);
    let t = toy_classes(6, 4, seed ^ 6);
    let mut b = toy_classes(10, 4, seed ^ 7);
    b.labels.iter_mut().for_each(|c| *c += 4);
    let mut all: Vec<(f64, f64)> = vec![];
    for width in [16, 128, 1024] {
        let mut acc = (0.0, 0.0);
        for s in 0..2 {
            let mut net = Net::new(cfg(Activation::Tanh), 4, width, 1, 10, seed + s).unwrap();
            let r = forgetting_cell(&mut net, &a, &t, &b, 40, 1.0).unwrap();
            let f = r.forgetting();
            acc.0 += r.function_gap / 2.0;
            acc.1 += (f.measured - f.kernel).abs() / f.kernel.abs() / 2.0;
        }
        eprintln!("width {width}: function gap {:.3e}, forgetting rel. error {:.3e}", acc.0, acc.1);
        if let Some(p) = all.last() {
            assert!(acc.0 < 0.6 * p.0, "function gap did not shrink: {p:?} -> {acc:?}");
        }
        all.push(acc);
    }
    // The scalar forgetting is noisy at small width; compare the ends of the range.
    assert!(all[2].1 < all[0].1 / 3.0, "{all:?}");
    assert!(all[2].0 < 0.02, "{all:?}");
}

fn ntk() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("ntk").unwrap()
}

fn digits() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz")
}

#[test]
fn cli_sweeps_write_results_resume_and_check_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spec");
    let spectrum = |extra: &[&str]| {
        let mut c = ntk();
        c.args([
            "spectrum",
            "--widths",
            "8,16",
            "--depths",
            "1",
            "--n-train",
            "12",
            "--steps",
            "6",
        ])
        .arg("--data")
        .arg(digits())
        .arg("--out-dir")
        .arg(&out)
        .args(extra);
        c
    };
    // Shard 1/2 computes the first cell only; the full run then adds the second (resume).
    spectrum(&["--shard", "1/2"]).assert().success();
    assert_eq!(std::fs::read_dir(out.join("cells")).unwrap().count(), 1);
    spectrum(&["--threads", "1"]).assert().success();
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["results"]["cells_done"], 2);
    assert_eq!(run["results"]["cells_computed_this_run"], 1);
    let table = std::fs::read_to_string(out.join("spectrum_cells.csv")).unwrap();
    assert_eq!(table.lines().count(), 3);
    for f in [
        "cond_vs_width.svg",
        "gn_residual_vs_width.svg",
        "loss_curves_depth1.svg",
        "eigenvalues.csv",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    // Another configuration in the same directory is refused (exit 2, naming the flag).
    for (extra, flag) in [(["--rcond", "1e-9"], "--out-dir"), (["--lr-scale", "3"], "--lr-scale")] {
        let a = spectrum(&extra).assert().code(2);
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(
            err.starts_with("error: ") && err.contains(flag) && err.lines().count() == 1,
            "{err}"
        );
    }
    ntk().args(["spectrum", "--out-dir"]).arg(dir.path()).args(["--shard", "3/2"]).assert().code(2);

    for cmd in ["forgetting", "uncertainty"] {
        let o = dir.path().join(cmd);
        let mut c = ntk();
        c.args([cmd, "--widths", "8", "--depths", "1", "--steps", "5", "--out-dir"]).arg(&o);
        if cmd == "forgetting" {
            c.args(["--n-task", "10", "--n-test", "10", "--data"]).arg(digits());
        } else {
            c.args(["--n-train", "8", "--n-test", "6", "--ensemble", "2"]);
        }
        c.assert().success();
        assert!(
            o.join("run.json").exists() && o.join(format!("{cmd}_cells.csv")).exists(),
            "{cmd}"
        );
    }
}

#[test]
fn laplace_variance_approaches_the_infinite_width_kernel_form() {
    // At initialization the linearized-Laplace variance of a wide network (empirical NTK)
    // approaches the same formula with the infinite-width NTK (ntk_core::kernel) as width
    // grows: relative error over test points, mean of 3 seeds, shrinks with width.
    let seed = test_seed();
    let (xtr, xte) = (flat(&random_inputs(6, 3, seed ^ 11)), flat(&random_inputs(4, 3, seed ^ 12)));
    let (s2, p2) = (0.05, 1.0);
    let mut errs = vec![];
    for width in [16, 256, 4096] {
        let mut acc = 0.0;
        for s in 0..3 {
            let net = Net::new(cfg(Activation::Relu), 3, width, 2, 1, seed + s).unwrap();
            let mlp = ntk_core::kernel::Mlp::from_spec(&net.spec());
            let (_, t_xx, _) = ntk_cli::engine::par_infinite_kernel(&mlp, &xtr, None, 3).unwrap();
            let (_, t_sx, _) =
                ntk_cli::engine::par_infinite_kernel(&mlp, &xte, Some(&xtr), 3).unwrap();
            let mut t_ss = vec![0.0; 4];
            ntk_core::kernel::kernel_diagonal(None, Some(&mut t_ss), &xte, 3, &mlp).unwrap();
            let want = laplace_var(&t_xx, &t_sx, &t_ss, s2, p2).unwrap();
            let e_xx = net.ntk(&xtr, None, OutputMode::Trace).unwrap();
            let e_sx = net.ntk(&xte, Some(&xtr), OutputMode::Trace).unwrap();
            let e_ss = net.ntk(&xte, Some(&xte), OutputMode::Diagonal).unwrap();
            let got = laplace_var(&e_xx, &e_sx, &e_ss, s2, p2).unwrap();
            acc += rel_err(&got, &want) / 3.0;
        }
        eprintln!("width {width}: Laplace variance vs infinite-width form, rel. error {acc:.3e}");
        errs.push(acc);
    }
    assert!(errs[1] < 0.6 * errs[0] && errs[2] < 0.6 * errs[1], "{errs:?}");
    assert!(errs[2] < 0.05, "{errs:?}");
}
