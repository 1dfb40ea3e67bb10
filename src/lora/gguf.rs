//! PEFT adapters as GGUF LoRA files, the adapter format of llama.cpp (`llama-cli --lora`,
//! `llama-server --lora`, `llama-export-lora`).
//!
//! The file is the one llama.cpp's `convert_lora_to_gguf.py` writes with its default
//! `--outtype f32`: metadata `general.architecture` (the base's), `general.type` = "adapter",
//! `adapter.type` = "lora", `adapter.lora.alpha` (f32) and `general.quantization_version`; per
//! adapted module two F32 tensors named after the base's GGUF tensor ([`gguf_name`]),
//! `blk.N.attn_q.weight.lora_a` = A `[r, in]` and `.lora_b` = B `[out, r]` (numpy order), in
//! the order of the adapter's tensor names.
//! llama.cpp applies `W x + alpha / r · B (A x)`.
//!
//! Layouts follow the base's GGUF tensors:
//! - llama (not qwen2 / qwen3): the base's q and k rows are permuted for ggml's RoPE, so B's
//!   rows (the projection's outputs) are permuted the same way; A is unchanged.
//! - GPT-2: the base's Conv1D weights are stored `[out, in]` in GGUF, like every linear weight,
//!   and PEFT's A `[r, in]` and B `[out, r]` already fit them: they are written unchanged.
//!   (The converter transposes the LoRA as if PEFT had stored it `[in, out]`, which gives A
//!   and B shapes that llama.cpp refuses for `attn_qkv` and `ffn_up`.)
//!
//! Scaling: llama.cpp scales every module by `adapter.lora.alpha / r`. A plain adapter stores
//! its `lora_alpha`, as the converter does; an rsLoRA adapter (scale alpha / √r) stores
//! alpha · √r, so llama.cpp applies PEFT's scale (the converter stores alpha unchanged and
//! the adapter then acts √r times weaker).
//!
//! Refused: DoRA adapters (llama.cpp has no magnitude vectors). An adapter that PiSSA or OLoRA
//! initialised is a plain LoRA once PEFT has converted it, and exports as one.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gguf::{GgufWriter, Value};
use crate::lora::{peft, LoraConfig, LoraLayout};
use crate::model::gguf::{gguf_name, permute_qk, qk_permute_heads};
use crate::model::ModelConfig;
use crate::quant::GgmlType;

/// What [`export_gguf`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSummary {
    /// `general.architecture` of the file.
    pub architecture: String,
    /// Modules written (two tensors each).
    pub modules: usize,
    /// Rank.
    pub r: usize,
    /// `adapter.lora.alpha` as written.
    pub alpha: f32,
}

/// The GGUF LoRA of a PEFT adapter in memory: `lora` and `layout` as [`peft::load`] returns
/// them for `config`, `params` the flat parameters. Returns the writer (not yet written) and
/// what it holds.
pub fn gguf_lora(
    config: &ModelConfig,
    lora: &LoraConfig,
    layout: &LoraLayout,
    params: &[f32],
) -> Result<(GgufWriter, ExportSummary)> {
    if lora.use_dora || layout.entries.iter().any(|e| e.m_offset.is_some()) {
        return Err(dora_refused());
    }
    if params.len() != layout.len {
        return Err(Error::shape(
            "gguf_lora",
            format!(
                "{} adapter parameters given for a layout of {}",
                params.len(),
                layout.len
            ),
        ));
    }
    let r = layout.r;
    let alpha = if lora.use_rslora {
        lora.alpha * (r as f32).sqrt()
    } else {
        lora.alpha
    };
    let arch = crate::model::gguf::gguf_architecture(config);
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String(arch.into()));
    w.add("general.type", Value::String("adapter".into()));
    w.add("adapter.type", Value::String("lora".into()));
    w.add("adapter.lora.alpha", Value::F32(alpha));
    w.add("general.quantization_version", Value::U32(2));
    // The converter writes the modules in the order of the adapter's (sorted) tensor names.
    let mut entries: Vec<_> = layout.entries.iter().collect();
    entries.sort_by_key(|e| peft::key(layout, e, "A"));
    for e in entries {
        let weight = format!("{}.weight", e.path);
        let g = gguf_name(config, &weight).ok_or_else(|| {
            Error::shape(
                "gguf_lora",
                format!("{weight} has no GGUF name in a {arch} model"),
            )
        })?;
        let a = &params[e.a_offset..e.a_offset + r * e.d_in];
        let b = &params[e.b_offset..e.b_offset + e.d_out * r];
        let b = match qk_permute_heads(config, &weight) {
            Some(heads) => permute_qk(b, e.d_out, heads),
            None => b.to_vec(),
        };
        w.add_tensor(
            &format!("{g}.lora_a"),
            &[r, e.d_in],
            GgmlType::F32,
            f32_bytes(a),
        )?;
        w.add_tensor(
            &format!("{g}.lora_b"),
            &[e.d_out, r],
            GgmlType::F32,
            f32_bytes(&b),
        )?;
    }
    let summary = ExportSummary {
        architecture: arch.to_string(),
        modules: layout.entries.len(),
        r,
        alpha,
    };
    Ok((w, summary))
}

