//! `lora-wgpu`: the command-line front end. It parses arguments and calls the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lora_wgpu::data::{self, Dataset};
use lora_wgpu::gpu::{list_adapters, GpuOptions};
use lora_wgpu::lora::{peft, Linear, LoraConfig, LoraLayout};
use lora_wgpu::model::generate::parse_adapter_arg;
use lora_wgpu::model::{
    Generator, Model, ModelSource, SamplingConfig, ScaledAdapter, TrainGraph, WeightStorage,
};
use lora_wgpu::train::{self, Duration, Event, TrainConfig, Trainer};
use lora_wgpu::{merge, Gpu};

/// LoRA fine-tuning of GPT-2 on any GPU through wgpu.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options that choose the adapter, shared by every command.
#[derive(clap::Args)]
struct DeviceArgs {
    /// Backend(s) to use: vulkan, metal, dx12, gl (comma-separated). Default: all.
    #[arg(long, env = "WGPU_BACKEND")]
    backend: Option<String>,
    /// Adapter index (from `lora-wgpu devices`) or a case-insensitive part of its name.
    #[arg(long, env = "WGPU_ADAPTER_NAME")]
    device: Option<String>,
    /// Store the frozen weights of the linear layers as f16: half their memory, arithmetic
    /// still f32 (needs an adapter offering SHADER_F16; see `lora-wgpu devices`).
    #[arg(long)]
    f16_weights: bool,
    /// Run the matmuls on cooperative matrices (tensor cores): operands rounded to f16, sums
    /// in f32 (needs an adapter that `lora-wgpu devices` marks coopmat).
    #[arg(long, env = "LORA_WGPU_COOPMAT", value_parser = clap::builder::FalseyValueParser::new())]
    coopmat: bool,
}

impl DeviceArgs {
    fn options(&self) -> Result<GpuOptions> {
        let mut o = GpuOptions::from_env();
        o.backends = match &self.backend {
            Some(b) => Some(GpuOptions::parse_backends(b)?),
            None => None,
        };
        o.adapter = self.device.clone();
        o.cooperative_matrix = self.coopmat;
        Ok(o)
    }

    fn gpu(&self) -> Result<Gpu> {
        Ok(Gpu::new(&self.options()?)?)
    }

    /// Load `spec` onto `gpu` with the weight storage these options ask for.
    fn load_model(&self, gpu: &Gpu, spec: &str) -> Result<Model> {
        let storage = if self.f16_weights {
            WeightStorage::F16
        } else {
            WeightStorage::F32
        };
        Ok(Model::load_with(gpu, spec, storage)?)
    }
}

/// LoRA hyperparameters (PEFT's names as aliases).
#[derive(clap::Args, Clone)]
struct LoraArgs {
    /// LoRA rank r.
    #[arg(
        long,
        alias = "r",
        alias = "lora-r",
        alias = "lora_r",
        default_value_t = 8
    )]
    rank: usize,
    /// lora_alpha: the update is scaled by alpha / r.
    #[arg(
        long,
        alias = "lora-alpha",
        alias = "lora_alpha",
        default_value_t = 16.0
    )]
    alpha: f32,
    /// Dropout on the adapter input, in [0, 1).
    #[arg(
        long,
        alias = "lora-dropout",
        alias = "lora_dropout",
        default_value_t = 0.05
    )]
    dropout: f32,
    /// Modules to adapt (PEFT names, comma-separated): c_attn, c_proj, c_fc, attn.c_proj,
    /// mlp.c_proj, or all-linear.
    #[arg(
        long,
        alias = "target-modules",
        alias = "target_modules",
        value_delimiter = ',',
        default_value = "c_attn,c_proj"
    )]
    targets: Vec<String>,
    /// Only these block indices (comma-separated; default all).
    #[arg(
        long,
        alias = "layers-to-transform",
        alias = "layers_to_transform",
        value_delimiter = ','
    )]
    layers: Option<Vec<usize>>,
    /// Rank-stabilised scaling alpha / √r.
    #[arg(long, alias = "use-rslora", alias = "use_rslora")]
    rslora: bool,
}

