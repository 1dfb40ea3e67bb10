//! `attention.wgsl`: causal self-attention with grouped-query heads (GQA; multi-head attention
//! is the case of as many kv heads as query heads) and its backward, flash-style: O(T) memory
//! per head (each row's log-sum-exp), the probabilities recomputed in the backward.
//!
//! Layout of the fused projection: each (batch, position) row of `qkv` is
//! `[nh query heads | nkv key heads | nkv value heads]`, every head `hs` wide, so
//! `(nh + 2·nkv)·hs` values; query head `h` attends with kv head `h / (nh / nkv)` (consecutive
//! query heads share one, as transformers' `repeat_kv`). GPT-2's `[q | k | v]` of C each is
//! `nkv = nh`, `hs = C / nh`. The output rows are `nh·hs` wide.

use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::matmul::image::pack_rows;
use super::{expect_len, groups, u32_of};

/// Texture pool slots of the packed qkv and dout (see `pack_rows`; the matmul's own are
/// [`A_SLOT`](super::matmul::image::A_SLOT) and [`B_SLOT`](super::matmul::image::B_SLOT)).
const QKV_SLOT: u8 = 2;
const DOUT_SLOT: u8 = 3;

/// Largest head size the kernels support.
pub const MAX_HEAD_SIZE: usize = 128;

/// Shape of one attention call (see the module doc for the layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Query heads.
    pub nh: usize,
    /// Key / value heads: a divisor of `nh`, each shared by `nh / nkv` consecutive query
    /// heads (`nh` for multi-head attention).
    pub nkv: usize,
    /// Head size, at most [`MAX_HEAD_SIZE`]; the scores are scaled by 1/√hs.
    pub hs: usize,
}

impl AttentionShape {
    /// Multi-head attention over `c` channels in `nh` heads (GPT-2): `nkv = nh`,
    /// `hs = c / nh`. A `c` that does not split evenly gives head size 0, which the
    /// launchers reject.
    pub fn mha(b: usize, t: usize, c: usize, nh: usize) -> AttentionShape {
        AttentionShape {
            b,
            t,
            nh,
            nkv: nh,
            hs: head_size(c, nh),
        }
    }

    /// Values per row of `qkv`: `(nh + 2·nkv)·hs`.
    pub fn qkv_width(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hs
    }

    /// Values per row of the output: `nh·hs`.
    pub fn out_width(&self) -> usize {
        self.nh * self.hs
    }
}

/// `c / nh` when `nh` heads split `c` channels evenly, else 0 (an invalid head size).
pub(crate) fn head_size(c: usize, nh: usize) -> usize {
    match c.checked_rem(nh) {
        Some(0) => c / nh,
        _ => 0,
    }
}

/// Check a head configuration: `nh` query heads over `nkv` kv heads (a divisor of `nh`), head
/// size 1 ..= [`MAX_HEAD_SIZE`]. Shared with the decoding kernels.
pub(crate) fn check_heads(op: &'static str, nh: usize, nkv: usize, hs: usize) -> Result<()> {
    if nh == 0 || nkv == 0 || !nh.is_multiple_of(nkv) {
        return Err(Error::shape(
            op,
            format!(
                "{nh} query heads over {nkv} key/value heads: both must be positive and the \
                 kv heads must divide the query heads"
            ),
        ));
    }
    if hs == 0 || hs > MAX_HEAD_SIZE {
        return Err(Error::shape(
            op,
            format!(
                "head size {hs} must be 1..={MAX_HEAD_SIZE} (with AttentionShape::mha / \
                 DecodeShape::mha: the channels must split evenly into the heads)"
            ),
        ));
    }
    Ok(())
}

/// Largest head size of [`AttentionVariant::Tiled`]; larger heads use the per-row kernels.
pub const MAX_TILED_HEAD_SIZE: usize = 64;

