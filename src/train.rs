//! The training loop: learning-rate schedule, gradient accumulation, evaluation, the best and
//! final adapters, checkpoints and exact resume.
//!
//! A run writes into one output directory:
//!
//! ```text
//! out/adapter_config.json, adapter_model.safetensors   final adapter (PEFT format)
//! out/best/                                             adapter with the lowest val loss
//! out/checkpoints/step-000100/                          adapter + optimizer.safetensors
//!                                                       + trainer_state.json
//! out/checkpoints/latest                                name of the newest complete checkpoint
//! out/trainer_state.json, metrics.jsonl, loss_curve.svg
//! ```
//!
//! Every file is written to a temporary sibling, fsynced and renamed; a checkpoint directory is
//! assembled under a temporary name and renamed whole, and `latest` moves only after that. A
//! run killed at any moment therefore resumes from its newest complete checkpoint.
//!
//! Resuming restores the LoRA parameters, AdamW's moments, the step, the data order position and
//! the best val loss; dropout masks are a function of (seed, step), so 10 steps + resume + 10
//! steps reproduce 20 uninterrupted steps bit for bit on the same device.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Sampler, SamplerState};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::adamw::AdamW;
use crate::lora::{peft, LoraConfig};
use crate::model::weights::{self, F32View};
use crate::model::{MicroBatch, Model, OptimizerState, StepStats, TrainGraph};

/// Learning-rate schedule after warmup (Hugging Face's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear decay to 0 at the last step.
    #[default]
    Linear,
    /// Half a cosine from the peak to 0 at the last step.
    Cosine,
    /// The peak rate throughout.
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            "constant" | "constant_with_warmup" => Ok(Schedule::Constant),
            other => Err(Error::invalid(
                "lr scheduler",
                other,
                "expected linear, cosine or constant",
            )),
        }
    }
}

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Duration {
    /// Whole passes over the training blocks.
    Epochs(u64),
    /// Optimizer steps.
    Steps(u64),
}

/// Everything that defines a training run, with Hugging Face's defaults where it has them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// LoRA rank, alpha, dropout, targets, layers, rsLoRA.
    #[serde(skip, default)]
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub lr: f32,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Warmup steps (wins over `warmup_ratio` when set).
    pub warmup_steps: Option<u64>,
    /// Warmup as a fraction of the total steps.
    pub warmup_ratio: f32,
    /// Schedule after warmup.
    pub schedule: Schedule,
    /// Training length.
    pub duration: Duration,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f32,
    /// Tokens per sequence.
    pub block_size: usize,
    /// Seed of the LoRA init, the data order and the dropout masks.
    pub seed: u64,
    /// Log every this many steps.
    pub log_every: u64,
    /// Evaluate every this many steps (0: only at epoch ends and at the end).
    pub eval_every: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub save_every: u64,
    /// Checkpoints kept (oldest deleted first; 0 keeps all).
    pub save_total_limit: usize,
    /// Stop after this many non-finite steps in a row (each one is skipped).
    pub max_bad_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lora: LoraConfig::default(),
            lr: 2e-4,
            weight_decay: 0.0,
            warmup_steps: None,
            warmup_ratio: 0.0,
            schedule: Schedule::Linear,
            duration: Duration::Epochs(1),
            batch_size: 4,
            grad_accum: 1,
            max_grad_norm: 1.0,
            block_size: 128,
            seed: 42,
            log_every: 10,
            eval_every: 0,
            save_every: 0,
            save_total_limit: 2,
            max_bad_steps: 5,
        }
    }
}

