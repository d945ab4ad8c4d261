//! NumPy `.npy` files.
//!
//! Reading is a small hand-written parser (header dict, then raw little- or big-endian
//! elements) so that arbitrary bytes give an error, never a panic or a huge allocation: every
//! size is checked against the bytes actually present before anything is allocated. Writing
//! goes through `npyz`.

use std::io::Write;
use std::path::Path;

use super::{IoError, Matrix, Precision, Tensor};

/// Parses a whole `.npy` file held in memory.
///
/// Accepts dtypes `f2`, `f4`, `f8`, `i1`..`i8`, `u1`..`u8` and `b1` in either byte order
/// (integers and booleans are converted to `f64`), any number of axes, and both C and Fortran
/// order (Fortran data is reordered to C order). Values are not checked for finiteness.
///
/// # Errors
/// [`IoError::Malformed`] (with an empty path) on anything that is not a valid `.npy` file.
pub fn parse_npy_bytes(bytes: &[u8]) -> Result<Tensor, IoError> {
    decode(bytes).map_err(|msg| IoError::malformed(Path::new(""), msg))
}

/// Reads a `.npy` file as an `N x d` data matrix (a 1-D array of length N becomes `N x 1`).
///
/// # Errors
/// I/O failures, malformed files, arrays of more than 2 axes; values are not checked for
/// finiteness (see [`super::check_finite`]).
pub fn read_npy(path: &Path) -> Result<Matrix, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "read", e))?;
    let t = decode(&bytes).map_err(|msg| IoError::malformed(path, msg))?;
    t.into_data_matrix(path)
}

/// Writes `m` as a 2-D `.npy` array (`<f8` or `<f4`, C order) to `w`.
///
/// # Errors
/// Errors of `w`.
pub fn write_npy(w: &mut dyn Write, m: &Matrix, precision: Precision) -> std::io::Result<()> {
    write_npy_array(w, &[m.rows, m.cols], &m.data, precision)
}

/// Writes `data` with an arbitrary `shape` (C order) as a `.npy` array to `w`.
///
/// # Panics
/// If `data.len()` is not the product of `shape`.
///
/// # Errors
/// Errors of `w`.
#[track_caller]
pub fn write_npy_array(
    w: &mut dyn Write,
    shape: &[usize],
    data: &[f64],
    precision: Precision,
) -> std::io::Result<()> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "write_npy_array: shape/data mismatch");
    use npyz::WriterBuilder;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    match precision {
        Precision::F64 => {
            let mut out = npyz::WriteOptions::<f64>::new()
                .default_dtype()
                .shape(&shape)
                .writer(w)
                .begin_nd()?;
            out.extend(data.iter().copied())?;
            out.finish()
        }
        Precision::F32 => {
            let mut out = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(&shape)
                .writer(w)
                .begin_nd()?;
            out.extend(data.iter().map(|&v| v as f32))?;
            out.finish()
        }
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Element type of the stored data.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Float,
    Int,
    Uint,
    Bool,
}

#[derive(Debug)]
struct Header {
    kind: Kind,
    size: usize,
    big_endian: bool,
    fortran: bool,
    shape: Vec<usize>,
}

