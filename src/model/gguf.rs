//! GGUF models (llama.cpp's single-file format) as a model source: `--model file.gguf`.
//!
//! A GGUF file holds the shape (`{arch}.*` metadata), the tokenizer (`tokenizer.ggml.*`) and
//! every tensor, many of them quantized. This module reads the three into what the rest of the
//! crate uses for a Hugging Face directory: a [`ModelConfig`], host weights in the checkpoint's
//! names and layouts, and a [`Tokenizer`].
//!
//! Names: one table per family maps GGUF's names (`blk.{i}.attn_q.weight`) to the checkpoint's
//! (`model.layers.{i}.self_attn.q_proj.weight`, `h.{i}.attn.c_attn.weight`), read both ways
//! ([`checkpoint_name`], [`gguf_name`]). Layouts, as llama.cpp's converter
//! (`convert_hf_to_gguf.py`) writes them:
//! - llama (and mistral, written as llama) q and k rows are permuted for ggml's RoPE
//!   ([`permute_qk`]; [`unpermute_qk`] undoes it); qwen2 and qwen3 are not permuted;
//! - GPT-2's Conv1D weights (`[in, out]`) are transposed to `[out, in]`, and `output.weight` is a
//!   copy of `token_embd.weight` (GPT-2's head is tied);
//! - everything else keeps its checkpoint layout (numpy order, outermost first).
//!
//! Quantized linear weights of a type the GPU kernels read are handed over as they are
//! ([`GgufModel::weights`] with a pass-through predicate), so a Q4_0 file is never expanded to
//! f32 and quantized again; every other tensor is dequantized to f32.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value as Json};

use super::llama::LlamaArch;
use super::{gpt2, llama, Gpt2Config, HostWeights, LlamaConfig, ModelConfig, QuantWeights};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::lora::AdaptableModel;
use crate::quant::{self, GgmlType};
use crate::tokenizer::{SpecialTokens, Tokenizer};

/// The `general.architecture` values this crate trains.
pub const SUPPORTED_ARCHITECTURES: &str = "gpt2, llama (also mistral), qwen2, qwen3";

/// The `tokenizer.ggml.pre` values whose pre-tokenizer is built from the metadata (a byte-level
/// BPE, `tokenizer.ggml.model` = "gpt2"); for any other, put the model's tokenizer.json beside
/// the file.
pub const SUPPORTED_PRE_TOKENIZERS: &str =
    "gpt-2 (also default), llama-bpe (Llama 3), qwen2, smollm";

/// Llama-family tensors per block: (GGUF name after `blk.{i}.`, checkpoint name after
/// `model.layers.{i}.`).
const LLAMA_BLOCK: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_gate.bias", "mlp.gate_proj.bias"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_up.bias", "mlp.up_proj.bias"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("ffn_down.bias", "mlp.down_proj.bias"),
];

/// Llama-family tensors outside the blocks: (GGUF name, checkpoint name).
const LLAMA_STEM: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// GPT-2 tensors per block: (GGUF name after `blk.{i}.`, checkpoint name after `h.{i}.`).
const GPT2_BLOCK: &[(&str, &str)] = &[
    ("attn_norm.weight", "ln_1.weight"),
    ("attn_norm.bias", "ln_1.bias"),
    ("attn_qkv.weight", "attn.c_attn.weight"),
    ("attn_qkv.bias", "attn.c_attn.bias"),
    ("attn_output.weight", "attn.c_proj.weight"),
    ("attn_output.bias", "attn.c_proj.bias"),
    ("ffn_norm.weight", "ln_2.weight"),
    ("ffn_norm.bias", "ln_2.bias"),
    ("ffn_up.weight", "mlp.c_fc.weight"),
    ("ffn_up.bias", "mlp.c_fc.bias"),
    ("ffn_down.weight", "mlp.c_proj.weight"),
    ("ffn_down.bias", "mlp.c_proj.bias"),
];

/// GPT-2 tensors outside the blocks: (GGUF name, checkpoint name).
const GPT2_STEM: &[(&str, &str)] = &[
    ("token_embd.weight", "wte.weight"),
    ("position_embd.weight", "wpe.weight"),
    ("output_norm.weight", "ln_f.weight"),
    ("output_norm.bias", "ln_f.bias"),
];

/// (GGUF name, checkpoint name) pairs.
type NameTable = &'static [(&'static str, &'static str)];

/// A family's tables: stem, block, and the checkpoint's block prefix.
fn tables(config: &ModelConfig) -> (NameTable, NameTable, &'static str) {
    match config {
        ModelConfig::Gpt2(_) => (GPT2_STEM, GPT2_BLOCK, "h."),
        ModelConfig::Llama(_) => (LLAMA_STEM, LLAMA_BLOCK, "model.layers."),
    }
}

/// `{layer}.{rest}` with a canonical layer number.
fn split_layer(name: &str) -> Option<(usize, &str)> {
    let (layer, rest) = name.split_once('.')?;
    let n: usize = layer.parse().ok()?;
    (n.to_string() == layer).then_some((n, rest))
}

