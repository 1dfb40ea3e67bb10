//! The command line: every command and option, and their conversion into the library's types.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lora_wgpu::gpu::GpuOptions;
use lora_wgpu::kernels::qmatmul;
use lora_wgpu::lora::{LoraConfig, LoraInit};
use lora_wgpu::model::{Model, ModelConfig, WeightStorage};
use lora_wgpu::quant::GgmlType;
use lora_wgpu::train::{Duration, ExistingRun, RunDir, TrainConfig};
use lora_wgpu::Gpu;

/// LoRA fine-tuning of GPT-2 on any GPU through wgpu.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options that choose the adapter, shared by every command.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// Backend(s) to use: vulkan, metal, dx12, gl (comma-separated). Default: all.
    #[arg(long, env = "WGPU_BACKEND")]
    pub backend: Option<String>,
    /// Adapter index (from `lora-wgpu devices`) or a case-insensitive part of its name.
    #[arg(long, env = "WGPU_ADAPTER_NAME")]
    pub device: Option<String>,
    /// Store the frozen weights of the linear layers as f16: half their memory, arithmetic
    /// still f32 (needs an adapter offering SHADER_F16; see `lora-wgpu devices`).
    #[arg(long)]
    pub f16_weights: bool,
    /// Quantize the frozen weights once at load into ggml's q8_0, q4_0 or q4_k blocks (QLoRA:
    /// the adapter stays f32): the linear layers, and a Llama-family model's embedding and
    /// untied head. The kernels decode them in registers.
    #[arg(long, value_name = "FORMAT", value_parser = parse_quant, conflicts_with = "f16_weights")]
    pub quantize: Option<GgmlType>,
    /// Run the matmuls on cooperative matrices (tensor cores): operands rounded to f16, sums
    /// in f32 (needs an adapter that `lora-wgpu devices` marks coopmat).
    #[arg(long, env = "LORA_WGPU_COOPMAT", value_parser = clap::builder::FalseyValueParser::new())]
    pub coopmat: bool,
}

impl DeviceArgs {
    pub fn options(&self) -> Result<GpuOptions> {
        let mut o = GpuOptions::from_env();
        o.backends = match &self.backend {
            Some(b) => Some(GpuOptions::parse_backends(b)?),
            None => None,
        };
        o.adapter = self.device.clone();
        o.cooperative_matrix = self.coopmat;
        Ok(o)
    }

    pub fn gpu(&self) -> Result<Gpu> {
        Ok(Gpu::new(&self.options()?)?)
    }

    /// Load `spec` onto `gpu` with the weight storage these options ask for.
    pub fn load_model(&self, gpu: &Gpu, spec: &str) -> Result<Model> {
        let storage = match (self.quantize, self.f16_weights) {
            (Some(ty), _) => WeightStorage::Quant(ty),
            (None, true) => WeightStorage::F16,
            (None, false) => WeightStorage::F32,
        };
        Ok(Model::load_with(gpu, spec, storage)?)
    }
}

/// A `--quantize` value: a block format the GPU kernels read.
fn parse_quant(s: &str) -> std::result::Result<GgmlType, String> {
    GgmlType::parse(s)
        .filter(|&t| qmatmul::supported(t))
        .ok_or_else(|| {
            format!(
                "'{s}' is not a format the kernels read; choose one of {}",
                lora_wgpu::quant::names(qmatmul::FORMATS)
            )
        })
}

/// What `merge` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MergeFormat {
    /// A Hugging Face model directory.
    Hf,
    /// One GGUF file (llama.cpp).
    Gguf,
}

/// What `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A GGUF LoRA adapter (llama.cpp's `--lora`).
    Gguf,
}

/// A `merge --quantize` value: a type the GGUF writer quantizes to.
fn parse_gguf_quant(s: &str) -> std::result::Result<GgmlType, String> {
    GgmlType::parse(s)
        .filter(|t| lora_wgpu::merge::GGUF_QUANT.contains(t))
        .ok_or_else(|| {
            format!(
                "'{s}' is not a type merge writes; choose one of {}",
                lora_wgpu::quant::names(&lora_wgpu::merge::GGUF_QUANT)
            )
        })
}

