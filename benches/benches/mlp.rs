//! Forward + backward of workload W1 (DESIGN §9: d 64, width 512, 3 hidden layers, N 256)
//! and the empirical NTK of W1..W4, single thread, f32 and f64. Throughput is in FLOPs
//! (criterion's "elem/s"), counted as in DESIGN §3.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ntk_core::backward::{loss_and_gradient, param_gradient, param_gradient_scratch, Loss};
use ntk_core::forward::{cache_len, forward, forward_scratch, output};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::{Activation, Parameterization, Real, Spec};

fn widths(d: usize, width: usize, depth: usize) -> Vec<usize> {
    let mut w = vec![d];
    w.extend(std::iter::repeat_n(width, depth));
    w.push(1);
    w
}

fn setup<T: Real>(w: &[usize], n: usize) -> (Spec<'_>, Vec<T>, Vec<T>) {
    let spec = Spec::new(w, Activation::Relu, 2.0, 0.0, true, Parameterization::Ntk).unwrap();
    let mut p = vec![T::ZERO; spec.param_count()];
    spec.init(&mut p, 0).unwrap();
    let mut x = vec![T::ZERO; n * w[0]];
    ntk_core::rng::fill_normal(&mut x, 1, 0, 0);
    (spec, p, x)
}

fn matmul_flops(w: &[usize], n: usize) -> u64 {
    w.windows(2).map(|p| 2 * (n * p[0] * p[1]) as u64).sum()
}

fn forward_backward<T: Real>(c: &mut Criterion) {
    let (w, n) = (widths(64, 512, 3), 256);
    let (spec, p, x) = setup::<T>(&w, n);
    let mut cache = vec![T::ZERO; cache_len(&w, n)];
    let mut fs = vec![T::ZERO; forward_scratch(&w, n)];
    let mut gs = vec![T::ZERO; param_gradient_scratch(&w, n)];
    let mut grad = vec![T::ZERO; p.len()];
    let y = vec![T::ZERO; n];
    let mut g = vec![T::ZERO; n];
    let mut group = c.benchmark_group(format!("W1_forward_backward_{}", T::NAME));
    // forward + weight gradients + signals (the first layer's signal is not needed).
    let flops = 2 * matmul_flops(&w, n) + matmul_flops(&w[1..], n);
    group.throughput(Throughput::Elements(flops));
    group.bench_function("mse_gradient", |b| {
        b.iter(|| {
            forward(&spec, &p, &x, n, &mut cache, &mut fs).unwrap();
            loss_and_gradient(Loss::Mse, &mut g, output(&spec, &cache, n), &y, n);
            param_gradient(&spec, &p, &x, n, &cache, &g, &mut grad, &mut gs).unwrap();
        })
    });
    group.finish();
}

fn ntk<T: Real>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("empirical_ntk_1thread_{}", T::NAME));
    group.sample_size(10);
    for (name, d, width, depth, n) in [
        ("W1", 64, 512, 3, 256),
        ("W2", 64, 1024, 3, 512),
        ("W3", 64, 256, 10, 256),
        ("W4", 32, 2048, 2, 128),
    ] {
        let w = widths(d, width, depth);
        let (spec, p, x) = setup::<T>(&w, n);
        let mut s = vec![T::ZERO; empirical_ntk_scratch(&w, n, None)];
        let mut out = vec![T::ZERO; n * n];
        let gram: usize = w.windows(2).map(|p| p[0] + p[1]).sum();
        let flops = matmul_flops(&w, n) + matmul_flops(&w[1..], n) + (n * (n + 1) * gram) as u64;
        group.throughput(Throughput::Elements(flops));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                empirical_ntk(&spec, &p, &mut out, &x, None, OutputMode::Trace, &mut s).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, forward_backward::<f32>, forward_backward::<f64>, ntk::<f32>, ntk::<f64>);
criterion_main!(benches);
