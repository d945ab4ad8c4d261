//! End to end: the automatic block floating point representation of `ntk dispersion` and
//! `ntk kernel` at extreme initializations (depth 1000, sigma_w2 = 1e-4 and 1e4), against
//! exact scaling laws, an independent log-domain computation, the `--log` output and the
//! plain computation.

use std::collections::HashMap;
use std::path::Path;

use assert_cmd::Command;
use ntk_cli::args::Precision;
use ntk_cli::cmd::dispersion::{InputProtocol, Plan, SweepConfig};
use ntk_cli::io::{read_matrix, write_matrix, Matrix};
use ntk_core::dispersion::{sphere_inputs, Family, Terms};
use ntk_core::{Activation, Parameterization};

fn ntk() -> Command {
    Command::cargo_bin("ntk").unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `dispersion.csv` as one map column -> field per row.
fn table(dir: &Path) -> Vec<HashMap<String, String>> {
    let csv = read(&dir.join("dispersion.csv"));
    let mut lines = csv.lines();
    let head: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines.map(|l| head.iter().cloned().zip(l.split(',').map(String::from)).collect()).collect()
}

fn num(row: &HashMap<String, String>, col: &str) -> f64 {
    row[col].parse().unwrap_or_else(|_| panic!("{col} = {:?} in {row:?}", row[col]))
}

/// The row of (sigma_w2, depth) and r = 1.
fn cell(t: &[HashMap<String, String>], sw2: f64, depth: usize) -> &HashMap<String, String> {
    t.iter()
        .find(|r| {
            num(r, "sigma_w2") == sw2 && num(r, "depth") == depth as f64 && num(r, "r") == 1.0
        })
        .unwrap_or_else(|| panic!("no row sigma_w2 {sw2} depth {depth}"))
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

const BASE: &[&str] = &[
    "dispersion",
    "--activation",
    "relu",
    "--input-dim",
    "8",
    "--width",
    "32",
    "--samples",
    "20",
    "--bootstrap",
    "50",
    "--seed",
    "11",
    "--quiet",
];

fn dispersion(dir: &Path, extra: &[&str]) -> (Vec<HashMap<String, String>>, serde_json::Value) {
    ntk().args(BASE).args(extra).arg("--out-dir").arg(dir).assert().success();
    let info = serde_json::from_str(&read(&dir.join("run.json"))).unwrap();
    (table(dir), info)
}

/// ReLU without a bias term (NTK parameterization with sigma_b2 = 0, or `--no-bias`) is
/// positively homogeneous: Theta(s) = (s / 2)^p Theta(2) sample by sample, p = L + 1 (NTK) or
/// L (standard). So at depth 1000 the scaled cells at s = 1e-4 and 1e4 (Theta ~ 10^-+3700)
/// must have the dispersion, its interval and the log-variance of the plain cell at s = 2
/// (1e-12 relative), and the log-mean and log10 mean shifted by p ln(s / 2).
#[test]
fn homogeneous_relu_statistics_are_scale_free_at_depth_1000() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra, p) in [
        ("ntk", &["--parameterization", "ntk", "--sigma-b2", "0"][..], 1001.0),
        ("standard", &["--parameterization", "standard", "--no-bias"][..], 1000.0),
    ] {
        let out = dir.path().join(name);
        let mut args =
            vec!["--depths", "200,1000", "--sigma-w2", "1e-4,2,1e4", "--correlations", "1,0.3"];
        args.extend_from_slice(extra);
        let (t, info) = dispersion(&out, &args);
        // At s = 2 the plain values are used where accurate: for the NTK parameterization
        // (direct path); the standard one's unit-scale terms (2^-1000) underflow, so the
        // check against the scaled values moves that cell to block floating point too.
        let reference = cell(&t, 2.0, 1000);
        let want = if name == "ntk" { "f64" } else { "scaled" };
        assert_eq!(reference["representation"], want, "{name}");
        for s in [1e-4, 1e4] {
            let r = cell(&t, s, 1000);
            assert_eq!(r["representation"], "scaled", "{name} s={s}");
            // Theta leaves f64: mean and variance only as log10.
            assert_eq!(r["mean"], "", "{name} s={s}");
            assert_eq!(r["var"], "", "{name} s={s}");
            for col in ["dispersion", "dispersion_lo", "dispersion_hi", "log_var"] {
                let (a, b) = (num(r, col), num(reference, col));
                assert!(a.is_finite() && close(a, b, 1e-12), "{name} s={s} {col}: {a} vs {b}");
            }
            let shift = p * (s / 2.0).ln();
            let (a, b) = (num(r, "log_mean"), num(reference, "log_mean") + shift);
            assert!(close(a, b, 1e-12), "{name} s={s} log_mean: {a} vs {b}");
            let (a, b) = (num(r, "log10_mean"), num(reference, "log10_mean") + shift / 10f64.ln());
            assert!(close(a, b, 1e-12), "{name} s={s} log10_mean: {a} vs {b}");
            assert!(a.abs() > 300.0, "{name} s={s}: log10 mean {a} fits f64");
        }
        let groups = &info["results"]["groups"];
        assert_eq!(groups[0]["scaled_representation"], true, "{name}: {groups}");
        assert_eq!(info["results"]["scaled_representation"], true, "{name}");
    }
}

