//! Plain-loop CPU reference of every kernel, written for clarity, not speed (llm.c style).
//! Tests compare each GPU kernel against these on random data; benches quote them as a
//! baseline.
//!
//! Accumulation is in f64 where a sum runs over a long dimension, so the reference is more
//! accurate than the kernels it checks.

pub mod gpt2;
pub mod philox;

use crate::kernels::{adamw::AdamW, dropout::Dropout, lora::LoraShape, matmul::MatmulOp};

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

/// out = dropout(inp): kept elements scaled by 1 / (1 - p), masks from Philox.
pub fn dropout(out: &mut [f32], inp: &[f32], d: &Dropout) {
    for (i, (o, &x)) in out.iter_mut().zip(inp).enumerate() {
        *o = x * d.multiplier(i as u32);
    }
}

/// The fused LoRA forward: u = dropout(x) · aᵀ, y += scale · u · bᵀ.
///   y: (M, N)   u: (M, R)   x: (M, K)   a: (R, K)   b: (N, R)
pub fn lora_forward(
    y: &mut [f32],
    u: &mut [f32],
    x: &[f32],
    a: &[f32],
    b: &[f32],
    s: &LoraShape,
    scale: f32,
    d: &Dropout,
) {
    let LoraShape { m, k, n, r } = *s;
    for row in 0..m {
        for j in 0..r {
            let mut acc = 0.0f64;
            for kk in 0..k {
                let i = row * k + kk;
                acc += (x[i] * d.multiplier(i as u32)) as f64 * a[j * k + kk] as f64;
            }
            u[row * r + j] = acc as f32;
        }
        for col in 0..n {
            let mut acc = 0.0f64;
            for j in 0..r {
                acc += u[row * r + j] as f64 * b[col * r + j] as f64;
            }
            y[row * n + col] += (scale as f64 * acc) as f32;
        }
    }
}

/// Gradients of the LoRA path (written, or added to when `accumulate`).
///   du: (M, R) = scale · dy · b        db: (N, R) = scale · dyᵀ · u
///   da: (R, K) = duᵀ · dropout(x)      dx: (M, K) += mask ⊙ du · a / (1 - p)
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    dx: Option<&mut [f32]>,
    da: &mut [f32],
    db: &mut [f32],
    du: &mut [f32],
    dy: &[f32],
    x: &[f32],
    a: &[f32],
    b: &[f32],
    u: &[f32],
    s: &LoraShape,
    scale: f32,
    d: &Dropout,
    accumulate: bool,
) {
    let LoraShape { m, k, n, r } = *s;
    for row in 0..m {
        for j in 0..r {
            let acc: f64 = (0..n)
                .map(|col| dy[row * n + col] as f64 * b[col * r + j] as f64)
                .sum();
            du[row * r + j] = (scale as f64 * acc) as f32;
        }
    }
    for col in 0..n {
        for j in 0..r {
            let acc: f64 = (0..m)
                .map(|row| dy[row * n + col] as f64 * u[row * r + j] as f64)
                .sum();
            let v = (scale as f64 * acc) as f32;
            db[col * r + j] = if accumulate { db[col * r + j] + v } else { v };
        }
    }
    for j in 0..r {
        for kk in 0..k {
            let acc: f64 = (0..m)
                .map(|row| {
                    let i = row * k + kk;
                    du[row * r + j] as f64 * (x[i] * d.multiplier(i as u32)) as f64
                })
                .sum();
            let v = acc as f32;
            da[j * k + kk] = if accumulate { da[j * k + kk] + v } else { v };
        }
    }
    if let Some(dx) = dx {
        for row in 0..m {
            for kk in 0..k {
                let acc: f64 = (0..r)
                    .map(|j| du[row * r + j] as f64 * a[j * k + kk] as f64)
                    .sum();
                let i = row * k + kk;
                dx[i] += acc as f32 * d.multiplier(i as u32);
            }
        }
    }
}

/// Σ x², accumulated in f64.
pub fn sumsq(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

/// One AdamW step at `step` (1-based) in the same f32 arithmetic as `adamw.wgsl`; `norm_sq`
/// is the squared global gradient norm used for clipping; when it is not finite the update is
/// skipped and nothing changes.
pub fn adamw(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    cfg: &AdamW,
    step: u64,
    lr: f32,
    norm_sq: f32,
) {
    if !norm_sq.is_finite() {
        return;
    }
    let (step_size, bc2_sqrt) = cfg.bias_correction(step, lr);
    let clip = if cfg.max_grad_norm > 0.0 {
        (cfg.max_grad_norm / (norm_sq.sqrt() + 1e-6)).min(1.0)
    } else {
        1.0
    };
    for i in 0..param.len() {
        let g = grad[i] * clip;
        let mut w = param[i] * (1.0 - lr * cfg.weight_decay);
        let mi = m[i] + (1.0 - cfg.beta1) * (g - m[i]);
        let vi = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
        w -= step_size * mi / (vi.sqrt() / bc2_sqrt + cfg.eps);
        m[i] = mi;
        v[i] = vi;
        param[i] = w;
    }
}

/// w += scale · (b · a)ᵀ when `fan_in_fan_out` (w: (K, N)), else w += scale · b · a (w: (N, K)).
///   a: (R, K)   b: (N, R)
pub fn merge(
    w: &mut [f32],
    a: &[f32],
    b: &[f32],
    k: usize,
    n: usize,
    r: usize,
    fan_in_fan_out: bool,
    scale: f32,
) {
    for row in 0..n {
        for col in 0..k {
            let s: f64 = (0..r)
                .map(|j| b[row * r + j] as f64 * a[j * k + col] as f64)
                .sum();
            let e = if fan_in_fan_out {
                col * n + row
            } else {
                row * k + col
            };
            w[e] += (scale as f64 * s) as f32;
        }
    }
}