impl LoraArgs {
    fn config(&self) -> LoraConfig {
        LoraConfig {
            r: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            target_modules: self.targets.clone(),
            layers_to_transform: self.layers.clone(),
            use_rslora: self.rslora,
        }
    }
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Model: a Hugging Face GPT-2 dir, `tiny` (built-in demo), `random:<shape>`, or a hub id.
    /// Default with no --data: tiny.
    #[arg(long)]
    model: Option<String>,
    /// Training text: a .txt file, a directory of .txt files, or .jsonl with {"text"} or
    /// {"prompt", "completion"} per line. Default: the bundled demo corpus.
    #[arg(long, alias = "train-file", alias = "train_file")]
    data: Option<PathBuf>,
    /// Output directory (adapter, checkpoints/, best/, metrics.jsonl, loss_curve.svg).
    /// Default: runs/run-<time>.
    #[arg(long, alias = "output-dir", alias = "output_dir")]
    out: Option<PathBuf>,
    /// Validation data (same formats as --data).
    #[arg(long, alias = "validation-file", alias = "validation_file")]
    valid: Option<PathBuf>,
    /// Hold out this fraction of the training blocks for validation (when no --valid).
    #[arg(long, conflicts_with = "valid")]
    val_split: Option<f64>,
    /// jsonl prompt/completion: loss on the completion only.
    #[arg(long)]
    mask_prompt: bool,
    /// Tokens per training sequence. Default: min(1024, n_positions); 32 for the demo.
    #[arg(long, alias = "block_size", alias = "max-seq-length")]
    block_size: Option<usize>,
    #[command(flatten)]
    lora: LoraArgs,
    /// Peak learning rate.
    #[arg(long, alias = "learning-rate", alias = "learning_rate")]
    lr: Option<f32>,
    /// AdamW weight decay.
    #[arg(long, alias = "weight_decay", default_value_t = 0.0)]
    weight_decay: f32,
    /// Warmup steps.
    #[arg(long, alias = "warmup_steps", conflicts_with = "warmup_ratio")]
    warmup_steps: Option<u64>,
    /// Warmup as a fraction of the total steps.
    #[arg(long, alias = "warmup_ratio", default_value_t = 0.0)]
    warmup_ratio: f32,
    /// Learning-rate schedule after warmup: linear, cosine or constant.
    #[arg(
        long,
        alias = "lr-scheduler-type",
        alias = "lr_scheduler_type",
        default_value = "linear"
    )]
    lr_scheduler: String,
    /// Passes over the training data (default 1).
    #[arg(long, alias = "num-train-epochs", alias = "num_train_epochs")]
    epochs: Option<u64>,
    /// Optimizer steps (wins over --epochs).
    #[arg(long, alias = "max_steps", alias = "iters")]
    max_steps: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(
        long,
        alias = "per-device-train-batch-size",
        alias = "per_device_train_batch_size"
    )]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(
        long,
        alias = "gradient-accumulation-steps",
        alias = "gradient_accumulation_steps",
        default_value_t = 1
    )]
    grad_accum: usize,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, alias = "max_grad_norm", default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Seed of the LoRA init, data order, validation split and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Log every N steps.
    #[arg(long, alias = "logging-steps", alias = "logging_steps")]
    log_every: Option<u64>,
    /// Evaluate every N steps (0: at epoch ends and at the end only).
    #[arg(long, alias = "eval-steps", alias = "eval_steps")]
    eval_every: Option<u64>,
    /// Checkpoint every N steps (0: at the end only).
    #[arg(long, alias = "save-steps", alias = "save_steps", default_value_t = 0)]
    save_every: u64,
    /// Checkpoints to keep (0: all).
    #[arg(long, alias = "save_total_limit", default_value_t = 2)]
    save_total_limit: usize,
    /// Stop after this many non-finite (skipped) steps in a row.
    #[arg(long, default_value_t = 5)]
    max_bad_steps: u64,
    /// Continue from a checkpoint: a checkpoint dir, or (no value) --out's newest.
    #[arg(long, alias = "resume-from-checkpoint", num_args = 0..=1)]
    resume: Option<Option<PathBuf>>,
    /// Replace an existing run in --out.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Text to generate from after training (default: the start of the validation text).
    #[arg(long)]
    sample_prompt: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a LoRA adapter (no arguments: a short demo on the built-in tiny model).
    Train(Box<TrainArgs>),
    /// Mean next-token loss and perplexity of a model (+ adapter) on a text file.
    Eval {
        /// Model dir, tiny, random:<shape> or hub id.
        #[arg(long)]
        model: String,
        /// PEFT adapter directory.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Text file (the whole text is tokenised and cut into windows).
        #[arg(long)]
        data: PathBuf,
        /// Window length N (default min(1024, n_positions)).
        #[arg(long)]
        block_size: Option<usize>,
        /// Windows per forward pass.
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Generate text with a KV cache, streaming it to stdout.
    Generate {
        /// Model dir, tiny, random:<shape> or hub id.
        #[arg(long)]
        model: String,
        /// PEFT adapter directory, optionally scaled: DIR or DIR:SCALE (repeatable; several
        /// apply at once).
        #[arg(long = "adapter")]
        adapters: Vec<String>,
        /// Text to continue.
        #[arg(long)]
        prompt: String,
        /// Most tokens to generate (stops earlier at <|endoftext|>).
        #[arg(
            long,
            alias = "max_new_tokens",
            alias = "n-predict",
            default_value_t = 100
        )]
        max_new_tokens: usize,
        /// Softmax temperature; 0 is greedy.
        #[arg(long, alias = "temp", default_value_t = 0.8)]
        temperature: f32,
        /// Nucleus sampling threshold in (0, 1]; 1 is off.
        #[arg(long, alias = "top_p", default_value_t = 0.95)]
        top_p: f32,
        /// Keep the k most likely tokens; 0 is off.
        #[arg(long, alias = "top_k", default_value_t = 40)]
        top_k: usize,
        /// Random seed (the same seed gives the same text).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Merge PEFT adapters into the base weights and write a Hugging Face GPT-2 directory.
    Merge {
        /// Base model: a Hugging Face GPT-2 dir, tiny, random:<shape> or hub id.
        #[arg(long)]
        model: String,
        /// PEFT adapter directory, optionally with a scale: DIR or DIR:SCALE (repeatable).
        #[arg(long = "adapter", required = true)]
        adapters: Vec<String>,
        /// Output directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing output directory.
        #[arg(long)]
        overwrite: bool,
    },
    /// Trainable parameters per target module (PEFT's print_trainable_parameters, and more).
    Info {
        /// Model dir, tiny, random:<shape> or hub id.
        #[arg(long, default_value = "tiny")]
        model: String,
        /// Read the LoRA settings from this PEFT adapter instead of the options.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[command(flatten)]
        lora: LoraArgs,
    },
    /// List every adapter wgpu finds and mark the one that would be used.
    Devices {
        #[command(flatten)]
        device: DeviceArgs,
    },
}

