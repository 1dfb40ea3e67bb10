//! `qmatmul.wgsl`: C = alpha · A · op(Q) (+ bias) (+ C) with Q a frozen weight in one of ggml's
//! quantized block formats ([`FORMATS`]), decoded in registers so that no f32 or f16 copy of the
//! weight exists; the GPU layout of those blocks ([`pack`], [`unpack`]) and the tensors holding
//! them ([`upload`]).
//!
//! [`matmul`](super::matmul::matmul) sends a quantized B here. A quantized tensor is
//! `(rows, cols)`, in blocks along its rows: a linear layer's weight in nn.Linear's `(out, in)`
//! layout, so its forward is `x · Wᵀ` (`trans_b`) and its input gradient `dy · W`.

use std::mem::size_of;

use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{Dispatch, Dtype, Gpu, KernelDef, ShaderDef, Tensor};
use crate::quant::{self, GgmlType};

use super::matmul::MatmulOp;
use super::{expect_len, groups, u32_of};

/// The block formats the GPU kernels read.
pub const FORMATS: &[GgmlType] = &[GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K];

/// `qmatmul.wgsl`. Its kernels clamp or guard every index and the launcher checks every
/// length, so naga's bounds checks are off ([`ShaderDef::trusted`]).
pub const SHADER: ShaderDef =
    ShaderDef::text("qmatmul.wgsl", include_str!("../../shaders/qmatmul.wgsl")).trusted();

const PARAMS: usize = size_of::<Params>();

/// C = A · Qᵀ, Q (N, K): a quantized linear layer's forward, the LM head's logits.
pub const NT: KernelDef = KernelDef::new(
    &SHADER,
    "qmatmul_nt",
    &[(5, R), (2, R), (3, R), (4, W)],
    PARAMS,
)
.quant(2);
/// C = A · Q, Q (K, N): a quantized linear layer's input gradient.
pub const NN: KernelDef = KernelDef::new(
    &SHADER,
    "qmatmul_nn",
    &[(1, R), (5, R), (2, R), (3, R), (4, W)],
    PARAMS,
)
.quant(2);

/// `C[i, :] = Q[ids[i] - v0, :]`: the token embedding from one quantized vocabulary shard.
pub const ROWS: KernelDef =
    KernelDef::new(&SHADER, "qmatmul_rows", &[(6, R), (2, R), (4, W)], PARAMS).quant(2);

/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&NT, &NN, &ROWS];

/// Mirrors `struct Params` in qmatmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    cols: u32,
    scales: u32,
    alpha: f32,
    v0: u32,
}

/// The value of qmatmul.wgsl's `FORMAT` override for `ty`.
fn format_id(ty: GgmlType) -> Option<f64> {
    FORMATS.iter().position(|&f| f == ty).map(|i| i as f64)
}

/// Whether the GPU kernels read `ty`.
pub fn supported(ty: GgmlType) -> bool {
    format_id(ty).is_some()
}

/// Words of one block's quantized values in the GPU layout (Q8_0, Q4_0: the scales follow
/// all blocks' values; Q4_K: the whole super-block, as ggml stores it).
fn value_words(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q8_0 => 8,
        GgmlType::Q4_0 => 4,
        _ => ty.block_bytes() / 4,
    }
}

/// Bytes `len` elements of `ty` take in the GPU layout ([`pack`]).
pub fn packed_bytes(ty: GgmlType, len: usize) -> usize {
    let blocks = len.div_ceil(ty.block_len());
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 => 4 * (blocks * value_words(ty) + blocks.div_ceil(2)),
        _ => blocks * ty.block_bytes(),
    }
}

/// The first word of the scale region in the GPU layout of `len` elements of `ty`.
fn scale_word(ty: GgmlType, len: usize) -> usize {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 => len / ty.block_len() * value_words(ty),
        _ => 0,
    }
}

fn check_format(op: &'static str, ty: GgmlType, len: usize) -> Result<usize> {
    if !supported(ty) {
        return Err(Error::invalid(
            "quantized weight type",
            ty.name(),
            format!(
                "the GPU kernels read {}; dequantize it or choose one of those",
                quant::names(FORMATS)
            ),
        ));
    }
    if !len.is_multiple_of(ty.block_len()) {
        return Err(Error::shape(
            op,
            format!(
                "{len} elements of {} are not whole blocks of {}",
                ty.name(),
                ty.block_len()
            ),
        ));
    }
    Ok(len / ty.block_len())
}

