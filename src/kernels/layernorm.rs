//! `layernorm.wgsl`: LayerNorm forward, and its input gradient (weights are frozen).

use crate::error::Result;
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, groups, u32_of};

/// Override constants and grid of a launch.
type Launch = (Vec<(&'static str, f64)>, [u32; 3]);

/// How rows are spread over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayernormVariant {
    /// One thread per row: no barriers (CPU adapters).
    Row,
    /// One 64-thread workgroup per row with tree reductions (GPUs: B·T rows alone are too
    /// few threads to fill one).
    Workgroup,
}

impl LayernormVariant {
    /// The choice a [`Gpu`] is made with (its [`Variants::layernorm`](super::Variants::layernorm)):
    /// `forced` (`row` or `workgroup`: the `layernorm` entry of
    /// [`GpuOptions::variants`](crate::gpu::GpuOptions::variants), `LORA_WGPU_LAYERNORM`) when
    /// it names one, else `Row` on CPU adapters and `Workgroup` elsewhere.
    pub fn resolve(gpu: &Gpu, forced: Option<&str>) -> Self {
        match forced {
            Some("row") => LayernormVariant::Row,
            Some("workgroup") => LayernormVariant::Workgroup,
            _ if gpu.info().device_type == wgpu::DeviceType::Cpu => LayernormVariant::Row,
            _ => LayernormVariant::Workgroup,
        }
    }

    /// Override constants and grid for `n` rows (also used by `rmsnorm`, whose kernels share
    /// this layout).
    pub(super) fn launch(self, n: usize) -> Result<Launch> {
        Ok(match self {
            LayernormVariant::Row => (vec![], [groups(n, 64)?, 1, 1]),
            LayernormVariant::Workgroup => {
                (vec![("WG_ROW", 1.0)], groups_1d(u32_of("rows", n)?.max(1)))
            }
        })
    }
}

/// Mirrors `struct Params` in layernorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    c: u32,
    eps: f32,
    _pad: u32,
}

/// `layernorm.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::text(
    "layernorm.wgsl",
    include_str!("../../shaders/layernorm.wgsl"),
);
const PARAMS: usize = std::mem::size_of::<Params>();
/// LayerNorm forward: inp, weight, bias, out, mean, rstd.
pub const FORWARD: KernelDef = KernelDef::new(
    &SHADER,
    "layernorm_forward",
    &[(1, R), (2, R), (3, R), (4, W), (5, W), (6, W)],
    PARAMS,
);
/// LayerNorm backward (input gradient only): dout, inp, weight, mean, rstd, dinp.
pub const BACKWARD: KernelDef = KernelDef::new(
    &SHADER,
    "layernorm_backward",
    &[(7, R), (1, R), (2, R), (8, R), (9, R), (10, W)],
    PARAMS,
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&FORWARD, &BACKWARD];

fn params(n: usize, c: usize, eps: f32) -> Result<Params> {
    Ok(Params {
        n: u32_of("rows", n)?,
        c: u32_of("C", c)?,
        eps,
        _pad: 0,
    })
}

/// out = layernorm(inp) · weight + bias; saves mean and rstd for backward. Kernels of the
/// `Gpu`'s [`LayernormVariant`].
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
    let (constants, grid) = gpu.variants().layernorm.launch(n)?;
    gpu.dispatch(&FORWARD, &constants, &params(n, c, eps)?, &t, grid)
}

/// dinp += ∂layernorm/∂inp · dout, using the mean and rstd saved by [`forward`]. Kernels of
/// the `Gpu`'s [`LayernormVariant`].
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
    let (constants, grid) = gpu.variants().layernorm.launch(n)?;
    gpu.dispatch(&BACKWARD, &constants, &params(n, c, 0.0)?, &t, grid)
}
