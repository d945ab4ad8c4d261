//! MLP weights from `.safetensors` or `.npz` files (`--weights`, `--weights-layout`).

use std::cmp::Ordering;
use std::path::Path;

use super::error::ShapeDisplay;
use super::matrix::check_finite_named;
use super::{IoError, Matrix, Tensor};

/// How a 2-D weight tensor is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `out x in`, as PyTorch `nn.Linear.weight` (the default).
    #[default]
    OutIn,
    /// `in x out`, as JAX / Flax `Dense` kernels; transposed on loading.
    InOut,
}

/// One dense layer as loaded: the weight as `out x in` whatever the file layout, the bias, and
/// the tensor names for error messages.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// Weight matrix `W^l`, `n_l x n_{l-1}` (out x in).
    pub weight: Matrix,
    /// Bias `b^l` of length `n_l`, if the file has one for this layer.
    pub bias: Option<Vec<f64>>,
    /// Name of the weight tensor in the file.
    pub weight_name: String,
    /// Name of the bias tensor in the file.
    pub bias_name: Option<String>,
    /// Layout the weight was stored in.
    pub layout: Layout,
}

impl From<LayerWeights> for (Matrix, Option<Vec<f64>>) {
    fn from(l: LayerWeights) -> Self {
        (l.weight, l.bias)
    }
}

