//! Bad input end to end: every failure of the `ntk` binary is one line on stderr starting
//! with `error:` and naming the flag, file or value, exits with 2 (usage) or 1 (runtime), and
//! leaves no output file (and no temporary file) behind; an existing output is untouched.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ntk_cli::io::{write_matrix, Matrix, Precision};

fn ntk() -> Command {
    Command::cargo_bin("ntk").unwrap()
}

/// A small valid input set (n x d) written to `dir/name`.
fn inputs(dir: &Path, name: &str, n: usize, d: usize) -> PathBuf {
    let p = dir.join(name);
    write_matrix(&p, &Matrix::from_rows(&ntk_tests::random_inputs(n, d, 9)), Precision::F64)
        .unwrap();
    p
}

/// `ntk kernel --x1 X --out OUT` plus `extra` (and a small network unless `extra` sets one).
fn kernel(x1: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = ntk();
    c.args(["kernel", "--x1"]).arg(x1).arg("--out").arg(out);
    if !extra.iter().any(|a| matches!(*a, "--depth" | "--width" | "--widths")) {
        c.args(["--depth", "2", "--width", "8"]);
    }
    c.arg("--quiet").args(extra);
    c
}

/// Runs `cmd`, expects exit `code` and a one-line `error:` message containing every `needle`;
/// checks that `dir` holds exactly the files in `keep` afterwards (nothing new, no temp files).
fn fails(mut cmd: Command, code: i32, needles: &[&str], dir: &Path, keep: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    let msg = err.trim_end();
    assert!(msg.starts_with("error: "), "{err:?}");
    assert!(!msg.contains('\n'), "error is not one line: {err:?}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} does not name {n:?}");
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "files left behind after: {msg}");
    msg.to_string()
}

#[test]
fn missing_and_unreadable_input_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("k.npy");
    let missing = d.join("nope.npy");
    fails(kernel(&missing, &out, &[]), 1, &["nope.npy"], d, &[]);
    // A directory where a file is expected.
    std::fs::create_dir(d.join("sub.csv")).unwrap();
    fails(kernel(&d.join("sub.csv"), &out, &[]), 1, &["sub.csv"], d, &["sub.csv"]);
    // Unknown extension.
    std::fs::write(d.join("x.txt2"), "1,2\n").unwrap();
    fails(kernel(&d.join("x.txt2"), &out, &[]), 1, &["x.txt2"], d, &["sub.csv", "x.txt2"]);
}

#[test]
fn malformed_files_and_non_finite_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("k.npy");
    std::fs::write(d.join("bad.npy"), b"\x93NUMPY\x01\x00garbage").unwrap();
    fails(kernel(&d.join("bad.npy"), &out, &[]), 1, &["bad.npy"], d, &["bad.npy"]);
    std::fs::write(d.join("nan.csv"), "1,2,3\n4,NaN,6\n").unwrap();
    fails(kernel(&d.join("nan.csv"), &out, &[]), 1, &["nan.csv"], d, &["bad.npy", "nan.csv"]);
    let mut m = Matrix::from_rows(&[vec![1.0, 2.0], vec![f64::INFINITY, 0.0]]);
    m.row_mut(0)[0] = 1.5;
    write_matrix(&d.join("inf.npy"), &m, Precision::F64).unwrap();
    let keep = ["bad.npy", "nan.csv", "inf.npy"];
    fails(kernel(&d.join("inf.npy"), &out, &[]), 1, &["inf.npy"], d, &keep);
    std::fs::write(d.join("empty.csv"), "").unwrap();
    let keep = ["bad.npy", "nan.csv", "inf.npy", "empty.csv"];
    fails(kernel(&d.join("empty.csv"), &out, &[]), 1, &["empty.csv"], d, &keep);
}

#[test]
fn wrong_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x1 = inputs(d, "a.npy", 3, 4);
    let x2 = inputs(d, "b.npy", 2, 5);
    let out = d.join("k.npy");
    let mut c = kernel(&x1, &out, &[]);
    c.arg("--x2").arg(&x2);
    fails(c, 2, &["--x2", "b.npy", "5 columns"], d, &["a.npy", "b.npy"]);
    // Diagonal mode needs as many rows in x2 as in x1.
    let x3 = inputs(d, "c.npy", 2, 4);
    let mut c = kernel(&x1, &out, &["--output-mode", "diagonal"]);
    c.arg("--x2").arg(&x3);
    fails(c, 2, &["--output-mode"], d, &["a.npy", "b.npy", "c.npy"]);
}

