//! Training runs: tokens/s and memory of GPT-2 with LoRA at one (B, T) and matmul variant.

use std::time::Instant;

use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::kernels::attention::AttentionVariant;
use lora_wgpu::kernels::lora::LoraVariant;
use lora_wgpu::kernels::matmul::MatmulVariant;
use lora_wgpu::kernels::Variants;
use lora_wgpu::lora::LoraConfig;
use lora_wgpu::model::{TrainGraph, Transformer};
use lora_wgpu::Gpu;
use serde_json::{json, Value};

use crate::{variant_name, Args};

/// Training tokens/s at one (B, T) with the matmul variant `variant` (`default`: the adapter's).
pub fn train(
    g: &Gpu,
    args: &Args,
    model: &Transformer,
    wbytes: usize,
    t: usize,
    variant: &str,
) -> Value {
    let b = args.batch;
    let cfg = &model.config;
    let label = format!(
        "train {} B={b} T={t} r={} [{variant}]",
        args.shape, args.rank
    );
    // `before`: the adapter's matmul with the first LoRA and attention kernels.
    let forced = (variant != "default" && variant != "before").then_some(variant);
    let mut chosen = Variants {
        matmul: MatmulVariant::resolve(g, forced),
        ..g.variants()
    };
    if variant == "before" {
        chosen.lora = LoraVariant::Workgroup;
        chosen.attention = AttentionVariant::Rows;
    }
    let g = &g.with_variants(chosen);
    let lora = LoraConfig {
        r: args.rank,
        alpha: 2.0 * args.rank as f32,
        layers_to_transform: args.layers.clone(),
        target_modules: cfg.default_targets(),
        ..LoraConfig::default()
    };
    let result = (|| -> lora_wgpu::Result<Value> {
        let mm = format!(
            "{}, lora {}, attention {}",
            variant_name(g.variants().matmul),
            g.variants().lora.name(),
            g.variants().attention.name()
        );
        let build = Instant::now();
        let mut graph = TrainGraph::new(g, model, &lora, None, 0, b, t, &AdamW::default())?;
        let build_s = build.elapsed().as_secs_f64();
        let graph_mib = graph.allocated_bytes() as f64 / (1u64 << 20) as f64;
        let weights_mib = wbytes as f64 / (1u64 << 20) as f64;
        if args.steps == 0 {
            // Memory only: everything a step uses is allocated when the graph is built.
            println!(
                "{label}: graph {graph_mib:.1} MiB + weights {weights_mib:.1} MiB = {:.1} MiB allocated (no steps run)",
                graph_mib + weights_mib
            );
            return Ok(
                json!({"shape": args.shape, "batch": b, "seq": t, "rank": args.rank,
                "variant": variant, "matmul": mm, "graph_mib": graph_mib,
                "weights_mib": weights_mib, "peak_mib": graph_mib + weights_mib,
                "build_s": build_s}),
            );
        }
        let tokens: Vec<u32> = (0..b * t)
            .map(|i| ((i * 7919) % cfg.vocab_size()) as u32)
            .collect();
        let targets: Vec<u32> = (0..b * t)
            .map(|i| ((i * 7919 + 1) % cfg.vocab_size()) as u32)
            .collect();
        for s in 0..args.warmup {
            graph.step(g, &tokens, &targets, s as u64 + 1, 1e-4)?;
        }
        g.sync()?;
        let mut times = Vec::new();
        let mut loss = 0.0;
        let begin = Instant::now();
        for s in 0..args.steps {
            // Keep the whole report bounded on slow adapters: at least 3 timed steps, then stop
            // once the budget is spent.
            if s >= 3 && begin.elapsed().as_secs_f64() > args.max_train_s {
                break;
            }
            let start = Instant::now();
            let step = (args.warmup + s) as u64 + 1;
            graph.step(g, &tokens, &targets, step, 1e-4)?;
            loss = graph.step_loss(g, step)?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let tps = (b * t) as f64 / median;
        println!(
            "{label}: matmul {mm}, step {:.2} ms (median of {}), {tps:.1} tokens/s, loss {loss:.4}, graph {graph_mib:.1} MiB + weights {weights_mib:.1} MiB = {:.1} MiB, build {build_s:.2} s",
            median * 1e3,
            times.len(),
            graph_mib + weights_mib
        );
        Ok(
            json!({"shape": args.shape, "batch": b, "seq": t, "rank": args.rank,
            "variant": variant, "matmul": mm, "step_ms_median": median * 1e3,
            "step_ms_all": times.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
            "tokens_per_s": tps, "loss": loss, "graph_mib": graph_mib, "weights_mib": weights_mib,
            "peak_mib": graph_mib + weights_mib, "build_s": build_s}),
        )
    })();
    result.unwrap_or_else(|e| {
        println!("{label}: FAILED: {e}");
        json!({"shape": args.shape, "batch": b, "seq": t, "variant": variant,
            "error": e.to_string()})
    })
}
