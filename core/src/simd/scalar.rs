//! Scalar twins of the SIMD kernels: plain loops, the test oracles.

use super::{MatMut, MatRef, Part};
use core::ops::{Add, Mul};

/// Scalar twin of [`super::gemm`].
pub fn gemm<T>(mut dst: MatMut<'_, T>, alpha: T, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, beta: T)
where
    T: Copy + Default + PartialEq + Add<Output = T> + Mul<Output = T>,
{
    let zero = T::default();
    for i in 0..dst.rows {
        for j in 0..dst.cols {
            let mut acc = zero;
            for p in 0..lhs.cols {
                acc = acc + lhs.at(i, p) * rhs.at(p, j);
            }
            let out = dst.at_mut(i, j);
            *out = if beta == zero { alpha * acc } else { beta * *out + alpha * acc };
        }
    }
}

/// Scalar twin of [`super::gram_hadamard`] (fills every entry, whatever `part`).
#[allow(clippy::too_many_arguments)]
pub fn gram_hadamard<T>(
    mut dst: MatMut<'_, T>,
    a1: MatRef<'_, T>,
    a2: MatRef<'_, T>,
    d1: MatRef<'_, T>,
    d2: MatRef<'_, T>,
    c: T,
    s: T,
    part: Part,
) where
    T: Copy + Default + Add<Output = T> + Mul<Output = T>,
{
    let _ = part;
    for i in 0..dst.rows {
        for j in 0..dst.cols {
            let mut ga = T::default();
            for p in 0..a1.cols {
                ga = ga + a1.at(i, p) * a2.at(j, p);
            }
            let mut gd = T::default();
            for p in 0..d1.cols {
                gd = gd + d1.at(i, p) * d2.at(j, p);
            }
            let out = dst.at_mut(i, j);
            *out = *out + (c * ga + s) * gd;
        }
    }
}

/// Scalar twin of [`super::dot`].
pub fn dot<T>(a: &[T], b: &[T]) -> T
where
    T: Copy + Default + Add<Output = T> + Mul<Output = T>,
{
    a.iter().zip(b).fold(T::default(), |acc, (&x, &y)| acc + x * y)
}
