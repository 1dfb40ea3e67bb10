//! Merging PEFT LoRA adapters into a model's weights, and writing the result as a Hugging Face
//! directory of the same architecture that transformers' `from_pretrained` loads
//! ([`save_hf_dir`]) or as one GGUF file that llama.cpp loads ([`save_gguf`]).
//!
//! PEFT keeps A (r, in) and B (out, r) in `nn.Linear` layout. A Llama-family weight is
//! `nn.Linear` too ([out, in]), so a merge adds `scale · lora_scale · B A` to it; GPT-2's
//! linear layers are Conv1D with weights stored [in, out] (`fan_in_fan_out = true`), so it adds
//! `scale · lora_scale · (B A)ᵀ`. lora_scale is alpha / r (alpha / √r with rsLoRA).
//!
//! ```no_run
//! use std::path::Path;
//! use lora_wgpu::merge::merge_dirs;
//!
//! # fn main() -> lora_wgpu::Result<()> {
//! let summary = merge_dirs(
//!     Path::new("gpt2"),
//!     &[(Path::new("runs/adapter").to_path_buf(), 1.0)],
//!     Path::new("gpt2-merged"),
//!     false,
//! )?;
//! println!("merged {} modules", summary.modules);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsio::{self, io_err, write_synced};
use crate::lora::peft;
use crate::lora::{AdaptableModel, LoraConfig, LoraLayout};
use crate::model::source::load_weights;
use crate::model::{gpt2, llama, Gpt2Config, HostWeights, ModelConfig, ModelSource, ToConfig};
use crate::quant::{self, GgmlType};
use crate::tokenizer::{SpecialTokens, Tokenizer, EOT};

