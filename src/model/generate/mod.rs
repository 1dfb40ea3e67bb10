//! Text generation with a KV cache: a prefill of the prompt in one pass, then one token per
//! replay of a recorded decode step, with any number of PEFT LoRA adapters applied at once,
//! each with its own scale, and sampling (greedy, temperature, top-k, top-p) on the CPU.
//!
//! The [`Generator`] shares the frozen weights of a [`Transformer`] (never copied or uploaded
//! again); it owns the per-layer K and V caches, activations for up to `max_context` rows and
//! the small LoRA tensors of the adapters set with [`Generator::set_adapters`]. For every
//! adapted linear layer it computes
//! `y = x·W + b + Σ_i scale_i · lora_scale_i · (x·A_iᵀ)·B_iᵀ` (dropout off), the sum of
//! llama.cpp's `--lora-scaled`.
//!
//! Each phase is recorded once: the decode step (one row) is built when the adapters are set
//! and replayed for every token after a 4-byte write of the position; a prefill of n rows is
//! recorded the first time that length is seen (the last one is kept). The LM head runs only
//! on the last position.
//!
//! ```
//! use std::path::Path;
//! use lora_wgpu::lora::peft;
//! use lora_wgpu::model::generate::{Generator, SamplingConfig, ScaledAdapter};
//! use lora_wgpu::model::Transformer;
//! use lora_wgpu::{Gpu, GpuOptions};
//!
//! # fn main() -> lora_wgpu::Result<()> {
//! let gpu = Gpu::new(&GpuOptions::from_env())?;
//! let dir = Path::new("tests/fixtures/tiny_gpt2");
//! let model = Transformer::load(&gpu, &dir.join("model"))?;
//! let adapter = peft::load(&dir.join("adapter"), &model.config)?;
//! let mut generator = Generator::new(&gpu, &model, 32)?;
//! generator.set_adapters(&gpu, &[ScaledAdapter::of(&adapter, 0.5)])?;
//! let ids = generator.generate(&gpu, &[1, 2, 3], &SamplingConfig::greedy(), 8, |_| true)?;
//! assert_eq!(ids.len(), 8);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;

use super::block::{BlockWeights, Op, Place};
use super::Transformer;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recording, Tensor};
use crate::kernels::dora::{DoraNorm, DoraShape};
use crate::kernels::lora::MAX_RANK;
use crate::lora::{Linear, LoraConfig, LoraLayout};

/// GPT-2's end-of-text token, `<|endoftext|>` (also its beginning-of-text token).
pub const GPT2_EOT: u32 = crate::tokenizer::EOT;

mod record;
mod sampling;

pub use sampling::{argmax, candidates, Sampler, SamplingConfig};

/// One adapter to apply, with the multiplier on its own alpha / r scale (llama.cpp's
/// `--lora-scaled`): what [`peft::load`](crate::lora::peft::load) returns, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct ScaledAdapter<'a> {
    /// Its hyperparameters (rank, alpha, targets).
    pub config: &'a LoraConfig,
    /// Where each module's A and B sit in `params`.
    pub layout: &'a LoraLayout,
    /// The flat A and B values (`layout.len` of them).
    pub params: &'a [f32],
    /// Multiplier: 1 applies the adapter as trained, 0 turns it off, 0.5 halves it.
    pub scale: f32,
}

impl<'a> ScaledAdapter<'a> {
    /// From the triple [`peft::load`](crate::lora::peft::load) returns.
    pub fn of(loaded: &'a (LoraConfig, LoraLayout, Vec<f32>), scale: f32) -> Self {
        ScaledAdapter {
            config: &loaded.0,
            layout: &loaded.1,
            params: &loaded.2,
            scale,
        }
    }
}

/// Why [`Generator::generate`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The end-of-text token was generated (it is the last returned token).
    Eos,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// Prompt plus generated tokens filled the context (`max_context`).
    ContextFull,
    /// The `on_token` callback returned false.
    Callback,
}

/// An adapter's tensors on the GPU.
struct GpuAdapter {
    /// Bytes of its flat A and B buffer.
    bytes: u64,
    /// alpha / r times the user's multiplier.
    scale: f32,
    r: usize,
    /// The adapted modules, sharing one flat buffer.
    modules: Vec<GpuModule>,
}

