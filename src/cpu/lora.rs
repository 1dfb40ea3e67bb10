//! `kernels::lora`'s reference: the fused low-rank path and its gradients.

use crate::kernels::{dropout::Dropout, lora::LoraShape};

/// The fused LoRA forward: u = dropout(x) · aᵀ, y += scale · u · bᵀ.
///   y: (M, N)   u: (M, R)   x: (M, K)   a: (R, K)   b: (N, R)
pub fn forward(
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
pub fn backward(
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