/// Files of a model directory that say how to tokenize and generate, copied into a merged
/// Llama-family directory when the base has them.
const SIDE_FILES: [&str; 4] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Add `scale · lora_scale · B A` of every module the adapter targets to its weight in
/// `weights` (keyed by the module's path + `.weight`, e.g. `h.0.attn.c_attn.weight` [in, out]
/// or `model.layers.0.self_attn.q_proj.weight` [out, in]). `adapter` is the adapter's config,
/// its flat layout (as [`LoraLayout::new`] builds it for `cfg`) and its flat parameters (as
/// [`peft::load`] returns them). `scale` 1 merges, -1 unmerges; several adapters merge by
/// calling this once for each. A DoRA adapter's weight becomes `m / ‖W + s·B A‖ · (W + s·B A)`
/// per output feature, as PEFT's merge writes it (the bias is left as it is).
///
/// Everything is checked before anything is changed: on error `weights` is untouched.
pub fn merge_into(
    weights: &mut HostWeights,
    cfg: &impl ToConfig,
    adapter: (&LoraConfig, &LoraLayout, &[f32]),
    scale: f32,
) -> Result<usize> {
    let cfg = &cfg.to_config();
    let (lora, layout, params) = adapter;
    cfg.validate()?;
    if !scale.is_finite() {
        return Err(Error::invalid(
            "merge scale",
            scale,
            "must be a finite number",
        ));
    }
    let expected = LoraLayout::new(cfg, lora)?;
    if &expected != layout {
        return Err(Error::shape(
            "merge_into",
            "the adapter's layout is not the one its LoRA config gives for this model: build it with LoraLayout::new(model config, lora config)",
        ));
    }
    if params.len() != layout.len {
        return Err(Error::shape(
            "merge_into",
            format!(
                "{} adapter parameters given for a layout of {}",
                params.len(),
                layout.len
            ),
        ));
    }
    let r = layout.r;
    for e in &layout.entries {
        let key = format!("{}.weight", e.path);
        match weights.get(&key) {
            Some(w) if w.len() == e.d_in * e.d_out => {}
            Some(w) => {
                return Err(Error::shape(
                    "merge_into",
                    format!(
                        "{key} has {} values, expected {} x {}",
                        w.len(),
                        e.d_in,
                        e.d_out
                    ),
                ))
            }
            None => {
                return Err(Error::shape(
                    "merge_into",
                    format!("the model weights have no {key}"),
                ))
            }
        }
    }
    if lora.use_dora && scale < 0.0 {
        return Err(Error::invalid(
            "merge scale",
            scale,
            "a DoRA adapter cannot be taken out again by merging it with a negative scale \
             (DoRA rescales the whole weight): merge into the original base instead",
        ));
    }
    let s = scale as f64 * lora.scale() as f64;
    let fan_in_fan_out = cfg.fan_in_fan_out();
    for e in &layout.entries {
        let key = format!("{}.weight", e.path);
        let Some(w) = weights.get_mut(&key) else {
            continue; // checked above
        };
        let a = &params[e.a_offset..e.a_offset + r * e.d_in]; // (r, d_in)
        let b = &params[e.b_offset..e.b_offset + e.d_out * r]; // (d_out, r)
        let (d_in, d_out) = (e.d_in, e.d_out);
        // [in, out] (Conv1D) or [out, in] (nn.Linear).
        let at = |k: usize, n: usize| {
            if fan_in_fan_out {
                k * d_out + n
            } else {
                n * d_in + k
            }
        };
        // W + s · B A, in f64.
        let mut merged: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let mut a_col = vec![0.0f64; r];
        for k in 0..d_in {
            for (j, v) in a_col.iter_mut().enumerate() {
                *v = a[j * d_in + k] as f64;
            }
            for n in 0..d_out {
                let dot: f64 = b[n * r..(n + 1) * r]
                    .iter()
                    .zip(&a_col)
                    .map(|(&bv, &av)| bv as f64 * av)
                    .sum();
                merged[at(k, n)] += s * dot;
            }
        }
        // DoRA: each output feature's column of W + s · B A rescaled to its magnitude.
        if let Some(m_offset) = e.m_offset {
            let magnitude = &params[m_offset..m_offset + d_out];
            for (n, &mag) in magnitude.iter().enumerate() {
                let norm = (0..d_in)
                    .map(|k| merged[at(k, n)].powi(2))
                    .sum::<f64>()
                    .sqrt();
                let c = mag as f64 / norm;
                for k in 0..d_in {
                    merged[at(k, n)] *= c;
                }
            }
        }
        for (dst, v) in w.iter_mut().zip(merged) {
            *dst = v as f32;
        }
    }
    Ok(layout.entries.len())
}

/// What [`merge_dirs`] or [`merge_model`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeSummary {
    /// The base model's shape.
    pub config: ModelConfig,
    /// Adapters merged.
    pub adapters: usize,
    /// Modules changed, counted once per adapter.
    pub modules: usize,
}

/// Load the Hugging Face model directory `base`, merge each PEFT adapter directory of
/// `adapters` with its scale, in order ([`merge_into`]), and write the result to `out`
/// ([`save_hf_dir`]) with the base's tokenizer files (GPT-2's tokenizer when a GPT-2 base has
/// none).
pub fn merge_dirs(
    base: &Path,
    adapters: &[(PathBuf, f32)],
    out: &Path,
    overwrite: bool,
) -> Result<MergeSummary> {
    if adapters.is_empty() {
        return Err(Error::invalid(
            "adapters",
            "none",
            "give at least one PEFT adapter directory to merge",
        ));
    }
    check_merge_out(out, overwrite)?;
    if let Ok(o) = out.canonicalize() {
        for input in std::iter::once(base).chain(adapters.iter().map(|(p, _)| p.as_path())) {
            if input.canonicalize().is_ok_and(|i| i == o) {
                return Err(Error::Format {
                    path: out.to_path_buf(),
                    detail: "is one of the inputs (the base model or an adapter): write the merged model to another directory".into(),
                });
            }
        }
    }
    let source = ModelSource::Dir(base.to_path_buf());
    source.local_dir()?;
    let cfg = source.config()?;
    let mut w = load_weights(base, &cfg)?;
    let tok = source.tokenizer_for(&cfg)?;
    let modules = merge_adapters(&mut w, &cfg, adapters)?;
    save_hf_dir(out, &cfg, &w, &tok, Some(base), overwrite)?;
    Ok(MergeSummary {
        config: cfg,
        adapters: adapters.len(),
        modules,
    })
}

