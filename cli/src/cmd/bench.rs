//! `ntk bench`: the standard empirical-NTK workloads of DESIGN §9 timed against the GEMM
//! roofline measured in the same process (the `gemm` crate, same precision and threads).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ntk_core::ntk::OutputMode;
use ntk_core::{Activation, Parameterization, Real, Spec};
use serde::Serialize;

use crate::args::Precision;
use crate::engine::Phases;
use crate::error::{CliError, CliResult};
use crate::placement::Placement;

/// A standard workload (DESIGN §9): ReLU MLP, scalar output, x2 = x1.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Name (`W1` ...).
    pub name: &'static str,
    /// Input dimension.
    pub d: usize,
    /// Hidden width.
    pub width: usize,
    /// Hidden layers.
    pub depth: usize,
    /// Inputs.
    pub n: usize,
}

/// The workloads of DESIGN §9.
pub const WORKLOADS: [Workload; 4] = [
    Workload { name: "W1", d: 64, width: 512, depth: 3, n: 256 },
    Workload { name: "W2", d: 64, width: 1024, depth: 3, n: 512 },
    Workload { name: "W3", d: 64, width: 256, depth: 10, n: 256 },
    Workload { name: "W4", d: 32, width: 2048, depth: 2, n: 128 },
];

impl Workload {
    /// `[d, width, ..., width, 1]`.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.d];
        w.extend(std::iter::repeat_n(self.width, self.depth));
        w.push(1);
        w
    }
}

/// FLOPs of the empirical NTK by DESIGN §3 (a multiply-add counts 2), per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct NtkFlops {
    /// Forward `2 N sum n_{l-1} n_l` (N = all inputs of both sets).
    pub forward: f64,
    /// Backward `2 N k sum_{l>=2} n_{l-1} n_l`.
    pub backward: f64,
    /// Grams `pairs * sum_l (n_{l-1} + k_D n_l)`, `pairs = N (N + 1)` (symmetric) or
    /// `2 N1 N2`.
    pub gram: f64,
}

impl NtkFlops {
    /// The counts for `widths`, `n1` inputs and `n2` (`None`: x2 = x1) and `k_d` (1 for a
    /// scalar output, k for `trace`, k^2 for `full`).
    pub fn of(widths: &[usize], n1: usize, n2: Option<usize>, k_d: usize) -> Self {
        let k = *widths.last().unwrap_or(&1) as f64;
        let n_total = (n1 + n2.unwrap_or(0)) as f64;
        let mut f = Self::default();
        let mut per_pair = 0.0;
        for l in 1..widths.len() {
            let (a, b) = (widths[l - 1] as f64, widths[l] as f64);
            f.forward += 2.0 * n_total * a * b;
            if l >= 2 {
                f.backward += 2.0 * n_total * k * a * b;
            }
            per_pair += a + k_d as f64 * b;
        }
        let pairs = match n2 {
            None => (n1 * (n1 + 1)) as f64,
            Some(n2) => 2.0 * (n1 * n2) as f64,
        };
        f.gram = pairs * per_pair;
        f
    }

    /// All phases.
    pub fn total(&self) -> f64 {
        self.forward + self.backward + self.gram
    }
}

/// Flags of `ntk bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Workloads to run (W1, W2, W3, W4), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "W1,W2,W3,W4")]
    pub workload: Vec<String>,
    /// Precisions, comma separated.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "f32,f64")]
    pub precision: Vec<Precision>,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Minimum seconds of timed repetitions per workload (at least 5 repetitions).
    #[arg(long, default_value_t = 1.0)]
    pub min_time: f64,
    /// Write the results as a JSON list to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Time the infinite-width NNGP + NTK instead (ReLU and erf, depth 10, d 64, f64).
    #[arg(long)]
    pub infinite: bool,
    /// Inputs for `--infinite`.
    #[arg(long, default_value_t = 4000)]
    pub infinite_n: usize,
}

/// One row of `ntk bench --infinite`.
#[derive(Clone, Debug, Serialize)]
pub struct InfiniteRow {
    /// Activation.
    pub activation: String,
    /// Inputs N (the kernel is N x N, symmetric).
    pub n: usize,
    /// Hidden layers.
    pub depth: usize,
    /// Threads used.
    pub threads: usize,
    /// Median seconds per NNGP + NTK computation.
    pub median_s: f64,
    /// Seconds of the first call.
    pub first_s: f64,
    /// Nanoseconds per kernel entry (N^2 entries) per layer, both kernels together.
    pub ns_per_entry_layer: f64,
}

