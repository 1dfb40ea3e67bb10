//! One-run performance report: the adapter, its FMA peak, matmul GFLOP/s of every variant at
//! GPT-2 shapes and 4096³ (with a simple autotune: the fastest variant per shape), the fused
//! LoRA forward against the unfused path, and training tokens/s with LoRA of a GPT-2 or
//! Llama-family shape (`--shape`: any preset of `ModelConfig::named`, e.g. `smollm2-135m`;
//! LoRA on the family's default targets, c_attn,c_proj or q_proj,v_proj).
//! Prints readable lines and writes every figure to a JSON file.
//!
//! ```text
//! cargo bench --bench report -- [--quick] [--json target/report.json]
//!     [--shape gpt2] [--batch 4] [--seq 128,1024] [--rank 8] [--steps 10] [--warmup 2]
//!     [--train-variants default,before,tiled8x8] [--max-train-seconds 30] [--no-kernels]
//!     [--no-train] [--no-profile] [--f16-weights] [--layers 10,11]
//! ```
//!
//! `--quick` uses small shapes (minutes on lavapipe): kernels at 64..256, training the `tiny`
//! shape at B=2 T=32. Timed training steps stop after `--max-train-seconds` (at least 3 run);
//! `--steps 0` only builds each training graph and reports what it allocates (memory, no
//! speed). Timing: each sample submits `reps` copies of the dispatches in one compute pass and waits for the GPU; `reps` is chosen so that a sample lasts about 30 ms (one run at
//! least), and the figure is the median of the samples, after a warm-up run.
//! `--train-variants` names the matmul variants the training graph is built with (through
//! `LORA_WGPU_MATMUL`; `default` is the adapter's own choice; `before` is the adapter's matmul
//! with the first LoRA and attention kernels, `LORA_WGPU_LORA=workgroup`,
//! `LORA_WGPU_ATTENTION=rows`).
//! `--f16-weights` stores the linear layers' frozen weights as f16 (`WeightStorage::F16`).
//! `--layers` adapts only those blocks (the backward stops below the first adapted one).
//! Before the training runs (unless `--no-profile`), a per-kernel-kind profile of one training
//! step at each T (see `profile`), on GPUs for the first kernels and the adapter's own.
//!
//! Modules: `kernels` (peak, matmuls, LoRA forward), `profile` (per-kind step profile),
//! `train` (training runs).

mod kernels;
mod profile;
mod train;

use std::time::Instant;

use lora_wgpu::gpu::Dispatch;
use lora_wgpu::kernels::matmul::MatmulVariant;
use lora_wgpu::model::{gpt2, llama, ModelConfig, Transformer, WeightStorage};
use lora_wgpu::{Gpu, GpuOptions, Tensor};
use serde_json::{json, Value};

use kernels::{lora_fwd, matmuls, peak};
use profile::profiles;
use train::train;

struct Args {
    quick: bool,
    json: String,
    shape: String,
    batch: usize,
    seqs: Vec<usize>,
    rank: usize,
    steps: usize,
    warmup: usize,
    train_variants: Vec<String>,
    max_train_s: f64,
    kernels: bool,
    train: bool,
    profile: bool,
    f16_weights: bool,
    /// Adapt only these blocks (`--layers 10,11`; default all).
    layers: Option<Vec<usize>>,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let has = |name: &str| args.iter().any(|a| a == name);
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let num = |name: &str, default: usize| {
        get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v}"))
        })
    };
    let quick = has("--quick");
    let seqs = get("--seq").unwrap_or_else(|| if quick { "32" } else { "128,1024" }.into());
    Args {
        quick,
        json: get("--json").unwrap_or_else(|| "target/report.json".into()),
        shape: get("--shape").unwrap_or_else(|| if quick { "tiny" } else { "gpt2" }.into()),
        batch: num("--batch", if quick { 2 } else { 4 }),
        seqs: seqs
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("--seq takes numbers, e.g. 128,1024")
            })
            .collect(),
        rank: num("--rank", 8),
        steps: num("--steps", if quick { 2 } else { 10 }),
        warmup: num("--warmup", if quick { 1 } else { 2 }),
        train_variants: get("--train-variants")
            .unwrap_or_else(|| "default".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .collect(),
        max_train_s: get("--max-train-seconds").map_or(30.0, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--max-train-seconds takes a number, got {v}"))
        }),
        kernels: !has("--no-kernels"),
        train: !has("--no-train"),
        profile: !has("--no-profile"),
        f16_weights: has("--f16-weights"),
        layers: get("--layers").map(|v| {
            v.split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .expect("--layers takes block indices, e.g. 10,11")
                })
                .collect()
        }),
    }
}

