//! ggml's tensor types, as GGUF files store them, to and from f32: the float types (f32, f16,
//! bf16) and the block quantizations Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32 elements a block) and
//! Q4_K, Q5_K, Q6_K (256).
//!
//! [`dequantize`] equals the `gguf` Python package's `gguf.quants.dequantize` bit for bit (the
//! same f32 operations in the same order; `tests/gguf.rs` checks every type against it).
//! [`quantize`] writes f32, f16, bf16, Q8_0 and Q4_0 exactly as that package (and ggml's reference
//! code) does, and Q4_K with a port of ggml's `quantize_row_q4_K_ref` ([`q4k`]).
//!
//! A block's bytes, in ggml's layout (little-endian; `d`, `m`, `dmin` are f16):
//! - Q4_0 (18): `d`, 16 bytes of nibbles: element `j` is the low nibble of byte `j`, element
//!   `j + 16` its high nibble; value `d * (q - 8)`.
//! - Q4_1 (20): `d`, `m`, nibbles as Q4_0; value `d * q + m`.
//! - Q5_0 (22): `d`, `qh` (u32, bit `j` is element `j`'s fifth bit), nibbles; `d * (q - 16)`.
//! - Q5_1 (24): `d`, `m`, `qh`, nibbles; `d * q + m`.
//! - Q8_0 (34): `d`, 32 i8; `d * q`.
//! - Q4_K (144): `d`, `dmin`, 12 bytes packing eight 6-bit scales and mins, 128 bytes of nibbles
//!   (sub-block `2k` is the low nibbles of bytes `32k..32k+32`, `2k + 1` their high nibbles);
//!   value `d * scale * q - dmin * min`.
//! - Q5_K (176): Q4_K's fields, then `qh` (32 bytes: bit `j` of byte `l` is the fifth bit of
//!   sub-block `j`'s element `l`) before the nibbles.
//! - Q6_K (210): 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales (one per 16
//!   elements), `d`; value `d * scale * (q - 32)`.

pub mod q4k;

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Elements per super-block of the K-quantizations.
pub const QK_K: usize = 256;

/// A ggml tensor type (GGUF's tensor types), with ggml's numeric ids.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half float.
    F16,
    /// bfloat16.
    BF16,
    /// 32 elements: an f16 scale and 4-bit values centred on 8.
    Q4_0,
    /// 32 elements: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// 32 elements: an f16 scale and 5-bit values centred on 16.
    Q5_0,
    /// 32 elements: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// 32 elements: an f16 scale and 8-bit signed values.
    Q8_0,
    /// 256 elements: 8 sub-blocks with 6-bit scales and mins under f16 `d` and `dmin`, 4-bit values.
    Q4_K,
    /// 256 elements: Q4_K with a fifth bit per value.
    Q5_K,
    /// 256 elements: 16 sub-blocks with 8-bit scales under an f16 `d`, 6-bit values.
    Q6_K,
}

/// Every type we read, in ggml id order.
pub const ALL_TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::BF16,
];

/// The types [`quantize`] writes.
pub const QUANTIZABLE: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_K,
];

impl GgmlType {
    /// ggml's id of the type (`enum ggml_type`), as GGUF's tensor infos store it.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// The type of ggml id `id`, if it is one we read.
    pub fn from_id(id: u32) -> Option<Self> {
        ALL_TYPES.into_iter().find(|t| t.id() == id)
    }

