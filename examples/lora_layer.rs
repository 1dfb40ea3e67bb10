//! The classic LoRA demo on the GPU: one 768x768 layer (GPT-2's attn.c_proj, stored [in, out]
//! like its Conv1D) with a rank-8 adapter. Counts parameters, runs the fused LoRA forward,
//! merges the adapter into the weight and checks the merged layer gives the same outputs.
//!
//! cargo run --release --example lora_layer

use anyhow::{ensure, Result};
use lora_wgpu::kernels::dropout::Dropout;
use lora_wgpu::kernels::lora::{self, LoraShape};
use lora_wgpu::kernels::matmul::{matmul, MatmulOp};
use lora_wgpu::kernels::merge::merge;
use lora_wgpu::{Gpu, GpuOptions};

/// Deterministic values uniform in [-scale, scale) (a small LCG keeps the example dependency-free).
fn uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// 589824 -> "589,824".
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() -> Result<()> {
    let (d_in, d_out, r, alpha, rows) = (768usize, 768usize, 8usize, 16.0f32, 64usize);
    let scale = alpha / r as f32;

    let full = d_in * d_out;
    let lora_params = r * (d_in + d_out);
    println!("layer {d_in}x{d_out}, rank {r}, alpha {alpha}");
    println!("  full fine-tuning: {:>9} parameters", thousands(full));
    println!(
        "  LoRA (A + B):     {:>9} parameters ({}x reduction)",
        thousands(lora_params),
        full / lora_params
    );

    let gpu = Gpu::new(&GpuOptions::from_env())?;
    println!(
        "adapter: {} ({:?}, {:?})",
        gpu.info().name,
        gpu.info().backend,
        gpu.info().device_type
    );

    // Frozen weight [in, out] and bias; A Kaiming-uniform-like; B non-zero as after training.
    let w = gpu.upload("c_proj.weight", &uniform(full, 1, 0.02), &[d_in, d_out])?;
    let bias = gpu.upload("c_proj.bias", &uniform(d_out, 2, 0.02), &[d_out])?;
    let a = gpu.upload(
        "lora_A",
        &uniform(r * d_in, 3, 1.0 / (d_in as f32).sqrt()),
        &[r, d_in],
    )?;
    let b = gpu.upload("lora_B", &uniform(d_out * r, 4, 0.05), &[d_out, r])?;
    let x = gpu.upload("x", &uniform(rows * d_in, 5, 1.0), &[rows, d_in])?;

    // h = x W + b + scale · (x Aᵀ) Bᵀ
    let y = gpu.zeros("y", &[rows, d_out])?;
    let u = gpu.zeros("u", &[rows, r])?;
    let shape = LoraShape {
        m: rows,
        k: d_in,
        n: d_out,
        r,
    };
    let base = matmul(
        &gpu,
        &y,
        &x,
        &w,
        Some(&bias),
        &MatmulOp::new(rows, d_out, d_in),
    )?;
    let adapter = lora::forward(&gpu, &y, &u, &x, &a, &b, &shape, scale, &Dropout::NONE)?;
    gpu.run(&[&base, &adapter])?;
    let unmerged = gpu.download(&y)?;

    // W' = W + scale · (B A)ᵀ, then h' = x W' + b
    gpu.run(&[&merge(&gpu, &w, &a, &b, &shape, true, scale)?])?;
    let y2 = gpu.zeros("y merged", &[rows, d_out])?;
    let merged_fwd = matmul(
        &gpu,
        &y2,
        &x,
        &w,
        Some(&bias),
        &MatmulOp::new(rows, d_out, d_in),
    )?;
    gpu.run(&[&merged_fwd])?;
    let merged = gpu.download(&y2)?;

    let max_diff = unmerged
        .iter()
        .zip(&merged)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    let max_out = unmerged.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!("forward on {rows} rows: max |h| = {max_out:.4}");
    println!("max |h(unmerged) - h(merged)| = {max_diff:.2e}");
    ensure!(
        max_diff <= 1e-5,
        "merged and unmerged outputs differ by {max_diff:e} (> 1e-5)"
    );
    println!("outputs equal within 1e-5 before and after the merge");
    Ok(())
}
