//! `embedding.wgsl`: token + position embedding over vocabulary shards.

use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, groups, u32_of};

/// Mirrors `struct Params` in embedding.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    t: u32,
    c: u32,
    add_pos: u32,
    v0: u32,
    v1: u32,
    _pad: [u32; 2],
}

/// `embedding.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::text(
    "embedding.wgsl",
    include_str!("../../shaders/embedding.wgsl"),
);
/// Token + position embedding (one vocab shard): tokens, wte shard, wpe, out.
pub const FORWARD: KernelDef = KernelDef::new(
    &SHADER,
    "embedding_forward",
    &[(1, R), (2, R), (3, R), (4, W)],
    std::mem::size_of::<Params>(),
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&FORWARD];

/// `out = wpe[t] + wte[token]` (`wte[token]` without `wpe`), with wte given as shards of
/// consecutive vocab rows: one dispatch per shard (the first also writes the position part).
///   out: (B·T, C)   tokens: (B·T,) u32   `wte_shards[i]`: (rows_i, C)   wpe: (≥ T, C)
pub fn forward(
    gpu: &Gpu,
    out: &Tensor,
    tokens: &Tensor,
    wte_shards: &[&Tensor],
    wpe: Option<&Tensor>,
    t: usize,
    c: usize,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "embedding::forward";
    let n = tokens.len();
    expect_len(OP, "out", out, n * c)?;
    let Some(&first) = wte_shards.first() else {
        return Err(Error::shape(OP, "no wte shard"));
    };
    // Without positions the kernel never reads wpe: bind the first shard in its place.
    let (wpe, first_flag) = match wpe {
        Some(w) => (w, 1),
        None => (first, 2),
    };
    if t == 0 || !n.is_multiple_of(t) || (first_flag == 1 && wpe.len() < t * c) {
        return Err(Error::shape(
            OP,
            format!(
                "{n} tokens in rows of T = {t} with wpe of {} values (C = {c})",
                wpe.len()
            ),
        ));
    }
    let mut v0 = 0usize;
    let mut out_d = Vec::with_capacity(wte_shards.len());
    for (i, shard) in wte_shards.iter().enumerate() {
        if !shard.len().is_multiple_of(c) {
            return Err(Error::shape(
                OP,
                format!("wte shard {i} is not a whole number of rows of {c}"),
            ));
        }
        let v1 = v0 + shard.len() / c;
        let params = Params {
            n: u32_of("tokens", n)?,
            t: u32_of("T", t)?,
            c: u32_of("C", c)?,
            add_pos: if i == 0 { first_flag } else { 0 },
            v0: u32_of("vocab", v0)?,
            v1: u32_of("vocab", v1)?,
            _pad: [0; 2],
        };
        let grid = groups_1d(groups(n * c, 256)?);
        out_d.push(gpu.dispatch(&FORWARD, &[], &params, &[tokens, shard, wpe, out], grid)?);
        v0 = v1;
    }
    Ok(out_d)
}
