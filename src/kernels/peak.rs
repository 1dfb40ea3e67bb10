//! `peak.wgsl`: the adapter's attainable f32 FMA throughput, the yardstick for kernel figures.

use crate::error::Result;
use crate::gpu::Access::ReadWrite as W;
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{groups, u32_of};

/// Mirrors `struct Params` in peak.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    iters: u32,
    _pad: [u32; 3],
}

/// `peak.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::text("peak.wgsl", include_str!("../../shaders/peak.wgsl"));
/// FMA throughput probe.
pub const FMA: KernelDef = KernelDef::new(
    &SHADER,
    "peak_fma",
    &[(1, W)],
    std::mem::size_of::<Params>(),
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&FMA];

/// A recorded FMA probe: `threads` invocations of `iters` rounds of 256 flops.
#[derive(Debug)]
pub struct PeakProbe {
    dispatch: Dispatch,
    _out: Tensor,
    flops: f64,
}

impl PeakProbe {
    /// Floating-point operations one run performs.
    pub fn flops(&self) -> f64 {
        self.flops
    }

    /// The dispatch to time.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }
}

/// Build a probe of `threads` invocations (rounded up to 64) each running `iters` rounds.
pub fn probe(gpu: &Gpu, threads: usize, iters: u32) -> Result<PeakProbe> {
    let wgs = groups(threads, 64)?;
    let out = gpu.zeros("peak out", &[wgs as usize * 64])?;
    let params = Params {
        iters: u32_of("iterations", iters as usize)?,
        _pad: [0; 3],
    };
    let dispatch = gpu.dispatch(&FMA, &[], &params, &[&out], groups_1d(wgs))?;
    Ok(PeakProbe {
        dispatch,
        _out: out,
        flops: wgs as f64 * 64.0 * iters as f64 * 256.0,
    })
}
