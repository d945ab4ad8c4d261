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

/// The steps column of trace.csv for a short run with extra flags.
fn tracked_steps(extra: &[&str]) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    ntk()
        .args(["train", "--data", "sphere", "--train-size", "12", "--test-size", "4"])
        .args(["--depth", "1", "--width", "8", "--no-stop", "--probe-size", "4", "--quiet"])
        .args(extra)
        .arg("--out-dir")
        .arg(dir.path())
        .assert()
        .success();
    let trace = read(&dir.path().join("trace.csv"));
    trace.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect()
}

/// Tracking schedules: exactly the requested steps, plus step 0 and the final step; steps
/// past the end are not reached; `--track-every` works as before.
#[test]
fn train_tracks_the_requested_steps() {
    assert_eq!(
        tracked_steps(&["--max-steps", "60", "--track-steps", "0,1,10,20,50,100..3000:100"]),
        [0, 1, 10, 20, 50, 60]
    );
    assert_eq!(tracked_steps(&["--max-steps", "7", "--track-steps", "5,3"]), [0, 3, 5, 7]);
    assert_eq!(
        tracked_steps(&["--max-steps", "120", "--track", "log"]),
        [0, 1, 2, 5, 10, 20, 50, 100, 120]
    );
    assert_eq!(
        tracked_steps(&["--max-steps", "300", "--track", "study-b"]),
        [0, 1, 10, 20, 50, 100, 200, 300]
    );
    assert_eq!(tracked_steps(&["--max-steps", "25", "--track-every", "10"]), [0, 10, 20, 25]);
    assert_eq!(tracked_steps(&["--max-steps", "25"]), [0, 25]);
}

#[test]
fn train_usage_errors_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["--optimizer", "gd", "--batch-size", "8"], "--batch-size 8"),
        (vec!["--data", "nope.csv"], "--data nope.csv"),
        (vec!["--track-every", "0"], "--track-every 0"),
        (vec!["--track-steps", "1,x"], "--track-steps"),
    ] {
        let out = ntk().arg("train").args(&args).arg("--out-dir").arg(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want) && err.lines().count() == 1, "{args:?}: {err}");
    }
    // Two schedules at once: a usage error (clap names both flags).
    let out = ntk()
        .args(["train", "--track-every", "5", "--track", "log", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--track-every") && err.contains("--track"), "{err}");
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
    assert!(t.lines().skip(1).all(|l| l.ends_with(",Standard,1")), "{t}");
}

/// `--data digits` (ten outputs) in both parameterizations: the standard parameterization's
/// learning rate falls with the width (its theory is per width; less than 1 / width at these
/// small widths, where the input layer's width-independent term is a large part of Theta), the
/// NTK parameterization's does not.
#[test]
fn variance_digits_both_parameterizations() {
    for (param, falls) in [("standard", true), ("ntk", false)] {
        let dir = tempfile::tempdir().unwrap();
        ntk()
            .args(["variance", "--data", "digits", "--depth", "1", "--widths", "8,256"])
            .args(["--ensemble", "2", "--train-size", "6", "--test-size", "3", "--steps", "5"])
            .args(["--sigma-w2", "1.5", "--parameterization", param, "--quiet", "--out-dir"])
            .arg(dir.path())
            .assert()
            .success();
        let t = read(&dir.path().join("variance.csv"));
        let rows: Vec<Vec<&str>> = t.lines().skip(1).map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 2, "{t}");
        assert!(rows.iter().all(|r| r[r.len() - 1] == "10"), "{t}");
        let lr: Vec<f64> = rows.iter().map(|r| r[7].parse().unwrap()).collect();
        if falls {
            assert!(lr[1] < 0.7 * lr[0], "{param}: {lr:?}");
        } else {
            assert_eq!(lr[1], lr[0], "{param}");
        }
    }
}