/// `ln Theta(x, x)` of sample `seed`'s depth-`depth` standard ReLU network with biases and
/// sigma_b2 = 0, by an independent route: the engine's layer terms at the edge of chaos
/// (sigma_w2 = 2, where nothing over- or underflows at depth 1000) and the exact scaling
/// Theta(s) = t^L sum_l G_l A_{l-1} + sum_{l=1}^{L+1} t^(L+1-l) G_l, t = s / 2, summed in the
/// log domain.
fn ln_theta_independent(fam: &Family, seed: u64, depth: usize, s: f64) -> f64 {
    let d = fam.input_dim;
    let mut x = vec![0.0; d];
    sphere_inputs(&mut x, seed, d, &[]).unwrap();
    let depths = [depth];
    let mut draw = vec![0.0; fam.draw_len(depth, 1)];
    fam.draw(&mut draw, seed, &depths).unwrap();
    let (mut a, mut g) = (vec![0.0; depth + 1], vec![0.0; depth + 1]);
    let mut scratch = vec![0.0; fam.terms_scratch(depth, 1, 1)];
    fam.terms(&mut a, &mut g, &draw, &depths, &x, 2f64.sqrt(), 0.0, &mut scratch).unwrap();
    let t = Terms { a: &a, g: &g, n: 1, max_depth: depth };
    let lt = (s / 2.0).ln();
    let p: f64 = (1..=depth + 1).map(|l| t.g(0, l, 0) * t.a(l - 1, 0)).sum();
    let mut terms = vec![depth as f64 * lt + p.ln()];
    for l in 1..=depth + 1 {
        if t.g(0, l, 0) > 0.0 {
            terms.push((depth + 1 - l) as f64 * lt + t.g(0, l, 0).ln());
        }
    }
    let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + terms.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn config(sw2: Vec<f64>, sigma_b2: f64, depth: usize) -> SweepConfig {
    SweepConfig {
        kind: "dispersion".into(),
        activations: vec!["relu".into()],
        input_dim: 8,
        widths: vec![32],
        depths: vec![depth],
        sigma_w2: sw2,
        sigma_b2: vec![sigma_b2],
        parameterization: "standard".into(),
        bias: true,
        samples: 20,
        inputs: InputProtocol::Sphere,
        x: None,
        correlations: vec![1.0],
        bootstrap: 50,
        level: 0.95,
        depth_chunk: 4,
        seed: 11,
    }
}

/// Standard parameterization with trainable biases, sigma_b2 = 0, depth 1000: at s = 1e-4
/// (Theta ~ 1, plain) and s = 1e4 (Theta ~ 10^3600, scaled) the log-moments equal those of an
/// independent log-domain computation on the same samples (1e-12 relative), the dispersion
/// its value from the same logarithms (1e-9), and log10_exact_mean is the exact mean.
#[test]
fn standard_relu_with_bias_gradients_at_depth_1000_matches_independent_logs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("std");
    let (t, info) = dispersion(
        &out,
        &["--correlations", "1.0", "--depths", "1000", "--sigma-w2", "1e-4,1e4", "--sigma-b2", "0"],
    );
    let plan = Plan::new(&config(vec![1e-4, 1e4], 0.0, 1000)).unwrap();
    let task = &plan.tasks[0];
    let fam = Family {
        input_dim: 8,
        width: 32,
        activation: Activation::Relu,
        bias: true,
        parameterization: Parameterization::Standard,
    };
    for (s, repr) in [(1e-4, "f64"), (1e4, "scaled")] {
        let r = cell(&t, s, 1000);
        assert_eq!(r["representation"], repr, "s={s}");
        let ln: Vec<f64> =
            (0..20).map(|i| ln_theta_independent(&fam, task.sample_seed(i), 1000, s)).collect();
        let n = ln.len() as f64;
        let mean = ln.iter().sum::<f64>() / n;
        let var = ln.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let top = ln.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let m1 = ln.iter().map(|v| (v - top).exp()).sum::<f64>() / n;
        let m2 = ln.iter().map(|v| (2.0 * (v - top)).exp()).sum::<f64>() / n;
        for (col, want, tol) in [
            ("log_mean", mean, 1e-12),
            ("log_var", var, 1e-12),
            ("dispersion", m2 / (m1 * m1), 1e-9),
        ] {
            let got = num(r, col);
            assert!(close(got, want, tol), "s={s} {col}: {got} vs {want}");
        }
        let exact = ntk_core::dispersion::relu_ln_mean_theta(s, 1000, 32, 8, 1.0, true);
        assert!(close(num(r, "log10_exact_mean"), exact / 10f64.ln(), 1e-14), "s={s}");
        assert!(num(r, "dispersion_lo") <= num(r, "dispersion_hi"), "s={s}");
    }
    assert_eq!(info["results"]["groups"][0]["scaled_representation"], true);
}

