//! A spinning thread team for fork-join regions with many short phases.
//!
//! The empirical NTK and a training step run dozens of parallel phases per call, each a few
//! tens of microseconds long (one per layer and pass). Between phases rayon's idle workers go
//! to sleep, and on a virtual machine waking a halted vCPU costs 10-30 us per phase (measured:
//! `ntk bench` W3, 10 layers, spent 0.1 ms of 0.17 ms in its `activations` phase on 2 threads
//! waiting for the second thread). A [`Team`] keeps its threads spinning between phases while
//! a region lasts: [`with_team`] starts `threads - 1` workers, the caller hands them
//! phases with [`Team::for_each`] / [`Team::try_for_each`] and works on the items itself; the
//! workers wait for the next phase for [`SPIN`] (spinning, then yielding the CPU), then sleep.
//!
//! Items are claimed in index order from one atomic counter; which thread runs an item never
//! changes what the item computes, so results do not depend on the thread count as long as each
//! item's result does not (the callers' fixed row blocks and bands).
//!
//! ```
//! use ntk_cli::team::with_team;
//! let mut rows = vec![[0u64; 4]; 8];
//! with_team(2, |team| {
//!     team.for_each(rows.iter_mut().enumerate(), |(i, r)| r.fill(i as u64 * 10));
//! });
//! assert_eq!(rows[3], [30; 4]);
//! ```

use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a worker waits for the next phase, spinning and then yielding, before it sleeps.
pub const SPIN: Duration = Duration::from_micros(200);

/// How long a wait spins before it starts yielding the CPU between looks (on a busy machine
/// the thread it waits for may need this CPU).
const PURE_SPIN: Duration = Duration::from_micros(20);

/// One look of a wait that started at `t`: spin, or yield once past [`PURE_SPIN`]; `false`
/// once [`SPIN`] has passed.
fn pause(t: Instant) -> bool {
    let e = t.elapsed();
    if e < PURE_SPIN {
        for _ in 0..32 {
            std::hint::spin_loop();
        }
    } else {
        std::thread::yield_now();
    }
    e < SPIN
}

/// Items per published batch (the claim counter holds 16 bits of item index).
const BATCH: usize = 1 << 15;

thread_local! {
    /// Index of this thread in the team it belongs to (0: the caller of [`with_team`]).
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// This thread's index in the current [`Team`] (0 is the thread that called [`with_team`]),
/// or `None` outside a team.
pub fn current_index() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// A phase: the item function, type-erased (it lives on the caller's stack while published).
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// The team's shared state.
pub struct Team {
    threads: usize,
    /// `epoch << 32 | items << 16 | next`: the current phase, its item count and the next
    /// unclaimed item, swapped together so that a worker can never claim an item of a phase
    /// that has ended.
    state: AtomicU64,
    /// The current phase's function (a `Job` behind a thin pointer), valid while it has an
    /// unfinished item.
    job: AtomicPtr<Job<'static>>,
    /// Items of the current phase finished.
    done: AtomicUsize,
    /// First panic payload of a phase, re-raised on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Workers sleeping (or about to) on `wake`.
    sleepers: AtomicUsize,
    /// Sleeping workers wait here for a new epoch.
    sleep: Mutex<()>,
    wake: Condvar,
}

const EXIT: u64 = u64::MAX;

impl Team {
    fn new(threads: usize) -> Self {
        Self {
            threads,
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on every item (in parallel, items claimed in order) and returns when all are done.
    ///
    /// # Panics
    /// Re-raises the first panic of an item, after every item has finished.
    pub fn for_each<W: Send>(&self, items: impl IntoIterator<Item = W>, f: impl Fn(W) + Sync) {
        let slots: Vec<Mutex<Option<W>>> = items.into_iter().map(|w| Mutex::new(Some(w))).collect();
        let run = |i: usize| {
            let w = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = w {
                f(w);
            }
        };
        for b in (0..slots.len()).step_by(BATCH) {
            let n = BATCH.min(slots.len() - b);
            self.phase(n, &|i| run(b + i));
        }
    }

    /// [`Self::for_each`] for fallible items: every item runs; returns the error of the
    /// lowest-indexed item that failed (the same error whatever the thread count).
    ///
    /// # Errors
    /// The first (by item index) error of `f`.
    pub fn try_for_each<W: Send, E: Send>(
        &self,
        items: impl IntoIterator<Item = W>,
        f: impl Fn(W) -> Result<(), E> + Sync,
    ) -> Result<(), E> {
        let first: Mutex<Option<(usize, E)>> = Mutex::new(None);
        self.for_each(items.into_iter().enumerate(), |(i, w)| {
            if let Err(e) = f(w) {
                let mut g = first.lock().unwrap_or_else(|e| e.into_inner());
                if g.as_ref().is_none_or(|(j, _)| i < *j) {
                    *g = Some((i, e));
                }
            }
        });
        match first.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Publishes a phase of `n` items (`n <= BATCH`), works on it and waits for its end.
    fn phase(&self, n: usize, job: Job<'_>) {
        if n == 0 {
            return;
        }
        if self.threads == 1 {
            (0..n).for_each(job);
            return;
        }
        // SAFETY: only the lifetime is erased. Workers dereference the pointer only after
        // claiming an unfinished item of this epoch, and this function does not return before
        // every item is done (`done == n`, panics caught), so `job` outlives every use.
        let job: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
        let slot = &job as *const Job<'static> as *mut Job<'static>;
        self.done.store(0, Ordering::Relaxed);
        self.job.store(slot, Ordering::Relaxed);
        let epoch = (self.state.load(Ordering::Relaxed) >> 32) + 1;
        self.state.store(epoch << 32 | (n as u64) << 16, Ordering::SeqCst);
        // A worker counts itself in `sleepers` before its last look at `state` (both SeqCst),
        // so either it sees this epoch or this sees it and wakes it.
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        self.work(epoch);
        let t = Instant::now();
        while self.done.load(Ordering::Acquire) < n {
            pause(t);
        }
        if let Some(p) = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::panic::resume_unwind(p);
        }
    }

    /// Claims and runs items of `epoch` until none is left.
    fn work(&self, epoch: u64) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let (e, n, next) = (s >> 32, (s >> 16) & 0xffff, s & 0xffff);
            if e != epoch || next >= n {
                return;
            }
            match self.state.compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    // SAFETY: item `next` of this epoch is claimed and unfinished, so the
                    // phase (and the job it published) is still live; see `phase`.
                    let job = unsafe { *self.job.load(Ordering::Acquire) };
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(next as usize)
                    }));
                    if let Err(p) = r {
                        self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
                    }
                    self.done.fetch_add(1, Ordering::Release);
                    s = self.state.load(Ordering::Acquire);
                }
                Err(now) => s = now,
            }
        }
    }

    /// A worker's loop: run each new phase, wait [`SPIN`] for the next one, then sleep.
    fn serve(&self) {
        let mut seen = 0;
        loop {
            let t = Instant::now();
            let mut s = self.state.load(Ordering::Acquire);
            while s >> 32 == seen && s != EXIT {
                if !pause(t) {
                    let g = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_add(1, Ordering::SeqCst);
                    s = self.state.load(Ordering::SeqCst);
                    if s >> 32 == seen && s != EXIT {
                        drop(self.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
                    }
                    self.sleepers.fetch_sub(1, Ordering::SeqCst);
                }
                s = self.state.load(Ordering::Acquire);
            }
            if s == EXIT {
                return;
            }
            seen = s >> 32;
            self.work(seen);
        }
    }

    fn exit(&self) {
        let _g = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        self.state.store(EXIT, Ordering::Release);
        self.wake.notify_all();
    }
}

