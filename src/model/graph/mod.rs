//! The LoRA training graph of a model: every buffer and dispatch of a training step (forward,
//! backward, gradient norm, AdamW), recorded once per batch shape and replayed with one submit
//! per step.
//!
//! Forward and backward are explicit op sequences in llm.c's style, read from the model's
//! block definition (`model::block`): the forward records its ops in order, the
//! backward in reverse. Frozen weights get no gradient: only the LoRA A and B, which live in
//! one flat buffer laid out like their gradients and AdamW moments.
//!
//! - `plan`: the buffers (what each block keeps for the backward, what it shares)
//! - `linear`: the linear layers with their LoRA terms, forward and backward
//! - `forward`, `backward`: the recorded passes
//! - `queue`: submitted steps and their results on the way back

mod backward;
mod forward;
mod linear;
mod plan;
mod queue;

pub use plan::keeps_logits;
pub use queue::StepStats;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recording, Tensor};
use crate::kernels::adamw::{self, AdamW, AdamWUpdate};
use crate::kernels::attention::AttentionShape;
use crate::kernels::cross_entropy::IGNORE;
use crate::kernels::dropout::Dropout;
use crate::kernels::reduce;
use crate::lora::{LoraConfig, LoraLayout};
use crate::model::block::BlockWeights;
use crate::model::Transformer;
use forward::TrainRecorder;
use linear::{Adapted, Builder, DoraState};
use plan::Plan;
use queue::StepQueue;

/// One micro-batch of an optimizer step with gradient accumulation: the step's micro-batches
/// are submitted in order, the first clears the gradients and the last applies the update.
#[derive(Clone, Copy, Debug)]
pub struct MicroBatch<'a> {
    /// Input token ids, (B, T).
    pub inputs: &'a [u32],
    /// Target token ids, (B, T); [`IGNORE`] contributes no loss.
    pub targets: &'a [u32],
    /// Position of this micro-batch in its step (0-based).
    pub index: usize,
    /// Micro-batches in the step.
    pub count: usize,
    /// Counted targets of all the step's micro-batches: gradients are scaled so that their sum
    /// over the step is the gradient of the mean loss over every counted target of the step.
    pub step_targets: usize,
}

impl<'a> MicroBatch<'a> {
    /// A whole step in one batch: the loss is the mean over its own counted targets.
    pub fn whole(inputs: &'a [u32], targets: &'a [u32]) -> Self {
        MicroBatch {
            inputs,
            targets,
            index: 0,
            count: 1,
            step_targets: targets.iter().filter(|&&t| t != IGNORE).count(),
        }
    }
}

/// A training step for one model, LoRA configuration and batch shape (B, T), recorded once.
///
/// [`TrainGraph::step`] (or [`TrainGraph::micro_step`]) uploads a batch and submits a whole
/// training step; [`TrainGraph::forward`] a forward pass for evaluation, read with
/// [`TrainGraph::loss`].
pub struct TrainGraph {
    plan: Plan,
    layout: LoraLayout,
    /// Flat LoRA parameters (A and B of every adapted module).
    pub params: Tensor,
    /// Gradients, same layout as `params`.
    pub grads: Tensor,
    m: Tensor,
    v: Tensor,
    /// Training forward (LoRA dropout on).
    forward: Recording,
    /// Evaluation forward (LoRA dropout off), when it differs from `forward`.
    eval_forward: Option<Recording>,
    clear_grads: Recording,
    backward: Recording,
    /// The gradient norm and AdamW, so gradients can be computed without applying them.
    update: Recording,
    optimizer: AdamWUpdate,
    /// Counted targets of the last uploaded batch.
    counted: usize,
    allocated: u64,
    queue: StepQueue,
    /// LoRA dispatches whose dropout mask moves with the step.
    reseed: Vec<(usize, crate::kernels::lora::Reseed)>,
    /// Number of adapted modules (dropout sites per step).
    modules: usize,
    /// Built with a backward pass ([`TrainGraph::new`], not [`TrainGraph::new_eval`]).
    trains: bool,
}