/// Which attention kernels to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionVariant {
    /// One thread per (batch, head, row), no workgroup memory: CPU adapters where
    /// [`AttentionVariant::Image`] does not apply (head size not a multiple of 4).
    Rows,
    /// A workgroup of 256 threads per 16 rows of one (batch, head), keys, values and queries
    /// streamed through workgroup memory (GPUs). Head size <= [`MAX_TILED_HEAD_SIZE`], else
    /// the launchers fall back to [`AttentionVariant::Rows`].
    Tiled,
    /// The per-row kernels reading q, k, v and dout as vec4 texels of storage textures packed
    /// just before (CPU adapters: on Mesa's llvmpipe a texture load is a vector gather, a
    /// storage-buffer load a loop over the SIMD lanes). Head size % 4 == 0, else
    /// [`AttentionVariant::Rows`].
    Image,
}

impl AttentionVariant {
    /// The choice a [`Gpu`] is made with (its [`Variants::attention`](super::Variants::attention)):
    /// `forced` (`rows`, `tiled` or `image`: the `attention` entry of
    /// [`GpuOptions::variants`](crate::gpu::GpuOptions::variants), `LORA_WGPU_ATTENTION`) when
    /// it names one, else `Image` on CPU adapters (where barriers are expensive and texture
    /// loads cheap) and `Tiled` on GPUs.
    pub fn resolve(gpu: &Gpu, forced: Option<&str>) -> Self {
        let forced = forced.and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
            "rows" => Some(AttentionVariant::Rows),
            "tiled" => Some(AttentionVariant::Tiled),
            "image" => Some(AttentionVariant::Image),
            _ => None,
        });
        forced.unwrap_or(match gpu.info().device_type {
            wgpu::DeviceType::Cpu => AttentionVariant::Image,
            _ => AttentionVariant::Tiled,
        })
    }

    /// The lowercase name `LORA_WGPU_ATTENTION` accepts.
    pub fn name(self) -> &'static str {
        match self {
            AttentionVariant::Rows => "rows",
            AttentionVariant::Tiled => "tiled",
            AttentionVariant::Image => "image",
        }
    }

    fn image(self, s: &AttentionShape) -> bool {
        self == AttentionVariant::Image && s.hs.is_multiple_of(4)
    }

    fn tiled(self, s: &AttentionShape) -> bool {
        self == AttentionVariant::Tiled && s.hs <= MAX_TILED_HEAD_SIZE
    }

    /// Workgroups of the tiled kernels: one per 16 rows of each (batch, head) over `heads`
    /// heads (query heads for the forward and backward_rows, kv heads for backward_cols).
    fn tiled_grid(s: &AttentionShape, heads: usize) -> Result<[u32; 3]> {
        Ok(groups_1d(u32_of(
            "workgroups",
            s.b * heads * s.t.div_ceil(16),
        )?))
    }
}

/// Mirrors `struct Params` in attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    b: u32,
    t: u32,
    nh: u32,
    nkv: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// `attention.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::text(
    "attention.wgsl",
    include_str!("../../shaders/attention.wgsl"),
);
const PARAMS: usize = std::mem::size_of::<Params>();
const FWD: &[(u32, crate::gpu::Access)] = &[(1, R), (2, W), (3, W)];
const ROWS: &[(u32, crate::gpu::Access)] = &[(4, R), (1, R), (5, R), (9, R), (6, W), (7, W)];
const COLS: &[(u32, crate::gpu::Access)] = &[(4, R), (1, R), (5, R), (8, R), (7, W)];
/// Packed qkv (and dout) textures of the image kernels.
const PACKED: &[(u32, crate::gpu::Access)] = &[(10, R), (11, R)];
/// Causal self-attention forward: output and per-row log-sum-exp.
pub const FORWARD: KernelDef = KernelDef::new(&SHADER, "attention_forward", FWD, PARAMS);
/// Attention backward over query rows: dq and D = rowsum(dout ⊙ out).
pub const BACKWARD_ROWS: KernelDef =
    KernelDef::new(&SHADER, "attention_backward_rows", ROWS, PARAMS);
/// Attention backward over key columns: dk and dv, each kv head's summed over the query heads
/// of its group.
pub const BACKWARD_COLS: KernelDef =
    KernelDef::new(&SHADER, "attention_backward_cols", COLS, PARAMS);
