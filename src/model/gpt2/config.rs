//! `Gpt2Config`: the model's shape, read from a Hugging Face `config.json` or a preset.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// GPT-2's hyperparameters, named as in Hugging Face's `config.json`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Gpt2Config {
    /// Channels (C).
    pub n_embd: usize,
    /// Transformer blocks (L).
    pub n_layer: usize,
    /// Attention heads (NH).
    pub n_head: usize,
    /// Longest sequence (wpe rows).
    pub n_positions: usize,
    /// Vocabulary size (V).
    pub vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
    /// MLP activation; only `gelu_new` (GPT-2's tanh approximation) is supported.
    #[serde(default = "default_activation")]
    pub activation_function: String,
}

fn default_eps() -> f32 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".into()
}

impl Gpt2Config {
    fn preset(n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        Gpt2Config {
            n_embd,
            n_layer,
            n_head,
            n_positions: 1024,
            vocab_size: 50257,
            layer_norm_epsilon: 1e-5,
            activation_function: default_activation(),
        }
    }

    /// A preset shape by name: `gpt2` (124M), `gpt2-medium`, `gpt2-large`, `gpt2-xl`, or `tiny`
    /// (4 layers, 128 channels, 4 heads, 256 positions, GPT-2's vocabulary) for demos and tests.
    /// Shapes only: weights come from a checkpoint, or are random and labelled as such.
    pub fn named(name: &str) -> Result<Self> {
        Ok(match name {
            "gpt2" => Self::preset(768, 12, 12),
            "gpt2-medium" => Self::preset(1024, 24, 16),
            "gpt2-large" => Self::preset(1280, 36, 20),
            "gpt2-xl" => Self::preset(1600, 48, 25),
            "tiny" => Gpt2Config {
                n_positions: 256,
                ..Self::preset(128, 4, 4)
            },
            other => {
                return Err(Error::invalid(
                    "model shape",
                    other,
                    "expected gpt2, gpt2-medium, gpt2-large, gpt2-xl or tiny",
                ))
            }
        })
    }

    /// Read and validate a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_bytes(&bytes).map_err(|e| match e {
            Error::Format { detail, .. } => Error::Format {
                path: path.to_path_buf(),
                detail,
            },
            other => Error::Format {
                path: path.to_path_buf(),
                detail: other.to_string(),
            },
        })
    }

    /// Parse and validate the bytes of a Hugging Face `config.json`. Errors are
    /// [`Error::Format`] (with an empty path; [`Gpt2Config::from_file`] fills it in) that say
    /// which field is missing or wrong. Never panics, whatever the bytes.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |detail: String| Error::Format {
            path: "config.json".into(),
            detail,
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| bad(format!("not UTF-8 text ({e}); a config.json is JSON")))?;
        let cfg: Gpt2Config = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "not a GPT-2 config.json ({e}); it must be a JSON object with at least \
                 n_embd, n_layer, n_head, n_positions and vocab_size, as Hugging Face writes it"
            ))
        })?;
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// Check the shape is one the kernels support.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
            ("vocab_size", self.vocab_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(name, v, "must be > 0"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head)
            || self.n_embd / self.n_head > crate::kernels::attention::MAX_HEAD_SIZE
        {
            return Err(Error::invalid(
                "n_embd / n_head",
                format!("{} / {}", self.n_embd, self.n_head),
                format!(
                    "n_embd must split into n_head heads of at most {} channels",
                    crate::kernels::attention::MAX_HEAD_SIZE
                ),
            ));
        }
        // Every size the graph computes must fit comfortably in memory arithmetic: a hostile or
        // mistyped config.json must fail here, not overflow or allocate later.
        let c = self.n_embd as u128;
        let params = (self.vocab_size as u128 + self.n_positions as u128) * c
            + self.n_layer as u128 * (12 * c * c + 13 * c);
        if self.n_embd > 1 << 16
            || self.n_layer > 1 << 12
            || self.n_positions > 1 << 20
            || self.vocab_size > 1 << 24
            || params > 1 << 40
        {
            return Err(Error::invalid(
                "model shape",
                format!(
                    "n_embd {}, n_layer {}, n_positions {}, vocab_size {}",
                    self.n_embd, self.n_layer, self.n_positions, self.vocab_size
                ),
                "too large to be a real GPT-2 (at most 2^16 channels, 2^12 layers, 2^20 \
                 positions, 2^24 tokens and 2^40 parameters); check config.json",
            ));
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err(Error::invalid(
                "layer_norm_epsilon",
                self.layer_norm_epsilon,
                "must be > 0",
            ));
        }
        if self.activation_function != "gelu_new" {
            return Err(Error::invalid(
                "activation_function",
                &self.activation_function,
                "only gelu_new (GPT-2's) is supported",
            ));
        }
        Ok(())
    }

    /// Head size (C / NH).
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Number of parameters of the base model (tied LM head counted once).
    pub fn num_parameters(&self) -> usize {
        let c = self.n_embd;
        let per_layer = 2 * c
            + (c * 3 * c + 3 * c)
            + (c * c + c)
            + 2 * c
            + (c * 4 * c + 4 * c)
            + (4 * c * c + c);
        self.vocab_size * c + self.n_positions * c + self.n_layer * per_layer + 2 * c
    }
}