/// Merge each PEFT adapter directory of `adapters` (loaded with [`peft::load`] for `cfg`) into
/// `weights` with its scale, in order ([`merge_into`]). Returns the modules changed, counted once
/// per adapter. An adapter that fails to load or merge leaves the ones before it merged.
pub fn merge_adapters(
    weights: &mut HostWeights,
    cfg: &ModelConfig,
    adapters: &[(PathBuf, f32)],
) -> Result<usize> {
    let mut modules = 0;
    for (dir, scale) in adapters {
        let (lora, layout, params) = peft::load(dir, cfg)?;
        modules += merge_into(weights, cfg, (&lora, &layout, &params), *scale)?;
    }
    Ok(modules)
}

/// Merge `adapters` into the model `source` names and write a Hugging Face directory to
/// `out`: a local directory goes through [`merge_dirs`]; built-in or random weights are merged
/// in memory ([`merge_adapters`]) and written with the source's tokenizer ([`save_hf_dir`]).
pub fn merge_model(
    source: &ModelSource,
    adapters: &[(PathBuf, f32)],
    out: &Path,
    overwrite: bool,
) -> Result<MergeSummary> {
    if let Some(dir) = source.local_dir()? {
        return merge_dirs(&dir, adapters, out, overwrite);
    }
    let cfg = source.config()?;
    let mut w = source.host_weights(&cfg)?;
    let modules = merge_adapters(&mut w, &cfg, adapters)?;
    save_hf_dir(out, &cfg, &w, &source.tokenizer_for(&cfg)?, None, overwrite)?;
    Ok(MergeSummary {
        config: cfg,
        adapters: adapters.len(),
        modules,
    })
}

/// A full Hugging Face GPT-2 `config.json` for `cfg`. Dropout rates are GPT-2's published
/// ones (they do not change inference); bos/eos are `<|endoftext|>` (50256) when the
/// vocabulary has it, else null.
pub fn hf_config_json(cfg: &Gpt2Config) -> serde_json::Value {
    let eot = (cfg.vocab_size > EOT as usize).then_some(EOT);
    serde_json::json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "activation_function": cfg.activation_function,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "attn_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "resid_pdrop": 0.1,
        "summary_first_dropout": 0.1,
        "summary_type": "cls_index",
        "summary_use_proj": true,
        "summary_activation": null,
        "summary_proj_to_labels": true,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "use_cache": true,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "dtype": "float32",
    })
}

/// The rule for a merged model's directory, stricter than a training run's
/// ([`RunDir::check`](crate::train::RunDir::check)): errors unless `out` is absent, an empty
/// directory, or a directory and `overwrite`.
fn check_merge_out(out: &Path, overwrite: bool) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(out, e)),
        Ok(m) if !m.is_dir() => Err(Error::Format {
            path: out.to_path_buf(),
            detail: "exists and is not a directory: give a path for a new directory".into(),
        }),
        Ok(_) => {
            let mut entries = std::fs::read_dir(out).map_err(|e| io_err(out, e))?;
            if entries.next().is_some() && !overwrite {
                Err(Error::Format {
                    path: out.to_path_buf(),
                    detail: "exists and is not empty: give a new directory, or pass --overwrite to replace it".into(),
                })
            } else {
                Ok(())
            }
        }
    }
}

/// Every tensor of a checkpoint of `cfg`'s family, by the name its host weights use.
fn tensor_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    match cfg {
        ModelConfig::Gpt2(c) => gpt2::weights::tensor_shapes(c),
        ModelConfig::Llama(c) => llama::weights::tensor_shapes(c),
    }
}

