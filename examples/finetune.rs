//! Fine-tune a GPT-2 with LoRA through the library's `Trainer` and save a PEFT adapter.
//!
//! cargo run --release --example finetune -- [MODEL] [OUT_DIR] [STEPS]
//!
//! MODEL is anything `--model` takes (a Hugging Face GPT-2 directory, `tiny`, ...); the default
//! is the tiny checkpoint of the parity tests (vocabulary of 99), trained on a synthetic token
//! sequence. `python scripts/check_peft_load.py OUT_DIR` then loads the adapter with PEFT and
//! compares PyTorch's loss on the first batch (written to OUT_DIR/batch.json) with ours.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lora_wgpu::data::{Dataset, TokenStream, IGNORE};
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::lora::{peft, LoraConfig};
use lora_wgpu::model::{Model, TrainGraph};
use lora_wgpu::train::{Duration, Event, TrainConfig, Trainer};
use lora_wgpu::{Gpu, GpuOptions};

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_spec = args.first().cloned().unwrap_or_else(|| {
        root.join("tests/fixtures/tiny_gpt2/model")
            .display()
            .to_string()
    });
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
    let model = Model::load(&gpu, &model_spec)?;

    // A synthetic token sequence that fits any vocabulary, packed into blocks of 16.
    let v = model.config.vocab_size() as u32;
    let ids: Vec<u32> = (0..16 * 8).map(|i| (i * 37 + 11) % v).collect();
    let stream = TokenStream {
        is_prompt: vec![false; ids.len()],
        ids,
        documents: 1,
    };
    let data = Dataset::from_tokens(&stream, Path::new("synthetic"), 16, false)?;

    let cfg = TrainConfig {
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            ..LoraConfig::default()
        },
        lr: 1e-2,
        duration: Duration::Steps(steps),
        batch_size: 2,
        block_size: 16,
        log_every: 5,
        ..TrainConfig::default()
    };
    if out.join("trainer_state.json").exists() {
        // A previous run of this example: start afresh.
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let mut trainer = Trainer::new(&gpu, &model, cfg.clone(), data.clone())?
        .with_output(&out)
        .on_event(|e| {
            if let Event::Log(r) = e {
                println!("step {:>3}  loss {:.4}  lr {:.2e}", r.step, r.loss, r.lr);
            }
        });
    trainer.run()?;
    drop(trainer);

    // Our loss on the first batch with the saved adapter, for scripts/check_peft_load.py.
    let (lora, _, params) = peft::load(&out, &model.config)?;
    let mut graph = TrainGraph::new(
        &gpu,
        &model.transformer,
        &lora,
        Some(&params),
        0,
        2,
        16,
        &AdamW::default(),
    )?;
    let batch = &data.eval_batches(2)?[0];
    graph.forward(&gpu, &batch.inputs, &batch.targets)?;
    let loss = graph.loss(&gpu)?;
    let targets: Vec<i64> = batch
        .targets
        .iter()
        .map(|&t| if t == IGNORE { -100 } else { t as i64 })
        .collect();
    std::fs::write(
        out.join("batch.json"),
        serde_json::to_string(&serde_json::json!({
            "inputs": batch.inputs, "targets": targets, "batch": 2, "seq_len": 16, "loss": loss,
        }))?,
    )?;
    println!(
        "loss on the first batch after training: {loss:.6}; PEFT adapter in {}",
        out.display()
    );
    Ok(())
}
