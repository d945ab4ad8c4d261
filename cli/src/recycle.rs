//! Buffers kept between calls: the engine's pools and per-thread scratch are taken from here
//! and given back when a call ends, so repeated calls (a sweep, `ntk bench`) neither clear
//! tens of megabytes with `calloc` nor fault their pages in again (W2 `f64`, 2 threads: 1.4 ms
//! of a 30 ms call). Buffers are kept only while a [`Keep`] guard lives (commands that compute
//! many kernels hold one); otherwise a given buffer is freed, so a one-shot command's later
//! allocations reuse its memory. The caller must write every element before reading it: a
//! recycled buffer holds the values of its last use (NaN in debug builds, so that a stale read
//! shows).

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ntk_core::Real;

/// Most buffers kept (of all types); past it the smallest is dropped.
const KEPT: usize = 8;

/// Kept buffers, `Vec<f32>` or `Vec<f64>`.
struct Store(Vec<Box<dyn Any + Send>>);

static STORE: Mutex<Store> = Mutex::new(Store(Vec::new()));

/// Live [`Keep`] guards.
static KEEPERS: AtomicUsize = AtomicUsize::new(0);

/// While one lives, [`give`] keeps buffers; when the last one goes, the kept ones are freed.
#[must_use = "buffers are kept only while the guard lives"]
pub struct Keep(());

impl Keep {
    /// Starts keeping buffers.
    pub fn new() -> Self {
        KEEPERS.fetch_add(1, Ordering::SeqCst);
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
        if KEEPERS.fetch_sub(1, Ordering::SeqCst) == 1 {
            STORE.lock().unwrap_or_else(|e| e.into_inner()).0.clear();
        }
    }
}

impl Store {
    /// The smallest kept buffer of `T` that holds `len` elements, with length `len`.
    fn take<T: Real>(&mut self, len: usize) -> Option<Vec<T>> {
        let (i, _) = (self.0.iter().enumerate())
            .filter_map(|(i, b)| b.downcast_ref::<Vec<T>>().map(|v| (i, v.capacity())))
            .filter(|&(_, cap)| cap >= len)
            .min_by_key(|&(_, cap)| cap)?;
        let mut v = *self.0.swap_remove(i).downcast::<Vec<T>>().ok()?;
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

    /// Keeps `v`, dropping the smallest buffer when more than [`KEPT`] are kept.
    fn give<T: Real>(&mut self, v: Vec<T>) {
        if v.capacity() == 0 {
            return;
        }
        self.0.push(Box::new(v));
        if self.0.len() > KEPT {
            let bytes = |b: &Box<dyn Any + Send>| {
                let f32s = b.downcast_ref::<Vec<f32>>().map(|v| v.capacity() * 4);
                f32s.or_else(|| b.downcast_ref::<Vec<f64>>().map(|v| v.capacity() * 8))
            };
            let smallest = (0..self.0.len()).min_by_key(|&i| bytes(&self.0[i]).unwrap_or(0));
            self.0.swap_remove(smallest.unwrap_or(0));
        }
    }
}

/// A buffer of `len` elements: the smallest kept one that holds them (contents unspecified),
/// else a new zeroed one.
pub fn take<T: Real>(len: usize) -> Vec<T> {
    let kept = STORE.lock().unwrap_or_else(|e| e.into_inner()).take(len);
    kept.unwrap_or_else(|| vec![T::ZERO; len])
}

/// Keeps `v` for a later [`take`] while a [`Keep`] guard lives; frees it otherwise.
pub fn give<T: Real>(v: Vec<T>) {
    if KEEPERS.load(Ordering::SeqCst) > 0 {
        STORE.lock().unwrap_or_else(|e| e.into_inner()).give(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_buffer_that_fits_is_taken_with_the_asked_length() {
        let mut s = Store(Vec::new());
        assert!(s.take::<f64>(10).is_none());
        for len in [100, 1000, 500] {
            s.give(vec![1.0f64; len]);
        }
        s.give(vec![1.0f32; 2000]);
        let v = s.take::<f64>(400).unwrap();
        assert_eq!((v.len(), v.capacity()), (400, 500));
        assert_eq!(v[0].is_nan(), cfg!(debug_assertions));
        let v = s.take::<f64>(800).unwrap();
        assert_eq!((v.len(), v.capacity()), (800, 1000));
        assert!(s.take::<f64>(101).is_none(), "only the 100 is left");
        let v = s.take::<f32>(2000).unwrap();
        assert_eq!(v.len(), 2000);
    }

    #[test]
    fn at_most_kept_buffers_stay_and_the_smallest_goes() {
        let mut s = Store(Vec::new());
        for len in 1..=KEPT + 1 {
            s.give(vec![0.0f32; 10 * len]);
        }
        assert_eq!(s.0.len(), KEPT);
        assert!(s.take::<f32>(1).is_some_and(|v| v.capacity() == 20), "10 was dropped");
        s.give(Vec::<f64>::new());
        assert_eq!(s.0.len(), KEPT - 1, "empty buffers are not kept");
    }
}