/// The checkpoint name of GGUF tensor `gguf` in a model of `config`'s family, if it has one.
pub fn checkpoint_name(config: &ModelConfig, gguf: &str) -> Option<String> {
    let (stem, block, prefix) = tables(config);
    if let Some((_, c)) = stem.iter().find(|(g, _)| *g == gguf) {
        return Some(c.to_string());
    }
    let (layer, rest) = split_layer(gguf.strip_prefix("blk.")?)?;
    let (_, c) = block.iter().find(|(g, _)| *g == rest)?;
    Some(format!("{prefix}{layer}.{c}"))
}

/// The GGUF name of checkpoint tensor `checkpoint` in a model of `config`'s family, if it has
/// one: the inverse of [`checkpoint_name`].
pub fn gguf_name(config: &ModelConfig, checkpoint: &str) -> Option<String> {
    let (stem, block, prefix) = tables(config);
    if let Some((g, _)) = stem.iter().find(|(_, c)| *c == checkpoint) {
        return Some(g.to_string());
    }
    let (layer, rest) = split_layer(checkpoint.strip_prefix(prefix)?)?;
    let (g, _) = block.iter().find(|(_, c)| *c == rest)?;
    Some(format!("blk.{layer}.{g}"))
}

/// How a tensor's GGUF layout differs from its checkpoint layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// The same values in the same order.
    Same,
    /// Rows permuted per head by llama.cpp's converter ([`permute_qk`]), over this many heads.
    Permuted(usize),
    /// A GPT-2 Conv1D weight: `[in, out]` in the checkpoint, `[out, in]` in GGUF.
    Transposed,
}

/// The GGUF layout of checkpoint tensor `name` of `config`.
fn layout(config: &ModelConfig, name: &str) -> Layout {
    match config {
        ModelConfig::Gpt2(_) => {
            let conv1d = [
                "attn.c_attn.weight",
                "attn.c_proj.weight",
                "mlp.c_fc.weight",
                "mlp.c_proj.weight",
            ];
            if conv1d.iter().any(|s| name.ends_with(s)) {
                Layout::Transposed
            } else {
                Layout::Same
            }
        }
        // llama.cpp's converter writes Mistral as llama, permuted likewise.
        ModelConfig::Llama(c) if matches!(c.arch, LlamaArch::Llama | LlamaArch::Mistral) => {
            if name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.q_proj.bias")
            {
                Layout::Permuted(c.num_attention_heads)
            } else if name.ends_with("self_attn.k_proj.weight")
                || name.ends_with("self_attn.k_proj.bias")
            {
                Layout::Permuted(c.num_key_value_heads)
            } else {
                Layout::Same
            }
        }
        ModelConfig::Llama(_) => Layout::Same,
    }
}

/// Rows of `data` (`rows` rows of equal length, any element type: f32 values or a quantized
/// row's bytes) reordered per head: `inverse` false is llama.cpp's `permute(w, heads)` (each
/// head's two rotary halves interleaved), true undoes it.
fn permute_rows<T: Copy>(data: &[T], rows: usize, heads: usize, inverse: bool) -> Vec<T> {
    let row = data.len() / rows.max(1);
    let half = rows / heads.max(1) / 2;
    let mut out = data.to_vec();
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let original = h * 2 * half + s * half + j;
                let permuted = h * 2 * half + j * 2 + s;
                let (to, from) = if inverse {
                    (original, permuted)
                } else {
                    (permuted, original)
                };
                out[to * row..(to + 1) * row].copy_from_slice(&data[from * row..(from + 1) * row]);
            }
        }
    }
    out
}

/// llama.cpp's `permute(w, heads)` of a q or k projection (`rows` rows, nn.Linear layout; a bias
/// is `rows` rows of one value): within each head the rows of the two rotary halves are
/// interleaved, as ggml's RoPE pairs adjacent channels. `rows` must be a multiple of
/// `2 * heads`.
pub fn permute_qk(w: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    permute_rows(w, rows, heads, false)
}

/// The inverse of [`permute_qk`]: a GGUF llama's q or k rows back in Hugging Face's order.
pub fn unpermute_qk(w: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    permute_rows(w, rows, heads, true)
}

/// The number of heads over which llama.cpp's converter permutes the rows of checkpoint
/// tensor `name` of `config` ([`permute_qk`]): a llama q or k projection (its weight, or a
/// LoRA B of it, whose rows are the projection's outputs); `None` for every other tensor.
pub fn qk_permute_heads(config: &ModelConfig, name: &str) -> Option<usize> {
    match layout(config, name) {
        Layout::Permuted(heads) => Some(heads),
        _ => None,
    }
}

