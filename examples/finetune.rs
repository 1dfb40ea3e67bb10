//! Fine-tune GPT-2 with LoRA on one fixed batch and save a PEFT adapter.
//!
//! cargo run --release --example finetune -- [MODEL_DIR] [OUT_DIR] [STEPS]
//!
//! MODEL_DIR is a Hugging Face GPT-2 directory (config.json + model.safetensors); the default is
//! the tiny checkpoint of the parity tests. The batch is the parity fixture's token ids, wrapped
//! into the vocabulary. `python scripts/check_peft_load.py OUT_DIR` then loads the adapter with
//! PEFT and reports PyTorch's loss on the same batch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::lora::{peft, LoraConfig};
use lora_wgpu::model::{Gpt2, TrainGraph};
use lora_wgpu::{Gpu, GpuOptions};

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or(root.join("tests/fixtures/tiny_gpt2/model"));
    let out = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or(root.join("target/finetune-adapter"));
    let steps: u64 = args
        .get(2)
        .map(|s| s.parse())
        .transpose()
        .context("STEPS must be a number")?
        .unwrap_or(20);

    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let model = Gpt2::load(&gpu, &model_dir)?;
    let v = model.config.vocab_size as u32;
    let (b, t) = (2usize, 16usize);
    let ids: Vec<u32> = (0..(b * (t + 1)) as u32)
        .map(|i| (i * 37 + 11) % v)
        .collect();
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for row in ids.chunks(t + 1) {
        inputs.extend_from_slice(&row[..t]);
        targets.extend_from_slice(&row[1..]);
    }

    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let opt = AdamW {
        lr: 1e-2,
        max_grad_norm: 1.0,
        ..AdamW::default()
    };
    let mut graph = TrainGraph::new(&gpu, &model, &lora, None, 0, b, t, &opt)?;
    graph.set_batch(&gpu, &inputs, &targets)?;
    for step in 1..=steps {
        graph.step(&gpu, step, opt.lr)?;
    }
    let first = graph.step_loss(&gpu, 1)?;
    let last = graph.step_loss(&gpu, steps)?;
    graph.forward(&gpu)?;
    let trained = graph.loss(&gpu)?;
    println!("loss: step 1 {first:.4}, step {steps} {last:.4}, after training {trained:.6}");

    peft::save(
        &out,
        &lora,
        graph.layout(),
        &graph.read_params(&gpu)?,
        Some(&model_dir.display().to_string()),
    )?;
    std::fs::write(
        out.join("batch.json"),
        serde_json::to_string(&serde_json::json!({
            "inputs": inputs, "targets": targets, "batch": b, "seq_len": t, "loss": trained,
        }))?,
    )?;
    println!("saved a PEFT adapter to {}", out.display());
    Ok(())
}
