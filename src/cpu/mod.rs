//! Plain-loop CPU reference of every kernel, written for clarity, not speed (llm.c style).
//! Tests compare each GPU kernel against these on random data; benches quote them as a
//! baseline.
//!
//! One file per kernel, named like it: `cpu::<op>` checks `kernels::<op>` (`shaders/<op>.wgsl`),
//! with functions named like the launchers (`cpu::layernorm::forward` for
//! `kernels::layernorm::forward`).
//!
//! Accumulation is in f64 where a sum runs over a long dimension, so the reference is more
//! accurate than the kernels it checks.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod dora;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod lora;
pub mod matmul;
pub mod merge;
pub mod qmatmul;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