/// LoRA hyperparameters (PEFT's names as aliases).
#[derive(clap::Args, Clone)]
pub struct LoraArgs {
    /// LoRA rank r.
    #[arg(
        long,
        alias = "r",
        alias = "lora-r",
        alias = "lora_r",
        default_value_t = 8
    )]
    pub rank: usize,
    /// lora_alpha: the update is scaled by alpha / r.
    #[arg(
        long,
        alias = "lora-alpha",
        alias = "lora_alpha",
        default_value_t = 16.0
    )]
    pub alpha: f32,
    /// Dropout on the adapter input, in [0, 1). Default 0.05, or 0 with --dora (DoRA trains
    /// without dropout here).
    #[arg(long, alias = "lora-dropout", alias = "lora_dropout")]
    pub dropout: Option<f32>,
    /// Modules to adapt (PEFT names, comma-separated): GPT-2's c_attn, c_proj, c_fc,
    /// attn.c_proj, mlp.c_proj; Llama-family q_proj, k_proj, v_proj, o_proj, gate_proj,
    /// up_proj, down_proj; or all-linear. Default: c_attn,c_proj (GPT-2), q_proj,v_proj
    /// (Llama family), as PEFT has them.
    #[arg(
        long,
        alias = "target-modules",
        alias = "target_modules",
        value_delimiter = ','
    )]
    pub targets: Option<Vec<String>>,
    /// Only these block indices (comma-separated; default all).
    #[arg(
        long,
        alias = "layers-to-transform",
        alias = "layers_to_transform",
        value_delimiter = ','
    )]
    pub layers: Option<Vec<usize>>,
    /// Rank-stabilised scaling alpha / √r.
    #[arg(long, alias = "use-rslora", alias = "use_rslora")]
    pub rslora: bool,
    /// DoRA (PEFT's use_dora): a trainable magnitude per output feature over the norm of the
    /// adapted weight.
    #[arg(long, alias = "use-dora", alias = "use_dora")]
    pub dora: bool,
    /// How A and B start (PEFT's init_lora_weights): true (Kaiming A, B = 0), gaussian, pissa,
    /// pissa_niter_N (randomized SVD, N power iterations) or olora. PiSSA and OLoRA train on a
    /// residual base and save adapters converted to apply to the original one (rank 2r); see
    /// docs/lora-init.md.
    #[arg(
        long,
        alias = "init-lora-weights",
        alias = "init_lora_weights",
        default_value = "true"
    )]
    pub init: LoraInit,
}

