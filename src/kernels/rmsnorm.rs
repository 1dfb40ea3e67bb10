//! `rmsnorm.wgsl`: RMSNorm forward (Llama's, as transformers computes it in f32), and its input
//! gradient (the weight is frozen). The same kernels serve Qwen3's per-head q_norm / k_norm
//! (rows = tokens·heads, C = head size) and the model norm.
//!
//! Rows are spread over threads as the `Gpu`'s
//! [`Variants::layernorm`](super::Variants::layernorm) says: the choice between one thread per
//! row and one workgroup per row is the same as for LayerNorm.

use crate::error::Result;
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, u32_of};

/// Mirrors `struct Params` in rmsnorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    c: u32,
    eps: f32,
    accumulate: u32,
}

/// `rmsnorm.wgsl`.
pub const SHADER: ShaderDef =
    ShaderDef::text("rmsnorm.wgsl", include_str!("../../shaders/rmsnorm.wgsl"));
const PARAMS: usize = std::mem::size_of::<Params>();
/// RMSNorm forward: inp, weight, out, rstd.
pub const FORWARD: KernelDef = KernelDef::new(
    &SHADER,
    "rmsnorm_forward",
    &[(1, R), (2, R), (3, W), (4, W)],
    PARAMS,
);
/// RMSNorm backward (input gradient only): dout, inp, weight, rstd, dinp.
pub const BACKWARD: KernelDef = KernelDef::new(
    &SHADER,
    "rmsnorm_backward",
    &[(5, R), (1, R), (2, R), (6, R), (7, W)],
    PARAMS,
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&FORWARD, &BACKWARD];

fn params(n: usize, c: usize, eps: f32, accumulate: bool) -> Result<Params> {
    Ok(Params {
        n: u32_of("rows", n)?,
        c: u32_of("C", c)?,
        eps,
        accumulate: accumulate as u32,
    })
}

/// out = inp · rsqrt(mean(inp²) + eps) · weight over each row of `c` elements; saves rstd =
/// rsqrt(mean(inp²) + eps) for [`backward`]. Rows n = inp.len() / c.
///   out, inp: (n, c)   rstd: (n,)   weight: (c,)
pub fn forward(
    gpu: &Gpu,
    out: &Tensor,
    rstd: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    c: usize,
    eps: f32,
) -> Result<Dispatch> {
    const OP: &str = "rmsnorm::forward";
    let n = inp.len() / c.max(1);
    expect_len(OP, "inp", inp, n * c)?;
    expect_len(OP, "out", out, n * c)?;
    expect_len(OP, "rstd", rstd, n)?;
    expect_len(OP, "weight", weight, c)?;
    let t = [inp, weight, out, rstd];
    let (constants, grid) = gpu.variants().layernorm.launch(n)?;
    gpu.dispatch(&FORWARD, &constants, &params(n, c, eps, false)?, &t, grid)
}

/// The input gradient of [`forward`] (the weight is frozen), using the rstd it saved:
/// dinp = grad when `accumulate` is false, dinp += grad when it is true (a residual branch
/// adding into the stream's gradient).
///   dinp, dout, inp: (n, c)   rstd: (n,)   weight: (c,)
pub fn backward(
    gpu: &Gpu,
    dinp: &Tensor,
    dout: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
    c: usize,
    accumulate: bool,
) -> Result<Dispatch> {
    const OP: &str = "rmsnorm::backward";
    let n = inp.len() / c.max(1);
    expect_len(OP, "inp", inp, n * c)?;
    expect_len(OP, "dinp", dinp, n * c)?;
    expect_len(OP, "dout", dout, n * c)?;
    expect_len(OP, "rstd", rstd, n)?;
    expect_len(OP, "weight", weight, c)?;
    let t = [dout, inp, weight, rstd, dinp];
    let (constants, grid) = gpu.variants().layernorm.launch(n)?;
    gpu.dispatch(
        &BACKWARD,
        &constants,
        &params(n, c, 0.0, accumulate)?,
        &t,
        grid,
    )
}
