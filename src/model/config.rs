//! `ModelConfig`: the shape of a model of any supported family, read from a Hugging Face
//! `config.json` (its `model_type`) or a preset name.

use std::path::Path;

use super::block::BlockDef;
use super::gpt2::{self, Gpt2Config};
use super::llama::{self, LlamaConfig};
use crate::error::{Error, Result};
use crate::lora::{AdaptableModel, Linear};
use crate::tokenizer::{SpecialTokens, EOT};

/// The architectures this crate trains, as `model_type` in config.json names them.
pub const SUPPORTED: &str = "gpt2, llama, qwen2, qwen3, mistral";

/// A model's shape: GPT-2 or a Llama-family architecture (llama, qwen2, qwen3, mistral).
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// GPT-2 (LayerNorm, learned positions, GELU MLP, fused q/k/v, tied head).
    Gpt2(Gpt2Config),
    /// Llama, Qwen2, Qwen3 and Mistral (RMSNorm, RoPE, SwiGLU, grouped-query attention).
    Llama(LlamaConfig),
}

impl From<Gpt2Config> for ModelConfig {
    fn from(c: Gpt2Config) -> Self {
        ModelConfig::Gpt2(c)
    }
}

impl From<LlamaConfig> for ModelConfig {
    fn from(c: LlamaConfig) -> Self {
        ModelConfig::Llama(c)
    }
}

impl ModelConfig {
    /// A preset shape by name: GPT-2's (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `tiny`)
    /// or a Llama-family one (`smollm2-135m`, `smollm2-360m`, `qwen2.5-0.5b`, `qwen3-0.6b`,
    /// `llama-3.2-1b`, `llama-tiny`).
    pub fn named(name: &str) -> Result<Self> {
        match Gpt2Config::named(name) {
            Ok(c) => Ok(c.into()),
            Err(_) => LlamaConfig::named(name).map(Into::into).map_err(|_| {
                Error::invalid(
                    "model shape",
                    name,
                    "expected gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, smollm2-135m, \
                     smollm2-360m, qwen2.5-0.5b, qwen3-0.6b, llama-3.2-1b or llama-tiny",
                )
            }),
        }
    }