/// Biases with sigma_b2 > 0 (not homogeneous), depth 1000: finite statistics at s = 1e-4
/// (plain) and s = 1e4 (scaled), the latter equal to the log-moments of the core's block
/// floating point NTK on the same networks; and the chunking of depths does not change a
/// byte even though the deepest depth of a chunk overflows the plain computation.
#[test]
fn biased_relu_at_depth_1000_and_chunking() {
    use ntk_core::ntk::OutputMode;
    use ntk_core::scaled::{empirical_ntk_scaled, empirical_ntk_scaled_scratch, Scaled};
    let dir = tempfile::tempdir().unwrap();
    let (one, four) = (dir.path().join("one"), dir.path().join("four"));
    let flags = [
        "--depths",
        "3,30,1000",
        "--sigma-w2",
        "1e-4,1e4",
        "--sigma-b2",
        "0.5",
        "--correlations",
        "1,0.3",
    ];
    let (t, info) = dispersion(&four, &flags);
    let mut f1 = flags.to_vec();
    f1.extend(["--depth-chunk", "1"]);
    dispersion(&one, &f1);
    assert_eq!(read(&one.join("dispersion.csv")), read(&four.join("dispersion.csv")));
    // Shallow and small-sigma cells are plain; depth 1000 at 1e4 is scaled.
    assert_eq!(cell(&t, 1e4, 3)["representation"], "f64");
    assert_eq!(cell(&t, 1e-4, 1000)["representation"], "f64");
    let r = cell(&t, 1e4, 1000);
    assert_eq!(r["representation"], "scaled");
    for row in &t {
        for col in ["dispersion", "dispersion_lo", "dispersion_hi", "log10_mean", "log10_var"] {
            assert!(num(row, col).is_finite(), "{col} in {row:?}");
        }
    }
    let plan = Plan::new(&config(vec![1e-4, 1e4], 0.5, 1000)).unwrap();
    let task = plan.tasks.iter().find(|t| t.key.contains("-d1000-")).unwrap_or(&plan.tasks[0]);
    let fam = Family {
        input_dim: 8,
        width: 32,
        activation: Activation::Relu,
        bias: true,
        parameterization: Parameterization::Standard,
    };
    let depth = 1000;
    let mut widths = vec![32; depth + 2];
    (widths[0], widths[depth + 1]) = (8, 1);
    let spec =
        ntk_core::Spec::new(&widths, Activation::Relu, 1e4, 0.5, true, Parameterization::Standard)
            .unwrap();
    let ln: Vec<f64> = (0..20)
        .map(|i| {
            let seed = task.sample_seed(i);
            let mut x = vec![0.0; 8];
            sphere_inputs(&mut x, seed, 8, &[]).unwrap();
            let mut draw = vec![0.0; fam.draw_len(depth, 1)];
            fam.draw(&mut draw, seed, &[depth]).unwrap();
            let mut p = vec![0.0; spec.param_count()];
            fam.params(&mut p, &spec, &draw, &[depth], 0).unwrap();
            let mut out = [Scaled::ZERO];
            let mut s = vec![0.0; empirical_ntk_scaled_scratch(&widths, 1, None)];
            empirical_ntk_scaled(&spec, &p, &mut out, &x, None, OutputMode::Trace, &mut s).unwrap();
            out[0].ln()
        })
        .collect();
    let n = ln.len() as f64;
    let mean = ln.iter().sum::<f64>() / n;
    let var = ln.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    // The sweep used depths 3, 30, 1000 in one chunk (draw of three readouts): the same
    // networks, since every value is a pure function of (seed, stream, index).
    assert!(close(num(r, "log_mean"), mean, 1e-12), "{} vs {mean}", num(r, "log_mean"));
    assert!(close(num(r, "log_var"), var, 1e-12), "{} vs {var}", num(r, "log_var"));
    assert_eq!(info["results"]["groups"][0]["scaled_representation"], true);
}