/// Compares strings with digit runs taken as numbers: `2.weight < 10.weight`, `W2 < W10`.
///
/// Non-digit characters compare as characters; equal numbers with different leading zeros and
/// otherwise equal strings fall back to plain string order, so the order is total.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let da = trim_zeros(&ab[si..i]);
            let db = trim_zeros(&bb[sj..j]);
            let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            if ab[i] != bb[j] {
                // Compare whole characters (bytes of UTF-8 order the same as chars).
                return ab[i].cmp(&bb[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let k = d.iter().position(|&c| c != b'0').unwrap_or(d.len());
    &d[k..]
}

/// Sorts names in [`natural_cmp`] order.
pub fn natural_sort<S: AsRef<str>>(names: &mut [S]) {
    names.sort_by(|a, b| natural_cmp(a.as_ref(), b.as_ref()));
}

/// Words that name a layer parameter's kind (compared ignoring case).
const KIND_WORDS: [&str; 7] = ["weight", "weights", "kernel", "w", "bias", "biases", "b"];

/// The layer a tensor name belongs to: the name without its last kind word, so that
/// `0.weight` and `0.bias` both give `0.`, and `W1`, `b1` both give `1`.
fn layer_key(name: &str) -> String {
    let b = name.as_bytes();
    let mut runs = Vec::new();
    let mut k = 0;
    while k < b.len() {
        if b[k].is_ascii_alphabetic() {
            let s = k;
            while k < b.len() && b[k].is_ascii_alphabetic() {
                k += 1;
            }
            runs.push((s, k));
        } else {
            k += 1;
        }
    }
    for &(s, e) in runs.iter().rev() {
        if KIND_WORDS.iter().any(|w| w.eq_ignore_ascii_case(&name[s..e])) {
            return format!("{}{}", &name[..s], &name[e..]);
        }
    }
    name.to_owned()
}

/// Reads the layers of an MLP from a `.safetensors` or `.npz` file.
///
/// Tensors are grouped by layer: a name without its kind word (`weight`, `kernel`, `w`, `bias`,
/// `b`, any case) is the layer key (`0.weight` / `0.bias` -> `0.`, `W1` / `b1` -> `1`,
/// `layers.2.weight` -> `layers.2.`). Keys are sorted naturally (`10.` after `2.`); within a
/// key the 2-D weight comes first and the following 1-D tensor is its bias. In
/// [`Layout::InOut`] weights are transposed to `out x in`. Values must be finite.
///
/// # Errors
/// I/O and format errors; [`IoError::Weights`] for a file with no 2-D tensor, a bias without a
/// preceding weight, two biases for one layer, or a tensor of another rank;
/// [`IoError::NonFinite`] naming the tensor.
pub fn load_weights(path: &Path, layout: Layout) -> Result<Vec<LayerWeights>, IoError> {
    let tensors = super::read_named_tensors(path)?;
    weights_from_tensors(path, tensors, layout)
}

/// [`load_weights`] on tensors already read (for example from [`super::parse_npz_bytes`]).
///
/// # Errors
/// As [`load_weights`], with `path` in the messages.
pub fn weights_from_tensors(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    layout: Layout,
) -> Result<Vec<LayerWeights>, IoError> {
    let bad = |msg: String| IoError::Weights { path: path.to_path_buf(), msg };
    let mut keyed: Vec<(String, String, Tensor)> =
        tensors.into_iter().map(|(n, t)| (layer_key(&n), n, t)).collect();
    keyed.sort_by(|a, b| {
        natural_cmp(&a.0, &b.0)
            .then_with(|| b.2.ndim().cmp(&a.2.ndim())) // weight (2-D) before bias (1-D)
            .then_with(|| natural_cmp(&a.1, &b.1))
    });
    let mut layers: Vec<LayerWeights> = Vec::new();
    for (_, name, t) in keyed {
        match *t.shape.as_slice() {
            [r, c] => {
                let stored = Matrix::new(r, c, t.data);
                check_finite_named(path, Some(&name), &stored)?;
                let weight = match layout {
                    Layout::OutIn => stored,
                    Layout::InOut => stored.transpose(),
                };
                layers.push(LayerWeights {
                    weight,
                    bias: None,
                    weight_name: name,
                    bias_name: None,
                    layout,
                });
            }
            [n] => {
                let Some(last) = layers.last_mut() else {
                    return Err(bad(format!(
                        "1-D tensor \"{name}\" comes before any 2-D weight (biases follow their \
                         weights in natural name order)"
                    )));
                };
                if let Some(prev) = &last.bias_name {
                    return Err(bad(format!(
                        "weight \"{}\" has two biases: \"{prev}\" and \"{name}\"",
                        last.weight_name
                    )));
                }
                check_finite_named(path, Some(&name), &Matrix::new(1, n, t.data.clone()))?;
                last.bias = Some(t.data);
                last.bias_name = Some(name);
            }
            _ => {
                return Err(bad(format!(
                    "tensor \"{name}\" has shape {}: expected 2-D weights and 1-D biases",
                    ShapeDisplay(&t.shape)
                )))
            }
        }
    }
    if layers.is_empty() {
        return Err(bad("no 2-D weight tensors found".into()));
    }
    Ok(layers)
}

/// Checks a loaded stack against the widths `[n_0, n_1, ..., n_{L+1}]` (input dimension,
/// hidden widths, output dimension) and whether the network has biases.
///
/// Shapes in the messages are in the file's layout, as the user would see them in PyTorch or
/// JAX, e.g. `w.safetensors: tensor "2.weight" has shape [10, 64], expected [10, 256]`.
///
/// # Errors
/// [`IoError::Weights`] for a wrong number of layers or a missing / unexpected bias;
/// [`IoError::ShapeMismatch`] naming the tensor and both shapes.
pub fn validate_weights(
    path: &Path,
    layers: &[LayerWeights],
    widths: &[usize],
    bias: bool,
) -> Result<(), IoError> {
    let bad = |msg: String| IoError::Weights { path: path.to_path_buf(), msg };
    let expected_layers = widths.len().saturating_sub(1);
    if layers.len() != expected_layers {
        let names: Vec<&str> = layers.iter().map(|l| l.weight_name.as_str()).collect();
        return Err(bad(format!(
            "found {} weight matrices ({}), the network needs {expected_layers}",
            layers.len(),
            names.join(", ")
        )));
    }
    for (l, layer) in layers.iter().enumerate() {
        let (n_in, n_out) = (widths[l], widths[l + 1]);
        if layer.weight.shape() != (n_out, n_in) {
            let (found, expected) = match layer.layout {
                Layout::OutIn => (vec![layer.weight.rows, layer.weight.cols], vec![n_out, n_in]),
                Layout::InOut => (vec![layer.weight.cols, layer.weight.rows], vec![n_in, n_out]),
            };
            return Err(IoError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: layer.weight_name.clone(),
                found,
                expected,
            });
        }
        match (&layer.bias, &layer.bias_name, bias) {
            (Some(b), Some(name), true) if b.len() != n_out => {
                return Err(IoError::ShapeMismatch {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    found: vec![b.len()],
                    expected: vec![n_out],
                })
            }
            (None, _, true) => {
                return Err(bad(format!(
                    "weight \"{}\" has no bias tensor, but the network has biases",
                    layer.weight_name
                )))
            }
            (Some(_), Some(name), false) => {
                return Err(bad(format!(
                    "bias tensor \"{name}\" given, but the network has no biases"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensor::tests::{f32_bytes, make};
    use safetensors::Dtype;

    #[test]
    fn natural_order() {
        let mut v = vec!["10.weight", "2.weight", "0.bias", "1.weight", "W10", "W9", "a01", "a1"];
        natural_sort(&mut v);
        assert_eq!(
            v,
            vec!["0.bias", "1.weight", "2.weight", "10.weight", "W9", "W10", "a01", "a1"]
        );
        assert_eq!(natural_cmp("layers.2.weight", "layers.10.weight"), Ordering::Less);
        assert_eq!(natural_cmp("x", "x"), Ordering::Equal);
        assert_eq!(natural_cmp("x", "x0"), Ordering::Less);
        assert_eq!(
            natural_cmp("99999999999999999999999", "100000000000000000000000"),
            Ordering::Less
        );
    }

    #[test]
    fn layer_keys() {
        assert_eq!(layer_key("0.weight"), "0.");
        assert_eq!(layer_key("0.bias"), "0.");
        assert_eq!(layer_key("W1"), "1");
        assert_eq!(layer_key("b1"), "1");
        assert_eq!(layer_key("layers.3.weight"), "layers.3.");
        assert_eq!(layer_key("Dense_0.kernel"), "Dense_0.");
        assert_eq!(layer_key("fc"), "fc");
    }

    /// A 3 -> 4 -> 2 network in PyTorch `nn.Sequential` naming (0 = Linear, 1 = ReLU, 2 = Linear)
    /// plus extra layers up to index 10 to check natural ordering.
    fn torch_file(dir: &Path, layout: Layout) -> std::path::PathBuf {
        // (name-index, in, out); weights hold 100 * layer + 10 * out-row + in-col.
        let dims = [(0, 3, 4), (2, 4, 2), (10, 2, 5)];
        let mut ts = Vec::new();
        for (k, (idx, n_in, n_out)) in dims.iter().enumerate() {
            let mut w = Vec::new();
            match layout {
                Layout::OutIn => {
                    for o in 0..*n_out {
                        for i in 0..*n_in {
                            w.push((100 * k + 10 * o + i) as f32);
                        }
                    }
                }
                Layout::InOut => {
                    for i in 0..*n_in {
                        for o in 0..*n_out {
                            w.push((100 * k + 10 * o + i) as f32);
                        }
                    }
                }
            }
            let shape = match layout {
                Layout::OutIn => vec![*n_out, *n_in],
                Layout::InOut => vec![*n_in, *n_out],
            };
            ts.push((format!("{idx}.weight"), Dtype::F32, shape, f32_bytes(&w)));
            ts.push((
                format!("{idx}.bias"),
                Dtype::F32,
                vec![*n_out],
                f32_bytes(&vec![k as f32; *n_out]),
            ));
        }
        let refs: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> =
            ts.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone())).collect();
        let p = dir.join("w.safetensors");
        std::fs::write(&p, make(&refs)).unwrap();
        p
    }

    #[test]
    fn safetensors_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        for layout in [Layout::OutIn, Layout::InOut] {
            let p = torch_file(dir.path(), layout);
            let layers = load_weights(&p, layout).unwrap();
            let names: Vec<&str> = layers.iter().map(|l| l.weight_name.as_str()).collect();
            assert_eq!(names, ["0.weight", "2.weight", "10.weight"]);
            assert_eq!(layers[2].bias_name.as_deref(), Some("10.bias"));
            for (k, l) in layers.iter().enumerate() {
                for o in 0..l.weight.rows {
                    for i in 0..l.weight.cols {
                        assert_eq!(l.weight[(o, i)], (100 * k + 10 * o + i) as f64);
                    }
                }
                assert_eq!(l.bias.as_ref().unwrap(), &vec![k as f64; l.weight.rows]);
            }
            assert_eq!(layers[0].weight.shape(), (4, 3));
            validate_weights(&p, &layers, &[3, 4, 2, 5], true).unwrap();
            let pairs: Vec<(Matrix, Option<Vec<f64>>)> =
                layers.into_iter().map(Into::into).collect();
            assert_eq!(pairs.len(), 3);
        }
    }

    #[test]
    fn shape_mismatch_messages() {
        let dir = tempfile::tempdir().unwrap();
        let p = torch_file(dir.path(), Layout::OutIn);
        let layers = load_weights(&p, Layout::OutIn).unwrap();
        let e = validate_weights(&p, &layers, &[3, 4, 7, 5], true).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}: tensor \"2.weight\" has shape [2, 4], expected [7, 4]", p.display())
        );
        let e = validate_weights(&p, &layers, &[3, 4, 2], true).unwrap_err().to_string();
        assert!(e.contains(
            "found 3 weight matrices (0.weight, 2.weight, 10.weight), the network needs 2"
        ));
        let e = validate_weights(&p, &layers, &[3, 4, 2, 5], false).unwrap_err().to_string();
        assert!(e.contains("bias tensor \"0.bias\" given, but the network has no biases"));

        let p = torch_file(dir.path(), Layout::InOut);
        let layers = load_weights(&p, Layout::InOut).unwrap();
        let e = validate_weights(&p, &layers, &[3, 9, 2, 5], true).unwrap_err().to_string();
        assert!(e.ends_with("tensor \"0.weight\" has shape [3, 4], expected [3, 9]"), "{e}");
    }

    #[test]
    fn jax_style_names_and_bias_length() {
        let ts = vec![
            ("W0".to_string(), Tensor { shape: vec![2, 3], data: vec![0.0; 6] }),
            ("W1".to_string(), Tensor { shape: vec![3, 1], data: vec![0.0; 3] }),
            ("b0".to_string(), Tensor { shape: vec![3], data: vec![0.0; 3] }),
            ("b1".to_string(), Tensor { shape: vec![2], data: vec![0.0; 2] }),
        ];
        let p = Path::new("params.npz");
        let layers = weights_from_tensors(p, ts, Layout::InOut).unwrap();
        assert_eq!(layers[0].bias_name.as_deref(), Some("b0"));
        assert_eq!(layers[1].bias_name.as_deref(), Some("b1"));
        let e = validate_weights(p, &layers, &[2, 3, 1], true).unwrap_err().to_string();
        assert_eq!(e, "params.npz: tensor \"b1\" has shape [2], expected [1]");
    }

    #[test]
    fn structural_errors() {
        let t = |shape: Vec<usize>| {
            let n = shape.iter().product();
            Tensor { shape, data: vec![1.0; n] }
        };
        let p = Path::new("w.npz");
        let e = weights_from_tensors(p, vec![("bias".into(), t(vec![2]))], Layout::OutIn)
            .unwrap_err()
            .to_string();
        assert!(e.contains("comes before any 2-D weight"), "{e}");
        let e = weights_from_tensors(p, vec![("conv".into(), t(vec![1, 2, 3]))], Layout::OutIn)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has shape [1, 2, 3]"), "{e}");
        let two = vec![
            ("W0".into(), t(vec![2, 2])),
            ("b0".into(), t(vec![2])),
            ("B0".into(), t(vec![2])),
        ];
        let e = weights_from_tensors(p, two, Layout::OutIn).unwrap_err().to_string();
        assert!(e.contains("has two biases"), "{e}");
        let mut nan = t(vec![2, 2]);
        nan.data[3] = f64::NAN;
        let e = weights_from_tensors(p, vec![("W0".into(), nan)], Layout::OutIn)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "w.npz: tensor \"W0\": NaN at row 1, column 1 (0-based)");
    }
}
