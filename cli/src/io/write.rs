//! Atomic file output: results appear whole or not at all.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{IoError, Matrix, Precision};

/// Distinguishes temporary files of concurrent writes from one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file unless disarmed (covers errors and panics in the closure).
struct TempGuard {
    path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Writes `path` atomically: `write` fills a temporary file `.NAME.tmp-PID-N` in the same
/// directory, which is flushed, synced to disk and renamed over `path`. On any failure
/// (including an error or panic in `write`) the temporary file is removed and an existing
/// `path` is left untouched. A `path` of `-` writes to standard output instead.
///
/// The permissions of a file being replaced are kept.
///
/// # Errors
/// [`IoError::Io`] naming `path` and the failed step; errors of `write` are reported as
/// `cannot write`.
pub fn atomic_write<F>(path: &Path, write: F) -> Result<(), IoError>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    if path == Path::new("-") {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        write(&mut lock).and_then(|()| lock.flush()).map_err(|e| IoError::io(path, "write", e))?;
        return Ok(());
    }
    let name = path.file_name().ok_or_else(|| {
        IoError::io(
            path,
            "write",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| IoError::io(path, "create temporary file", e))?;
    let mut guard = TempGuard { path: Some(tmp.clone()) };
    if let Ok(meta) = fs::metadata(path) {
        let _ = file.set_permissions(meta.permissions());
    }
    let mut w = BufWriter::new(file);
    write(&mut w).map_err(|e| IoError::io(path, "write", e))?;
    let file = w.into_inner().map_err(|e| IoError::io(path, "write", e.into_error()))?;
    file.sync_all().map_err(|e| IoError::io(path, "sync", e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| IoError::io(path, "rename temporary file onto", e))?;
    guard.path = None;
    // Make the rename itself durable; not all platforms can open directories, so best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// How a matrix output file is encoded, from its extension.
fn is_csv(path: &Path) -> Result<bool, IoError> {
    if path == Path::new("-") {
        return Ok(true);
    }
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("npy") => Ok(false),
        Some("csv") => Ok(true),
        _ => Err(IoError::UnsupportedFormat {
            path: path.to_path_buf(),
            expected: ".npy or .csv (or - for CSV on stdout)",
        }),
    }
}

/// Writes `m` atomically as `.npy` or `.csv` chosen by the extension of `path` (`-`: CSV on
/// standard output), in `f64` or `f32`.
///
/// # Errors
/// [`IoError::UnsupportedFormat`] for other extensions; I/O failures.
pub fn write_matrix(path: &Path, m: &Matrix, precision: Precision) -> Result<(), IoError> {
    if is_csv(path)? {
        atomic_write(path, |w| super::csv::write_csv(w, m, None, precision))
    } else {
        atomic_write(path, |w| super::npy::write_npy(w, m, precision))
    }
}

/// Writes `value` atomically as pretty-printed JSON with a final newline (`-`: stdout).
///
/// # Errors
/// I/O failures.
pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<(), IoError> {
    atomic_write(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.csv");
        atomic_write(&p, |w| w.write_all(b"old\n")).unwrap();
        atomic_write(&p, |w| w.write_all(b"new\n")).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(listing(dir.path()), vec!["out.csv"]);
    }

    #[test]
    fn failed_write_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.json");
        fs::write(&p, "precious").unwrap();
        let e = atomic_write(&p, |w| {
            w.write_all(b"half a resu")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), format!("{}: cannot write: disk on fire", p.display()));
        assert_eq!(fs::read_to_string(&p).unwrap(), "precious");
        assert_eq!(listing(dir.path()), vec!["out.json"]);

        // A panicking closure does not leave a temporary file either.
        let r = std::panic::catch_unwind(|| {
            let _ = atomic_write(&p, |_| panic!("bug"));
        });
        assert!(r.is_err());
        assert_eq!(listing(dir.path()), vec!["out.json"]);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope/out.npy");
        let e = write_matrix(&p, &Matrix::zeros(1, 1), Precision::F64).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: cannot create temporary file: ", p.display())), "{e}");
    }

    #[test]
    fn write_matrix_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let m = Matrix::new(2, 2, vec![1.0, 0.5, -3.0, 1e-7]);
        for (name, precision) in [("k.npy", Precision::F64), ("k.csv", Precision::F64)] {
            let p = dir.path().join(name);
            write_matrix(&p, &m, precision).unwrap();
            assert_eq!(crate::io::read_matrix(&p).unwrap(), m);
        }
        let p = dir.path().join("k32.npy");
        write_matrix(&p, &m, Precision::F32).unwrap();
        assert_eq!(crate::io::read_matrix(&p).unwrap(), m.round_to_f32());
        let e = write_matrix(&dir.path().join("k.txt"), &m, Precision::F64).unwrap_err();
        assert!(matches!(e, IoError::UnsupportedFormat { .. }));
        assert_eq!(listing(dir.path()), vec!["k.csv", "k.npy", "k32.npy"]);
    }

    #[test]
    fn json_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.json");
        let v = serde_json::json!({"seed": 0, "wall_time_s": 1.5});
        write_json_atomic(&p, &v).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("}\n"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }
}