/// On a headless Linux machine (no `XDG_RUNTIME_DIR`) Mesa's Vulkan device-select layer, which
/// the loader runs for every Vulkan instance, looks for a Wayland compositor because wgpu enables
/// `VK_KHR_wayland_surface`, and libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set
/// in the environment.` each time. The layer only reorders the adapters (this crate ranks them
/// itself), so there it is switched off with its own variable, `NODEVICE_SELECT=1`, unless the
/// user set that or asked the layer for a device (`MESA_VK_DEVICE_SELECT`, `DRI_PRIME`). Runs
/// first thing in `main`, before any other thread exists.
fn quiet_headless_device_select() {
    let unset = |name| std::env::var_os(name).is_none_or(|v| v.is_empty());
    let asked = ["NODEVICE_SELECT", "MESA_VK_DEVICE_SELECT", "DRI_PRIME"];
    if cfg!(target_os = "linux") && unset("XDG_RUNTIME_DIR") && asked.into_iter().all(unset) {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn main() -> std::process::ExitCode {
    quiet_headless_device_select();
    let result = match Cli::parse().command {
        Command::Train(args) => train_cmd(&args),
        Command::Eval {
            model,
            adapter,
            data,
            block_size,
            batch_size,
            json,
            device,
        } => eval_cmd(
            &model,
            adapter.as_deref(),
            &data,
            block_size,
            batch_size,
            json,
            &device,
        ),
        Command::Info {
            model,
            adapter,
            lora,
        } => info_cmd(&model, adapter.as_deref(), &lora),
        Command::Generate {
            model,
            adapters,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            device,
        } => generate_cmd(
            &model,
            &adapters,
            &prompt,
            max_new_tokens,
            &SamplingConfig {
                temperature,
                top_k,
                top_p,
                seed,
            },
            &device,
        ),
        Command::Merge {
            model,
            adapters,
            out,
            overwrite,
        } => merge_cmd(&model, &adapters, &out, overwrite),
        Command::Devices { device } => devices(&device),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once (the library's messages often include
/// their source already), plus a hint when the root cause is a file system error.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    let io = e
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .last();
    if let Some(io) = io {
        use std::io::ErrorKind as K;
        let hint = match io.kind() {
            K::PermissionDenied | K::ReadOnlyFilesystem => {
                "the path is not writable: choose another location (e.g. another --out)"
            }
            K::NotADirectory => {
                "a parent of the path is a file, not a directory: choose another path"
            }
            K::StorageFull | K::QuotaExceeded => {
                "the disk is full: free some space or choose another --out; a training run can \
                 continue with --resume from its last complete checkpoint"
            }
            _ => "",
        };
        if !hint.is_empty() {
            text.push_str("\nhint: ");
            text.push_str(hint);
        }
    }
    text
}

/// Settings of the built-in demo (no --model and no --data): small enough to finish in about
/// three minutes on two CPU cores with lavapipe.
struct Demo;

impl Demo {
    const BLOCK: usize = 32;
    const BATCH: usize = 4;
    const STEPS: u64 = 20;
    const LR: f32 = 1e-2;
    const EVAL_EVERY: u64 = 5;
    const LOG_EVERY: u64 = 2;
    const VAL_SPLIT: f64 = 0.005;
}

fn train_cmd(a: &TrainArgs) -> Result<()> {
    let demo = a.model.is_none() && a.data.is_none();
    if a.model.is_none() != a.data.is_none() {
        bail!(
            "pass both --model and --data (or neither, for the built-in demo: the tiny model \
             on the bundled corpus)"
        );
    }
    let out = match &a.out {
        Some(o) => o.clone(),
        None => default_out_dir(),
    };
    let resuming = a.resume.is_some();
    check_out_dir(&out, resuming, a.overwrite)?;
    let gpu = a.device.gpu()?;
    let model = a
        .device
        .load_model(&gpu, a.model.as_deref().unwrap_or("tiny"))?;
    let cfg_model = &model.config;
    let block = a.block_size.unwrap_or(if demo {
        Demo::BLOCK
    } else {
        1024.min(cfg_model.n_positions)
    });
    let cfg = TrainConfig {
        lora: a.lora.config(),
        lr: a.lr.unwrap_or(if demo { Demo::LR } else { 2e-4 }),
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup_steps,
        warmup_ratio: a.warmup_ratio,
        schedule: a.lr_scheduler.parse()?,
        duration: match (a.max_steps, a.epochs) {
            (Some(s), _) => Duration::Steps(s),
            (None, Some(e)) => Duration::Epochs(e),
            (None, None) if demo => Duration::Steps(Demo::STEPS),
            (None, None) => Duration::Epochs(1),
        },
        batch_size: a.batch_size.unwrap_or(if demo { Demo::BATCH } else { 4 }),
        grad_accum: a.grad_accum,
        max_grad_norm: a.max_grad_norm,
        block_size: block,
        seed: a.seed,
        log_every: a
            .log_every
            .unwrap_or(if demo { Demo::LOG_EVERY } else { 10 }),
        eval_every: a
            .eval_every
            .unwrap_or(if demo { Demo::EVAL_EVERY } else { 0 }),
        save_every: a.save_every,
        save_total_limit: a.save_total_limit,
        max_bad_steps: a.max_bad_steps,
    };
    cfg.validate(cfg_model)?;

    // Data.
    let tok = &model.tokenizer;
    let (train_data, valid) = match &a.data {
        None => {
            let all = Dataset::from_text(data::BUNDLED_CORPUS, "bundled corpus", tok, block)?;
            let (t, v) = all.split_validation(a.val_split.unwrap_or(Demo::VAL_SPLIT), a.seed)?;
            (t, Some(v))
        }
        Some(path) => {
            let all = Dataset::from_path(path, tok, block, a.mask_prompt)?;
            match (&a.valid, a.val_split) {
                (Some(v), _) => (all, Some(Dataset::from_path(v, tok, block, a.mask_prompt)?)),
                (None, Some(f)) => {
                    let (t, v) = all.split_validation(f, a.seed)?;
                    (t, Some(v))
                }
                (None, None) => (all, None),
            }
        }
    };
    let s = train_data.stats();
    println!(
        "model    {} ({} layers, {} channels, {} parameters)",
        model.source,
        cfg_model.n_layer,
        cfg_model.n_embd,
        human(cfg_model.num_parameters() as f64)
    );
    println!(
        "data     {}: {} blocks of {block} tokens ({} tokens){}",
        a.data
            .as_ref()
            .map_or(data::BUNDLED_CORPUS_NAME.to_string(), |p| p
                .display()
                .to_string()),
        s.blocks,
        s.tokens,
        valid
            .as_ref()
            .map(|v| format!(", validation {} blocks", v.len()))
            .unwrap_or_default()
    );
    if demo {
        println!(
            "demo     the built-in tiny model has random weights: its loss starts near \
             ln(50257) = 10.8 and falls as the adapter learns the corpus's token statistics. \
             For real use pass --model <GPT-2 dir> --data <text>."
        );
    }

    let sample_prompt = a.sample_prompt.clone().unwrap_or_else(|| {
        valid
            .as_ref()
            .and_then(|v| v.block(0))
            .and_then(|(ids, _)| tok.decode(&ids[..ids.len().min(8)]).ok())
            .unwrap_or_else(|| "The".into())
    });

    let progress = Progress::new(std::io::stderr().is_terminal());
    // Build the graph (where a too-large shape fails) before touching --out, so a failed start
    // leaves no directory behind and an --overwrite'd run is only deleted once training can run.
    let trainer = Trainer::new(&gpu, &model, cfg.clone(), train_data)?;
    prepare_out_dir(&out, resuming, a.overwrite)?;
    let mut trainer = trainer.with_output(&out);
    if let Some(v) = valid {
        trainer = trainer.with_validation(v);
    }
    if let Some(r) = &a.resume {
        let from = r.as_deref().unwrap_or(&out);
        let step = trainer.resume(from)?;
        println!("resume   from step {step} ({})", from.display());
    }
    println!(
        "lora     r={} alpha={} dropout={} targets={} -> {} trainable parameters ({:.3}% of the model)",
        cfg.lora.r,
        cfg.lora.alpha,
        cfg.lora.dropout,
        cfg.lora.target_modules.join(","),
        trainer.graph().layout().num_parameters(),
        100.0 * trainer.graph().layout().num_parameters() as f64
            / cfg_model.num_parameters() as f64
    );
    println!(
        "run      {} steps, batch {} x {} tokens x {} accumulation, lr {} ({:?}), output {}",
        trainer.total_steps(),
        cfg.batch_size,
        block,
        cfg.grad_accum,
        cfg.lr,
        cfg.schedule,
        out.display()
    );
    let mut trainer = trainer.on_event(|e| progress.event(e));
    let started = std::time::Instant::now();
    if let Err(e) = trainer.run() {
        progress.finish();
        // Whatever stopped the run (a full disk, a lost GPU, non-finite losses), the newest
        // complete checkpoint is intact: say where it is and how to continue.
        return Err(match train::find_checkpoint(&out) {
            Ok(dir) => anyhow::anyhow!(
                "{e}\nhint: training stopped at step {}; the newest complete checkpoint is {}. \
                 Run the same command with --resume to continue from it.",
                trainer.step(),
                dir.display()
            ),
            Err(_) => e.into(),
        });
    }
    progress.finish();
    println!(
        "done     {} steps in {:.1} s; adapter in {} (best: {}/best), loss curve {}",
        trainer.step(),
        started.elapsed().as_secs_f64(),
        out.display(),
        out.display(),
        out.join("loss_curve.svg").display()
    );
    drop(trainer);
    let adapter = peft::load(&out, cfg_model)?;
    let ctx = model.config.n_positions.min(128);
    let mut generator = Generator::new(&gpu, &model.gpt2, ctx)?;
    generator.set_adapters(&gpu, &[ScaledAdapter::of(&adapter, 1.0)])?;
    println!("sample   (greedy, 24 tokens, with the new adapter):");
    stream(
        &gpu,
        &model,
        &mut generator,
        &sample_prompt,
        24,
        &SamplingConfig::greedy(),
    )?;
    Ok(())
}

fn default_out_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from(format!("runs/run-{secs}"))
}

/// Whether `out` holds (part of) a training run.
fn holds_run(out: &Path) -> bool {
    ["trainer_state.json", "checkpoints", "metrics.jsonl"]
        .iter()
        .any(|f| out.join(f).exists())
}

/// Refuse to mix two runs in one directory unless asked to, and refuse an --out that is a file;
/// changes nothing on disk.
fn check_out_dir(out: &Path, resume: bool, overwrite: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {} exists and is not a directory: choose a path for a new directory",
            out.display()
        );
    }
    if !resume && !overwrite && holds_run(out) {
        bail!(
            "{} already holds a training run; pass --resume to continue it, --overwrite to \
             replace it, or choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// Create `out` (after [`check_out_dir`]), clearing a previous run with --overwrite, and make
/// sure it is writable.
fn prepare_out_dir(out: &Path, resume: bool, overwrite: bool) -> Result<()> {
    check_out_dir(out, resume, overwrite)?;
    if !resume && overwrite && holds_run(out) {
        for f in [
            "trainer_state.json",
            "metrics.jsonl",
            "loss_curve.svg",
            "adapter_config.json",
            "adapter_model.safetensors",
        ] {
            let _ = std::fs::remove_file(out.join(f));
        }
        for d in ["checkpoints", "best"] {
            let _ = std::fs::remove_dir_all(out.join(d));
        }
    }
    std::fs::create_dir_all(out).with_context(|| {
        format!(
            "cannot create the output directory {}; choose a writable --out",
            out.display()
        )
    })?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "cannot write into the output directory {} (read-only or full?); choose a \
             writable --out",
            out.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// A progress bar on a terminal, plain log lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(terminal: bool) -> Self {
        Progress {
            bar: terminal.then(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]",
                    )
                    .expect("a valid template"),
                );
                bar
            }),
        }
    }

    fn line(&self, s: String) {
        match &self.bar {
            Some(b) => b.println(s),
            None => println!("{s}"),
        }
    }

    fn event(&self, e: &Event) {
        match e {
            Event::Start {
                step, total_steps, ..
            } => {
                if let Some(b) = &self.bar {
                    b.set_length(*total_steps);
                    b.set_position(*step);
                }
            }
            Event::Log(r) => {
                if let Some(b) = &self.bar {
                    b.set_position(r.step);
                    b.set_message(format!(
                        "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                        r.loss, r.lr, r.tokens_per_sec
                    ));
                }
                self.line(format!(
                    "step {:>6}  epoch {:>6.2}  loss {:.4}  lr {:.3e}  grad_norm {:.3}  {:>8.1} tok/s  gpu {}",
                    r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.tokens_per_sec, bytes(r.gpu_bytes)
                ));
            }
            Event::Eval {
                step,
                loss,
                perplexity,
                best,
            } => self.line(format!(
                "eval {:>6}  val_loss {loss:.4}  val_ppl {perplexity:.2}{}",
                step,
                if *best { "  (best)" } else { "" }
            )),
            Event::Skipped { step, loss } => self.line(format!(
                "warning: step {step} skipped: non-finite gradients (loss {loss})"
            )),
            Event::Saved { step, path } => {
                self.line(format!("saved  {step:>6}  {}", path.display()))
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn eval_cmd(
    model: &str,
    adapter: Option<&Path>,
    data_path: &Path,
    block_size: Option<usize>,
    batch_size: usize,
    json: bool,
    device: &DeviceArgs,
) -> Result<()> {
    let gpu = device.gpu()?;
    let model = device.load_model(&gpu, model)?;
    let n = block_size.unwrap_or(1024.min(model.config.n_positions));
    let data = Dataset::from_path(data_path, &model.tokenizer, n, false)?;
    let (lora, params) = match adapter {
        Some(dir) => {
            let (cfg, _, params) = peft::load(dir, &model.config)?;
            (cfg, Some(params))
        }
        // B = 0 at init: exactly the base model.
        None => (LoraConfig::default(), None),
    };
    let mut graph =
        TrainGraph::new_eval(&gpu, &model.gpt2, &lora, params.as_deref(), batch_size, n)?;
    let loss = train::mean_loss(&gpu, &mut graph, &data, batch_size)?;
    let s = data.stats();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "loss": loss,
                "perplexity": loss.exp(),
                "windows": s.blocks,
                "tokens": s.tokens,
                "predicted": s.predicted,
                "block_size": n,
            })
        );
    } else {
        println!(
            "loss {loss:.4}  perplexity {:.3}  ({} windows of {n} tokens, {} predicted)",
            loss.exp(),
            s.blocks,
            s.predicted
        );
    }
    Ok(())
}

