//! The GPT-2 + LoRA graph: weights on the GPU, and a training step (forward, backward, grad
//! norm, AdamW) recorded once per batch shape and replayed with one submit per step.
//!
//! Forward and backward are explicit op sequences in llm.c's style; backward makes the same
//! calls in reverse. Frozen weights get no gradient: only the LoRA A and B, which live in one
//! flat buffer laid out like their gradients and AdamW moments.

use std::path::Path;

use super::weights::{self, HostWeights};
use super::Gpt2Config;
use crate::error::{Error, Result};
use std::collections::BTreeMap;

use crate::gpu::{Gpu, ReadbackRing, Recording, Tensor, VIEW_ALIGN};
use crate::kernels::adamw::{self, AdamW, AdamWUpdate};
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::cross_entropy::{self as ce, CeState, IGNORE};
use crate::kernels::dropout::Dropout;
use crate::kernels::lora::{self as lk, LoraGrads, LoraShape};
use crate::kernels::matmul::{matmul, MatmulOp};
use crate::kernels::{elementwise, embedding, layernorm, reduce};
use crate::lora::{Linear, LoraConfig, LoraEntry, LoraLayout};

/// Staging buffers for per-step losses in flight.
const LOSS_SLOTS: usize = 4;

/// Most vocabulary rows per wte shard (and per logits chunk of the fused classifier).
const MAX_SHARD_ROWS: usize = 4096;

/// Logits up to this size (B·T·V·4 bytes) are kept from forward for backward, which saves one
/// of the three LM-head products per step (the biggest matmuls of a small model); larger ones
/// are recomputed chunk by chunk so memory stays O(B·T·chunk).
const STORED_LOGITS_BYTES: usize = 256 << 20;

/// Whether a training graph over `tokens` = B·T positions and a `vocab`-row LM head keeps its
/// logits from forward for backward (one LM-head product per step fewer) instead of
/// recomputing them chunk by chunk: when they take at most 256 MiB.
pub fn keeps_logits(tokens: usize, vocab: usize) -> bool {
    tokens * vocab * 4 <= STORED_LOGITS_BYTES
}

/// A linear layer's frozen weight ([in, out], as GPT-2's Conv1D stores it) and bias.
#[derive(Debug)]
pub(crate) struct Dense {
    pub(crate) w: Tensor,
    pub(crate) b: Tensor,
}

#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) ln_1: Dense,
    pub(crate) c_attn: Dense,
    pub(crate) attn_c_proj: Dense,
    pub(crate) ln_2: Dense,
    pub(crate) c_fc: Dense,
    pub(crate) mlp_c_proj: Dense,
}

/// GPT-2's frozen weights on the GPU.
#[derive(Debug)]
pub struct Gpt2 {
    /// The model's shape.
    pub config: Gpt2Config,
    /// Token embedding (also the tied LM head) in shards of consecutive vocab rows.
    pub(crate) wte: Vec<Tensor>,
    pub(crate) wpe: Tensor,
    pub(crate) blocks: Vec<Block>,
    pub(crate) ln_f: Dense,
}

/// How the frozen weights of the linear layers (attn.c_attn, attn.c_proj, mlp.c_fc,
/// mlp.c_proj: 85 M of GPT-2 124M's parameters) are stored on the GPU. Embeddings, biases and
/// LayerNorm weights stay f32; all arithmetic is f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightStorage {
    /// 32-bit floats, exactly as loaded.
    #[default]
    F32,
    /// Half precision (rounded once at upload): half the memory of those weights. Needs an
    /// adapter with `SHADER_F16`.
    F16,
}

impl Gpt2 {
    /// Upload host weights (as [`weights::load`] or [`weights::random`] return them), f32.
    pub fn upload(gpu: &Gpu, config: &Gpt2Config, w: &HostWeights) -> Result<Self> {
        Self::upload_with(gpu, config, w, WeightStorage::F32)
    }

    /// Bytes of GPU memory the weights take.
    pub fn allocated_bytes(&self) -> u64 {
        let dense = |d: &Dense| d.w.bytes() + d.b.bytes();
        let blocks: u64 = self
            .blocks
            .iter()
            .map(|b| {
                [
                    &b.ln_1,
                    &b.c_attn,
                    &b.attn_c_proj,
                    &b.ln_2,
                    &b.c_fc,
                    &b.mlp_c_proj,
                ]
                .into_iter()
                .map(dense)
                .sum::<u64>()
            })
            .sum();
        let wte: u64 = self.wte.iter().map(Tensor::bytes).sum();
        wte + self.wpe.bytes() + blocks + dense(&self.ln_f)
    }

