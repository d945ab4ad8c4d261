//! End to end: the `ntk` binary on real files (assert_cmd), outputs checked against the core.

use assert_cmd::Command;
use ntk_cli::io::{read_matrix, write_matrix, Matrix, Precision};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::{Activation, Parameterization, Spec};

fn ntk() -> Command {
    Command::cargo_bin("ntk").unwrap()
}

fn inputs(dir: &std::path::Path, n: usize, d: usize, ext: &str) -> std::path::PathBuf {
    let rows = ntk_tests::random_inputs(n, d, 5);
    let p = dir.join(format!("x.{ext}"));
    write_matrix(&p, &Matrix::from_rows(&rows), Precision::F64).unwrap();
    p
}

#[test]
fn kernel_empirical_matches_core_and_writes_run_json() {
    let dir = tempfile::tempdir().unwrap();
    let x = inputs(dir.path(), 9, 4, "csv");
    let out = dir.path().join("k.npy");
    ntk()
        .args(["kernel", "--method", "empirical", "--x1"])
        .arg(&x)
        .arg("--out")
        .arg(&out)
        .args(["--activation", "erf", "--depth", "2", "--width", "24", "--out-dim", "2"])
        .args(["--sigma-w2", "1.5", "--sigma-b2", "0.1", "--parameterization", "standard"])
        .args(["--output-mode", "full", "--seed", "3", "--threads", "2"])
        .assert()
        .success();
    let k = read_matrix(&out).unwrap();
    assert_eq!(k.shape(), (18, 18));
    let widths = [4, 24, 24, 2];
    let spec =
        Spec::new(&widths, Activation::Erf, 1.5, 0.1, true, Parameterization::Standard).unwrap();
    let mut p = vec![0.0; spec.param_count()];
    spec.init(&mut p, 3).unwrap();
    let xs = read_matrix(&x).unwrap();
    let mut want = vec![0.0; 18 * 18];
    let mut s = vec![0.0; empirical_ntk_scratch(&widths, 9, None)];
    empirical_ntk(&spec, &p, &mut want, xs.as_slice(), None, OutputMode::Full, &mut s).unwrap();
    assert_eq!(k.as_slice(), &want[..]);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run.json")).unwrap())
            .unwrap();
    assert_eq!(run["command"], "kernel");
    assert!(run["wall_time_s"].as_f64().unwrap() >= 0.0);
}

#[test]
fn forward_writes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let x = inputs(dir.path(), 5, 3, "npy");
    let out = dir.path().join("f.csv");
    ntk()
        .args(["forward", "--x"])
        .arg(&x)
        .arg("--out")
        .arg(&out)
        .args(["--depth", "3", "--width", "16", "--out-dim", "4", "--precision", "f32"])
        .assert()
        .success();
    assert_eq!(read_matrix(&out).unwrap().shape(), (5, 4));
}

#[test]
fn usage_and_runtime_errors_have_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let x = inputs(dir.path(), 3, 2, "npy");
    let out = dir.path().join("k.npy");
    let a = ntk()
        .args(["kernel", "--x1"])
        .arg(&x)
        .arg("--out")
        .arg(&out)
        .args(["--sigma-w2", "-1"])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("--sigma-w2") && err.contains("-1"), "{err}");
    let a = ntk().args(["kernel", "--x1", "missing.npy", "--out"]).arg(&out).assert().code(1);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.starts_with("error: ") && err.contains("missing.npy"), "{err}");
    ntk()
        .args(["kernel", "--x1"])
        .arg(&x)
        .arg("--out")
        .arg(&out)
        .args(["--activation", "softmax"])
        .assert()
        .code(2);
    assert!(!out.exists());
}

