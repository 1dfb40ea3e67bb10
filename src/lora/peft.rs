//! Hugging Face PEFT's adapter format: `adapter_config.json` + `adapter_model.safetensors`.

use std::path::Path;

use safetensors::SafeTensors;
use serde::Deserialize;

use super::{LoraConfig, LoraEntry, LoraLayout};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::tensor_file::{self, F32View};

/// The fields of `adapter_config.json` this crate reads.
#[derive(Deserialize)]
struct AdapterConfigJson {
    peft_type: String,
    r: usize,
    lora_alpha: f32,
    #[serde(default)]
    lora_dropout: f32,
    target_modules: TargetModules,
    #[serde(default)]
    layers_to_transform: Option<LayerList>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default = "none")]
    bias: String,
    #[serde(default)]
    init_lora_weights: Option<serde_json::Value>,
}

fn none() -> String {
    "none".into()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TargetModules {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LayerList {
    One(usize),
    Many(Vec<usize>),
}

/// Read a PEFT `adapter_config.json` into a [`LoraConfig`].
pub fn read_config(path: &Path) -> Result<LoraConfig> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(path, &bytes)
}

/// Parse the bytes of a PEFT `adapter_config.json` (`path` only names the file in errors).
/// Checks the format (peft_type LORA, bias none), not the values against a model: that is
/// [`LoraConfig::validate`]'s job. Never panics, whatever the bytes.
pub fn parse_config(path: &Path, bytes: &[u8]) -> Result<LoraConfig> {
    let bad = |detail: String| Error::Format {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "not UTF-8 text ({e}); an adapter_config.json is JSON"
        ))
    })?;
    let c: AdapterConfigJson = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "not a PEFT adapter_config.json ({e}); it needs at least peft_type \"LORA\", r, \
             lora_alpha and target_modules, as PEFT's save_pretrained writes it"
        ))
    })?;
    if c.peft_type != "LORA" {
        return Err(bad(format!(
            "peft_type is {:?}; only LORA adapters are supported",
            c.peft_type
        )));
    }
    if c.bias != "none" {
        return Err(bad(format!(
            "bias = {:?}; only bias \"none\" is supported",
            c.bias
        )));
    }
    let init = super::init::from_peft_value(c.init_lora_weights.as_ref()).map_err(bad)?;
    Ok(LoraConfig {
        r: c.r,
        alpha: c.lora_alpha,
        dropout: c.lora_dropout,
        target_modules: match c.target_modules {
            TargetModules::One(s) => vec![s],
            TargetModules::Many(v) => v,
        },
        layers_to_transform: c.layers_to_transform.map(|l| match l {
            LayerList::One(i) => vec![i],
            LayerList::Many(v) => v,
        }),
        use_rslora: c.use_rslora,
        use_dora: c.use_dora,
        init,
    })
}

/// PEFT's key for an entry's A (`which = "A"`) or B, e.g.
/// `base_model.model.transformer.h.3.attn.c_attn.lora_A.weight` (GPT-2) or
/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (Llama); `which = "M"` is
/// DoRA's magnitude vector, `...q_proj.lora_magnitude_vector`.
pub fn key(layout: &LoraLayout, entry: &LoraEntry, which: &str) -> String {
    match which {
        "M" => format!("{}{}.lora_magnitude_vector", layout.peft_prefix, entry.path),
        _ => format!("{}{}.lora_{which}.weight", layout.peft_prefix, entry.path),
    }
}

/// Every tensor of an entry in the adapter file: (which, as [`key`] takes it, flat offset,
/// shape), in PEFT's order (A, B, then DoRA's magnitude).
pub fn tensors(layout: &LoraLayout, e: &LoraEntry) -> Vec<(&'static str, usize, Vec<usize>)> {
    let mut out = vec![
        ("A", e.a_offset, vec![layout.r, e.d_in]),
        ("B", e.b_offset, vec![e.d_out, layout.r]),
    ];
    if let Some(m) = e.m_offset {
        out.push(("M", m, vec![e.d_out]));
    }
    out
}

/// Read `adapter_model.safetensors` into the flat layout, strictly: every adapted module's A
/// (r, in) and B (out, r) present with its shape, no tensor the layout does not expect.
pub fn read_weights(path: &Path, layout: &LoraLayout) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_weights(path, &bytes, layout)
}