fn info_cmd(model: &str, adapter: Option<&Path>, lora: &LoraArgs) -> Result<()> {
    let source = ModelSource::parse(model)?;
    let cfg = source.config()?;
    let lora = match adapter {
        Some(dir) => peft::read_config(&dir.join("adapter_config.json"))?,
        None => lora.config(),
    };
    let layout = LoraLayout::new(&cfg, &lora)?;
    let c = cfg.n_embd;
    println!(
        "model {source}: {} layers, {} channels, {} heads, {} positions, vocab {}",
        cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions, cfg.vocab_size
    );
    println!(
        "LoRA r={} alpha={} (scale {}) dropout={} targets={}{}",
        lora.r,
        lora.alpha,
        lora.scale(),
        lora.dropout,
        lora.target_modules.join(","),
        lora.layers_to_transform
            .as_ref()
            .map(|l| format!(" layers={l:?}"))
            .unwrap_or_default()
    );
    println!();
    println!(
        "{:<14} {:>7} {:>12} {:>14} {:>14} {:>9} {:>10}",
        "module", "adapted", "shape", "trainable", "frozen", "percent", "reduction"
    );
    let mut trainable_total = 0usize;
    for lin in Linear::ALL {
        let (d_in, d_out) = lin.dims(c);
        let count = layout.entries.iter().filter(|e| e.linear == lin).count();
        let trainable = count * lora.r * (d_in + d_out);
        let frozen = count * (d_in * d_out + d_out);
        trainable_total += trainable;
        let (pct, red) = if count == 0 {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.3}%", 100.0 * trainable as f64 / frozen as f64),
                format!("{:.0}x", frozen as f64 / trainable as f64),
            )
        };
        println!(
            "{:<14} {:>7} {:>12} {:>14} {:>14} {:>9} {:>10}",
            lin.suffix(),
            format!("{count}/{}", cfg.n_layer),
            format!("{d_in}x{d_out}"),
            trainable,
            frozen,
            pct,
            red
        );
    }
    let all = cfg.num_parameters() + trainable_total;
    println!();
    println!(
        "trainable params: {} || all params: {} || trainable%: {:.4}",
        trainable_total,
        all,
        100.0 * trainable_total as f64 / all as f64
    );
    println!(
        "adapter file: {} (f32); optimizer state while training: {} (AdamW m, v and grads)",
        bytes(4 * trainable_total as u64),
        bytes(12 * trainable_total as u64)
    );
    Ok(())
}

