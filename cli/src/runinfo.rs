//! `run.json`: the full configuration, ntk version, seed and wall time of a run.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::error::CliResult;

/// Collects what a run writes to `run.json`.
pub struct RunInfo {
    command: String,
    start: Instant,
    config: Value,
}

impl RunInfo {
    /// Starts the clock for `command` with its configuration (usually the parsed flags).
    pub fn start(command: &str, config: Value) -> Self {
        Self { command: command.to_string(), start: Instant::now(), config }
    }

    /// Writes `run.json` into `dir` (atomically), with `results` merged in.
    ///
    /// # Errors
    /// A runtime error naming the file.
    pub fn write(&self, dir: &Path, results: Value) -> CliResult {
        let path = dir.join("run.json");
        let v = json!({
            "command": self.command,
            "ntk_version": env!("CARGO_PKG_VERSION"),
            "argv": std::env::args().collect::<Vec<_>>(),
            "config": self.config,
            "results": results,
            "wall_time_s": self.start.elapsed().as_secs_f64(),
        });
        crate::io::write_json_atomic(&path, &v)?;
        Ok(())
    }

    /// Seconds since start.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// The directory of an output file (`.` for a bare file name).
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
