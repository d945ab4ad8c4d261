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

    /// `reps` hand-offs with a second thread: in hand-off `i` the caller passes the baton, the
    /// second thread runs `theirs(i)` and passes it back, then the caller runs `mine(i)`.
    /// Returns the seconds since the baton was made, at the caller's last hand-off, or `None`
    /// if either side gave up.
    fn relay(
        &self,
        reps: u64,
        theirs: impl Fn(u64) + Sync,
        mut mine: impl FnMut(u64),
    ) -> Option<f64> {
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..reps {
                    if !self.wait(2 * i + 1) {
                        return;
                    }
                    theirs(i);
                    self.pass(2 * i + 2);
                }
            });
            for i in 0..reps {
                self.pass(2 * i + 1);
                if !self.wait(2 * i + 2) {
                    return None;
                }
                mine(i);
            }
            Some(self.start.elapsed().as_secs_f64())
        })
    }
}

/// Nanoseconds for one round trip of a cache line between two threads (the shortest of three
/// runs of 20,000 hand-offs through an atomic; 0 if they take over 50 ms).
pub fn core_round_trip_ns() -> f64 {
    const TRIPS: u64 = 20_000;
    (0..3)
        .filter_map(|_| Baton::new().relay(TRIPS, |_| {}, |_| {}))
        .map(|secs| secs * 1e9 / TRIPS as f64)
        .reduce(f64::min)
        .unwrap_or(0.0)
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
    let mut handed_off = f64::INFINITY;
    let mine = |i| handed_off = handed_off.min(overwrite(&mut lock(), i));
    if Baton::new().relay(REPS, |_| _ = read(&lock()), mine).is_none() {
        handed_off = f64::INFINITY;
    }
    let mut own = f64::INFINITY;
    for i in 0..REPS {
        let mut v = lock();
        read(&v);
        own = own.min(overwrite(&mut v, i));
    }
    let gbs = |s: f64| if s.is_finite() { REWRITE_BYTES as f64 / s / 1e9 } else { 0.0 };
    (gbs(handed_off), gbs(own))
}

/// Both probes, as `ntk bench` and the train bench report them with each two-thread run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Placement {
    /// [`core_round_trip_ns`].
    pub round_trip_ns: f64,
    /// [`core_rewrite_gbs`]: overwriting what the other thread has just read.
    pub handoff_rewrite_gbs: f64,
    /// [`core_rewrite_gbs`]: overwriting what only the writer has read.
    pub own_rewrite_gbs: f64,
}

impl Placement {
    /// Both probes with `threads > 1`; all zero with one thread (nothing is handed off).
    pub fn measure(threads: usize) -> Self {
        if threads < 2 {
            return Self::default();
        }
        let round_trip_ns = core_round_trip_ns();
        let (handoff_rewrite_gbs, own_rewrite_gbs) = core_rewrite_gbs();
        Self { round_trip_ns, handoff_rewrite_gbs, own_rewrite_gbs }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "core round trip {:.0} ns, hand-off rewrite {:.0} GB/s (own {:.0})",
            self.round_trip_ns, self.handoff_rewrite_gbs, self.own_rewrite_gbs
        )
    }
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
