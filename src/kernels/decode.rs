//! `decode.wgsl`: the pieces of incremental (KV-cached) decoding for text generation.
//!
//! Every kernel that depends on the position reads it from a one-word `pos` buffer (p0, the
//! absolute position of row 0 of the call) instead of its uniform parameters, so a recording
//! is built once per row count and replayed at every position after a 4-byte write.

use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Dtype, Gpu, KernelDef, ShaderDef, Tensor};

use super::attention::{check_heads, head_size};
use super::{expect_len, f16_build, groups, u32_of};

/// Mirrors `struct Params` in decode.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    c: u32,
    nh: u32,
    ctx: u32,
    v0: u32,
    v1: u32,
    flags: u32,
    row: u32,
    scale: f32,
    nkv: u32,
    _pad: [u32; 2],
}

const DECODE_WGSL: &str = include_str!("../../shaders/decode.wgsl");
/// `decode.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::text("decode.wgsl", DECODE_WGSL);
/// `decode.wgsl` with the gemv weight stored as f16.
pub const SHADER_F16: ShaderDef = ShaderDef::built("decode.wgsl (f16 weight)", || {
    f16_build(
        DECODE_WGSL.to_string(),
        &[
            ("w4: array<vec4<f32>>;", "w4: array<vec4<f16>>;"),
            ("{ return w4[i]; }", "{ return vec4<f32>(w4[i]); }"),
        ],
    )
});
const PARAMS: usize = std::mem::size_of::<Params>();
/// Token + position embedding at positions read from a buffer (one vocab shard).
pub const EMBEDDING: KernelDef = KernelDef::new(
    &SHADER,
    "decode_embedding",
    &[(1, R), (2, R), (3, R), (4, R), (5, W)],
    PARAMS,
);
/// Write new keys and values into the KV cache (once per kv head).
pub const KV_STORE: KernelDef = KernelDef::new(
    &SHADER,
    "kv_store",
    &[(1, R), (6, R), (7, W), (8, W)],
    PARAMS,
);
/// Causal attention of new queries over the KV cache, query heads grouped over kv heads.
pub const ATTENTION: KernelDef = KernelDef::new(
    &SHADER,
    "decode_attention",
    &[(1, R), (6, R), (9, R), (10, R), (11, W), (5, W)],
    PARAMS,
);
/// Copy one row.
pub const COPY_ROW: KernelDef = KernelDef::new(&SHADER, "copy_row", &[(12, R), (5, W)], PARAMS);
/// One-row x · W (+ bias), W stored (in, out).
pub const GEMV_COLS: KernelDef = KernelDef::new(
    &SHADER,
    "gemv_cols",
    &[(16, R), (14, R), (15, R), (5, W)],
    PARAMS,
);
/// One-row x · Wᵀ, W stored (out, in).
pub const GEMV_ROWS: KernelDef =
    KernelDef::new(&SHADER, "gemv_rows", &[(16, R), (14, R), (5, W)], PARAMS);
/// [`GEMV_COLS`] with W stored as f16.
pub const GEMV_COLS_F16: KernelDef = GEMV_COLS.in_shader(&SHADER_F16).f16(14);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[
    &EMBEDDING,
    &KV_STORE,
    &ATTENTION,
    &COPY_ROW,
    &GEMV_COLS,
    &GEMV_ROWS,
    &GEMV_COLS_F16,
];

/// Shape of one decoding call: `n` new rows at positions p0 .. p0 + n of a cache of `ctx` rows.
/// Rows of `qkv` are `[nh query heads | nkv key heads | nkv value heads]`, each `hs` wide (the
/// layout of [`AttentionShape`](super::attention::AttentionShape)); the caches hold the `nkv`
/// kv heads once each, `nkv·hs` values per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeShape {
    /// New rows (the prompt length in a prefill, 1 per generated token).
    pub n: usize,
    /// Query heads.
    pub nh: usize,
    /// Key / value heads: a divisor of `nh`; query head `h` reads kv head `h / (nh / nkv)`.
    pub nkv: usize,
    /// Head size, at most [`MAX_HEAD_SIZE`](super::attention::MAX_HEAD_SIZE).
    pub hs: usize,
    /// Rows of each KV cache (the longest context).
    pub ctx: usize,
}

impl DecodeShape {
    /// Multi-head attention over `c` channels in `nh` heads (GPT-2): `nkv = nh`,
    /// `hs = c / nh`. A `c` that does not split evenly gives head size 0, which the
    /// launchers reject.
    pub fn mha(n: usize, c: usize, nh: usize, ctx: usize) -> DecodeShape {
        DecodeShape {
            n,
            nh,
            nkv: nh,
            hs: head_size(c, nh),
            ctx,
        }
    }

    /// Values per row of `qkv`: `(nh + 2·nkv)·hs`.
    pub fn qkv_width(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hs
    }