/// Causal self-attention forward, 16 query rows per workgroup, keys and values in
/// workgroup-memory tiles (GPUs).
pub const FORWARD_TILED: KernelDef =
    KernelDef::new(&SHADER, "attention_forward_tiled", FWD, PARAMS);
/// Attention backward over blocks of 16 query rows: dq and D (GPUs).
pub const BACKWARD_ROWS_TILED: KernelDef =
    KernelDef::new(&SHADER, "attention_backward_rows_tiled", ROWS, PARAMS);
/// Attention backward over blocks of 16 key rows of one kv head: dk and dv (GPUs).
pub const BACKWARD_COLS_TILED: KernelDef =
    KernelDef::new(&SHADER, "attention_backward_cols_tiled", COLS, PARAMS);
/// [`FORWARD`] reading q, k, v from a packed texture (CPU adapters).
pub const FORWARD_IMAGE: KernelDef = KernelDef::new(
    &SHADER,
    "attention_forward_image",
    &[(2, W), (3, W)],
    PARAMS,
)
.textures(&[(10, R)]);
/// [`BACKWARD_ROWS`] reading q, k, v and dout from packed textures.
pub const BACKWARD_ROWS_IMAGE: KernelDef = KernelDef::new(
    &SHADER,
    "attention_backward_rows_image",
    &[(5, R), (9, R), (6, W), (7, W)],
    PARAMS,
)
.textures(PACKED);
/// [`BACKWARD_COLS`] reading q, k, v and dout from packed textures.
pub const BACKWARD_COLS_IMAGE: KernelDef = KernelDef::new(
    &SHADER,
    "attention_backward_cols_image",
    &[(5, R), (8, R), (7, W)],
    PARAMS,
)
.textures(PACKED);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[
    &FORWARD,
    &BACKWARD_ROWS,
    &BACKWARD_COLS,
    &FORWARD_TILED,
    &BACKWARD_ROWS_TILED,
    &BACKWARD_COLS_TILED,
    &FORWARD_IMAGE,
    &BACKWARD_ROWS_IMAGE,
    &BACKWARD_COLS_IMAGE,
];

