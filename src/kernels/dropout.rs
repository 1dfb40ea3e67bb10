//! `dropout.wgsl`: inverted dropout with Philox masks regenerated from (seed, offset).

use super::philox::dropout_word;
use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, groups, u32_of};

/// A dropout mask, defined by its probability and where it sits in the random stream.
///
/// Element `i` at site `offset` is kept when word `i & 3` of
/// `philox4x32_10((i >> 2, offset, 0, 0), seed)` is at least `floor(p · 2³²)`; kept elements are
/// scaled by `1 / (1 - p)`. The same mask is regenerated in backward instead of stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Probability of dropping an element, in [0, 1).
    pub p: f32,
    /// Philox key.
    pub seed: u64,
    /// Counter word that separates dropout sites and steps.
    pub offset: u32,
}

impl Dropout {
    /// No dropout: every element kept, scale 1.
    pub const NONE: Dropout = Dropout {
        p: 0.0,
        seed: 0,
        offset: 0,
    };

    /// A mask with drop probability `p` (0 <= p < 1).
    pub fn new(p: f32, seed: u64, offset: u32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid("dropout", p, "must be in [0, 1)"));
        }
        Ok(Dropout { p, seed, offset })
    }

    /// Words below this are dropped: floor(p · 2³²).
    pub fn threshold(&self) -> u32 {
        (self.p as f64 * 4_294_967_296.0)
            .floor()
            .min(u32::MAX as f64) as u32
    }

    /// Multiplier of kept elements, 1 / (1 - p).
    pub fn scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }

    /// What element `i` is multiplied by: 0 or 1 / (1 - p).
    pub fn multiplier(&self, i: u32) -> f32 {
        let t = self.threshold();
        if t == 0 || dropout_word(i, self.offset, self.seed) >= t {
            self.scale()
        } else {
            0.0
        }
    }
}

/// Mirrors `struct Params` in dropout.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    offset: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
    _pad: [u32; 2],
}

/// `dropout.wgsl`, after `philox.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::built("dropout.wgsl", || {
    format!(
        "{}\n{}",
        super::PHILOX,
        include_str!("../../shaders/dropout.wgsl")
    )
});
const PARAMS: usize = std::mem::size_of::<Params>();
/// out = dropout(inp).
pub const FORWARD: KernelDef =
    KernelDef::new(&SHADER, "dropout_forward", &[(1, R), (2, W)], PARAMS);
/// dinp = dropout mask ⊙ dout.
pub const BACKWARD: KernelDef =
    KernelDef::new(&SHADER, "dropout_backward", &[(1, R), (2, W)], PARAMS);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&FORWARD, &BACKWARD];

fn launch(
    gpu: &Gpu,
    kernel: &'static KernelDef,
    out: &Tensor,
    inp: &Tensor,
    d: &Dropout,
) -> Result<Dispatch> {
    expect_len("dropout", "output", out, inp.len())?;
    let n = inp.len();
    let params = Params {
        n: u32_of("dropout length", n)?,
        offset: d.offset,
        seed_lo: d.seed as u32,
        seed_hi: (d.seed >> 32) as u32,
        threshold: d.threshold(),
        scale: d.scale(),
        _pad: [0; 2],
    };
    let grid = groups_1d(groups(n.div_ceil(4), 256)?);
    gpu.dispatch(kernel, &[], &params, &[inp, out], grid)
}

/// out = dropout(inp).   out, inp: (n,)
pub fn forward(gpu: &Gpu, out: &Tensor, inp: &Tensor, d: &Dropout) -> Result<Dispatch> {
    launch(gpu, &FORWARD, out, inp, d)
}

/// dinp = mask ⊙ dout / (1 - p), with the mask of the forward call that used `d`.
///   dinp, dout: (n,)
pub fn backward(gpu: &Gpu, dinp: &Tensor, dout: &Tensor, d: &Dropout) -> Result<Dispatch> {
    launch(gpu, &BACKWARD, dinp, dout, d)
}
