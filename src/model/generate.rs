//! Text generation with a KV cache: a prefill of the prompt in one pass, then one token per
//! replay of a recorded decode step, with any number of PEFT LoRA adapters applied at once,
//! each with its own scale, and sampling (greedy, temperature, top-k, top-p) on the CPU.
//!
//! The [`Generator`] shares the frozen weights of a [`Gpt2`] (never copied or uploaded
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
//! use lora_wgpu::model::Gpt2;
//! use lora_wgpu::{Gpu, GpuOptions};
//!
//! # fn main() -> lora_wgpu::Result<()> {
//! let gpu = Gpu::new(&GpuOptions::from_env())?;
//! let dir = Path::new("tests/fixtures/tiny_gpt2");
//! let model = Gpt2::load(&gpu, &dir.join("model"))?;
//! let adapter = peft::load(&dir.join("adapter"), &model.config)?;
//! let mut generator = Generator::new(&gpu, &model, 32)?;
//! generator.set_adapters(&gpu, &[ScaledAdapter::of(&adapter, 0.5)])?;
//! let ids = generator.generate(&gpu, &[1, 2, 3], &SamplingConfig::greedy(), 8, |_| true)?;
//! assert_eq!(ids.len(), 8);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::graph::Dense;
use super::{Gpt2, Gpt2Config};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recording, Tensor};
use crate::kernels::decode::{self, DecodeShape};
use crate::kernels::dropout::Dropout;
use crate::kernels::lora::{self as lk, LoraShape, MAX_RANK};
use crate::kernels::matmul::{matmul, MatmulOp};
use crate::kernels::{elementwise, layernorm};
use crate::lora::{Linear, LoraConfig, LoraLayout};

/// GPT-2's end-of-text token, `<|endoftext|>` (also its beginning-of-text token).
pub const GPT2_EOT: u32 = crate::tokenizer::EOT;

/// How the next token is chosen from the logits.
///
/// Greedy when `temperature` is 0; otherwise the logits are divided by the temperature, cut
/// to the `top_k` most likely tokens (0: no cut), then to the smallest set of most likely
/// tokens whose probability reaches `top_p` (1: no cut), and a token is drawn from what is
/// left with a random generator seeded by `seed` (the same seed gives the same tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature, ≥ 0; 0 means greedy (argmax, lowest id on ties).
    pub temperature: f32,
    /// Keep only the k most likely tokens (ties broken by lower id); 0 turns the cut off.
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens until their probability reaches `top_p`,
    /// in (0, 1]; 1 turns the cut off.
    pub top_p: f32,
    /// Seed of the random generator (`StdRng::seed_from_u64`).
    pub seed: u64,
}

impl Default for SamplingConfig {
    /// Hugging Face's sampling defaults: temperature 1, top-k 50, top-p 1; seed 0.
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Whether this configuration picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Check that the values are possible: temperature finite and ≥ 0, top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(
                "temperature",
                self.temperature,
                "must be a finite number >= 0 (0 = greedy)",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(
                "top_p",
                self.top_p,
                "must be in (0, 1] (1 = no nucleus cut)",
            ));
        }
        Ok(())
    }
}

fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        return Err(Error::invalid("logits", "[]", "need at least one value"));
    }
    if let Some(i) = logits.iter().position(|v| v.is_nan()) {
        return Err(Error::invalid(
            "logits",
            format!("NaN at token {i}"),
            "must be numbers; the model produced NaN",
        ));
    }
    Ok(())
}

