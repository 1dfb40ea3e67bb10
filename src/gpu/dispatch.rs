//! Kernels, the pipeline cache, and recorded dispatches that are replayed in one compute pass.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::{Dtype, Gpu, Tensor};
use crate::error::{Error, Result};

/// A WGSL source file in `shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderFile {
    /// `matmul.wgsl`
    Matmul,
    /// `lora.wgsl` (with `philox.wgsl` prepended)
    Lora,
    /// `dropout.wgsl` (with `philox.wgsl` prepended)
    Dropout,
    /// `adamw.wgsl`
    Adamw,
    /// `reduce.wgsl`
    Reduce,
    /// `merge.wgsl`
    Merge,
    /// `peak.wgsl`
    Peak,
    /// `embedding.wgsl`
    Embedding,
    /// `layernorm.wgsl`
    Layernorm,
    /// `elementwise.wgsl`
    Elementwise,
    /// `attention.wgsl`
    Attention,
    /// `cross_entropy.wgsl`
    CrossEntropy,
    /// `decode.wgsl`
    Decode,
    /// `matmul.wgsl` with the B operand stored as f16 (frozen weights, `SHADER_F16`)
    MatmulF16,
    /// `decode.wgsl` with the gemv weight stored as f16
    DecodeF16,
    /// `matmul.wgsl` + `matmul_coop.wgsl` on 8x8 cooperative matrices
    MatmulCoop8,
    /// `matmul.wgsl` + `matmul_coop.wgsl` on 16x16 cooperative matrices
    MatmulCoop16,
    /// [`ShaderFile::MatmulCoop8`] with B stored as f16
    MatmulCoop8F16,
    /// [`ShaderFile::MatmulCoop16`] with B stored as f16
    MatmulCoop16F16,
    /// `matmul.wgsl` + `matmul_image_sg.wgsl`: the image matmul sharing op(B) through
    /// 8-wide subgroups (`SUBGROUP`)
    MatmulImageSubgroup,
}

const PHILOX: &str = include_str!("../../shaders/philox.wgsl");

impl ShaderFile {
    /// Every shader file.
    pub const ALL: [ShaderFile; 20] = [
        ShaderFile::Matmul,
        ShaderFile::Lora,
        ShaderFile::Dropout,
        ShaderFile::Adamw,
        ShaderFile::Reduce,
        ShaderFile::Merge,
        ShaderFile::Peak,
        ShaderFile::Embedding,
        ShaderFile::Layernorm,
        ShaderFile::Elementwise,
        ShaderFile::Attention,
        ShaderFile::CrossEntropy,
        ShaderFile::Decode,
        ShaderFile::MatmulF16,
        ShaderFile::DecodeF16,
        ShaderFile::MatmulCoop8,
        ShaderFile::MatmulCoop16,
        ShaderFile::MatmulCoop8F16,
        ShaderFile::MatmulCoop16F16,
        ShaderFile::MatmulImageSubgroup,
    ];