/// Write the PEFT adapter directory `adapter_dir` (made for the model `config` describes) as
/// a GGUF LoRA file `out` ([`gguf_lora`]). The file is written atomically (a temporary file,
/// flushed, renamed); an existing `out` is an error unless `overwrite`, and nothing is written
/// when anything fails.
///
/// ```no_run
/// use std::path::Path;
/// use lora_wgpu::lora::gguf::export_gguf;
/// use lora_wgpu::model::ModelSource;
///
/// # fn main() -> lora_wgpu::Result<()> {
/// let config = ModelSource::parse("models/SmolLM2-135M")?.config()?;
/// let s = export_gguf(Path::new("runs/adapter"), &config, Path::new("adapter.gguf"), false)?;
/// println!("{} modules, alpha {}", s.modules, s.alpha);
/// # Ok(())
/// # }
/// ```
pub fn export_gguf(
    adapter_dir: &Path,
    config: &ModelConfig,
    out: &Path,
    overwrite: bool,
) -> Result<ExportSummary> {
    check_out_file(out, overwrite)?;
    let config_path = adapter_dir.join("adapter_config.json");
    if !config_path.is_file() {
        return Err(Error::Format {
            path: adapter_dir.to_path_buf(),
            detail: "has no adapter_config.json: not a PEFT adapter directory (give the \
                     directory that adapter_config.json and adapter_model.safetensors are in)"
                .into(),
        });
    }
    // Refuse DoRA before reading the weights, with the reason rather than a layout error.
    if peft::read_config(&config_path)?.use_dora {
        return Err(dora_refused());
    }
    let (lora, layout, params) = peft::load(adapter_dir, config)?;
    let (w, summary) = gguf_lora(config, &lora, &layout, &params)?;
    w.write(out)?;
    Ok(summary)
}

/// Why a DoRA adapter is not exported.
fn dora_refused() -> Error {
    Error::invalid(
        "adapter",
        "use_dora = true",
        "a DoRA adapter cannot be written as a GGUF LoRA (llama.cpp's LoRA has no magnitude \
         vectors): merge it into the model instead (lora-wgpu merge)",
    )
}

/// The rule for an output file: absent, or an existing file and `overwrite`; never a
/// directory.
pub(crate) fn check_out_file(out: &Path, overwrite: bool) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            path: out.to_path_buf(),
            source: e,
        }),
        Ok(m) if m.is_dir() => Err(Error::Format {
            path: out.to_path_buf(),
            detail: "is a directory: give the path of a .gguf file".into(),
        }),
        Ok(_) if overwrite => Ok(()),
        Ok(_) => Err(Error::Format {
            path: out.to_path_buf(),
            detail: "exists: give a new file, or pass --overwrite to replace it".into(),
        }),
    }
}

/// f32 values as little-endian bytes.
pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
