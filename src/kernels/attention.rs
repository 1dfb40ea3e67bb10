//! `attention.wgsl`: causal multi-head self-attention and its backward.

use crate::error::{Error, Result};
use crate::gpu::{groups_1d, Dispatch, Gpu, Kernel, Tensor};

use super::{expect_len, groups, u32_of};

/// Largest head size the kernels support.
pub const MAX_HEAD_SIZE: usize = 128;

/// Shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Channels (n_embd).
    pub c: usize,
    /// Heads.
    pub nh: usize,
}

/// Mirrors `struct Params` in attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    b: u32,
    t: u32,
    c: u32,
    nh: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Uniform parameters, the head-size override constant and the workgroup grid.
type Prepared = (Params, [(&'static str, f64); 1], [u32; 3]);

impl AttentionShape {
    fn prepare(&self) -> Result<Prepared> {
        let AttentionShape { b, t, c, nh } = *self;
        if nh == 0 || !c.is_multiple_of(nh) || c / nh > MAX_HEAD_SIZE {
            return Err(Error::shape(
                "attention",
                format!("C = {c} must split into {nh} heads of at most {MAX_HEAD_SIZE}"),
            ));
        }
        let hs = c / nh;
        let params = Params {
            b: u32_of("B", b)?,
            t: u32_of("T", t)?,
            c: u32_of("C", c)?,
            nh: u32_of("heads", nh)?,
            scale: 1.0 / (hs as f32).sqrt(),
            _pad: [0; 3],
        };
        Ok((
            params,
            [("HS", hs as f64)],
            groups_1d(groups(b * nh * t, 64)?),
        ))
    }
}

/// out = softmax(q kᵀ / √hs, causal) v per head; saves the probabilities.
///   out: (B, T, C)   att: (B, NH, T, T)   qkv: (B, T, 3C)
pub fn forward(
    gpu: &Gpu,
    out: &Tensor,
    att: &Tensor,
    qkv: &Tensor,
    s: &AttentionShape,
) -> Result<Dispatch> {
    const OP: &str = "attention::forward";
    let AttentionShape { b, t, c, nh } = *s;
    expect_len(OP, "qkv", qkv, b * t * 3 * c)?;
    expect_len(OP, "out", out, b * t * c)?;
    expect_len(OP, "att", att, b * nh * t * t)?;
    let (params, hs, grid) = s.prepare()?;
    gpu.dispatch(
        Kernel::AttentionForward,
        &hs,
        &params,
        &[qkv, out, att],
        grid,
    )
}

/// dqkv = ∂attention/∂qkv · dout (written, not added), two dispatches; `dpreatt` is scratch.
///   dqkv: (B, T, 3C)   dpreatt: (B, NH, T, T)   dout: (B, T, C)   qkv, att as in [`forward`]
pub fn backward(
    gpu: &Gpu,
    dqkv: &Tensor,
    dpreatt: &Tensor,
    dout: &Tensor,
    qkv: &Tensor,
    att: &Tensor,
    s: &AttentionShape,
) -> Result<[Dispatch; 2]> {
    const OP: &str = "attention::backward";
    let AttentionShape { b, t, c, nh } = *s;
    expect_len(OP, "qkv", qkv, b * t * 3 * c)?;
    expect_len(OP, "dqkv", dqkv, b * t * 3 * c)?;
    expect_len(OP, "dout", dout, b * t * c)?;
    expect_len(OP, "att", att, b * nh * t * t)?;
    expect_len(OP, "dpreatt", dpreatt, b * nh * t * t)?;
    let (params, hs, grid) = s.prepare()?;
    Ok([
        gpu.dispatch(
            Kernel::AttentionBackwardRows,
            &hs,
            &params,
            &[dout, qkv, att, dpreatt, dqkv],
            grid,
        )?,
        gpu.dispatch(
            Kernel::AttentionBackwardCols,
            &hs,
            &params,
            &[dout, qkv, att, dpreatt, dqkv],
            grid,
        )?,
    ])
}