fn generate_cmd(
    model: &str,
    adapters: &[String],
    prompt: &str,
    max_new_tokens: usize,
    sampling: &SamplingConfig,
    device: &DeviceArgs,
) -> Result<()> {
    sampling.validate()?;
    let gpu = device.gpu()?;
    let model = device.load_model(&gpu, model)?;
    let loaded = adapters
        .iter()
        .map(|a| {
            let (dir, scale) = parse_adapter_arg(a)?;
            Ok((peft::load(&dir, &model.config)?, scale))
        })
        .collect::<Result<Vec<_>>>()?;
    let scaled: Vec<_> = loaded
        .iter()
        .map(|(l, s)| ScaledAdapter::of(l, *s))
        .collect();
    let mut generator = Generator::new(&gpu, &model.gpt2, model.config.n_positions)?;
    generator.set_adapters(&gpu, &scaled)?;
    stream(
        &gpu,
        &model,
        &mut generator,
        prompt,
        max_new_tokens,
        sampling,
    )?;
    Ok(())
}

/// Generate from `prompt`, printing the prompt and then the text as it is produced.
fn stream(
    gpu: &Gpu,
    model: &Model,
    generator: &mut Generator,
    prompt: &str,
    max_new_tokens: usize,
    sampling: &SamplingConfig,
) -> Result<String> {
    use std::io::Write;
    let tok = &model.tokenizer;
    let ids = tok.encode(prompt)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}")?;
    out.flush()?;
    let mut new_ids = Vec::new();
    let mut printed = 0;
    let mut error = None;
    generator.generate(gpu, &ids, sampling, max_new_tokens, |t| {
        if t == lora_wgpu::tokenizer::EOT {
            return true;
        }
        new_ids.push(t);
        // Print whole characters only: a token can end inside a UTF-8 sequence.
        match tok.decode(&new_ids) {
            Ok(text) if !text.ends_with('\u{FFFD}') => {
                let _ = write!(out, "{}", &text[printed..]);
                let _ = out.flush();
                printed = text.len();
            }
            Ok(_) => {}
            Err(e) => error = Some(e),
        }
        error.is_none()
    })?;
    if let Some(e) = error {
        return Err(e.into());
    }
    let text = tok.decode(&new_ids)?;
    writeln!(out, "{}", &text[printed.min(text.len())..])?;
    Ok(text)
}