fn inputs(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("x.npy");
    write_matrix(&p, &Matrix::from_rows(&ntk_tests::random_inputs(3, 4, 9)), Precision::F64)
        .unwrap();
    p
}

fn kernel(
    dir: &Path,
    x: &Path,
    out: &str,
    flags: &[&str],
) -> (Vec<f64>, serde_json::Value, String) {
    let o = ntk()
        .args(["kernel", "--quiet", "--x1"])
        .arg(x)
        .arg("--out")
        .arg(dir.join(out))
        .args(flags)
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&o.get_output().stderr).into_owned();
    let m = read_matrix(&dir.join(out)).unwrap();
    let info = serde_json::from_str(&read(&dir.join("run.json"))).unwrap();
    (m.as_slice().to_vec(), info, stderr)
}

/// `ntk kernel` switches to block floating point by itself: where the plain Theta overflows
/// (empirical, sigma_w2 = 1e4, depth 200; infinite width, depth 1000) it writes the same
/// ln|Theta| as `--log`, bit for bit, warns on stderr naming the file and says so in
/// run.json; in range it writes the plain values unchanged (equal to the core's
/// `empirical_ntk`), silently.
#[test]
fn kernel_switches_to_ln_only_where_theta_leaves_f64() {
    use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = inputs(d);
    let big = ["--sigma-w2", "10000", "--depth", "200", "--width", "16", "--seed", "4"];
    for method in ["empirical", "infinite"] {
        let mut flags = big.to_vec();
        flags.extend(["--method", method]);
        if method == "infinite" {
            flags[3] = "1000";
        }
        let (auto, info, err) = kernel(d, &x, "auto.npy", &flags);
        assert_eq!(info["results"]["scaled_representation"], true, "{method}");
        assert_eq!(info["results"]["values"], "ln|kernel| (block floating point)", "{method}");
        assert!(err.contains("warning") && err.contains("auto.npy") && err.lines().count() == 1);
        flags.push("--log");
        let (log, _, err) = kernel(d, &x, "log.npy", &flags);
        assert!(err.is_empty(), "{err}");
        assert_eq!(
            auto.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            log.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{method}"
        );
        assert!(auto.iter().all(|v| *v > 700.0 * 10f64.ln()), "{method}: {auto:?}");
    }
    // Infinite width, full mode, beyond f64: ln of the zero off-diagonal blocks is refused.
    ntk()
        .args(["kernel", "--quiet", "--method", "infinite", "--output-mode", "full", "--x1"])
        .arg(&x)
        .arg("--out")
        .arg(d.join("full.npy"))
        .args(["--sigma-w2", "10000", "--depth", "1000", "--width", "16", "--out-dim", "2"])
        .assert()
        .code(1);
    // In range: the plain values, unchanged.
    let small = ["--sigma-w2", "2", "--depth", "5", "--width", "16", "--seed", "4"];
    let (got, info, err) = kernel(d, &x, "plain.npy", &small);
    assert_eq!(info["results"]["scaled_representation"], false);
    assert_eq!(info["results"]["values"], "kernel");
    assert!(err.is_empty(), "{err}");
    let mut widths = vec![16usize; 7];
    (widths[0], widths[6]) = (4, 1);
    let spec =
        ntk_core::Spec::new(&widths, Activation::Relu, 2.0, 0.0, true, Parameterization::Ntk)
            .unwrap();
    let mut p = vec![0.0; spec.param_count()];
    spec.init(&mut p, 4).unwrap();
    let xs = read_matrix(&x).unwrap();
    let mut want = vec![0.0; 9];
    let mut s = vec![0.0; empirical_ntk_scratch(&widths, 3, None)];
    empirical_ntk(&spec, &p, &mut want, xs.as_slice(), None, OutputMode::Trace, &mut s).unwrap();
    assert_eq!(got, want);
}