/// Checkpoint tensor `name` of `config` (f32 `values` of checkpoint shape `shape`) as
/// llama.cpp's converter stores it: (GGUF name, GGUF shape in numpy order, values), llama's
/// q/k rows permuted and GPT-2's Conv1D weights transposed to `[out, in]`; the inverse of what
/// [`GgufModel::weights`] reads. `None` for a tensor the family's table does not name.
pub fn to_gguf_tensor(
    config: &ModelConfig,
    name: &str,
    shape: &[usize],
    values: &[f32],
) -> Option<(String, Vec<usize>, Vec<f32>)> {
    let g = gguf_name(config, name)?;
    Some(match layout(config, name) {
        Layout::Same => (g, shape.to_vec(), values.to_vec()),
        Layout::Permuted(heads) => (g, shape.to_vec(), permute_qk(values, shape[0], heads)),
        Layout::Transposed => (
            g,
            vec![shape[1], shape[0]],
            super::transformer::transpose(values, shape[0], shape[1]),
        ),
    })
}

/// `general.architecture` as llama.cpp's converter writes it for `config`: Mistral is `llama`.
pub fn gguf_architecture(config: &ModelConfig) -> &str {
    match config {
        ModelConfig::Llama(c) if c.arch == LlamaArch::Mistral => "llama",
        _ => config.architecture(),
    }
}

/// The `{arch}.*` hyperparameters llama.cpp's converter writes for `config` (and
/// `general.architecture`, first), which [`config_of`] reads back into the same shape. A
/// RoPE scaling GGUF metadata cannot express (Llama 3's, which the converter stores as a
/// `rope_freqs` tensor) is an error.
pub fn model_metadata(config: &ModelConfig) -> Result<Vec<(String, Value)>> {
    let arch = gguf_architecture(config);
    let mut m: Vec<(String, Value)> =
        vec![("general.architecture".into(), Value::String(arch.into()))];
    let mut kv = |k: &str, v: Value| m.push((format!("{arch}.{k}"), v));
    let u = |x: usize| Value::U32(x as u32);
    match config {
        ModelConfig::Gpt2(c) => {
            kv("block_count", u(c.n_layer));
            kv("context_length", u(c.n_positions));
            kv("embedding_length", u(c.n_embd));
            kv("feed_forward_length", u(4 * c.n_embd));
            kv("attention.head_count", u(c.n_head));
            kv(
                "attention.layer_norm_epsilon",
                Value::F32(c.layer_norm_epsilon),
            );
            kv("vocab_size", u(c.vocab_size));
        }
        ModelConfig::Llama(c) => {
            let head_dim = c.head_dim();
            kv("block_count", u(c.num_hidden_layers));
            kv("context_length", u(c.max_position_embeddings));
            kv("embedding_length", u(c.hidden_size));
            kv("feed_forward_length", u(c.intermediate_size));
            kv("attention.head_count", u(c.num_attention_heads));
            kv("attention.head_count_kv", u(c.num_key_value_heads));
            kv("rope.freq_base", Value::F32(c.rope.theta as f32));
            kv(
                "attention.layer_norm_rms_epsilon",
                Value::F32(c.rms_norm_eps),
            );
            kv("attention.key_length", u(head_dim));
            kv("attention.value_length", u(head_dim));
            kv("vocab_size", u(c.vocab_size));
            kv("rope.dimension_count", u(head_dim));
            match c.rope.kind {
                super::llama::RopeKind::Default => {}
                super::llama::RopeKind::Linear { factor } => {
                    kv("rope.scaling.type", Value::String("linear".into()));
                    kv("rope.scaling.factor", Value::F32(factor as f32));
                }
                super::llama::RopeKind::Llama3 { .. } => {
                    return Err(Error::invalid(
                        "model",
                        arch,
                        "has Llama 3's RoPE scaling, which GGUF stores as a rope_freqs tensor \
                         lora-wgpu does not write yet: merge into a Hugging Face directory \
                         (--format hf)",
                    ))
                }
            }
        }
    }
    Ok(m)
}

