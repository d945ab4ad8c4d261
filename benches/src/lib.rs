//! Criterion benchmarks live in `benches/`; this library holds what several of them use.

use ntk_core::simd::MatRef;
use ntk_core::Real;

/// `dst = lhs * rhs` (row-major `dst`) through the `gemm` crate, single thread.
pub fn gemm_crate<T: Real>(dst: &mut [T], lhs: MatRef<'_, T>, rhs: MatRef<'_, T>) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    assert!(dst.len() >= m * n);
    let i = |x: usize| x as isize;
    // SAFETY: the views cover their slices (checked by MatRef), dst covers m x n and aliases
    // neither operand. gemm's strides are (column stride, row stride).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            i(n),
            false,
            lhs.data.as_ptr(),
            i(lhs.cs),
            i(lhs.rs),
            rhs.data.as_ptr(),
            i(rhs.cs),
            i(rhs.rs),
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