/// One adapted module of a [`GpuAdapter`].
struct GpuModule {
    layer: usize,
    linear: Linear,
    /// A (r, in) and B (out, r).
    a: Tensor,
    b: Tensor,
    /// DoRA's [c | wn] (2 · out), computed when the adapter is set.
    dora: Option<Tensor>,
}

/// Activations for up to `ctx` rows; a call of n rows uses views of the first n.
struct Acts {
    tokens: Tensor,
    pos: Tensor,
    /// The residual stream: block l reads `res[l % 2]` and writes the other.
    res: [Tensor; 2],
    /// Every other activation of a block, in scratch buffers by (width, index) that every
    /// block shares (see [`BlockDef::places`]).
    scratch: BTreeMap<(usize, usize), Tensor>,
    /// Norm statistics: rows × the most groups a norm of the block has (heads, for Qwen3's
    /// q_norm).
    mean: Tensor,
    rstd: Tensor,
    /// RoPE's cos and sin tables over the context (models with rotary positions).
    rope: Option<[Tensor; 2]>,
    att: Tensor,
    u: Tensor,
    last: Tensor,
    lnf: Tensor,
    lnf_mean: Tensor,
    lnf_rstd: Tensor,
    /// Logits of the last position: shard i at `logit_views[i]`, padded to aligned offsets.
    logits: Tensor,
    logit_views: Vec<(usize, Tensor)>,
}

/// Text generation for one model with a KV cache (see the [module docs](self)).
pub struct Generator {
    /// The model's weights (shared, not copied) and its block definition.
    model: Transformer,
    ctx: usize,
    /// Where each activation of a block lives (every block alike).
    places: Vec<Place>,
    /// Per block: its K and V caches, (ctx, kv heads · head_dim) each.
    caches: Vec<(Tensor, Tensor)>,
    acts: Acts,
    adapters: Vec<GpuAdapter>,
    /// Recorded passes by row count: 1 (decode) and the last prefill length.
    recordings: BTreeMap<usize, Recording>,
    position: usize,
    /// Tokens that end generation (a model may have several).
    eos: Vec<u32>,
    /// What an empty prompt starts from.
    bos: Option<u32>,
    stop: Option<StopReason>,
    allocated: u64,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("max_context", &self.ctx)
            .field("position", &self.position)
            .field("adapters", &self.adapters.len())
            .field("eos", &self.eos)
            .finish()
    }
}