    /// ggml's name for a type id we do not read ("q2_k", "iq4_xs", ...), for messages.
    pub fn other_name(id: u32) -> Option<&'static str> {
        Some(match id {
            4 | 5 => "q4_2/q4_3 (removed from ggml)",
            9 => "q8_1",
            10 => "q2_k",
            11 => "q3_k",
            15 => "q8_k",
            16 => "iq2_xxs",
            17 => "iq2_xs",
            18 => "iq3_xxs",
            19 => "iq1_s",
            20 => "iq4_nl",
            21 => "iq3_s",
            22 => "iq2_s",
            23 => "iq4_xs",
            24 => "i8",
            25 => "i16",
            26 => "i32",
            27 => "i64",
            28 => "f64",
            29 => "iq1_m",
            31..=33 | 36..=38 => "q4_0_4_4/q4_0_4_8/q4_0_8_8/iq4_nl_* (removed from ggml)",
            34 => "tq1_0",
            35 => "tq2_0",
            39 => "mxfp4",
            40 => "nvfp4",
            _ => return None,
        })
    }

    /// The lowercase name: "f32", "q8_0", "q4_k", ...
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::BF16 => "bf16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q4_K => "q4_k",
            GgmlType::Q5_K => "q5_k",
            GgmlType::Q6_K => "q6_k",
        }
    }

    /// The type named `s` (case-insensitive: "Q4_K" and "q4_k" both work).
    pub fn parse(s: &str) -> Option<Self> {
        ALL_TYPES
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Elements per block: 1 for the float types, 32, or 256 ([`QK_K`]) for the K types.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    /// Bytes of `n` elements; `None` unless `n` is a multiple of [`block_len`](Self::block_len),
    /// or if the size overflows `usize`.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    /// Whether [`quantize`] writes this type.
    pub fn can_quantize(self) -> bool {
        QUANTIZABLE.contains(&self)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The names of `types`, comma-separated, for messages: "q8_0, q4_0, q4_k".
pub fn names(types: &[GgmlType]) -> String {
    types
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check that `bytes` holds exactly `n` elements of `ty`.
fn check_len(op: &'static str, ty: GgmlType, len: usize, n: usize) -> Result<()> {
    match ty.bytes_for(n) {
        None => Err(Error::shape(
            op,
            format!(
                "{n} elements of {ty}: not a multiple of its block of {} elements; give whole blocks",
                ty.block_len()
            ),
        )),
        Some(want) if want != len => Err(Error::shape(
            op,
            format!("{n} elements of {ty} take {want} bytes, but {len} were given"),
        )),
        Some(_) => Ok(()),
    }
}

/// Dequantize `n` elements stored as `ty` in `bytes` (exactly `ty.bytes_for(n)` long), bit for
/// bit as the `gguf` Python package's `gguf.quants.dequantize` computes them.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// [`dequantize`] into `out` (its length is the element count), without allocating.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_len("quant::dequantize", ty, bytes.len(), out.len())?;
    match ty {
        GgmlType::F32 => blocks::<4, 1>(bytes, out, |b, o| o[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            // Aligned on a little-endian machine: half's (vectorized) slice conversion.
            Ok(h) if cfg!(target_endian = "little") => {
                use half::slice::HalfFloatSliceExt;
                h.par_chunks(PAR_ELEMENTS)
                    .zip(out.par_chunks_mut(PAR_ELEMENTS))
                    .for_each(|(h, o)| h.convert_to_f32_slice(o));
            }
            _ => blocks::<2, 1>(bytes, out, |b, o| o[0] = f16::from_le_bytes(*b).to_f32()),
        },
        GgmlType::BF16 => blocks::<2, 1>(bytes, out, |b, o| {
            o[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16)
        }),
        GgmlType::Q4_0 => blocks::<18, 32>(bytes, out, dequant_q4_0),
        GgmlType::Q4_1 => blocks::<20, 32>(bytes, out, dequant_q4_1),
        GgmlType::Q5_0 => blocks::<22, 32>(bytes, out, dequant_q5_0),
        GgmlType::Q5_1 => blocks::<24, 32>(bytes, out, dequant_q5_1),
        GgmlType::Q8_0 => blocks::<34, 32>(bytes, out, dequant_q8_0),
        GgmlType::Q4_K => blocks::<144, 256>(bytes, out, dequant_q4_k),
        GgmlType::Q5_K => blocks::<176, 256>(bytes, out, dequant_q5_k),
        GgmlType::Q6_K => blocks::<210, 256>(bytes, out, dequant_q6_k),
    }
    Ok(())
}

/// Elements per rayon task; below this a tensor is converted on the calling thread.
const PAR_ELEMENTS: usize = 1 << 16;

/// Run `f` over every block of `bytes` (`BB` bytes each) and `out` (`BL` elements each), in
/// parallel chunks for large tensors. The lengths are already checked to agree.
fn blocks<const BB: usize, const BL: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; BB], &mut [f32; BL]) + Sync,
) {
    let run = |b: &[u8], o: &mut [f32]| {
        for (b, o) in b.chunks_exact(BB).zip(o.chunks_exact_mut(BL)) {
            f(b.try_into().unwrap(), o.try_into().unwrap());
        }
    };
    if out.len() <= PAR_ELEMENTS {
        run(bytes, out);
    } else {
        let per = PAR_ELEMENTS / BL;
        bytes
            .par_chunks(per * BB)
            .zip(out.par_chunks_mut(per * BL))
            .for_each(|(b, o)| run(b, o));
    }
}

