//! Sweeps that scale out: grid syntax, shards, resumable per-task result files, and the
//! assembly of the final table.
//!
//! A sweep is cut into tasks (a group of cells that share one random draw per sample, see
//! `cmd::dispersion`). Task `t` of the canonical task list belongs to shard `t mod n + 1`.
//! Each finished task writes `parts/<key>.json` atomically (temporary file + rename), so a
//! killed run loses only the tasks in progress, and a re-run skips every task whose part
//! exists. The final CSV is assembled from all parts in a canonical row order: the same
//! parts give byte-identical CSVs, however they were produced (one run, shards, resumes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, CliResult};

/// Parses a list of non-negative integers: comma separated items, each `N`, `A..B`
/// (inclusive) or `A..B:STEP`.
///
/// ```
/// assert_eq!(ntk_cli::sweep::parse_usize_grid("1..4,7,10..20:5").unwrap(), vec![1, 2, 3, 4, 7, 10, 15, 20]);
/// ```
///
/// # Errors
/// A message naming the item that does not parse.
pub fn parse_usize_grid(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        let bad = || format!("cannot parse {item:?} (expected N, A..B or A..B:STEP)");
        if let Some((a, rest)) = item.split_once("..") {
            let (b, step) = match rest.split_once(':') {
                Some((b, st)) => (b, st.parse::<usize>().map_err(|_| bad())?),
                None => (rest, 1),
            };
            let (a, b) =
                (a.parse::<usize>().map_err(|_| bad())?, b.parse::<usize>().map_err(|_| bad())?);
            if step == 0 || b < a {
                return Err(format!("empty or invalid range {item:?}"));
            }
            out.extend((a..=b).step_by(step));
        } else {
            out.push(item.parse().map_err(|_| bad())?);
        }
    }
    Ok(out)
}

/// Parses a list of finite numbers: comma separated items, each `X` or `A..B:STEP` (from A to
/// B inclusive, values `A + i STEP` rounded to 12 significant digits so that `0..1:0.1` gives
/// 0.3, not 0.30000000000000004).
///
/// ```
/// assert_eq!(ntk_cli::sweep::parse_f64_grid("0..0.3:0.1,2").unwrap(), vec![0.0, 0.1, 0.2, 0.3, 2.0]);
/// ```
///
/// # Errors
/// A message naming the item that does not parse.
pub fn parse_f64_grid(s: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        let bad = || format!("cannot parse {item:?} (expected X or A..B:STEP)");
        let num = |t: &str| match t.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(bad()),
        };
        if let Some((a, rest)) = item.split_once("..") {
            let (b, step) = rest.split_once(':').ok_or_else(bad)?;
            let (a, b, step) = (num(a)?, num(b)?, num(step)?);
            if step <= 0.0 || b < a {
                return Err(format!("empty or invalid range {item:?}"));
            }
            let n = ((b - a) / step + 1e-9).floor() as usize;
            out.extend((0..=n).map(|i| round12(a + i as f64 * step)));
        } else {
            out.push(num(item)?);
        }
    }
    Ok(out)
}

fn round12(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    format!("{v:.11e}").parse().unwrap_or(v)
}

/// `--shard i/n`: the i-th of n shards (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 1..=count.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 1, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected I/N with 1 <= I <= N (e.g. 3/8)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether task `t` (0-based, canonical order) belongs to this shard.
    pub fn owns(&self, t: usize) -> bool {
        t % self.count + 1 == self.index
    }
}

/// One result row: its sort key and its formatted CSV line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Activation name.
    pub activation: String,
    /// Hidden width.
    pub width: usize,
    /// Bias variance.
    pub sigma_b2: f64,
    /// Weight variance.
    pub sigma_w2: f64,
    /// Number of hidden layers.
    pub depth: usize,
    /// Position of the entry in the correlation list.
    pub entry: usize,
    /// The CSV line (no newline).
    pub line: String,
}

/// A finished task's rows.
#[derive(Debug, Serialize, Deserialize)]
pub struct Part {
    /// Task key (file stem).
    pub key: String,
    /// Rows of every cell of the task.
    pub rows: Vec<Row>,
}

/// Directory of part files under an output directory.
pub fn parts_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("parts")
}

/// Path of a task's part file.
pub fn part_path(out_dir: &Path, key: &str) -> PathBuf {
    parts_dir(out_dir).join(format!("{key}.json"))
}