impl TrainConfig {
    /// Check every hyperparameter, naming the bad one and its valid range.
    pub fn validate(&self, model: &crate::model::Gpt2Config) -> Result<()> {
        self.lora.validate(model)?;
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid("learning rate", self.lr, "must be > 0"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid(
                "weight decay",
                self.weight_decay,
                "must be >= 0",
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(Error::invalid(
                "warmup ratio",
                self.warmup_ratio,
                "must be in [0, 1)",
            ));
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return Err(Error::invalid(
                "max grad norm",
                self.max_grad_norm,
                "must be >= 0 (0 turns clipping off)",
            ));
        }
        for (name, v) in [
            ("batch size", self.batch_size as u64),
            ("gradient accumulation steps", self.grad_accum as u64),
            ("log every", self.log_every),
            ("max bad steps", self.max_bad_steps),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, v, "must be at least 1"));
            }
        }
        match self.duration {
            Duration::Epochs(0) => return Err(Error::invalid("epochs", 0, "must be at least 1")),
            Duration::Steps(0) => return Err(Error::invalid("max steps", 0, "must be at least 1")),
            _ => {}
        }
        if self.block_size < 2 || self.block_size > model.n_positions {
            return Err(Error::invalid(
                "block size",
                self.block_size,
                format!(
                    "must be in 2..={} (the model's n_positions)",
                    model.n_positions
                ),
            ));
        }
        Ok(())
    }

    fn adamw(&self) -> AdamW {
        AdamW {
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            ..AdamW::default()
        }
    }

    /// The settings a resumed run must share with the original, as `name=value` pairs.
    fn fingerprint(&self) -> Vec<(String, String)> {
        let l = &self.lora;
        [
            ("rank", l.r.to_string()),
            ("alpha", l.alpha.to_string()),
            ("dropout", l.dropout.to_string()),
            ("targets", l.target_modules.join(",")),
            ("layers", format!("{:?}", l.layers_to_transform)),
            ("rslora", l.use_rslora.to_string()),
            ("batch-size", self.batch_size.to_string()),
            ("grad-accum", self.grad_accum.to_string()),
            ("block-size", self.block_size.to_string()),
            ("seed", self.seed.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The learning rate of optimizer step `step` (1-based) out of `total`, Hugging Face's way:
/// step s uses the schedule's value at s − 1, so warmup starts from 0.
pub fn learning_rate(cfg: &TrainConfig, step: u64, total: u64) -> f32 {
    let warmup = warmup_steps(cfg, total);
    let s = step.saturating_sub(1);
    if s < warmup {
        return cfg.lr * s as f32 / warmup.max(1) as f32;
    }
    let progress = (s - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    let factor = match cfg.schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    cfg.lr * factor as f32
}

fn warmup_steps(cfg: &TrainConfig, total: u64) -> u64 {
    // Hugging Face computes ceil(total * ratio) in f64 from the decimal the user typed; going
    // through the f32's shortest decimal gives the same f64 (0.1f32 as f64 is 0.10000000149,
    // which made ceil(100 * 0.1) = 11).
    let ratio: f64 = cfg.warmup_ratio.to_string().parse().unwrap_or(0.0);
    cfg.warmup_steps
        .unwrap_or_else(|| (ratio * total as f64).ceil() as u64)
}

/// Something the trainer reports while it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Training starts (or resumes) at `step` of `total_steps`.
    Start {
        /// Steps already done (0, or the resumed checkpoint's step).
        step: u64,
        /// Steps of the whole run.
        total_steps: u64,
        /// Trainable LoRA parameters.
        trainable: usize,
    },
    /// A logged window of steps (every `log_every`, and the last step).
    Log(LogRecord),
    /// A step's gradients were not finite: AdamW skipped it.
    Skipped {
        /// The step.
        step: u64,
        /// Its loss (may be NaN).
        loss: f32,
    },
    /// A validation pass.
    Eval {
        /// After this step.
        step: u64,
        /// Mean val loss.
        loss: f32,
        /// exp(loss).
        perplexity: f32,
        /// Whether it is the best so far (the best adapter was saved).
        best: bool,
    },
    /// A checkpoint was written.
    Saved {
        /// After this step.
        step: u64,
        /// Its directory.
        path: PathBuf,
    },
}

/// One line of metrics.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Optimizer step.
    pub step: u64,
    /// Fractional epoch reached.
    pub epoch: f64,
    /// Mean training loss over the window.
    pub loss: f32,
    /// Learning rate of the step.
    pub lr: f32,
    /// Gradient norm of the step (before clipping).
    pub grad_norm: f32,
    /// Input tokens per second over the window.
    pub tokens_per_sec: f64,
    /// GPU memory the training graph holds, in bytes ([`TrainGraph::allocated_bytes`]: frozen
    /// weights excluded). 0 in metrics written before this field existed.
    #[serde(default)]
    pub gpu_bytes: u64,
    /// Val loss, when this step evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
    /// Val perplexity, when this step evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_perplexity: Option<f32>,
}

/// Progress saved with a checkpoint and at the end (`trainer_state.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: u64,
    /// Steps of the whole run.
    pub max_steps: u64,
    /// Where the data order stands.
    pub sampler: SamplerState,
    /// Lowest val loss so far, and its step.
    pub best_metric: Option<f32>,
    /// Step of the best val loss.
    pub best_step: Option<u64>,
    /// Non-finite steps in a row at this point.
    pub bad_steps: u64,
    /// Settings a resume must match.
    pub fingerprint: Vec<(String, String)>,
    /// The run's configuration.
    pub config: TrainConfig,
}

/// What [`Trainer::on_event`] stores.
type Callback<'a> = Box<dyn FnMut(&Event) + 'a>;

/// Trains a LoRA adapter on a [`Model`]: build it, optionally [`Trainer::resume`], then
/// [`Trainer::run`].
///
/// ```no_run
/// use lora_wgpu::{data::Dataset, model::Model, train::{Trainer, TrainConfig}, Gpu, GpuOptions};
/// # fn main() -> lora_wgpu::Result<()> {
/// let gpu = Gpu::new(&GpuOptions::from_env())?;
/// let model = Model::load(&gpu, "tiny")?;
/// let cfg = TrainConfig { block_size: 64, ..TrainConfig::default() };
/// let data = Dataset::from_text(lora_wgpu::data::BUNDLED_CORPUS, "corpus", &model.tokenizer, 64)?;
/// let (train, valid) = data.split_validation(0.1, cfg.seed)?;
/// let mut trainer = Trainer::new(&gpu, &model, cfg, train)?
///     .with_validation(valid)
///     .with_output("runs/demo")
///     .on_event(|e| println!("{e:?}"));
/// trainer.run()?;
/// # Ok(()) }
/// ```
pub struct Trainer<'a> {
    gpu: &'a Gpu,
    model: &'a Model,
    cfg: TrainConfig,
    graph: TrainGraph,
    train: Dataset,
    valid: Option<Dataset>,
    sampler: Sampler,
    out: Option<PathBuf>,
    callback: Option<Callback<'a>>,
    step: u64,
    total: u64,
    best: Option<(u64, f32)>,
    bad_steps: u64,
    /// Losses and input tokens of the steps since the last log line.
    window: Vec<(u64, StepStats)>,
    window_start: Instant,
    /// Stop (with a checkpoint) after this step, before the end of the run.
    stop_at: Option<u64>,
}