fn run_infinite(a: &BenchArgs, threads: usize) -> CliResult<Vec<InfiniteRow>> {
    let (n, d, depth) = (a.infinite_n, 64, 10);
    if n == 0 {
        return Err(CliError::flag("--infinite-n", 0, "must be positive"));
    }
    let mut x = vec![0.0f64; n * d];
    ntk_core::rng::fill_normal(&mut x, 1, 0, 0);
    let mut rows = Vec::new();
    for act in [Activation::Relu, Activation::Erf] {
        let mlp = ntk_core::kernel::Mlp::new(act, depth, 2.0, 0.1);
        let (first, med, _) = time_it(a.min_time, || {
            std::hint::black_box(crate::engine::par_infinite_kernel(&mlp, &x, None, d)?);
            Ok(())
        })?;
        let row = InfiniteRow {
            activation: act.to_string(),
            n,
            depth,
            threads,
            median_s: med,
            first_s: first,
            ns_per_entry_layer: med * 1e9 / ((n * n) as f64 * (depth + 1) as f64),
        };
        println!(
            "infinite {:<5} N={} depth={} threads={} median={:.3} s first={:.3} s {:.2} ns/entry/layer",
            row.activation, n, depth, threads, med, first, row.ns_per_entry_layer
        );
        rows.push(row);
    }
    Ok(rows)
}

/// One row of `ntk bench`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// Workload name.
    pub workload: String,
    /// `f32` or `f64`.
    pub precision: String,
    /// Threads used.
    pub threads: usize,
    /// Median seconds per call after the first.
    pub median_s: f64,
    /// Seconds of the first call (no warm-up).
    pub first_s: f64,
    /// Repetitions timed.
    pub reps: usize,
    /// FLOPs per call (DESIGN §3).
    pub flops: f64,
    /// FLOPs / median_s / 1e9.
    pub gflops: f64,
    /// GEMM rate (GFLOP/s) of the `gemm` crate, timed interleaved with this workload's calls.
    pub gemm_gflops: f64,
    /// Roofline time (flops / gemm rate) over the median time: 1 is at the roofline.
    pub roofline_ratio: f64,
    /// median_s divided by the roofline time (the "x roofline").
    pub x_roofline: f64,
    /// Core-to-core round trip (ns) measured before the row ([`Placement`]; 0 with
    /// one thread): where the host placed the virtual CPUs, which sets the 2-thread rates.
    pub core_round_trip_ns: f64,
    /// GB/s at which a thread overwrites 2 MiB another thread has just read, measured before
    /// the row ([`Placement`]; 0 with one thread): the cost of every hand-off.
    pub handoff_rewrite_gbs: f64,
    /// The same overwrite of bytes only the writing thread has read (0 with one thread).
    pub own_rewrite_gbs: f64,
    /// Median seconds and GFLOP/s of each phase (`activations` recomputes `phi(h)` and has
    /// no FLOPs in the count).
    pub phases: Vec<PhaseRow>,
}

/// One phase of a [`BenchRow`].
#[derive(Clone, Debug, Serialize)]
pub struct PhaseRow {
    /// `forward`, `activations`, `backward` or `gram`.
    pub phase: &'static str,
    /// Median seconds per call.
    pub median_s: f64,
    /// FLOPs per call (DESIGN §3).
    pub flops: f64,
    /// flops / median_s / 1e9.
    pub gflops: f64,
    /// Phase time over its roofline time (flops / GEMM rate); 1 is at the roofline.
    pub x_roofline: f64,
}

/// Median of a non-empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Times `f`: (first call, median of the repetitions after it, repetitions).
pub fn time_it(min_time: f64, mut f: impl FnMut() -> CliResult) -> CliResult<(f64, f64, usize)> {
    let t = Instant::now();
    f()?;
    let first = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed().as_secs_f64() < min_time && times.len() < 200) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let reps = times.len();
    Ok((first, median(&mut times), reps))
}