/// [`read_weights`] from the bytes of an `adapter_model.safetensors` already in memory
/// (`path` only names the file in errors). Never panics, whatever the bytes.
pub fn parse_weights(path: &Path, bytes: &[u8], layout: &LoraLayout) -> Result<Vec<f32>> {
    let bad = |detail: String| Error::Checkpoint {
        path: path.to_path_buf(),
        detail,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        bad(format!(
            "not a readable safetensors file ({e}); the adapter may be truncated or corrupt"
        ))
    })?;
    let mut flat = vec![0.0f32; layout.len];
    let mut seen = 0usize;
    for e in &layout.entries {
        for (which, offset, shape) in tensors(layout, e) {
            let k = key(layout, e, which);
            let view = st.tensor(&k).map_err(|_| {
                bad(format!("missing tensor {k}: the adapter was made for other target modules or another model"))
            })?;
            if view.shape() != shape {
                return Err(bad(format!(
                    "tensor {k} has shape {:?}, expected {shape:?}: the adapter was made for another model or rank{}",
                    view.shape(),
                    if which == "M" {
                        " (a DoRA magnitude vector has one value per output feature)"
                    } else {
                        ""
                    }
                )));
            }
            let values = tensor_file::to_f32(path, &k, view.dtype(), view.data())?;
            flat[offset..offset + values.len()].copy_from_slice(&values);
            seen += 1;
        }
    }
    if st.len() != seen {
        let mut extra: Vec<_> = st
            .names()
            .into_iter()
            .filter(|n| {
                !layout.entries.iter().any(|e| {
                    tensors(layout, e)
                        .iter()
                        .any(|(which, ..)| key(layout, e, which) == *n)
                })
            })
            .map(str::to_string)
            .collect();
        extra.sort();
        let dora = if extra.iter().any(|n| n.ends_with(".lora_magnitude_vector")) {
            " (DoRA magnitude vectors in an adapter whose adapter_config.json has no \"use_dora\": true)"
        } else {
            ""
        };
        return Err(bad(format!(
            "unexpected tensors for this LoRA configuration: {}{dora}",
            extra.join(", ")
        )));
    }
    Ok(flat)
}

/// Load a PEFT adapter directory: its config, the flat layout for `model`, and the weights.
pub fn load(
    dir: &Path,
    model: &impl super::AdaptableModel,
) -> Result<(LoraConfig, LoraLayout, Vec<f32>)> {
    let config_path = dir.join("adapter_config.json");
    let cfg = read_config(&config_path)?;
    let layout = LoraLayout::new(model, &cfg).map_err(|e| Error::Format {
        path: config_path,
        detail: format!("{e} (is this adapter made for this model?)"),
    })?;
    let flat = read_weights(&dir.join("adapter_model.safetensors"), &layout)?;
    Ok((cfg, layout, flat))
}

/// Save an adapter in PEFT's format: `dir/adapter_config.json` and
/// `dir/adapter_model.safetensors` (f32, metadata `{"format": "pt"}`, PEFT's key names), each
/// written atomically. `PeftModel.from_pretrained(model, dir)` loads it.
pub fn save(
    dir: &Path,
    cfg: &LoraConfig,
    layout: &LoraLayout,
    flat: &[f32],
    base_model: Option<&str>,
) -> Result<()> {
    if flat.len() != layout.len {
        return Err(Error::shape(
            "peft::save",
            format!(
                "{} parameters given for a layout of {}",
                flat.len(),
                layout.len
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut views = Vec::new();
    for e in &layout.entries {
        for (which, offset, shape) in tensors(layout, e) {
            let n: usize = shape.iter().product();
            let view = F32View {
                data: &flat[offset..offset + n],
                shape,
            };
            views.push((key(layout, e, which), view));
        }
    }
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let model_path = dir.join("adapter_model.safetensors");
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Format {
        path: model_path.clone(),
        detail: e.to_string(),
    })?;
    write_atomic(&model_path, &bytes)?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.target_modules,
        "layers_to_transform": cfg.layers_to_transform,
        "fan_in_fan_out": layout.fan_in_fan_out,
        "bias": "none",
        "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora,
        "lora_bias": false,
        "layers_pattern": null,
        "modules_to_save": null,
        "init_lora_weights": cfg.init.peft_value(),
        "inference_mode": true,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
    write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}