    /// [`Gpt2::upload`] with the linear layers' weights stored as `storage` says.
    pub fn upload_with(
        gpu: &Gpu,
        config: &Gpt2Config,
        w: &HostWeights,
        storage: WeightStorage,
    ) -> Result<Self> {
        config.validate()?;
        let c = config.n_embd;
        let host = |name: &str| {
            w.get(name)
                .ok_or_else(|| Error::shape("Gpt2::upload", format!("missing tensor {name}")))
        };
        let get = |name: &str, shape: &[usize]| gpu.upload(name, host(name)?, shape);
        let dense = |w_name: String, b_name: String, d_in: usize, d_out: usize| -> Result<Dense> {
            let weight = if d_in == 0 {
                get(&w_name, &[d_out])? // LayerNorm
            } else if storage == WeightStorage::F16 {
                gpu.upload_f16(&w_name, host(&w_name)?, &[d_in, d_out])?
            } else {
                get(&w_name, &[d_in, d_out])?
            };
            Ok(Dense {
                w: weight,
                b: get(&b_name, &[d_out])?,
            })
        };
        let rows_fit = (gpu.limits().max_storage_buffer_binding_size as usize / (4 * c)).max(1);
        let shard_rows = MAX_SHARD_ROWS.min(rows_fit).min(config.vocab_size);
        let wte_all = host("wte.weight")?;
        let mut wte = Vec::new();
        for (i, rows) in wte_all.chunks(shard_rows * c).enumerate() {
            wte.push(gpu.upload(
                &format!("wte.weight[shard {i}]"),
                rows,
                &[rows.len() / c, c],
            )?);
        }
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let h = |s: &str| format!("h.{i}.{s}");
            let pair = |s: &str, d_in, d_out| {
                dense(
                    h(&format!("{s}.weight")),
                    h(&format!("{s}.bias")),
                    d_in,
                    d_out,
                )
            };
            blocks.push(Block {
                ln_1: pair("ln_1", 0, c)?,
                c_attn: pair("attn.c_attn", c, 3 * c)?,
                attn_c_proj: pair("attn.c_proj", c, c)?,
                ln_2: pair("ln_2", 0, c)?,
                c_fc: pair("mlp.c_fc", c, 4 * c)?,
                mlp_c_proj: pair("mlp.c_proj", 4 * c, c)?,
            });
        }
        Ok(Gpt2 {
            config: config.clone(),
            wte,
            wpe: get("wpe.weight", &[config.n_positions, c])?,
            blocks,
            ln_f: dense("ln_f.weight".into(), "ln_f.bias".into(), 0, c)?,
        })
    }

    /// Load a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`).
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model directory not found (expected config.json and model.safetensors inside)",
                ),
            });
        }
        let config = Gpt2Config::from_file(&dir.join("config.json"))?;
        let w = weights::load(&dir.join("model.safetensors"), &config)?;
        Self::upload(gpu, &config, &w)
    }

    /// Vocabulary rows of each wte shard.
    pub(crate) fn shard_ranges(&self) -> Vec<(usize, usize)> {
        let c = self.config.n_embd;
        let mut v0 = 0;
        self.wte
            .iter()
            .map(|s| {
                let r = (v0, s.len() / c);
                v0 += r.1;
                r
            })
            .collect()
    }
}

/// Activations of one block that backward needs.
#[derive(Clone)]
struct BlockActs {
    ln1: Tensor,
    mean1: Tensor,
    rstd1: Tensor,
    qkv: Tensor,
    /// Per-row log-sum-exp of the attention scores (B, NH, T): all the backward keeps of softmax.
    lse: Tensor,
    atty: Tensor,
    xmid: Tensor,
    ln2: Tensor,
    mean2: Tensor,
    rstd2: Tensor,
    fc: Tensor,
}

/// One adapted module: its parameter and gradient views and its saved u = x·Aᵀ.
struct Adapted {
    index: usize,
    entry: LoraEntry,
    a: Tensor,
    b: Tensor,
    da: Tensor,
    db: Tensor,
    u: Tensor,
    dropout: Dropout,
}