/// `tokenizer.ggml.*` for a byte-level BPE tokenizer, as the converter's `_set_vocab_gpt2`
/// writes them (model "gpt2", the pre-tokenizer's name, tokens, token types, merges, the
/// beginning / end / padding ids of `special`), or why the tokenizer cannot be expressed so
/// that [`GgufModel::metadata_tokenizer`] reads it back: not a BPE, a pre-tokenizer other
/// than those of [`SUPPORTED_PRE_TOKENIZERS`], or a vocabulary of another size than `vocab`.
pub fn tokenizer_metadata(
    tokenizer: &Tokenizer,
    special: &SpecialTokens,
    vocab: usize,
) -> std::result::Result<Vec<(String, Value)>, String> {
    let spec: Json = serde_json::from_str(&tokenizer.to_json().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let model = &spec["model"];
    if model["type"] != "BPE" {
        return Err(format!(
            "its model is {}, not a byte-level BPE",
            model["type"]
        ));
    }
    if model["byte_fallback"] == true {
        return Err("it is a byte-fallback BPE (SentencePiece-style), not a byte-level one".into());
    }
    // Offsets do not change the ids: Qwen2's tokenizer.json says trim_offsets false, Llama 3's true.
    let given = without_trim_offsets(&spec["pre_tokenizer"]);
    let pre = ["gpt-2", "llama-bpe", "qwen2", "smollm"]
        .into_iter()
        .find(|p| pre_tokenizer(p).map(|j| without_trim_offsets(&j)) == Some(given.clone()))
        .ok_or_else(|| {
            format!(
                "its pre-tokenizer is none of those GGUF metadata names that lora-wgpu reads \
                 back ({SUPPORTED_PRE_TOKENIZERS})"
            )
        })?;
    let n = tokenizer.vocab_size();
    if n > vocab {
        return Err(format!(
            "the tokenizer has {n} tokens and the model {vocab} embedding rows: it is not the \
             model's own"
        ));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab];
    let mut put = |t: &str, id: &Json| -> std::result::Result<(), String> {
        let id = id.as_u64().map(|i| i as usize).filter(|&i| i < vocab);
        match id {
            Some(i) => {
                tokens[i] = Some(t.to_string());
                Ok(())
            }
            None => Err(format!(
                "token {t:?} has an id outside the model's {vocab} rows"
            )),
        }
    };
    for (t, id) in model["vocab"].as_object().into_iter().flatten() {
        put(t, id)?;
    }
    // Added tokens: control (3) when special, user-defined (4) otherwise; the rest normal (1).
    let mut added = BTreeMap::new();
    for a in spec["added_tokens"].as_array().into_iter().flatten() {
        let t = a["content"].as_str().unwrap_or_default();
        put(t, &a["id"])?;
        let ty = if a["special"] == true { 3 } else { 4 };
        added.insert(a["id"].as_u64().unwrap_or(u64::MAX) as usize, ty);
    }
    // Embedding rows past the tokenizer's vocabulary (Qwen pads its table to a multiple of
    // 128) get placeholder tokens of type 5 (unused), as llama.cpp's converter writes them.
    let mut unused = BTreeMap::new();
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                unused.insert(i, 5);
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(p) if p.len() == 2 => Ok(Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            ))),
            _ => Err(format!("a merge {m} is not two tokens")),
        })
        .collect::<std::result::Result<_, _>>()?;
    let types: Vec<Value> = (0..vocab)
        .map(|i| Value::I32(added.get(&i).or(unused.get(&i)).copied().unwrap_or(1)))
        .collect();
    let s = |x: &str| Value::String(x.into());
    let mut m = vec![
        ("tokenizer.ggml.model".to_string(), s("gpt2")),
        ("tokenizer.ggml.pre".to_string(), s(pre)),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
    ];
    if let Some(b) = special.bos {
        m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(&e) = special.eos.first() {
        m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    if let Some(p) = special.pad {
        m.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(p)));
    }
    if spec["post_processor"]["type"] == "TemplateProcessing" {
        m.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)));
    }
    Ok(m)
}

/// `j` without its `trim_offsets` fields, at any depth.
fn without_trim_offsets(j: &Json) -> Json {
    match j {
        Json::Object(m) => Json::Object(
            m.iter()
                .filter(|(k, _)| *k != "trim_offsets")
                .map(|(k, v)| (k.clone(), without_trim_offsets(v)))
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(without_trim_offsets).collect()),
        other => other.clone(),
    }
}

/// A GGUF model file: its metadata read into a config, its tensors checked against it.
#[derive(Debug)]
pub struct GgufModel {
    /// The file.
    pub file: GgufFile,
    /// The model's shape, from the metadata.
    pub config: ModelConfig,
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

impl GgufModel {
    /// Open `path` and read its model: the config from the metadata, every tensor checked
    /// against it (present, with its shape; none unknown).
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_file(GgufFile::open(path)?)
    }

    /// [`GgufModel::open`] of a file already read.
    pub fn from_file(file: GgufFile) -> Result<Self> {
        let config = config_of(&file)?;
        check_tensors(&file, &config)?;
        Ok(GgufModel { file, config })
    }

