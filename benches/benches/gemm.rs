//! GEMM and the fused Gram–Hadamard kernel, single thread.
//!
//! Throughput is reported as `Elements(flops)` so criterion's "elem/s" reads as FLOP/s:
//! `2 m n k` for a GEMM and, for `gram_hadamard` with `Part::Upper`, the project's symmetric
//! count `m (m + 1) (ka + kd)` (DESIGN §3). Baseline: the `gemm` crate 0.19 with
//! `Parallelism::None`, same row-major operands.
//!
//! Run: `cargo bench -p ntk-benches --bench gemm`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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
        b.iter(|| unsafe {
            // dst := 0 * dst + 1 * lhs * rhs, row-major (column stride 1, row stride n).
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                black_box(&lhs).as_ptr(),
                1,
                k as isize,
                black_box(&rhs).as_ptr(),
                1,
                n as isize,
                T::ZERO,
                T::ONE,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
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

criterion_group!(gemm_benches, benches);
criterion_main!(gemm_benches);
