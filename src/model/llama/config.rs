//! `LlamaConfig`: the shape of a Llama-family model (Llama, Qwen2, Qwen3, Mistral), read from a
//! Hugging Face `config.json` or a preset, with its rotary position embedding ([`Rope`]).
//!
//! Defaults for keys a file leaves out are transformers' own, per architecture (its
//! `LlamaConfig`, `Qwen2Config`, `Qwen3Config` and `MistralConfig`), so a config.json means here
//! what it means to transformers.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::tokenizer::{token_id, token_ids};

/// A preset's config.json object: `model_type`, `hidden_act` and the preset's keys.
macro_rules! preset_json {
    ($arch:ident, { $($body:tt)* }) => {{
        let mut v = serde_json::json!({ $($body)* });
        let obj = v.as_object_mut().expect("a JSON object literal");
        obj.insert("model_type".into(), LlamaArch::$arch.model_type().into());
        obj.insert("hidden_act".into(), "silu".into());
        obj.insert(
            "architectures".into(),
            serde_json::json!([match LlamaArch::$arch {
                LlamaArch::Llama => "LlamaForCausalLM",
                LlamaArch::Qwen2 => "Qwen2ForCausalLM",
                LlamaArch::Qwen3 => "Qwen3ForCausalLM",
                LlamaArch::Mistral => "MistralForCausalLM",
            }]),
        );
        v
    }};
}

/// The model types a config.json may name anywhere in the crate (GPT-2 is read by
/// [`crate::model::Gpt2Config`]).
pub const SUPPORTED_MODEL_TYPES: &str = "gpt2, llama, qwen2, qwen3, mistral";

/// Largest head size the attention kernels take; RoPE also needs it even.
pub const MAX_HEAD_DIM: usize = 128;

/// Which Llama-family architecture a config describes: the same block with different biases,
/// norms and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LlamaArch {
    /// `llama` (also SmolLM2 and other Llama-shaped models): biases per `attention_bias` and
    /// `mlp_bias`.
    Llama,
    /// `qwen2` (Qwen2, Qwen2.5): q, k and v projections always have a bias, o_proj none.
    Qwen2,
    /// `qwen3`: RMSNorm over each head of q and k before RoPE; biases per `attention_bias`.
    Qwen3,
    /// `mistral`: no biases anywhere.
    Mistral,
}

impl LlamaArch {
    /// The arch of a config.json `model_type`, or an error naming the supported ones.
    pub fn from_model_type(model_type: &str) -> Result<Self> {
        Ok(match model_type {
            "llama" => LlamaArch::Llama,
            "qwen2" => LlamaArch::Qwen2,
            "qwen3" => LlamaArch::Qwen3,
            "mistral" => LlamaArch::Mistral,
            "gpt2" => {
                return Err(Error::invalid(
                    "model_type",
                    "gpt2",
                    "a GPT-2 config.json is read as a GPT-2 model, not a Llama-family one",
                ))
            }
            other => {
                return Err(Error::invalid(
                    "model_type",
                    format!("{other:?}"),
                    format!(
                    "this model architecture is not supported (supported: {SUPPORTED_MODEL_TYPES})"
                ),
                ))
            }
        })
    }

    /// The config.json `model_type` of this arch.
    pub fn model_type(self) -> &'static str {
        match self {
            LlamaArch::Llama => "llama",
            LlamaArch::Qwen2 => "qwen2",
            LlamaArch::Qwen3 => "qwen3",
            LlamaArch::Mistral => "mistral",
        }
    }

    /// transformers' `num_key_value_heads` when the key is absent (`LlamaConfig` falls back to
    /// the head count, `Qwen2Config` / `Qwen3Config` to 32, `MistralConfig` to 8).
    fn default_kv_heads(self, heads: usize) -> usize {
        match self {
            LlamaArch::Llama => heads,
            LlamaArch::Qwen2 | LlamaArch::Qwen3 => 32,
            LlamaArch::Mistral => 8,
        }
    }

    /// transformers' `max_position_embeddings` when the key is absent.
    fn default_max_positions(self) -> usize {
        match self {
            LlamaArch::Llama => 2048,
            LlamaArch::Qwen2 | LlamaArch::Qwen3 => 32768,
            LlamaArch::Mistral => 4096 * 32,
        }
    }
}