impl TrainGraph {
    /// Allocate every buffer and record forward, backward and optimizer for batches of
    /// `b` sequences of `t` tokens. LoRA parameters start from `init` (the layout's length) or,
    /// when `None`, from PEFT's initialisation with `seed`. DoRA magnitudes that are not given
    /// (or are all zero) start at PEFT's value, the norm of W + scale · B A per output feature.
    pub fn new(
        gpu: &Gpu,
        model: &Transformer,
        lora: &LoraConfig,
        init: Option<&[f32]>,
        seed: u64,
        b: usize,
        t: usize,
        opt: &AdamW,
    ) -> Result<Self> {
        Self::build(gpu, model, lora, init, seed, b, t, opt, true)
    }

    /// A forward-only graph for evaluation (LoRA dropout off): every layer shares one set of
    /// activations and there is no backward pass or gradient scratch, so it allocates a
    /// fraction of a training graph. [`TrainGraph::forward`] and the loss readers work; the
    /// training calls return an error.
    pub fn new_eval(
        gpu: &Gpu,
        model: &Transformer,
        lora: &LoraConfig,
        params: Option<&[f32]>,
        b: usize,
        t: usize,
    ) -> Result<Self> {
        let lora = LoraConfig {
            dropout: 0.0,
            ..lora.clone()
        };
        Self::build(gpu, model, &lora, params, 0, b, t, &AdamW::default(), false)
    }

    fn build(
        gpu: &Gpu,
        model: &Transformer,
        lora: &LoraConfig,
        init: Option<&[f32]>,
        seed: u64,
        b: usize,
        t: usize,
        opt: &AdamW,
        train: bool,
    ) -> Result<Self> {
        let cfg = &model.config;
        if b == 0 {
            return Err(Error::invalid("batch size", b, "must be > 0"));
        }
        if t < 2 || t > cfg.max_positions() {
            return Err(Error::invalid(
                "block size",
                t,
                format!(
                    "must be in 2..={} (the model's {})",
                    cfg.max_positions(),
                    cfg.max_positions_key()
                ),
            ));
        }
        let layout = LoraLayout::new(cfg, lora)?;
        if lora.use_dora && train && lora.dropout > 0.0 {
            return Err(Error::invalid(
                "lora dropout",
                lora.dropout,
                "must be 0 with DoRA: PEFT's DoRA with dropout recomputes the frozen product on \
                 the dropped-out input, which this graph does not; train DoRA with dropout 0",
            ));
        }
        let r = lora.r;
        let mut bl = Builder::new(gpu);

        // LoRA state: one flat buffer each for params, grads, m, v.
        let params = bl.zeros("lora params", &[layout.len])?;
        let grads = bl.zeros("lora grads", &[layout.len])?;
        let m = bl.zeros("adamw m", &[layout.len])?;
        let v = bl.zeros("adamw v", &[layout.len])?;
        match init {
            Some(p) => gpu.write(&params, p)?,
            None => gpu.write(&params, &layout.init(seed))?,
        }
        let mut adapted: Vec<Adapted> = Vec::new();
        for (i, e) in layout.entries.iter().enumerate() {
            let path = &e.path;
            adapted.push(Adapted {
                index: i,
                entry: e.clone(),
                a: params.view(&format!("{path}.lora_A"), e.a_offset, &[r, e.d_in])?,
                b: params.view(&format!("{path}.lora_B"), e.b_offset, &[e.d_out, r])?,
                da: grads.view(&format!("{path}.lora_A.grad"), e.a_offset, &[r, e.d_in])?,
                db: grads.view(&format!("{path}.lora_B.grad"), e.b_offset, &[e.d_out, r])?,
                u: bl.zeros(&format!("{path}.u"), &[b * t, r])?,
                dropout: Dropout::new(lora.dropout, seed, i as u32)?,
                dora: match e.m_offset {
                    None => None,
                    Some(at) => Some(DoraState {
                        m: params.view(&format!("{path}.lora_magnitude_vector"), at, &[e.d_out])?,
                        dm: grads.view(
                            &format!("{path}.lora_magnitude_vector.grad"),
                            at,
                            &[e.d_out],
                        )?,
                        norm: bl.zeros(&format!("{path} dora norm"), &[2 * e.d_out])?,
                        plan: bl.dora_norm(
                            path,
                            &model.blocks[e.layer].linear(e.linear).w,
                            e,
                            r,
                        )?,
                        u: if train {
                            Some(bl.zeros(&format!("{path} dora u"), &[b * t, e.d_out])?)
                        } else {
                            None
                        },
                    }),
                },
            });
        }
        // PEFT's initial magnitude, the norm of W + scale · B A per output feature, for a fresh
        // adapter: no initial values, or magnitudes all zero (which no trained DoRA adapter
        // has: it would zero its layers).
        let fresh = |p: &[f32]| {
            layout.entries.iter().all(|e| {
                e.m_offset
                    .is_none_or(|at| p[at..at + e.d_out].iter().all(|&v| v == 0.0))
            })
        };
        if lora.use_dora && init.is_none_or(fresh) {
            let mut rec = Recording::new();
            let weight = |l: usize, s| &model.blocks[l].linear(s).w;
            bl.dora_norms(&mut rec, &adapted, weight, lora.scale())?;
            rec.run(gpu)?;
            for st in adapted.iter().filter_map(|a| a.dora.as_ref()) {
                let norm = gpu.download(&st.norm)?;
                gpu.write(&st.m, &norm[norm.len() / 2..])?;
            }
        }
        let plan = Plan::new(&mut bl, model, &adapted, train, b, t)?;
        let shape = AttentionShape {
            b,
            t,
            nh: cfg.num_heads(),
            nkv: cfg.num_kv_heads(),
            hs: cfg.head_dim(),
        };
        let mut rec = TrainRecorder {
            bl: &mut bl,
            plan: &plan,
            adapted: &adapted,
            scale: lora.scale(),
            train,
            shape,
        };
        // Recorded for training and, when LoRA dropout is on, again without it for evaluation.
        let fwd = forward::record(&mut rec, model)?;
        let eval_fwd = if train && lora.dropout > 0.0 {
            rec.train = false;
            let eval = forward::record(&mut rec, model)?;
            rec.train = true;
            Some(eval)
        } else {
            None
        };
        let (clear_grads, bwd) = if train {
            backward::record(&mut rec, model, &grads, r)?
        } else {
            (Recording::new(), Recording::new())
        };
        let [n1, n2] = reduce::sumsq(gpu, &plan.norm_sq, &grads)?;
        let optimizer = adamw::update(
            gpu,
            &params,
            &grads,
            &m,
            &v,
            &plan.norm_sq,
            opt,
            layout.b_start,
        )?;
        let mut update = Recording::new();
        update.push(n1);
        update.push(n2);
        update.push_shared(optimizer.shared());
        let queue = StepQueue::new(gpu, &plan.stats, b * t, plan.norm_at);

        Ok(TrainGraph {
            modules: layout.entries.len(),
            layout,
            params,
            grads,
            m,
            v,
            forward: fwd,
            eval_forward: eval_fwd,
            clear_grads,
            backward: bwd,
            update,
            optimizer,
            counted: 0,
            allocated: bl.allocated + queue.staging_bytes(),
            queue,
            reseed: bl.reseed,
            trains: train,
            plan,
        })
    }

