//! The training loop: learning-rate schedule, gradient accumulation, evaluation, the best and
//! final adapters, checkpoints and exact resume.
//!
//! A run writes into one output directory, a [`RunDir`], which owns its layout and files; a
//! run killed at any moment resumes from its newest complete [`Checkpoint`].
//!
//! Resuming restores the LoRA parameters, AdamW's moments, the step, the data order position and
//! the best val loss; dropout masks are a function of (seed, step), so 10 steps + resume + 10
//! steps reproduce 20 uninterrupted steps bit for bit on the same device.

mod config;
pub mod plot;
mod run_dir;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use config::{learning_rate, Duration, Schedule, TrainConfig};
pub use run_dir::{Checkpoint, ExistingRun, RunDir};

use crate::data::{Dataset, Sampler, SamplerState};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::lora::{init, peft, LoraConfig, LoraLayout};
use crate::model::{MicroBatch, Model, OptimizerState, StepStats, TrainGraph, Transformer};

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
    out: Option<RunDir>,
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
    /// The frozen weights the graph trains on: `model.transformer`, or PiSSA's / OLoRA's
    /// residual.
    base: Transformer,
    /// PiSSA's / OLoRA's A0, B0 (the layout's flat buffer): every saved adapter is converted
    /// with them ([`init::convert`]).
    principal: Option<Vec<f32>>,
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
        let init::TrainingStart {
            base,
            params,
            principal,
        } = init::prepare_training(gpu, model, &cfg.lora, cfg.seed)?;
        let graph = TrainGraph::new(
            gpu,
            &base,
            &cfg.lora,
            params.as_deref(),
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
            base,
            principal,
        })
    }

    /// Evaluate on `valid` every `eval_every` steps, at epoch ends and at the end, and keep
    /// the best adapter.
    pub fn with_validation(mut self, valid: Dataset) -> Self {
        self.valid = Some(valid);
        self
    }

    /// Write adapters, checkpoints and metrics into `dir` (created if needed), laid out as
    /// [`RunDir`] describes.
    pub fn with_output(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out = Some(RunDir::new(dir));
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
        let checkpoint = Checkpoint::find(path)?;
        let dir = checkpoint.dir().to_path_buf();
        let state = checkpoint.trainer_state()?;
        let ours = self.fingerprint();
        let diffs = config::fingerprint_diffs(&ours, &state.fingerprint);
        if !diffs.is_empty() {
            return Err(Error::Checkpoint {
                path: dir,
                detail: format!(
                    "this checkpoint was made with other settings ({}); resume with the \
                     original ones",
                    diffs.join("; ")
                ),
            });
        }
        let (_, layout, saved) = checkpoint.adapter(&self.model.config)?;
        let params =
            match &self.principal {
                None if layout != *self.graph.layout() => {
                    return Err(Error::Checkpoint {
                        path: dir,
                        detail: "the adapter's layout differs from this run's LoRA settings".into(),
                    })
                }
                None => saved,
                Some(ours) => {
                    // PiSSA / OLoRA: the checkpoint holds [A; A0] and [B, -B0]. Train on the
                    // residual of the saved A0, B0, whatever this machine's SVD / QR gave.
                    let (params, a0b0) = init::split(self.graph.layout(), &layout, &saved)
                        .map_err(|e| Error::Checkpoint {
                            path: dir.clone(),
                            detail: format!("{e}: not an adapter of this run's LoRA settings"),
                        })?;
                    if a0b0 != *ours {
                        self.rebuild_residual(&a0b0)?;
                    }
                    params
                }
            };
        let moments = checkpoint.moments(self.graph.layout())?;
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
            out.truncate_metrics(self.step)?;
        }
        Ok(self.step)
    }

    /// Train on the residual of `a0b0` (A0, B0 of a checkpoint that differ from this run's):
    /// the base and the graph are rebuilt.
    fn rebuild_residual(&mut self, a0b0: &[f32]) -> Result<()> {
        let layout = self.graph.layout().clone();
        let host = self.model.host_weights()?;
        let scale = self.cfg.lora.scale();
        self.base = init::residual_transformer(self.gpu, self.model, &layout, scale, a0b0, host)?;
        self.graph = TrainGraph::new(
            self.gpu,
            &self.base,
            &self.cfg.lora,
            Some(a0b0),
            self.cfg.seed,
            self.cfg.batch_size,
            self.cfg.block_size,
            &self.cfg.adamw(),
        )?;
        self.principal = Some(a0b0.to_vec());
        Ok(())
    }

    /// The adapter as saved from the trained `params`: as it is, or for PiSSA / OLoRA
    /// converted to apply to the original base ([`init::convert`]).
    fn adapter_to_save(&self, params: Vec<f32>) -> Result<(LoraConfig, LoraLayout, Vec<f32>)> {
        let layout = self.graph.layout();
        match &self.principal {
            Some(a0b0) => init::convert(&self.cfg.lora, layout, &self.model.config, &params, a0b0),
            None => Ok((self.cfg.lora.clone(), layout.clone(), params)),
        }
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
            out.open()?;
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
                        if let Some(best) = self.out.as_ref().map(RunDir::best) {
                            self.save_adapter(&best)?;
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
                    out.append_metrics(&rec)?;
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
        if let Some(out) = &self.out {
            self.save_adapter(out.root())?;
            out.finish(&self.state())?;
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

    /// The settings a resumed run must share ([`TrainConfig`]'s), and the frozen weights'
    /// storage when any is quantized (a quantized base computes another function; `quantize`,
    /// as `--quantize` sets it). Left out otherwise, so that earlier checkpoints, f16 ones
    /// included, still resume.
    fn fingerprint(&self) -> Vec<(String, String)> {
        let mut f = self.cfg.fingerprint();
        if let Some(storage) = self.model.transformer.storage().filter(|s| s.contains('q')) {
            f.push(("quantize".into(), storage));
        }
        f
    }

    fn state(&self) -> TrainerState {
        TrainerState {
            global_step: self.step,
            max_steps: self.total,
            sampler: self.sampler.state(),
            best_metric: self.best.map(|b| b.1),
            best_step: self.best.map(|b| b.0),
            bad_steps: self.bad_steps,
            fingerprint: self.fingerprint(),
            config: self.cfg.clone(),
        }
    }

    /// Save the current adapter in PEFT's format into `dir` (each file atomically). With PiSSA /
    /// OLoRA it is the converted adapter (rank 2r), which applies to the original base.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        let params = self.graph.read_params(self.gpu)?;
        let (cfg, layout, flat) = self.adapter_to_save(params)?;
        peft::save(
            dir,
            &cfg,
            &layout,
            &flat,
            Some(&self.model.source.to_string()),
        )
    }

    /// Write a checkpoint of the current step into the run directory (which points `latest` at
    /// it and prunes the oldest).
    fn checkpoint(&mut self) -> Result<()> {
        let Some(out) = &self.out else {
            return Ok(());
        };
        let OptimizerState { params, m, v } = self.graph.read_state(self.gpu)?;
        let (lora, layout, flat) = self.adapter_to_save(params)?;
        let base_model = self.model.source.to_string();
        let done = out.save_checkpoint(
            (&lora, &layout, &flat, Some(&base_model)),
            (&m, &v),
            &self.state(),
            self.cfg.save_total_limit,
        )?;
        self.emit(Event::Saved {
            step: self.step,
            path: done,
        });
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

/// Mean next-token loss of `model` on every block of `data`, `batch_size` blocks per forward
/// pass: with the PEFT adapter in the directory `adapter`, or the base model alone (LoRA's B is
/// zero at init) when there is none. Perplexity is its `exp`.
pub fn evaluate_model(
    gpu: &Gpu,
    model: &Model,
    adapter: Option<&Path>,
    data: &Dataset,
    batch_size: usize,
) -> Result<f32> {
    let (lora, params) = match adapter {
        Some(dir) => {
            let (cfg, _, params) = peft::load(dir, &model.config)?;
            (cfg, Some(params))
        }
        // No adapter: PEFT's initialisation (B = 0) on the family's default targets adds
        // nothing.
        None => (
            LoraConfig {
                target_modules: model.config.default_targets(),
                ..LoraConfig::default()
            },
            None,
        ),
    };
    let mut graph = TrainGraph::new_eval(
        gpu,
        &model.transformer,
        &lora,
        params.as_deref(),
        batch_size,
        data.block_size(),
    )?;
    mean_loss(gpu, &mut graph, data, batch_size)
}