/// How RoPE's frequencies are scaled (`rope_type` in config.json).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeKind {
    /// `default`: the original RoPE, `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// `llama3` (Llama 3.1 and later): long wavelengths divided by `factor`, short ones kept,
    /// the band between interpolated.
    Llama3 {
        /// Divisor of the low frequencies (32 for Llama 3.2).
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length of pretraining.
        original_max_position_embeddings: usize,
    },
    /// `linear`: every frequency divided by `factor` (position interpolation).
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
}

/// Rotary position embedding: base and scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// The base (`rope_theta`).
    pub theta: f64,
    /// The scaling of the frequencies.
    pub kind: RopeKind,
}

impl Rope {
    /// The RoPE types [`Rope`] computes.
    pub const SUPPORTED: &'static str = "default, linear, llama3";

    /// Plain RoPE with base `theta`.
    pub fn new(theta: f64) -> Self {
        Rope {
            theta,
            kind: RopeKind::Default,
        }
    }

    /// The `head_dim / 2` inverse frequencies for one head of `head_dim` channels, as
    /// transformers computes them (`_compute_default_rope_parameters`, `_compute_llama3_parameters`,
    /// `_compute_linear_scaling_rope_parameters` in `modeling_rope_utils.py`).
    ///
    /// Precision: transformers computes these in float32 with torch, Python floats entering as
    /// float32 scalars; this mirrors that op for op in `f32` (`exponent = f32(2i) / f32(d)`,
    /// `1 / base^exponent`, `wavelen = (1 / inv) * f32(2π)`, ...), so the tables agree bit for
    /// bit except for `pow`: it is computed in f64 from the f32 operands and rounded once (the
    /// correctly rounded f32 result), where torch's CPU kernel uses SLEEF's `powf` (error below
    /// 1 ulp). The two can differ by 1 ulp in some entries, far below what a forward pass
    /// resolves (the tests hold Llama 3.2's table equal to transformers' bit for bit, and
    /// Qwen3's within 1 ulp: one entry of 64 differs).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let d = head_dim as f32;
        let base = self.theta as f32;
        let default: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| {
                let exponent = i as f32 / d;
                let p = (base as f64).powf(exponent as f64) as f32;
                1.0f32 / p
            })
            .collect();
        match self.kind {
            RopeKind::Default => default,
            RopeKind::Linear { factor } => {
                let factor = factor as f32;
                default.into_iter().map(|f| f / factor).collect()
            }
            RopeKind::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old_len = original_max_position_embeddings as f64;
                // Python floats (f64), compared against the f32 tensor as f32 scalars.
                let low_freq_wavelen = (old_len / low_freq_factor) as f32;
                let high_freq_wavelen = (old_len / high_freq_factor) as f32;
                let factor32 = factor as f32;
                let two_pi = std::f64::consts::TAU as f32;
                let old_len32 = old_len as f32;
                let low32 = low_freq_factor as f32;
                let band = (high_freq_factor - low_freq_factor) as f32;
                default
                    .into_iter()
                    .map(|inv| {
                        // `2π / inv` is `inv.reciprocal() * 2π` in torch.
                        let wavelen = (1.0f32 / inv) * two_pi;
                        let inv_llama = if wavelen > low_freq_wavelen {
                            inv / factor32
                        } else {
                            inv
                        };
                        let smooth = ((1.0f32 / wavelen) * old_len32 - low32) / band;
                        let smoothed =
                            (1.0f32 - smooth) * inv_llama / factor32 + smooth * inv_llama;
                        // `~(wavelen < high) * ~(wavelen > low)`; no NaN can occur here.
                        let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                        if medium {
                            smoothed
                        } else {
                            inv_llama
                        }
                    })
                    .collect()
            }
        }
    }

    /// The factor transformers multiplies cos and sin by (`attention_scaling`): 1 for every
    /// supported type.
    pub fn attention_scaling(&self) -> f32 {
        1.0
    }

    /// Read the RoPE of a config.json object, either spelling: hub checkpoints' top-level
    /// `rope_theta` + `rope_scaling` (type under `rope_type`, or `type` in older files), or
    /// transformers 5's `rope_parameters` (`rope_type`, `rope_theta`, ...). When both are set a
    /// non-null `rope_scaling` wins, as in transformers 5. `max_positions` is the default of a
    /// llama3 `original_max_position_embeddings` (transformers 5 fills it in the same way).
    fn from_config(obj: &serde_json::Map<String, Value>, max_positions: usize) -> Result<Self> {
        let scaling = match obj.get("rope_scaling") {
            Some(Value::Null) | None => None,
            Some(v) => Some(("rope_scaling", v)),
        };
        let params = match obj.get("rope_parameters") {
            Some(Value::Null) | None => None,
            Some(v) => Some(("rope_parameters", v)),
        };
        let empty = serde_json::Map::new();
        let (key, dict) = match scaling.or(params) {
            None => ("rope_scaling", &empty),
            Some((key, Value::Object(m))) => (key, m),
            Some((key, other)) => {
                return Err(Error::invalid(
                    "rope_scaling",
                    other,
                    format!("{key} must be a JSON object (or null)"),
                ))
            }
        };
        if !dict.is_empty() && dict.values().all(Value::is_object) {
            return Err(Error::invalid(
                "rope_parameters",
                format!("keys {:?}", dict.keys().collect::<Vec<_>>()),
                "RoPE parameters per attention layer type are not supported; one set for all \
                 layers is",
            ));
        }
        let number = |name: &'static str, v: &Value| -> Result<f64> {
            v.as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| Error::invalid(name, v, format!("{key}.{name} must be a number")))
        };
        let field = |name: &'static str| -> Result<Option<f64>> {
            match dict.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => number(name, v).map(Some),
            }
        };
        let required = |name: &'static str, kind: &str| -> Result<f64> {
            field(name)?.ok_or_else(|| {
                Error::invalid(
                    name,
                    "missing",
                    format!("{key} of type {kind} needs {name}"),
                )
            })
        };
        let theta = match field("rope_theta")? {
            Some(t) => t,
            None => match obj.get("rope_theta") {
                None | Some(Value::Null) => 10000.0,
                Some(v) => number("rope_theta", v)?,
            },
        };
        let partial = match field("partial_rotary_factor")? {
            Some(p) => Some(p),
            None => match obj.get("partial_rotary_factor") {
                None | Some(Value::Null) => None,
                Some(v) => Some(number("partial_rotary_factor", v)?),
            },
        };
        if let Some(p) = partial.filter(|p| *p != 1.0) {
            return Err(Error::invalid(
                "partial_rotary_factor",
                p,
                "partial RoPE is not supported; only 1.0 (every channel rotated)",
            ));
        }
        let rope_type = match dict.get("rope_type").or_else(|| dict.get("type")) {
            None | Some(Value::Null) => "default",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(Error::invalid(
                    "rope_type",
                    other,
                    format!("{key}.rope_type must be a string"),
                ))
            }
        };
        let kind = match rope_type {
            "default" => RopeKind::Default,
            "linear" => RopeKind::Linear {
                factor: required("factor", "linear")?,
            },
            "llama3" => {
                let original = [dict, obj]
                    .iter()
                    .find_map(|m| {
                        m.get("original_max_position_embeddings")
                            .filter(|v| !v.is_null())
                    })
                    .cloned()
                    .unwrap_or_else(|| Value::from(max_positions));
                let original = original
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        Error::invalid(
                            "original_max_position_embeddings",
                            &original,
                            format!("{key}.original_max_position_embeddings must be an integer"),
                        )
                    })?;
                RopeKind::Llama3 {
                    factor: required("factor", "llama3")?,
                    low_freq_factor: required("low_freq_factor", "llama3")?,
                    high_freq_factor: required("high_freq_factor", "llama3")?,
                    original_max_position_embeddings: original,
                }
            }
            other => {
                return Err(Error::invalid(
                    "rope_type",
                    format!("{other:?}"),
                    format!(
                        "this RoPE scaling is not supported (supported: {})",
                        Rope::SUPPORTED
                    ),
                ))
            }
        };
        let rope = Rope { theta, kind };
        rope.validate()?;
        Ok(rope)
    }

    /// Check the values give finite, positive frequencies.
    pub fn validate(&self) -> Result<()> {
        if !(self.theta.is_finite() && self.theta > 1.0 && self.theta < 1e30) {
            return Err(Error::invalid(
                "rope_theta",
                self.theta,
                "must be a finite number > 1",
            ));
        }
        let positive = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1e30 {
                Ok(())
            } else {
                Err(Error::invalid(name, v, "must be a finite number > 0"))
            }
        };
        match self.kind {
            RopeKind::Default => {}
            RopeKind::Linear { factor } => positive("factor", factor)?,
            RopeKind::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(Error::invalid(
                        "high_freq_factor",
                        high_freq_factor,
                        format!("must be greater than low_freq_factor ({low_freq_factor})"),
                    ));
                }
                if original_max_position_embeddings == 0
                    || original_max_position_embeddings > 1 << 40
                {
                    return Err(Error::invalid(
                        "original_max_position_embeddings",
                        original_max_position_embeddings,
                        "must be > 0",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A Llama-family model's hyperparameters, named as in Hugging Face's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// The architecture (`model_type`).
    pub arch: LlamaArch,
    /// Channels of the residual stream (C).
    pub hidden_size: usize,
    /// Channels of the SwiGLU MLP (gate and up projections' outputs).
    pub intermediate_size: usize,
    /// Transformer blocks (L).
    pub num_hidden_layers: usize,
    /// Query heads (NH).
    pub num_attention_heads: usize,
    /// Key / value heads (grouped-query attention: each serves `NH / num_key_value_heads`
    /// query heads).
    pub num_key_value_heads: usize,
    /// Channels per head as the file gives it; `None` means `hidden_size / num_attention_heads`
    /// (see [`LlamaConfig::head_dim`]).
    pub head_dim: Option<usize>,
    /// Vocabulary size (V): rows of the embedding and of the LM head.
    pub vocab_size: usize,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon (added to the mean square in f32, as torch does).
    pub rms_norm_eps: f32,
    /// Whether the LM head is the token embedding (`lm_head.weight` then not stored).
    pub tie_word_embeddings: bool,
    /// `attention_bias` as read (false when absent); see [`LlamaConfig::qkv_bias`] and
    /// [`LlamaConfig::o_bias`] for what each arch does with it.
    pub attention_bias: bool,
    /// `mlp_bias` as read (false when absent); only Llama uses it ([`LlamaConfig::mlp_has_bias`]).
    pub mlp_bias: bool,
    /// The MLP activation; always `silu` (anything else is refused).
    pub hidden_act: String,
    /// The sliding-window attention span in effect, if any layer uses one; a config is only
    /// accepted when it is at least `max_position_embeddings`, so it never masks anything.
    pub sliding_window: Option<usize>,
    /// Rotary position embedding.
    pub rope: Rope,
    /// Beginning-of-sequence token, if the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (`eos_token_id` may be one id or a list).
    pub eos_token_id: Vec<u32>,
    /// Padding token, if the config names one.
    pub pad_token_id: Option<u32>,
    /// The config.json object as read (or, for a preset, as it would be written), so a merged
    /// model can write it back unchanged.
    pub raw: Value,
}

/// The keys read with serde; RoPE and token ids are read from the JSON object by hand.
#[derive(Deserialize)]
struct RawConfig {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

impl LlamaConfig {
    /// A preset shape by name: `smollm2-135m`, `smollm2-360m`, `qwen2.5-0.5b`, `qwen3-0.6b`,
    /// `llama-3.2-1b` (the published models' config.json values), or `llama-tiny` (4 layers,
    /// 128 channels, 4 heads sharing 2 KV heads, 256 positions, a 512-token vocabulary) for
    /// demos and tests. Shapes only: weights come from a checkpoint, or are random.
    pub fn named(name: &str) -> Result<Self> {
        let cfg = match name {
            "smollm2-135m" => preset_json!(Llama, {
                "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0,
            }),
            "smollm2-360m" => preset_json!(Llama, {
                "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                "num_attention_heads": 15, "num_key_value_heads": 5, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0,
            }),
            "qwen2.5-0.5b" => preset_json!(Qwen2, {
                "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                "tie_word_embeddings": true, "use_sliding_window": false,
                "sliding_window": 32768, "max_window_layers": 24,
                "bos_token_id": 151643, "eos_token_id": 151643,
            }),
            "qwen3-0.6b" => preset_json!(Qwen3, {
                "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0, "tie_word_embeddings": true, "attention_bias": false,
                "use_sliding_window": false, "sliding_window": null, "max_window_layers": 28,
                "bos_token_id": 151643, "eos_token_id": 151645,
            }),
            "llama-3.2-1b" => preset_json!(Llama, {
                "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "rope_scaling": {
                    "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                    "original_max_position_embeddings": 8192, "rope_type": "llama3"
                },
                "tie_word_embeddings": true, "attention_bias": false, "mlp_bias": false,
                "bos_token_id": 128000, "eos_token_id": 128001,
            }),
            "llama-tiny" => preset_json!(Llama, {
                "hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 4,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
                "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
            }),
            other => {
                return Err(Error::invalid(
                    "model shape",
                    other,
                    "expected smollm2-135m, smollm2-360m, qwen2.5-0.5b, qwen3-0.6b, \
                     llama-3.2-1b or llama-tiny",
                ))
            }
        };
        Self::from_value(cfg)
    }

    /// Read and validate a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_bytes(&bytes).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            detail: match e {
                Error::Format { detail, .. } => detail,
                other => other.to_string(),
            },
        })
    }

    /// Parse and validate the bytes of a Hugging Face `config.json`. Errors are
    /// [`Error::Format`] naming `config.json` ([`LlamaConfig::from_file`] puts the real path
    /// in) that say which key is missing or wrong. Never panics, whatever the bytes.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| bad(format!("not UTF-8 text ({e}); a config.json is JSON")))?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        Self::from_value(value).map_err(|e| match e {
            Error::Format { .. } => e,
            other => bad(other.to_string()),
        })
    }

    /// Build and validate a config from a parsed config.json object, keeping it as `raw`.
    pub fn from_value(value: Value) -> Result<Self> {
        let Some(obj) = value.as_object() else {
            return Err(bad("a config.json must be a JSON object".into()));
        };
        let model_type = match obj.get("model_type") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(bad(format!(
                    "no model_type string: a Hugging Face config.json names its architecture \
                     (supported: {SUPPORTED_MODEL_TYPES})"
                )))
            }
        };
        let arch = LlamaArch::from_model_type(model_type)?;
        let raw: RawConfig = serde_json::from_value(value.clone()).map_err(|e| {
            bad(format!(
                "not a {model_type} config.json ({e}); sizes must be non-negative integers and \
                 flags true or false"
            ))
        })?;
        let need = |name: &'static str, v: Option<usize>| {
            v.ok_or_else(|| {
                bad(format!(
                    "no {name}: a {model_type} config.json gives hidden_size, \
                     intermediate_size, num_hidden_layers, num_attention_heads and vocab_size"
                ))
            })
        };
        let hidden_size = need("hidden_size", raw.hidden_size)?;
        let intermediate_size = need("intermediate_size", raw.intermediate_size)?;
        let num_hidden_layers = need("num_hidden_layers", raw.num_hidden_layers)?;
        let num_attention_heads = need("num_attention_heads", raw.num_attention_heads)?;
        let vocab_size = need("vocab_size", raw.vocab_size)?;
        let max_position_embeddings = raw
            .max_position_embeddings
            .unwrap_or(arch.default_max_positions());
        let num_key_value_heads = raw
            .num_key_value_heads
            .unwrap_or(arch.default_kv_heads(num_attention_heads));
        let head_dim = match arch {
            // Qwen3Config's head_dim defaults to 128, not hidden_size / heads.
            LlamaArch::Qwen3 => Some(raw.head_dim.unwrap_or(128)),
            _ => raw.head_dim,
        };
        let sliding_window = match arch {
            LlamaArch::Llama => None,
            // MistralConfig: 4096 when absent; null turns it off.
            LlamaArch::Mistral => match obj.get("sliding_window") {
                None => Some(4096),
                Some(_) => raw.sliding_window,
            },
            LlamaArch::Qwen2 | LlamaArch::Qwen3 => {
                let window = match obj.get("sliding_window") {
                    None => Some(4096),
                    Some(_) => raw.sliding_window,
                };
                let used = raw.use_sliding_window.unwrap_or(false);
                let max_window_layers = raw.max_window_layers.unwrap_or(28);
                let any_layer = match &raw.layer_types {
                    Some(types) => types.iter().any(|t| t == "sliding_attention"),
                    None => max_window_layers < num_hidden_layers,
                };
                window.filter(|_| used && any_layer)
            }
        };
        let rope = Rope::from_config(obj, max_position_embeddings)?;
        let cfg = LlamaConfig {
            arch,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6) as f32,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: raw.attention_bias.unwrap_or(false),
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            hidden_act: raw.hidden_act.unwrap_or_else(|| "silu".into()),
            sliding_window,
            rope,
            bos_token_id: token_id("bos_token_id", obj.get("bos_token_id"))?,
            eos_token_id: token_ids("eos_token_id", obj.get("eos_token_id"))?,
            pad_token_id: token_id("pad_token_id", obj.get("pad_token_id"))?,
            raw: value,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the shape is one the kernels support and sizes are those of a real model.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("head_dim", self.head_dim.unwrap_or(1)),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(name, v, "must be > 0"));
            }
        }
        // Every size the graph computes must fit comfortably in memory arithmetic: a hostile or
        // mistyped config.json must fail here, not overflow or allocate later.
        if self.hidden_size > 1 << 16
            || self.intermediate_size > 1 << 18
            || self.num_hidden_layers > 1 << 12
            || self.num_attention_heads > 1 << 12
            || self.head_dim.unwrap_or(0) > 1 << 16
            || self.max_position_embeddings > 1 << 24
            || self.vocab_size > 1 << 24
            || self.parameters_u128() > 1 << 40
        {
            return Err(Error::invalid(
                "model shape",
                format!(
                    "hidden_size {}, intermediate_size {}, num_hidden_layers {}, \
                     num_attention_heads {}, head_dim {}, max_position_embeddings {}, \
                     vocab_size {}",
                    self.hidden_size,
                    self.intermediate_size,
                    self.num_hidden_layers,
                    self.num_attention_heads,
                    self.head_dim(),
                    self.max_position_embeddings,
                    self.vocab_size
                ),
                "too large to be a real model (at most 2^16 channels, 2^18 MLP channels, 2^12 \
                 layers and heads, 2^24 positions and tokens, 2^40 parameters); check config.json",
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::invalid(
                "num_key_value_heads",
                self.num_key_value_heads,
                format!(
                    "must divide num_attention_heads ({}): each KV head serves a whole group of \
                     query heads",
                    self.num_attention_heads
                ),
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::invalid(
                "hidden_size / num_attention_heads",
                format!("{} / {}", self.hidden_size, self.num_attention_heads),
                "hidden_size must split into whole heads when config.json gives no head_dim",
            ));
        }
        let hd = self.head_dim();
        if !hd.is_multiple_of(2) || hd > MAX_HEAD_DIM {
            return Err(Error::invalid(
                "head_dim",
                hd,
                format!(
                    "must be even (RoPE rotates channel pairs) and at most {MAX_HEAD_DIM} (the \
                     attention kernels' limit)"
                ),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(Error::invalid(
                "rms_norm_eps",
                self.rms_norm_eps,
                "must be a finite number > 0",
            ));
        }
        if self.hidden_act != "silu" {
            return Err(Error::invalid(
                "hidden_act",
                &self.hidden_act,
                "only silu (SwiGLU, what Llama, Qwen2, Qwen3 and Mistral use) is supported",
            ));
        }
        if let Some(w) = self.sliding_window {
            if w < self.max_position_embeddings {
                return Err(Error::invalid(
                    "sliding_window",
                    w,
                    format!(
                        "sliding-window attention is not supported, and this window is shorter \
                         than max_position_embeddings ({}), so it would change what the model \
                         attends to",
                        self.max_position_embeddings
                    ),
                ));
            }
        }
        self.rope.validate()?;
        Ok(())
    }

    /// Channels per head: `head_dim` when the file gives it (Qwen3's differs from
    /// `hidden_size / num_attention_heads`), else `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or_else(|| self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Width of the query projection's output (NH · head_dim).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim()
    }

    /// Width of the key and of the value projection's output (KV heads · head_dim).
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim()
    }

    /// Whether q_proj, k_proj and v_proj have a bias: always for Qwen2, per `attention_bias`
    /// for Llama and Qwen3, never for Mistral.
    pub fn qkv_bias(&self) -> bool {
        match self.arch {
            LlamaArch::Qwen2 => true,
            LlamaArch::Llama | LlamaArch::Qwen3 => self.attention_bias,
            LlamaArch::Mistral => false,
        }
    }

    /// Whether o_proj has a bias: per `attention_bias` for Llama and Qwen3, never for Qwen2 and
    /// Mistral.
    pub fn o_bias(&self) -> bool {
        match self.arch {
            LlamaArch::Llama | LlamaArch::Qwen3 => self.attention_bias,
            LlamaArch::Qwen2 | LlamaArch::Mistral => false,
        }
    }

    /// Whether the MLP's gate, up and down projections have biases (Llama's `mlp_bias`; the
    /// others have none).
    pub fn mlp_has_bias(&self) -> bool {
        self.arch == LlamaArch::Llama && self.mlp_bias
    }

    /// Whether each head of q and k is RMS-normalised (weights of `head_dim`) before RoPE
    /// (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.arch == LlamaArch::Qwen3
    }

    fn parameters_u128(&self) -> u128 {
        // With every size below 2^30 no product below overflows; larger is no real model.
        let sizes = [
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim(),
            self.vocab_size,
        ];
        if sizes.iter().any(|&s| s > 1 << 30) {
            return u128::MAX;
        }
        let c = self.hidden_size as u128;
        let i = self.intermediate_size as u128;
        let q = self.num_attention_heads as u128 * self.head_dim() as u128;
        let kv = self.num_key_value_heads as u128 * self.head_dim() as u128;
        let b = |on: bool, n: u128| if on { n } else { 0 };
        let attn = c * q
            + 2 * c * kv
            + q * c
            + b(self.qkv_bias(), q + 2 * kv)
            + b(self.o_bias(), c)
            + b(self.qk_norm(), 2 * self.head_dim() as u128);
        let mlp = 3 * c * i + b(self.mlp_has_bias(), 2 * i + c);
        let per_layer = attn + mlp + 2 * c;
        let embed = self.vocab_size as u128 * c;
        let head = b(!self.tie_word_embeddings, embed);
        embed + self.num_hidden_layers as u128 * per_layer + c + head
    }

    /// Number of parameters, as transformers' `model.num_parameters()` counts them (a tied LM
    /// head counted once). Saturates at `usize::MAX` for a config that failed validation.
    pub fn num_parameters(&self) -> usize {
        usize::try_from(self.parameters_u128()).unwrap_or(usize::MAX)
    }
}