/// A `.safetensors` file of f64 tensors (name, shape, values), written by hand.
fn safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f64>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, vals) in tensors {
        let start = data.len();
        for v in vals {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F64", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn mismatched_weight_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = inputs(d, "x.npy", 3, 4);
    let out = d.join("k.npy");
    // The network 4 -> 8 -> 8 -> 1 with a wrong first weight shape (8 x 5).
    let w = d.join("w.safetensors");
    safetensors(
        &w,
        &[
            ("0.weight", vec![8, 5], vec![0.1; 40]),
            ("0.bias", vec![8], vec![0.0; 8]),
            ("1.weight", vec![8, 8], vec![0.1; 64]),
            ("1.bias", vec![8], vec![0.0; 8]),
            ("2.weight", vec![1, 8], vec![0.1; 8]),
            ("2.bias", vec![1], vec![0.0]),
        ],
    );
    let mut c = kernel(&x, &out, &[]);
    c.arg("--weights").arg(&w);
    fails(c, 1, &["w.safetensors", "0.weight"], d, &["x.npy", "w.safetensors"]);
    // Too few layers.
    let w2 = d.join("short.safetensors");
    safetensors(&w2, &[("0.weight", vec![8, 4], vec![0.1; 32]), ("0.bias", vec![8], vec![0.0; 8])]);
    let mut c = kernel(&x, &out, &[]);
    c.arg("--weights").arg(&w2);
    fails(c, 1, &["short.safetensors"], d, &["x.npy", "w.safetensors", "short.safetensors"]);
    // Non-finite weights: the forward pass reports the layer instead of writing NaNs.
    let w3 = d.join("nan.safetensors");
    let mut w0 = vec![0.1; 32];
    w0[3] = f64::NAN;
    safetensors(
        &w3,
        &[
            ("0.weight", vec![8, 4], w0),
            ("0.bias", vec![8], vec![0.0; 8]),
            ("1.weight", vec![8, 8], vec![0.1; 64]),
            ("1.bias", vec![8], vec![0.0; 8]),
            ("2.weight", vec![1, 8], vec![0.1; 8]),
            ("2.bias", vec![1], vec![0.0]),
        ],
    );
    let mut c = kernel(&x, &out, &[]);
    c.arg("--weights").arg(&w3);
    let keep = ["x.npy", "w.safetensors", "short.safetensors", "nan.safetensors"];
    fails(c, 1, &["nan.safetensors"], d, &keep);
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = inputs(d, "x.npy", 3, 4);
    let out = d.join("k.npy");
    let keep = ["x.npy"];
    fails(kernel(&x, &out, &["--sigma-w2", "-1"]), 2, &["--sigma-w2", "-1"], d, &keep);
    fails(kernel(&x, &out, &["--sigma-b2", "nan"]), 2, &["--sigma-b2", "nan"], d, &keep);
    fails(kernel(&x, &out, &["--sigma-b2", "abc"]), 2, &["--sigma-b2", "abc"], d, &keep);
    fails(kernel(&x, &out, &["--activation", "swish"]), 2, &["--activation", "swish"], d, &keep);
    let leaky = ["--activation", "leaky-relu:x"];
    fails(kernel(&x, &out, &leaky), 2, &["--activation", "leaky-relu:x"], d, &keep);
    fails(kernel(&x, &out, &["--width", "0"]), 2, &["--width", "0"], d, &keep);
    fails(kernel(&x, &out, &["--widths", "4,0,3"]), 2, &["--width", "0"], d, &keep);
    fails(kernel(&x, &out, &["--out-dim", "0"]), 2, &["--out-dim"], d, &keep);
    fails(kernel(&x, &out, &["--threads", "0"]), 2, &["--threads"], d, &keep);
    fails(kernel(&x, &out, &["--output-mode", "diag"]), 2, &["--output-mode", "diag"], d, &keep);
    // A required flag missing.
    let mut c = ntk();
    c.args(["kernel", "--out"]).arg(&out);
    fails(c, 2, &["--x1"], d, &keep);
}

/// Overflow at an extreme initialization is a runtime error naming the layer; an existing
/// output file is left untouched and no partial file appears.
#[test]
fn overflow_is_an_error_and_outputs_stay_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = inputs(d, "x.npy", 3, 4);
    let out = d.join("k.npy");
    std::fs::write(&out, b"previous result").unwrap();
    let mut c = ntk();
    c.args(["kernel", "--quiet", "--x1"]).arg(&x).arg("--out").arg(&out);
    // f64 switches to block floating point by itself (tests/tests/scaled_cli.rs); f32 does not.
    c.args(["--sigma-w2", "10000", "--depth", "200", "--width", "16", "--precision", "f32"]);
    let msg = fails(c, 1, &["layer"], d, &["x.npy", "k.npy"]);
    assert!(msg.contains("non-finite") && msg.contains("--precision f64"), "{msg}");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous result");
    // An output directory that does not exist: named, nothing created.
    let nowhere = d.join("no/such/dir/k.npy");
    fails(kernel(&x, &nowhere, &[]), 1, &["k.npy"], d, &["x.npy", "k.npy"]);
}

