//! Buffers kept between calls: the engine's pools and per-thread scratch are taken from here
//! and given back when a call ends, so repeated calls (a sweep, `ntk bench`) neither clear
//! tens of megabytes with `calloc` nor fault their pages in again (W2 `f64`, 2 threads: 1.4 ms
//! of a 30 ms call). Buffers are kept only while a [`Keep`] guard lives (commands that compute
//! many kernels hold one); otherwise a given buffer is freed, so a one-shot command's later
//! allocations reuse its memory. A request larger than every kept buffer of its type frees
//! those (a growing sweep keeps only its latest sizes). The caller must write every element
//! before reading it: a recycled buffer holds the values of its last use (NaN in debug builds,
//! so that a stale read shows).

use std::any::Any;
use std::sync::Mutex;

use ntk_core::Real;

/// Fewest buffers kept (of all types); past the limit the smallest is dropped. The limit is
/// this or the pool's threads plus 4 (a pool, a temporary and one scratch per thread).
const KEPT: usize = 8;

/// Kept buffers (`Vec<f32>` or `Vec<f64>`) and the live [`Keep`] guards.
struct Store {
    bufs: Vec<Box<dyn Any + Send>>,
    keepers: usize,
}

static STORE: Mutex<Store> = Mutex::new(Store { bufs: Vec::new(), keepers: 0 });

fn store() -> std::sync::MutexGuard<'static, Store> {
    STORE.lock().unwrap_or_else(|e| e.into_inner())
}

/// While one lives, [`give`] keeps buffers; when the last one goes, the kept ones are freed.
#[must_use = "buffers are kept only while the guard lives"]
pub struct Keep(());

impl Keep {
    /// Starts keeping buffers.
    pub fn new() -> Self {
        store().keepers += 1;
        Self(())
    }
}

impl Default for Keep {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        let mut s = store();
        s.keepers -= 1;
        if s.keepers == 0 {
            s.bufs.clear();
        }
    }
}

impl Store {
    /// The smallest kept buffer of `T` that holds `len` elements, with length `len`; when none
    /// does, the kept buffers of `T` are dropped.
    fn take<T: Real>(&mut self, len: usize) -> Option<Vec<T>> {
        let best = (self.bufs.iter().enumerate())
            .filter_map(|(i, b)| b.downcast_ref::<Vec<T>>().map(|v| (i, v.capacity())))
            .filter(|&(_, cap)| cap >= len)
            .min_by_key(|&(_, cap)| cap);
        let Some((i, _)) = best else {
            self.bufs.retain(|b| !b.is::<Vec<T>>());
            return None;
        };
        let mut v = *self.bufs.swap_remove(i).downcast::<Vec<T>>().ok()?;
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, T::ZERO);
        }
        if cfg!(debug_assertions) {
            v.fill(T::from_f64(f64::NAN));
        }
        Some(v)
    }

    /// Keeps `v` (while a guard lives), dropping the smallest buffer past `limit` buffers.
    fn give<T: Real>(&mut self, v: Vec<T>, limit: usize) {
        if v.capacity() == 0 || self.keepers == 0 {
            return;
        }
        self.bufs.push(Box::new(v));
        if self.bufs.len() > limit {
            let bytes = |b: &Box<dyn Any + Send>| {
                let f32s = b.downcast_ref::<Vec<f32>>().map(|v| v.capacity() * 4);
                f32s.or_else(|| b.downcast_ref::<Vec<f64>>().map(|v| v.capacity() * 8))
            };
            let smallest = (0..self.bufs.len()).min_by_key(|&i| bytes(&self.bufs[i]).unwrap_or(0));
            self.bufs.swap_remove(smallest.unwrap_or(0));
        }
    }
}

/// A buffer of `len` elements: the smallest kept one that holds them (contents unspecified),
/// else a new zeroed one.
pub fn take<T: Real>(len: usize) -> Vec<T> {
    let kept = store().take(len);
    kept.unwrap_or_else(|| vec![T::ZERO; len])
}

/// Keeps `v` for a later [`take`] while a [`Keep`] guard lives; frees it otherwise.
pub fn give<T: Real>(v: Vec<T>) {
    let limit = KEPT.max(rayon::current_num_threads() + 4);
    store().give(v, limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> Store {
        Store { bufs: Vec::new(), keepers: 1 }
    }

    #[test]
    fn the_smallest_buffer_that_fits_is_taken_with_the_asked_length() {
        let mut s = kept();
        assert!(s.take::<f64>(10).is_none());
        for len in [100, 1000, 500] {
            s.give(vec![1.0f64; len], KEPT);
        }
        s.give(vec![1.0f32; 2000], KEPT);
        let v = s.take::<f64>(400).unwrap();
        assert_eq!((v.len(), v.capacity()), (400, 500));
        assert_eq!(v[0].is_nan(), cfg!(debug_assertions));
        let v = s.take::<f64>(800).unwrap();
        assert_eq!((v.len(), v.capacity()), (800, 1000));
        assert!(s.take::<f64>(101).is_none(), "only the 100 is left, and now dropped");
        assert_eq!(s.bufs.len(), 1, "the f32 buffer stays");
        let v = s.take::<f32>(2000).unwrap();
        assert_eq!(v.len(), 2000);
    }

    #[test]
    fn at_most_limit_buffers_stay_the_smallest_goes_and_none_without_a_guard() {
        let mut s = kept();
        for len in 1..=KEPT + 1 {
            s.give(vec![0.0f32; 10 * len], KEPT);
        }
        assert_eq!(s.bufs.len(), KEPT);
        assert!(s.take::<f32>(1).is_some_and(|v| v.capacity() == 20), "10 was dropped");
        s.give(Vec::<f64>::new(), KEPT);
        assert_eq!(s.bufs.len(), KEPT - 1, "empty buffers are not kept");
        s.keepers = 0;
        s.give(vec![0.0f64; 5], KEPT);
        assert_eq!(s.bufs.len(), KEPT - 1, "without a guard nothing is kept");
    }
}