impl<'a> Trainer<'a> {
    /// Build the training graph for `model` and the data order for `train`.
    pub fn new(gpu: &'a Gpu, model: &'a Model, cfg: TrainConfig, train: Dataset) -> Result<Self> {
        cfg.validate(&model.config)?;
        if train.block_size() != cfg.block_size {
            return Err(Error::invalid(
                "dataset block size",
                train.block_size(),
                format!("the trainer was configured for {}", cfg.block_size),
            ));
        }
        let graph = TrainGraph::new(
            gpu,
            &model.gpt2,
            &cfg.lora,
            None,
            cfg.seed,
            cfg.batch_size,
            cfg.block_size,
            &cfg.adamw(),
        )?;
        let sampler = Sampler::new(train.len(), cfg.batch_size, cfg.seed)?;
        let total = match cfg.duration {
            Duration::Steps(s) => s,
            Duration::Epochs(e) => {
                let micro = sampler.steps_for_epochs(e);
                micro.div_ceil(cfg.grad_accum as u64)
            }
        };
        Ok(Trainer {
            gpu,
            model,
            cfg,
            graph,
            train,
            valid: None,
            sampler,
            out: None,
            callback: None,
            step: 0,
            total,
            best: None,
            bad_steps: 0,
            window: Vec::new(),
            window_start: Instant::now(),
            stop_at: None,
        })
    }

    /// Evaluate on `valid` every `eval_every` steps, at epoch ends and at the end, and keep
    /// the best adapter.
    pub fn with_validation(mut self, valid: Dataset) -> Self {
        self.valid = Some(valid);
        self
    }

    /// Write adapters, checkpoints and metrics into `dir` (created if needed).
    pub fn with_output(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out = Some(dir.into());
        self
    }

