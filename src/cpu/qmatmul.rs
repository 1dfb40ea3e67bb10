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
