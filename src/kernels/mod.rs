//! One small launcher per WGSL kernel. Each checks its operands' shapes, mirrors its shader's
//! `Params` struct, and returns [`Dispatch`](crate::gpu::Dispatch)es that are built once and
//! replayed by a [`Recording`](crate::gpu::Recording) or [`Gpu::run`](crate::gpu::Gpu::run).
//!
//! Signatures follow llm.c: outputs first, then inputs, then the shape.

pub mod adamw;
pub mod dropout;
pub mod lora;
pub mod matmul;
pub mod merge;
pub mod peak;
pub mod reduce;

use crate::error::{Error, Result};
use crate::gpu::Tensor;

/// Check that `t` holds exactly `len` elements.
pub(crate) fn expect_len(op: &'static str, what: &str, t: &Tensor, len: usize) -> Result<()> {
    if t.len() != len {
        return Err(Error::shape(
            op,
            format!(
                "{what} ({}) has {} elements (shape {:?}), expected {len}",
                t.name(),
                t.len(),
                t.shape()
            ),
        ));
    }
    Ok(())
}

/// `n.div_ceil(d)` as the u32 a dispatch needs.
pub(crate) fn groups(n: usize, d: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(d)).map_err(|_| {
        Error::shape(
            "dispatch",
            format!("{n} elements is too many for one dispatch"),
        )
    })
}

/// A size as the u32 a WGSL `Params` field holds.
pub(crate) fn u32_of(name: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(name, v, "must fit in 32 bits"))
}