/// ggml's blocks of `len` elements of `ty` (`bytes`, as a GGUF file stores them) in the GPU
/// layout the kernels read: values as whole words, and for Q8_0 and Q4_0 every block's f16
/// scale after all values, two to a word.
pub fn pack(ty: GgmlType, bytes: &[u8], len: usize) -> Result<Vec<u32>> {
    const OP: &str = "qmatmul::pack";
    let blocks = check_format(OP, ty, len)?;
    let bb = ty.block_bytes();
    if bytes.len() != blocks * bb {
        return Err(Error::shape(
            OP,
            format!(
                "{len} elements of {} take {} bytes, {} given",
                ty.name(),
                blocks * bb,
                bytes.len()
            ),
        ));
    }
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut out = Vec::with_capacity(packed_bytes(ty, len) / 4);
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            for block in bytes.chunks_exact(bb) {
                out.extend(block[2..].chunks_exact(4).map(word));
            }
            let scale =
                |i: usize| u32::from(u16::from_le_bytes([bytes[i * bb], bytes[i * bb + 1]]));
            for pair in (0..blocks).step_by(2) {
                let hi = if pair + 1 < blocks {
                    scale(pair + 1)
                } else {
                    0
                };
                out.push(scale(pair) | hi << 16);
            }
        }
        _ => out.extend(bytes.chunks_exact(4).map(word)),
    }
    Ok(out)
}