    /// File name inside `shaders/`.
    pub fn name(self) -> &'static str {
        match self {
            ShaderFile::Matmul => "matmul.wgsl",
            ShaderFile::Lora => "lora.wgsl",
            ShaderFile::Dropout => "dropout.wgsl",
            ShaderFile::Adamw => "adamw.wgsl",
            ShaderFile::Reduce => "reduce.wgsl",
            ShaderFile::Merge => "merge.wgsl",
            ShaderFile::Peak => "peak.wgsl",
            ShaderFile::Embedding => "embedding.wgsl",
            ShaderFile::Layernorm => "layernorm.wgsl",
            ShaderFile::Elementwise => "elementwise.wgsl",
            ShaderFile::Attention => "attention.wgsl",
            ShaderFile::CrossEntropy => "cross_entropy.wgsl",
            ShaderFile::Decode => "decode.wgsl",
            ShaderFile::MatmulF16 => "matmul.wgsl (f16 B)",
            ShaderFile::DecodeF16 => "decode.wgsl (f16 weight)",
            ShaderFile::MatmulCoop8 => "matmul_coop.wgsl (8x8)",
            ShaderFile::MatmulCoop16 => "matmul_coop.wgsl (16x16)",
            ShaderFile::MatmulCoop8F16 => "matmul_coop.wgsl (8x8, f16 B)",
            ShaderFile::MatmulCoop16F16 => "matmul_coop.wgsl (16x16, f16 B)",
            ShaderFile::MatmulImageSubgroup => "matmul_image_sg.wgsl",
        }
    }

    /// Whether the file's kernels keep every access in bounds by construction (indices are
    /// clamped or guarded, and launchers check buffer lengths), so naga's per-access bounds
    /// checks can be left out. On lavapipe they cost about 20% of matmul time.
    pub fn trusted(self) -> bool {
        matches!(
            self,
            ShaderFile::Matmul
                | ShaderFile::MatmulF16
                | ShaderFile::MatmulCoop8
                | ShaderFile::MatmulCoop16
                | ShaderFile::MatmulCoop8F16
                | ShaderFile::MatmulCoop16F16
                | ShaderFile::MatmulImageSubgroup
        )
    }

    /// The complete WGSL module, with shared snippets prepended.
    pub fn source(self) -> String {
        match self {
            ShaderFile::Matmul => include_str!("../../shaders/matmul.wgsl").to_string(),
            ShaderFile::Lora => format!("{PHILOX}\n{}", include_str!("../../shaders/lora.wgsl")),
            ShaderFile::Dropout => {
                format!("{PHILOX}\n{}", include_str!("../../shaders/dropout.wgsl"))
            }
            ShaderFile::Adamw => include_str!("../../shaders/adamw.wgsl").to_string(),
            ShaderFile::Reduce => include_str!("../../shaders/reduce.wgsl").to_string(),
            ShaderFile::Merge => include_str!("../../shaders/merge.wgsl").to_string(),
            ShaderFile::Peak => include_str!("../../shaders/peak.wgsl").to_string(),
            ShaderFile::Embedding => include_str!("../../shaders/embedding.wgsl").to_string(),
            ShaderFile::Layernorm => include_str!("../../shaders/layernorm.wgsl").to_string(),
            ShaderFile::Elementwise => include_str!("../../shaders/elementwise.wgsl").to_string(),
            ShaderFile::Attention => include_str!("../../shaders/attention.wgsl").to_string(),
            ShaderFile::CrossEntropy => {
                include_str!("../../shaders/cross_entropy.wgsl").to_string()
            }
            ShaderFile::Decode => include_str!("../../shaders/decode.wgsl").to_string(),
            ShaderFile::MatmulF16 => f16_build(
                ShaderFile::Matmul.source(),
                &[
                    ("b: array<f32>;", "b: array<f16>;"),
                    ("{ return b[i]; }", "{ return f32(b[i]); }"),
                    ("b4: array<vec4<f32>>;", "b4: array<vec4<f16>>;"),
                    ("{ return b4[i]; }", "{ return vec4<f32>(b4[i]); }"),
                ],
            ),
            ShaderFile::DecodeF16 => f16_build(
                ShaderFile::Decode.source(),
                &[
                    ("w4: array<vec4<f32>>;", "w4: array<vec4<f16>>;"),
                    ("{ return w4[i]; }", "{ return vec4<f32>(w4[i]); }"),
                ],
            ),
            ShaderFile::MatmulCoop8 => coop_build(ShaderFile::Matmul, 8),
            ShaderFile::MatmulCoop16 => coop_build(ShaderFile::Matmul, 16),
            ShaderFile::MatmulCoop8F16 => coop_build(ShaderFile::MatmulF16, 8),
            ShaderFile::MatmulCoop16F16 => coop_build(ShaderFile::MatmulF16, 16),
            ShaderFile::MatmulImageSubgroup => format!(
                "{}\n{}",
                ShaderFile::Matmul.source(),
                include_str!("../../shaders/matmul_image_sg.wgsl")
            ),
        }
    }
}

/// `matmul_coop.wgsl` appended to `base` (matmul.wgsl, B stored as f32 or f16) with its
/// fragments `side` x `side`, behind the `enable`s it needs.
fn coop_build(base: ShaderFile, side: u32) -> String {
    let base = base.source();
    let base = base.strip_prefix("enable f16;\n").unwrap_or(&base);
    let coop = include_str!("../../shaders/matmul_coop.wgsl");
    let coop = if side == 16 {
        coop.to_string()
    } else {
        const S16: &str = "const S: u32 = 16u;";
        assert_eq!(coop.matches(S16).count(), 1, "coop build: {S16}");
        coop.replace(S16, &format!("const S: u32 = {side}u;"))
            .replace("coop_mat16x16", &format!("coop_mat{side}x{side}"))
    };
    format!("enable f16;\nenable wgpu_cooperative_matrix;\n{base}\n{coop}")
}

/// `src` with `enable f16;` and each `(from, to)` replacement, where `from` occurs exactly
/// once (the files keep their f16-able reads behind one declaration and one accessor).
fn f16_build(src: String, replacements: &[(&str, &str)]) -> String {
    let mut out = format!("enable f16;\n{src}");
    for (from, to) in replacements {
        assert_eq!(out.matches(from).count(), 1, "f16 build: `{from}`");
        out = out.replacen(from, to, 1);
    }
    out
}

/// How a kernel accesses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

