//! `attention.wgsl`: causal multi-head self-attention and its backward, flash-style: O(T)
//! memory per head (each row's log-sum-exp), the probabilities recomputed in the backward.

use crate::error::{Error, Result};
use crate::gpu::{groups_1d, Dispatch, Gpu, Kernel, Tensor};

use super::matmul::pack_rows;
use super::{expect_len, groups, u32_of};

/// Texture pool slots of the packed qkv and dout (see `matmul::pack_rows`).
const QKV_SLOT: u8 = 2;
const DOUT_SLOT: u8 = 3;

/// Largest head size the kernels support.
pub const MAX_HEAD_SIZE: usize = 128;

/// Shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Channels (n_embd).
    pub c: usize,
    /// Heads.
    pub nh: usize,
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
    /// `Image` on CPU adapters (where barriers are expensive and texture loads cheap), `Tiled`
    /// on GPUs. The environment variable `LORA_WGPU_ATTENTION` (`rows`, `tiled` or `image`)
    /// overrides the choice.
    pub fn for_gpu(gpu: &Gpu) -> Self {
        let forced = std::env::var("LORA_WGPU_ATTENTION").ok().and_then(|v| {
            match v.trim().to_ascii_lowercase().as_str() {
                "rows" => Some(AttentionVariant::Rows),
                "tiled" => Some(AttentionVariant::Tiled),
                "image" => Some(AttentionVariant::Image),
                _ => None,
            }
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
        self == AttentionVariant::Image && s.nh > 0 && (s.c / s.nh).is_multiple_of(4)
    }

    fn tiled(self, s: &AttentionShape) -> bool {
        self == AttentionVariant::Tiled && s.nh > 0 && s.c / s.nh <= MAX_TILED_HEAD_SIZE
    }

    /// Workgroups of the tiled kernels: one per 16 rows of each (batch, head).
    fn tiled_grid(s: &AttentionShape) -> Result<[u32; 3]> {
        Ok(groups_1d(u32_of(
            "workgroups",
            s.b * s.nh * s.t.div_ceil(16),
        )?))
    }
}

/// Mirrors `struct Params` in attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    b: u32,
    t: u32,
    c: u32,
    nh: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Uniform parameters, the head-size override constant and the workgroup grid.
type Prepared = (Params, [(&'static str, f64); 1], [u32; 3]);

impl AttentionShape {
    fn prepare(&self) -> Result<Prepared> {
        let AttentionShape { b, t, c, nh } = *self;
        if nh == 0 || !c.is_multiple_of(nh) || c / nh > MAX_HEAD_SIZE {
            return Err(Error::shape(
                "attention",
                format!("C = {c} must split into {nh} heads of at most {MAX_HEAD_SIZE}"),
            ));
        }
        let hs = c / nh;
        let params = Params {
            b: u32_of("B", b)?,
            t: u32_of("T", t)?,
            c: u32_of("C", c)?,
            nh: u32_of("heads", nh)?,
            scale: 1.0 / (hs as f32).sqrt(),
            _pad: [0; 3],
        };
        Ok((
            params,
            [("HS", hs as f64)],
            groups_1d(groups(b * nh * t, 64)?),
        ))
    }
}

/// out = softmax(q kᵀ / √hs, causal) v per head, and each row's log-sum-exp of the scaled
/// scores, the only statistic the backward needs (no (T, T) matrix is stored). Kernels of
/// [`AttentionVariant::for_gpu`].
///   out: (B, T, C)   lse: (B, NH, T)   qkv: (B, T, 3C)
pub fn forward(
    gpu: &Gpu,
    out: &Tensor,
    lse: &Tensor,
    qkv: &Tensor,
    s: &AttentionShape,
) -> Result<Dispatch> {
    forward_with(gpu, AttentionVariant::for_gpu(gpu), out, lse, qkv, s)
}

/// [`forward`] with the kernels of `variant`.
pub fn forward_with(
    gpu: &Gpu,
    variant: AttentionVariant,
    out: &Tensor,
    lse: &Tensor,
    qkv: &Tensor,
    s: &AttentionShape,
) -> Result<Dispatch> {
    const OP: &str = "attention::forward";
    let AttentionShape { b, t, c, nh } = *s;
    expect_len(OP, "qkv", qkv, b * t * 3 * c)?;
    expect_len(OP, "out", out, b * t * c)?;
    expect_len(OP, "lse", lse, b * nh * t)?;
    let (params, hs, grid) = s.prepare()?;
    if variant.image(s) {
        if let Some((pack, view)) = pack_rows(gpu, qkv, b * t, 3 * c, QKV_SLOT)? {
            let k = Kernel::AttentionForwardImage;
            let d = gpu.dispatch_with_textures(k, &hs, &params, &[out, lse], &[&view], grid)?;
            return Ok(d.after(vec![pack]));
        }
    }
    let (kernel, grid) = if variant.tiled(s) {
        (
            Kernel::AttentionForwardTiled,
            AttentionVariant::tiled_grid(s)?,
        )
    } else {
        (Kernel::AttentionForward, grid)
    };
    gpu.dispatch(kernel, &hs, &params, &[qkv, out, lse], grid)
}

/// dqkv = ∂attention/∂qkv · dout (written, not added), two dispatches that recompute the
/// probabilities from `qkv` and `lse`; `dstat` (B, NH, T) is scratch. Kernels of
/// [`AttentionVariant::for_gpu`].
///   dqkv: (B, T, 3C)   dout: (B, T, C)   qkv, out, lse as written by [`forward`]
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
    let v = AttentionVariant::for_gpu(gpu);
    backward_with(gpu, v, dqkv, dstat, dout, qkv, out, lse, s)
}

/// [`backward`] with the kernels of `variant`.
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    gpu: &Gpu,
    variant: AttentionVariant,
    dqkv: &Tensor,
    dstat: &Tensor,
    dout: &Tensor,
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    s: &AttentionShape,
) -> Result<[Dispatch; 2]> {
    const OP: &str = "attention::backward";
    let AttentionShape { b, t, c, nh } = *s;
    expect_len(OP, "qkv", qkv, b * t * 3 * c)?;
    expect_len(OP, "dqkv", dqkv, b * t * 3 * c)?;
    expect_len(OP, "dout", dout, b * t * c)?;
    expect_len(OP, "out", out, b * t * c)?;
    expect_len(OP, "lse", lse, b * nh * t)?;
    expect_len(OP, "dstat", dstat, b * nh * t)?;
    let (params, hs, grid) = s.prepare()?;
    if variant.image(s) {
        // Each dispatch packs its own textures: the two may be recorded apart.
        let packs = || -> Result<Option<(Vec<Dispatch>, [wgpu::TextureView; 2])>> {
            let q = pack_rows(gpu, qkv, b * t, 3 * c, QKV_SLOT)?;
            let g = pack_rows(gpu, dout, b * t, c, DOUT_SLOT)?;
            Ok(q.zip(g)
                .map(|((pq, vq), (pg, vg))| (vec![pq, pg], [vq, vg])))
        };
        if let (Some((before_r, [q, g])), Some((before_c, _))) = (packs()?, packs()?) {
            let (rk, ck) = (
                Kernel::AttentionBackwardRowsImage,
                Kernel::AttentionBackwardColsImage,
            );
            let rows = [lse, out, dstat, dqkv];
            let cols = [lse, dstat, dqkv];
            let r = gpu.dispatch_with_textures(rk, &hs, &params, &rows, &[&q, &g], grid)?;
            let c = gpu.dispatch_with_textures(ck, &hs, &params, &cols, &[&q, &g], grid)?;
            return Ok([r.after(before_r), c.after(before_c)]);
        }
    }
    let (rows, cols, grid) = if variant.tiled(s) {
        (
            Kernel::AttentionBackwardRowsTiled,
            Kernel::AttentionBackwardColsTiled,
            AttentionVariant::tiled_grid(s)?,
        )
    } else {
        (
            Kernel::AttentionBackwardRows,
            Kernel::AttentionBackwardCols,
            grid,
        )
    };
    Ok([
        gpu.dispatch(
            rows,
            &hs,
            &params,
            &[dout, qkv, lse, out, dstat, dqkv],
            grid,
        )?,
        gpu.dispatch(cols, &hs, &params, &[dout, qkv, lse, dstat, dqkv], grid)?,
    ])
}