/// Underflow: NTK parameterization without biases at sigma_w2 = 1e-4 and depth 100 (Theta ~
/// 10^-460) is written as ln|Theta|, equal to `--log`; at depth 30 (Theta ~ 10^-135, plain
/// in range) as values.
#[test]
fn kernel_underflow_switches_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = inputs(d);
    let f = |depth: &'static str| {
        [
            "--sigma-w2",
            "1e-4",
            "--depth",
            depth,
            "--width",
            "16",
            "--parameterization",
            "ntk",
            "--no-bias",
        ]
    };
    let (auto, info, _) = kernel(d, &x, "auto.npy", &f("100"));
    assert_eq!(info["results"]["values"], "ln|kernel| (block floating point)");
    let mut lf = f("100").to_vec();
    lf.push("--log");
    let (log, _, _) = kernel(d, &x, "log.npy", &lf);
    assert_eq!(auto, log);
    assert!(auto.iter().all(|v| *v < -300.0 * 10f64.ln()), "{auto:?}");
    let (v, info, _) = kernel(d, &x, "v.npy", &f("30"));
    assert_eq!(info["results"]["values"], "kernel");
    assert!(v.iter().all(|t| t.is_normal() && *t > 0.0), "{v:?}");
}

/// `ntk forward` switches too: at sigma_w2 = 1e4 and depth 200 (f ~ 10^365) it writes
/// ln|f| from the core's `forward_scaled` (exactly), counts the negative outputs in run.json,
/// and warns; at depth 5 it writes f unchanged.
#[test]
fn forward_switches_to_ln_where_outputs_leave_f64() {
    use ntk_core::forward::{cache_len, output};
    use ntk_core::scaled::{forward_scaled, forward_scaled_scratch, Scaled};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = inputs(d);
    let run = |depth: &str| {
        let o = ntk()
            .args(["forward", "--quiet", "--x"])
            .arg(&x)
            .arg("--out")
            .arg(d.join("f.npy"))
            .args(["--sigma-w2", "1e4", "--width", "16", "--seed", "3", "--depth", depth])
            .assert()
            .success();
        let err = String::from_utf8_lossy(&o.get_output().stderr).into_owned();
        let info: serde_json::Value = serde_json::from_str(&read(&d.join("run.json"))).unwrap();
        (read_matrix(&d.join("f.npy")).unwrap().as_slice().to_vec(), info, err)
    };
    let (f, info, err) = run("200");
    assert_eq!(info["results"]["values"], "ln|f| (block floating point)");
    assert!(err.contains("f.npy"), "{err}");
    let mut widths = vec![16usize; 202];
    (widths[0], widths[201]) = (4, 1);
    let spec =
        ntk_core::Spec::new(&widths, Activation::Relu, 1e4, 0.0, true, Parameterization::Ntk)
            .unwrap();
    let mut p = vec![0.0; spec.param_count()];
    spec.init(&mut p, 3).unwrap();
    let xs = read_matrix(&x).unwrap();
    let mut cache = vec![0.0; cache_len(&widths, 3)];
    let mut exps = vec![0.0; 3 * spec.layers()];
    let mut s = vec![0.0; forward_scaled_scratch(&widths, 3)];
    forward_scaled(&spec, &p, xs.as_slice(), 3, &mut cache, &mut exps, &mut s).unwrap();
    let want: Vec<Scaled> = output(&spec, &cache, 3)
        .iter()
        .enumerate()
        .map(|(i, &m)| Scaled::from_parts(m, exps[200 * 3 + i] as i64))
        .collect();
    assert_eq!(f, want.iter().map(|v| v.ln()).collect::<Vec<_>>());
    assert!(f.iter().all(|v| *v > 300.0 * 10f64.ln()), "{f:?}");
    let neg = want.iter().filter(|v| v.m < 0.0).count();
    assert_eq!(info["results"]["negative_entries"], neg);
    let (f, info, err) = run("5");
    assert_eq!(info["results"]["values"], "f");
    assert!(err.is_empty() && f.iter().all(|v| v.is_normal()), "{err} {f:?}");
}