    /// An error for the training calls of an evaluation graph.
    fn check_trains(&self) -> Result<()> {
        if self.trains {
            return Ok(());
        }
        Err(Error::invalid(
            "graph",
            "evaluation-only (TrainGraph::new_eval)",
            "it has no backward pass: build it with TrainGraph::new to train",
        ))
    }

    /// The flat parameter layout.
    pub fn layout(&self) -> &LoraLayout {
        &self.layout
    }

    /// Bytes of GPU memory this graph allocated (activations, LoRA state, scratch), on top of
    /// the model's weights.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    /// Upload a batch: `inputs` and `targets` are (B, T) token ids; the loss gradient of each
    /// counted target is 1 / `step_targets`.
    fn upload(
        &mut self,
        gpu: &Gpu,
        inputs: &[u32],
        targets: &[u32],
        step_targets: usize,
    ) -> Result<()> {
        let (b, t) = (self.plan.b, self.plan.t);
        let n = b * t;
        if inputs.len() != n || targets.len() != n {
            return Err(Error::shape(
                "TrainGraph batch",
                format!(
                    "expected {n} = {b} x {t} inputs and targets, got {} and {}",
                    inputs.len(),
                    targets.len()
                ),
            ));
        }
        let vocab: usize = self.plan.shards.iter().map(|s| s.1).sum();
        if let Some(&bad) = inputs
            .iter()
            .chain(targets.iter().filter(|&&t| t != IGNORE))
            .find(|&&t| t as usize >= vocab)
        {
            return Err(Error::invalid(
                "token id",
                bad,
                format!("must be below the vocabulary size {vocab}"),
            ));
        }
        self.counted = targets.iter().filter(|&&t| t != IGNORE).count();
        gpu.write_u32(&self.plan.tokens, inputs)?;
        gpu.write_u32(&self.plan.targets, targets)?;
        gpu.write(&self.plan.dloss, &[1.0 / step_targets.max(1) as f32])
    }

