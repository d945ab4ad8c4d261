//! A firmware-style use of the core: fixed-size network, `static` buffers sized by `const fn`s,
//! and a global allocator that counts allocations to prove that forward, backprop and the
//! empirical NTK never touch the heap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ntk_core::backward::{loss_and_gradient, param_gradient, param_gradient_scratch, Loss};
use ntk_core::forward::{cache_len, forward, forward_scratch, output};
use ntk_core::ntk::{empirical_ntk, empirical_ntk_scratch, OutputMode};
use ntk_core::spec::param_count;
use ntk_core::{Activation, Parameterization, Spec};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// Set on the test's own thread while the core runs: the harness's other threads (slow-test
    /// reports, output capture) may allocate meanwhile, and must not count.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WIDTHS: [usize; 4] = [4, 16, 16, 2];
const N: usize = 8;
const P: usize = param_count(&WIDTHS, true);

struct Buffers {
    params: [f32; P],
    grad: [f32; P],
    cache: [f32; cache_len(&WIDTHS, N)],
    fscratch: [f32; forward_scratch(&WIDTHS, N)],
    gscratch: [f32; param_gradient_scratch(&WIDTHS, N)],
    nscratch: [f32; empirical_ntk_scratch(&WIDTHS, N, None)],
    theta: [f32; N * 2 * N * 2],
}

static BUFFERS: Mutex<Buffers> = Mutex::new(Buffers {
    params: [0.0; P],
    grad: [0.0; P],
    cache: [0.0; cache_len(&WIDTHS, N)],
    fscratch: [0.0; forward_scratch(&WIDTHS, N)],
    gscratch: [0.0; param_gradient_scratch(&WIDTHS, N)],
    nscratch: [0.0; empirical_ntk_scratch(&WIDTHS, N, None)],
    theta: [0.0; N * 2 * N * 2],
});

#[test]
fn static_buffers_and_no_heap() {
    let mut guard = BUFFERS.lock().unwrap();
    let b = &mut *guard;
    let x: [f32; N * 4] = core::array::from_fn(|i| ((i * 7 % 11) as f32 - 5.0) * 0.2);
    let y: [f32; N * 2] = core::array::from_fn(|i| (i % 2) as f32);
    let mut g = [0.0f32; N * 2];
    let before = ALLOCS.load(Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    let spec = Spec::new(&WIDTHS, Activation::Gelu, 1.5, 0.1, true, Parameterization::Ntk).unwrap();
    spec.init(&mut b.params, 3).unwrap();
    forward(&spec, &b.params, &x, N, &mut b.cache, &mut b.fscratch).unwrap();
    let loss = loss_and_gradient(Loss::Mse, &mut g, output(&spec, &b.cache, N), &y, N);
    param_gradient(&spec, &b.params, &x, N, &b.cache, &g, &mut b.grad, &mut b.gscratch).unwrap();
    empirical_ntk(&spec, &b.params, &mut b.theta, &x, None, OutputMode::Full, &mut b.nscratch)
        .unwrap();
    // Short scratch is an error, not a panic.
    let short = empirical_ntk(
        &spec,
        &b.params,
        &mut b.theta,
        &x,
        None,
        OutputMode::Full,
        &mut b.nscratch[..empirical_ntk_scratch(&WIDTHS, N, None) - 1],
    );
    COUNTING.with(|c| c.set(false));
    let after = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(after, before, "the core allocated");
    assert!(loss.is_finite() && loss > 0.0);
    assert!(b.grad.iter().any(|&v| v != 0.0));
    assert!(b.theta[0] > 0.0);
    assert!(matches!(short, Err(ntk_core::Error::ShortBuffer { buffer: "scratch", .. })));
}
