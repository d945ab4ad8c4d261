//! Determinism: bit-identical results across runs of the binary, across thread counts (f32 and
//! f64), and between batched and unbatched (row by row) computation of the same kernel entries.

use std::path::Path;

use assert_cmd::Command;
use ntk_cli::engine::{par_empirical_ntk, par_forward};
use ntk_cli::io::{write_matrix, Matrix, Precision};
use ntk_core::forward::{cache_len, forward, forward_scratch, output};
use ntk_core::kernel::{kernel, kernel_scratch, Mlp};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::{Activation, Parameterization, Real, Spec};
use ntk_tests::{random_inputs, test_seed};

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

fn bits<T: Real>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

fn ntk<T: Real>(spec: &Spec<'_>, p: &[T], x1: &[T], x2: Option<&[T]>, mode: OutputMode) -> Vec<T> {
    let d = spec.input_dim();
    let (n1, n2) = (x1.len() / d, x2.map_or(x1.len() / d, |x| x.len() / d));
    let mut out = vec![T::ZERO; mode.len(n1, n2, spec.output_dim())];
    let mut s = vec![T::ZERO; empirical_ntk_scratch(spec.widths, n1, x2.map(|_| n2))];
    empirical_ntk(spec, p, &mut out, x1, x2, mode, &mut s).unwrap();
    out
}

fn run_kernel(dir: &Path, x: &Path, out: &str, threads: &str, precision: &str) -> Vec<u8> {
    let out = dir.join(out);
    Command::cargo_bin("ntk")
        .unwrap()
        .args(["kernel", "--quiet", "--x1"])
        .arg(x)
        .arg("--out")
        .arg(&out)
        .args(["--activation", "tanh", "--widths", "48,33", "--out-dim", "3", "--seed", "11"])
        .args(["--sigma-w2", "1.7", "--sigma-b2", "0.05", "--output-mode", "full"])
        .args(["--threads", threads, "--precision", precision])
        .assert()
        .success();
    std::fs::read(out).unwrap()
}

/// `ntk kernel` twice with the same flags, and with 1 and 2 threads: identical output bytes.
#[test]
fn binary_runs_are_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = d.join("x.npy");
    write_matrix(&x, &Matrix::from_rows(&random_inputs(45, 5, test_seed())), Precision::F64)
        .unwrap();
    for precision in ["f64", "f32"] {
        let a = run_kernel(d, &x, "a.npy", "2", precision);
        let b = run_kernel(d, &x, "b.npy", "2", precision);
        let c = run_kernel(d, &x, "c.npy", "1", precision);
        assert!(a.len() > 45 * 45 * 9 * 4);
        assert_eq!(a, b, "{precision}: two runs differ");
        assert_eq!(a, c, "{precision}: 1 vs 2 threads differ");
    }
}

/// The parallel engine in pools of 1 and 2 threads equals the core's NTK bit for bit, in f32
/// (the engine test of the lead covers f64), and the parallel forward pass equals the core's.
#[test]
fn f32_engine_is_bit_identical_across_thread_counts() {
    let seed = test_seed();
    let widths = [7usize, 50, 29, 2];
    let n = 67;
    let x: Vec<f32> = random_inputs(n, 7, seed).concat().iter().map(|&v| v as f32).collect();
    for act in [Activation::Relu, Activation::Gelu] {
        let spec = Spec::new(&widths, act, 2.3, 0.1, true, Parameterization::Ntk).unwrap();
        let mut p = vec![0.0f32; spec.param_count()];
        spec.init(&mut p, seed).unwrap();
        for mode in [OutputMode::Full, OutputMode::Trace, OutputMode::Diagonal] {
            let want = ntk(&spec, &p, &x, None, mode);
            for threads in [1, 2] {
                let got =
                    in_pool(threads, || par_empirical_ntk(&spec, &p, &x, None, mode).unwrap());
                assert!(bits(&got) == bits(&want), "{act} {mode:?} threads={threads}");
            }
        }
        let mut cache = vec![0.0f32; cache_len(&widths, n)];
        let mut s = vec![0.0f32; forward_scratch(&widths, n)];
        forward(&spec, &p, &x, n, &mut cache, &mut s).unwrap();
        for threads in [1, 2] {
            let f = in_pool(threads, || par_forward(&spec, &p, &x, n).unwrap());
            assert!(bits(&f) == bits(&cache), "{act} forward threads={threads}");
        }
    }
}

