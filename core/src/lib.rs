//! # ntk-core
//!
//! The `no_std`, allocation-free numerical core of ntk: fully connected networks with manual
//! backprop, the empirical Neural Tangent Kernel by structured derivatives, infinite-width
//! NNGP / NTK kernels and mean-field phase theory.
//!
//! Sizes come from `const fn`s, buffers and scratch are caller-owned slices, and data problems
//! are returned as [`Error`]; shape mistakes are programmer errors and panic (documented under
//! `# Panics`).
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod activation;
pub mod backward;
pub mod dispersion;
pub mod error;
pub mod forward;
pub mod kernel;
pub mod linearized;
pub mod ntk;
pub mod phase;
pub mod real;
pub mod rng;
pub mod scaled;
pub mod simd;
pub mod spec;
pub mod stats;
pub mod train;

pub use activation::Activation;
pub use error::{Error, Pass};
pub use real::Real;
pub use spec::{Parameterization, Spec};