impl Generator {
    /// A generator for `model` with room for `max_context` tokens (prompt + generated), at most
    /// the model's longest sequence. Shares the model's weights; allocates the KV caches
    /// (2 · layers · max_context · kv heads · head_dim floats) and activations for
    /// `max_context` rows.
    ///
    /// Generation stops at the model's end-of-text tokens: GPT-2's 50256 when the vocabulary
    /// has it, a Llama-family config's `eos_token_id` (see [`Generator::set_eos_tokens`]).
    pub fn new(gpu: &Gpu, model: &Transformer, max_context: usize) -> Result<Self> {
        let cfg = &model.config;
        if max_context == 0 || max_context > cfg.max_positions() {
            return Err(Error::invalid(
                "max_context",
                max_context,
                format!(
                    "must be in 1..={} (the model's {})",
                    cfg.max_positions(),
                    cfg.max_positions_key()
                ),
            ));
        }
        let (c, nh, ctx) = (cfg.hidden_size(), cfg.num_heads(), max_context);
        let kv = cfg.num_kv_heads() * cfg.head_dim();
        let rope = model.rope_tables(gpu, ctx)?;
        let mut allocated = rope.iter().flatten().map(Tensor::bytes).sum::<u64>();
        let mut zeros = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = gpu.zeros(name, shape)?;
            allocated += t.bytes();
            Ok(t)
        };
        let mut caches = Vec::with_capacity(model.blocks.len());
        for l in 0..model.blocks.len() {
            caches.push((
                zeros(&format!("h.{l}.k_cache"), &[ctx, kv])?,
                zeros(&format!("h.{l}.v_cache"), &[ctx, kv])?,
            ));
        }
        let def = &model.block;
        let groups = def
            .ops
            .iter()
            .filter_map(|op| match *op {
                Op::RmsNorm { inp, width, .. } => Some(def.acts[inp].width / width),
                _ => None,
            })
            .max()
            .unwrap_or(1);
        let places = def.places(&vec![false; def.acts.len()]);
        let mut scratch = BTreeMap::new();
        for place in &places {
            if let Place::Scratch { width, index } = *place {
                if let std::collections::btree_map::Entry::Vacant(e) = scratch.entry((width, index))
                {
                    e.insert(zeros(
                        &format!("scratch {index} (rows, {width})"),
                        &[ctx, width],
                    )?);
                }
            }
        }
        // Each shard's logits start at an aligned offset so that they can be views.
        let align = (crate::gpu::VIEW_ALIGN / 4) as usize;
        let mut offsets = Vec::new();
        let mut total = 0usize;
        for (_, rows) in model.shard_ranges() {
            offsets.push((total, rows));
            total += rows.div_ceil(align) * align;
        }
        let logits = zeros("logits (last position)", &[total])?;
        let logit_views = offsets
            .iter()
            .enumerate()
            .map(|(i, &(off, rows))| {
                Ok((
                    rows,
                    logits.view(&format!("logits[shard {i}]"), off, &[rows])?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let acts = Acts {
            tokens: zeros("tokens", &[ctx])?,
            pos: zeros("position", &[1])?,
            res: [
                zeros("residual a", &[ctx, c])?,
                zeros("residual b", &[ctx, c])?,
            ],
            scratch,
            mean: zeros("norm mean", &[ctx * groups])?,
            rstd: zeros("norm rstd", &[ctx * groups])?,
            rope,
            att: zeros("attention probabilities", &[ctx, nh, ctx])?,
            u: zeros("lora u", &[ctx, MAX_RANK])?,
            last: zeros("last position", &[1, c])?,
            lnf: zeros("final norm (last position)", &[1, c])?,
            lnf_mean: zeros("final norm mean", &[1])?,
            lnf_rstd: zeros("final norm rstd", &[1])?,
            logits,
            logit_views,
        };
        let special = cfg.special_tokens();
        let mut g = Generator {
            model: model.clone(),
            ctx,
            places,
            caches,
            acts,
            adapters: Vec::new(),
            recordings: BTreeMap::new(),
            position: 0,
            eos: special.eos,
            bos: special.bos,
            stop: None,
            allocated,
        };
        let decode = g.record(gpu, 1)?;
        g.recordings.insert(1, decode);
        Ok(g)
    }

    /// The longest sequence (prompt + generated tokens) this generator holds.
    pub fn max_context(&self) -> usize {
        self.ctx
    }

    /// Tokens in the KV cache (the position of the next token).
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes of GPU memory this generator allocated (caches, activations, LoRA tensors), on
    /// top of the shared model weights.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated + self.adapters.iter().map(|a| a.bytes).sum::<u64>()
    }

    /// The first end-of-text token generation stops at, if any.
    pub fn eos_token(&self) -> Option<u32> {
        self.eos.first().copied()
    }

    /// Every token generation stops at.
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    /// Set the one end-of-text token (e.g. a model's `eos_token_id` when its vocabulary is not
    /// GPT-2's), or `None` to stop only at `max_new_tokens` or a full context.
    pub fn set_eos_token(&mut self, eos: Option<u32>) -> Result<()> {
        self.set_eos_tokens(eos.into_iter().collect())
    }

    /// Set every token generation stops at (a chat model often has several: end of text,
    /// end of turn).
    pub fn set_eos_tokens(&mut self, eos: Vec<u32>) -> Result<()> {
        let vocab = self.model.config.vocab_size();
        if let Some(&t) = eos.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(
                "eos token",
                t,
                format!("must be below the vocabulary size {vocab}"),
            ));
        }
        if self.bos.is_none() || self.model.config.as_gpt2().is_some() {
            self.bos = eos.first().copied();
        }
        self.eos = eos;
        Ok(())
    }

