//! `cross_entropy.wgsl`: softmax + cross-entropy + dlogits over vocabulary chunks.

use crate::error::Result;
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, groups, u32_of};

/// Target id that contributes no loss (a masked prompt token or padding).
pub const IGNORE: u32 = u32::MAX;

/// Mirrors `struct Params` in cross_entropy.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    vc: u32,
    v0: u32,
    first: u32,
    _pad: [u32; 4],
}

/// `cross_entropy.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::text(
    "cross_entropy.wgsl",
    include_str!("../../shaders/cross_entropy.wgsl"),
);
const PARAMS: usize = std::mem::size_of::<Params>();
/// Running softmax statistics of one logits chunk.
pub const STATS: KernelDef = KernelDef::new(
    &SHADER,
    "ce_stats",
    &[(1, R), (2, R), (3, W), (4, W), (5, W)],
    PARAMS,
);
/// Per-row cross-entropy loss.
pub const LOSS: KernelDef = KernelDef::new(
    &SHADER,
    "ce_loss",
    &[(1, R), (7, R), (8, R), (9, R), (6, W)],
    PARAMS,
);
/// dlogits of one chunk, in place.
pub const GRAD: KernelDef = KernelDef::new(
    &SHADER,
    "ce_grad",
    &[(1, R), (7, R), (8, R), (10, W), (11, R)],
    PARAMS,
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&STATS, &LOSS, &GRAD];

/// The running per-row state of the chunked softmax.
#[derive(Clone, Debug)]
pub struct CeState {
    /// (N,) running max of the logits.
    pub maxv: Tensor,
    /// (N,) running Σ exp(logit - max).
    pub sumexp: Tensor,
    /// (N,) the target's logit.
    pub target_logit: Tensor,
}

impl CeState {
    /// State for `n` rows.
    pub fn new(gpu: &Gpu, n: usize) -> Result<Self> {
        Ok(CeState {
            maxv: gpu.zeros("ce max", &[n])?,
            sumexp: gpu.zeros("ce sumexp", &[n])?,
            target_logit: gpu.zeros("ce target logit", &[n])?,
        })
    }
}

fn params(n: usize, vc: usize, v0: usize, first: bool) -> Result<Params> {
    Ok(Params {
        n: u32_of("rows", n)?,
        vc: u32_of("vocab chunk", vc)?,
        v0: u32_of("vocab offset", v0)?,
        first: first.into(),
        _pad: [0; 4],
    })
}

/// Fold the chunk `logits` (N, vc) of vocab ids v0 .. v0+vc into the running statistics.
pub fn stats(
    gpu: &Gpu,
    st: &CeState,
    logits: &Tensor,
    targets: &Tensor,
    v0: usize,
    first: bool,
) -> Result<Dispatch> {
    let n = targets.len();
    let vc = logits.len() / n.max(1);
    expect_len("cross_entropy::stats", "logits", logits, n * vc)?;
    let t = [targets, logits, &st.maxv, &st.sumexp, &st.target_logit];
    gpu.dispatch(
        &STATS,
        &[],
        &params(n, vc, v0, first)?,
        &t,
        [groups(n, 64)?, 1, 1],
    )
}

/// `loss[row] = logsumexp - logit[target]` (0 for [`IGNORE`]d rows).   loss: (N,)
pub fn loss(gpu: &Gpu, loss: &Tensor, st: &CeState, targets: &Tensor) -> Result<Dispatch> {
    let n = targets.len();
    expect_len("cross_entropy::loss", "loss", loss, n)?;
    let t = [targets, &st.maxv, &st.sumexp, &st.target_logit, loss];
    gpu.dispatch(
        &LOSS,
        &[],
        &params(n, 1, 0, false)?,
        &t,
        [groups(n, 64)?, 1, 1],
    )
}

/// logits (N, vc) of vocab ids v0.. <- `(softmax - onehot) · dloss[0]`, in place.
///   dloss: (1,) the gradient of the reduced loss w.r.t. each row's loss (1 / counted rows)
pub fn grad(
    gpu: &Gpu,
    logits: &Tensor,
    st: &CeState,
    targets: &Tensor,
    dloss: &Tensor,
    v0: usize,
) -> Result<Dispatch> {
    let n = targets.len();
    let vc = logits.len() / n.max(1);
    expect_len("cross_entropy::grad", "logits", logits, n * vc)?;
    expect_len("cross_entropy::grad", "dloss", dloss, 1)?;
    let t = [targets, &st.maxv, &st.sumexp, logits, dloss];
    let grid = groups_1d(groups(n * vc, 256)?);
    gpu.dispatch(&GRAD, &[], &params(n, vc, v0, false)?, &t, grid)
}
