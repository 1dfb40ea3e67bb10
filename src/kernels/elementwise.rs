//! `elementwise.wgsl`: gelu_new and the residual add.

use crate::error::Result;
use crate::gpu::{groups_1d, Dispatch, Gpu, Kernel, Tensor};

use super::{expect_len, groups, u32_of};

/// Mirrors `struct Params` in elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    _pad: [u32; 3],
}

fn launch(gpu: &Gpu, kernel: Kernel, n: usize, tensors: &[&Tensor]) -> Result<Dispatch> {
    let params = Params {
        n: u32_of("length", n)?,
        _pad: [0; 3],
    };
    gpu.dispatch(kernel, &[], &params, tensors, groups_1d(groups(n, 256)?))
}

/// out = gelu_new(inp).   out, inp: (n,)
pub fn gelu_forward(gpu: &Gpu, out: &Tensor, inp: &Tensor) -> Result<Dispatch> {
    expect_len("gelu::forward", "out", out, inp.len())?;
    launch(gpu, Kernel::GeluForward, inp.len(), &[inp, out])
}

/// dinp = gelu_new'(inp) · dout.   dinp, dout, inp: (n,)
pub fn gelu_backward(gpu: &Gpu, dinp: &Tensor, dout: &Tensor, inp: &Tensor) -> Result<Dispatch> {
    expect_len("gelu::backward", "dinp", dinp, inp.len())?;
    expect_len("gelu::backward", "dout", dout, inp.len())?;
    launch(gpu, Kernel::GeluBackward, inp.len(), &[dout, inp, dinp])
}

/// out = a + b.   out, a, b: (n,)
pub fn add(gpu: &Gpu, out: &Tensor, a: &Tensor, b: &Tensor) -> Result<Dispatch> {
    expect_len("add", "b", b, a.len())?;
    expect_len("add", "out", out, a.len())?;
    launch(gpu, Kernel::AddForward, a.len(), &[a, b, out])
}