/// Decodes a complete file; errors are messages without the path.
pub(crate) fn decode(bytes: &[u8]) -> Result<Tensor, String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a .npy file (magic string \\x93NUMPY not found)".into());
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => return Err("truncated .npy header (no version)".into()),
    };
    let (len_bytes, text_start) = match major {
        1 => (2, 10),
        2 | 3 => (4, 12),
        _ => return Err(format!("unsupported .npy version {major}.{minor}")),
    };
    let len_field = bytes.get(8..8 + len_bytes).ok_or("truncated .npy header (no length)")?;
    let header_len = len_field.iter().rev().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let text_end = text_start + header_len; // at most 12 + u32::MAX: no overflow on 64-bit
    let text = bytes.get(text_start..text_end).ok_or_else(|| {
        format!(
            "truncated .npy header: declares {header_len} bytes, file has {}",
            bytes.len().saturating_sub(text_start)
        )
    })?;
    let text = std::str::from_utf8(text).map_err(|_| "npy header is not valid text".to_string())?;
    let header = parse_header(text)?;
    let body = &bytes[text_end..];

    let count =
        header.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| {
            format!("array shape {} is too large", super::error::ShapeDisplay(&header.shape))
        })?;
    let needed = count.checked_mul(header.size).ok_or("array is too large")?;
    if body.len() < needed {
        return Err(format!(
            "truncated data: shape {} needs {needed} bytes, file has {}",
            super::error::ShapeDisplay(&header.shape),
            body.len()
        ));
    }
    if body.len() > needed {
        return Err(format!(
            "{} unexpected bytes after the data of shape {}",
            body.len() - needed,
            super::error::ShapeDisplay(&header.shape)
        ));
    }
    let mut data = Vec::with_capacity(count);
    for chunk in body.chunks_exact(header.size) {
        data.push(element(chunk, &header));
    }
    if header.fortran && header.shape.len() > 1 {
        data = fortran_to_c(&data, &header.shape);
    }
    Ok(Tensor { shape: header.shape, data })
}

/// Converts one stored element (exactly `header.size` bytes) to `f64`.
fn element(chunk: &[u8], h: &Header) -> f64 {
    let mut buf = [0u8; 8];
    buf[..h.size].copy_from_slice(chunk);
    if h.big_endian {
        buf[..h.size].reverse();
    }
    // `buf` now holds the little-endian bytes, zero-extended.
    let raw = u64::from_le_bytes(buf);
    let sign_extend = |bits: u32| -> i64 { ((raw << (64 - bits)) as i64) >> (64 - bits) };
    match (h.kind, h.size) {
        (Kind::Float, 2) => f16_to_f32(raw as u16) as f64,
        (Kind::Float, 4) => f32::from_bits(raw as u32) as f64,
        (Kind::Float, _) => f64::from_bits(raw),
        (Kind::Int, n) => sign_extend(8 * n as u32) as f64,
        (Kind::Uint, _) => raw as f64,
        (Kind::Bool, _) => f64::from(u8::from(raw != 0)),
    }
}

/// IEEE binary16 to binary32 (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24.
            let v = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Reorders Fortran-order elements of an array of `shape` to C order.
fn fortran_to_c(src: &[f64], shape: &[usize]) -> Vec<f64> {
    let n = src.len();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    // Fortran strides: the first axis is contiguous.
    let mut fstride = Vec::with_capacity(shape.len());
    let mut s = 1usize;
    for &d in shape {
        fstride.push(s);
        s *= d; // bounded by n: all dims are non-zero here
    }
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    for _ in 0..n {
        out.push(src[off]);
        // Odometer increment, last axis fastest.
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            off += fstride[k];
            if idx[k] < shape[k] {
                break;
            }
            off -= shape[k] * fstride[k];
            idx[k] = 0;
        }
    }
    out
}

/// Parses the Python dict literal of the header, e.g.
/// `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Cursor { s: text.as_bytes(), i: 0 };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    p.ws();
    p.expect(b'{')?;
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        match key.as_str() {
            "descr" => {
                if p.peek() == Some(b'[') {
                    return Err("structured (record) dtypes are not supported".into());
                }
                descr = Some(p.string()?);
            }
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.int_tuple()?),
            other => return Err(format!("unexpected key '{other}' in npy header")),
        }
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}')?;
            break;
        }
    }
    let descr = descr.ok_or("npy header has no 'descr'")?;
    let fortran = fortran.ok_or("npy header has no 'fortran_order'")?;
    let shape = shape.ok_or("npy header has no 'shape'")?;
    let (kind, size, big_endian) = parse_descr(&descr)?;
    Ok(Header { kind, size, big_endian, fortran, shape })
}