/// Write the files of a Hugging Face directory into `dir` (which exists and is empty).
fn write_files(
    dir: &Path,
    cfg: &ModelConfig,
    w: &HostWeights,
    tokenizer: &Tokenizer,
    base: Option<&Path>,
) -> Result<()> {
    let (config, prefix) = match cfg {
        ModelConfig::Gpt2(c) => (hf_config_json(c), "transformer."),
        ModelConfig::Llama(c) => (c.raw.clone(), ""),
    };
    let config = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::shape("save_hf_dir", e.to_string()))?;
    write_synced(&dir.join("config.json"), config.as_bytes())?;

    let views = tensor_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let data = w.get(&name).map(Vec::as_slice).unwrap_or_default();
            (
                format!("{prefix}{name}"),
                crate::tensor_file::F32View { shape, data },
            )
        })
        .collect::<Vec<_>>();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let st = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &st).map_err(|e| Error::Format {
        path: st.clone(),
        detail: format!("writing safetensors: {e}"),
    })?;
    fsio::sync_file(&st)?;

    write_synced(&dir.join("tokenizer.json"), tokenizer.to_json()?.as_bytes())?;
    if let ModelConfig::Llama(_) = cfg {
        for f in SIDE_FILES {
            if let Some(from) = base.map(|b| b.join(f)).filter(|p| p.is_file()) {
                let bytes = std::fs::read(&from).map_err(|e| io_err(&from, e))?;
                write_synced(&dir.join(f), &bytes)?;
            }
        }
    } else if tokenizer.token_to_id("<|endoftext|>").is_some() {
        let tc = serde_json::json!({
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "add_prefix_space": false,
            "add_bos_token": false,
            "model_max_length": cfg.max_positions(),
            "clean_up_tokenization_spaces": false,
        });
        let text = serde_json::to_string_pretty(&tc)
            .map_err(|e| Error::shape("save_hf_dir", e.to_string()))?;
        write_synced(&dir.join("tokenizer_config.json"), text.as_bytes())?;
    }
    Ok(())
}

/// Write a Hugging Face model directory of `cfg`'s architecture. GPT-2: `config.json`
/// ([`hf_config_json`]), `model.safetensors` (f32, keys `transformer.h.0.attn.c_attn.weight`
/// and so on, Conv1D weights [in, out], the LM head tied to `wte` and not stored, metadata
/// `{"format": "pt"}`), `tokenizer.json`, and a `tokenizer_config.json` naming
/// `<|endoftext|>` as bos/eos/unk when the tokenizer has it. Llama family: `config.json` as
/// it was read, `model.safetensors` (f32, transformers' names), `tokenizer.json`, and the
/// tokenizer and generation files of `base` (`tokenizer_config.json`, its chat template,
/// `generation_config.json`, ...) when given.
///
/// Atomic: the files go into a temporary sibling directory, are flushed to disk, and the
/// directory is renamed into place, so `out` is never seen half-written. An existing non-empty
/// `out` is an error unless `overwrite`; then the old directory is renamed aside, the new one
/// renamed in, and the old one deleted.
pub fn save_hf_dir(
    out: &Path,
    cfg: &impl ToConfig,
    weights: &HostWeights,
    tokenizer: &Tokenizer,
    base: Option<&Path>,
    overwrite: bool,
) -> Result<()> {
    let cfg = &cfg.to_config();
    cfg.validate()?;
    if let ModelConfig::Llama(c) = cfg {
        if !c.raw.is_object() {
            return Err(Error::invalid(
                "model",
                cfg.architecture(),
                "a merged Llama-family model is written with its config.json as read: merge into a model directory",
            ));
        }
    }
    let shapes = tensor_shapes(cfg);
    for (name, shape) in &shapes {
        let n: usize = shape.iter().product();
        match weights.get(name) {
            Some(v) if v.len() == n => {}
            Some(v) => {
                return Err(Error::shape(
                    "save_hf_dir",
                    format!("{name} has {} values, expected {shape:?}", v.len()),
                ))
            }
            None => {
                return Err(Error::shape(
                    "save_hf_dir",
                    format!("the weights have no {name}"),
                ))
            }
        }
    }
    if weights.len() != shapes.len() {
        let mut extra: Vec<_> = weights
            .keys()
            .filter(|k| !shapes.iter().any(|(n, _)| n == *k))
            .cloned()
            .collect();
        extra.sort();
        return Err(Error::shape(
            "save_hf_dir",
            format!(
                "tensors a {} model does not have: {}",
                cfg.architecture(),
                extra.join(", ")
            ),
        ));
    }
    check_merge_out(out, overwrite)?;
    fsio::replace_dir(out, |tmp| write_files(tmp, cfg, weights, tokenizer, base))
}