/// `f` over every block of `values` (`BL` elements each) into `BB` bytes each, in parallel
/// chunks for large tensors (the Q4_K search costs about 200 ns a value).
fn quantize_blocks<const BB: usize, const BL: usize>(
    values: &[f32],
    f: impl Fn(&[f32; BL]) -> [u8; BB] + Sync,
) -> Vec<u8> {
    let mut out = vec![0u8; values.len() / BL * BB];
    let run = |v: &[f32], o: &mut [u8]| {
        for (v, o) in v.chunks_exact(BL).zip(o.chunks_exact_mut(BB)) {
            o.copy_from_slice(&f(v.try_into().unwrap()));
        }
    };
    if values.len() <= PAR_ELEMENTS {
        run(values, &mut out);
    } else {
        let per = PAR_ELEMENTS / BL;
        values
            .par_chunks(per * BL)
            .zip(out.par_chunks_mut(per * BB))
            .for_each(|(v, o)| run(v, o));
    }
    out
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 4-bit values of a 32-element block from its 16 bytes: low nibbles, then high nibbles.
fn nibbles32(qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0x0F;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

fn dequant_q4_0(b: &[u8; 18], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (o, q) in o.iter_mut().zip(nibbles32(&b[2..])) {
        *o = d * (q as i32 - 8) as f32;
    }
}

fn dequant_q4_1(b: &[u8; 20], o: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (o, q) in o.iter_mut().zip(nibbles32(&b[4..])) {
        *o = d * q as f32 + m;
    }
}

/// Q5's 5-bit values: the nibbles plus bit `j` of `qh` as the fifth bit of element `j`.
fn fives32(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = nibbles32(qs);
    for (j, q) in q.iter_mut().enumerate() {
        *q |= (((qh >> j) & 1) as u8) << 4;
    }
    q
}

fn dequant_q5_0(b: &[u8; 22], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (o, q) in o.iter_mut().zip(fives32(&b[2..6], &b[6..])) {
        *o = d * (q as i32 - 16) as f32;
    }
}

fn dequant_q5_1(b: &[u8; 24], o: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (o, q) in o.iter_mut().zip(fives32(&b[4..8], &b[8..])) {
        *o = d * q as f32 + m;
    }
}

fn dequant_q8_0(b: &[u8; 34], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (o, &q) in o.iter_mut().zip(&b[2..]) {
        *o = q as i8 as f32 * d;
    }
}

/// The eight 6-bit (scale, min) pairs of a Q4_K / Q5_K block's 12 scale bytes.
pub(crate) fn k_scale_min(s: &[u8]) -> [(u8, u8); 8] {
    let mut out = [(0, 0); 8];
    for (j, out) in out.iter_mut().enumerate() {
        *out = if j < 4 {
            (s[j] & 0x3F, s[j + 4] & 0x3F)
        } else {
            (
                (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            )
        };
    }
    out
}

fn dequant_q4_k(b: &[u8; 144], o: &mut [f32; 256]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[16..];
    for (j, (sc, m)) in k_scale_min(&b[4..16]).into_iter().enumerate() {
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let (bytes, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        for (o, q) in o[32 * j..32 * j + 32].iter_mut().zip(bytes) {
            *o = dl * ((q >> shift) & 0x0F) as f32 - ml;
        }
    }
}

fn dequant_q5_k(b: &[u8; 176], o: &mut [f32; 256]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (qh, qs) = (&b[16..48], &b[48..]);
    for (j, (sc, m)) in k_scale_min(&b[4..16]).into_iter().enumerate() {
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let (bytes, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        for ((o, q), h) in o[32 * j..32 * j + 32].iter_mut().zip(bytes).zip(qh) {
            let q = ((q >> shift) & 0x0F) | (((h >> j) & 1) << 4);
            *o = dl * q as f32 - ml;
        }
    }
}

fn dequant_q6_k(b: &[u8; 210], o: &mut [f32; 256]) {
    let d = f16_at(b, 208);
    let dl: [f32; 16] = std::array::from_fn(|i| d * b[192 + i] as i8 as f32);
    // Element 128h + 32k + l (scale 8h + 2k + l/16): the low nibble (k < 2) or high nibble of
    // ql[64h + 32(k % 2) + l], with bits 2k..2k+2 of qh[32h + l] above it.
    for h in 0..2 {
        let (ql, qh) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..160 + 32 * h]);
        let (o, dl) = (&mut o[128 * h..128 * h + 128], &dl[8 * h..8 * h + 8]);
        for l in 0..32 {
            let (lo, hi, h2) = (ql[l], ql[l + 32], qh[l]);
            let q = [
                (lo & 0x0F) | ((h2 & 3) << 4),
                (hi & 0x0F) | (((h2 >> 2) & 3) << 4),
                (lo >> 4) | (((h2 >> 4) & 3) << 4),
                (hi >> 4) | (((h2 >> 6) & 3) << 4),
            ];
            for (k, q) in q.into_iter().enumerate() {
                o[32 * k + l] = dl[2 * k + l / 16] * (q as i32 - 32) as f32;
            }
        }
    }
}

/// Quantize `values` (a multiple of the block length) into `ty`'s blocks.
///
/// F32, F16, BF16, Q8_0 and Q4_0 equal the `gguf` package's `quantize` (and ggml's reference)
/// bit for bit; Q4_K is [`q4k::quantize_block`]. The block types need finite values. Other types
/// are refused, naming the ones that can be written.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    let n = values.len();
    let Some(len) = ty.bytes_for(n) else {
        return Err(Error::shape(
            "quant::quantize",
            format!(
                "{n} values: not a multiple of {ty}'s block of {} elements; pad or choose \
                 another type",
                ty.block_len()
            ),
        ));
    };
    if ty.block_len() > 1 {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "value to quantize",
                format!("{} (element {i})", values[i]),
                format!("a finite number: {ty} cannot store NaN or infinity"),
            ));
        }
    }
    let mut out = Vec::with_capacity(len);
    match ty {
        GgmlType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values
            .iter()
            .for_each(|&v| out.extend_from_slice(&f16::from_f32(v).to_le_bytes())),
        GgmlType::BF16 => values
            .iter()
            .for_each(|&v| out.extend_from_slice(&to_bf16(v).to_le_bytes())),
        GgmlType::Q8_0 => out = quantize_blocks::<34, 32>(values, quantize_q8_0),
        GgmlType::Q4_0 => out = quantize_blocks::<18, 32>(values, quantize_q4_0),
        GgmlType::Q4_K => out = quantize_blocks::<144, QK_K>(values, q4k::quantize_block),
        _ => {
            return Err(Error::invalid(
                "quantization type",
                ty,
                format!("one of {}", names(&QUANTIZABLE)),
            ))
        }
    }
    if ty.block_len() > 1 {
        check_scales(ty, values, &out)?;
    }
    Ok(out)
}