    /// Values per row of each KV cache: `nkv·hs`.
    pub fn kv_width(&self) -> usize {
        self.nkv * self.hs
    }

    fn params(&self) -> Result<Params> {
        let DecodeShape {
            n,
            nh,
            nkv,
            hs,
            ctx,
        } = *self;
        check_heads("decode", nh, nkv, hs)?;
        if n == 0 || n > ctx {
            return Err(Error::shape(
                "decode",
                format!("{n} new rows for a cache of {ctx} rows (must be 1..={ctx})"),
            ));
        }
        u32_of("qkv", n * self.qkv_width())?;
        u32_of("KV cache", ctx * self.kv_width())?;
        Ok(Params {
            n: u32_of("rows", n)?,
            nh: u32_of("heads", nh)?,
            nkv: u32_of("kv heads", nkv)?,
            ctx: u32_of("context", ctx)?,
            scale: 1.0 / (hs as f32).sqrt(),
            ..Params::default()
        })
    }

    fn head_size(&self) -> [(&'static str, f64); 1] {
        [("HS", self.hs as f64)]
    }
}

/// `out = wpe[p0 + r] + wte[tokens[r]]` (`wte[tokens[r]]` without `wpe`), with wte in shards
/// of consecutive vocab rows (one dispatch per shard; the first also writes the position
/// part).
///   out: (n, C)   pos: (1,) u32 = p0   tokens: (n,) u32   `wte_shards[i]`: (rows_i, C)
///   wpe: (≥ p0 + n, C)
pub fn embedding(
    gpu: &Gpu,
    out: &Tensor,
    pos: &Tensor,
    tokens: &Tensor,
    wte_shards: &[&Tensor],
    wpe: Option<&Tensor>,
    c: usize,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "decode::embedding";
    let n = tokens.len();
    expect_len(OP, "pos", pos, 1)?;
    expect_len(OP, "out", out, n * c)?;
    let Some(&first) = wte_shards.first() else {
        return Err(Error::shape(OP, "no wte shard"));
    };
    // Without positions the kernel never reads wpe: bind the first shard in its place.
    let (wpe, first_flag) = match wpe {
        Some(w) => (w, 1),
        None => (first, 2),
    };
    if c == 0 || (first_flag == 1 && (!wpe.len().is_multiple_of(c) || wpe.len() < n * c)) {
        return Err(Error::shape(
            OP,
            format!("wpe has {} values, not rows of C = {c}", wpe.len()),
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
            c: u32_of("C", c)?,
            v0: u32_of("vocab", v0)?,
            v1: u32_of("vocab", v1)?,
            flags: if i == 0 { first_flag } else { 0 },
            ..Params::default()
        };
        out_d.push(gpu.dispatch(
            &EMBEDDING,
            &[],
            &params,
            &[pos, tokens, shard, wpe, out],
            groups_1d(groups(n * c, 256)?),
        )?);
        v0 = v1;
    }
    Ok(out_d)
}

/// Write the keys and values of the new rows into the cache at rows p0 .. p0 + n.
///   k_cache, v_cache: (ctx, NKV·HS)   pos: (1,) u32   qkv: (n, (NH + 2·NKV)·HS)
pub fn kv_store(
    gpu: &Gpu,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos: &Tensor,
    qkv: &Tensor,
    s: &DecodeShape,
) -> Result<Dispatch> {
    const OP: &str = "decode::kv_store";
    let params = s.params()?;
    expect_len(OP, "pos", pos, 1)?;
    expect_len(OP, "qkv", qkv, s.n * s.qkv_width())?;
    expect_len(OP, "k_cache", k_cache, s.ctx * s.kv_width())?;
    expect_len(OP, "v_cache", v_cache, s.ctx * s.kv_width())?;
    gpu.dispatch(
        &KV_STORE,
        &s.head_size(),
        &params,
        &[pos, qkv, k_cache, v_cache],
        groups_1d(groups(s.n * s.kv_width(), 256)?),
    )
}

/// Causal attention of the n new queries (positions p0 + r) over cache rows 0 ..= p0 + r, one
/// workgroup per (row, query head), query head h reading kv head h / (nh / nkv). Run
/// [`kv_store`] first so the new rows are in the cache.
///   out: (n, NH·HS)   att: (n, NH, ctx) scratch   pos: (1,) u32   qkv: (n, (NH + 2·NKV)·HS)
///   k_cache, v_cache: (ctx, NKV·HS)
pub fn attention(
    gpu: &Gpu,
    out: &Tensor,
    att: &Tensor,
    pos: &Tensor,
    qkv: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    s: &DecodeShape,
) -> Result<Dispatch> {
    const OP: &str = "decode::attention";
    let params = s.params()?;
    expect_len(OP, "pos", pos, 1)?;
    expect_len(OP, "qkv", qkv, s.n * s.qkv_width())?;
    expect_len(OP, "out", out, s.n * s.nh * s.hs)?;
    expect_len(OP, "att", att, s.n * s.nh * s.ctx)?;
    expect_len(OP, "k_cache", k_cache, s.ctx * s.kv_width())?;
    expect_len(OP, "v_cache", v_cache, s.ctx * s.kv_width())?;
    let grid = [u32_of("rows", s.n)?, u32_of("heads", s.nh)?, 1];
    gpu.dispatch(
        &ATTENTION,
        &s.head_size(),
        &params,
        &[pos, qkv, k_cache, v_cache, att, out],
        grid,
    )
}

/// `out = inp[row]`.   out: (C,)   inp: (rows, C)
pub fn copy_row(gpu: &Gpu, out: &Tensor, inp: &Tensor, row: usize, c: usize) -> Result<Dispatch> {
    const OP: &str = "decode::copy_row";
    expect_len(OP, "out", out, c)?;
    if inp.len() < (row + 1) * c {
        return Err(Error::shape(
            OP,
            format!(
                "row {row} of {} ({} values) with C = {c}",
                inp.name(),
                inp.len()
            ),
        ));
    }
    let params = Params {
        c: u32_of("C", c)?,
        row: u32_of("row", row)?,
        ..Params::default()
    };
    gpu.dispatch(&COPY_ROW, &[], &params, &[inp, out], [groups(c, 64)?, 1, 1])
}

/// Rows most worth [`gemv_cols`] over [`matmul`](super::matmul::matmul) on every adapter: it
/// reads W once per 8 rows and wastes nothing on short inputs, where the tiled kernels compute
/// whole 64-row tiles.
pub const GEMV_MAX_ROWS: usize = 32;

/// A few rows through a linear layer: y = x · w (+ bias), w stored (k, n) as GPT-2's Conv1D.
/// Each thread owns 4 columns of up to 8 rows, so w is read once per 8 rows; `k` and `n` must
/// be multiples of 4. `w` may be an f16 tensor (widened on load). Meant for decoding (m = 1) and short prefills.
///   y: (m, n)   x: (m, k)   w: (k, n)   bias: (n,)
pub fn gemv_cols(
    gpu: &Gpu,
    y: &Tensor,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    m: usize,
    k: usize,
    n: usize,
) -> Result<Dispatch> {
    const OP: &str = "decode::gemv_cols";
    if !n.is_multiple_of(4) || !k.is_multiple_of(4) || m == 0 {
        return Err(Error::shape(
            OP,
            format!("{m} rows through a {k} x {n} weight; k and n must be multiples of 4, m > 0"),
        ));
    }
    expect_len(OP, "y", y, m * n)?;
    expect_len(OP, "x", x, m * k)?;
    expect_len(OP, "w", w, k * n)?;
    if let Some(b) = bias {
        expect_len(OP, "bias", b, n)?;
    }
    let rows = m.min(8);
    let params = Params {
        n: u32_of("columns", n)?,
        c: u32_of("K", k)?,
        flags: u32::from(bias.is_some()),
        row: u32_of("rows", m - 1)?,
        ..Params::default()
    };
    let bias = bias.unwrap_or(gpu.dummy());
    let kernel = match w.dtype() {
        Dtype::F32 => &GEMV_COLS,
        Dtype::F16 => &GEMV_COLS_F16,
        Dtype::Quant(_) => {
            return Err(Error::shape(
                OP,
                format!("{} is quantized: run it through matmul (qmatmul)", w.name()),
            ))
        }
    };
    gpu.dispatch(
        kernel,
        &[("ROWS", rows as f64)],
        &params,
        &[x, w, bias, y],
        [groups(n / 4, 64)?, groups(m, rows)?, 1],
    )
}

/// One row against the rows of w: y = x · wᵀ, w stored (n, k) as the tied LM head; `k` must
/// be a multiple of 4.
///   y: (n,)   x: (k,)   w: (n, k)
pub fn gemv_rows(
    gpu: &Gpu,
    y: &Tensor,
    x: &Tensor,
    w: &Tensor,
    k: usize,
    n: usize,
) -> Result<Dispatch> {
    const OP: &str = "decode::gemv_rows";
    if !k.is_multiple_of(4) {
        return Err(Error::shape(
            OP,
            format!("K = {k}; must be a multiple of 4"),
        ));
    }
    expect_len(OP, "y", y, n)?;
    expect_len(OP, "x", x, k)?;
    expect_len(OP, "w", w, k * n)?;
    let params = Params {
        n: u32_of("rows", n)?,
        c: u32_of("K", k)?,
        ..Params::default()
    };
    gpu.dispatch(
        &GEMV_ROWS,
        &[],
        &params,
        &[x, w, y],
        groups_1d(groups(n, 64)?),
    )
}