    /// Call `f` with every [`Event`].
    pub fn on_event(mut self, f: impl FnMut(&Event) + 'a) -> Self {
        self.callback = Some(Box::new(f));
        self
    }

    /// Pause after `step`: [`Trainer::run`] returns there, leaving a checkpoint to resume from
    /// (the schedule still spans the whole run).
    pub fn stop_after(mut self, step: u64) -> Self {
        self.stop_at = Some(step);
        self
    }

    /// Steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        self.total
    }

    /// Steps done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The training graph (LoRA parameters, layout, memory).
    pub fn graph(&self) -> &TrainGraph {
        &self.graph
    }

    /// Continue from a checkpoint directory (`out/checkpoints/step-N`), or from an output
    /// directory's newest complete checkpoint. Its settings must match this trainer's.
    pub fn resume(&mut self, path: &Path) -> Result<u64> {
        let dir = find_checkpoint(path)?;
        let state: TrainerState = read_json(&dir.join("trainer_state.json"))?;
        let ours = self.cfg.fingerprint();
        let diffs: Vec<String> = ours
            .iter()
            .zip(&state.fingerprint)
            .filter(|(a, b)| a != b)
            .map(|((k, now), (_, then))| format!("--{k} was {then}, now {now}"))
            .collect();
        if !diffs.is_empty() || ours.len() != state.fingerprint.len() {
            return Err(Error::Checkpoint {
                path: dir,
                detail: format!(
                    "this checkpoint was made with other settings ({}); resume with the \
                     original ones",
                    diffs.join("; ")
                ),
            });
        }
        let (_, layout, params) = peft::load(&dir, &self.model.config)?;
        if layout != *self.graph.layout() {
            return Err(Error::Checkpoint {
                path: dir,
                detail: "the adapter's layout differs from this run's LoRA settings".into(),
            });
        }
        let moments = read_moments(&dir.join("optimizer.safetensors"), params.len())?;
        self.graph.write_state(
            self.gpu,
            &OptimizerState {
                params,
                m: moments.0,
                v: moments.1,
            },
        )?;
        self.sampler = Sampler::resume(
            self.train.len(),
            self.cfg.batch_size,
            self.cfg.seed,
            state.sampler,
        )
        .map_err(|e| Error::Checkpoint {
            path: dir.clone(),
            detail: format!("{e} (was the training data changed?)"),
        })?;
        self.step = state.global_step;
        self.best = state.best_step.zip(state.best_metric);
        self.bad_steps = state.bad_steps;
        if let Some(out) = &self.out {
            truncate_metrics(&out.join("metrics.jsonl"), self.step)?;
        }
        Ok(self.step)
    }

    fn emit(&mut self, e: Event) {
        if let Some(cb) = self.callback.as_mut() {
            cb(&e);
        }
    }

    /// Train to the end: every step, log, evaluation and checkpoint; then the final adapter,
    /// trainer_state.json and the loss curve. Returns the last logged record.
    pub fn run(&mut self) -> Result<Option<LogRecord>> {
        if let Some(out) = &self.out {
            create_dir(out)?;
            for dir in [out.clone(), out.join("best"), out.join("checkpoints")] {
                remove_leftovers(&dir);
            }
        }
        let trainable = self.graph.layout().num_parameters();
        self.emit(Event::Start {
            step: self.step,
            total_steps: self.total,
            trainable,
        });
        self.window_start = Instant::now();
        let mut last = None;
        let end = self.stop_at.unwrap_or(self.total).min(self.total);
        while self.step < end {
            self.step += 1;
            let step = self.step;
            self.submit(step)?;
            let wanted = step.is_multiple_of(self.cfg.log_every)
                || step == self.total
                || self.eval_due(step)
                || self.save_due(step);
            // Read results as they arrive; wait only when this step must be logged.
            let results = if wanted {
                self.graph.drain_steps(self.gpu)?
            } else {
                self.graph.ready_steps(self.gpu)?
            };
            self.absorb(results)?;
            if wanted {
                let mut rec = self.log_record(step);
                if self.eval_due(step) {
                    let (loss, ppl) = self.evaluate_inner()?;
                    rec.val_loss = Some(loss);
                    rec.val_perplexity = Some(ppl);
                    let best = self.best.is_none_or(|(_, b)| loss < b);
                    if best {
                        self.best = Some((step, loss));
                        if let Some(out) = self.out.clone() {
                            self.save_adapter(&out.join("best"))?;
                        }
                    }
                    self.emit(Event::Eval {
                        step,
                        loss,
                        perplexity: ppl,
                        best,
                    });
                }
                if let Some(out) = &self.out {
                    append_metrics(&out.join("metrics.jsonl"), &rec)?;
                }
                self.emit(Event::Log(rec.clone()));
                last = Some(rec);
                if self.save_due(step) {
                    self.checkpoint()?;
                }
                self.window_start = Instant::now();
            }
        }
        if self.step < self.total {
            return Ok(last);
        }
        if let Some(out) = self.out.clone() {
            self.save_adapter(&out)?;
            write_json(&out.join("trainer_state.json"), &self.state())?;
            crate::plot::write_loss_curve(&out.join("metrics.jsonl"), &out.join("loss_curve.svg"))?;
        }
        Ok(last)
    }

    fn eval_due(&self, step: u64) -> bool {
        if self.valid.is_none() {
            return false;
        }
        let every = self.cfg.eval_every;
        (every > 0 && step.is_multiple_of(every)) || step == self.total || self.epoch_ends(step)
    }

    fn save_due(&self, step: u64) -> bool {
        self.out.is_some()
            && ((self.cfg.save_every > 0 && step.is_multiple_of(self.cfg.save_every))
                || step == self.total
                || Some(step) == self.stop_at)
    }

    /// Whether a pass over the training blocks completes during `step`.
    fn epoch_ends(&self, step: u64) -> bool {
        let per_step = (self.cfg.batch_size * self.cfg.grad_accum) as u64;
        let n = self.train.len() as u64;
        (step * per_step) / n > ((step - 1) * per_step) / n
    }

    fn epoch_at(&self, step: u64) -> f64 {
        (step * (self.cfg.batch_size * self.cfg.grad_accum) as u64) as f64 / self.train.len() as f64
    }

    /// Queue one optimizer step (all its micro-batches) on the GPU.
    fn submit(&mut self, step: u64) -> Result<()> {
        let lr = learning_rate(&self.cfg, step, self.total);
        let micros = self.cfg.grad_accum;
        let batches = (0..micros)
            .map(|_| self.sampler.next_batch(&self.train))
            .collect::<Result<Vec<_>>>()?;
        let counted: usize = batches.iter().map(|b| b.predicted).sum();
        for (index, b) in batches.iter().enumerate() {
            let micro = MicroBatch {
                inputs: &b.inputs,
                targets: &b.targets,
                index,
                count: micros,
                step_targets: counted,
            };
            self.graph.micro_step(self.gpu, &micro, step, lr)?;
        }
        Ok(())
    }

    /// Take step results into the log window; stop after too many non-finite steps in a row.
    fn absorb(&mut self, results: Vec<(u64, StepStats)>) -> Result<()> {
        for (step, s) in results {
            if s.skipped() || !s.loss.is_finite() {
                self.bad_steps += 1;
                self.emit(Event::Skipped { step, loss: s.loss });
                if self.bad_steps >= self.cfg.max_bad_steps {
                    return Err(Error::Diverged {
                        steps: self.bad_steps,
                        last: step,
                    });
                }
            } else {
                self.bad_steps = 0;
                self.window.push((step, s));
            }
        }
        Ok(())
    }

    fn log_record(&mut self, step: u64) -> LogRecord {
        let window = std::mem::take(&mut self.window);
        let finite: Vec<_> = window.iter().map(|(_, s)| s).collect();
        let loss = if finite.is_empty() {
            f32::NAN
        } else {
            finite.iter().map(|s| s.loss as f64).sum::<f64>() as f32 / finite.len() as f32
        };
        let steps = window.len().max(1) as f64;
        let tokens =
            steps * (self.cfg.batch_size * self.cfg.grad_accum * self.cfg.block_size) as f64;
        LogRecord {
            step,
            epoch: self.epoch_at(step),
            loss,
            lr: learning_rate(&self.cfg, step, self.total),
            grad_norm: window.last().map_or(f32::NAN, |(_, s)| s.grad_norm),
            tokens_per_sec: tokens / self.window_start.elapsed().as_secs_f64().max(1e-9),
            gpu_bytes: self.graph.allocated_bytes(),
            val_loss: None,
            val_perplexity: None,
        }
    }

    /// Mean val loss and perplexity over the whole validation set (LoRA dropout off).
    pub fn evaluate(&mut self) -> Result<Option<(f32, f32)>> {
        if self.valid.is_none() {
            return Ok(None);
        }
        let r = self.graph.drain_steps(self.gpu)?;
        self.absorb(r)?;
        self.evaluate_inner().map(Some)
    }

    fn evaluate_inner(&mut self) -> Result<(f32, f32)> {
        let valid = self.valid.as_ref().expect("checked by the caller");
        let loss = mean_loss(self.gpu, &mut self.graph, valid, self.cfg.batch_size)?;
        Ok((loss, loss.exp()))
    }

    fn state(&self) -> TrainerState {
        TrainerState {
            global_step: self.step,
            max_steps: self.total,
            sampler: self.sampler.state(),
            best_metric: self.best.map(|b| b.1),
            best_step: self.best.map(|b| b.0),
            bad_steps: self.bad_steps,
            fingerprint: self.cfg.fingerprint(),
            config: self.cfg.clone(),
        }
    }

    /// Save the current adapter in PEFT's format into `dir` (each file atomically).
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        let params = self.graph.read_params(self.gpu)?;
        peft::save(
            dir,
            &self.cfg.lora,
            self.graph.layout(),
            &params,
            Some(&self.model.source.to_string()),
        )
    }

    /// Write a checkpoint of the current step, then point `latest` at it.
    fn checkpoint(&mut self) -> Result<()> {
        let out = self.out.clone().expect("checkpoints need an output dir");
        let root = out.join("checkpoints");
        create_dir(&root)?;
        let name = format!("step-{:06}", self.step);
        let tmp = root.join(format!(".tmp-{name}"));
        let done = root.join(&name);
        remove_leftovers(&root);
        create_dir(&tmp)?;
        let state = self.graph.read_state(self.gpu)?;
        peft::save(
            &tmp,
            &self.cfg.lora,
            self.graph.layout(),
            &state.params,
            Some(&self.model.source.to_string()),
        )?;
        write_moments(&tmp.join("optimizer.safetensors"), &state.m, &state.v)?;
        write_json(&tmp.join("trainer_state.json"), &self.state())?;
        // An older checkpoint of the same step (a run resumed from before it) is moved aside
        // whole, never deleted in place: a kill at any point leaves every `step-N` complete.
        let trash = root.join(format!(".trash-{name}"));
        if done.exists() {
            std::fs::rename(&done, &trash).map_err(|source| Error::Io {
                path: done.clone(),
                source,
            })?;
        }
        std::fs::rename(&tmp, &done).map_err(|source| Error::Io {
            path: done.clone(),
            source,
        })?;
        peft::sync_dir(&root);
        let _ = std::fs::remove_dir_all(&trash);
        peft::write_atomic(&root.join("latest"), name.as_bytes())?;
        self.prune(&root, &name)?;
        self.emit(Event::Saved {
            step: self.step,
            path: done,
        });
        Ok(())
    }

    /// Delete the oldest checkpoints beyond `save_total_limit` (never the newest).
    fn prune(&self, root: &Path, newest: &str) -> Result<()> {
        if self.cfg.save_total_limit == 0 {
            return Ok(());
        }
        let mut all = list_checkpoints(root)?;
        all.sort();
        let excess = all.len().saturating_sub(self.cfg.save_total_limit);
        for (_, name) in all.into_iter().take(excess) {
            if name != newest {
                // Rename first so that a kill mid-delete leaves no half-deleted `step-N`.
                let trash = root.join(format!(".trash-{name}"));
                if std::fs::rename(root.join(&name), &trash).is_ok() {
                    let _ = std::fs::remove_dir_all(trash);
                }
            }
        }
        Ok(())
    }
}