/// The most likely token: the largest logit, the lowest id among equal ones.
pub fn argmax(logits: &[f32]) -> Result<u32> {
    check_logits(logits)?;
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// The tokens sampling may pick and their probabilities after temperature, top-k and top-p,
/// most likely first (ties: lower id first), renormalised to sum to 1. Greedy (temperature 0)
/// gives the argmax alone with probability 1.
pub fn candidates(logits: &[f32], cfg: &SamplingConfig) -> Result<Vec<(u32, f32)>> {
    cfg.validate()?;
    check_logits(logits)?;
    if cfg.is_greedy() {
        return Ok(vec![(argmax(logits)?, 1.0)]);
    }
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut c: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    if cfg.top_k > 0 && cfg.top_k < c.len() {
        c.select_nth_unstable_by(cfg.top_k - 1, order);
        c.truncate(cfg.top_k);
    }
    c.sort_unstable_by(order);
    // Softmax of logit / temperature, in f64 so that tiny probabilities still add up.
    let t = cfg.temperature as f64;
    let max = c[0].1 as f64 / t;
    let weights: Vec<f64> = c.iter().map(|&(_, v)| (v as f64 / t - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut keep = weights.len();
    if cfg.top_p < 1.0 {
        let mut cum = 0.0;
        for (i, w) in weights.iter().enumerate() {
            cum += w / total;
            if cum >= cfg.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    Ok(c[..keep]
        .iter()
        .zip(&weights)
        .map(|(&(id, _), &w)| (id, (w / kept) as f32))
        .collect())
}

/// Draws tokens from logits according to a [`SamplingConfig`], with its own seeded generator.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose generator starts from `cfg.seed`.
    pub fn new(cfg: &SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Sampler {
            cfg: cfg.clone(),
            rng: StdRng::seed_from_u64(cfg.seed),
        })
    }

    /// The next token for these logits (one per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        let c = candidates(logits, &self.cfg)?;
        let total: f64 = c.iter().map(|&(_, p)| p as f64).sum();
        let mut x = self.rng.random::<f64>() * total;
        for &(id, p) in &c {
            x -= p as f64;
            if x < 0.0 {
                return Ok(id);
            }
        }
        Ok(c[c.len() - 1].0)
    }
}

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

/// Split a command-line adapter argument `DIR[:SCALE]` into the directory and the scale
/// (1 when absent). Only a suffix that parses as a number is taken as the scale, so paths that
/// contain ':' still work.
pub fn parse_adapter_arg(arg: &str) -> Result<(PathBuf, f32)> {
    let (dir, scale) = match arg.rsplit_once(':') {
        Some((dir, s)) => match s.parse::<f32>() {
            Ok(v) => (dir, v),
            Err(_) => (arg, 1.0),
        },
        None => (arg, 1.0),
    };
    if dir.is_empty() {
        return Err(Error::invalid(
            "adapter",
            arg,
            "expected DIR or DIR:SCALE (a PEFT adapter directory, optionally with a scale)",
        ));
    }
    if !scale.is_finite() {
        return Err(Error::invalid("adapter scale", scale, "must be finite"));
    }
    Ok((PathBuf::from(dir), scale))
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

struct Lin {
    w: Tensor,
    b: Tensor,
}

impl Lin {
    fn of(d: &Dense) -> Self {
        Lin {
            w: d.w.clone(),
            b: d.b.clone(),
        }
    }
}

/// One block's shared weights and its KV cache.
struct Layer {
    ln_1: Lin,
    c_attn: Lin,
    attn_c_proj: Lin,
    ln_2: Lin,
    c_fc: Lin,
    mlp_c_proj: Lin,
    k_cache: Tensor,
    v_cache: Tensor,
}

impl Layer {
    fn linear(&self, which: Linear) -> &Lin {
        match which {
            Linear::CAttn => &self.c_attn,
            Linear::AttnCProj => &self.attn_c_proj,
            Linear::CFc => &self.c_fc,
            Linear::MlpCProj => &self.mlp_c_proj,
        }
    }
}

/// An adapter's tensors on the GPU.
struct GpuAdapter {
    /// Bytes of its flat A and B buffer.
    bytes: u64,
    /// alpha / r times the user's multiplier.
    scale: f32,
    r: usize,
    /// (layer, linear, A view (r, in), B view (out, r)), sharing one flat buffer.
    modules: Vec<(usize, Linear, Tensor, Tensor)>,
}

/// Activations for up to `ctx` rows; a call of n rows uses views of the first n.
struct Acts {
    tokens: Tensor,
    pos: Tensor,
    res: [Tensor; 2],
    xmid: Tensor,
    ln: Tensor,
    mean: Tensor,
    rstd: Tensor,
    qkv: Tensor,
    atty: Tensor,
    tmp: Tensor,
    fc: Tensor,
    gelu: Tensor,
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

/// Text generation for one GPT-2 with a KV cache (see the [module docs](self)).
pub struct Generator {
    config: Gpt2Config,
    ctx: usize,
    wte: Vec<Tensor>,
    wpe: Tensor,
    ln_f: Lin,
    layers: Vec<Layer>,
    acts: Acts,
    adapters: Vec<GpuAdapter>,
    /// Recorded passes by row count: 1 (decode) and the last prefill length.
    recordings: BTreeMap<usize, Recording>,
    position: usize,
    eos: Option<u32>,
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
    /// the model's `n_positions`. Shares the model's weights; allocates the KV caches
    /// (2 · n_layer · max_context · n_embd floats) and activations for `max_context` rows.
    ///
    /// The end-of-text token is GPT-2's 50256 when the vocabulary has it, else none (see
    /// [`Generator::set_eos_token`]).
    pub fn new(gpu: &Gpu, model: &Gpt2, max_context: usize) -> Result<Self> {
        let cfg = &model.config;
        if max_context == 0 || max_context > cfg.n_positions {
            return Err(Error::invalid(
                "max_context",
                max_context,
                format!(
                    "must be in 1..={} (the model's n_positions)",
                    cfg.n_positions
                ),
            ));
        }
        let (c, nh, ctx) = (cfg.n_embd, cfg.n_head, max_context);
        let mut allocated = 0u64;
        let mut zeros = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = gpu.zeros(name, shape)?;
            allocated += t.bytes();
            Ok(t)
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for (l, b) in model.blocks.iter().enumerate() {
            layers.push(Layer {
                ln_1: Lin::of(&b.ln_1),
                c_attn: Lin::of(&b.c_attn),
                attn_c_proj: Lin::of(&b.attn_c_proj),
                ln_2: Lin::of(&b.ln_2),
                c_fc: Lin::of(&b.c_fc),
                mlp_c_proj: Lin::of(&b.mlp_c_proj),
                k_cache: zeros(&format!("h.{l}.k_cache"), &[ctx, c])?,
                v_cache: zeros(&format!("h.{l}.v_cache"), &[ctx, c])?,
            });
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
            xmid: zeros("residual mid", &[ctx, c])?,
            ln: zeros("ln out", &[ctx, c])?,
            mean: zeros("ln mean", &[ctx])?,
            rstd: zeros("ln rstd", &[ctx])?,
            qkv: zeros("qkv", &[ctx, 3 * c])?,
            atty: zeros("attn_y", &[ctx, c])?,
            tmp: zeros("scratch (rows, C)", &[ctx, c])?,
            fc: zeros("mlp.c_fc out", &[ctx, 4 * c])?,
            gelu: zeros("mlp.gelu out", &[ctx, 4 * c])?,
            att: zeros("attention probabilities", &[ctx, nh, ctx])?,
            u: zeros("lora u", &[ctx, MAX_RANK])?,
            last: zeros("last position", &[1, c])?,
            lnf: zeros("ln_f (last position)", &[1, c])?,
            lnf_mean: zeros("ln_f mean", &[1])?,
            lnf_rstd: zeros("ln_f rstd", &[1])?,
            logits,
            logit_views,
        };
        let mut g = Generator {
            config: cfg.clone(),
            ctx,
            wte: model.wte.clone(),
            wpe: model.wpe.clone(),
            ln_f: Lin::of(&model.ln_f),
            layers,
            acts,
            adapters: Vec::new(),
            recordings: BTreeMap::new(),
            position: 0,
            eos: (cfg.vocab_size > GPT2_EOT as usize).then_some(GPT2_EOT),
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

    /// The end-of-text token generation stops at (and an empty prompt starts from), if any.
    pub fn eos_token(&self) -> Option<u32> {
        self.eos
    }

    /// Set the end-of-text token (e.g. a model's `eos_token_id` when its vocabulary is not
    /// GPT-2's), or `None` to stop only at `max_new_tokens` or a full context.
    pub fn set_eos_token(&mut self, eos: Option<u32>) -> Result<()> {
        if let Some(t) = eos {
            if t as usize >= self.config.vocab_size {
                return Err(Error::invalid(
                    "eos token",
                    t,
                    format!(
                        "must be below the vocabulary size {}",
                        self.config.vocab_size
                    ),
                ));
            }
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
        let mut out = Vec::with_capacity(adapters.len());
        for (i, a) in adapters.iter().enumerate() {
            let want = LoraLayout::new(&self.config, a.config)?;
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
            let modules = a
                .layout
                .entries
                .iter()
                .map(|e| {
                    let path = e.path();
                    Ok((
                        e.layer,
                        e.linear,
                        params.view(&format!("{path}.lora_A"), e.a_offset, &[r, e.d_in])?,
                        params.view(&format!("{path}.lora_B"), e.b_offset, &[e.d_out, r])?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            out.push(GpuAdapter {
                bytes: params.bytes(),
                scale: a.scale * a.config.scale(),
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
        let vocab = self.config.vocab_size;
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
                    "does not fit the context of {} tokens ({} in the cache + {n} new); shorten the prompt or create the Generator with a longer max_context (at most n_positions = {})",
                    self.ctx, self.position, self.config.n_positions
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
        let mut out = Vec::with_capacity(self.config.vocab_size);
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
    /// `max_context` is an error. An empty prompt starts from the end-of-text token, as
    /// Hugging Face does for GPT-2 (its BOS); without one it is an error.
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
            bos = [self.eos.ok_or_else(|| {
                Error::invalid(
                    "prompt",
                    "empty",
                    "give at least one token: this model has no end-of-text token to start from (set one with Generator::set_eos_token)",
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
                    "exceeds the context of {} tokens; shorten the prompt or use a longer max_context (at most n_positions = {})",
                    self.ctx, self.config.n_positions
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
            } else if Some(tok) == self.eos {
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

    /// out = inp · W + b (+ every adapter's low-rank term), for n rows.
    fn linear(
        &self,
        gpu: &Gpu,
        rec: &mut Recording,
        out: &Tensor,
        inp: &Tensor,
        layer: usize,
        which: Linear,
        n: usize,
    ) -> Result<()> {
        let lin = self.layers[layer].linear(which);
        let (d_in, d_out) = (lin.w.shape()[0], lin.w.shape()[1]);
        if n <= decode::GEMV_MAX_ROWS && d_in.is_multiple_of(4) && d_out.is_multiple_of(4) {
            rec.push(decode::gemv_cols(
                gpu,
                out,
                inp,
                &lin.w,
                Some(&lin.b),
                n,
                d_in,
                d_out,
            )?);
        } else {
            rec.push(matmul(
                gpu,
                out,
                inp,
                &lin.w,
                Some(&lin.b),
                &MatmulOp::new(n, d_out, d_in).frozen_b(),
            )?);
        }
        for ad in &self.adapters {
            for (_, _, a, b) in ad.modules.iter().filter(|m| m.0 == layer && m.1 == which) {
                let u = self.acts.u.view("lora u", 0, &[n, ad.r])?;
                let s = LoraShape {
                    m: n,
                    k: d_in,
                    n: d_out,
                    r: ad.r,
                };
                rec.push(lk::forward(
                    gpu,
                    out,
                    &u,
                    inp,
                    a,
                    b,
                    &s,
                    ad.scale,
                    &Dropout::NONE,
                )?);
            }
        }
        Ok(())
    }

    /// Record the forward pass of n new rows at the position in `acts.pos`, ending with the
    /// logits of the last row.
    fn record(&self, gpu: &Gpu, n: usize) -> Result<Recording> {
        let cfg = &self.config;
        let (c, nh, eps) = (cfg.n_embd, cfg.n_head, cfg.layer_norm_epsilon);
        let a = &self.acts;
        let rows = |t: &Tensor, width: usize| t.view(t.name(), 0, &[n, width]);
        let tokens = a.tokens.view("tokens", 0, &[n])?;
        let res = [rows(&a.res[0], c)?, rows(&a.res[1], c)?];
        let xmid = rows(&a.xmid, c)?;
        let ln = rows(&a.ln, c)?;
        let mean = a.mean.view("ln mean", 0, &[n])?;
        let rstd = a.rstd.view("ln rstd", 0, &[n])?;
        let qkv = rows(&a.qkv, 3 * c)?;
        let atty = rows(&a.atty, c)?;
        let tmp = rows(&a.tmp, c)?;
        let fc = rows(&a.fc, 4 * c)?;
        let gelu = rows(&a.gelu, 4 * c)?;
        let att = a
            .att
            .view("attention probabilities", 0, &[n, nh, self.ctx])?;
        let shape = DecodeShape {
            n,
            c,
            nh,
            ctx: self.ctx,
        };

        let mut rec = Recording::new();
        let wte: Vec<&Tensor> = self.wte.iter().collect();
        for d in decode::embedding(gpu, &res[0], &a.pos, &tokens, &wte, &self.wpe, c)? {
            rec.push(d);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let (x_in, x_out) = (&res[l % 2], &res[(l + 1) % 2]);
            rec.push(layernorm::forward(
                gpu,
                &ln,
                &mean,
                &rstd,
                x_in,
                &layer.ln_1.w,
                &layer.ln_1.b,
                c,
                eps,
            )?);
            self.linear(gpu, &mut rec, &qkv, &ln, l, Linear::CAttn, n)?;
            rec.push(decode::kv_store(
                gpu,
                &layer.k_cache,
                &layer.v_cache,
                &a.pos,
                &qkv,
                &shape,
            )?);
            rec.push(decode::attention(
                gpu,
                &atty,
                &att,
                &a.pos,
                &qkv,
                &layer.k_cache,
                &layer.v_cache,
                &shape,
            )?);
            self.linear(gpu, &mut rec, &tmp, &atty, l, Linear::AttnCProj, n)?;
            rec.push(elementwise::add(gpu, &xmid, x_in, &tmp)?);
            rec.push(layernorm::forward(
                gpu,
                &ln,
                &mean,
                &rstd,
                &xmid,
                &layer.ln_2.w,
                &layer.ln_2.b,
                c,
                eps,
            )?);
            self.linear(gpu, &mut rec, &fc, &ln, l, Linear::CFc, n)?;
            rec.push(elementwise::gelu_forward(gpu, &gelu, &fc)?);
            self.linear(gpu, &mut rec, &tmp, &gelu, l, Linear::MlpCProj, n)?;
            rec.push(elementwise::add(gpu, x_out, &xmid, &tmp)?);
        }
        // The LM head on the last position only.
        let last = &res[self.layers.len() % 2];
        rec.push(decode::copy_row(gpu, &a.last, last, n - 1, c)?);
        rec.push(layernorm::forward(
            gpu,
            &a.lnf,
            &a.lnf_mean,
            &a.lnf_rstd,
            &a.last,
            &self.ln_f.w,
            &self.ln_f.b,
            c,
            eps,
        )?);
        for (shard, (shard_rows, out)) in self.wte.iter().zip(&a.logit_views) {
            if c.is_multiple_of(4) {
                rec.push(decode::gemv_rows(gpu, out, &a.lnf, shard, c, *shard_rows)?);
            } else {
                rec.push(matmul(
                    gpu,
                    out,
                    &a.lnf,
                    shard,
                    None,
                    &MatmulOp::new(1, *shard_rows, c).trans_b().frozen_b(),
                )?);
            }
        }
        Ok(rec)
    }
}