/// In range the statistics are those of the plain f64 path bit for bit: the CSV fields
/// mean, var, sem, dispersion and its interval, log_mean, log_var equal `stats::moments` and
/// `stats::bootstrap_dispersion` on the engine's plain entries (homogeneous ReLU path,
/// printed with the same formatting), although the command computes them over a common
/// power-of-two exponent.
#[test]
fn in_range_statistics_are_the_plain_ones_bit_for_bit() {
    use ntk_core::{rng, stats};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plain");
    let (samples, b) = (30, 40);
    ntk()
        .args(["dispersion", "--activation", "relu", "--input-dim", "6", "--width", "8"])
        .args(["--depths", "3,5", "--sigma-w2", "0.5,2,3", "--sigma-b2", "0", "--correlations"])
        .args(["1.0", "--samples", "30", "--bootstrap", "40", "--seed", "5", "--quiet"])
        .arg("--out-dir")
        .arg(&out)
        .assert()
        .success();
    let t = table(&out);
    let mut cfg = config(vec![0.5, 2.0, 3.0], 0.0, 3);
    (cfg.input_dim, cfg.widths, cfg.depths, cfg.samples, cfg.bootstrap, cfg.seed) =
        (6, vec![8], vec![3, 5], samples, b, 5);
    let plan = Plan::new(&cfg).unwrap();
    let task = &plan.tasks[0];
    let fam = Family {
        input_dim: 6,
        width: 8,
        activation: Activation::Relu,
        bias: true,
        parameterization: Parameterization::Standard,
    };
    let depths = [3, 5];
    let mut counts = vec![0.0; b * samples];
    stats::bootstrap_counts(&mut counts, rng::derive_seed(5, u64::MAX, 0), samples, b);
    for (si, sw2) in [0.5, 2.0, 3.0].into_iter().enumerate() {
        for (k, depth) in depths.into_iter().enumerate() {
            let v: Vec<f64> = (0..samples)
                .map(|i| {
                    let seed = task.sample_seed(i);
                    let mut x = vec![0.0; 6];
                    sphere_inputs(&mut x, seed, 6, &[]).unwrap();
                    let mut draw = vec![0.0; fam.draw_len(5, 2)];
                    fam.draw(&mut draw, seed, &depths).unwrap();
                    let (mut a, mut g) = (vec![0.0; 6], vec![0.0; 12]);
                    let mut s = vec![0.0; fam.terms_scratch(5, 2, 1)];
                    fam.terms(&mut a, &mut g, &draw, &depths, &x, 1.0, 0.0, &mut s).unwrap();
                    Terms { a: &a, g: &g, n: 1, max_depth: 5 }.theta_scaled(&fam, sw2, k, depth, 0)
                })
                .collect();
            let m = stats::moments(&v);
            let mut work = vec![0.0; b];
            let (lo, hi) = stats::bootstrap_dispersion(&mut work, &v, &counts, b, 0.95);
            let r = cell(&t, sw2, depth);
            assert_eq!(r["representation"], "f64");
            for (col, want) in [
                ("mean", m.mean),
                ("var", m.var),
                ("sem", m.sem),
                ("dispersion", m.dispersion),
                ("dispersion_lo", lo),
                ("dispersion_hi", hi),
                ("log_mean", m.log_mean),
                ("log_var", m.log_var),
            ] {
                assert_eq!(r[col], want.to_string(), "sigma_w2 {sw2} depth {depth} {col} ({si})");
            }
        }
    }
}