/// Mean next-token loss over every block of `data` (LoRA dropout off), in batches of the
/// graph's batch size `b`: Σ per-target loss / Σ counted targets.
pub fn mean_loss(gpu: &Gpu, graph: &mut TrainGraph, data: &Dataset, b: usize) -> Result<f32> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for batch in data.eval_batches(b)? {
        graph.forward(gpu, &batch.inputs, &batch.targets)?;
        let (s, c) = graph.loss_sum(gpu)?;
        sum += s;
        count += c;
    }
    if count == 0 {
        return Err(Error::invalid(
            "evaluation data",
            "0 predicted tokens",
            "needs at least one block with a target",
        ));
    }
    Ok((sum / count as f64) as f32)
}

/// Files every complete checkpoint directory holds.
const CHECKPOINT_FILES: [&str; 4] = [
    "trainer_state.json",
    "optimizer.safetensors",
    "adapter_config.json",
    "adapter_model.safetensors",
];

fn is_complete_checkpoint(dir: &Path) -> bool {
    CHECKPOINT_FILES.iter().all(|f| dir.join(f).is_file())
}

/// Remove what a killed run may have left in `dir` (an output, `best/` or `checkpoints/`
/// directory): checkpoints being assembled (`.tmp-step-N/`), being deleted (`.trash-step-N/`)
/// and temporary files of atomic writes (`.NAME.tmp-PID`).
fn remove_leftovers(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && (name.starts_with(".tmp-step-") || name.starts_with(".trash-step-")) {
            let _ = std::fs::remove_dir_all(e.path());
        } else if !is_dir
            && name
                .rsplit_once(".tmp-")
                .is_some_and(|(_, pid)| pid.bytes().all(|b| b.is_ascii_digit()))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The checkpoint directory `path` names: a checkpoint itself, or an output dir / checkpoints
/// dir whose `latest` (or else newest complete `step-N`) is used.
pub fn find_checkpoint(path: &Path) -> Result<PathBuf> {
    if is_complete_checkpoint(path) {
        return Ok(path.to_path_buf());
    }
    let root = if path.join("checkpoints").is_dir() {
        path.join("checkpoints")
    } else {
        path.to_path_buf()
    };
    if let Ok(name) = std::fs::read_to_string(root.join("latest")) {
        let dir = root.join(name.trim());
        if is_complete_checkpoint(&dir) {
            return Ok(dir);
        }
    }
    let mut all = list_checkpoints(&root).unwrap_or_default();
    all.sort();
    all.pop()
        .map(|(_, n)| root.join(n))
        .ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            detail:
                "no checkpoint here (expected out/checkpoints/step-N with trainer_state.json); \
                 train with --save-every to write some"
                    .into(),
        })
}