/// A batch gives every entry the value it has when computed alone: the forward output of each
/// row, and each NTK entry Theta(x_i, x'_j) against the 1 x 1 cross kernel of (x_i, x'_j),
/// bit for bit.
#[test]
fn batched_equals_row_by_row() {
    let seed = test_seed();
    let widths = [5usize, 37, 21, 2];
    let (n1, n2) = (13, 6);
    let x1 = random_inputs(n1, 5, seed).concat();
    let x2 = random_inputs(n2, 5, seed + 3).concat();
    for act in [Activation::Relu, Activation::Erf] {
        let spec = Spec::new(&widths, act, 1.4, 0.3, true, Parameterization::Standard).unwrap();
        let mut p = vec![0.0f64; spec.param_count()];
        spec.init(&mut p, seed).unwrap();
        let mut cache = vec![0.0; cache_len(&widths, n1)];
        let mut s = vec![0.0; forward_scratch(&widths, n1)];
        forward(&spec, &p, &x1, n1, &mut cache, &mut s).unwrap();
        let batch_f = output(&spec, &cache, n1).to_vec();
        let k = spec.output_dim();
        for i in 0..n1 {
            let xi = &x1[i * 5..(i + 1) * 5];
            let mut c1 = vec![0.0; cache_len(&widths, 1)];
            let mut s1 = vec![0.0; forward_scratch(&widths, 1)];
            forward(&spec, &p, xi, 1, &mut c1, &mut s1).unwrap();
            assert_eq!(
                bits(output(&spec, &c1, 1)),
                bits(&batch_f[i * k..(i + 1) * k]),
                "f row {i}"
            );
        }
        let full = ntk(&spec, &p, &x1, Some(&x2), OutputMode::Full);
        let trace = ntk(&spec, &p, &x1, Some(&x2), OutputMode::Trace);
        for i in 0..n1 {
            for j in 0..n2 {
                let (xi, xj) = (&x1[i * 5..(i + 1) * 5], &x2[j * 5..(j + 1) * 5]);
                let one = ntk(&spec, &p, xi, Some(xj), OutputMode::Full);
                for a in 0..k {
                    for b in 0..k {
                        let got = full[(i * k + a) * n2 * k + j * k + b];
                        assert_eq!(
                            got.to_bits(),
                            one[a * k + b].to_bits(),
                            "{act} ({i},{a};{j},{b})"
                        );
                    }
                }
                let one = ntk(&spec, &p, xi, Some(xj), OutputMode::Trace);
                assert_eq!(trace[i * n2 + j].to_bits(), one[0].to_bits(), "{act} trace ({i},{j})");
            }
        }
    }
}

/// The infinite-width kernel of a batch, entry by entry, equals the kernel of the single pair.
#[test]
fn infinite_kernel_batched_equals_pairwise() {
    let seed = test_seed();
    let (n1, n2, d) = (7, 4, 3);
    let x1 = random_inputs(n1, d, seed).concat();
    let x2 = random_inputs(n2, d, seed + 1).concat();
    for act in [Activation::Relu, Activation::Erf, Activation::Tanh] {
        let mlp = Mlp::new(act, 4, 1.6, 0.2);
        let (mut k, mut t) = (vec![0.0; n1 * n2], vec![0.0; n1 * n2]);
        let mut s = vec![0.0; kernel_scratch(n1, n2, 4)];
        kernel(Some(&mut k), Some(&mut t), &x1, Some(&x2), d, &mlp, &mut s).unwrap();
        for i in 0..n1 {
            for j in 0..n2 {
                let (mut k1, mut t1) = ([0.0], [0.0]);
                let mut s = vec![0.0; kernel_scratch(1, 1, 4)];
                let (xi, xj) = (&x1[i * d..(i + 1) * d], &x2[j * d..(j + 1) * d]);
                kernel(Some(&mut k1), Some(&mut t1), xi, Some(xj), d, &mlp, &mut s).unwrap();
                assert_eq!(k[i * n2 + j].to_bits(), k1[0].to_bits(), "{act} K ({i},{j})");
                assert_eq!(t[i * n2 + j].to_bits(), t1[0].to_bits(), "{act} Theta ({i},{j})");
            }
        }
    }
}

/// Regression: the parallel engine divided by N = 0 on an empty batch (a panic); it now
/// returns an empty kernel, as the core does.
#[test]
fn engine_on_empty_batch() {
    let widths = [3usize, 4, 2];
    let spec = Spec::new(&widths, Activation::Relu, 2.0, 0.0, true, Parameterization::Ntk).unwrap();
    let mut p = vec![0.0f64; spec.param_count()];
    spec.init(&mut p, 1).unwrap();
    for mode in [OutputMode::Full, OutputMode::Trace, OutputMode::Diagonal] {
        assert!(par_empirical_ntk(&spec, &p, &[], None, mode).unwrap().is_empty());
    }
    let x = [0.1, 0.2, 0.3];
    assert!(par_empirical_ntk(&spec, &p, &x, Some(&[]), OutputMode::Trace).unwrap().is_empty());
}