impl LoraArgs {
    /// The LoRA config these flags give for `model`.
    pub fn config(&self, model: &ModelConfig) -> LoraConfig {
        LoraConfig {
            r: self.rank,
            alpha: self.alpha,
            dropout: self.dropout.unwrap_or(if self.dora { 0.0 } else { 0.05 }),
            target_modules: self
                .targets
                .clone()
                .unwrap_or_else(|| model.default_targets()),
            layers_to_transform: self.layers.clone(),
            use_rslora: self.rslora,
            use_dora: self.dora,
            init: self.init,
        }
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Model: a Hugging Face GPT-2 dir, `tiny` (built-in demo), `random:<shape>`, or a hub id.
    /// Default with no --data: tiny.
    #[arg(long)]
    pub model: Option<String>,
    /// Training text: a .txt file, a directory of .txt files, or .jsonl with {"text"} or
    /// {"prompt", "completion"} per line. Default: the bundled demo corpus.
    #[arg(long, alias = "train-file", alias = "train_file")]
    pub data: Option<PathBuf>,
    /// Output directory (adapter, checkpoints/, best/, metrics.jsonl, loss_curve.svg).
    /// Default: runs/run-<time>.
    #[arg(long, alias = "output-dir", alias = "output_dir")]
    pub out: Option<PathBuf>,
    /// Validation data (same formats as --data).
    #[arg(long, alias = "validation-file", alias = "validation_file")]
    pub valid: Option<PathBuf>,
    /// Hold out this fraction of the training blocks for validation (when no --valid).
    #[arg(long, conflicts_with = "valid")]
    pub val_split: Option<f64>,
    /// Loss on the answers only: a jsonl completion, a chat's assistant turns (the default for
    /// chat data).
    #[arg(long, conflicts_with = "no_mask_prompt")]
    pub mask_prompt: bool,
    /// Loss on every token, chat data included.
    #[arg(long, alias = "train-on-inputs")]
    pub no_mask_prompt: bool,
    /// Tokens per training sequence. Default: min(1024, n_positions); 32 for the demo.
    #[arg(long, alias = "block_size", alias = "max-seq-length")]
    pub block_size: Option<usize>,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Peak learning rate.
    #[arg(long, alias = "learning-rate", alias = "learning_rate")]
    pub lr: Option<f32>,
    /// AdamW weight decay.
    #[arg(long, alias = "weight_decay", default_value_t = 0.0)]
    pub weight_decay: f32,
    /// LoRA+: B's learning rate is R times A's (PEFT's loraplus_lr_ratio; its paper suggests 16).
    #[arg(
        long,
        alias = "loraplus_lr_ratio",
        value_name = "R",
        allow_negative_numbers = true
    )]
    pub loraplus_lr_ratio: Option<f32>,
    /// Warmup steps.
    #[arg(long, alias = "warmup_steps", conflicts_with = "warmup_ratio")]
    pub warmup_steps: Option<u64>,
    /// Warmup as a fraction of the total steps.
    #[arg(long, alias = "warmup_ratio", default_value_t = 0.0)]
    pub warmup_ratio: f32,
    /// Learning-rate schedule after warmup: linear, cosine or constant.
    #[arg(
        long,
        alias = "lr-scheduler-type",
        alias = "lr_scheduler_type",
        default_value = "linear"
    )]
    pub lr_scheduler: String,
    /// Passes over the training data (default 1).
    #[arg(long, alias = "num-train-epochs", alias = "num_train_epochs")]
    pub epochs: Option<u64>,
    /// Optimizer steps (wins over --epochs).
    #[arg(long, alias = "max_steps", alias = "iters")]
    pub max_steps: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(
        long,
        alias = "per-device-train-batch-size",
        alias = "per_device_train_batch_size"
    )]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(
        long,
        alias = "gradient-accumulation-steps",
        alias = "gradient_accumulation_steps",
        default_value_t = 1
    )]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, alias = "max_grad_norm", default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Seed of the LoRA init, data order, validation split and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Log every N steps.
    #[arg(long, alias = "logging-steps", alias = "logging_steps")]
    pub log_every: Option<u64>,
    /// Evaluate every N steps (0: at epoch ends and at the end only).
    #[arg(long, alias = "eval-steps", alias = "eval_steps")]
    pub eval_every: Option<u64>,
    /// Checkpoint every N steps (0: at the end only).
    #[arg(long, alias = "save-steps", alias = "save_steps", default_value_t = 0)]
    pub save_every: u64,
    /// Checkpoints to keep (0: all).
    #[arg(long, alias = "save_total_limit", default_value_t = 2)]
    pub save_total_limit: usize,
    /// Stop after this many non-finite (skipped) steps in a row.
    #[arg(long, default_value_t = 5)]
    pub max_bad_steps: u64,
    /// Continue from a checkpoint: a checkpoint dir, or (no value) --out's newest.
    #[arg(long, alias = "resume-from-checkpoint", num_args = 0..=1)]
    pub resume: Option<Option<PathBuf>>,
    /// Replace an existing run in --out.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Text to generate from after training (default: the start of the validation text).
    #[arg(long)]
    pub sample_prompt: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Merge PEFT adapters into the base weights and write a Hugging Face directory or one
    /// GGUF file.
    Merge {
        /// Base model: a Hugging Face GPT-2 dir, tiny, random:<shape> or hub id.
        #[arg(long)]
        model: String,
        /// PEFT adapter directory, optionally with a scale: DIR or DIR:SCALE (repeatable).
        #[arg(long = "adapter", required = true)]
        adapters: Vec<String>,
        /// Output: a directory (--format hf: config.json, model.safetensors, tokenizer.json)
        /// or a file (--format gguf).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing output directory or file.
        #[arg(long)]
        overwrite: bool,
        /// hf: a Hugging Face directory; gguf: one llama.cpp GGUF file.
        #[arg(long, value_enum, default_value_t = MergeFormat::Hf)]
        format: MergeFormat,
        /// With --format gguf: store the 2-D weights as q8_0, q4_0 or q4_k (default f32).
        #[arg(long, value_name = "TYPE", value_parser = parse_gguf_quant)]
        quantize: Option<GgmlType>,
    },
    /// Write a PEFT adapter in another format: a GGUF LoRA that llama.cpp loads (--lora).
    Export {
        /// PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// The base model the adapter was trained on: model dir, GGUF file, preset or hub id.
        #[arg(long)]
        model: String,
        /// Output format; gguf is the only one.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing output file.
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

/// Settings of the built-in demo (no --model and no --data): small enough to finish in about
/// three minutes on two CPU cores with lavapipe.
pub struct Demo;

impl Demo {
    pub const BLOCK: usize = 32;
    pub const BATCH: usize = 4;
    pub const STEPS: u64 = 20;
    pub const LR: f32 = 1e-2;
    pub const EVAL_EVERY: u64 = 5;
    pub const LOG_EVERY: u64 = 2;
    pub const VAL_SPLIT: f64 = 0.005;
}

impl TrainArgs {
    /// The built-in demo: neither --model nor --data.
    pub fn is_demo(&self) -> bool {
        self.model.is_none() && self.data.is_none()
    }

    /// --out, or a new `runs/run-<time>`.
    pub fn run_dir(&self) -> RunDir {
        match &self.out {
            Some(o) => RunDir::new(o),
            None => RunDir::timestamped(),
        }
    }

    /// What --resume and --overwrite say to do with a run already in --out.
    pub fn existing_run(&self) -> ExistingRun {
        if self.resume.is_some() {
            ExistingRun::Resume
        } else if self.overwrite {
            ExistingRun::Overwrite
        } else {
            ExistingRun::Refuse
        }
    }

    /// The run's settings for `model` (the demo's where the demo runs), checked.
    pub fn train_config(&self, model: &ModelConfig) -> Result<TrainConfig> {
        let demo = self.is_demo();
        let block = self.block_size.unwrap_or(if demo {
            Demo::BLOCK
        } else {
            1024.min(model.max_positions())
        });
        let cfg = TrainConfig {
            lora: self.lora.config(model),
            lr: self.lr.unwrap_or(if demo { Demo::LR } else { 2e-4 }),
            weight_decay: self.weight_decay,
            loraplus_lr_ratio: self.loraplus_lr_ratio,
            warmup_steps: self.warmup_steps,
            warmup_ratio: self.warmup_ratio,
            schedule: self.lr_scheduler.parse()?,
            duration: match (self.max_steps, self.epochs) {
                (Some(s), _) => Duration::Steps(s),
                (None, Some(e)) => Duration::Epochs(e),
                (None, None) if demo => Duration::Steps(Demo::STEPS),
                (None, None) => Duration::Epochs(1),
            },
            batch_size: self
                .batch_size
                .unwrap_or(if demo { Demo::BATCH } else { 4 }),
            grad_accum: self.grad_accum,
            max_grad_norm: self.max_grad_norm,
            block_size: block,
            seed: self.seed,
            log_every: self
                .log_every
                .unwrap_or(if demo { Demo::LOG_EVERY } else { 10 }),
            eval_every: self
                .eval_every
                .unwrap_or(if demo { Demo::EVAL_EVERY } else { 0 }),
            save_every: self.save_every,
            save_total_limit: self.save_total_limit,
            max_bad_steps: self.max_bad_steps,
        };
        cfg.validate(model)?;
        Ok(cfg)
    }
}