use Access::{Read as R, ReadWrite as W};

/// Texel format of the storage textures kernels bind (packed matmul operands).
pub(crate) const PACK_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba32Float;

/// Every compute kernel: a shader file, an entry point and its storage bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Workgroup-memory tiled matmul (GPUs).
    MatmulTiled,
    /// Register-tiled matmul without barriers (CPU adapters).
    MatmulRegister,
    /// Register-tiled matmul with vec4 loads (CPU adapters, dimensions multiple of 4).
    MatmulVec4,
    /// [`Kernel::MatmulTiled`] with B stored as f16.
    MatmulTiledF16,
    /// [`Kernel::MatmulRegister`] with B stored as f16.
    MatmulRegisterF16,
    /// [`Kernel::MatmulVec4`] with B stored as f16.
    MatmulVec4F16,
    /// Pack op(A) into an rgba32float storage texture (the image matmul, CPU adapters).
    MatmulPackA,
    /// Pack op(B) into an rgba32float storage texture.
    MatmulPackB,
    /// [`Kernel::MatmulPackB`] with B stored as f16.
    MatmulPackBF16,
    /// Matmul on 8x8 cooperative matrices, operands rounded to f16, f32 accumulation.
    MatmulCoop8,
    /// Matmul on 16x16 cooperative matrices (tensor cores).
    MatmulCoop16,
    /// [`Kernel::MatmulCoop8`] with B stored as f16.
    MatmulCoop8F16,
    /// [`Kernel::MatmulCoop16`] with B stored as f16.
    MatmulCoop16F16,
    /// Matmul of two packed operand textures (CPU adapters).
    MatmulImage,
    /// [`Kernel::MatmulImage`] with op(B) shared through 8-wide subgroups (llvmpipe).
    MatmulImageSubgroup,
    /// [`Kernel::AttentionForward`] reading q, k, v from a packed texture (CPU adapters).
    AttentionForwardImage,
    /// [`Kernel::AttentionBackwardRows`] reading q, k, v and dout from packed textures.
    AttentionBackwardRowsImage,
    /// [`Kernel::AttentionBackwardCols`] reading q, k, v and dout from packed textures.
    AttentionBackwardColsImage,
    /// Fused low-rank forward.
    LoraForward,
    /// Fused low-rank forward with vec4 loads and no workgroup memory (CPU adapters).
    LoraForwardVec4,
    /// dU = scale · dY · B.
    LoraBackwardDu,
    /// dB (+)= scale · dYᵀ · U.
    LoraBackwardDb,
    /// dA (+)= dUᵀ · dropout(X).
    LoraBackwardDa,
    /// dX += mask ⊙ (dU · A).
    LoraBackwardDx,
    /// Fused low-rank forward with workgroup-wide reductions over k (GPUs).
    LoraForwardPar,
    /// dU = scale · dY · B, reduced over n by a workgroup per 8 rows (GPUs).
    LoraBackwardDuPar,
    /// dB (+)= scale · dYᵀ · U, reduced over m by a workgroup per 32 columns (GPUs).
    LoraBackwardDbPar,
    /// dA (+)= dUᵀ · dropout(X), reduced over m by a workgroup per 32 columns (GPUs).
    LoraBackwardDaPar,
    /// out = dropout(inp).
    DropoutForward,
    /// dinp = dropout mask ⊙ dout.
    DropoutBackward,
    /// Fused AdamW.
    AdamwUpdate,
    /// Per-workgroup partial sums of squares.
    SumsqPartial,
    /// Final sum of the partials.
    SumsqFinal,
    /// W ± scale · (B A) in either weight layout.
    MergeForward,
    /// FMA throughput probe.
    PeakFma,
    /// Token + position embedding (one vocab shard).
    EmbeddingForward,
    /// LayerNorm forward.
    LayernormForward,
    /// LayerNorm backward (input gradient only).
    LayernormBackward,
    /// gelu_new forward.
    GeluForward,
    /// gelu_new backward.
    GeluBackward,
    /// out = a + b.
    AddForward,
    /// Causal self-attention forward: output and per-row log-sum-exp.
    AttentionForward,
    /// Attention backward over query rows: dq and D = rowsum(dout ⊙ out).
    AttentionBackwardRows,
    /// Attention backward over key columns: dk and dv.
    AttentionBackwardCols,
    /// Causal self-attention forward, 16 query rows per workgroup, keys and values in
    /// workgroup-memory tiles (GPUs).
    AttentionForwardTiled,
    /// Attention backward over blocks of 16 query rows: dq and D (GPUs).
    AttentionBackwardRowsTiled,
    /// Attention backward over blocks of 16 key rows: dk and dv (GPUs).
    AttentionBackwardColsTiled,
    /// Running softmax statistics of one logits chunk.
    CeStats,
    /// Per-row cross-entropy loss.
    CeLoss,
    /// dlogits of one chunk, in place.
    CeGrad,
    /// Token + position embedding at positions read from a buffer (one vocab shard).
    DecodeEmbedding,
    /// Write new keys and values into the KV cache.
    KvStore,
    /// Causal attention of new queries over the KV cache.
    DecodeAttention,
    /// Copy one row.
    CopyRow,
    /// One-row x · W (+ bias), W stored (in, out).
    GemvCols,
    /// One-row x · Wᵀ, W stored (out, in).
    GemvRows,
    /// [`Kernel::GemvCols`] with W stored as f16.
    GemvColsF16,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 57] = [
        Kernel::MatmulTiled,
        Kernel::MatmulRegister,
        Kernel::MatmulVec4,
        Kernel::LoraForward,
        Kernel::LoraForwardVec4,
        Kernel::LoraBackwardDu,
        Kernel::LoraBackwardDb,
        Kernel::LoraBackwardDa,
        Kernel::LoraBackwardDx,
        Kernel::DropoutForward,
        Kernel::DropoutBackward,
        Kernel::AdamwUpdate,
        Kernel::SumsqPartial,
        Kernel::SumsqFinal,
        Kernel::MergeForward,
        Kernel::PeakFma,
        Kernel::EmbeddingForward,
        Kernel::LayernormForward,
        Kernel::LayernormBackward,
        Kernel::GeluForward,
        Kernel::GeluBackward,
        Kernel::AddForward,
        Kernel::AttentionForward,
        Kernel::AttentionBackwardRows,
        Kernel::AttentionBackwardCols,
        Kernel::CeStats,
        Kernel::CeLoss,
        Kernel::CeGrad,
        Kernel::DecodeEmbedding,
        Kernel::KvStore,
        Kernel::DecodeAttention,
        Kernel::CopyRow,
        Kernel::GemvCols,
        Kernel::GemvRows,
        Kernel::LoraForwardPar,
        Kernel::LoraBackwardDuPar,
        Kernel::LoraBackwardDbPar,
        Kernel::LoraBackwardDaPar,
        Kernel::AttentionForwardTiled,
        Kernel::AttentionBackwardRowsTiled,
        Kernel::AttentionBackwardColsTiled,
        Kernel::MatmulTiledF16,
        Kernel::MatmulRegisterF16,
        Kernel::MatmulVec4F16,
        Kernel::GemvColsF16,
        Kernel::MatmulPackA,
        Kernel::MatmulPackB,
        Kernel::MatmulPackBF16,
        Kernel::MatmulImage,
        Kernel::MatmulImageSubgroup,
        Kernel::AttentionForwardImage,
        Kernel::AttentionBackwardRowsImage,
        Kernel::AttentionBackwardColsImage,
        Kernel::MatmulCoop8,
        Kernel::MatmulCoop16,
        Kernel::MatmulCoop8F16,
        Kernel::MatmulCoop16F16,
    ];

    /// The shader file holding the kernel.
    pub fn file(self) -> ShaderFile {
        use Kernel::*;
        match self {
            MatmulTiled | MatmulRegister | MatmulVec4 | MatmulPackA | MatmulPackB | MatmulImage => {
                ShaderFile::Matmul
            }
            MatmulTiledF16 | MatmulRegisterF16 | MatmulVec4F16 | MatmulPackBF16 => {
                ShaderFile::MatmulF16
            }
            GemvColsF16 => ShaderFile::DecodeF16,
            MatmulCoop8 => ShaderFile::MatmulCoop8,
            MatmulCoop16 => ShaderFile::MatmulCoop16,
            MatmulCoop8F16 => ShaderFile::MatmulCoop8F16,
            MatmulCoop16F16 => ShaderFile::MatmulCoop16F16,
            MatmulImageSubgroup => ShaderFile::MatmulImageSubgroup,
            LoraForward | LoraForwardVec4 | LoraBackwardDu | LoraBackwardDb | LoraBackwardDa
            | LoraBackwardDx | LoraForwardPar | LoraBackwardDuPar | LoraBackwardDbPar
            | LoraBackwardDaPar => ShaderFile::Lora,
            DropoutForward | DropoutBackward => ShaderFile::Dropout,
            AdamwUpdate => ShaderFile::Adamw,
            SumsqPartial | SumsqFinal => ShaderFile::Reduce,
            MergeForward => ShaderFile::Merge,
            PeakFma => ShaderFile::Peak,
            EmbeddingForward => ShaderFile::Embedding,
            LayernormForward | LayernormBackward => ShaderFile::Layernorm,
            GeluForward | GeluBackward | AddForward => ShaderFile::Elementwise,
            AttentionForward
            | AttentionBackwardRows
            | AttentionBackwardCols
            | AttentionForwardTiled
            | AttentionBackwardRowsTiled
            | AttentionBackwardColsTiled
            | AttentionForwardImage
            | AttentionBackwardRowsImage
            | AttentionBackwardColsImage => ShaderFile::Attention,
            CeStats | CeLoss | CeGrad => ShaderFile::CrossEntropy,
            DecodeEmbedding | KvStore | DecodeAttention | CopyRow | GemvCols | GemvRows => {
                ShaderFile::Decode
            }
        }
    }

    /// WGSL entry point name.
    pub fn entry(self) -> &'static str {
        use Kernel::*;
        match self {
            MatmulTiled | MatmulTiledF16 => "matmul_tiled",
            MatmulRegister | MatmulRegisterF16 => "matmul_register",
            MatmulVec4 | MatmulVec4F16 => "matmul_vec4",
            MatmulPackA => "matmul_pack_a",
            MatmulPackB | MatmulPackBF16 => "matmul_pack_b",
            MatmulImage => "matmul_image",
            MatmulImageSubgroup => "matmul_image_sg",
            MatmulCoop8 | MatmulCoop16 | MatmulCoop8F16 | MatmulCoop16F16 => "matmul_coop",
            LoraForward => "lora_forward",
            LoraForwardVec4 => "lora_forward_vec4",
            LoraBackwardDu => "lora_backward_du",
            LoraBackwardDb => "lora_backward_db",
            LoraBackwardDa => "lora_backward_da",
            LoraBackwardDx => "lora_backward_dx",
            DropoutForward => "dropout_forward",
            DropoutBackward => "dropout_backward",
            AdamwUpdate => "adamw_update",
            SumsqPartial => "sumsq_partial",
            SumsqFinal => "sumsq_final",
            MergeForward => "merge_forward",
            PeakFma => "peak_fma",
            EmbeddingForward => "embedding_forward",
            LayernormForward => "layernorm_forward",
            LayernormBackward => "layernorm_backward",
            GeluForward => "gelu_forward",
            GeluBackward => "gelu_backward",
            AddForward => "add_forward",
            AttentionForward => "attention_forward",
            AttentionBackwardRows => "attention_backward_rows",
            AttentionBackwardCols => "attention_backward_cols",
            CeStats => "ce_stats",
            CeLoss => "ce_loss",
            CeGrad => "ce_grad",
            DecodeEmbedding => "decode_embedding",
            KvStore => "kv_store",
            DecodeAttention => "decode_attention",
            CopyRow => "copy_row",
            GemvCols | GemvColsF16 => "gemv_cols",
            GemvRows => "gemv_rows",
            LoraForwardPar => "lora_forward_par",
            LoraBackwardDuPar => "lora_backward_du_par",
            LoraBackwardDbPar => "lora_backward_db_par",
            LoraBackwardDaPar => "lora_backward_da_par",
            AttentionForwardTiled => "attention_forward_tiled",
            AttentionBackwardRowsTiled => "attention_backward_rows_tiled",
            AttentionBackwardColsTiled => "attention_backward_cols_tiled",
            AttentionForwardImage => "attention_forward_image",
            AttentionBackwardRowsImage => "attention_backward_rows_image",
            AttentionBackwardColsImage => "attention_backward_cols_image",
        }
    }

    /// Storage bindings `(binding, access)` in the order launchers pass tensors. Binding 0 is
    /// always the uniform `Params`.
    pub fn bindings(self) -> &'static [(u32, Access)] {
        use Kernel::*;
        match self {
            MatmulTiled | MatmulRegister | MatmulTiledF16 | MatmulRegisterF16 | MatmulCoop8
            | MatmulCoop16 | MatmulCoop8F16 | MatmulCoop16F16 => &[(1, R), (2, R), (3, R), (4, W)],
            MatmulVec4 | MatmulVec4F16 => &[(5, R), (6, R), (3, R), (4, W)],
            MatmulPackA => &[(1, R)],
            MatmulPackB | MatmulPackBF16 => &[(2, R)],
            MatmulImage | MatmulImageSubgroup => &[(3, R), (4, W)],
            AttentionForwardImage => &[(2, W), (3, W)],
            AttentionBackwardRowsImage => &[(5, R), (9, R), (6, W), (7, W)],
            AttentionBackwardColsImage => &[(5, R), (8, R), (7, W)],
            LoraForward | LoraForwardPar => &[(1, R), (2, R), (3, R), (4, W), (5, W)],
            LoraForwardVec4 => &[(13, R), (14, R), (15, R), (4, W), (16, W)],
            LoraBackwardDu | LoraBackwardDuPar => &[(6, R), (3, R), (7, W)],
            LoraBackwardDb | LoraBackwardDbPar => &[(6, R), (8, R), (9, W)],
            LoraBackwardDa | LoraBackwardDaPar => &[(10, R), (1, R), (11, W)],
            LoraBackwardDx => &[(10, R), (2, R), (12, W)],
            DropoutForward | DropoutBackward => &[(1, R), (2, W)],
            AdamwUpdate => &[(1, W), (2, R), (3, W), (4, W), (5, R)],
            SumsqPartial => &[(1, R), (2, W)],
            SumsqFinal => &[(3, R), (4, W)],
            MergeForward => &[(1, R), (2, R), (3, W)],
            PeakFma => &[(1, W)],
            EmbeddingForward => &[(1, R), (2, R), (3, R), (4, W)],
            LayernormForward => &[(1, R), (2, R), (3, R), (4, W), (5, W), (6, W)],
            LayernormBackward => &[(7, R), (1, R), (2, R), (8, R), (9, R), (10, W)],
            GeluForward => &[(1, R), (2, W)],
            GeluBackward => &[(3, R), (1, R), (4, W)],
            AddForward => &[(5, R), (6, R), (2, W)],
            AttentionForward | AttentionForwardTiled => &[(1, R), (2, W), (3, W)],
            AttentionBackwardRows | AttentionBackwardRowsTiled => {
                &[(4, R), (1, R), (5, R), (9, R), (6, W), (7, W)]
            }
            AttentionBackwardCols | AttentionBackwardColsTiled => {
                &[(4, R), (1, R), (5, R), (8, R), (7, W)]
            }
            CeStats => &[(1, R), (2, R), (3, W), (4, W), (5, W)],
            CeLoss => &[(1, R), (7, R), (8, R), (9, R), (6, W)],
            CeGrad => &[(1, R), (7, R), (8, R), (10, W), (11, R)],
            DecodeEmbedding => &[(1, R), (2, R), (3, R), (4, R), (5, W)],
            KvStore => &[(1, R), (6, R), (7, W), (8, W)],
            DecodeAttention => &[(1, R), (6, R), (9, R), (10, R), (11, W), (5, W)],
            CopyRow => &[(12, R), (5, W)],
            GemvCols | GemvColsF16 => &[(16, R), (14, R), (15, R), (5, W)],
            GemvRows => &[(16, R), (14, R), (5, W)],
        }
    }

    /// `file::entry`, for messages.
    pub fn name(self) -> String {
        format!("{}::{}", self.file().name(), self.entry())
    }

    /// Storage-texture bindings `(binding, access)` (rgba32float, 2D; `Read` is read-only,
    /// `ReadWrite` write-only), in the order launchers pass texture views.
    pub fn texture_bindings(self) -> &'static [(u32, Access)] {
        use Kernel::*;
        match self {
            MatmulPackA | MatmulPackB | MatmulPackBF16 => &[(7, W)],
            MatmulImage | MatmulImageSubgroup => &[(8, R), (9, R)],
            AttentionForwardImage => &[(10, R)],
            AttentionBackwardRowsImage | AttentionBackwardColsImage => &[(10, R), (11, R)],
            _ => &[],
        }
    }

    /// The binding that holds f16 elements (the f16 builds' weight), if any; every other
    /// binding holds 32-bit ones.
    pub fn f16_binding(self) -> Option<u32> {
        use Kernel::*;
        match self {
            MatmulTiledF16 | MatmulRegisterF16 | MatmulPackBF16 | MatmulCoop8F16
            | MatmulCoop16F16 => Some(2),
            MatmulVec4F16 => Some(6),
            GemvColsF16 => Some(14),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    kernel: Kernel,
    constants: Vec<(&'static str, u64)>,
}

/// Split `n` workgroups over x and y so that neither exceeds the 65,535 per-dimension limit.
/// Kernels recover the linear index as `wid.x + wid.y * num_workgroups.x`.
pub(crate) fn groups_1d(n: u32) -> [u32; 3] {
    const MAX: u32 = 65_535;
    if n <= MAX {
        [n, 1, 1]
    } else {
        [MAX, n.div_ceil(MAX), 1]
    }
}

/// Annotate WGSL with line numbers for error messages.
fn numbered(src: &str) -> String {
    src.lines()
        .enumerate()
        .map(|(i, l)| format!("{:4} | {l}\n", i + 1))
        .collect()
}

impl Gpu {
    fn module(&self, file: ShaderFile) -> Result<Arc<wgpu::ShaderModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(file.name()) {
            return Ok(m.clone());
        }
        let src = file.source();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(file.name()),
            source: wgpu::ShaderSource::Wgsl(src.as_str().into()),
        };
        // Every loop in shaders/ is a counted `for` over bounds from uniforms or constants
        // with a non-zero step, so none can run forever: naga's loop bounding (a counter
        // checked on every iteration of every loop) is off for all files. It stops
        // llvmpipe from unrolling the fixed-length inner loops over a head, so private arrays
        // indexed by their counters went to scratch memory: attention on lavapipe took 2.6 to
        // 4x as long with it. Bounds checks stay, except in trusted files.
        let checks = if file.trusted() {
            wgpu::ShaderRuntimeChecks::unchecked()
        } else {
            wgpu::ShaderRuntimeChecks {
                force_loop_bounding: false,
                ..wgpu::ShaderRuntimeChecks::checked()
            }
        };
        // SAFETY: no loop in any file can run forever (above); the kernels of a trusted file
        // clamp or guard every index themselves and their launchers check every buffer length
        // (see `ShaderFile::trusted`); the driver's robust buffer access still applies.
        let module = unsafe { self.device.create_shader_module_trusted(desc, checks) };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                kernel: file.name().into(),
                message: e.to_string(),
                source_text: numbered(&src),
            });
        }
        let module = Arc::new(module);
        modules.insert(file.name(), module.clone());
        Ok(module)
    }

    fn layout(&self, kernel: Kernel) -> Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)> {
        let mut layouts = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        layouts
            .entry(kernel)
            .or_insert_with(|| {
                let buffer = |binding, ty| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                };
                let mut entries = vec![buffer(0, wgpu::BufferBindingType::Uniform)];
                for &(binding, access) in kernel.bindings() {
                    let read_only = access == Access::Read;
                    entries.push(buffer(
                        binding,
                        wgpu::BufferBindingType::Storage { read_only },
                    ));
                }
                for &(binding, access) in kernel.texture_bindings() {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::StorageTexture {
                            access: match access {
                                Access::Read => wgpu::StorageTextureAccess::ReadOnly,
                                Access::ReadWrite => wgpu::StorageTextureAccess::WriteOnly,
                            },
                            format: PACK_FORMAT,
                            view_dimension: wgpu::TextureViewDimension::D2,
                        },
                        count: None,
                    });
                }
                let bgl = self
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some(kernel.entry()),
                        entries: &entries,
                    });
                let pl = self
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(kernel.entry()),
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                Arc::new((bgl, pl))
            })
            .clone()
    }

    /// The compute pipeline for `kernel` with `constants`, built once and cached.
    pub(crate) fn pipeline(
        &self,
        kernel: Kernel,
        constants: &[(&'static str, f64)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = PipelineKey {
            kernel,
            constants: constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
        };
        if let Some(p) = self
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let module = self.module(kernel.file())?;
        let layout = self.layout(kernel);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry()),
                layout: Some(&layout.1),
                module: &module,
                entry_point: Some(kernel.entry()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                kernel: format!("{} with constants {constants:?}", kernel.name()),
                message: e.to_string(),
                source_text: numbered(&kernel.file().source()),
            });
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Build a dispatch of `kernel`: its uniform `params`, the tensors in the order of
    /// [`Kernel::bindings`], and the workgroup counts. Nothing runs until the dispatch is
    /// passed to [`Gpu::run`] or a [`Recording`].
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        constants: &[(&'static str, f64)],
        params: &P,
        tensors: &[&Tensor],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        self.dispatch_with_textures(kernel, constants, params, tensors, &[], groups)
    }

    /// [`Gpu::dispatch`] for kernels that also bind storage textures, given in the order of
    /// [`Kernel::texture_bindings`].
    pub(crate) fn dispatch_with_textures<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        constants: &[(&'static str, f64)],
        params: &P,
        tensors: &[&Tensor],
        textures: &[&wgpu::TextureView],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        let spec = kernel.bindings();
        if kernel.texture_bindings().len() != textures.len() {
            return Err(Error::shape(
                "dispatch",
                format!(
                    "{} takes {} textures, {} given",
                    kernel.name(),
                    kernel.texture_bindings().len(),
                    textures.len()
                ),
            ));
        }
        if spec.len() != tensors.len() {
            return Err(Error::shape(
                "dispatch",
                format!(
                    "{} takes {} buffers, {} given",
                    kernel.name(),
                    spec.len(),
                    tensors.len()
                ),
            ));
        }
        let max = self.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::shape(
                "dispatch",
                format!(
                    "{} needs {groups:?} workgroups, over the adapter's {max} per dimension; use a smaller shape",
                    kernel.name()
                ),
            ));
        }
        for (&(binding, _), t) in spec.iter().zip(tensors) {
            let want = if kernel.f16_binding() == Some(binding) {
                Dtype::F16
            } else {
                Dtype::F32
            };
            if t.dtype() != want {
                return Err(Error::shape(
                    "dispatch",
                    format!(
                        "{} reads {} as {want:?}, but it holds {:?} elements",
                        kernel.name(),
                        t.name(),
                        t.dtype()
                    ),
                ));
            }
        }
        let pipeline = self.pipeline(kernel, constants)?;
        let layout = self.layout(kernel);
        let params = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(kernel.entry()),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params.as_entire_binding(),
        }];
        for (&(binding, _), t) in spec.iter().zip(tensors) {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: t.binding(),
            });
        }
        for (&(binding, _), view) in kernel.texture_bindings().iter().zip(textures) {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::TextureView(view),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry()),
            layout: &layout.0,
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                context: format!("binding buffers for {}", kernel.name()),
                message: e.to_string(),
            });
        }
        Ok(Dispatch {
            kernel,
            pipeline,
            bind_group,
            groups,
            params,
            before: Vec::new(),
        })
    }

    /// Encode `dispatches` in order into one compute pass and submit them once. Does not wait.
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.encode(&mut pass);
            }
        }
        self.queue.submit([enc.finish()]);
        self.check("submitting kernels")
    }
}