    /// Forward pass of a batch, (B, T) `inputs` and `targets`, per-row losses only, LoRA
    /// dropout off (evaluation). Does not wait; [`TrainGraph::loss`] reads the result.
    pub fn forward(&mut self, gpu: &Gpu, inputs: &[u32], targets: &[u32]) -> Result<()> {
        self.upload(gpu, inputs, targets, 1)?;
        self.eval_forward.as_ref().unwrap_or(&self.forward).run(gpu)
    }

    /// One training step at 1-based `step` with learning rate `lr` on a batch of (B, T)
    /// `inputs` and `targets`: forward, backward, grad norm and AdamW in one submit, plus a copy
    /// of the step's losses into a staging ring. Does not wait for the GPU (unless the ring is
    /// full of unread results).
    pub fn step(
        &mut self,
        gpu: &Gpu,
        inputs: &[u32],
        targets: &[u32],
        step: u64,
        lr: f32,
    ) -> Result<()> {
        self.micro_step(gpu, &MicroBatch::whole(inputs, targets), step, lr)
    }

    /// One micro-batch of optimizer step `step` (gradient accumulation): the first clears the
    /// gradients, each adds its own, the last applies the clipped AdamW update with `lr`. A
    /// step whose gradient norm is not finite changes nothing (see [`StepStats::skipped`]).
    pub fn micro_step(
        &mut self,
        gpu: &Gpu,
        batch: &MicroBatch<'_>,
        step: u64,
        lr: f32,
    ) -> Result<()> {
        let (micro, micros) = (batch.index, batch.count);
        if step == 0 || micros == 0 || micro >= micros {
            return Err(Error::invalid(
                "micro step",
                format!("{micro} of {micros} in step {step}"),
                "steps count from 1 and micro < micros",
            ));
        }
        self.check_trains()?;
        self.upload(gpu, batch.inputs, batch.targets, batch.step_targets)?;
        let last = micro + 1 == micros;
        if last {
            self.optimizer.set_step(gpu, step, lr)?;
        }
        self.set_dropout_index(gpu, step * micros as u64 + micro as u64)?;
        let mut recs = Vec::with_capacity(4);
        if micro == 0 {
            recs.push(&self.clear_grads);
        }
        recs.extend([&self.forward, &self.backward]);
        if last {
            recs.push(&self.update);
        }
        self.queue.submit(gpu, &recs, step, self.counted, last)
    }

    /// Dropout masks of forward pass `index` use Philox counter offsets index·modules + module:
    /// a fresh mask for every module and micro-batch, the same one in forward and backward.
    fn set_dropout_index(&self, gpu: &Gpu, index: u64) -> Result<()> {
        for (module, r) in &self.reseed {
            let offset = (index as usize * self.modules + module) as u32;
            r.set_offset(gpu, offset)?;
        }
        Ok(())
    }

    /// Results of the steps that have arrived, oldest first, without waiting.
    pub fn ready_steps(&mut self, gpu: &Gpu) -> Result<Vec<(u64, StepStats)>> {
        self.queue.ready(gpu)
    }

    /// Results of every submitted step, oldest first, waiting for the GPU.
    pub fn drain_steps(&mut self, gpu: &Gpu) -> Result<Vec<(u64, StepStats)>> {
        self.queue.drain(gpu)
    }

    /// The result of training step `step` (waits for it if it is still running).
    pub fn step_stats(&mut self, gpu: &Gpu, step: u64) -> Result<StepStats> {
        self.queue.step(gpu, step)
    }

    /// The mean loss of training step `step` (waits for it if it is still running).
    pub fn step_loss(&mut self, gpu: &Gpu, step: u64) -> Result<f32> {
        Ok(self.step_stats(gpu, step)?.loss)
    }

