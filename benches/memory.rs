//! GPU memory of LoRA training with the frozen weights stored as f32, f16 and each quantized
//! format the kernels read: the weights and the training graph (activations, LoRA parameters,
//! gradients and AdamW moments), as allocated on the adapter. Prints a Markdown table and one
//! JSON line per storage.
//!
//! cargo bench --bench memory -- [--shape llama-3.2-1b] [--batch 1] [--seq 512] [--rank 16]
//!
//! LoRA sits on every linear layer (`all-linear`), as QLoRA trains. The weights are random in the
//! preset's shape: memory does not depend on their values.

mod common;

use std::time::Instant;

use common::arg;
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::kernels::qmatmul;
use lora_wgpu::lora::LoraConfig;
use lora_wgpu::model::{gpt2, llama, ModelConfig, TrainGraph, Transformer, WeightStorage};
use lora_wgpu::{Gpu, GpuOptions};

fn main() -> lora_wgpu::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let shape = arg(&args, "--shape", "llama-3.2-1b");
    let b: usize = arg(&args, "--batch", "1").parse().expect("--batch N");
    let t: usize = arg(&args, "--seq", "512").parse().expect("--seq N");
    let r: usize = arg(&args, "--rank", "16").parse().expect("--rank N");

    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let info = gpu.info();
    eprintln!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    let config = ModelConfig::named(&shape)?;
    let start = Instant::now();
    let host = match &config {
        ModelConfig::Gpt2(c) => gpt2::weights::random(c, 0),
        ModelConfig::Llama(c) => llama::weights::random(c, 0),
    };
    eprintln!(
        "{shape}: random weights in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let lora = LoraConfig {
        r,
        alpha: 2.0 * r as f32,
        target_modules: vec!["all-linear".into()],
        ..LoraConfig::default()
    };
    let mut storages = vec![("f32".to_string(), WeightStorage::F32)];
    if gpu.features().f16 {
        storages.push(("f16".into(), WeightStorage::F16));
    }
    for &ty in qmatmul::FORMATS {
        storages.push((ty.name().into(), WeightStorage::Quant(ty)));
    }
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let mut rows = Vec::new();
    for (name, storage) in storages {
        let start = Instant::now();
        let model = match Transformer::upload_with(&gpu, &config, &host, storage) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{name}: not measured: {e}");
                continue;
            }
        };
        let load_s = start.elapsed().as_secs_f64();
        let graph = TrainGraph::new(&gpu, &model, &lora, None, 0, b, t, &AdamW::default())?;
        let (w, g) = (model.allocated_bytes(), graph.allocated_bytes());
        println!(
            "{{\"shape\":\"{shape}\",\"storage\":\"{name}\",\"batch\":{b},\"seq\":{t},\"rank\":{r},\"weights_mib\":{:.1},\"graph_mib\":{:.1},\"load_s\":{load_s:.1}}}",
            mib(w),
            mib(g)
        );
        rows.push((name, w, g, load_s));
        drop(graph);
        drop(model);
        gpu.sync()?;
    }
    println!("\n| weights | weights | training graph | total | upload (incl. quantizing) |");
    println!("|---|---|---|---|---|");
    for (name, w, g, load_s) in rows {
        println!(
            "| {name} | {:.0} MiB ({:.2} GB) | {:.0} MiB | {:.0} MiB | {load_s:.1} s |",
            mib(w),
            w as f64 / 1e9,
            mib(g),
            mib(w + g)
        );
    }
    Ok(())
}