/// One recorded kernel launch: pipeline, bind group (with its own uniform parameters) and
/// workgroup counts. Built once, replayed any number of times.
#[derive(Debug)]
pub struct Dispatch {
    kernel: Kernel,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
    params: wgpu::Buffer,
    /// Dispatches that run first, in order (the image matmul's operand packing).
    before: Vec<Dispatch>,
}

impl Dispatch {
    /// The kernel this dispatch launches.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Workgroup counts.
    pub fn groups(&self) -> [u32; 3] {
        self.groups
    }

    /// Replace the uniform parameters (e.g. AdamW's step and learning rate). The write is
    /// ordered before the next submit.
    pub(crate) fn set_params<P: bytemuck::Pod>(&self, gpu: &Gpu, params: &P) {
        gpu.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(params));
    }

    /// This dispatch, preceded by `before` whenever it runs.
    pub(crate) fn after(mut self, before: Vec<Dispatch>) -> Self {
        self.before = before;
        self
    }

    fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.before {
            d.encode(pass);
        }
        let [x, y, z] = self.groups;
        if x == 0 || y == 0 || z == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

enum Op {
    Dispatch(Arc<Dispatch>),
    Clear(Tensor),
}

/// An ordered list of buffer clears and dispatches, recorded once and replayed with one
/// command encoder and one submit per [`Recording::run`]. Consecutive dispatches share one
/// compute pass.
#[derive(Default)]
pub struct Recording {
    ops: Vec<Op>,
}