    /// Every tensor in checkpoint names and layouts: those of linear weights whose type
    /// `pass_through` accepts stay in their ggml blocks (the second map, `[out, in]`, llama's
    /// q/k rows un-permuted); all the others are dequantized to f32 (the first).
    pub fn weights(
        &self,
        pass_through: impl Fn(GgmlType) -> bool,
    ) -> Result<(HostWeights, QuantWeights)> {
        let cfg = &self.config;
        let linear: BTreeSet<String> = (0..cfg.num_layers())
            .flat_map(|l| {
                cfg.linear_layers()
                    .into_iter()
                    .map(move |(site, ..)| (l, site))
            })
            .map(|(l, site)| format!("{}.weight", cfg.module_path(l, site)))
            .collect();
        // The embedding and an untied head pass through too where the GPU reads them quantized:
        // a model without a learned position table (see `Transformer::upload_quant`).
        let stem = cfg.stem_names();
        let tables: BTreeSet<String> = if stem.positions.is_none() {
            std::iter::once(stem.embed)
                .chain(stem.head)
                .map(str::to_string)
                .collect()
        } else {
            BTreeSet::new()
        };
        let (mut host, mut quant) = (HostWeights::new(), QuantWeights::new());
        for (name, shape) in checkpoint_shapes(cfg) {
            let g = gguf_name(cfg, &name).expect("every checkpoint tensor has a GGUF name");
            let t = self
                .file
                .tensor(&g)
                .expect("checked when the file was opened");
            let data = self.file.data(t);
            let rows = shape[0];
            let table =
                tables.contains(&name) && cfg.hidden_size().is_multiple_of(t.ty.block_len());
            if (linear.contains(&name) || table) && pass_through(t.ty) {
                let bytes = match layout(cfg, &name) {
                    Layout::Permuted(heads) => permute_rows(data, rows, heads, true),
                    _ => data.to_vec(),
                };
                quant.insert(name, (t.ty, bytes));
                continue;
            }
            let values = quant::dequantize(t.ty, data, t.n_elements()).map_err(|e| {
                bad(
                    self.file.path(),
                    format!("tensor `{g}` ({}): {e}", t.ty.name()),
                )
            })?;
            let values = match layout(cfg, &name) {
                Layout::Same => values,
                Layout::Permuted(heads) => unpermute_qk(&values, rows, heads),
                // GGUF [out, in] into the checkpoint's [in, out] = `shape`.
                Layout::Transposed => super::transformer::transpose(&values, shape[1], shape[0]),
            };
            host.insert(name, values);
        }
        Ok((host, quant))
    }

    /// Every tensor dequantized to f32, in checkpoint names and layouts (what merging and the
    /// CPU paths use).
    pub fn host_weights(&self) -> Result<HostWeights> {
        Ok(self.weights(|_| false)?.0)
    }

    /// The model's tokenizer: a `tokenizer.json` beside the file when there is one, else the one
    /// the metadata describes ([`GgufModel::metadata_tokenizer`]).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let beside = self.file.path().with_file_name("tokenizer.json");
        if beside.is_file() {
            return Tokenizer::from_file(&beside);
        }
        self.metadata_tokenizer()
    }

    /// The tokenizer `tokenizer.ggml.*` describes: a byte-level BPE (`tokenizer.ggml.model` =
    /// "gpt2") from its tokens and merges, with the pre-tokenizer `tokenizer.ggml.pre` names
    /// ([`SUPPORTED_PRE_TOKENIZERS`]), control tokens as special tokens, and the beginning token
    /// added to prompts when `tokenizer.ggml.add_bos_token` says so.
    pub fn metadata_tokenizer(&self) -> Result<Tokenizer> {
        let f = &self.file;
        let path = f.path();
        let beside = path.with_file_name("tokenizer.json");
        let put_beside = format!(
            "put the model's tokenizer.json (its Hugging Face repository has it) beside the file, \
             as {}",
            beside.display()
        );
        let model = f.get_str("tokenizer.ggml.model")?.ok_or_else(|| {
            bad(
                path,
                format!("the file has no tokenizer (no tokenizer.ggml.model); {put_beside}"),
            )
        })?;
        if model != "gpt2" {
            let kind = match model {
                "llama" => " (SentencePiece)",
                "bert" => " (WordPiece)",
                _ => "",
            };
            return Err(bad(
                path,
                format!(
                    "tokenizer.ggml.model is \"{model}\"{kind}: lora-wgpu builds only byte-level \
                     BPE (\"gpt2\") tokenizers from GGUF metadata; {put_beside}"
                ),
            ));
        }
        let pre = f.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let pre_tokenizer = pre_tokenizer(pre).ok_or_else(|| {
            bad(
                path,
                format!(
                    "tokenizer.ggml.pre is \"{pre}\", a pre-tokenizer lora-wgpu does not build \
                     (it builds {SUPPORTED_PRE_TOKENIZERS}); {put_beside}"
                ),
            )
        })?;
        let need = |key: &str| {
            f.get_strings(key)?
                .ok_or_else(|| bad(path, format!("the tokenizer has no {key}; {put_beside}")))
        };
        let tokens = need("tokenizer.ggml.tokens")?;
        let merges = need("tokenizer.ggml.merges")?;
        let types = self.int_array("tokenizer.ggml.token_type")?;
        let vocab: serde_json::Map<String, Json> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), json!(i)))
            .collect();
        let merges: Vec<Json> = merges
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok(json!([a, b])),
                None => Err(bad(
                    path,
                    format!("tokenizer.ggml.merges has \"{m}\", not two tokens"),
                )),
            })
            .collect::<Result<_>>()?;
        // Control (3) and user-defined (4) tokens are matched whole, before pre-tokenization.
        let added: Vec<Json> = types
            .iter()
            .enumerate()
            .filter(|(_, &ty)| ty == 3 || ty == 4)
            .filter_map(|(i, &ty)| {
                Some(
                    json!({"id": i, "content": tokens.get(i)?, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": ty == 3}),
                )
            })
            .collect();
        let bos = f.get_usize("tokenizer.ggml.bos_token_id")?;
        let add_bos = matches!(
            f.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        let post = match bos
            .and_then(|b| Some((b, tokens.get(b)?)))
            .filter(|_| add_bos)
        {
            Some((id, tok)) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {*tok: {"id": tok, "ids": [id], "tokens": [tok]}},
            }),
            None => {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true})
            }
        };
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": if pre == "qwen2" { json!({"type": "NFC"}) } else { Json::Null },
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": pre == "llama-bpe",
                "vocab": vocab, "merges": merges,
            },
        });
        Tokenizer::from_json(&spec.to_string()).map_err(|e| {
            bad(
                path,
                format!("the tokenizer of its metadata is not usable ({e}); {put_beside}"),
            )
        })
    }

    /// The beginning, end and padding tokens `tokenizer.ggml.*_token_id` name (the end-of-turn
    /// token `eot_token_id` is an end token too).
    pub fn special_tokens(&self) -> Result<SpecialTokens> {
        let id = |key: &str| -> Result<Option<u32>> {
            Ok(self
                .file
                .get_usize(key)?
                .and_then(|v| u32::try_from(v).ok()))
        };
        let mut eos: Vec<u32> = id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
        if let Some(eot) = id("tokenizer.ggml.eot_token_id")?.filter(|t| !eos.contains(t)) {
            eos.push(eot);
        }
        Ok(SpecialTokens {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos,
            pad: id("tokenizer.ggml.padding_token_id")?,
        })
    }

    /// Tensors per ggml type: (type, tensors, bytes), in type-id order.
    pub fn type_counts(&self) -> Vec<(GgmlType, usize, u64)> {
        let mut by: BTreeMap<u32, (GgmlType, usize, u64)> = BTreeMap::new();
        for t in self.file.tensors() {
            let e = by.entry(t.ty.id()).or_insert((t.ty, 0, 0));
            e.1 += 1;
            e.2 += t.n_bytes() as u64;
        }
        by.into_values().collect()
    }

    /// An array of integers (`tokenizer.ggml.token_type`); empty when absent.
    fn int_array(&self, key: &str) -> Result<Vec<i64>> {
        match self.file.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match *v {
                    Value::I32(x) => Some(x as i64),
                    Value::U32(x) => Some(x as i64),
                    Value::I64(x) => Some(x),
                    Value::U8(x) => Some(x as i64),
                    Value::I8(x) => Some(x as i64),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    bad(
                        self.file.path(),
                        format!("{key} is not an array of integers"),
                    )
                }),
            Some(v) => Err(bad(
                self.file.path(),
                format!(
                    "{key} is a {}, expected an array of integers",
                    v.type_name()
                ),
            )),
        }
    }
}