/// `--weights` in PyTorch (out-in, `0.weight`, `0.bias`, `2.weight`, ...) and JAX (in-out,
/// `W0`, `b0`, ...) layouts give the kernel of the same parameters through the core; a file
/// whose shapes disagree with the flags is a one-line error naming the tensor.
#[test]
fn kernel_from_safetensors_weights_in_both_layouts() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let x = inputs(dir.path(), 7, 3, "npy");
    let widths = [3usize, 5, 4, 1];
    let spec = Spec::new(&widths, Activation::Tanh, 1.3, 0.2, true, Parameterization::Ntk).unwrap();
    let mut p = vec![0.0f64; spec.param_count()];
    spec.init(&mut p, 11).unwrap();
    let bytes = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (layout, wname, bname) in [("out-in", "{}.weight", "{}.bias"), ("in-out", "W{}", "b{}")] {
        let mut tensors = Vec::new();
        for i in 0..spec.layers() {
            let (w, b) = spec.layer(&p, i);
            let (n_in, n_out) = (widths[i], widths[i + 1]);
            let (shape, data) = if layout == "out-in" {
                (vec![n_out, n_in], w.to_vec())
            } else {
                let t: Vec<f64> =
                    (0..n_in * n_out).map(|k| w[(k % n_out) * n_in + k / n_out]).collect();
                (vec![n_in, n_out], t)
            };
            // PyTorch Sequential numbering skips the activation modules: 0, 2, 4.
            let idx = if layout == "out-in" { 2 * i } else { i };
            tensors.push((wname.replace("{}", &idx.to_string()), shape, bytes(&data)));
            tensors.push((bname.replace("{}", &idx.to_string()), vec![n_out], bytes(b)));
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F64, s.clone(), b).unwrap()))
            .collect();
        let wpath = dir.path().join(format!("w-{layout}.safetensors"));
        std::fs::write(&wpath, safetensors::serialize(views, None).unwrap()).unwrap();
        let out = dir.path().join(format!("k-{layout}.npy"));
        let run = |widths_flag: &str| {
            let mut c = ntk();
            c.args(["kernel", "--x1"])
                .arg(&x)
                .arg("--out")
                .arg(&out)
                .args(["--activation", "tanh", "--widths", widths_flag, "--sigma-w2", "1.3"])
                .args(["--sigma-b2", "0.2", "--weights"])
                .arg(&wpath)
                .args(["--weights-layout", layout]);
            c
        };
        run("5,4").assert().success();
        let xs = read_matrix(&x).unwrap();
        let mut want = vec![0.0; 49];
        let mut s = vec![0.0; empirical_ntk_scratch(&widths, 7, None)];
        empirical_ntk(&spec, &p, &mut want, xs.as_slice(), None, OutputMode::Trace, &mut s)
            .unwrap();
        assert_eq!(read_matrix(&out).unwrap().as_slice(), &want[..], "{layout}");
        let a = run("6,4").assert().code(1);
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(err.lines().count() == 1 && err.contains("shape"), "{err}");
    }
}

#[test]
fn bench_writes_one_row_per_workload_and_precision() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    ntk()
        .args(["bench", "--workload", "W3,W1", "--precision", "f32", "--threads", "1"])
        .args(["--min-time", "0", "--json"])
        .arg(&json)
        .assert()
        .success();
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, name) in rows.iter().zip(["W3", "W1"]) {
        assert_eq!(row["workload"], name);
        assert_eq!(row["precision"], "f32");
        assert_eq!(row["threads"], 1);
        let f = |k: &str| row[k].as_f64().unwrap();
        assert!(f("median_s") > 0.0 && f("first_s") > 0.0 && f("gemm_gflops") > 0.0);
        assert!(row["reps"].as_u64().unwrap() >= 5);
        // The ratio is the FLOP count over the median time at the GEMM rate.
        let roof = f("flops") / (f("gemm_gflops") * 1e9);
        assert!((f("x_roofline") - f("median_s") / roof).abs() < 1e-9 * f("x_roofline"));
        assert!((f("gflops") - f("flops") / f("median_s") / 1e9).abs() < 1e-6 * f("gflops"));
        assert_eq!(row["phases"].as_array().unwrap().len(), 4);
        // The placement probes run only with several threads.
        for k in ["core_round_trip_ns", "handoff_rewrite_gbs", "own_rewrite_gbs"] {
            assert_eq!(f(k), 0.0, "{k}");
        }
    }
}