impl Recording {
    /// An empty recording.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a dispatch.
    pub fn push(&mut self, d: Dispatch) {
        self.ops.push(Op::Dispatch(Arc::new(d)));
    }

    /// Append a dispatch that something else also holds (e.g. to update its parameters).
    pub fn push_shared(&mut self, d: Arc<Dispatch>) {
        self.ops.push(Op::Dispatch(d));
    }

    /// Append a zero-fill of `t`.
    pub fn clear(&mut self, t: &Tensor) {
        self.ops.push(Op::Clear(t.clone()));
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        let ops = &self.ops;
        let mut i = 0;
        while i < ops.len() {
            match &ops[i] {
                Op::Clear(t) => {
                    enc.clear_buffer(t.buffer(), t.offset(), Some(t.bytes()));
                    i += 1;
                }
                Op::Dispatch(_) => {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    while let Some(Op::Dispatch(d)) = ops.get(i) {
                        d.encode(&mut pass);
                        i += 1;
                    }
                }
            }
        }
    }

    /// Encode everything into one command buffer and submit it. Does not wait for the GPU.
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        Self::run_all(gpu, &[self])
    }

    /// Encode several recordings, in order, into one command buffer and submit it once.
    pub fn run_all(gpu: &Gpu, recordings: &[&Recording]) -> Result<()> {
        Self::run_all_then_copy(gpu, recordings, None)
    }

    /// Like [`Recording::run_all`], then copy `src` into the start of `dst` (a staging buffer
    /// for a readback that must not stall the next submit) in the same command buffer.
    pub fn run_all_then_copy(
        gpu: &Gpu,
        recordings: &[&Recording],
        copy: Option<(&Tensor, &wgpu::Buffer)>,
    ) -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for r in recordings {
            r.encode(&mut enc);
        }
        if let Some((src, dst)) = copy {
            enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst, 0, src.bytes());
        }
        gpu.queue.submit([enc.finish()]);
        gpu.check("running a recording")
    }
}
