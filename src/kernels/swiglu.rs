//! `swiglu.wgsl`: the SwiGLU activation of Llama-style MLPs, out = silu(gate) · up, and the
//! gradients of both of its inputs.

use crate::error::Result;
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, groups, u32_of};

/// Mirrors `struct Params` in swiglu.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// `swiglu.wgsl`.
pub const SHADER: ShaderDef =
    ShaderDef::text("swiglu.wgsl", include_str!("../../shaders/swiglu.wgsl"));
const PARAMS: usize = std::mem::size_of::<Params>();
/// SwiGLU forward: gate, up, out.
pub const FORWARD: KernelDef =
    KernelDef::new(&SHADER, "swiglu_forward", &[(1, R), (2, R), (3, W)], PARAMS);
/// SwiGLU backward: dout, gate, up, dgate, dup.
pub const BACKWARD: KernelDef = KernelDef::new(
    &SHADER,
    "swiglu_backward",
    &[(4, R), (1, R), (2, R), (5, W), (6, W)],
    PARAMS,
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&FORWARD, &BACKWARD];

fn launch(
    gpu: &Gpu,
    kernel: &'static KernelDef,
    n: usize,
    tensors: &[&Tensor],
) -> Result<Dispatch> {
    let params = Params {
        n: u32_of("length", n)?,
        _pad: [0; 3],
    };
    gpu.dispatch(kernel, &[], &params, tensors, groups_1d(groups(n, 256)?))
}

/// out = silu(gate) · up, silu(x) = x / (1 + exp(-x)); finite for any finite gate.
///   out, gate, up: (n,)
pub fn forward(gpu: &Gpu, out: &Tensor, gate: &Tensor, up: &Tensor) -> Result<Dispatch> {
    const OP: &str = "swiglu::forward";
    let n = gate.len();
    expect_len(OP, "up", up, n)?;
    expect_len(OP, "out", out, n)?;
    launch(gpu, &FORWARD, n, &[gate, up, out])
}

/// The gradients of [`forward`], written (not added): dgate = dout · up · silu'(gate),
/// dup = dout · silu(gate).
///   dgate, dup, dout, gate, up: (n,)
pub fn backward(
    gpu: &Gpu,
    dgate: &Tensor,
    dup: &Tensor,
    dout: &Tensor,
    gate: &Tensor,
    up: &Tensor,
) -> Result<Dispatch> {
    const OP: &str = "swiglu::backward";
    let n = gate.len();
    expect_len(OP, "up", up, n)?;
    expect_len(OP, "dout", dout, n)?;
    expect_len(OP, "dgate", dgate, n)?;
    expect_len(OP, "dup", dup, n)?;
    launch(gpu, &BACKWARD, n, &[dout, gate, up, dgate, dup])
}
