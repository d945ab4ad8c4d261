//! `.safetensors` files (the format of Hugging Face `safetensors`).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{IoError, Tensor};

/// Parses a `.safetensors` file held in memory into `(name, tensor)` pairs in storage order.
///
/// Dtypes `F64`, `F32`, `F16`, `BF16`, signed and unsigned integers and `BOOL` are converted to
/// `f64`; 8-bit and smaller float formats are rejected.
///
/// # Errors
/// [`IoError::Malformed`] (empty path) for invalid files or unsupported dtypes.
pub fn parse_safetensors_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, IoError> {
    parse_in(bytes, Path::new(""))
}

/// Reads a `.safetensors` file; see [`parse_safetensors_bytes`].
///
/// # Errors
/// As [`parse_safetensors_bytes`] with `path` in the messages, plus I/O failures.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "read", e))?;
    parse_in(&bytes, path)
}

fn parse_in(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>, IoError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| IoError::malformed(path, format!("not a valid .safetensors file: {e}")))?;
    // Storage (offset) order is deterministic, unlike the crate's hash-map iteration.
    let mut names: Vec<(usize, &str)> = Vec::new();
    for (name, view) in st.iter() {
        let start = view.data().as_ptr() as usize;
        names.push((start, name));
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for (_, name) in names {
        let view = st
            .tensor(name)
            .map_err(|e| IoError::malformed(path, format!("tensor \"{name}\": {e}")))?;
        let data = convert(view.dtype(), view.data()).ok_or_else(|| {
            IoError::malformed(
                path,
                format!(
                    "tensor \"{name}\": unsupported dtype {:?} (expected F64, F32, F16, BF16, \
                     an integer type or BOOL)",
                    view.dtype()
                ),
            )
        })?;
        out.push((name.to_owned(), Tensor { shape: view.shape().to_vec(), data }));
    }
    Ok(out)
}

/// Little-endian elements of `dtype` to `f64`; `None` for unsupported dtypes.
fn convert(dtype: Dtype, b: &[u8]) -> Option<Vec<f64>> {
    fn each<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        b.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    Some(match dtype {
        Dtype::F64 => each(b, f64::from_le_bytes),
        Dtype::F32 => each(b, |a| f32::from_le_bytes(a) as f64),
        Dtype::F16 => each(b, |a| super::npy::f16_to_f32(u16::from_le_bytes(a)) as f64),
        Dtype::BF16 => each(b, |a| f32::from_bits(u32::from(u16::from_le_bytes(a)) << 16) as f64),
        Dtype::I64 => each(b, |a| i64::from_le_bytes(a) as f64),
        Dtype::I32 => each(b, |a| i32::from_le_bytes(a) as f64),
        Dtype::I16 => each(b, |a| i16::from_le_bytes(a) as f64),
        Dtype::I8 => each(b, |a: [u8; 1]| a[0] as i8 as f64),
        Dtype::U64 => each(b, |a| u64::from_le_bytes(a) as f64),
        Dtype::U32 => each(b, |a| u32::from_le_bytes(a) as f64),
        Dtype::U16 => each(b, |a| u16::from_le_bytes(a) as f64),
        Dtype::U8 => each(b, |a: [u8; 1]| a[0] as f64),
        Dtype::BOOL => each(b, |a: [u8; 1]| f64::from(u8::from(a[0] != 0))),
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// Serializes `(name, dtype, shape, little-endian bytes)` tensors.
    pub(crate) fn make(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn dtypes_convert() {
        let bf16: Vec<u8> = [0x3f80u16, 0xc000].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16: Vec<u8> = [0x3c00u16, 0x7bff].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = make(&[
            ("a", Dtype::F32, vec![2], f32_bytes(&[1.5, -2.0])),
            ("b", Dtype::BF16, vec![2], bf16),
            ("c", Dtype::F16, vec![2], f16),
            ("d", Dtype::I8, vec![1], vec![0xff]),
            ("e", Dtype::F64, vec![1, 1], 0.25f64.to_le_bytes().to_vec()),
        ]);
        let t = parse_safetensors_bytes(&bytes).unwrap();
        let get = |n: &str| t.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("a").data, vec![1.5, -2.0]);
        assert_eq!(get("b").data, vec![1.0, -2.0]);
        assert_eq!(get("c").data, vec![1.0, 65504.0]);
        assert_eq!(get("d").data, vec![-1.0]);
        assert_eq!(get("e").shape, vec![1, 1]);
        assert_eq!(get("e").data, vec![0.25]);
    }

    #[test]
    fn unsupported_dtype_and_garbage_are_errors() {
        let bytes = make(&[("q", Dtype::F8_E4M3, vec![2], vec![0, 0])]);
        let e = parse_safetensors_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("tensor \"q\": unsupported dtype"), "{e}");
        assert!(parse_safetensors_bytes(b"").is_err());
        assert!(parse_safetensors_bytes(b"\xff\xff\xff\xff\xff\xff\xff\xffgarbage").is_err());
        assert!(
            parse_safetensors_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!}").is_err()
        );
        let good = make(&[("w", Dtype::F32, vec![2, 2], f32_bytes(&[1.0; 4]))]);
        for n in 0..good.len() {
            assert!(parse_safetensors_bytes(&good[..n]).is_err());
        }
        for i in 0..good.len() {
            let mut c = good.clone();
            c[i] ^= 0x5a;
            let _ = parse_safetensors_bytes(&c);
        }
    }
}
