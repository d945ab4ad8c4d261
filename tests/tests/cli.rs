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
