//! One full-batch gradient-descent step (MSE) of study A's largest network — digits inputs
//! (d 64), 20 hidden layers of width 256, 10 outputs, N 128 — in f32 and f64: the core's
//! `train_step` (one thread), and `ntk train`'s row-parallel `ParStep` (bit-identical to it)
//! with 1 and 2 threads; the same for the linearized model (JVP + VJP at theta_0). Beside them,
//! the GEMM roofline: a 2048^3 product through the `gemm` crate with the same precision and
//! thread count (as `ntk bench`).
//!
//! Throughput is in FLOPs (criterion's "elem/s" = FLOP/s; a multiply-add is 2), DESIGN §3:
//! forward `F = 2 N sum_l n_{l-1} n_l`, backward = weight gradients `F` plus signals
//! `S = 2 N sum_{l>=2} n_{l-1} n_l`, so a network step is `2F + S` (0.97 GFLOP here, the
//! backward about twice the forward); the linearized step is a JVP (`F + S`) plus the backward
//! at theta_0 (`F + S`) with the forward at theta_0 kept: `2F + 2S` for `ParStep`, `3F + 2S`
//! for the core's `train_step`, which recomputes that forward. The benchmark names carry the
//! thread count; the measured times, GFLOP/s and GEMM rates are tabulated in docs/training.md.
//!
//! Fixed-work mode, for CPU-time comparisons on a busy machine (`perf stat -e task-clock,cycles:u`):
//! `NTK_TRAIN_FIXED=PRECISION,WHAT,THREADS,REPS cargo bench -p ntk-benches --bench train`
//! runs REPS repetitions of WHAT (`core_network`, `core_linearized`, `par_network`,
//! `par_linearized`, `gemm`, and `layer_core` / `layer_gemm`: one forward-layer product
//! `h = a W^T` of the step's shape, 128 x 256 times 256 x 256 row-major, through the core's
//! pulp GEMM or the `gemm` crate) after one warm-up and prints the wall time per repetition
//! and its GFLOP/s, without criterion.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ntk_benches::gemm_crate;
use ntk_cli::args::{Precision, RunArgs};
use ntk_cli::cmd::bench::RooflineGemm;
use ntk_cli::cmd::train::ParStep;
use ntk_core::backward::Loss;
use ntk_core::simd::MatRef;
use ntk_core::spec::param_count;
use ntk_core::train::{train_step, train_step_scratch, Model, Optimizer};
use ntk_core::{Activation, Parameterization, Real, Spec};

const D: usize = 64;
const WIDTH: usize = 256;
const DEPTH: usize = 20;
const K: usize = 10;
const N: usize = 128;
const GEMM: usize = ntk_cli::cmd::bench::GEMM_SIZE;

fn matmul_flops(w: &[usize], n: usize) -> u64 {
    w.windows(2).map(|p| 2 * (n * p[0] * p[1]) as u64).sum()
}

/// Study A's ReLU network (sigma_w2 2, sigma_b2 0.5, standard parameterization) on `w`.
fn spec_of(w: &[usize]) -> Spec<'_> {
    Spec::new(w, Activation::Relu, 2.0, 0.5, true, Parameterization::Standard).unwrap()
}

/// The benchmarked problem: widths, initial parameters, inputs and one-hot targets.
struct Problem<T> {
    w: Vec<usize>,
    p0: Vec<T>,
    x: Vec<T>,
    y: Vec<T>,
}

impl<T: Real> Problem<T> {
    fn new() -> Self {
        let mut w = vec![D];
        w.extend(std::iter::repeat_n(WIDTH, DEPTH));
        w.push(K);
        let mut p0 = vec![T::ZERO; param_count(&w, true)];
        spec_of(&w).init(&mut p0, 0).unwrap();
        let mut x = vec![T::ZERO; N * D];
        ntk_core::rng::fill_normal(&mut x, 1, 0, 0);
        let y = (0..N * K).map(|i| if i % K == (i / K) % K { T::ONE } else { T::ZERO }).collect();
        Self { w, p0, x, y }
    }
}