    /// Why the last [`Generator::generate`] stopped (`None` before the first).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// Apply these adapters, each with its own scale, from now on (an empty list: the base
    /// model). Uploads only the adapters' A and B and re-records the passes; the base weights
    /// are untouched. Each adapter must have been made for this model (same targets resolve
    /// to the same shapes). Clears the KV cache.
    pub fn set_adapters(&mut self, gpu: &Gpu, adapters: &[ScaledAdapter<'_>]) -> Result<()> {
        if adapters.len() > 1 && adapters.iter().any(|a| a.config.use_dora) {
            return Err(Error::invalid(
                "adapters",
                adapters.len(),
                "a DoRA adapter rescales its layers' whole output, so it cannot be stacked with \
                 other adapters: apply it alone, or merge it into the model first",
            ));
        }
        let mut out = Vec::with_capacity(adapters.len());
        for (i, a) in adapters.iter().enumerate() {
            let want = LoraLayout::new(&self.model.config, a.config)?;
            if &want != a.layout {
                return Err(Error::invalid(
                    "adapter",
                    i,
                    "its layout does not match this model and its own config (was it loaded for another model?); load it with peft::load(dir, &model.config)",
                ));
            }
            if a.params.len() != a.layout.len {
                return Err(Error::shape(
                    "set_adapters",
                    format!(
                        "adapter {i} has {} values for a layout of {}",
                        a.params.len(),
                        a.layout.len
                    ),
                ));
            }
            if !a.scale.is_finite() {
                return Err(Error::invalid("adapter scale", a.scale, "must be finite"));
            }
            if a.scale == 0.0 {
                continue; // off: nothing to add
            }
            let params = gpu.upload(&format!("adapter {i}"), a.params, &[a.params.len()])?;
            let r = a.layout.r;
            let scale = a.scale * a.config.scale();
            let mut bytes = params.bytes();
            let mut norms = Recording::new();
            let mut plans = Vec::new();
            let modules = a
                .layout
                .entries
                .iter()
                .map(|e| {
                    let path = &e.path;
                    let a = params.view(&format!("{path}.lora_A"), e.a_offset, &[r, e.d_in])?;
                    let b = params.view(&format!("{path}.lora_B"), e.b_offset, &[e.d_out, r])?;
                    let dora = match e.m_offset {
                        None => None,
                        Some(at) => {
                            let m = params.view(&format!("{path}.magnitude"), at, &[e.d_out])?;
                            let norm = gpu.zeros(&format!("{path} dora norm"), &[2 * e.d_out])?;
                            bytes += norm.bytes();
                            let w = &self.model.blocks[e.layer].linear(e.linear).w;
                            let s = DoraShape {
                                k: e.d_in,
                                n: e.d_out,
                                r,
                                rows: 0,
                            };
                            // Computed once, below; the scratch goes with `plans`.
                            let plan = DoraNorm::new(gpu, path, w, &s)?;
                            for d in plan.record(gpu, &norm, &m, w, &a, &b, scale)? {
                                norms.push(d);
                            }
                            plans.push(plan);
                            Some(norm)
                        }
                    };
                    Ok(GpuModule {
                        layer: e.layer,
                        linear: e.linear,
                        a,
                        b,
                        dora,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            norms.run(gpu)?;
            drop(plans);
            out.push(GpuAdapter {
                bytes,
                scale,
                r,
                modules,
            });
        }
        let old = std::mem::replace(&mut self.adapters, out);
        self.recordings.clear();
        let decode = match self.record(gpu, 1) {
            Ok(r) => r,
            Err(e) => {
                self.adapters = old;
                let r = self.record(gpu, 1)?;
                self.recordings.insert(1, r);
                return Err(e);
            }
        };
        self.recordings.insert(1, decode);
        self.reset();
        Ok(())
    }

    /// Forget the sequence: the next [`Generator::feed`] starts at position 0.
    pub fn reset(&mut self) {
        self.position = 0;
    }

    /// Append `tokens` to the sequence in the cache (one pass for all of them) and return the
    /// logits (vocab_size values) that predict the token after the last one. Errors when a
    /// token is not in the vocabulary or the tokens do not fit in the context.
    pub fn feed(&mut self, gpu: &Gpu, tokens: &[u32]) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Err(Error::invalid(
                "tokens",
                "[]",
                "feed needs at least one token",
            ));
        }
        let vocab = self.model.config.vocab_size();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(
                "token id",
                bad,
                format!("must be below the vocabulary size {vocab}"),
            ));
        }
        if self.position + n > self.ctx {
            return Err(Error::invalid(
                "sequence length",
                self.position + n,
                format!(
                    "does not fit the context of {} tokens ({} in the cache + {n} new); shorten the prompt or create the Generator with a longer max_context (at most {})",
                    self.ctx, self.position, self.model.config.max_positions()
                ),
            ));
        }
        gpu.write_u32(&self.acts.tokens.view("tokens", 0, &[n])?, tokens)?;
        gpu.write_u32(&self.acts.pos, &[self.position as u32])?;
        if !self.recordings.contains_key(&n) {
            let r = self.record(gpu, n)?;
            self.recordings.retain(|&k, _| k == 1);
            self.recordings.insert(n, r);
        }
        self.recordings[&n].run(gpu)?;
        self.position += n;
        self.read_logits(gpu)
    }

    fn read_logits(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let all = gpu.download(&self.acts.logits)?;
        let mut out = Vec::with_capacity(self.model.config.vocab_size());
        for (rows, view) in &self.acts.logit_views {
            let at = (view.offset() - self.acts.logits.offset()) as usize / 4;
            out.extend_from_slice(&all[at..at + rows]);
        }
        Ok(out)
    }

    /// Generate up to `max_new_tokens` tokens after `prompt_ids` and return them (the prompt
    /// not included). Each call starts a new sequence. `on_token` sees every new token as soon
    /// as it is chosen; returning false stops generation after that token.
    ///
    /// Stops after the end-of-text token (which is returned and passed to `on_token`), after
    /// `max_new_tokens`, or when prompt + generated tokens reach `max_context` (not an error:
    /// [`Generator::stop_reason`] says [`StopReason::ContextFull`]). A prompt longer than
    /// `max_context` is an error. An empty prompt starts from the beginning-of-text token
    /// (GPT-2's is its end-of-text token, as Hugging Face has it); without one it is an error.
    pub fn generate(
        &mut self,
        gpu: &Gpu,
        prompt_ids: &[u32],
        cfg: &SamplingConfig,
        max_new_tokens: usize,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut sampler = Sampler::new(cfg)?;
        let bos;
        let prompt = if prompt_ids.is_empty() {
            bos = [self.bos.ok_or_else(|| {
                Error::invalid(
                    "prompt",
                    "empty",
                    "give at least one token: this model has no beginning-of-text token to start from",
                )
            })?];
            &bos[..]
        } else {
            prompt_ids
        };
        if prompt.len() > self.ctx {
            return Err(Error::invalid(
                "prompt length",
                prompt.len(),
                format!(
                    "exceeds the context of {} tokens; shorten the prompt or use a longer max_context (at most {})",
                    self.ctx, self.model.config.max_positions()
                ),
            ));
        }
        self.reset();
        self.stop = None;
        let mut out = Vec::new();
        if max_new_tokens == 0 {
            self.stop = Some(StopReason::MaxTokens);
            return Ok(out);
        }
        if prompt.len() == self.ctx {
            self.stop = Some(StopReason::ContextFull);
            return Ok(out);
        }
        let mut logits = self.feed(gpu, prompt)?;
        loop {
            let tok = sampler.sample(&logits)?;
            out.push(tok);
            let reason = if !on_token(tok) {
                Some(StopReason::Callback)
            } else if self.eos.contains(&tok) {
                Some(StopReason::Eos)
            } else if out.len() >= max_new_tokens {
                Some(StopReason::MaxTokens)
            } else if prompt.len() + out.len() >= self.ctx {
                Some(StopReason::ContextFull)
            } else {
                None
            };
            if let Some(r) = reason {
                self.stop = Some(r);
                return Ok(out);
            }
            logits = self.feed(gpu, &[tok])?;
        }
    }
}