/// A training step for one model, LoRA configuration and batch shape (B, T), recorded once.
///
/// Per step: [`TrainGraph::set_batch`], then [`TrainGraph::step`] (or [`TrainGraph::forward`]
/// alone for evaluation), then [`TrainGraph::loss`].
pub struct TrainGraph {
    b: usize,
    t: usize,
    layout: LoraLayout,
    /// Flat LoRA parameters (A and B of every adapted module).
    pub params: Tensor,
    /// Gradients, same layout as `params`.
    pub grads: Tensor,
    m: Tensor,
    v: Tensor,
    tokens: Tensor,
    targets: Tensor,
    dloss: Tensor,
    /// Per-row losses, then (at `norm_at`) the squared gradient norm.
    stats: Tensor,
    norm_at: usize,
    lnf: Tensor,
    shards: Vec<(usize, usize, Tensor)>,
    /// Training forward (LoRA dropout on).
    forward: Recording,
    /// Evaluation forward (LoRA dropout off), when it differs from `forward`.
    eval_forward: Option<Recording>,
    clear_grads: Recording,
    backward: Recording,
    /// The AdamW dispatch alone, so gradients can be computed without applying them.
    update: Recording,
    optimizer: AdamWUpdate,
    counted: usize,
    allocated: u64,
    /// Per-submission row losses and grad norm on their way back to the host.
    ring: ReadbackRing,
    /// Submissions so far (the ring's tags).
    submissions: u64,
    /// Per submission in flight: (step, counted targets, whether it ends the step).
    in_flight: BTreeMap<u64, (u64, usize, bool)>,
    /// Loss sums and target counts of steps whose micro-batches are still arriving.
    partial: BTreeMap<u64, (f64, usize)>,
    /// Results read back, by step.
    finished: BTreeMap<u64, StepStats>,
    /// LoRA dispatches whose dropout mask moves with the step.
    reseed: Vec<(usize, lk::Reseed)>,
    /// Number of adapted modules (dropout sites per step).
    modules: usize,
    /// Built with a backward pass ([`TrainGraph::new`], not [`TrainGraph::new_eval`]).
    trains: bool,
}

struct Builder<'a> {
    gpu: &'a Gpu,
    allocated: u64,
    /// LoRA dispatches whose dropout mask moves every step, with their module index.
    reseed: Vec<(usize, lk::Reseed)>,
}

impl Builder<'_> {
    fn zeros(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.gpu.zeros(name, shape)?;
        self.allocated += t.bytes();
        Ok(t)
    }

    /// Append a dispatch of a LoRA module; with dropout on, keep a handle to move the mask of
    /// those that read it every step.
    fn push_lora(
        &mut self,
        rec: &mut Recording,
        d: crate::gpu::Dispatch,
        l: &Adapted,
        s: LoraShape,
        scale: f32,
        accumulate: bool,
    ) {
        if l.dropout.p > 0.0 && lk::reads_dropout_mask(d.kernel()) {
            let d = std::sync::Arc::new(d);
            rec.push_shared(d.clone());
            self.reseed
                .extend(lk::Reseed::new(d, s, scale, l.dropout, accumulate).map(|r| (l.index, r)));
        } else {
            rec.push(d);
        }
    }

    /// out = inp · W + b, then out += scale · lora(inp) when the module is adapted (with the
    /// module's dropout when `train`, without it otherwise).
    fn linear(
        &mut self,
        rec: &mut Recording,
        out: &Tensor,
        inp: &Tensor,
        d: &Dense,
        lora: Option<&Adapted>,
        m: usize,
        scale: f32,
        train: bool,
    ) -> Result<()> {
        let (d_in, d_out) = (d.w.shape()[0], d.w.shape()[1]);
        rec.push(matmul(
            self.gpu,
            out,
            inp,
            &d.w,
            Some(&d.b),
            &MatmulOp::new(m, d_out, d_in).frozen_b(),
        )?);
        if let Some(l) = lora {
            let s = LoraShape {
                m,
                k: d_in,
                n: d_out,
                r: l.a.shape()[0],
            };
            let dropout = if train { l.dropout } else { Dropout::NONE };
            let d = lk::forward(self.gpu, out, &l.u, inp, &l.a, &l.b, &s, scale, &dropout)?;
            if train {
                self.push_lora(rec, d, l, s, scale, false);
            } else {
                rec.push(d);
            }
        }
        Ok(())
    }

    /// Backward of a linear layer: its LoRA gradients (if adapted, accumulated) and, when
    /// `dinp` is given, the gradient at its input, dinp = dout · Wᵀ (+ the LoRA path's dx).
    fn linear_backward(
        &mut self,
        rec: &mut Recording,
        dinp: Option<&Tensor>,
        du: &Tensor,
        dout: &Tensor,
        inp: &Tensor,
        d: &Dense,
        lora: Option<&Adapted>,
        m: usize,
        scale: f32,
    ) -> Result<()> {
        let (d_in, d_out) = (d.w.shape()[0], d.w.shape()[1]);
        if let Some(dinp) = dinp {
            rec.push(matmul(
                self.gpu,
                dinp,
                dout,
                &d.w,
                None,
                &MatmulOp::new(m, d_in, d_out).trans_b().frozen_b(),
            )?);
        }
        if let Some(l) = lora {
            let r = l.a.shape()[0];
            let s = LoraShape {
                m,
                k: d_in,
                n: d_out,
                r,
            };
            let g = LoraGrads {
                dx: dinp,
                da: &l.da,
                db: &l.db,
                du,
            };
            let ds = lk::backward(
                self.gpu, g, dout, inp, &l.a, &l.b, &l.u, &s, scale, &l.dropout, true,
            )?;
            for d in ds {
                self.push_lora(rec, d, l, s, scale, true);
            }
        }
        Ok(())
    }
}

