//! `layernorm.wgsl`: LayerNorm forward, and its input gradient (weights are frozen).

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Kernel, Tensor};

use super::{expect_len, groups, u32_of};

/// Mirrors `struct Params` in layernorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    c: u32,
    eps: f32,
    _pad: u32,
}

fn params(n: usize, c: usize, eps: f32) -> Result<Params> {
    Ok(Params {
        n: u32_of("rows", n)?,
        c: u32_of("C", c)?,
        eps,
        _pad: 0,
    })
}

/// out = layernorm(inp) · weight + bias; saves mean and rstd for backward.
///   out, inp: (N, C)   mean, rstd: (N,)   weight, bias: (C,)
pub fn forward(
    gpu: &Gpu,
    out: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    c: usize,
    eps: f32,
) -> Result<Dispatch> {
    const OP: &str = "layernorm::forward";
    let n = inp.len() / c.max(1);
    expect_len(OP, "inp", inp, n * c)?;
    expect_len(OP, "out", out, n * c)?;
    expect_len(OP, "mean", mean, n)?;
    expect_len(OP, "rstd", rstd, n)?;
    expect_len(OP, "weight", weight, c)?;
    expect_len(OP, "bias", bias, c)?;
    let t = [inp, weight, bias, out, mean, rstd];
    gpu.dispatch(
        Kernel::LayernormForward,
        &[],
        &params(n, c, eps)?,
        &t,
        [groups(n, 64)?, 1, 1],
    )
}

/// dinp += ∂layernorm/∂inp · dout, using the mean and rstd saved by [`forward`].
///   dinp, dout, inp: (N, C)   mean, rstd: (N,)   weight: (C,)
pub fn backward(
    gpu: &Gpu,
    dinp: &Tensor,
    dout: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    c: usize,
) -> Result<Dispatch> {
    const OP: &str = "layernorm::backward";
    let n = inp.len() / c.max(1);
    expect_len(OP, "inp", inp, n * c)?;
    expect_len(OP, "dinp", dinp, n * c)?;
    expect_len(OP, "dout", dout, n * c)?;
    expect_len(OP, "mean", mean, n)?;
    expect_len(OP, "rstd", rstd, n)?;
    expect_len(OP, "weight", weight, c)?;
    let t = [dout, inp, weight, mean, rstd, dinp];
    gpu.dispatch(
        Kernel::LayernormBackward,
        &[],
        &params(n, c, 0.0)?,
        &t,
        [groups(n, 64)?, 1, 1],
    )
}
