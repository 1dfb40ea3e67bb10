//! `reduce.wgsl`: Σ x² in two passes (the global gradient norm for clipping).

use crate::error::Result;
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, groups, u32_of};

/// Workgroups of the first pass (each strides over the input).
const MAX_PARTIALS: usize = 256;

/// Mirrors `struct Params` in reduce.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// `reduce.wgsl`.
pub const SHADER: ShaderDef =
    ShaderDef::text("reduce.wgsl", include_str!("../../shaders/reduce.wgsl"));
const PARAMS: usize = std::mem::size_of::<Params>();
/// Per-workgroup partial sums of squares.
pub const SUMSQ_PARTIAL: KernelDef =
    KernelDef::new(&SHADER, "sumsq_partial", &[(1, R), (2, W)], PARAMS);
/// Final sum of the partials.
pub const SUMSQ_FINAL: KernelDef =
    KernelDef::new(&SHADER, "sumsq_final", &[(3, R), (4, W)], PARAMS);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&SUMSQ_PARTIAL, &SUMSQ_FINAL];

/// `out[0] = Σ x²`. Two dispatches (partials, final); allocates its partials buffer.
///   out: (1,)   x: (n,)
pub fn sumsq(gpu: &Gpu, out: &Tensor, x: &Tensor) -> Result<[Dispatch; 2]> {
    expect_len("sumsq", "out", out, 1)?;
    let parts = (groups(x.len(), 256)? as usize).clamp(1, MAX_PARTIALS);
    let partial = gpu.zeros("sumsq partials", &[parts])?;
    let p1 = Params {
        n: u32_of("sumsq length", x.len())?,
        _pad: [0; 3],
    };
    let p2 = Params {
        n: parts as u32,
        _pad: [0; 3],
    };
    Ok([
        gpu.dispatch(
            &SUMSQ_PARTIAL,
            &[],
            &p1,
            &[x, &partial],
            [parts as u32, 1, 1],
        )?,
        gpu.dispatch(&SUMSQ_FINAL, &[], &p2, &[&partial, out], [1, 1, 1])?,
    ])
}
