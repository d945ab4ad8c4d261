//! End to end: `ntk dispersion`, `ntk phase`, `ntk merge` — sharded and resumed sweeps give
//! byte-identical tables, whatever the shards, the thread count or a kill -9 in between.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;

fn ntk() -> Command {
    Command::cargo_bin("ntk").unwrap()
}

/// A small sweep with two groups (ReLU: scaled path; tanh: direct path) and 6 tasks.
const SWEEP: &[&str] = &[
    "dispersion",
    "--activation",
    "relu",
    "--activation",
    "tanh",
    "--input-dim",
    "6",
    "--width",
    "8",
    "--depths",
    "1..6",
    "--sigma-w2",
    "0.5,2,3",
    "--sigma-b2",
    "0",
    "--samples",
    "40",
    "--correlations",
    "1.0,0.5,0.0",
    "--bootstrap",
    "50",
    "--depth-chunk",
    "2",
    "--seed",
    "7",
    "--quiet",
];

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn shards_merge_to_the_unsharded_table() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    ntk().args(SWEEP).args(["--threads", "1", "--out-dir"]).arg(&full).assert().success();
    let csv = read(&full.join("dispersion.csv"));
    assert_eq!(csv.lines().count(), 1 + 2 * 6 * 3 * 3);
    assert!(csv.starts_with(
        "activation,input_dim,width,depth,sigma_w2,sigma_b2,parameterization,bias,inputs,samples,r,\
         mean,var,sem,dispersion,dispersion_lo,dispersion_hi,log_mean,log_var"
    ));
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (d, lo, hi): (f64, f64, f64) =
            (f[14].parse().unwrap(), f[15].parse().unwrap(), f[16].parse().unwrap());
        assert!(d >= 1.0 && lo >= 1.0 && lo <= hi, "{line}");
    }
    let mut shard_dirs = Vec::new();
    for i in 1..=4 {
        let d = dir.path().join(format!("shard-{i}"));
        ntk()
            .args(SWEEP)
            .args(["--threads", "2", "--shard", &format!("{i}/4"), "--out-dir"])
            .arg(&d)
            .assert()
            .success();
        shard_dirs.push(d);
    }
    // A shard alone is incomplete: merge refuses without --allow-partial.
    let merged = dir.path().join("merged");
    ntk().arg("merge").args(&shard_dirs[..3]).arg("--out-dir").arg(&merged).assert().code(1);
    ntk().arg("merge").args(&shard_dirs).arg("--out-dir").arg(&merged).assert().success();
    assert_eq!(read(&merged.join("dispersion.csv")), csv);
    assert!(merged.join("dispersion.svg").exists() && merged.join("run.json").exists());
    // The merged directory is a sweep itself: merging it again changes nothing.
    let again = dir.path().join("again");
    ntk().arg("merge").arg(&merged).arg("--out-dir").arg(&again).assert().success();
    assert_eq!(read(&again.join("dispersion.csv")), csv);
}

#[test]
fn resume_after_kill_gives_the_uninterrupted_table() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = vec![
        "dispersion",
        "--activation",
        "tanh",
        "--input-dim",
        "30",
        "--width",
        "30",
        "--depths",
        "1..24",
        "--sigma-w2",
        "0.5,1,1.5,2,2.5,3",
        "--sigma-b2",
        "0.5",
        "--samples",
        "300",
        "--correlations",
        "1.0,0.0",
        "--depth-chunk",
        "1",
        "--seed",
        "3",
        "--quiet",
        "--threads",
        "1",
    ];
    let full = dir.path().join("full");
    ntk().args(&args).arg("--out-dir").arg(&full).assert().success();
    let run = dir.path().join("run");
    let bin = assert_cmd::cargo::cargo_bin("ntk");
    let mut child = std::process::Command::new(&bin)
        .args(&args)
        .arg("--out-dir")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let parts = run.join("parts");
    let t0 = Instant::now();
    let count = || std::fs::read_dir(&parts).map_or(0, |d| d.count());
    while count() < 3 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done_before = count();
    assert!(done_before >= 3, "no task finished before the kill");
    assert!(done_before < 24, "the run finished before it was killed; make it longer");
    assert!(!run.join("dispersion.csv").exists());
    ntk().args(&args).arg("--out-dir").arg(&run).assert().success();
    assert_eq!(read(&run.join("dispersion.csv")), read(&full.join("dispersion.csv")));
    let info: serde_json::Value = serde_json::from_str(&read(&run.join("run.json"))).unwrap();
    let skipped = info["results"]["tasks_skipped_done"].as_u64().unwrap();
    assert!(skipped as usize >= done_before.saturating_sub(1), "{skipped} < {done_before}");
}

