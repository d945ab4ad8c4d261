//! Infinite-width NNGP + NTK matrices (`ntk_core::kernel::kernel`, x2 = None): ReLU and erf,
//! depth 10, sigma_w2 = 2, sigma_b2 = 0.1, N = 1000 and N = 4000 inputs of dimension 64
//! (N = 4000 is the workload of `ntk bench --infinite` and of issue 4), single thread. Reports
//! time per matrix and, after criterion, ns per kernel entry per layer (N^2 entries, half of
//! them computed by symmetry) and per computed pair per layer (N (N + 1) / 2 pairs).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ntk_core::kernel::{kernel, kernel_scratch, Mlp};
use ntk_core::rng::fill_normal;
use ntk_core::Activation;
use std::hint::black_box;
use std::time::Instant;

const SIZES: [usize; 2] = [1000, 4000];
const D: usize = 64;
const DEPTH: usize = 10;

struct Work {
    n: usize,
    x: Vec<f64>,
    k: Vec<f64>,
    t: Vec<f64>,
    scratch: Vec<f64>,
}

impl Work {
    fn new(n: usize) -> Self {
        let mut x = vec![0.0; n * D];
        fill_normal(&mut x, 1, 0, 0);
        Self {
            n,
            x,
            k: vec![0.0; n * n],
            t: vec![0.0; n * n],
            scratch: vec![0.0; kernel_scratch(n, 0, DEPTH)],
        }
    }

    fn run(&mut self, mlp: &Mlp) {
        kernel(
            Some(&mut self.k),
            Some(&mut self.t),
            black_box(&self.x),
            None,
            D,
            mlp,
            &mut self.scratch,
        )
        .unwrap();
    }
}

fn configs() -> [(&'static str, Mlp<'static>); 2] {
    [
        ("relu", Mlp::new(Activation::Relu, DEPTH, 2.0, 0.1)),
        ("erf", Mlp::new(Activation::Erf, DEPTH, 2.0, 0.1)),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernel_nngp_ntk");
    group.sample_size(10);
    let mut works: Vec<Work> = SIZES.iter().map(|&n| Work::new(n)).collect();
    for w in &mut works {
        let n = w.n;
        group.throughput(Throughput::Elements((n * n) as u64));
        for (name, mlp) in configs() {
            group.bench_function(BenchmarkId::new(name, format!("N{n}_d{D}_L{DEPTH}")), |b| {
                b.iter(|| w.run(&mlp))
            });
        }
    }
    group.finish();
    // Per entry per layer, from a direct timing (median of 5).
    for w in &mut works {
        let n = w.n;
        for (name, mlp) in configs() {
            let mut times: Vec<f64> = (0..5)
                .map(|_| {
                    let t0 = Instant::now();
                    w.run(&mlp);
                    t0.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(|a, b| a.total_cmp(b));
            let t = times[2];
            let pairs = (n * (n + 1) / 2) as f64;
            println!(
                "kernel {name}: N={n} d={D} L={DEPTH}: {:.1} ms per NNGP+NTK matrix, \
                 {:.2} ns per entry per layer ({:.2} ns per computed pair per layer)",
                t * 1e3,
                t * 1e9 / ((n * n) as f64 * DEPTH as f64),
                t * 1e9 / (pairs * DEPTH as f64),
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