impl TrainGraph {
    /// Allocate every buffer and record forward, backward and optimizer for batches of
    /// `b` sequences of `t` tokens. LoRA parameters start from `init` (the layout's length) or,
    /// when `None`, from PEFT's initialisation with `seed`.
    pub fn new(
        gpu: &Gpu,
        model: &Gpt2,
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
        model: &Gpt2,
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

    #[allow(clippy::too_many_arguments)]
    fn build(
        gpu: &Gpu,
        model: &Gpt2,
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
        if t < 2 || t > cfg.n_positions {
            return Err(Error::invalid(
                "block size",
                t,
                format!(
                    "must be in 2..={} (the model's n_positions)",
                    cfg.n_positions
                ),
            ));
        }
        let layout = LoraLayout::new(cfg, lora)?;
        let layout_len = layout.entries.len();
        let (c, nh, bt) = (cfg.n_embd, cfg.n_head, b * t);
        let scale = lora.scale();
        let r = lora.r;
        let mut bl = Builder {
            gpu,
            allocated: 0,
            reseed: Vec::new(),
        };

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
            let path = e.path();
            adapted.push(Adapted {
                index: i,
                entry: e.clone(),
                a: params.view(&format!("{path}.lora_A"), e.a_offset, &[r, e.d_in])?,
                b: params.view(&format!("{path}.lora_B"), e.b_offset, &[e.d_out, r])?,
                da: grads.view(&format!("{path}.lora_A.grad"), e.a_offset, &[r, e.d_in])?,
                db: grads.view(&format!("{path}.lora_B.grad"), e.b_offset, &[e.d_out, r])?,
                u: bl.zeros(&format!("{path}.u"), &[bt, r])?,
                dropout: Dropout::new(lora.dropout, seed, i as u32)?,
            });
        }
        let find = |layer: usize, l: Linear| {
            adapted
                .iter()
                .find(|a| a.entry.layer == layer && a.entry.linear == l)
        };
        // Forward position of a linear layer; nothing trainable sits before the first adapted
        // one, so the backward stops there: a gradient is needed at the output of the linear
        // at position p iff first <= p, and at its input iff first < p.
        let pos = |layer: usize, l: Linear| {
            4 * layer + Linear::ALL.iter().position(|&x| x == l).unwrap_or(0)
        };
        let first = adapted
            .iter()
            .map(|a| pos(a.entry.layer, a.entry.linear))
            .min()
            .unwrap_or(usize::MAX);
        let needs_dx = |layer: usize, l: Linear| first < pos(layer, l);
        // The backward never reaches a block wholly below the first adapted linear layer, so,
        // as in evaluation, those blocks keep nothing: they share one set of activation
        // buffers, and their residuals alternate between two.
        let reached = |block: usize| train && block >= first / 4;

        // Activations.
        let tokens = bl.zeros("tokens", &[bt])?;
        let targets = bl.zeros("targets", &[bt])?;
        let dloss = bl.zeros("dloss", &[1])?;
        // Residual l is block l's input (the last one ln_f's): that of a block the backward
        // reaches stays for it; otherwise residual l + 2 reuses its buffer.
        let mut res: Vec<Tensor> = Vec::new();
        for l in 0..=cfg.n_layer {
            res.push(match res.get(l.wrapping_sub(2)) {
                Some(r) if !reached(l - 2) => r.clone(),
                _ => bl.zeros(&format!("residual {l}"), &[bt, c])?,
            });
        }
        // Only what a gradient needs is kept per layer: a LayerNorm output only when the
        // linear layer it feeds has an adapter (the LoRA A gradient reads it), else it lives
        // in a shared scratch; GELU's output never (recomputed from c_fc's in the backward).
        // Blocks that keep nothing (all of them in evaluation) share the first such block's.
        let ln_scratch = bl.zeros("scratch ln out (B·T, C)", &[bt, c])?;
        let gelu_out = bl.zeros("scratch gelu out (B·T, 4C)", &[bt, 4 * c])?;
        let mut acts: Vec<BlockActs> = Vec::new();
        let mut shared: Option<BlockActs> = None;
        for l in 0..cfg.n_layer {
            if let (false, Some(s)) = (reached(l), &shared) {
                acts.push(s.clone());
                continue;
            }
            let keep = |l: usize, linear: Linear| find(l, linear).filter(|_| train);
            let (keep_ln1, keep_ln2) = (keep(l, Linear::CAttn), keep(l, Linear::CFc));
            let mut z = |name: &str, shape: &[usize]| bl.zeros(&format!("h.{l}.{name}"), shape);
            let mut kept = |adapted: Option<&Adapted>, name: &str| match adapted {
                Some(_) => z(name, &[bt, c]),
                None => Ok(ln_scratch.clone()),
            };
            let (ln1, ln2) = (kept(keep_ln1, "ln_1")?, kept(keep_ln2, "ln_2")?);
            acts.push(BlockActs {
                ln1,
                mean1: z("ln_1.mean", &[bt])?,
                rstd1: z("ln_1.rstd", &[bt])?,
                qkv: z("qkv", &[bt, 3 * c])?,
                lse: z("attn log-sum-exp", &[b, nh, t])?,
                atty: z("attn_y", &[bt, c])?,
                xmid: z("residual mid", &[bt, c])?,
                ln2,
                mean2: z("ln_2.mean", &[bt])?,
                rstd2: z("ln_2.rstd", &[bt])?,
                fc: z("mlp.c_fc out", &[bt, 4 * c])?,
            });
            if !reached(l) {
                shared = acts.last().cloned();
            }
        }
        let lnf = bl.zeros("ln_f", &[bt, c])?;
        let meanf = bl.zeros("ln_f.mean", &[bt])?;
        let rstdf = bl.zeros("ln_f.rstd", &[bt])?;
        let tmp_c = bl.zeros("scratch (B·T, C)", &[bt, c])?;
        let ranges = model.shard_ranges();
        let max_rows = ranges.iter().map(|r| r.1).max().unwrap_or(1);
        let vocab: usize = ranges.iter().map(|r| r.1).sum();
        let store_logits = keeps_logits(bt, vocab);
        let st = CeState::new(gpu, bt)?;
        bl.allocated += 3 * 4 * bt as u64;
        // Per-row losses and the squared grad norm share one buffer, read back together.
        let norm_at = bt.next_multiple_of(VIEW_ALIGN as usize / 4);
        let stats = bl.zeros("step stats", &[norm_at + 1])?;
        let loss_rows = stats.view("loss per row", 0, &[bt])?;
        let norm_sq = stats.view("grad norm²", norm_at, &[1])?;

        let ashape = AttentionShape { b, t, c, nh };
        let shards = if store_logits {
            ranges
                .iter()
                .enumerate()
                .map(|(i, &(v0, rows))| {
                    Ok((
                        v0,
                        rows,
                        bl.zeros(&format!("logits shard {i}"), &[bt, rows])?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            let chunk = bl.zeros("logits chunk", &[bt, max_rows])?;
            ranges
                .iter()
                .map(|&(v0, rows)| Ok((v0, rows, chunk.view("logits", 0, &[bt, rows])?)))
                .collect::<Result<Vec<_>>>()?
        };

        // ---- forward: recorded for training and, when LoRA dropout is on, again without it
        // for evaluation ----
        let wte: Vec<&Tensor> = model.wte.iter().collect();
        let eps = cfg.layer_norm_epsilon;
        let record_forward = |bl: &mut Builder, train: bool| -> Result<Recording> {
            let mut fwd = Recording::new();
            for d in embedding::forward(gpu, &res[0], &tokens, &wte, &model.wpe, t, c)? {
                fwd.push(d);
            }
            for (l, (blk, a)) in model.blocks.iter().zip(&acts).enumerate() {
                fwd.push(layernorm::forward(
                    gpu,
                    &a.ln1,
                    &a.mean1,
                    &a.rstd1,
                    &res[l],
                    &blk.ln_1.w,
                    &blk.ln_1.b,
                    c,
                    eps,
                )?);
                bl.linear(
                    &mut fwd,
                    &a.qkv,
                    &a.ln1,
                    &blk.c_attn,
                    find(l, Linear::CAttn),
                    bt,
                    scale,
                    train,
                )?;
                fwd.push(attention::forward(gpu, &a.atty, &a.lse, &a.qkv, &ashape)?);
                bl.linear(
                    &mut fwd,
                    &tmp_c,
                    &a.atty,
                    &blk.attn_c_proj,
                    find(l, Linear::AttnCProj),
                    bt,
                    scale,
                    train,
                )?;
                fwd.push(elementwise::add(gpu, &a.xmid, &res[l], &tmp_c)?);
                fwd.push(layernorm::forward(
                    gpu,
                    &a.ln2,
                    &a.mean2,
                    &a.rstd2,
                    &a.xmid,
                    &blk.ln_2.w,
                    &blk.ln_2.b,
                    c,
                    eps,
                )?);
                bl.linear(
                    &mut fwd,
                    &a.fc,
                    &a.ln2,
                    &blk.c_fc,
                    find(l, Linear::CFc),
                    bt,
                    scale,
                    train,
                )?;
                fwd.push(elementwise::gelu_forward(gpu, &gelu_out, &a.fc)?);
                bl.linear(
                    &mut fwd,
                    &tmp_c,
                    &gelu_out,
                    &blk.mlp_c_proj,
                    find(l, Linear::MlpCProj),
                    bt,
                    scale,
                    train,
                )?;
                fwd.push(elementwise::add(gpu, &res[l + 1], &a.xmid, &tmp_c)?);
            }
            let last = &res[cfg.n_layer];
            fwd.push(layernorm::forward(
                gpu,
                &lnf,
                &meanf,
                &rstdf,
                last,
                &model.ln_f.w,
                &model.ln_f.b,
                c,
                eps,
            )?);
            for (i, ((v0, rows, lg), shard)) in shards.iter().zip(&model.wte).enumerate() {
                fwd.push(matmul(
                    gpu,
                    lg,
                    &lnf,
                    shard,
                    None,
                    &MatmulOp::new(bt, *rows, c).trans_b().frozen_b(),
                )?);
                fwd.push(ce::stats(gpu, &st, lg, &targets, *v0, i == 0)?);
            }
            fwd.push(ce::loss(gpu, &loss_rows, &st, &targets)?);
            Ok(fwd)
        };
        let fwd = record_forward(&mut bl, train)?;
        let eval_fwd = if train && lora.dropout > 0.0 {
            Some(record_forward(&mut bl, false)?)
        } else {
            None
        };

        // ---- backward (training only) ----
        let mut clear_grads = Recording::new();
        let mut bwd = Recording::new();
        if train {
            clear_grads.clear(&grads);
            let last = &res[cfg.n_layer];
            // Gradient scratch.
            let dres = bl.zeros("d residual", &[bt, c])?;
            let dln = bl.zeros("d ln", &[bt, c])?;
            let datty = bl.zeros("d attn_y", &[bt, c])?;
            let dqkv = bl.zeros("d qkv", &[bt, 3 * c])?;
            let dstat = bl.zeros("attn rowsum(dout ⊙ out)", &[b, nh, t])?;
            let dgelu = bl.zeros("d gelu", &[bt, 4 * c])?;
            let dfc = bl.zeros("d c_fc", &[bt, 4 * c])?;
            let du = bl.zeros("d u", &[bt, r])?;
            bwd.clear(&dres);
            for (i, ((v0, rows, lg), shard)) in shards.iter().zip(&model.wte).enumerate() {
                if !store_logits {
                    bwd.push(matmul(
                        gpu,
                        lg,
                        &lnf,
                        shard,
                        None,
                        &MatmulOp::new(bt, *rows, c).trans_b().frozen_b(),
                    )?);
                }
                bwd.push(ce::grad(gpu, lg, &st, &targets, &dloss, *v0)?);
                let mut op = MatmulOp::new(bt, c, *rows).frozen_b();
                op.accumulate = i > 0;
                bwd.push(matmul(gpu, &dln, lg, shard, None, &op)?);
            }
            bwd.push(layernorm::backward(
                gpu,
                &dres,
                &dln,
                last,
                &model.ln_f.w,
                &meanf,
                &rstdf,
                c,
            )?);
            for (l, (blk, a)) in model.blocks.iter().zip(&acts).enumerate().rev() {
                if find(l, Linear::MlpCProj).is_some() {
                    bwd.push(elementwise::gelu_forward(gpu, &gelu_out, &a.fc)?);
                }
                bl.linear_backward(
                    &mut bwd,
                    needs_dx(l, Linear::MlpCProj).then_some(&dgelu),
                    &du,
                    &dres,
                    &gelu_out,
                    &blk.mlp_c_proj,
                    find(l, Linear::MlpCProj),
                    bt,
                    scale,
                )?;
                if !needs_dx(l, Linear::MlpCProj) {
                    break; // nothing trainable below
                }
                bwd.push(elementwise::gelu_backward(gpu, &dfc, &dgelu, &a.fc)?);
                bl.linear_backward(
                    &mut bwd,
                    needs_dx(l, Linear::CFc).then_some(&dln),
                    &du,
                    &dfc,
                    &a.ln2,
                    &blk.c_fc,
                    find(l, Linear::CFc),
                    bt,
                    scale,
                )?;
                if !needs_dx(l, Linear::CFc) {
                    break;
                }
                bwd.push(layernorm::backward(
                    gpu,
                    &dres,
                    &dln,
                    &a.xmid,
                    &blk.ln_2.w,
                    &a.mean2,
                    &a.rstd2,
                    c,
                )?);
                bl.linear_backward(
                    &mut bwd,
                    needs_dx(l, Linear::AttnCProj).then_some(&datty),
                    &du,
                    &dres,
                    &a.atty,
                    &blk.attn_c_proj,
                    find(l, Linear::AttnCProj),
                    bt,
                    scale,
                )?;
                if !needs_dx(l, Linear::AttnCProj) {
                    break;
                }
                let (qkv, out) = (&a.qkv, &a.atty);
                let attn =
                    attention::backward(gpu, &dqkv, &dstat, &datty, qkv, out, &a.lse, &ashape)?;
                for d in attn {
                    bwd.push(d);
                }
                bl.linear_backward(
                    &mut bwd,
                    needs_dx(l, Linear::CAttn).then_some(&dln),
                    &du,
                    &dqkv,
                    &a.ln1,
                    &blk.c_attn,
                    find(l, Linear::CAttn),
                    bt,
                    scale,
                )?;
                if !needs_dx(l, Linear::CAttn) {
                    break;
                }
                bwd.push(layernorm::backward(
                    gpu,
                    &dres,
                    &dln,
                    &res[l],
                    &blk.ln_1.w,
                    &a.mean1,
                    &a.rstd1,
                    c,
                )?);
            }
        }
        let [n1, n2] = reduce::sumsq(gpu, &norm_sq, &grads)?;
        let optimizer = adamw::update(gpu, &params, &grads, &m, &v, &norm_sq, opt)?;
        let mut update = Recording::new();
        update.push(n1);
        update.push(n2);
        update.push_shared(optimizer.shared());

        Ok(TrainGraph {
            b,
            t,
            layout,
            params,
            grads,
            m,
            v,
            tokens,
            targets,
            dloss,
            stats,
            norm_at,
            lnf,
            shards,
            forward: fwd,
            eval_forward: eval_fwd,
            clear_grads,
            backward: bwd,
            update,
            optimizer,
            counted: 0,
            allocated: bl.allocated + 4 * ((norm_at + 1) * LOSS_SLOTS) as u64,
            ring: ReadbackRing::new(gpu, norm_at + 1, LOSS_SLOTS),
            reseed: bl.reseed,
            modules: layout_len,
            submissions: 0,
            in_flight: BTreeMap::new(),
            partial: BTreeMap::new(),
            finished: BTreeMap::new(),
            trains: train,
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

    /// Upload a batch: `inputs` and `targets` are (B, T) token ids; a target of
    /// [`IGNORE`] contributes no loss. The loss is the mean over this batch's counted targets.
    pub fn set_batch(&mut self, gpu: &Gpu, inputs: &[u32], targets: &[u32]) -> Result<()> {
        self.set_micro_batch(gpu, inputs, targets, None)
    }

    /// Upload one micro-batch of a gradient-accumulation step whose micro-batches count
    /// `step_targets` targets in all: gradients are scaled so that their sum over the step is
    /// the gradient of the mean loss over every counted target of the step.
    pub fn set_micro_batch(
        &mut self,
        gpu: &Gpu,
        inputs: &[u32],
        targets: &[u32],
        step_targets: Option<usize>,
    ) -> Result<()> {
        let n = self.b * self.t;
        if inputs.len() != n || targets.len() != n {
            return Err(Error::shape(
                "set_batch",
                format!(
                    "expected {n} = {} x {} inputs and targets, got {} and {}",
                    self.b,
                    self.t,
                    inputs.len(),
                    targets.len()
                ),
            ));
        }
        let vocab: usize = self.shards.iter().map(|s| s.1).sum();
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
        let denominator = step_targets.unwrap_or(self.counted).max(1);
        gpu.write_u32(&self.tokens, inputs)?;
        gpu.write_u32(&self.targets, targets)?;
        gpu.write(&self.dloss, &[1.0 / denominator as f32])
    }

    /// Forward pass and per-row losses only, LoRA dropout off (evaluation). Does not wait;
    /// [`TrainGraph::loss`] reads the result.
    pub fn forward(&self, gpu: &Gpu) -> Result<()> {
        self.eval_forward.as_ref().unwrap_or(&self.forward).run(gpu)
    }

    /// One training step at 1-based `step` with learning rate `lr`: forward, backward, grad
    /// norm and AdamW in one submit, plus a copy of the step's losses into a staging ring.
    /// Does not wait for the GPU (unless the ring is full of unread results).
    pub fn step(&mut self, gpu: &Gpu, step: u64, lr: f32) -> Result<()> {
        self.micro_step(gpu, step, 0, 1, lr)
    }

    /// Micro-batch `micro` (0-based) of `micros` in optimizer step `step` (gradient
    /// accumulation): the first clears the gradients, each adds its own (upload it with
    /// [`TrainGraph::set_micro_batch`]), the last applies the clipped AdamW update with `lr`.
    /// A step whose gradient norm is not finite changes nothing (see [`StepStats::skipped`]).
    pub fn micro_step(
        &mut self,
        gpu: &Gpu,
        step: u64,
        micro: usize,
        micros: usize,
        lr: f32,
    ) -> Result<()> {
        if step == 0 || micros == 0 || micro >= micros {
            return Err(Error::invalid(
                "micro step",
                format!("{micro} of {micros} in step {step}"),
                "steps count from 1 and micro < micros",
            ));
        }
        self.check_trains()?;
        let last = micro + 1 == micros;
        if last {
            self.optimizer.set_step(gpu, step, lr)?;
        }
        self.set_dropout_index(gpu, step * micros as u64 + micro as u64)?;
        let mut evicted = Vec::new();
        let slot = self.ring.reserve(gpu, &mut evicted)?;
        let mut recs = Vec::with_capacity(4);
        if micro == 0 {
            recs.push(&self.clear_grads);
        }
        recs.extend([&self.forward, &self.backward]);
        if last {
            recs.push(&self.update);
        }
        Recording::run_all_then_copy(gpu, &recs, Some((&self.stats, slot)))?;
        self.submissions += 1;
        self.ring.submitted(self.submissions);
        self.in_flight
            .insert(self.submissions, (step, self.counted, last));
        self.collect(evicted);
        Ok(())
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

    fn collect(&mut self, results: Vec<(u64, Vec<f32>)>) {
        let bt = self.b * self.t;
        for (tag, values) in results {
            let Some((step, counted, last)) = self.in_flight.remove(&tag) else {
                continue;
            };
            let sum: f64 = values[..bt].iter().map(|&l| l as f64).sum();
            let entry = self.partial.entry(step).or_insert((0.0, 0));
            entry.0 += sum;
            entry.1 += counted;
            if last {
                let (sum, counted) = self.partial.remove(&step).unwrap_or_default();
                self.finished.insert(
                    step,
                    StepStats {
                        loss: (sum / counted.max(1) as f64) as f32,
                        grad_norm: values[self.norm_at].sqrt(),
                        targets: counted,
                    },
                );
            }
        }
    }

    /// Results of the steps that have arrived, oldest first, without waiting.
    pub fn ready_steps(&mut self, gpu: &Gpu) -> Result<Vec<(u64, StepStats)>> {
        let r = self.ring.ready(gpu)?;
        self.collect(r);
        Ok(std::mem::take(&mut self.finished).into_iter().collect())
    }

    /// Results of every submitted step, oldest first, waiting for the GPU.
    pub fn drain_steps(&mut self, gpu: &Gpu) -> Result<Vec<(u64, StepStats)>> {
        let r = self.ring.drain(gpu)?;
        self.collect(r);
        Ok(std::mem::take(&mut self.finished).into_iter().collect())
    }

    /// The result of training step `step` (waits for it if it is still running).
    pub fn step_stats(&mut self, gpu: &Gpu, step: u64) -> Result<StepStats> {
        if !self.finished.contains_key(&step) {
            let r = self.ring.drain(gpu)?;
            self.collect(r);
        }
        self.finished.remove(&step).ok_or_else(|| {
            Error::invalid(
                "step",
                step,
                "no result for this step: it was not run, or its result was already taken",
            )
        })
    }

    /// The mean loss of training step `step` (waits for it if it is still running).
    pub fn step_loss(&mut self, gpu: &Gpu, step: u64) -> Result<f32> {
        Ok(self.step_stats(gpu, step)?.loss)
    }

    /// Forward and backward (training mode) without the optimizer update: leaves the
    /// gradients in [`TrainGraph::grads`] (for inspection and tests). Does not wait.
    pub fn gradients(&self, gpu: &Gpu) -> Result<()> {
        self.check_trains()?;
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
        let rows = gpu.download(&self.stats)?;
        let sum = rows[..self.b * self.t].iter().map(|&l| l as f64).sum();
        Ok((sum, self.counted))
    }

    /// Full logits (B·T, V) of the last forward pass, assembled chunk by chunk (waits).
    pub fn logits(&self, gpu: &Gpu, model: &Gpt2) -> Result<Vec<f32>> {
        let (bt, c) = (self.b * self.t, model.config.n_embd);
        let v: usize = self.shards.iter().map(|s| s.1).sum();
        let mut out = vec![0.0f32; bt * v];
        for ((v0, rows, lg), shard) in self.shards.iter().zip(&model.wte) {
            let d = matmul(
                gpu,
                lg,
                &self.lnf,
                shard,
                None,
                &MatmulOp::new(bt, *rows, c).trans_b().frozen_b(),
            )?;
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

/// What one training step reports, read back without stalling the GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the step's counted targets (all micro-batches).
    pub loss: f32,
    /// Global L2 norm of the LoRA gradients before clipping.
    pub grad_norm: f32,
    /// Targets that counted towards the loss.
    pub targets: usize,
}

impl StepStats {
    /// Whether AdamW skipped this step because the gradients held a NaN or an infinity.
    pub fn skipped(&self) -> bool {
        !self.grad_norm.is_finite()
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
            .field("b", &self.b)
            .field("t", &self.t)
            .field("lora_parameters", &self.layout.num_parameters())
            .field(
                "dispatches",
                &(self.forward.len() + self.backward.len() + self.update.len()),
            )
            .finish()
    }
}
