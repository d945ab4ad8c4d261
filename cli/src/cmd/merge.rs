//! `ntk merge`: joins the output directories of a sharded sweep (`--shard i/n`) into one,
//! with the table and figures an unsharded run would have written (byte-identical CSV).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use crate::cmd::dispersion::{finish, Plan, SweepConfig};
use crate::error::{CliError, CliResult};
use crate::runinfo::RunInfo;
use crate::sweep;

/// Flags of `ntk merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Output directories of the shards (each with run.json and parts/).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Directory of the merged sweep.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Also write PNG figures.
    #[arg(long)]
    pub png: bool,
    /// Write the tables even if some tasks are missing (default: error).
    #[arg(long)]
    pub allow_partial: bool,
}

fn read_config(dir: &std::path::Path) -> CliResult<SweepConfig> {
    let path = dir.join("run.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::Runtime(format!("{}: cannot read ({e}); is it a finished sweep?", path.display()))
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Runtime(format!("{}: {e}", path.display())))?;
    serde_json::from_value(v["config"]["sweep"].clone())
        .map_err(|e| CliError::Runtime(format!("{}: not a sweep's run.json: {e}", path.display())))
}

/// Runs `ntk merge`.
///
/// # Errors
/// Runtime errors for unreadable directories, shards of different sweeps, missing tasks.
pub fn run(a: MergeArgs) -> CliResult {
    let info =
        RunInfo::start("merge", json!({ "dirs": a.dirs, "out_dir": a.out_dir, "png": a.png }));
    let cfg = read_config(&a.dirs[0])?;
    for d in &a.dirs[1..] {
        if read_config(d)? != cfg {
            return Err(CliError::Runtime(format!(
                "{}: a different sweep than {} (run.json configs differ)",
                d.display(),
                a.dirs[0].display()
            )));
        }
    }
    let plan = Plan::new(&cfg)?;
    std::fs::create_dir_all(&a.out_dir).map_err(|e| {
        CliError::Runtime(format!("{}: cannot create directory: {e}", a.out_dir.display()))
    })?;
    let parts = sweep::read_parts(&a.dirs)?;
    let mut missing = 0;
    for t in &plan.tasks {
        match parts.get(&t.key) {
            Some(p) => {
                if !a.dirs.contains(&a.out_dir) || !sweep::part_done(&a.out_dir, &t.key) {
                    sweep::write_part(&a.out_dir, p)?;
                }
            }
            None => missing += 1,
        }
    }
    if missing > 0 && !a.allow_partial {
        return Err(CliError::Runtime(format!(
            "{missing} of {} tasks are missing from the merged directories (run the missing \
             shards, or pass --allow-partial)",
            plan.tasks.len()
        )));
    }
    let results = finish(&plan, std::slice::from_ref(&a.out_dir), &a.out_dir, a.png)?;
    info.write(
        &a.out_dir,
        json!({ "merged_from": a.dirs, "tasks_missing": missing, "tables": results }),
    )?;
    // The merged directory is itself a finished sweep: record its configuration for merge.
    let path = a.out_dir.join("run.json");
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .map_err(|e| CliError::Runtime(format!("{}: {e}", path.display())))?,
    )
    .map_err(|e| CliError::Runtime(format!("{}: {e}", path.display())))?;
    v["config"]["sweep"] =
        serde_json::to_value(&cfg).map_err(|e| CliError::Runtime(e.to_string()))?;
    crate::io::write_json_atomic(&path, &v)?;
    Ok(())
}