/// Uniform parameters, the head-size override constant and the workgroup grids of the
/// per-row kernels: one thread per (batch, query head, row), and per (batch, kv head, row)
/// for backward_cols.
struct Prepared {
    params: Params,
    hs: [(&'static str, f64); 1],
    grid: [u32; 3],
    grid_kv: [u32; 3],
}

impl AttentionShape {
    fn prepare(&self, op: &'static str) -> Result<Prepared> {
        let AttentionShape { b, t, nh, nkv, hs } = *self;
        check_heads(op, nh, nkv, hs)?;
        let params = Params {
            b: u32_of("B", b)?,
            t: u32_of("T", t)?,
            nh: u32_of("heads", nh)?,
            nkv: u32_of("kv heads", nkv)?,
            scale: 1.0 / (hs as f32).sqrt(),
            _pad: [0; 3],
        };
        u32_of("qkv", b * t * self.qkv_width())?;
        Ok(Prepared {
            params,
            hs: [("HS", hs as f64)],
            grid: groups_1d(groups(b * nh * t, 64)?),
            grid_kv: groups_1d(groups(b * nkv * t, 64)?),
        })
    }
}

/// out = softmax(q kᵀ / √hs, causal) v per query head (k, v of its kv head), and each row's
/// log-sum-exp of the scaled scores, the only statistic the backward needs (no (T, T) matrix
/// is stored). Kernels of the `Gpu`'s [`AttentionVariant`].
///   out: (B, T, NH·HS)   lse: (B, NH, T)   qkv: (B, T, (NH + 2·NKV)·HS)
pub fn forward(
    gpu: &Gpu,
    out: &Tensor,
    lse: &Tensor,
    qkv: &Tensor,
    s: &AttentionShape,
) -> Result<Dispatch> {
    const OP: &str = "attention::forward";
    let variant = gpu.variants().attention;
    let Prepared {
        params, hs, grid, ..
    } = s.prepare(OP)?;
    let AttentionShape { b, t, nh, .. } = *s;
    expect_len(OP, "qkv", qkv, b * t * s.qkv_width())?;
    expect_len(OP, "out", out, b * t * s.out_width())?;
    expect_len(OP, "lse", lse, b * nh * t)?;
    if variant.image(s) {
        if let Some((pack, view)) = pack_rows(gpu, qkv, b * t, s.qkv_width(), QKV_SLOT)? {
            let k = &FORWARD_IMAGE;
            let d = gpu.dispatch_with_textures(k, &hs, &params, &[out, lse], &[&view], grid)?;
            return Ok(d.after(vec![pack]));
        }
    }
    let (kernel, grid) = if variant.tiled(s) {
        (&FORWARD_TILED, AttentionVariant::tiled_grid(s, nh)?)
    } else {
        (&FORWARD, grid)
    };
    gpu.dispatch(kernel, &hs, &params, &[qkv, out, lse], grid)
}

/// dqkv = ∂attention/∂qkv · dout (written, not added) in `qkv`'s layout, two dispatches that
/// recompute the probabilities from `qkv` and `lse`: dq per query head, then dk and dv per kv
/// head, summed over the query heads of its group. `dstat` (B, NH, T) is scratch. Kernels of
/// the `Gpu`'s [`AttentionVariant`].
///   dqkv: (B, T, (NH + 2·NKV)·HS)   dout: (B, T, NH·HS)   qkv, out, lse as written by
///   [`forward`]
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    dqkv: &Tensor,
    dstat: &Tensor,
    dout: &Tensor,
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    s: &AttentionShape,
) -> Result<[Dispatch; 2]> {
    const OP: &str = "attention::backward";
    let variant = gpu.variants().attention;
    let Prepared {
        params,
        hs,
        grid,
        grid_kv,
    } = s.prepare(OP)?;
    let AttentionShape { b, t, nh, nkv, .. } = *s;
    let (w_qkv, w_out) = (s.qkv_width(), s.out_width());
    expect_len(OP, "qkv", qkv, b * t * w_qkv)?;
    expect_len(OP, "dqkv", dqkv, b * t * w_qkv)?;
    expect_len(OP, "dout", dout, b * t * w_out)?;
    expect_len(OP, "out", out, b * t * w_out)?;
    expect_len(OP, "lse", lse, b * nh * t)?;
    expect_len(OP, "dstat", dstat, b * nh * t)?;
    if variant.image(s) {
        // Each dispatch packs its own textures: the two may be recorded apart.
        let packs = || -> Result<Option<(Vec<Dispatch>, [wgpu::TextureView; 2])>> {
            let q = pack_rows(gpu, qkv, b * t, w_qkv, QKV_SLOT)?;
            let g = pack_rows(gpu, dout, b * t, w_out, DOUT_SLOT)?;
            Ok(q.zip(g)
                .map(|((pq, vq), (pg, vg))| (vec![pq, pg], [vq, vg])))
        };
        if let (Some((before_r, [q, g])), Some((before_c, _))) = (packs()?, packs()?) {
            let (rk, ck) = (&BACKWARD_ROWS_IMAGE, &BACKWARD_COLS_IMAGE);
            let rows = [lse, out, dstat, dqkv];
            let cols = [lse, dstat, dqkv];
            let r = gpu.dispatch_with_textures(rk, &hs, &params, &rows, &[&q, &g], grid)?;
            let c = gpu.dispatch_with_textures(ck, &hs, &params, &cols, &[&q, &g], grid_kv)?;
            return Ok([r.after(before_r), c.after(before_c)]);
        }
    }
    let (rows, cols, grid, grid_kv) = if variant.tiled(s) {
        (
            &BACKWARD_ROWS_TILED,
            &BACKWARD_COLS_TILED,
            AttentionVariant::tiled_grid(s, nh)?,
            AttentionVariant::tiled_grid(s, nkv)?,
        )
    } else {
        (&BACKWARD_ROWS, &BACKWARD_COLS, grid, grid_kv)
    };
    Ok([
        gpu.dispatch(
            rows,
            &hs,
            &params,
            &[dout, qkv, lse, out, dstat, dqkv],
            grid,
        )?,
        gpu.dispatch(cols, &hs, &params, &[dout, qkv, lse, dstat, dqkv], grid_kv)?,
    ])
}