/// A config.json problem, named as GPT-2's are; [`LlamaConfig::from_file`] puts the real path in.
fn bad(detail: String) -> Error {
    Error::Format {
        path: "config.json".into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LlamaConfig> {
        LlamaConfig::from_json_bytes(text.as_bytes())
    }

    #[test]
    fn presets_validate_and_round_trip_through_raw() {
        for name in [
            "smollm2-135m",
            "smollm2-360m",
            "qwen2.5-0.5b",
            "qwen3-0.6b",
            "llama-3.2-1b",
            "llama-tiny",
        ] {
            let cfg = LlamaConfig::named(name).unwrap();
            let again = LlamaConfig::from_json_bytes(cfg.raw.to_string().as_bytes()).unwrap();
            assert_eq!(cfg, again, "{name}");
        }
        let err = LlamaConfig::named("llama-7b").unwrap_err().to_string();
        assert!(err.contains("llama-tiny"), "{err}");
    }

    #[test]
    fn defaults_follow_transformers_per_arch() {
        let minimal = |t: &str| {
            format!(
                r#"{{"model_type": "{t}", "hidden_size": 64, "intermediate_size": 100,
                "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 50,
                "max_position_embeddings": 256, "sliding_window": null}}"#
            )
        };
        let l = parse(&minimal("llama")).unwrap();
        assert_eq!(
            (l.num_key_value_heads, l.head_dim(), l.rope.theta),
            (8, 8, 10000.0)
        );
        assert!(!l.tie_word_embeddings && !l.qkv_bias() && !l.mlp_has_bias());
        assert_eq!(l.rms_norm_eps, 1e-6);
        let m = parse(&minimal("mistral")).unwrap();
        assert_eq!(m.num_key_value_heads, 8);
        let q3 = parse(&minimal("qwen3")).unwrap_err().to_string();
        // Qwen3's defaults: 32 KV heads for 8 heads does not divide.
        assert!(q3.contains("num_key_value_heads"), "{q3}");
        let q2 = parse(&minimal("qwen2").replace(
            "\"vocab_size\"",
            "\"num_key_value_heads\": 2, \"vocab_size\"",
        ))
        .unwrap();
        assert!(q2.qkv_bias() && !q2.o_bias() && q2.sliding_window.is_none());
        // A mistral config without sliding_window means transformers' 4096.
        let no_key = minimal("mistral").replace(", \"sliding_window\": null", "");
        let no_key = no_key.replace("256", "8192");
        assert!(parse(&no_key)
            .unwrap_err()
            .to_string()
            .contains("sliding_window"));
    }

    #[test]
    fn hostile_sizes_fail_validation_without_overflow() {
        let mut cfg = LlamaConfig::named("llama-tiny").unwrap();
        cfg.num_key_value_heads = usize::MAX;
        cfg.head_dim = Some(usize::MAX);
        assert_eq!(cfg.num_parameters(), usize::MAX);
        assert!(cfg.validate().is_err());
        let text = cfg
            .raw
            .to_string()
            .replace("\"num_hidden_layers\":4", "\"num_hidden_layers\":1e30");
        assert!(LlamaConfig::from_json_bytes(text.as_bytes()).is_err());
        assert!(LlamaConfig::from_json_bytes(b"\xff").is_err());
    }

    /// f32 bit patterns of transformers 5.24's inv_freq on CPU (torch 2.15): Llama 3.2's
    /// llama3 RoPE (theta 5e5, head_dim 64) and Qwen3's default RoPE (theta 1e6, head_dim 128).
    const TORCH_LLAMA3: [u32; 32] = [
        1065353216, 1059709382, 1054963644, 1049992931, 1044812720, 1040434848, 1034871981,
        1030233703, 1025116360, 1020030793, 1015523779, 1010044269, 1005516623, 1000248322,
        995260192, 984164251, 971060768, 952867063, 933446029, 928558209, 923781368, 918476020,
        914179523, 908595819, 903811268, 898893515, 893679120, 889347892, 883754919, 879076685,
        874013863, 868893104,
    ];
    const TORCH_QWEN3: [u32; 64] = [
        1065353216, 1062095789, 1059470816, 1057355503, 1054337179, 1051589887, 1049376004,
        1046607925, 1043732615, 1041415569, 1038909398, 1035900102, 1033475085, 1031243027,
        1028093503, 1025555485, 1023510243, 1020314024, 1017657739, 1015517192, 1012562930,
        1009782866, 1007542573, 1004841542, 1001931932, 999587246, 997151246, 994106053, 991652109,
        989493488, 986306396, 983738103, 981668463, 978534184, 975846212, 973680130, 970790693,
        967977467, 965710450, 963077266, 960132947, 957760292, 955395298, 952313781, 949830564,
        947746260, 944521150, 941922219, 939827890, 936756289, 934036253, 931844333, 929020495,
        926173710, 923879651, 921315122, 918335681, 915934722, 913641584, 910523307, 908010468,
        905985516, 902737785, 900107852,
    ];

    /// Equal to transformers' table, or 1 ulp away where its SLEEF `powf` rounds differently
    /// from a correctly rounded pow (one entry of Qwen3's 64).
    #[test]
    fn inv_freq_matches_transformers_to_the_ulp() {
        let check = |got: Vec<f32>, want: &[u32], what: &str| {
            assert_eq!(got.len(), want.len());
            let mut exact = 0;
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                let ulps = g.to_bits().abs_diff(*w);
                assert!(
                    ulps <= 1,
                    "{what}[{i}]: {g} vs {} ({ulps} ulp)",
                    f32::from_bits(*w)
                );
                exact += usize::from(ulps == 0);
            }
            exact
        };
        let llama = LlamaConfig::named("llama-3.2-1b").unwrap();
        assert_eq!(check(llama.rope.inv_freq(64), &TORCH_LLAMA3, "llama3"), 32);
        let qwen = LlamaConfig::named("qwen3-0.6b").unwrap();
        assert!(check(qwen.rope.inv_freq(128), &TORCH_QWEN3, "qwen3") >= 63);
    }

    #[test]
    fn default_inv_freq_matches_the_formula() {
        let r = Rope::new(10000.0);
        let f = r.inv_freq(64);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        for (i, v) in f.iter().enumerate() {
            let want = 10000f64.powf(-(2.0 * i as f64) / 64.0);
            assert!(
                ((*v as f64) - want).abs() <= 1e-6 * want,
                "{i}: {v} vs {want}"
            );
        }
        let lin = Rope {
            theta: 10000.0,
            kind: RopeKind::Linear { factor: 4.0 },
        };
        assert_eq!(lin.inv_freq(64)[3], f[3] / 4.0);
    }
}
