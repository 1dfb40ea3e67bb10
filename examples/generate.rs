//! Stream greedy text from a GPT-2, optionally with PEFT LoRA adapters, through the KV cache.
//!
//! cargo run --release --example generate -- [MODEL_DIR] [--adapter DIR[:SCALE]]...
//!     [--prompt TEXT] [--max-new-tokens N]
//!
//! MODEL_DIR is a Hugging Face GPT-2 directory (config.json + model.safetensors); the default is
//! the tiny random checkpoint of the tests (with `--adapter tests/fixtures/tiny_gpt2/adapter`
//! for its adapter). Text goes through the directory's tokenizer.json or GPT-2's bundled one;
//! when the model's vocabulary is not the tokenizer's (the tiny checkpoint has 99 tokens) the
//! prompt is read as token ids ("5 17 42") and ids are printed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lora_wgpu::lora::{parse_adapter_spec, peft};
use lora_wgpu::model::generate::{Generator, SamplingConfig, ScaledAdapter};
use lora_wgpu::model::Model;
use lora_wgpu::{Gpu, GpuOptions};

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut model_dir = root.join("tests/fixtures/tiny_gpt2/model");
    let mut adapters = Vec::new();
    let mut prompt: Option<String> = None;
    let mut max_new = 16usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--adapter" => adapters.push(parse_adapter_spec(&value("--adapter")?)?),
            "--prompt" => prompt = Some(value("--prompt")?),
            "--max-new-tokens" => {
                max_new = value("--max-new-tokens")?
                    .parse()
                    .context("--max-new-tokens must be a number")?
            }
            flag if flag.starts_with("--") => bail!("unknown option {flag}"),
            dir => model_dir = PathBuf::from(dir),
        }
    }

    let gpu = Gpu::new(&GpuOptions::from_env())?;
    // Anything `--model` takes: a directory, tiny, random:<shape>, a hub id.
    let model = Model::load(&gpu, &model_dir.display().to_string())?;
    let loaded = adapters
        .iter()
        .map(|(dir, scale)| Ok((peft::load(dir, &model.config)?, *scale)))
        .collect::<Result<Vec<_>>>()?;
    let scaled: Vec<ScaledAdapter> = loaded
        .iter()
        .map(|(a, s)| ScaledAdapter::of(a, *s))
        .collect();

    let tokenizer = &model.tokenizer;
    let text_mode = tokenizer.vocab_size() == model.config.vocab_size();
    let ids = if text_mode {
        tokenizer.encode(prompt.as_deref().unwrap_or("The meaning of life is"))?
    } else {
        prompt
            .as_deref()
            .unwrap_or("5 17 42 8")
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u32>()
                    .context("the prompt is token ids here: \"5 17 42\"")
            })
            .collect::<Result<Vec<_>>>()?
    };

    let ctx = model.config.max_positions().min(ids.len() + max_new).max(1);
    let mut generator = Generator::new(&gpu, &model.transformer, ctx)?;
    generator.set_adapters(&gpu, &scaled)?;
    eprintln!(
        "device: {} ({:?}); {} LoRA adapter(s); prompt of {} tokens",
        gpu.info().name,
        gpu.info().backend,
        scaled.len(),
        ids.len()
    );
    if text_mode {
        print!("{}", tokenizer.decode(&ids)?);
    } else {
        print!("{ids:?} ->");
    }
    std::io::stdout().flush()?;

    // Decode the whole continuation each time and print what is new, so multi-byte characters
    // split over tokens come out whole.
    let mut out = Vec::new();
    let mut shown = 0usize;
    let mut failed = None;
    let start = std::time::Instant::now();
    let cfg = SamplingConfig::greedy();
    let new = generator.generate(&gpu, &ids, &cfg, max_new, |t| {
        out.push(t);
        if text_mode {
            match tokenizer.decode(&out) {
                Ok(text) if text.len() > shown && text.is_char_boundary(shown) => {
                    print!("{}", &text[shown..]);
                    shown = text.len();
                }
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            }
        } else {
            print!(" {t}");
        }
        let _ = std::io::stdout().flush();
        true
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let secs = start.elapsed().as_secs_f64();
    println!();
    eprintln!(
        "{} tokens in {secs:.2} s ({:.1} tokens/s, prefill included); stopped: {:?}",
        new.len(),
        new.len() as f64 / secs,
        generator.stop_reason().expect("generate sets a reason")
    );
    Ok(())
}
