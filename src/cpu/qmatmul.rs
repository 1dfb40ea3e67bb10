//! Reference for `kernels::qmatmul`: the f32 matmul on the dequantized weight.

use crate::error::Result;
use crate::kernels::matmul::MatmulOp;
use crate::quant::{self, GgmlType};

/// c = alpha · a · op(Q) (+ bias) (+ c) with Q given as ggml's blocks of `ty` (`q`, blocks along
/// its rows): with `op.trans_b` Q is (n, k), otherwise (k, n).
pub fn qmatmul(
    c: &mut [f32],
    a: &[f32],
    q: &[u8],
    ty: GgmlType,
    bias: Option<&[f32]>,
    op: &MatmulOp,
) -> Result<()> {
    let w = quant::dequantize(ty, q, op.k * op.n)?;
    super::matmul::matmul(c, a, &w, bias, op);
    Ok(())
}

/// `out[i] = table[ids[i]]` with the table (vocab, c) given as ggml's blocks of `ty`.
pub fn embedding(out: &mut [f32], ids: &[u32], table: &[u8], ty: GgmlType, c: usize) -> Result<()> {
    let rows = table.len() / ty.block_bytes() * ty.block_len() / c;
    let t = quant::dequantize(ty, table, rows * c)?;
    for (o, &id) in out.chunks_exact_mut(c).zip(ids) {
        o.copy_from_slice(&t[id as usize * c..(id as usize + 1) * c]);
    }
    Ok(())
}