    /// Forward and backward (training mode) of a batch without the optimizer update: leaves
    /// the gradients in [`TrainGraph::grads`] (for inspection and tests). Does not wait.
    pub fn gradients(&mut self, gpu: &Gpu, inputs: &[u32], targets: &[u32]) -> Result<()> {
        self.check_trains()?;
        let counted = targets.iter().filter(|&&t| t != IGNORE).count();
        self.upload(gpu, inputs, targets, counted)?;
        Recording::run_all(gpu, &[&self.clear_grads, &self.forward, &self.backward])
    }

    /// Mean cross-entropy of the last forward pass or step (waits for the GPU).
    pub fn loss(&self, gpu: &Gpu) -> Result<f32> {
        let (sum, counted) = self.loss_sum(gpu)?;
        Ok((sum / counted.max(1) as f64) as f32)
    }

    /// Sum of the per-target losses of the last forward pass and the number of counted
    /// targets, for averaging over many batches (waits for the GPU).
    pub fn loss_sum(&self, gpu: &Gpu) -> Result<(f64, usize)> {
        let rows = gpu.download(&self.plan.stats)?;
        let sum = rows[..self.plan.rows()].iter().map(|&l| l as f64).sum();
        Ok((sum, self.counted))
    }

    /// Full logits (B·T, V) of the last forward pass, assembled chunk by chunk (waits).
    pub fn logits(&self, gpu: &Gpu, model: &Transformer) -> Result<Vec<f32>> {
        let bt = self.plan.rows();
        let v: usize = self.plan.shards.iter().map(|s| s.1).sum();
        let mut out = vec![0.0f32; bt * v];
        for (i, (v0, rows, lg)) in self.plan.shards.iter().enumerate() {
            let d = self.plan.lm_head(gpu, model, i)?;
            gpu.run(&[&d])?;
            let chunk = gpu.download(lg)?;
            for row in 0..bt {
                out[row * v + v0..row * v + v0 + rows]
                    .copy_from_slice(&chunk[row * rows..(row + 1) * rows]);
            }
        }
        Ok(out)
    }

    /// Read the flat LoRA parameters.
    pub fn read_params(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.download(&self.params)
    }

    /// Replace the flat LoRA parameters (e.g. with a loaded adapter's).
    pub fn write_params(&self, gpu: &Gpu, params: &[f32]) -> Result<()> {
        self.check_len("parameters", params.len())?;
        gpu.write(&self.params, params)
    }

    /// LoRA parameters and AdamW's first and second moments, for a checkpoint.
    pub fn read_state(&self, gpu: &Gpu) -> Result<OptimizerState> {
        Ok(OptimizerState {
            params: gpu.download(&self.params)?,
            m: gpu.download(&self.m)?,
            v: gpu.download(&self.v)?,
        })
    }

    /// Restore what [`TrainGraph::read_state`] returned: training then continues exactly.
    pub fn write_state(&self, gpu: &Gpu, state: &OptimizerState) -> Result<()> {
        for (what, x) in [
            ("parameters", &state.params),
            ("AdamW m", &state.m),
            ("AdamW v", &state.v),
        ] {
            self.check_len(what, x.len())?;
        }
        gpu.write(&self.params, &state.params)?;
        gpu.write(&self.m, &state.m)?;
        gpu.write(&self.v, &state.v)
    }

    fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len != self.layout.len {
            return Err(Error::shape(
                "TrainGraph state",
                format!(
                    "{what} hold {len} values but this LoRA layout needs {}",
                    self.layout.len
                ),
            ));
        }
        Ok(())
    }
}

/// LoRA parameters and AdamW moments, all in the flat [`LoraLayout`].
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// LoRA A and B of every adapted module.
    pub params: Vec<f32>,
    /// AdamW first moments.
    pub m: Vec<f32>,
    /// AdamW second moments.
    pub v: Vec<f32>,
}

impl std::fmt::Debug for TrainGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainGraph")
            .field("b", &self.plan.b)
            .field("t", &self.plan.t)
            .field("lora_parameters", &self.layout.num_parameters())
            .field(
                "dispatches",
                &(self.forward.len() + self.backward.len() + self.update.len()),
            )
            .finish()
    }
}
