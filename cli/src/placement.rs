//! Where the host placed this process's threads, measured: the round trip of a cache line
//! between two threads, and the bandwidth at which one thread overwrites memory the other has
//! just read.
//!
//! Every parallel phase of the NTK engine and of a training step hands data to the other
//! thread, which reads it (the other rows of a Gram, a layer's signals, the updated weights);
//! the next write to those lines must first invalidate the reader's copies. On this 2-vCPU
//! virtual machine the two probes tell two placements apart that change every few seconds to
//! minutes (2026-11-23, 2 MiB):
//!
//! | placement | round trip | overwrite lines the other thread read | overwrite own lines |
//! |---|---|---|---|
//! | cores sharing a cache | 80-140 ns | 65-73 GB/s | 105-113 GB/s |
//! | cores not sharing one | 440-560 ns | 7-11 GB/s | 105-113 GB/s |
//!
//! so in the second placement a hand-off costs about 100 us per MB written, the time of
//! ~20 MFLOP of GEMM per core. `ntk bench` prints both with each row.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Both sides of a probe give up after this many seconds (a busy or single-CPU machine).
const GIVE_UP_S: f64 = 0.05;

/// A hand-off counter between two spinning threads.
struct Baton {
    flag: AtomicU64,
    start: Instant,
}

impl Baton {
    fn new() -> Self {
        Self { flag: AtomicU64::new(0), start: Instant::now() }
    }

    fn pass(&self, v: u64) {
        self.flag.store(v, Ordering::Release);
    }

    /// Spins until the counter reads `v`; `false` after [`GIVE_UP_S`] since the baton was made.
    fn wait(&self, v: u64) -> bool {
        while self.flag.load(Ordering::Acquire) != v {
            if self.start.elapsed().as_secs_f64() > GIVE_UP_S {
                return false;
            }
            std::hint::spin_loop();
        }
        true
    }
}

/// Nanoseconds for one round trip of a cache line between two threads (the shortest of three
/// runs of 20,000 hand-offs through an atomic; 0 if they take over 50 ms).
pub fn core_round_trip_ns() -> f64 {
    const TRIPS: u64 = 20_000;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let b = Baton::new();
        let secs = std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..TRIPS {
                    if !b.wait(2 * i + 1) {
                        return;
                    }
                    b.pass(2 * i + 2);
                }
            });
            for i in 0..TRIPS {
                b.pass(2 * i + 1);
                if !b.wait(2 * i + 2) {
                    return f64::INFINITY;
                }
            }
            b.start.elapsed().as_secs_f64()
        });
        best = best.min(secs * 1e9 / TRIPS as f64);
    }
    if best.is_finite() {
        best
    } else {
        0.0
    }
}

/// Bytes each overwrite probe writes (2 MiB: a layer's signals or a Gram band's operands).
const REWRITE_BYTES: usize = 2 << 20;

/// Write bandwidth in GB/s (best of 8) of one thread overwriting [`REWRITE_BYTES`] that
/// another thread has just read, and of overwriting the same bytes after reading them
/// itself: `(handed_off, own)`. `handed_off` is 0 if the second thread did not run within
/// 50 ms.
pub fn core_rewrite_gbs() -> (f64, f64) {
    const REPS: u64 = 8;
    let buf = Mutex::new(vec![0u64; REWRITE_BYTES / 8]);
    let lock = || buf.lock().unwrap_or_else(|e| e.into_inner());
    let read = |v: &[u64]| black_box(v.iter().fold(0, |a, &x| a ^ x));
    let overwrite = |v: &mut [u64], r: u64| {
        let t = Instant::now();
        v.fill(r);
        black_box(&*v);
        t.elapsed().as_secs_f64()
    };
    let b = Baton::new();
    let handed_off = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..REPS {
                if !b.wait(2 * i + 1) {
                    return;
                }
                read(&lock());
                b.pass(2 * i + 2);
            }
        });
        let mut best = f64::INFINITY;
        for i in 0..REPS {
            b.pass(2 * i + 1);
            if !b.wait(2 * i + 2) {
                return f64::INFINITY;
            }
            best = best.min(overwrite(&mut lock(), i));
        }
        best
    });
    let mut own = f64::INFINITY;
    for i in 0..REPS {
        let mut v = lock();
        read(&v);
        own = own.min(overwrite(&mut v, i));
    }
    let gbs = |s: f64| if s.is_finite() { REWRITE_BYTES as f64 / s / 1e9 } else { 0.0 };
    (gbs(handed_off), gbs(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_round_trip_is_a_plausible_latency() {
        let ns = core_round_trip_ns();
        // 0 only if a hand-off stalled for 50 ms (an overloaded machine); else 10 ns .. 100 us.
        assert!(ns == 0.0 || (10.0..1e5).contains(&ns), "{ns}");
    }

    #[test]
    fn rewrite_bandwidths_are_plausible() {
        let (handed_off, own) = core_rewrite_gbs();
        // Writing 2 MiB takes more than 2 us (1 TB/s) and less than 20 ms (0.1 GB/s), even
        // on a loaded machine; the hand-off probe may give up (0).
        assert!((0.1..1e3).contains(&own), "{own}");
        assert!(handed_off == 0.0 || (0.1..1e3).contains(&handed_off), "{handed_off}");
    }
}
