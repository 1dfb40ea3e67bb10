//! `kernels::matmul`'s reference: a batched GEMM with f64 sums.

use crate::kernels::matmul::MatmulOp;

/// C = alpha · op(A) · op(B) (+ bias) (+ C), batched as [`MatmulOp`] says.
/// A and B of length m·k / k·n are broadcast over the batch.
pub fn matmul(c: &mut [f32], a: &[f32], b: &[f32], bias: Option<&[f32]>, op: &MatmulOp) {
    let MatmulOp { m, n, k, batch, .. } = *op;
    let stride_a = if a.len() == m * k { 0 } else { m * k };
    let stride_b = if b.len() == k * n { 0 } else { k * n };
    for bi in 0..batch {
        let (a, b) = (&a[bi * stride_a..], &b[bi * stride_b..]);
        let c = &mut c[bi * m * n..(bi + 1) * m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for kk in 0..k {
                    let av = if op.trans_a {
                        a[kk * m + i]
                    } else {
                        a[i * k + kk]
                    };
                    let bv = if op.trans_b {
                        b[j * k + kk]
                    } else {
                        b[kk * n + j]
                    };
                    s += av as f64 * bv as f64;
                }
                let mut v = op.alpha as f64 * s;
                if let Some(bias) = bias {
                    v += bias[j] as f64;
                }
                if op.accumulate {
                    v += c[i * n + j] as f64;
                }
                c[i * n + j] = v as f32;
            }
        }
    }
}
