//! `merge.wgsl`: fold a LoRA update into (or out of) a frozen weight.

use crate::error::Result;
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::lora::LoraShape;
use super::{expect_len, groups, u32_of};

/// Mirrors `struct Params` in merge.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    k: u32,
    n: u32,
    r: u32,
    fan_in_fan_out: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// `merge.wgsl`.
pub const SHADER: ShaderDef =
    ShaderDef::text("merge.wgsl", include_str!("../../shaders/merge.wgsl"));
/// W ± scale · (B A) in either weight layout: a, b, w.
pub const FORWARD: KernelDef = KernelDef::new(
    &SHADER,
    "merge_forward",
    &[(1, R), (2, R), (3, W)],
    std::mem::size_of::<Params>(),
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&FORWARD];

/// w += scale · ΔW with ΔW = b · a; pass a negative `scale` to unmerge.
///   w: (k, n) when `fan_in_fan_out` (GPT-2's Conv1D), else (n, k) (nn.Linear)
///   a: (r, k)   b: (n, r)   (`s.m` is ignored)
pub fn merge(
    gpu: &Gpu,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    s: &LoraShape,
    fan_in_fan_out: bool,
    scale: f32,
) -> Result<Dispatch> {
    const OP: &str = "merge";
    expect_len(OP, "weight", w, s.k * s.n)?;
    expect_len(OP, "lora_A", a, s.r * s.k)?;
    expect_len(OP, "lora_B", b, s.n * s.r)?;
    let params = Params {
        k: u32_of("in features", s.k)?,
        n: u32_of("out features", s.n)?,
        r: u32_of("rank", s.r)?,
        fan_in_fan_out: fan_in_fan_out.into(),
        scale,
        _pad: [0; 3],
    };
    let grid = groups_1d(groups(w.len(), 256)?);
    gpu.dispatch(&FORWARD, &[], &params, &[a, b, w], grid)
}
