//! NumPy `.npz` archives (a zip of `.npy` members, stored or deflated).

use std::io::Read;
use std::path::Path;

use super::{IoError, Tensor};

/// Parses a `.npz` archive held in memory into `(name, array)` pairs in archive order.
///
/// Names drop the `.npy` suffix (`np.savez(f, W0=...)` gives `W0`). Directory entries are
/// skipped; a member that is not a valid `.npy` is an error naming it.
///
/// # Errors
/// [`IoError::Malformed`] (empty path) for invalid zip data or members.
pub fn parse_npz_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, IoError> {
    parse_in(bytes, Path::new(""))
}

/// Reads a `.npz` file; see [`parse_npz_bytes`].
///
/// # Errors
/// As [`parse_npz_bytes`] with `path` in the messages, plus I/O failures.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "read", e))?;
    parse_in(&bytes, path)
}

fn parse_in(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>, IoError> {
    let bad = |msg: String| IoError::malformed(path, msg);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("not a valid .npz (zip) archive: {e}")))?;
    let mut out = Vec::with_capacity(zip.len().min(1024));
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().map_err(|e| bad(format!("zip entry {i}: bad name: {e}")))?;
        let name = name.strip_suffix(".npy").unwrap_or(&name).to_owned();
        // The declared size bounds the read, so a lying header cannot make us inflate without
        // end; the allocation grows with the data actually produced.
        let declared = entry.size();
        let mut buf = Vec::new();
        (&mut entry)
            .take(declared)
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("member \"{name}\": {e}")))?;
        let t = super::npy::decode(&buf).map_err(|msg| bad(format!("member \"{name}\": {msg}")))?;
        out.push((name, t));
    }
    if out.is_empty() {
        return Err(bad("the .npz archive holds no arrays".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{write_npy_array, Precision};
    use std::io::Write;

    fn npy(shape: &[usize], data: &[f64]) -> Vec<u8> {
        let mut v = Vec::new();
        write_npy_array(&mut v, shape, data, Precision::F64).unwrap();
        v
    }

    pub(crate) fn make_npz(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let method =
            if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in members {
            w.start_file(*name, opts).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn two_arrays_stored_and_deflated() {
        for deflate in [false, true] {
            let z = make_npz(
                &[("x.npy", npy(&[2, 2], &[1.0, 2.0, 3.0, 4.0])), ("y.npy", npy(&[3], &[5.0; 3]))],
                deflate,
            );
            let a = parse_npz_bytes(&z).unwrap();
            assert_eq!(a.len(), 2);
            assert_eq!(a[0].0, "x");
            assert_eq!(a[0].1.shape, vec![2, 2]);
            assert_eq!(a[0].1.data, vec![1.0, 2.0, 3.0, 4.0]);
            assert_eq!(a[1].0, "y");
            assert_eq!(a[1].1.data, vec![5.0; 3]);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_npz_bytes(b"PK\x03\x04 not really a zip").is_err());
        assert!(parse_npz_bytes(&[]).is_err());
        let z = make_npz(&[("bad.npy", b"\x93NUMPY\x01\x00".to_vec())], true);
        let e = parse_npz_bytes(&z).unwrap_err().to_string();
        assert!(e.starts_with("member \"bad\": "), "{e}");
        // Every truncation of a valid archive is an error, never a panic.
        let z = make_npz(&[("x.npy", npy(&[2], &[1.0, 2.0]))], true);
        for n in 0..z.len() {
            assert!(parse_npz_bytes(&z[..n]).is_err());
        }
        // Flipping any single byte never panics (it may still parse).
        for i in 0..z.len() {
            let mut c = z.clone();
            c[i] ^= 0xa5;
            let _ = parse_npz_bytes(&c);
        }
    }
}