/// Writes a part atomically.
///
/// # Errors
/// A runtime error naming the file.
pub fn write_part(out_dir: &Path, part: &Part) -> CliResult {
    let dir = parts_dir(out_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::Runtime(format!("{}: cannot create: {e}", dir.display())))?;
    let path = part_path(out_dir, &part.key);
    let v = serde_json::to_value(part).map_err(|e| CliError::Runtime(e.to_string()))?;
    crate::io::write_json_atomic(&path, &v)?;
    Ok(())
}

/// Whether a complete part for `key` exists (a part that does not parse counts as missing).
pub fn part_done(out_dir: &Path, key: &str) -> bool {
    read_part(&part_path(out_dir, key)).is_ok()
}

fn read_part(path: &Path) -> CliResult<Part> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Runtime(format!("{}: cannot read: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Runtime(format!("{}: not a part file: {e}", path.display())))
}

/// Every part of `dirs`, keyed and deduplicated by task key (sorted by key).
///
/// # Errors
/// A runtime error naming an unreadable part, or two parts with the same key and different
/// rows (the directories come from different sweeps).
pub fn read_parts(dirs: &[PathBuf]) -> CliResult<BTreeMap<String, Part>> {
    let mut parts: BTreeMap<String, Part> = BTreeMap::new();
    for d in dirs {
        let pd = parts_dir(d);
        let entries = match std::fs::read_dir(&pd) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CliError::Runtime(format!("{}: cannot list: {e}", pd.display()))),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let p = read_part(&f)?;
            if let Some(old) = parts.get(&p.key) {
                if old.rows != p.rows {
                    return Err(CliError::Runtime(format!(
                        "{}: task {} differs from the same task in another directory",
                        f.display(),
                        p.key
                    )));
                }
                continue;
            }
            parts.insert(p.key.clone(), p);
        }
    }
    Ok(parts)
}

/// All rows of `parts` in canonical order (activation, width, sigma_b2, sigma_w2, depth,
/// entry), one per cell entry (duplicates from overlapping tasks removed).
pub fn assemble<'a>(parts: impl IntoIterator<Item = &'a Part>) -> Vec<Row> {
    let mut rows: Vec<Row> = parts.into_iter().flat_map(|p| p.rows.iter().cloned()).collect();
    rows.sort_by(|a, b| {
        a.activation
            .cmp(&b.activation)
            .then(a.width.cmp(&b.width))
            .then(a.sigma_b2.total_cmp(&b.sigma_b2))
            .then(a.sigma_w2.total_cmp(&b.sigma_w2))
            .then(a.depth.cmp(&b.depth))
            .then(a.entry.cmp(&b.entry))
            .then(a.line.cmp(&b.line))
    });
    rows.dedup_by(|a, b| a.line == b.line);
    rows
}

/// Writes `header` and the rows' lines to `path` atomically.
///
/// # Errors
/// A runtime error naming the file.
pub fn write_table(path: &Path, header: &str, rows: &[Row]) -> CliResult {
    crate::io::atomic_write(path, |w| {
        writeln!(w, "{header}")?;
        for r in rows {
            writeln!(w, "{}", r.line)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// A stable 64-bit FNV-1a hash (task keys and seed derivation must not depend on the
/// standard library's randomised hasher).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_parse_and_reject() {
        assert_eq!(parse_usize_grid("1..3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_usize_grid("5").unwrap(), vec![5]);
        assert!(parse_usize_grid("3..1").is_err());
        assert!(parse_usize_grid("a").is_err());
        let s = parse_f64_grid("0..5:0.1").unwrap();
        assert_eq!(s.len(), 51);
        assert_eq!(s[3], 0.3);
        assert_eq!(s[50], 5.0);
        assert_eq!(parse_f64_grid("1.0,0.5,0.0").unwrap(), vec![1.0, 0.5, 0.0]);
        assert!(parse_f64_grid("1..2").is_err());
        assert!(parse_f64_grid("nan").is_err());
    }

    #[test]
    fn shards_partition_tasks() {
        let shards: Vec<Shard> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for t in 0..20 {
            assert_eq!(shards.iter().filter(|s| s.owns(t)).count(), 1);
        }
        assert!("0/3".parse::<Shard>().is_err());
        assert!("4/3".parse::<Shard>().is_err());
        assert!("3".parse::<Shard>().is_err());
    }
}