/// Complete checkpoints (`step-N` directories) under `root`, with their step.
fn list_checkpoints(root: &Path) -> Result<Vec<(u64, String)>> {
    let rd = std::fs::read_dir(root).map_err(|source| Error::Io {
        path: root.to_path_buf(),
        source,
    })?;
    Ok(rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            is_complete_checkpoint(&e.path()).then_some((step, name))
        })
        .collect())
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("plain data serialises");
    peft::write_atomic(path, text.as_bytes())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

fn write_moments(path: &Path, m: &[f32], v: &[f32]) -> Result<()> {
    let views = [("m", m), ("v", v)].map(|(k, data)| {
        let shape = vec![data.len()];
        (k, F32View { shape, data })
    });
    let data = safetensors::serialize(views, None).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    peft::write_atomic(path, &data)
}

fn read_moments(path: &Path, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let bad = |detail: String| Error::Checkpoint {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let get = |k: &str| -> Result<Vec<f32>> {
        let t = st.tensor(k).map_err(|e| bad(format!("tensor {k}: {e}")))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != [n] {
            return Err(bad(format!(
                "tensor {k} is {:?} {:?}, expected F32 [{n}]",
                t.dtype(),
                t.shape()
            )));
        }
        weights::to_f32(path, k, t.dtype(), t.data())
    };
    Ok((get("m")?, get("v")?))
}

fn append_metrics(path: &Path, rec: &LogRecord) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let line = serde_json::to_string(rec).expect("plain data serialises");
    writeln!(f, "{line}").map_err(io)
}

/// Drop metrics.jsonl lines after `step` (a resumed run writes them again), atomically.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<LogRecord>(l)
                .map(|r| r.step <= step)
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    peft::write_atomic(path, kept.as_bytes())
}
