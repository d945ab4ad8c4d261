//! The `ntk` command (see `ntk --help`).

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    ntk_cli::main_with_args(std::env::args_os())
}

/// glibc returns large freed blocks (mmap'd above 128 KiB .. 32 MiB) to the kernel, so every
/// empirical NTK call of a sweep or a benchmark page-faults its caches, activations and signals
/// in again (W2 f64: ~8,000 faults, ~5 ms of kernel time per call). Serving them from the heap
/// and keeping freed memory there makes repeated calls reuse it; the peak footprint is the same.
/// One arena for all threads: the worker threads' own arenas are 64 MiB heaps that these
/// settings do not fully govern, and in about half of the processes they returned memory, so
/// `ntk bench --workload W2` took 65k page faults instead of 25k and its forward phase 1.2-1.5
/// ms more per call (the engine allocates a few large buffers per call, so one arena costs no
/// contention).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