/// `c = a b` for `m x m` column-major buffers through the `gemm` crate (its own AVX-512 /
/// AVX2 kernels), with `threads` threads: the roofline reference of `ntk bench` and the benches.
///
/// # Panics
/// If a buffer is shorter than `m * m`.
pub fn gemm_square<T: Real>(a: &[T], b: &[T], c: &mut [T], m: usize, threads: usize) {
    assert!(a.len() >= m * m && b.len() >= m * m && c.len() >= m * m, "gemm_square: buffers");
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: a, b, c hold at least m x m elements (checked), column-major with column stride
    // m, and live through the call; c is a unique borrow, so it does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            m,
            m,
            c.as_mut_ptr(),
            m as isize,
            1,
            false,
            a.as_ptr(),
            m as isize,
            1,
            b.as_ptr(),
            m as isize,
            1,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

/// The `m x m` operand of the roofline GEMM: small repeating values (`((i mod 7) - 3) / 10`).
pub fn gemm_operand<T: Real>(m: usize) -> Vec<T> {
    (0..m * m).map(|i| T::from_f64(((i % 7) as f64 - 3.0) * 0.1)).collect()
}

/// Size of the roofline GEMM (`m x m` times `m x m`).
pub const GEMM_SIZE: usize = 2048;

/// The roofline GEMM: `m x m` operands through the `gemm` crate with `threads` threads.
pub struct RooflineGemm<T> {
    a: Vec<T>,
    c: Vec<T>,
    m: usize,
    threads: usize,
}

impl<T: Real> RooflineGemm<T> {
    /// Operands of size `m` for `threads` threads.
    pub fn new(m: usize, threads: usize) -> Self {
        Self { a: gemm_operand(m), c: vec![T::ZERO; m * m], m, threads }
    }

    /// FLOPs of one product (`2 m^3`).
    pub fn flops(&self) -> f64 {
        2.0 * (self.m as f64).powi(3)
    }

    /// One product `c = a a`; returns its seconds.
    pub fn run(&mut self) -> f64 {
        let t = Instant::now();
        gemm_square(&self.a, &self.a, &mut self.c, self.m, self.threads);
        t.elapsed().as_secs_f64()
    }
}

/// Times `f` interleaved with the roofline GEMM `g`, so that both see the same machine (its
/// speed drifts by tens of percent over minutes on shared hosts): after a first call of `f`
/// and one warm-up GEMM, rounds of one GEMM and then as many calls of `f` as take about as
/// long, until each has had `min_time / 2` seconds (at least 5 calls of `f` and 3 GEMMs).
/// Returns (first call, median of `f`, calls of `f`, median GEMM GFLOP/s).
pub fn time_against_gemm<T: Real>(
    min_time: f64,
    g: &mut RooflineGemm<T>,
    mut f: impl FnMut() -> CliResult,
) -> CliResult<(f64, f64, usize, f64)> {
    let t = Instant::now();
    f()?;
    let first = t.elapsed().as_secs_f64();
    let mut per_call = g.run();
    let (mut gt, mut ft) = (Vec::new(), Vec::new());
    let half = min_time / 2.0;
    while ft.len() < 5 || gt.len() < 3 || gt.iter().sum::<f64>().min(ft.iter().sum()) < half {
        gt.push(g.run());
        let calls = (gt[gt.len() - 1] / per_call.max(1e-9)).ceil().clamp(1.0, 50.0) as usize;
        for _ in 0..calls {
            let t = Instant::now();
            f()?;
            ft.push(t.elapsed().as_secs_f64());
        }
        per_call = median(&mut ft.clone());
        if ft.len() >= 2000 {
            break;
        }
    }
    let reps = ft.len();
    Ok((first, median(&mut ft), reps, g.flops() / median(&mut gt) / 1e9))
}

fn run_workload<T: Real>(
    w: &Workload,
    threads: usize,
    min_time: f64,
    g: &mut RooflineGemm<T>,
) -> CliResult<BenchRow> {
    let widths = w.widths();
    let spec = Spec::new(&widths, Activation::Relu, 2.0, 0.0, true, Parameterization::Ntk)?;
    let mut params = vec![T::ZERO; spec.param_count()];
    spec.init(&mut params, 0)?;
    let mut x = vec![T::ZERO; w.n * w.d];
    ntk_core::rng::fill_normal(&mut x, 1, 0, 0);
    let mut phases = Vec::new();
    let (first, med, reps, gemm_gflops) = time_against_gemm(min_time, g, || {
        let (out, ph) =
            crate::engine::par_empirical_ntk_timed(&spec, &params, &x, None, OutputMode::Trace)?;
        phases.push(ph);
        std::hint::black_box(out);
        Ok(())
    })?;
    phases.remove(0);
    let fl = NtkFlops::of(&widths, w.n, None, 1);
    let flops = fl.total();
    let roof = flops / (gemm_gflops * 1e9);
    let phase_row = |phase, flops: f64, get: fn(&Phases) -> f64| {
        let median_s = median(&mut phases.iter().map(get).collect::<Vec<_>>());
        let x_roofline = if flops > 0.0 { median_s / (flops / (gemm_gflops * 1e9)) } else { 0.0 };
        PhaseRow { phase, median_s, flops, gflops: flops / median_s / 1e9, x_roofline }
    };
    let phases = vec![
        phase_row("forward", fl.forward, |p| p.forward),
        phase_row("activations", 0.0, |p| p.activations),
        phase_row("backward", fl.backward, |p| p.backward),
        phase_row("gram", fl.gram, |p| p.gram),
    ];
    Ok(BenchRow {
        workload: w.name.into(),
        precision: T::NAME.into(),
        threads,
        median_s: med,
        first_s: first,
        reps,
        flops,
        gflops: flops / med / 1e9,
        gemm_gflops,
        roofline_ratio: roof / med,
        x_roofline: med / roof,
        core_round_trip_ns: 0.0,
        handoff_rewrite_gbs: 0.0,
        own_rewrite_gbs: 0.0,
        phases,
    })
}

/// Runs `ntk bench`.
///
/// # Errors
/// Usage errors for unknown workloads or zero threads.
pub fn run(a: BenchArgs) -> CliResult {
    let threads = match a.threads {
        Some(0) => return Err(CliError::flag("--threads", 0, "must be at least 1")),
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut chosen = Vec::new();
    for name in &a.workload {
        let w = WORKLOADS.iter().find(|w| w.name.eq_ignore_ascii_case(name.trim())).ok_or_else(
            || CliError::flag("--workload", name, "unknown workload (expected W1, W2, W3 or W4)"),
        )?;
        chosen.push(*w);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start {threads} threads: {e}")))?;
    if a.infinite {
        let rows = pool.install(|| run_infinite(&a, threads))?;
        if let Some(path) = &a.json {
            let v = serde_json::to_value(&rows).map_err(|e| CliError::Runtime(e.to_string()))?;
            crate::io::write_json_atomic(path, &v)?;
        }
        return Ok(());
    }
    let rows =
        pool.install(|| -> CliResult<Vec<BenchRow>> {
            let mut rows = Vec::new();
            let mut g32 = RooflineGemm::<f32>::new(GEMM_SIZE, threads);
            let mut g64 = RooflineGemm::<f64>::new(GEMM_SIZE, threads);
            for &p in &a.precision {
                for w in &chosen {
                    let pl = Placement::measure(threads);
                    let mut row = match p {
                        Precision::F32 => run_workload(w, threads, a.min_time, &mut g32)?,
                        Precision::F64 => run_workload(w, threads, a.min_time, &mut g64)?,
                    };
                    row.core_round_trip_ns = pl.round_trip_ns;
                    row.handoff_rewrite_gbs = pl.handoff_rewrite_gbs;
                    row.own_rewrite_gbs = pl.own_rewrite_gbs;
                    println!(
                    "{:<3} {:<3} threads={} median={:>9.3} ms first={:>9.3} ms {:>7.1} GFLOP/s \
                     gemm={:>6.1} GFLOP/s  {:.2}x roofline  {}",
                    row.workload, row.precision, row.threads, row.median_s * 1e3,
                    row.first_s * 1e3, row.gflops, row.gemm_gflops, row.x_roofline,
                    if threads > 1 { pl.to_string() } else { "core round trip 0 ns".into() }
                );
                    let ph: Vec<String> = row
                        .phases
                        .iter()
                        .map(|p| format!("{} {:.2} ms", p.phase, p.median_s * 1e3))
                        .chain(
                            row.phases
                                .iter()
                                .filter(|p| p.flops > 0.0)
                                .map(|p| format!("{} {:.0} GFLOP/s", p.phase, p.gflops)),
                        )
                        .collect();
                    println!("    phases: {}", ph.join(", "));
                    rows.push(row);
                }
            }
            Ok(rows)
        })?;
    if let Some(path) = &a.json {
        let v = serde_json::to_value(&rows).map_err(|e| CliError::Runtime(e.to_string()))?;
        crate::io::write_json_atomic(path, &v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_timing_runs_both_and_reports_medians() {
        let mut g = RooflineGemm::<f64>::new(64, 1);
        let mut calls = 0;
        let (first, med, reps, rate) = time_against_gemm(0.02, &mut g, || {
            calls += 1;
            std::thread::sleep(std::time::Duration::from_micros(300));
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, reps + 1);
        assert!(reps >= 5);
        assert!(first >= 3e-4 && (3e-4..0.1).contains(&med), "{first} {med}");
        assert!(rate > 0.0 && rate.is_finite());
        // The GEMM's own answer: every entry of a a for the repeating operand.
        let want: f64 = (0..64).map(|p| g.a[p] * g.a[p * 64]).sum();
        assert!((g.c[0] - want).abs() < 1e-12);
    }
}