/// The types a `--quantize` of a merged GGUF tries for a 2-D tensor, from the one asked for on,
/// until one whose block divides the rows: llama.cpp falls back the same way when a row is not
/// a multiple of the block. F16 takes any row.
const QUANT_FALLBACK: [GgmlType; 4] = [
    GgmlType::Q4_K,
    GgmlType::Q4_0,
    GgmlType::Q8_0,
    GgmlType::F16,
];

/// The types `merge --format gguf --quantize` writes.
pub const GGUF_QUANT: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K];

/// What [`save_gguf`] wrote besides the weights: tensors stored at another type than asked
/// (rows not a multiple of the block) and why the tokenizer is missing, if it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufReport {
    /// (GGUF tensor name, type asked for, type written).
    pub fallbacks: Vec<(String, GgmlType, GgmlType)>,
    /// Why the file has no `tokenizer.ggml.*` metadata (None: it has them).
    pub no_tokenizer: Option<String>,
}

/// llama.cpp's `general.file_type` of a file whose 2-D tensors are `quantize` (F32 if None).
fn file_type(quantize: Option<GgmlType>) -> u32 {
    match quantize {
        None | Some(GgmlType::F32) => 0,
        Some(GgmlType::F16) => 1,
        Some(GgmlType::Q4_0) => 2,
        Some(GgmlType::Q8_0) => 7,
        Some(GgmlType::Q4_K) => 14,
        Some(_) => 0,
    }
}