fn parse_descr(d: &str) -> Result<(Kind, usize, bool), String> {
    let unsupported = || {
        format!(
            "unsupported dtype '{d}' (expected float f2/f4/f8, integer i1..i8/u1..u8 or bool b1)"
        )
    };
    let b = d.as_bytes();
    let (order, rest) = match b.first() {
        Some(&c @ (b'<' | b'>' | b'|' | b'=')) => (c, &b[1..]),
        _ => (b'=', b),
    };
    let big_endian = order == b'>' || (order == b'=' && cfg!(target_endian = "big"));
    let (kind, size) = match rest {
        b"f2" | b"e" => (Kind::Float, 2),
        b"f4" | b"f" => (Kind::Float, 4),
        b"f8" | b"d" => (Kind::Float, 8),
        b"i1" | b"b" => (Kind::Int, 1),
        b"i2" | b"h" => (Kind::Int, 2),
        b"i4" | b"i" => (Kind::Int, 4),
        b"i8" | b"q" => (Kind::Int, 8),
        b"u1" | b"B" => (Kind::Uint, 1),
        b"u2" | b"H" => (Kind::Uint, 2),
        b"u4" | b"I" => (Kind::Uint, 4),
        b"u8" | b"Q" => (Kind::Uint, 8),
        b"b1" | b"?" => (Kind::Bool, 1),
        _ => return Err(unsupported()),
    };
    Ok((kind, size, big_endian))
}