/// Where the plain NTK overflows, `--log` writes ln|Theta| from the block floating point
/// computation: equal to the core's `empirical_ntk_scaled` (and, for the infinite-width kernel,
/// to the ReLU law ln Theta(x, x) = L ln(s / 2) + ln(s ||x||^2 / d) + ln(L + 1)); run.json
/// says so.
#[test]
fn log_output_where_theta_overflows() {
    use ntk_cli::io::read_matrix;
    use ntk_core::ntk::OutputMode;
    use ntk_core::scaled::{empirical_ntk_scaled, empirical_ntk_scaled_scratch, Scaled};
    use ntk_core::{Activation, Parameterization, Spec};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = inputs(d, "x.npy", 3, 4);
    let out = d.join("k.npy");
    let flags = ["--sigma-w2", "10000", "--depth", "200", "--width", "16", "--seed", "4"];
    let mut c = ntk();
    c.args(["kernel", "--quiet", "--log", "--x1"]).arg(&x).arg("--out").arg(&out).args(flags);
    c.assert().success();
    let got = read_matrix(&out).unwrap();
    let mut widths = vec![16usize; 202];
    widths[0] = 4;
    widths[201] = 1;
    let spec = Spec::new(&widths, Activation::Relu, 1e4, 0.0, true, Parameterization::Ntk).unwrap();
    let mut p = vec![0.0; spec.param_count()];
    spec.init(&mut p, 4).unwrap();
    let xs = read_matrix(&x).unwrap();
    let mut want = vec![Scaled::ZERO; 9];
    let mut s = vec![0.0; empirical_ntk_scaled_scratch(&widths, 3, None)];
    empirical_ntk_scaled(&spec, &p, &mut want, xs.as_slice(), None, OutputMode::Trace, &mut s)
        .unwrap();
    assert!(got.as_slice().iter().zip(&want).all(|(g, w)| *g == w.ln() && *g > 700.0 * 2.3));
    let run = std::fs::read_to_string(d.join("run.json")).unwrap();
    assert!(run.contains("block floating point"), "{run}");
    // Infinite width, diagonal: the exact ReLU law.
    let mut c = ntk();
    c.args(["kernel", "--quiet", "--log", "--method", "infinite", "--output-mode", "diagonal"]);
    c.arg("--x1").arg(&x).arg("--out").arg(&out).args(flags).args(["--sigma-b2", "0"]);
    c.assert().success();
    let got = read_matrix(&out).unwrap();
    for i in 0..3 {
        let n2: f64 = xs.row(i).iter().map(|v| v * v).sum();
        let want = 200.0 * 5000f64.ln() + (1e4 * n2 / 4.0).ln() + 201f64.ln();
        assert!((got.as_slice()[i] - want).abs() < 1e-9, "{} vs {want}", got.as_slice()[i]);
    }
}

/// Grid commands: empty or invalid ranges, negative variances (also written `--sigma-w2 -1`,
/// which clap used to take for an unknown flag), zero samples or widths, unknown activations.
#[test]
fn bad_grids_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    let cases: [(&str, &[&str], &[&str]); 11] = [
        ("dispersion", &["--depths", "5..1"], &["--depths", "5..1"]),
        ("dispersion", &["--depths", ","], &["--depths"]),
        ("dispersion", &["--sigma-w2", ""], &["--sigma-w2"]),
        ("dispersion", &["--sigma-w2", "-1"], &["--sigma-w2", "-1"]),
        ("dispersion", &["--sigma-b2", "-0.5"], &["--sigma-b2", "-0.5"]),
        ("dispersion", &["--sigma-w2", "0..1:0"], &["--sigma-w2", "0..1:0"]),
        ("dispersion", &["--width", "0"], &["--width", "0"]),
        ("dispersion", &["--activation", "foo"], &["--activation", "foo"]),
        ("phase", &["--sigma-w2", "-1..1:0.5"], &["--sigma-w2", "-1"]),
        ("phase", &["--sigma-b2", "-2"], &["--sigma-b2", "-2"]),
        ("phase", &["--depths", "3..1"], &["--depths", "3..1"]),
    ];
    for (cmd, args, needles) in cases {
        let mut c = ntk();
        c.args([cmd, "--quiet", "--samples", "2", "--out-dir"]).arg(&out).args(args);
        fails(c, 2, needles, d, &[]);
    }
}