fn merge_cmd(model: &str, adapters: &[String], out: &Path, overwrite: bool) -> Result<()> {
    let adapters = adapters
        .iter()
        .map(|s| Ok(parse_adapter_arg(s)?))
        .collect::<Result<Vec<_>>>()?;
    let source = ModelSource::parse(model)?;
    let summary = match source.local_dir()? {
        Some(dir) => merge::merge_dirs(&dir, &adapters, out, overwrite)?,
        None => {
            // Built-in or random weights: merge in memory, write with GPT-2's tokenizer.
            let cfg = source.config()?;
            let mut w = source.host_weights(&cfg)?;
            let mut modules = 0;
            for (dir, scale) in &adapters {
                let (lora, layout, params) = peft::load(dir, &cfg)?;
                modules += merge::merge_into(&mut w, &cfg, (&lora, &layout, &params), *scale)?;
            }
            merge::save_hf_dir(out, &cfg, &w, &source.tokenizer()?, overwrite)?;
            merge::MergeSummary {
                config: cfg,
                adapters: adapters.len(),
                modules,
            }
        }
    };
    println!(
        "merged {} adapter(s) into {} module(s) of {source}; wrote {} (config.json, \
         model.safetensors, tokenizer.json)",
        summary.adapters,
        summary.modules,
        out.display()
    );
    Ok(())
}

fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}B", x / 1e9),
        x if x >= 1e6 => format!("{:.1}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}K", x / 1e3),
        x => format!("{x}"),
    }
}

fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn devices(args: &DeviceArgs) -> Result<()> {
    let options = args.options()?;
    let (all, chosen) = list_adapters(&options);
    if all.is_empty() {
        // Same advice as the library's error.
        return Err(lora_wgpu::Error::NoAdapter {
            detail: String::new(),
        }
        .into());
    }
    println!(
        "{:<3} {:<2} {:<40} {:<8} {:<14} {:>12} {:>12} {:>8}  features",
        "#", "", "name", "backend", "type", "storage bind", "max buffer", "wg mem"
    );
    for a in &all {
        let mark = if chosen.as_ref().ok() == Some(&a.index) {
            "*"
        } else {
            ""
        };
        let mut feats = Vec::new();
        if !a.compute {
            feats.push("no-compute");
        }
        if a.features.contains(wgpu::Features::SHADER_F16) {
            feats.push("f16");
        }
        if a.features.contains(wgpu::Features::SUBGROUP) {
            feats.push("subgroup");
        }
        if a.features
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            feats.push("coopmat");
        }
        println!(
            "{:<3} {:<2} {:<40} {:<8} {:<14} {:>9} MiB {:>8} MiB {:>5} KiB  {}",
            a.index,
            mark,
            a.info.name,
            format!("{:?}", a.info.backend),
            format!("{:?}", a.info.device_type),
            a.limits.max_storage_buffer_binding_size >> 20,
            a.limits.max_buffer_size >> 20,
            a.limits.max_compute_workgroup_storage_size >> 10,
            feats.join(",")
        );
    }
    for a in all.iter().filter(|a| !a.cooperative_matrix.is_empty()) {
        let configs: Vec<String> = a
            .cooperative_matrix
            .iter()
            .map(|c| {
                format!(
                    "{}x{}x{} {:?}->{:?}",
                    c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type
                )
            })
            .collect();
        println!("{}: cooperative matrix {}", a.index, configs.join(", "));
    }
    let i = chosen?;
    let used = &all[i].info;
    println!("* = used (driver: {} {})", used.driver, used.driver_info);
    Ok(())
}