/// Runs `f` with a team of `threads` threads: the caller and `threads - 1` workers, which are
/// jobs on the current rayon pool (so a team never oversubscribes the pool: a worker that is
/// busy elsewhere joins when it is free, and the caller meanwhile claims the items itself).
/// The workers end with `f`. `threads <= 1` runs every phase on the caller.
pub fn with_team<R>(threads: usize, f: impl FnOnce(&Team) -> R) -> R {
    let team = Team::new(threads.max(1));
    let prev = INDEX.with(|c| c.replace(Some(0)));
    let r = rayon::in_place_scope(|sc| {
        for i in 1..team.threads {
            let team = &team;
            sc.spawn(move |_| {
                let prev = INDEX.with(|c| c.replace(Some(i)));
                team.serve();
                INDEX.with(|c| c.set(prev));
            });
        }
        // Workers must exit even if `f` panics (the scope waits for them before unwinding on).
        struct Exit<'a>(&'a Team);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                self.0.exit();
            }
        }
        let _exit = Exit(&team);
        f(&team)
    });
    INDEX.with(|c| c.set(prev));
    r
}

/// [`with_team`] with one thread per thread of the current rayon pool.
pub fn with_pool_team<R>(f: impl FnOnce(&Team) -> R) -> R {
    with_team(rayon::current_num_threads(), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_for_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            let mut v = vec![0u32; 1000];
            with_team(threads, |team| {
                for round in 1..=50 {
                    team.for_each(v.chunks_mut(7), |c| c.iter_mut().for_each(|x| *x += round));
                }
            });
            assert!(v.iter().all(|&x| x == 50 * 51 / 2), "threads {threads}");
        }
    }

    #[test]
    fn workers_report_their_index_and_the_caller_is_zero() {
        let seen = Mutex::new(vec![]);
        with_team(3, |team| {
            assert_eq!(current_index(), Some(0));
            team.for_each(0..64, |_| {
                seen.lock().unwrap().push(current_index().unwrap());
                std::thread::sleep(Duration::from_micros(200));
            });
        });
        assert_eq!(current_index(), None);
        let seen = seen.into_inner().unwrap();
        assert!(seen.iter().all(|&i| i < 3) && seen.len() == 64);
    }

    #[test]
    fn the_lowest_indexed_error_is_returned() {
        let r = with_team(2, |team| {
            team.try_for_each(0..100usize, |i| if i % 10 == 7 { Err(i) } else { Ok(()) })
        });
        assert_eq!(r, Err(7));
        let ok: Result<(), ()> = with_team(2, |team| team.try_for_each(0..10, |_| Ok(())));
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn a_panicking_item_is_reraised_after_the_phase() {
        let done = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_team(2, |team| {
                team.for_each(0..20, |i| {
                    if i == 13 {
                        panic!("item 13");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                })
            })
        }));
        assert!(r.is_err());
        assert_eq!(done.load(Ordering::Relaxed), 19);
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_phase() {
        let mut v = [0u8; 64];
        with_team(2, |team| {
            team.for_each(v.chunks_mut(8), |c| c.fill(1));
            std::thread::sleep(SPIN * 5);
            team.for_each(v.chunks_mut(8), |c| c.iter_mut().for_each(|x| *x += 1));
        });
        assert!(v.iter().all(|&x| x == 2));
    }

    #[test]
    fn more_items_than_a_batch() {
        let count = AtomicUsize::new(0);
        with_team(2, |team| {
            team.for_each(0..BATCH * 2 + 5, |_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), BATCH * 2 + 5);
    }
}