/// FLOPs of a network step `2F + S`, of the core's linearized step `3F + 2S` and of
/// `ParStep`'s linearized step `2F + 2S` on widths `w` (module docs).
fn flops(w: &[usize]) -> (u64, u64, u64) {
    let (f, s) = (matmul_flops(w, N), matmul_flops(&w[1..], N));
    (2 * f + s, 3 * f + 2 * s, 2 * f + 2 * s)
}

/// A learning rate small enough that repeated steps stay finite.
fn opt() -> Optimizer {
    Optimizer::gd(1e-7)
}

fn step<T: Real>(c: &mut Criterion) {
    let Problem { w, p0, x, y } = Problem::<T>::new();
    let spec = spec_of(&w);
    let opt = opt();
    let (net_flops, core_lin_flops, par_lin_flops) = flops(&w);
    let lin = Model::Linearized { params0: &p0 };
    let mut group = c.benchmark_group(format!("train_step_w256_d20_n128_{}", T::NAME));
    group.sample_size(20);
    let mut s = vec![T::ZERO; train_step_scratch(&w, true, N)];
    let mut p = p0.clone();
    group.throughput(Throughput::Elements(net_flops));
    group.bench_function("core_network_1t", |b| {
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
    let mut delta = vec![T::ZERO; p0.len()];
    group.throughput(Throughput::Elements(core_lin_flops));
    group.bench_function("core_linearized_1t", |b| {
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
    for threads in [1usize, 2] {
        // ParStep sizes its work items for the pool it is created in.
        let pool =
            RunArgs { seed: 0, precision: Precision::F64, threads: Some(threads), quiet: true };
        let mut p = p0.clone();
        group.throughput(Throughput::Elements(net_flops));
        group.bench_function(BenchmarkId::new("par_network", format!("{threads}t")), |b| {
            pool.in_pool(|| {
                let mut ws = ParStep::<T>::new(&spec, N);
                b.iter(|| {
                    ws.step(&spec, Model::Network, &opt, Loss::Mse, &mut p, &mut [], &x, &y, N, 0)
                        .unwrap()
                });
                Ok(())
            })
            .unwrap()
        });
        let mut delta = vec![T::ZERO; p0.len()];
        group.throughput(Throughput::Elements(par_lin_flops));
        group.bench_function(BenchmarkId::new("par_linearized", format!("{threads}t")), |b| {
            pool.in_pool(|| {
                let mut ws = ParStep::<T>::new(&spec, N);
                b.iter(|| {
                    ws.step(&spec, lin, &opt, Loss::Mse, &mut delta, &mut [], &x, &y, N, 0).unwrap()
                });
                Ok(())
            })
            .unwrap()
        });
        let mut g = RooflineGemm::<T>::new(GEMM, threads);
        group.throughput(Throughput::Elements(g.flops() as u64));
        group.bench_function(BenchmarkId::new("gemm_crate_2048", format!("{threads}t")), |b| {
            b.iter(|| g.run())
        });
    }
    group.finish();
}

/// The fixed-work mode (see the module docs).
fn fixed<T: Real>(what: &str, threads: usize, reps: usize) {
    let Problem { w, p0, x, y } = Problem::<T>::new();
    let spec = spec_of(&w);
    let opt = opt();
    let (net_flops, core_lin_flops, par_lin_flops) = flops(&w);
    let lin = Model::Linearized { params0: &p0 };
    let mut p = if what.ends_with("linearized") { vec![T::ZERO; p0.len()] } else { p0.clone() };
    let mut s = vec![T::ZERO; train_step_scratch(&w, true, N)];
    let mut g = (what == "gemm").then(|| RooflineGemm::<T>::new(GEMM, threads));
    let la: Vec<T> = (0..N * WIDTH).map(|i| T::from_f64(((i % 5) as f64 - 2.0) * 0.1)).collect();
    let mut lh = vec![T::ZERO; N * WIDTH];
    let mut ls = vec![T::ZERO; ntk_core::simd::gemm_scratch(N, WIDTH, WIDTH)];
    let pool = RunArgs { seed: 0, precision: Precision::F64, threads: Some(threads), quiet: true };
    let (flops, secs, each) = pool
        .in_pool(|| {
            let mut ws = ParStep::<T>::new(&spec, N);
            let mut once = || -> u64 {
                match what {
                    "core_network" | "core_linearized" => {
                        let m = if what == "core_network" { Model::Network } else { lin };
                        train_step(
                            &spec,
                            m,
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
                        .unwrap();
                        if what == "core_network" {
                            net_flops
                        } else {
                            core_lin_flops
                        }
                    }
                    "par_network" | "par_linearized" => {
                        let m = if what == "par_network" { Model::Network } else { lin };
                        ws.step(&spec, m, &opt, Loss::Mse, &mut p, &mut [], &x, &y, N, 0).unwrap();
                        if what == "par_network" {
                            net_flops
                        } else {
                            par_lin_flops
                        }
                    }
                    "gemm" => {
                        let g = g.as_mut().expect("made for gemm");
                        g.run();
                        g.flops() as u64
                    }
                    "layer_core" => {
                        use ntk_core::simd::{gemm, MatMut};
                        let (wt, _) = spec.layer(&p0, 1);
                        gemm(
                            MatMut::row_major(&mut lh, N, WIDTH),
                            T::ONE,
                            MatRef::row_major(&la, N, WIDTH),
                            MatRef::row_major(wt, WIDTH, WIDTH).t(),
                            T::ZERO,
                            &mut ls,
                        )
                        .unwrap();
                        2 * (N * WIDTH * WIDTH) as u64
                    }
                    "layer_gemm" => {
                        let (wt, _) = spec.layer(&p0, 1);
                        gemm_crate(
                            &mut lh,
                            MatRef::row_major(&la, N, WIDTH),
                            MatRef::row_major(wt, WIDTH, WIDTH).t(),
                        );
                        2 * (N * WIDTH * WIDTH) as u64
                    }
                    _ => panic!("NTK_TRAIN_FIXED: unknown {what}"),
                }
            };
            let flops = once();
            let t = std::time::Instant::now();
            let mut each = Vec::with_capacity(reps);
            for _ in 0..reps {
                let (w, c) = (std::time::Instant::now(), process_cpu_s());
                once();
                each.push((w.elapsed().as_secs_f64(), process_cpu_s() - c));
            }
            Ok((flops, t.elapsed().as_secs_f64() / reps as f64, each))
        })
        .unwrap();
    println!(
        "{what} {} {threads} thread(s): {:.3} ms per repetition, {:.1} GFLOP/s ({:.4} GFLOP)",
        T::NAME,
        secs * 1e3,
        flops as f64 / secs / 1e9,
        flops as f64 / 1e9
    );
    // On a shared machine the fastest repetitions are the ones nobody interrupted.
    let quantile = |f: fn(&(f64, f64)) -> f64, q: f64| {
        let mut v: Vec<f64> = each.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q) as usize]
    };
    let (wall, cpu) = (|e: &(f64, f64)| e.0, |e: &(f64, f64)| e.1);
    let (w0, w1, c0, c1) =
        (quantile(wall, 0.0), quantile(wall, 0.1), quantile(cpu, 0.0), quantile(cpu, 0.1));
    println!(
        "  wall min {:.3} ms ({:.1} GFLOP/s), 10 % {:.3} ms; process CPU min {:.3} ms \
         ({:.1} GFLOP per CPU-s), 10 % {:.3} ms",
        w0 * 1e3,
        flops as f64 / w0 / 1e9,
        w1 * 1e3,
        c0 * 1e3,
        flops as f64 / c0 / 1e9,
        c1 * 1e3
    );
    if threads > 1 {
        // Where the host placed the threads (see `ntk_cli::placement`).
        println!("  placement: {}", ntk_cli::placement::Placement::measure(threads));
    }
}

/// CPU time of this process (all threads), in seconds.
fn process_cpu_s() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: clock_gettime writes one timespec (two 64-bit fields on 64-bit Linux) to `ts`.
    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

criterion_group!(benches, step::<f32>, step::<f64>);

fn main() {
    if let Ok(v) = std::env::var("NTK_TRAIN_FIXED") {
        let f: Vec<&str> = v.split(',').collect();
        assert_eq!(f.len(), 4, "NTK_TRAIN_FIXED=PRECISION,WHAT,THREADS,REPS");
        let (threads, reps) = (f[2].parse().unwrap(), f[3].parse().unwrap());
        match f[0] {
            "f32" => fixed::<f32>(f[1], threads, reps),
            _ => fixed::<f64>(f[1], threads, reps),
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
