//! Training-step throughput: forward + backward + grad norm + AdamW of GPT-2 with LoRA, in
//! tokens/s, and the GPU memory the graph allocates. Prints one JSON line at the end for
//! scripts/bench_train.sh, which sets it beside PyTorch + PEFT on the same machine.
//!
//! cargo bench --bench train_step -- [--shape gpt2] [--batch 4] [--seq 128] [--rank 8] [--steps 3] [--dora]
//!
//! The weights are random (`random:gpt2` shape): speed does not depend on their values.

mod common;

use std::time::Instant;

use common::arg;
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::lora::LoraConfig;
use lora_wgpu::model::{gpt2::weights, Gpt2Config, TrainGraph, Transformer};
use lora_wgpu::{Gpu, GpuOptions};

fn main() -> lora_wgpu::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let shape = arg(&args, "--shape", "gpt2");
    let b: usize = arg(&args, "--batch", "4").parse().expect("--batch N");
    let t: usize = arg(&args, "--seq", "128").parse().expect("--seq N");
    let r: usize = arg(&args, "--rank", "8").parse().expect("--rank N");
    let steps: usize = arg(&args, "--steps", "3").parse().expect("--steps N");
    let warmup: usize = arg(&args, "--warmup", "1").parse().expect("--warmup N");
    let dora = args.iter().any(|a| a == "--dora");

    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let info = gpu.info();
    eprintln!(
        "adapter: {} ({:?}, {:?}, {})",
        info.name, info.backend, info.device_type, info.driver_info
    );
    let cfg = Gpt2Config::named(&shape)?;
    let host = weights::random(&cfg, 0);
    let weight_bytes: usize = host.values().map(|v| v.len() * 4).sum();
    let model = Transformer::upload(&gpu, &cfg, &host)?;
    drop(host);
    let lora = LoraConfig {
        r,
        alpha: 2.0 * r as f32,
        use_dora: dora,
        ..LoraConfig::default()
    };
    let mut graph = TrainGraph::new(&gpu, &model, &lora, None, 0, b, t, &AdamW::default())?;
    let tokens: Vec<u32> = (0..b * t)
        .map(|i| ((i * 7919) % cfg.vocab_size) as u32)
        .collect();
    let targets: Vec<u32> = (0..b * t)
        .map(|i| ((i * 7919 + 1) % cfg.vocab_size) as u32)
        .collect();
    eprintln!(
        "GPT-2 {shape}: B={b} T={t} {} r={r} on c_attn,c_proj ({} trainable), {graph:?}",
        if dora { "DoRA" } else { "LoRA" },
        graph.layout().num_parameters()
    );

    // Warm-up: first-touch costs paid (pipelines were compiled when the graph was built).
    for s in 0..warmup {
        graph.step(&gpu, &tokens, &targets, s as u64 + 1, 1e-4)?;
    }
    gpu.sync()?;
    let mut times = Vec::new();
    for s in 0..steps {
        let start = Instant::now();
        let step = (warmup + s) as u64 + 1;
        graph.step(&gpu, &tokens, &targets, step, 1e-4)?;
        let loss = graph.step_loss(&gpu, step)?;
        let dt = start.elapsed().as_secs_f64();
        eprintln!("step {}: {:.2} s, loss {loss:.4}", s + 1, dt);
        times.push(dt);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let tokens_per_s = (b * t) as f64 / median;
    let graph_mib = graph.allocated_bytes() as f64 / (1 << 20) as f64;
    let weights_mib = weight_bytes as f64 / (1 << 20) as f64;
    println!(
        "{{\"impl\":\"lora-wgpu\",\"adapter\":\"{}\",\"shape\":\"{shape}\",\"batch\":{b},\"seq\":{t},\"rank\":{r},\"dora\":{dora},\"step_s_median\":{median:.3},\"tokens_per_s\":{tokens_per_s:.2},\"graph_mib\":{graph_mib:.1},\"weights_mib\":{weights_mib:.1}}}",
        info.name
    );
    Ok(())
}
