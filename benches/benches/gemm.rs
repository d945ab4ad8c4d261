//! GEMM and the fused Gram–Hadamard kernel, single thread.
//!
//! Throughput is reported as `Elements(flops)` so criterion's "elem/s" reads as FLOP/s:
//! `2 m n k` for a GEMM and, for `gram_hadamard` with `Part::Upper`, the project's symmetric
//! count `m (m + 1) (ka + kd)` (DESIGN §3). Baseline: the `gemm` crate 0.19 with
//! `Parallelism::None`, same row-major operands.
//!
//! Run: `cargo bench -p ntk-benches --bench gemm`.
//!
//! Fixed-work mode, for comparisons on a busy machine: `NTK_GEMM_FIXED=PRECISION,REPS cargo
//! bench -p ntk-benches --bench gemm` times REPS calls (fewer for width 2048) of each of a
//! layer's products (row-major outputs; `fwd` `h = a W^T`, `sig` `delta W`, `wgrad` `delta^T a`)
//! at width 256 with 128 rows (the training step on one thread) and 64 rows (its blocks on
//! two), and at width 2048 with 128 and 64 rows (workload W4 on one and two threads), through
//! the core and the `gemm` crate, and prints the fastest call's time and GFLOP/s for each (the
//! minimum filters out the time slices lost to other processes).
//! `NTK_GEMM_ONE=PRECISION,PRODUCT,ROWS,WIDTH,IMPL,REPS` (`IMPL` `core` or `crate`) runs REPS
//! calls of one such product and nothing else, for `perf stat -e cycles:u` (the difference of
//! two REPS counts is the cost of the calls).

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ntk_benches::gemm_crate;
use ntk_core::simd::{self, MatMut, MatRef, Part};
use ntk_core::Real;
use std::hint::black_box;

fn random<T: Real>(len: usize, stream: u64) -> Vec<T> {
    let mut v = vec![T::ZERO; len];
    ntk_core::rng::fill_normal(&mut v, 42, stream, 0);
    v
}

fn bench_gemm<T: Real>(c: &mut Criterion) {
    let (m, n, k) = (512usize, 512usize, 512usize);
    let lhs = random::<T>(m * k, 1);
    let rhs = random::<T>(k * n, 2);
    let mut dst = vec![T::ZERO; m * n];
    let mut scratch = vec![T::ZERO; simd::gemm_scratch(m, n, k)];
    let mut group = c.benchmark_group(format!("gemm_{}", T::NAME));
    group.throughput(Throughput::Elements((2 * m * n * k) as u64));
    group.sample_size(20);
    let id = format!("{m}x{n}x{k}");
    group.bench_function(BenchmarkId::new("ntk", &id), |b| {
        b.iter(|| {
            simd::gemm(
                MatMut::row_major(&mut dst, m, n),
                T::ONE,
                MatRef::row_major(black_box(&lhs), m, k),
                MatRef::row_major(black_box(&rhs), k, n),
                T::ZERO,
                &mut scratch,
            )
            .unwrap()
        })
    });
    group.bench_function(BenchmarkId::new("gemm-crate", &id), |b| {
        b.iter(|| {
            let (l, r) = (MatRef::row_major(&lhs, m, k), MatRef::row_major(&rhs, k, n));
            gemm_crate(&mut dst, black_box(l), r)
        })
    });
    group.finish();
}

