//! One full-batch gradient-descent step (MSE) of study A's largest network — digits inputs
//! (d 64), 20 hidden layers of width 256, 10 outputs, N 128 — single thread, f32 and f64; and
//! the same step of its linearization (JVP + VJP at theta_0). Throughput is in FLOPs
//! (criterion's "elem/s" = FLOP/s), counted as in DESIGN §3: forward 2 N sum n_{l-1} n_l,
//! backward the weight gradients (same count) plus the signals (layers 2.., same form); the
//! linearized step adds a tangent pass (forward count plus the layers 2.. count).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ntk_cli::cmd::train::par_full_batch_step;
use ntk_core::backward::Loss;
use ntk_core::train::{train_step, train_step_scratch, Model, Optimizer};
use ntk_core::{Activation, Parameterization, Real, Spec};

const D: usize = 64;
const WIDTH: usize = 256;
const DEPTH: usize = 20;
const K: usize = 10;
const N: usize = 128;

fn matmul_flops(w: &[usize], n: usize) -> u64 {
    w.windows(2).map(|p| 2 * (n * p[0] * p[1]) as u64).sum()
}

fn step<T: Real>(c: &mut Criterion) {
    let mut w = vec![D];
    w.extend(std::iter::repeat_n(WIDTH, DEPTH));
    w.push(K);
    let spec = Spec::new(&w, Activation::Relu, 2.0, 0.5, true, Parameterization::Standard).unwrap();
    let mut p0 = vec![T::ZERO; spec.param_count()];
    spec.init(&mut p0, 0).unwrap();
    let mut x = vec![T::ZERO; N * D];
    ntk_core::rng::fill_normal(&mut x, 1, 0, 0);
    let y: Vec<T> =
        (0..N * K).map(|i| if i % K == (i / K) % K { T::ONE } else { T::ZERO }).collect();
    let mut s = vec![T::ZERO; train_step_scratch(&w, true, N)];
    // A learning rate small enough that repeated steps stay finite.
    let opt = Optimizer::gd(1e-7);
    let (fwd, sig) = (matmul_flops(&w, N), matmul_flops(&w[1..], N));
    let mut group = c.benchmark_group(format!("train_step_w256_d20_n128_{}", T::NAME));
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * fwd + sig));
    let mut p = p0.clone();
    group.bench_function("gd_network", |b| {
        b.iter(|| {
            train_step(
                &spec,
                Model::Network,
                &opt,
                Loss::Mse,
                &mut p,
                &mut [],
                &x,
                &y,
                N,
                0,
                &mut [],
                &mut s,
            )
            .unwrap()
        })
    });
    group.throughput(Throughput::Elements(3 * fwd + 2 * sig));
    let mut delta = vec![T::ZERO; p0.len()];
    let lin = Model::Linearized { params0: &p0 };
    group.bench_function("gd_linearized", |b| {
        b.iter(|| {
            train_step(
                &spec,
                lin,
                &opt,
                Loss::Mse,
                &mut delta,
                &mut [],
                &x,
                &y,
                N,
                0,
                &mut [],
                &mut s,
            )
            .unwrap()
        })
    });
    group.finish();
    // Both cores: fixed blocks of 64 samples in parallel (rayon's global pool).
    let mut group = c.benchmark_group(format!("train_step_w256_d20_n128_{}_par", T::NAME));
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * fwd + sig));
    let mut p = p0.clone();
    group.bench_function("gd_network", |b| {
        b.iter(|| {
            par_full_batch_step(
                &spec,
                Model::Network,
                &opt,
                Loss::Mse,
                &mut p,
                &mut [],
                &x,
                &y,
                N,
                0,
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, step::<f32>, step::<f64>);
criterion_main!(benches);