/// The blocks' f16 scales (`d`, and Q4_K's `dmin`) are finite: values too large for the type
/// would otherwise be written as infinite scales.
fn check_scales(ty: GgmlType, values: &[f32], out: &[u8]) -> Result<()> {
    let fields: &[usize] = if ty == GgmlType::Q4_K { &[0, 2] } else { &[0] };
    for (i, b) in out.chunks_exact(ty.block_bytes()).enumerate() {
        if fields
            .iter()
            .any(|&o| !f16::from_le_bytes([b[o], b[o + 1]]).is_finite())
        {
            let block = &values[i * ty.block_len()..(i + 1) * ty.block_len()];
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            return Err(Error::invalid(
                "values to quantize",
                format!("block {i} (largest magnitude {amax})"),
                format!(
                    "values small enough for {ty}'s f16 scales (under about {}); scale the \
                     tensor down or store it as f16, bf16 or f32",
                    match ty {
                        GgmlType::Q8_0 => "8.3e6",
                        GgmlType::Q4_0 => "5.2e5",
                        _ => "3e7",
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// f32 to bf16 as ggml's `ggml_compute_fp32_to_bf16`: NaN made quiet, otherwise round to
/// nearest even.
fn to_bf16(v: f32) -> u16 {
    let n = v.to_bits();
    if n & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((n >> 16) | 64) as u16;
    }
    ((n + (0x7FFF + ((n >> 16) & 1))) >> 16) as u16
}

fn quantize_q8_0(x: &[f32; 32]) -> [u8; 34] {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut b = [0u8; 34];
    b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (q, &v) in b[2..].iter_mut().zip(x) {
        // f32::round rounds half away from zero, as ggml's roundf.
        *q = (v * id).round() as i8 as u8;
    }
    b
}

fn quantize_q4_0(x: &[f32; 32]) -> [u8; 18] {
    // The value of largest magnitude, keeping its sign (the first one on ties).
    let mut max = x[0];
    for &v in &x[1..] {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let q = |v: f32| ((v * id + 8.5).trunc() as u8).min(15);
    let mut b = [0u8; 18];
    b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for j in 0..16 {
        b[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn ids_names_and_sizes_round_trip() {
        for t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::parse(&t.name().to_uppercase()), Some(t));
            assert_eq!(t.bytes_for(t.block_len() * 3), Some(3 * t.block_bytes()));
            assert_eq!(GgmlType::other_name(t.id()), None);
        }
        assert_eq!(GgmlType::Q8_0.bytes_for(33), None);
        assert_eq!(GgmlType::F32.bytes_for(usize::MAX), None);
        assert_eq!(GgmlType::from_id(10), None);
        assert_eq!(GgmlType::other_name(10), Some("q2_k"));
    }

    #[test]
    fn lengths_and_types_are_checked() {
        let e = dequantize(GgmlType::Q8_0, &[0; 33], 32).unwrap_err();
        assert!(e.to_string().contains("take 34 bytes, but 33"), "{e}");
        let e = quantize(GgmlType::Q6_K, &[0.0; 256]).unwrap_err();
        assert!(e.to_string().contains("q8_0, q4_0, q4_k"), "{e}");
        let e = quantize(GgmlType::Q4_0, &[f32::NAN; 32]).unwrap_err();
        assert!(e.to_string().contains("finite"), "{e}");
        assert!(quantize(GgmlType::F16, &[f32::NAN]).is_ok());
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K] {
            let mut v = vec![0.5f32; ty.block_len() * 2];
            v[ty.block_len() + 3] = 1e9;
            let e = quantize(ty, &v).unwrap_err();
            assert!(
                e.to_string()
                    .contains("block 1 (largest magnitude 1000000000)"),
                "{e}"
            );
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        assert_eq!(to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0);
        for v in [0.1f32, -3.7, 1e-40, 65504.0] {
            assert_eq!(to_bf16(v), bf16::from_f32(v).to_bits());
        }
    }
}
