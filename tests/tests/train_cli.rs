//! End to end: `ntk train`, `ntk drift` and `ntk variance` on small problems (assert_cmd).

use assert_cmd::Command;

fn ntk() -> Command {
    Command::cargo_bin("ntk").unwrap()
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// trace.csv has the columns of the issue, one row per tracked step, deterministic in the seed
/// and independent of the thread count; run.json and the figures exist.
#[test]
fn train_writes_trace_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &std::path::Path, threads: &str| {
        ntk()
            .args(["train", "--data", "digits", "--train-size", "100", "--test-size", "30"])
            .args(["--activation", "relu", "--depth", "2", "--width", "16", "--sigma-w2", "2.0"])
            .args(["--sigma-b2", "0.5", "--parameterization", "standard", "--optimizer", "gd"])
            .args(["--max-steps", "25", "--track-every", "10", "--seed", "7", "--probe-size", "20"])
            .args(["--threads", threads, "--quiet", "--out-dir"])
            .arg(out)
            .assert()
            .success();
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run(&a, "1");
    run(&b, "2");
    let trace = read(&a.join("trace.csv"));
    let header = trace.lines().next().unwrap();
    assert!(header.starts_with(
        "step,train_loss,test_loss,train_accuracy,test_accuracy,ntk_change,block_within,\
         block_between,lin_distance"
    ));
    let steps: Vec<&str> = trace.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, ["0", "10", "20", "25"]);
    // Everything but the wall-clock column is bit-identical across thread counts.
    let strip = |s: &str| -> Vec<String> {
        s.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
    };
    assert_eq!(strip(&trace), strip(&read(&b.join("trace.csv"))));
    let last: Vec<f64> =
        trace.lines().last().unwrap().split(',').map(|v| v.parse().unwrap()).collect();
    let first: Vec<f64> =
        trace.lines().nth(1).unwrap().split(',').map(|v| v.parse().unwrap()).collect();
    assert!(last[1] < first[1], "training loss did not decrease");
    assert!(last[5] > 0.0 && last[8] > 0.0);
    for f in ["run.json", "loss.svg", "ntk_change.svg", "ntk_0.svg", "ntk_final.svg", "ntk_0.npy"] {
        assert!(a.join(f).exists(), "{f}");
    }
    let json: serde_json::Value = serde_json::from_str(&read(&a.join("run.json"))).unwrap();
    assert_eq!(json["results"]["steps"], 25);
    assert!(json["results"]["learning_rate"].as_f64().unwrap() > 0.0);
}

#[test]
fn train_usage_errors_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["--optimizer", "gd", "--batch-size", "8"], "--batch-size 8"),
        (vec!["--data", "nope.csv"], "--data nope.csv"),
        (vec!["--track-every", "0"], "--track-every 0"),
    ] {
        let out = ntk().arg("train").args(&args).arg("--out-dir").arg(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want) && err.lines().count() == 1, "{args:?}: {err}");
    }
}

/// A sharded drift grid: shard 1/2 then the rest; the second run only fills the missing cells
/// and the assembled table has every cell.
#[test]
fn drift_shards_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        ntk()
            .args(["drift", "--depths", "1", "--width", "8", "--sigma-w2", "1,2"])
            .args(["--sigma-b2", "0.1", "--train-size", "20", "--max-steps", "10"])
            .args(["--probe-size", "10", "--quiet", "--out-dir"])
            .arg(dir.path())
            .args(extra)
            .assert()
            .success();
    };
    run(&["--shard", "1/2"]);
    let j: serde_json::Value = serde_json::from_str(&read(&dir.path().join("run.json"))).unwrap();
    assert_eq!(j["results"]["cells_done"], 1);
    run(&[]);
    let j: serde_json::Value = serde_json::from_str(&read(&dir.path().join("run.json"))).unwrap();
    assert_eq!(
        (j["results"]["cells_done"].as_u64(), j["results"]["cells_run_now"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(read(&dir.path().join("drift.csv")).lines().count(), 3);
    assert!(dir.path().join("drift_change_depth1.svg").exists());
}

#[test]
fn variance_small_run() {
    let dir = tempfile::tempdir().unwrap();
    ntk()
        .args(["variance", "--depth", "1", "--widths", "8,32", "--ensemble", "3"])
        .args(["--train-size", "5", "--test-size", "3", "--input-dim", "3", "--steps", "20"])
        .args(["--quiet", "--out-dir"])
        .arg(dir.path())
        .assert()
        .success();
    let t = read(&dir.path().join("variance.csv"));
    assert_eq!(t.lines().count(), 1 + 3 * 2);
    assert!(t.contains("EdgeOfChaos") && t.contains("Ordered") && t.contains("Chaotic"));
}
