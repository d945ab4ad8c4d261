//! `fill_normal` of 2^20 standard normals: the SIMD path against the former scalar `libm`
//! Box–Muller (`ntk_core::rng::reference`), f64 and f32, in elements per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ntk_core::rng::{fill_normal, reference::fill_normal_libm};
use ntk_core::Real;
use std::hint::black_box;

const N: usize = 1 << 20;

fn bench_type<T: Real>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("fill_normal_{}", T::NAME));
    group.throughput(Throughput::Elements(N as u64));
    let mut out: Vec<T> = std::iter::repeat_n(T::ZERO, N).collect();
    group.bench_function(BenchmarkId::new("libm_scalar", N), |b| {
        b.iter(|| fill_normal_libm(black_box(&mut out[..]), black_box(42), 3, 0))
    });
    group.bench_function(BenchmarkId::new("simd", N), |b| {
        b.iter(|| fill_normal(black_box(&mut out[..]), black_box(42), 3, 0))
    });
    group.finish();
}

fn rng(c: &mut Criterion) {
    bench_type::<f64>(c);
    bench_type::<f32>(c);
}

criterion_group!(benches, rng);
criterion_main!(benches);