/// Byte cursor over the header text.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn err(&self, what: &str) -> String {
        format!("cannot parse npy header: expected {what} at offset {}", self.i)
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(&format!("'{}'", c as char)))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(self.err("a quoted string")),
        };
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == q {
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(s);
            }
            self.i += 1;
        }
        Err(self.err("a closing quote"))
    }

    fn boolean(&mut self) -> Result<bool, String> {
        let rest = &self.s[self.i..];
        if rest.starts_with(b"True") {
            self.i += 4;
            Ok(true)
        } else if rest.starts_with(b"False") {
            self.i += 5;
            Ok(false)
        } else {
            Err(self.err("True or False"))
        }
    }

    fn int_tuple(&mut self) -> Result<Vec<usize>, String> {
        let close = if self.eat(b'(') {
            b')'
        } else if self.eat(b'[') {
            b']'
        } else {
            return Err(self.err("a shape tuple"));
        };
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.eat(close) {
                return Ok(out);
            }
            let start = self.i;
            let mut v = 0usize;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                v = v
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(usize::from(c - b'0')))
                    .ok_or("npy shape dimension is too large")?;
                self.i += 1;
            }
            if self.i == start {
                return Err(self.err("a non-negative integer dimension"));
            }
            self.eat(b'L'); // Python 2 long literal
            out.push(v);
            if out.len() > 32 {
                return Err("npy shape has more than 32 dimensions".into());
            }
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(close)?;
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, body: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[1, 0]);
        v.extend_from_slice(&(header.len() as u16).to_le_bytes());
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(body);
        v
    }

    fn write(m: &Matrix, p: Precision) -> Vec<u8> {
        let mut buf = Vec::new();
        write_npy(&mut buf, m, p).unwrap();
        buf
    }

    #[test]
    fn round_trip_f64_exact() {
        let m = Matrix::new(2, 3, vec![1.0, -2.5, 1e-300, 3.0, f64::MAX, 0.1]);
        let t = parse_npy_bytes(&write(&m, Precision::F64)).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.into_matrix().unwrap(), m);
    }

    #[test]
    fn round_trip_f32_rounds() {
        let m = Matrix::new(3, 2, vec![0.1, 0.2, 0.3, -4.0, 5.5, 1e10]);
        let bytes = write(&m, Precision::F32);
        assert!(String::from_utf8_lossy(&bytes[..64]).contains("<f4"));
        let back = parse_npy_bytes(&bytes).unwrap().into_matrix().unwrap();
        assert_eq!(back, m.round_to_f32());
    }

    #[test]
    fn npyz_reads_what_we_write() {
        let m = Matrix::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
        let bytes = write(&m, Precision::F64);
        let f = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(f.shape(), &[2, 2]);
        assert_eq!(f.into_vec::<f64>().unwrap(), m.data);
    }

    #[test]
    fn one_d_is_a_column() {
        let mut buf = Vec::new();
        write_npy_array(&mut buf, &[3], &[1.0, 2.0, 3.0], Precision::F64).unwrap();
        let m = parse_npy_bytes(&buf).unwrap().into_matrix().unwrap();
        assert_eq!(m.shape(), (3, 1));
    }

    #[test]
    fn integer_and_big_endian_dtypes_convert() {
        let body: Vec<u8> = [-1i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = decode(&npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }\n", &body))
            .unwrap();
        assert_eq!(t.data, vec![-1.0, 7.0]);
        let body: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let t = decode(&npy("{'descr': '>f8', 'fortran_order': False, 'shape': (1, 2)}", &body))
            .unwrap();
        assert_eq!(t.data, vec![1.5, -2.0]);
        let t = decode(&npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2,)}", &[255, 3]))
            .unwrap();
        assert_eq!(t.data, vec![255.0, 3.0]);
        // f16: 1.0 = 0x3c00, -2.0 = 0xc000, smallest subnormal 0x0001.
        let body: Vec<u8> = [0x3c00u16, 0xc000, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t =
            decode(&npy("{'descr': '<f2', 'fortran_order': False, 'shape': (3,)}", &body)).unwrap();
        assert_eq!(t.data, vec![1.0, -2.0, 2f64.powi(-24)]);
    }

    #[test]
    fn fortran_order_is_transposed_to_c() {
        // The 2 x 3 matrix [[1, 2, 3], [4, 5, 6]] stored column by column.
        let body: Vec<u8> =
            [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = decode(&npy("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", &body))
            .unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // 3-D: element (i, j, k) of shape (2, 2, 2) has value 100i + 10j + k.
        let mut f = Vec::new();
        for k in 0..2 {
            for j in 0..2 {
                for i in 0..2 {
                    f.push((100 * i + 10 * j + k) as f64);
                }
            }
        }
        let body: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = decode(&npy("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 2, 2)}", &body))
            .unwrap();
        assert_eq!(t.data, vec![0.0, 1.0, 10.0, 11.0, 100.0, 101.0, 110.0, 111.0]);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let good = write(&Matrix::new(1, 2, vec![1.0, 2.0]), Precision::F64);
        // Every truncation of a valid file is an error, never a panic.
        for n in 0..good.len() {
            assert!(parse_npy_bytes(&good[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        let e = parse_npy_bytes(&good[..9]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_npy_bytes(&good[..good.len() - 1]).unwrap_err().to_string();
        assert!(e.contains("truncated data"), "{e}");
        // Header length pointing far beyond the end (would be a 4 GiB allocation in a naive reader).
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&[2, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(parse_npy_bytes(&big).is_err());
        // Shape whose element count overflows.
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16)}";
        assert!(decode(&npy(h, &[])).unwrap_err().contains("too large"));
        let h = "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,)}";
        assert!(decode(&npy(h, &[0; 8])).unwrap_err().contains("structured"));
        let h = "{'descr': '<c16', 'fortran_order': False, 'shape': (1,)}";
        assert!(decode(&npy(h, &[0; 16])).unwrap_err().contains("unsupported dtype"));
        assert!(parse_npy_bytes(b"garbage garbage garbage").is_err());
    }

    #[test]
    fn three_d_is_not_a_data_matrix() {
        let mut buf = Vec::new();
        write_npy_array(&mut buf, &[1, 1, 2], &[1.0, 2.0], Precision::F64).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        std::fs::write(&p, &buf).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(
            e.ends_with("x.npy: expected a 1-D or 2-D array (N or N x d), found shape [1, 1, 2]")
        );
    }
}