    /// Read and validate a Hugging Face `config.json`, whichever family its `model_type` names.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let model_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("model_type")?.as_str().map(str::to_string));
        match model_type.as_deref() {
            None | Some("gpt2") => Gpt2Config::from_file(path).map(Into::into),
            Some(_) => LlamaConfig::from_file(path).map(Into::into),
        }
    }

    /// The architecture's name as config.json's `model_type` gives it.
    pub fn architecture(&self) -> &str {
        match self {
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Llama(c) => c.arch.model_type(),
        }
    }

    /// Check the shape is one the kernels support.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Gpt2(c) => c.validate(),
            ModelConfig::Llama(c) => c.validate(),
        }
    }

    /// Channels of the residual stream (C).
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_embd,
            ModelConfig::Llama(c) => c.hidden_size,
        }
    }

    /// Attention (query) heads.
    pub fn num_heads(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_head,
            ModelConfig::Llama(c) => c.num_attention_heads,
        }
    }

    /// Key/value heads (fewer than the query heads with grouped-query attention).
    pub fn num_kv_heads(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_head,
            ModelConfig::Llama(c) => c.num_key_value_heads,
        }
    }

    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.head_size(),
            ModelConfig::Llama(c) => c.head_dim(),
        }
    }

    /// Vocabulary rows of the embedding and the LM head.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
        }
    }

    /// The longest sequence the model takes.
    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_positions,
            ModelConfig::Llama(c) => c.max_position_embeddings,
        }
    }

    /// The config.json key of [`ModelConfig::max_positions`], for messages.
    pub fn max_positions_key(&self) -> &'static str {
        match self {
            ModelConfig::Gpt2(_) => "n_positions",
            ModelConfig::Llama(_) => "max_position_embeddings",
        }
    }

    /// The norms' epsilon.
    pub fn norm_eps(&self) -> f32 {
        match self {
            ModelConfig::Gpt2(c) => c.layer_norm_epsilon,
            ModelConfig::Llama(c) => c.rms_norm_eps,
        }
    }

    /// Whether the LM head is the token embedding (GPT-2; Llama-family models that say
    /// `tie_word_embeddings`).
    pub fn tied_head(&self) -> bool {
        match self {
            ModelConfig::Gpt2(_) => true,
            ModelConfig::Llama(c) => c.tie_word_embeddings,
        }
    }

    /// Whether the norms are RMSNorm (no mean, no bias) rather than LayerNorm.
    pub fn rms_norm(&self) -> bool {
        matches!(self, ModelConfig::Llama(_))
    }

    /// Parameters of the base model (a tied LM head counted once).
    pub fn num_parameters(&self) -> usize {
        self.base_parameters()
    }

    /// The special tokens the config itself names: GPT-2's `<|endoftext|>` (its beginning and
    /// end) when the vocabulary has it, a Llama-family config's `bos_token_id`,
    /// `eos_token_id` and `pad_token_id`.
    pub fn special_tokens(&self) -> SpecialTokens {
        match self {
            ModelConfig::Gpt2(c) => {
                let eot = (c.vocab_size > EOT as usize).then_some(EOT);
                SpecialTokens {
                    bos: eot,
                    eos: eot.into_iter().collect(),
                    pad: None,
                }
            }
            ModelConfig::Llama(c) => SpecialTokens {
                bos: c.bos_token_id,
                eos: c.eos_token_id.clone(),
                pad: c.pad_token_id,
            },
        }
    }

    /// The modules PEFT adapts when no target is given: c_attn and c_proj for GPT-2,
    /// q_proj and v_proj for the Llama family.
    pub fn default_targets(&self) -> Vec<String> {
        let names: &[&str] = match self {
            ModelConfig::Gpt2(_) => &["c_attn", "c_proj"],
            ModelConfig::Llama(_) => &["q_proj", "v_proj"],
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The GPT-2 config, when this is GPT-2.
    pub fn as_gpt2(&self) -> Option<&Gpt2Config> {
        match self {
            ModelConfig::Gpt2(c) => Some(c),
            ModelConfig::Llama(_) => None,
        }
    }

    /// The Llama-family config, when this is one.
    pub fn as_llama(&self) -> Option<&LlamaConfig> {
        match self {
            ModelConfig::Gpt2(_) => None,
            ModelConfig::Llama(c) => Some(c),
        }
    }

    /// The ops of one block.
    pub(crate) fn block_def(&self) -> BlockDef {
        match self {
            ModelConfig::Gpt2(c) => gpt2::block_def(c.n_embd),
            ModelConfig::Llama(c) => llama::block_def(c),
        }
    }

    /// RoPE's inverse frequencies (head_dim / 2), for models with rotary positions.
    pub(crate) fn rope_inv_freq(&self) -> Option<Vec<f32>> {
        match self {
            ModelConfig::Gpt2(_) => None,
            ModelConfig::Llama(c) => Some(c.rope.inv_freq(c.head_dim())),
        }
    }

    /// The checkpoint names of block `layer`'s norm weights, in the order the block definition
    /// numbers them (`norm` of its norm ops), each with whether it has a bias.
    pub(crate) fn norm_names(&self, layer: usize) -> Vec<(String, bool)> {
        match self {
            ModelConfig::Gpt2(_) => ["ln_1", "ln_2"]
                .iter()
                .map(|n| (format!("h.{layer}.{n}"), true))
                .collect(),
            ModelConfig::Llama(c) => {
                let p = format!("model.layers.{layer}");
                let mut names = vec![
                    (format!("{p}.input_layernorm"), false),
                    (format!("{p}.post_attention_layernorm"), false),
                ];
                if c.qk_norm() {
                    names.push((format!("{p}.self_attn.q_norm"), false));
                    names.push((format!("{p}.self_attn.k_norm"), false));
                }
                names
            }
        }
    }

    /// Checkpoint names of the token embedding, the position embedding (GPT-2), the final
    /// norm and the untied LM head.
    pub(crate) fn stem_names(&self) -> StemNames {
        match self {
            ModelConfig::Gpt2(_) => StemNames {
                embed: "wte.weight",
                positions: Some("wpe.weight"),
                norm: "ln_f",
                head: None,
            },
            ModelConfig::Llama(c) => StemNames {
                embed: "model.embed_tokens.weight",
                positions: None,
                norm: "model.norm",
                head: (!c.tie_word_embeddings).then_some("lm_head.weight"),
            },
        }
    }
}

/// Checkpoint names of the weights outside the blocks.
pub(crate) struct StemNames {
    pub(crate) embed: &'static str,
    pub(crate) positions: Option<&'static str>,
    pub(crate) norm: &'static str,
    pub(crate) head: Option<&'static str>,
}

/// LoRA's view of any supported model.
impl AdaptableModel for ModelConfig {
    fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.num_layers(),
            ModelConfig::Llama(c) => c.num_layers(),
        }
    }

    fn linear_layers(&self) -> Vec<(Linear, usize, usize)> {
        self.block_def().linears()
    }

    fn base_parameters(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.base_parameters(),
            ModelConfig::Llama(c) => c.base_parameters(),
        }
    }

    fn module_path(&self, layer: usize, linear: Linear) -> String {
        match self {
            ModelConfig::Gpt2(c) => c.module_path(layer, linear),
            ModelConfig::Llama(c) => c.module_path(layer, linear),
        }
    }

    fn peft_prefix(&self) -> &'static str {
        match self {
            ModelConfig::Gpt2(c) => c.peft_prefix(),
            ModelConfig::Llama(c) => c.peft_prefix(),
        }
    }

    fn fan_in_fan_out(&self) -> bool {
        match self {
            ModelConfig::Gpt2(c) => c.fan_in_fan_out(),
            ModelConfig::Llama(c) => c.fan_in_fan_out(),
        }
    }

    fn linear_bias(&self, linear: Linear) -> bool {
        match self {
            ModelConfig::Gpt2(c) => c.linear_bias(linear),
            ModelConfig::Llama(c) => c.linear_bias(linear),
        }
    }
}