/// Llama 3's pre-tokenizer regex (llama.cpp's "llama-bpe").
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's (digits one by one).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer.json pre-tokenizer of a `tokenizer.ggml.pre` value, as the models' own
/// tokenizer.json files spell it.
fn pre_tokenizer(pre: &str) -> Option<Json> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    Some(match pre {
        "gpt-2" | "gpt2" | "default" => byte_level(true),
        "llama-bpe" | "llama3" => split(LLAMA3_REGEX),
        "qwen2" => split(QWEN2_REGEX),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        _ => return None,
    })
}

/// Every checkpoint tensor of `config` with its checkpoint shape.
fn checkpoint_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    match config {
        ModelConfig::Gpt2(c) => gpt2::weights::tensor_shapes(c),
        ModelConfig::Llama(c) => llama::weights::tensor_shapes(c),
    }
}

/// The model's shape from the file's metadata, checked against its tensors' shapes where the
/// two could disagree (the embedding's width and rows, the number of blocks).
pub fn config_of(f: &GgufFile) -> Result<ModelConfig> {
    let path = f.path();
    let arch = f.get_str("general.architecture")?.ok_or_else(|| {
        bad(path, "no general.architecture: not a GGUF model file (a GGUF LoRA adapter or another kind of file?)")
    })?;
    let llama_arch = match arch {
        "gpt2" => None,
        "llama" | "mistral" => Some(LlamaArch::Llama),
        "qwen2" => Some(LlamaArch::Qwen2),
        "qwen3" => Some(LlamaArch::Qwen3),
        other => {
            return Err(bad(
                path,
                format!(
                    "general.architecture is \"{other}\", an architecture lora-wgpu does not train \
                     (it trains {SUPPORTED_ARCHITECTURES})"
                ),
            ))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| -> Result<usize> {
        f.get_usize(&key(k))?
            .ok_or_else(|| bad(path, format!("metadata key {} is missing", key(k))))
    };
    let hidden = need("embedding_length")?;
    let layers = need("block_count")?;
    let heads = need("attention.head_count")?;
    let context = need("context_length")?;
    let embd = f.tensor("token_embd.weight").ok_or_else(|| {
        bad(
            path,
            "missing tensor token_embd.weight (the token embedding)",
        )
    })?;
    let vocab = match f.get_usize(&key("vocab_size"))? {
        Some(v) => v,
        None => match f.get_strings("tokenizer.ggml.tokens")? {
            Some(t) => t.len(),
            None => embd.shape.first().copied().unwrap_or(0),
        },
    };
    if embd.shape != [vocab, hidden] {
        return Err(bad(
            path,
            format!(
                "the metadata contradicts the tensors: token_embd.weight is {:?}, but {} = \
                 {hidden} and the vocabulary has {vocab} tokens (expected [{vocab}, {hidden}])",
                embd.shape,
                key("embedding_length")
            ),
        ));
    }
    let blocks: BTreeSet<usize> = f
        .tensors()
        .iter()
        .filter_map(|t| split_layer(t.name.strip_prefix("blk.")?).map(|(l, _)| l))
        .collect();
    if blocks.len() != layers || blocks.iter().next_back().is_some_and(|&l| l + 1 != layers) {
        return Err(bad(
            path,
            format!(
                "the metadata contradicts the tensors: {} = {layers}, but the file has tensors \
                 for {} blocks ({})",
                key("block_count"),
                blocks.len(),
                match (blocks.first(), blocks.last()) {
                    (Some(a), Some(b)) => format!("blk.{a} to blk.{b}"),
                    _ => "none".into(),
                }
            ),
        ));
    }
    if heads == 0 {
        return Err(bad(path, format!("{} is 0", key("attention.head_count"))));
    }
    let Some(arch_l) = llama_arch else {
        if hidden % heads != 0 {
            return Err(bad(
                path,
                format!(
                    "{} = {heads} does not divide {} = {hidden}",
                    key("attention.head_count"),
                    key("embedding_length")
                ),
            ));
        }
        let cfg = Gpt2Config {
            n_embd: hidden,
            n_layer: layers,
            n_head: heads,
            n_positions: context,
            vocab_size: vocab,
            layer_norm_epsilon: f
                .get_f32(&key("attention.layer_norm_epsilon"))?
                .unwrap_or(1e-5),
            activation_function: "gelu_new".into(),
        };
        cfg.validate().map_err(|e| bad(path, e.to_string()))?;
        return Ok(cfg.into());
    };
    let kv_heads = f
        .get_usize(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(bad(
            path,
            format!(
                "{} = {kv_heads} does not divide {} = {heads}",
                key("attention.head_count_kv"),
                key("attention.head_count")
            ),
        ));
    }
    let head_dim = match f.get_usize(&key("attention.key_length"))? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(bad(
                path,
                format!(
                    "{} = {heads} does not divide {} = {hidden} (and no {} gives the head size)",
                    key("attention.head_count"),
                    key("embedding_length"),
                    key("attention.key_length")
                ),
            ))
        }
    };
    if let Some(v) = f
        .get_usize(&key("attention.value_length"))?
        .filter(|&v| v != head_dim)
    {
        return Err(bad(
            path,
            format!(
                "{} = {v} differs from the key size {head_dim}: not a Llama-family attention",
                key("attention.value_length")
            ),
        ));
    }
    if let Some(r) = f
        .get_usize(&key("rope.dimension_count"))?
        .filter(|&r| r != head_dim)
    {
        return Err(bad(
            path,
            format!(
                "{} = {r} but the heads have {head_dim} channels: partial RoPE is not supported",
                key("rope.dimension_count")
            ),
        ));
    }
    if f.tensor("rope_freqs.weight").is_some() {
        return Err(bad(
            path,
            "the file has rope_freqs.weight (RoPE frequency factors, Llama 3.1 and later): \
             not supported yet; use the Hugging Face directory of the model instead",
        ));
    }
    let mut rope_scaling = Json::Null;
    match f.get_str(&key("rope.scaling.type"))? {
        None | Some("none") => {}
        Some("linear") => {
            let factor = f.get_f32(&key("rope.scaling.factor"))?.ok_or_else(|| {
                bad(
                    path,
                    format!("linear RoPE scaling without {}", key("rope.scaling.factor")),
                )
            })?;
            rope_scaling = json!({"rope_type": "linear", "factor": factor});
        }
        Some(other) => {
            return Err(bad(
                path,
                format!(
                    "{} is \"{other}\": only linear RoPE scaling is read from GGUF",
                    key("rope.scaling.type")
                ),
            ))
        }
    }
    let ffn = need("feed_forward_length")?;
    let has = |name: &str| f.tensor(name).is_some();
    let special = |k: &str| {
        f.get_usize(k)
            .map(|v| v.map(Json::from).unwrap_or(Json::Null))
    };
    let model_type = arch_l.model_type();
    let class = match arch_l {
        LlamaArch::Llama => "LlamaForCausalLM",
        LlamaArch::Qwen2 => "Qwen2ForCausalLM",
        LlamaArch::Qwen3 => "Qwen3ForCausalLM",
        LlamaArch::Mistral => "MistralForCausalLM",
    };
    let mut value = json!({
        "model_type": model_type,
        "architectures": [class],
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": context,
        "rms_norm_eps": f.get_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        "rope_theta": f.get_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": !has("output.weight"),
        "attention_bias": has("blk.0.attn_q.bias"),
        "mlp_bias": has("blk.0.ffn_gate.bias"),
        "hidden_act": "silu",
        "bos_token_id": special("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": special("tokenizer.ggml.eos_token_id")?,
        "torch_dtype": "float32",
    });
    if arch_l != LlamaArch::Llama {
        value["use_sliding_window"] = json!(false);
        value["sliding_window"] = Json::Null;
    }
    LlamaConfig::from_value(value).map(Into::into).map_err(|e| {
        bad(
            path,
            format!("the metadata does not describe a usable model: {e}"),
        )
    })
}

/// Every tensor `config` needs is in `f` with its shape, and `f` has no other (GPT-2's
/// `output.weight`, the converter's copy of the tied embedding, must equal `token_embd.weight`).
/// One error lists every problem.
fn check_tensors(f: &GgufFile, config: &ModelConfig) -> Result<()> {
    let mut problems = Vec::new();
    let mut expected = BTreeSet::new();
    for (name, shape) in checkpoint_shapes(config) {
        let g = gguf_name(config, &name).expect("every checkpoint tensor has a GGUF name");
        let want: Vec<usize> = match layout(config, &name) {
            Layout::Transposed => shape.iter().rev().copied().collect(),
            _ => shape.clone(),
        };
        match f.tensor(&g) {
            None => problems.push(format!("missing tensor {g} ({name}, {want:?})")),
            Some(t) if t.shape != want => problems.push(format!(
                "tensor {g} is {:?}, expected {want:?} from the metadata",
                t.shape
            )),
            Some(_) => {}
        }
        expected.insert(g);
    }
    let gpt2 = matches!(config, ModelConfig::Gpt2(_));
    for t in f.tensors() {
        if expected.contains(&t.name) {
            continue;
        }
        if gpt2 && t.name == "output.weight" {
            let tied = f
                .tensor("token_embd.weight")
                .is_some_and(|e| e.ty == t.ty && e.shape == t.shape && f.data(e) == f.data(t));
            if !tied {
                problems.push(
                    "output.weight differs from token_embd.weight: GPT-2's head is the token \
                     embedding, an untied GPT-2 head is not supported"
                        .into(),
                );
            }
            continue;
        }
        let why = match checkpoint_name(config, &t.name) {
            Some(c) => format!(" ({c}: the metadata describes a model without it)"),
            None => String::new(),
        };
        problems.push(format!("unexpected tensor {}{why}", t.name));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    problems.truncate(12);
    Err(bad(
        f.path(),
        format!(
            "the tensors do not match the {} model its metadata describes ({n} problem{}): {}",
            config.architecture(),
            if n == 1 { "" } else { "s" },
            problems.join("; ")
        ),
    ))
}

/// Whether `path` names a GGUF file (by its extension).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_matches_llama_cpp_and_round_trips() {
        // 2 heads of 4 rows, 1 column: rows [h0: 0 1 | 2 3, h1: 4 5 | 6 7] interleave their
        // halves as llama.cpp's permute does: (n_head, 2, 2, 1) swapped to (n_head, 2, 2, 1).
        let w: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(permute_qk(&w, 8, 2), [0., 2., 1., 3., 4., 6., 5., 7.]);
        let w: Vec<f32> = (0..48).map(|i| i as f32).collect();
        assert_eq!(unpermute_qk(&permute_qk(&w, 12, 2), 12, 2), w);
        assert_ne!(permute_qk(&w, 12, 2), w);
    }

    #[test]
    fn names_map_both_ways() {
        for preset in ["llama-tiny", "qwen3-0.6b", "tiny"] {
            let cfg = ModelConfig::named(preset).unwrap();
            for (name, _) in checkpoint_shapes(&cfg) {
                let g = gguf_name(&cfg, &name).unwrap_or_else(|| panic!("{preset}: {name}"));
                assert_eq!(checkpoint_name(&cfg, &g).as_deref(), Some(name.as_str()));
            }
        }
        let cfg = ModelConfig::named("llama-tiny").unwrap();
        assert_eq!(
            gguf_name(&cfg, "model.layers.3.self_attn.k_proj.weight").unwrap(),
            "blk.3.attn_k.weight"
        );
        assert_eq!(checkpoint_name(&cfg, "blk.01.attn_k.weight"), None);
        assert_eq!(checkpoint_name(&cfg, "rope_freqs.weight"), None);
        let gpt2 = ModelConfig::named("tiny").unwrap();
        assert_eq!(
            gguf_name(&gpt2, "h.0.attn.c_attn.weight").unwrap(),
            "blk.0.attn_qkv.weight"
        );
        assert_eq!(layout(&gpt2, "h.0.mlp.c_proj.weight"), Layout::Transposed);
        assert_eq!(layout(&gpt2, "h.0.mlp.c_proj.bias"), Layout::Same);
    }
}