/// Deterministic values in [-0.5, 0.5), never all zero.
fn filled(g: &Gpu, name: &str, shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| (((i + seed * 7) * 7919 + seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    g.upload(name, &data, shape)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Median seconds per run of `ds` (dispatched in order): a warm-up run, then `samples`
/// samples of `reps` back-to-back runs in one submit, each waited for.
fn time(g: &Gpu, ds: &[&Dispatch], samples: usize, target_s: f64) -> lora_wgpu::Result<f64> {
    let run = |reps: usize| -> lora_wgpu::Result<f64> {
        let all: Vec<&Dispatch> = (0..reps).flat_map(|_| ds.iter().copied()).collect();
        g.sync()?;
        let t = Instant::now();
        g.run(&all)?;
        g.sync()?;
        Ok(t.elapsed().as_secs_f64())
    };
    run(1)?; // warm-up: first-use costs
    let once = run(1)?;
    let reps = ((target_s / once.max(1e-7)) as usize).clamp(1, 500);
    let mut t: Vec<f64> = (0..samples)
        .map(|_| run(reps).map(|s| s / reps as f64))
        .collect::<lora_wgpu::Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn variant_name(v: MatmulVariant) -> String {
    lora_wgpu::kernels::matmul::autotune::name(v)
}

fn main() -> lora_wgpu::Result<()> {
    let args = parse_args();
    let g = Gpu::new(&GpuOptions::from_env())?;
    let info = g.info().clone();
    println!(
        "adapter: {} ({:?}, {:?}), driver {} {}, default matmul {}",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        variant_name(g.variants().matmul)
    );
    let mut report = json!({
        "adapter": info.name, "backend": format!("{:?}", info.backend),
        "device_type": format!("{:?}", info.device_type), "driver": info.driver,
        "driver_info": info.driver_info, "quick": args.quick,
        "default_matmul": variant_name(g.variants().matmul),
    });
    if args.kernels {
        let p = peak(&g, args.quick)?;
        println!("FMA peak probe: {p:.1} GFLOP/s");
        report["peak_gflops"] = json!(p);
        report["matmul"] = matmuls(&g, args.quick, p)?;
        report["lora_forward"] = lora_fwd(&g, args.quick)?;
    }
    if args.train {
        let cfg = ModelConfig::named(&args.shape)?;
        let host = match &cfg {
            ModelConfig::Gpt2(c) => gpt2::weights::random(c, 0),
            ModelConfig::Llama(c) => llama::weights::random(c, 0),
        };
        let storage = if args.f16_weights {
            WeightStorage::F16
        } else {
            WeightStorage::F32
        };
        let model = Transformer::upload_with(&g, &cfg, &host, storage)?;
        let wbytes = model.allocated_bytes() as usize;
        drop(host);
        // The per-kind profile times GPT-2's kernels.
        if let (true, Some(c)) = (args.profile, cfg.as_gpt2()) {
            report["profile"] = profiles(&g, &args, c);
        }
        let mut runs = Vec::new();
        for &t in &args.seqs {
            for v in &args.train_variants {
                runs.push(train(&g, &args, &model, wbytes, t, v));
            }
        }
        report["train"] = Value::Array(runs);
    }
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    if let Some(dir) = std::path::Path::new(&args.json).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&args.json, text).map_err(|source| lora_wgpu::Error::Io {
        path: args.json.clone().into(),
        source,
    })?;
    println!("report written to {}", args.json);
    Ok(())
}
