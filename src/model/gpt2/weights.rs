//! GPT-2 weights from a Hugging Face `model.safetensors`, memory-mapped and converted to f32.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::SafeTensors;

use super::Gpt2Config;
use crate::error::{Error, Result};
use crate::tensor_file::to_f32;

/// Every tensor of a GPT-2 checkpoint in Hugging Face's naming (no `transformer.` prefix) and
/// layout (Conv1D weights are [in, out]), in a fixed order.
pub fn tensor_shapes(cfg: &Gpt2Config) -> Vec<(String, Vec<usize>)> {
    let c = cfg.n_embd;
    let mut v = vec![
        ("wte.weight".to_string(), vec![cfg.vocab_size, c]),
        ("wpe.weight".to_string(), vec![cfg.n_positions, c]),
    ];
    for i in 0..cfg.n_layer {
        let h = |s: &str| format!("h.{i}.{s}");
        v.extend([
            (h("ln_1.weight"), vec![c]),
            (h("ln_1.bias"), vec![c]),
            (h("attn.c_attn.weight"), vec![c, 3 * c]),
            (h("attn.c_attn.bias"), vec![3 * c]),
            (h("attn.c_proj.weight"), vec![c, c]),
            (h("attn.c_proj.bias"), vec![c]),
            (h("ln_2.weight"), vec![c]),
            (h("ln_2.bias"), vec![c]),
            (h("mlp.c_fc.weight"), vec![c, 4 * c]),
            (h("mlp.c_fc.bias"), vec![4 * c]),
            (h("mlp.c_proj.weight"), vec![4 * c, c]),
            (h("mlp.c_proj.bias"), vec![c]),
        ]);
    }
    v.push(("ln_f.weight".into(), vec![c]));
    v.push(("ln_f.bias".into(), vec![c]));
    v
}

pub use crate::model::HostWeights;

/// Whether a checkpoint key is a buffer or tied copy that carries no weight of its own.
fn ignored(key: &str) -> bool {
    key.ends_with(".attn.bias") // the causal mask buffer ("c_attn.bias" ends in "_attn.bias")
        || key.ends_with(".attn.masked_bias")
        || key == "lm_head.weight"
}

/// Read `path` (a GPT-2 `model.safetensors`) strictly against `cfg`: every tensor present with
/// its exact shape, no unknown tensor. Keys may carry a `transformer.` prefix; attention mask
/// buffers and a tied `lm_head.weight` are skipped.
pub fn load(path: &Path, cfg: &Gpt2Config) -> Result<HostWeights> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the file is only read; a concurrent writer could change what we read but not
    // break memory safety of the byte slice beyond that (the usual mmap caveat).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &map, cfg)
}

/// [`load`] from the bytes of a `model.safetensors` already in memory; `path` only names the
/// file in errors. Never panics, and allocates at most about twice `bytes.len()` whatever the
/// header claims (the safetensors header is checked against the bytes before any tensor is
/// read).
pub fn parse(path: &Path, bytes: &[u8], cfg: &Gpt2Config) -> Result<HostWeights> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        detail: format!(
            "not a readable safetensors file ({e}); the download may be truncated or corrupt"
        ),
    })?;
    let expected: BTreeMap<String, Vec<usize>> = tensor_shapes(cfg).into_iter().collect();
    let mut out = HostWeights::new();
    let mut unknown = Vec::new();
    for (key, view) in st.tensors() {
        let name = key.strip_prefix("transformer.").unwrap_or(&key);
        if ignored(name) {
            continue;
        }
        let Some(shape) = expected.get(name) else {
            unknown.push(key.clone());
            continue;
        };
        if view.shape() != shape.as_slice() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor {key} has shape {:?}, expected {shape:?} for this config.json",
                    view.shape()
                ),
            });
        }
        out.insert(
            name.to_string(),
            to_f32(path, &key, view.dtype(), view.data())?,
        );
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            detail: format!(
                "unexpected tensors for a GPT-2 checkpoint: {}",
                unknown.join(", ")
            ),
        });
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !out.contains_key(*k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            detail: format!("missing tensors: {}", missing.join(", ")),
        });
    }
    Ok(out)
}

/// Random weights in `cfg`'s shape, as Hugging Face initialises GPT-2 (normal, std 0.02;
/// LayerNorms at weight 1, bias 0; biases 0). For benchmarks and tests, never a pretrained model.
pub fn random(cfg: &Gpt2Config, seed: u64) -> HostWeights {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = HostWeights::new();
    for (name, shape) in tensor_shapes(cfg) {
        let n: usize = shape.iter().product();
        let v = if name.contains("ln_") && name.ends_with("weight") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            // Box-Muller from two uniforms.
            (0..n)
                .map(|_| {
                    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                    let u2: f32 = rng.random_range(0.0..1.0);
                    0.02 * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect()
        };
        out.insert(name, v);
    }
    out
}