/// Write a model of `cfg` with host weights `weights` (checkpoint names and layouts) as one
/// GGUF file `out`, laid out as llama.cpp's `convert_hf_to_gguf.py` writes it: its names,
/// llama's q/k permutation and GPT-2's transposition ([`crate::model::gguf::to_gguf_tensor`]),
/// GPT-2's tied head stored again as `output.weight`, the hyperparameters that
/// [`config_of`](crate::model::gguf::config_of) reads back
/// ([`model_metadata`](crate::model::gguf::model_metadata)) and, when `tokenizer` can be
/// expressed ([`tokenizer_metadata`](crate::model::gguf::tokenizer_metadata)), its
/// `tokenizer.ggml.*`. 1-D tensors (norms, biases) are F32; 2-D ones F32, or `quantize`
/// (Q8_0, Q4_0 or Q4_K) with the fallbacks of [`GgufReport`] for rows the block does not
/// divide. Atomic; an existing `out` is an error unless `overwrite`.
pub fn save_gguf(
    out: &Path,
    cfg: &ModelConfig,
    weights: &HostWeights,
    tokenizer: Option<(&Tokenizer, &SpecialTokens)>,
    quantize: Option<GgmlType>,
    overwrite: bool,
) -> Result<GgufReport> {
    use crate::gguf::{GgufWriter, Value};
    use crate::model::gguf::{model_metadata, to_gguf_tensor, tokenizer_metadata};
    cfg.validate()?;
    let chain: &[GgmlType] = match quantize {
        None | Some(GgmlType::F32) => &[GgmlType::F32],
        Some(t) => match QUANT_FALLBACK.iter().position(|&q| q == t) {
            Some(i) if t != GgmlType::F16 => &QUANT_FALLBACK[i..],
            _ => {
                return Err(Error::invalid(
                    "quantize",
                    t,
                    format!(
                        "a merged GGUF is written as f32 or one of {}",
                        crate::quant::names(&GGUF_QUANT)
                    ),
                ))
            }
        },
    };
    crate::lora::gguf::check_out_file(out, overwrite)?;
    let mut w = GgufWriter::new();
    for (k, v) in model_metadata(cfg)? {
        w.add(&k, v);
    }
    w.add("general.type", Value::String("model".into()));
    w.add("general.file_type", Value::U32(file_type(quantize)));
    w.add("general.quantization_version", Value::U32(2));
    let mut report = GgufReport::default();
    match tokenizer {
        None => report.no_tokenizer = Some("the base model has no tokenizer".into()),
        Some((tok, special)) => match tokenizer_metadata(tok, special, cfg.vocab_size()) {
            Ok(meta) => {
                for (k, v) in meta {
                    w.add(&k, v);
                }
            }
            Err(why) => report.no_tokenizer = Some(why),
        },
    }
    let mut tensors = Vec::new();
    for (name, shape) in tensor_shapes(cfg) {
        let n: usize = shape.iter().product();
        let values = match weights.get(&name) {
            Some(v) if v.len() == n => v,
            _ => {
                return Err(Error::shape(
                    "save_gguf",
                    format!("the weights have no {name} of shape {shape:?}"),
                ))
            }
        };
        tensors.push(
            to_gguf_tensor(cfg, &name, &shape, values)
                .ok_or_else(|| Error::shape("save_gguf", format!("{name} has no GGUF name")))?,
        );
    }
    if let ModelConfig::Gpt2(_) = cfg {
        // The converter writes GPT-2's tied head again, as output.weight.
        if let Some((_, shape, data)) = tensors.iter().find(|t| t.0 == "token_embd.weight") {
            tensors.push(("output.weight".into(), shape.clone(), data.clone()));
        }
    }
    for (g, shape, data) in tensors {
        let row = shape[shape.len() - 1];
        let ty = if shape.len() < 2 {
            GgmlType::F32
        } else {
            let ty = chain
                .iter()
                .copied()
                .find(|t| row.is_multiple_of(t.block_len()))
                .unwrap_or(GgmlType::F32);
            if ty != chain[0] {
                report.fallbacks.push((g.clone(), chain[0], ty));
            }
            ty
        };
        let bytes = quant::quantize(ty, &data)
            .map_err(|e| Error::shape("save_gguf", format!("{g}: {e}")))?;
        w.add_tensor(&g, &shape, ty, bytes)?;
    }
    w.write(out)?;
    Ok(report)
}

/// Merge `adapters` into the model `source` names ([`merge_adapters`]) and write one GGUF file
/// `out` ([`save_gguf`]) with the source's tokenizer when it has one that GGUF metadata can
/// express.
pub fn merge_model_gguf(
    source: &ModelSource,
    adapters: &[(PathBuf, f32)],
    out: &Path,
    quantize: Option<GgmlType>,
    overwrite: bool,
) -> Result<(MergeSummary, GgufReport)> {
    if adapters.is_empty() {
        return Err(Error::invalid(
            "adapters",
            "none",
            "give at least one PEFT adapter directory to merge",
        ));
    }
    crate::lora::gguf::check_out_file(out, overwrite)?;
    let cfg = source.config()?;
    let mut w = source.host_weights(&cfg)?;
    let modules = merge_adapters(&mut w, &cfg, adapters)?;
    let tok = source.tokenizer_for(&cfg);
    let special = match &tok {
        Ok(t) => Some(source.special_tokens(&cfg, t)?),
        Err(_) => None,
    };
    let mut report = save_gguf(
        out,
        &cfg,
        &w,
        tok.as_ref().ok().zip(special.as_ref()),
        quantize,
        overwrite,
    )?;
    if let Err(e) = &tok {
        report.no_tokenizer = Some(format!(
            "the base model's tokenizer could not be read ({e})"
        ));
    }
    Ok((
        MergeSummary {
            config: cfg,
            adapters: adapters.len(),
            modules,
        },
        report,
    ))
}