#[test]
fn phase_writes_heatmap_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("phase");
    ntk()
        .args(["phase", "--activation", "tanh", "--width", "10", "--depths", "1..4"])
        .args(["--sigma-w2", "1..5:1", "--sigma-b2", "1", "--samples", "30"])
        .args(["--bootstrap", "20", "--seed", "7", "--quiet", "--png", "--out-dir"])
        .arg(&out)
        .assert()
        .success();
    let csv = read(&out.join("phase.csv"));
    assert_eq!(csv.lines().count(), 1 + 5 * 4);
    assert!(read(&out.join("phase.svg")).contains("<svg"));
    assert!(out.join("phase.png").exists());
    // tanh's chi_1 = 1 line at sigma_b2 = 1 lies inside 1..5 and is drawn.
    assert!(read(&out.join("phase.svg")).contains("χ₁ = 1"));
}

#[test]
fn bad_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o");
    for (flag, value) in [
        ("--shard", "0/4"),
        ("--shard", "5/4"),
        ("--depths", "3..1"),
        ("--sigma-w2", "x"),
        ("--precision", "f32"),
        ("--correlations", "1.5"),
    ] {
        let out = ntk()
            .args(["dispersion", "--samples", "4", flag, value, "--out-dir"])
            .arg(&o)
            .assert()
            .code(2)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) || err.contains(value), "{flag} {value}: {err}");
    }
    ntk().args(["merge", "--out-dir"]).arg(&o).arg(dir.path().join("nope")).assert().code(1);
}

/// `--inputs fixed`: entries Theta(x_0, x_j) of the file's rows, r = cosine(x_0, x_j), and the
/// sample mean of Theta(x_0, x_0) within 4 standard errors of the exact ReLU mean with
/// ||x_0||^2 from the file.
#[test]
fn fixed_inputs_use_the_file_rows() {
    use ntk_cli::io::{write_matrix, Matrix, Precision};
    let dir = tempfile::tempdir().unwrap();
    let rows = [[1.0, 2.0, 0.0, -1.0, 0.5], [0.5, 1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 2.0, 1.0, 1.0]];
    let x = dir.path().join("x.csv");
    write_matrix(&x, &Matrix::from_rows(&rows), Precision::F64).unwrap();
    let out = dir.path().join("o");
    ntk()
        .args(["dispersion", "--inputs", "fixed", "--x"])
        .arg(&x)
        .args(["--width", "12", "--depths", "1,3", "--sigma-w2", "1,2", "--samples", "400"])
        .args(["--bootstrap", "20", "--seed", "5", "--quiet", "--out-dir"])
        .arg(&out)
        .assert()
        .success();
    let csv = read(&out.join("dispersion.csv"));
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(lines.len(), 2 * 2 * 3);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for (i, line) in lines.iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!((f[1], f[2], f[8]), ("5", "12", "fixed"), "{line}");
        let j = i % 3;
        let r: f64 = f[10].parse().unwrap();
        let want =
            dot(&rows[0], &rows[j]) / (dot(&rows[0], &rows[0]) * dot(&rows[j], &rows[j])).sqrt();
        assert!((r - want).abs() < 1e-15, "{line}");
        if j == 0 {
            let (mean, sem, exact): (f64, f64, f64) =
                (f[11].parse().unwrap(), f[13].parse().unwrap(), f[19].parse().unwrap());
            let (sw2, depth): (f64, i32) = (f[4].parse().unwrap(), f[3].parse().unwrap());
            let q = sw2 / 2.0;
            let n2 = dot(&rows[0], &rows[0]);
            let formula = q.powi(depth) * n2 * (1.0 + depth as f64 * 12.0 / 5.0)
                + (0..=depth).map(|k| q.powi(k)).sum::<f64>();
            assert!((exact - formula).abs() < 1e-12 * formula, "{line}");
            assert!((mean - exact).abs() < 4.0 * sem, "{line}");
        } else {
            assert_eq!(f[19], "", "{line}");
        }
    }
}
