//! `elementwise.wgsl`: gelu_new and the residual add.

use crate::error::Result;
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, groups, u32_of};

/// Mirrors `struct Params` in elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// `elementwise.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::text(
    "elementwise.wgsl",
    include_str!("../../shaders/elementwise.wgsl"),
);
const PARAMS: usize = std::mem::size_of::<Params>();
/// gelu_new forward: inp, out.
pub const GELU_FORWARD: KernelDef =
    KernelDef::new(&SHADER, "gelu_forward", &[(1, R), (2, W)], PARAMS);
/// gelu_new backward: dout, inp, dinp.
pub const GELU_BACKWARD: KernelDef =
    KernelDef::new(&SHADER, "gelu_backward", &[(3, R), (1, R), (4, W)], PARAMS);
/// out = a + b.
pub const ADD_FORWARD: KernelDef =
    KernelDef::new(&SHADER, "add_forward", &[(5, R), (6, R), (2, W)], PARAMS);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&GELU_FORWARD, &GELU_BACKWARD, &ADD_FORWARD];

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

/// out = gelu_new(inp).   out, inp: (n,)
pub fn gelu_forward(gpu: &Gpu, out: &Tensor, inp: &Tensor) -> Result<Dispatch> {
    expect_len("gelu::forward", "out", out, inp.len())?;
    launch(gpu, &GELU_FORWARD, inp.len(), &[inp, out])
}

/// dinp = gelu_new'(inp) · dout.   dinp, dout, inp: (n,)
pub fn gelu_backward(gpu: &Gpu, dinp: &Tensor, dout: &Tensor, inp: &Tensor) -> Result<Dispatch> {
    expect_len("gelu::backward", "dinp", dinp, inp.len())?;
    expect_len("gelu::backward", "dout", dout, inp.len())?;
    launch(gpu, &GELU_BACKWARD, inp.len(), &[dout, inp, dinp])
}

/// out = a + b.   out, a, b: (n,)
pub fn add(gpu: &Gpu, out: &Tensor, a: &Tensor, b: &Tensor) -> Result<Dispatch> {
    expect_len("add", "b", b, a.len())?;
    expect_len("add", "out", out, a.len())?;
    launch(gpu, &ADD_FORWARD, a.len(), &[a, b, out])
}