fn bench_gram<T: Real>(c: &mut Criterion) {
    let (m, ka, kd) = (256usize, 512usize, 512usize);
    let a = random::<T>(m * ka, 3);
    let d = random::<T>(m * kd, 4);
    let mut dst = vec![T::ZERO; m * m];
    let mut scratch = vec![T::ZERO; simd::gram_hadamard_scratch(m, m, ka, kd)];
    let mut group = c.benchmark_group(format!("gram_hadamard_{}", T::NAME));
    group.throughput(Throughput::Elements((m * (m + 1) * (ka + kd)) as u64));
    group.sample_size(20);
    group.bench_function(BenchmarkId::new("ntk-upper", format!("{m}x{m}_ka{ka}_kd{kd}")), |b| {
        b.iter(|| {
            let (av, dv) = (MatRef::row_major(&a, m, ka), MatRef::row_major(&d, m, kd));
            simd::gram_hadamard(
                MatMut::row_major(&mut dst, m, m),
                black_box(av),
                av,
                black_box(dv),
                dv,
                T::from_f64(0.5),
                T::ONE,
                Part::Upper,
                &mut scratch,
            )
            .unwrap()
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_gemm::<f64>(c);
    bench_gemm::<f32>(c);
    bench_gram::<f64>(c);
    bench_gram::<f32>(c);
}

/// Fastest of `reps` calls of `f`, in seconds.
fn fastest(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Operands of `product` (`fwd`, `sig`, `wgrad`) with `rows` rows of `a` (`rows x width`) and
/// `w` (`width x width`), both row-major: `(lhs, rhs)` of the row-major product.
fn product<'a, T: Real>(
    name: &str,
    a: &'a [T],
    w: &'a [T],
    rows: usize,
    width: usize,
) -> (MatRef<'a, T>, MatRef<'a, T>) {
    let ar = MatRef::row_major(&a[..rows * width], rows, width);
    let wr = MatRef::row_major(w, width, width);
    match name {
        "fwd" => (ar, wr.t()),
        "sig" => (ar, wr),
        // All output rows of delta^T a over `rows` samples.
        _ => (MatRef { data: a, rows: width, cols: rows, rs: 1, cs: width }, ar),
    }
}

/// `NTK_GEMM_ONE` (see the module docs).
fn one<T: Real>(name: &str, rows: usize, width: usize, imp: &str, reps: usize) {
    let a = random::<T>(rows * width, 5);
    let w = random::<T>(width * width, 6);
    let (lhs, rhs) = product(name, &a, &w, rows, width);
    let (m, n) = (lhs.rows, rhs.cols);
    let mut dst = vec![T::ZERO; m * n];
    let mut scratch = vec![T::ZERO; simd::gemm_scratch(m, n, lhs.cols)];
    for _ in 0..reps {
        if imp == "core" {
            let out = MatMut::row_major(&mut dst, m, n);
            simd::gemm(out, T::ONE, black_box(lhs), rhs, T::ZERO, &mut scratch).unwrap();
        } else {
            gemm_crate(&mut dst, black_box(lhs), rhs);
        }
    }
    black_box(&dst);
}

/// The fixed-work mode (see the module docs).
fn fixed<T: Real>(reps: usize) {
    for (width, rows) in [(256usize, 128usize), (256, 64), (2048, 128), (2048, 64)] {
        let a = random::<T>(128 * width, 5);
        let w = random::<T>(width * width, 6);
        let mut dst = vec![T::ZERO; width * width];
        let mut scratch = vec![T::ZERO; simd::gemm_scratch(width, width, width)];
        let ar = MatRef::row_major(&a[..rows * width], rows, width);
        let wr = MatRef::row_major(&w, width, width);
        // wgrad: the output rows of one thread's block (128 rows of delta, or all) of delta^T a.
        let (ob, d) = (2 * rows, MatRef::row_major(&a, 128, width));
        let shapes = [
            ("fwd", ar, wr.t()),
            ("sig", ar, wr),
            ("wgrad", MatRef { data: d.data, rows: ob, cols: 128, rs: 1, cs: width }, d),
        ];
        for (name, lhs, rhs) in shapes {
            let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
            let flops = (2 * m * n * k) as f64;
            let reps = (reps * 256 * 256 / (width * width)).max(1);
            let core = fastest(reps, || {
                let out = MatMut::row_major(&mut dst[..m * n], m, n);
                simd::gemm(out, T::ONE, black_box(lhs), rhs, T::ZERO, &mut scratch).unwrap()
            });
            let crate_ = fastest(reps, || gemm_crate(&mut dst, black_box(lhs), rhs));
            println!(
                "{name} {m}x{n}x{k} {}: core {:.1} us {:.1} GFLOP/s, gemm crate {:.1} us {:.1} \
                 GFLOP/s, ratio {:.3}",
                T::NAME,
                core * 1e6,
                flops / core / 1e9,
                crate_ * 1e6,
                flops / crate_ / 1e9,
                crate_ / core
            );
        }
    }
}

criterion_group!(gemm_benches, benches);

fn main() {
    if let Ok(v) = std::env::var("NTK_GEMM_ONE") {
        let f: Vec<&str> = v.split(',').collect();
        assert_eq!(f.len(), 6, "NTK_GEMM_ONE=PRECISION,PRODUCT,ROWS,WIDTH,IMPL,REPS");
        let (rows, width, reps) =
            (f[2].parse().unwrap(), f[3].parse().unwrap(), f[5].parse().unwrap());
        match f[0] {
            "f32" => one::<f32>(f[1], rows, width, f[4], reps),
            _ => one::<f64>(f[1], rows, width, f[4], reps),
        }
        return;
    }
    if let Ok(v) = std::env::var("NTK_GEMM_FIXED") {
        let f: Vec<&str> = v.split(',').collect();
        assert_eq!(f.len(), 2, "NTK_GEMM_FIXED=PRECISION,REPS");
        let reps = f[1].parse().unwrap();
        match f[0] {
            "f32" => fixed::<f32>(reps),
            _ => fixed::<f64>(reps),
        }
        return;
    }
    gemm_benches();
    Criterion::default().configure_from_args().final_summary();
}