/// The inverse of [`pack`]: ggml's blocks of `len` elements of `ty` from the GPU layout.
pub fn unpack(ty: GgmlType, words: &[u32], len: usize) -> Result<Vec<u8>> {
    const OP: &str = "qmatmul::unpack";
    let blocks = check_format(OP, ty, len)?;
    if words.len() < packed_bytes(ty, len) / 4 {
        return Err(Error::shape(
            OP,
            format!(
                "{len} elements of {} need more than {} words",
                ty.name(),
                words.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(blocks * ty.block_bytes());
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            let vw = value_words(ty);
            let scales = &words[scale_word(ty, len)..];
            for i in 0..blocks {
                let d = (scales[i / 2] >> (16 * (i % 2))) as u16;
                out.extend(d.to_le_bytes());
                for w in &words[i * vw..(i + 1) * vw] {
                    out.extend(w.to_le_bytes());
                }
            }
        }
        _ => {
            for w in &words[..blocks * ty.block_bytes() / 4] {
                out.extend(w.to_le_bytes());
            }
        }
    }
    Ok(out)
}

/// A quantized weight of `shape` = (rows, cols) on the GPU from ggml's blocks (`bytes`, blocks
/// along each row, as a GGUF file stores an nn.Linear weight): [`Dtype::Quant`].
pub fn upload(
    gpu: &Gpu,
    name: &str,
    ty: GgmlType,
    bytes: &[u8],
    shape: [usize; 2],
) -> Result<Tensor> {
    let [rows, cols] = shape;
    check_row(name, ty, cols)?;
    let words = pack(ty, bytes, rows * cols)?;
    gpu.upload_packed(name, &words, &shape, Dtype::Quant(ty))
}

/// [`upload`] of `values` (rows, cols), quantized to `ty` on the host first.
pub fn quantize_upload(
    gpu: &Gpu,
    name: &str,
    ty: GgmlType,
    values: &[f32],
    shape: [usize; 2],
) -> Result<Tensor> {
    check_row(name, ty, shape[1])?;
    let bytes = quant::quantize(ty, values)?;
    upload(gpu, name, ty, &bytes, shape)
}

/// A row of `cols` elements must be whole blocks of `ty`.
fn check_row(name: &str, ty: GgmlType, cols: usize) -> Result<()> {
    check_format("qmatmul::upload", ty, 0)?;
    if cols == 0 || !cols.is_multiple_of(ty.block_len()) {
        return Err(Error::invalid(
            "quantized weight",
            name,
            format!(
                "its rows are {cols} long, not whole {}-element blocks of {}; choose a format with \
                 smaller blocks (q8_0 and q4_0 take rows that are multiples of 32)",
                ty.block_len(),
                ty.name()
            ),
        ));
    }
    Ok(())
}

/// c = alpha · a · op(q) (+ bias) (+ c), q quantized: with `op.trans_b`, q is (n, k) and the
/// product is a · qᵀ; otherwise q is (k, n). No batches, `a` not transposed.
pub(crate) fn qmatmul(
    gpu: &Gpu,
    c: &Tensor,
    a: &Tensor,
    q: &Tensor,
    bias: Option<&Tensor>,
    op: &MatmulOp,
) -> Result<Dispatch> {
    const OP: &str = "qmatmul";
    let Dtype::Quant(ty) = q.dtype() else {
        return Err(Error::shape(OP, format!("{} is not quantized", q.name())));
    };
    let MatmulOp { m, n, k, .. } = *op;
    if op.batch != 1 || op.trans_a {
        return Err(Error::shape(
            OP,
            format!(
                "{}: a quantized B takes one product with A as stored",
                q.name()
            ),
        ));
    }
    let (shape, cols) = if op.trans_b { ([n, k], k) } else { ([k, n], n) };
    if q.shape() != shape {
        return Err(Error::shape(
            OP,
            format!(
                "{} is {:?}, expected {shape:?} for a ({m}, {k}) x ({k}, {n}) product",
                q.name(),
                q.shape()
            ),
        ));
    }
    expect_len(OP, "C", c, m * n)?;
    expect_len(OP, "A", a, m * k)?;
    if let Some(bias) = bias {
        expect_len(OP, "bias", bias, n)?;
    }
    let params = Params {
        m: u32_of("m", m)?,
        n: u32_of("n", n)?,
        k: u32_of("k", k)?,
        flags: u32::from(bias.is_some()) | (u32::from(op.accumulate) << 1),
        cols: u32_of("cols", cols)?,
        scales: u32_of("scales", scale_word(ty, q.len()))?,
        alpha: op.alpha,
        v0: 0,
    };
    let format = format_id(ty).expect("a quantized tensor holds a GPU format");
    let grid = if m == 0 || n == 0 {
        [0, 0, 0]
    } else {
        [groups(n, 256)?, groups(m, 4)?, 1]
    };
    let bias = bias.unwrap_or(gpu.dummy());
    let constants = [("FORMAT", format)];
    if op.trans_b {
        gpu.dispatch(&NT, &constants, &params, &[a, q, bias, c], grid)
    } else {
        // A is read as scalars and, where K is a multiple of 4, as vec4 (otherwise the vec4
        // binding is unused and takes the dummy, which fits it whatever A's size).
        let a4 = if k.is_multiple_of(4) { a } else { gpu.dummy() };
        gpu.dispatch(&NN, &constants, &params, &[a, a4, q, bias, c], grid)
    }
}

/// The token embedding from quantized vocabulary shards (consecutive rows of the table, each
/// `(rows_i, c)`): `out[i] = table[ids[i]]`, one dispatch per shard.
///   out: (N, c)   ids: (N,) u32
pub fn embedding(
    gpu: &Gpu,
    out: &Tensor,
    ids: &Tensor,
    shards: &[&Tensor],
) -> Result<Vec<Dispatch>> {
    const OP: &str = "qmatmul::embedding";
    let Some(first) = shards.first() else {
        return Err(Error::shape(OP, "no embedding shard"));
    };
    let c = first.shape()[1];
    let n = ids.len();
    expect_len(OP, "out", out, n * c)?;
    let mut v0 = 0usize;
    let mut dispatches = Vec::with_capacity(shards.len());
    for (i, shard) in shards.iter().enumerate() {
        let Dtype::Quant(ty) = shard.dtype() else {
            return Err(Error::shape(
                OP,
                format!("{} is not quantized", shard.name()),
            ));
        };
        let rows = shard.shape()[0];
        if shard.shape() != [rows, c] || !c.is_multiple_of(4) {
            return Err(Error::shape(
                OP,
                format!("shard {i} is {:?}, expected rows of {c}", shard.shape()),
            ));
        }
        let params = Params {
            m: u32_of("tokens", n)?,
            n: u32_of("C", c)?,
            k: u32_of("rows", rows)?,
            flags: if i == 0 { 0 } else { 2 },
            cols: u32_of("C", c)?,
            scales: u32_of("scales", scale_word(ty, shard.len()))?,
            alpha: 1.0,
            v0: u32_of("vocab", v0)?,
        };
        let format = format_id(ty).expect("a quantized tensor holds a GPU format");
        let grid = crate::gpu::groups_1d(groups(n * c / 4, 64)?);
        dispatches.push(gpu.dispatch(
            &ROWS,
            &[("FORMAT", format)],
            &params,
            &[ids, shard, out],
            grid,
        )?);
        v0 += rows;
    }
    Ok(dispatches)
}
