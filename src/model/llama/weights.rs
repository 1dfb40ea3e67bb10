//! Llama-family weights on the host: the tensors of a Hugging Face checkpoint (one
//! `model.safetensors` or an index and its shards), memory-mapped and converted to f32.
//!
//! Names and layouts are transformers': `model.embed_tokens.weight` `[V, C]`,
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` `[out, in]` (`nn.Linear`, y = x·Wᵀ + b),
//! `model.norm.weight`, and `lm_head.weight` `[V, C]` unless the head is tied to the embedding.
//! Linear weights stay `[out, in]` here; whoever uploads them transposes if a kernel wants
//! `[in, out]`.

use std::path::Path;

use super::LlamaConfig;
use crate::checkpoint::{Checkpoint, KeyRole};
use crate::error::Result;
pub use crate::model::gpt2::weights::HostWeights;

/// Every tensor of a checkpoint of `cfg` in transformers' naming and layout, in a fixed order:
/// the embedding, each layer's norms, attention (q, k, v, o; biases and Qwen3's q/k norms where
/// `cfg` has them) and MLP (gate, up, down), the final norm, and `lm_head.weight` when not tied.
pub fn tensor_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let c = cfg.hidden_size;
    let i_ = cfg.intermediate_size;
    let (q, kv, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim());
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, c],
    )];
    for i in 0..cfg.num_hidden_layers {
        let l = |s: &str| format!("model.layers.{i}.{s}");
        v.push((l("input_layernorm.weight"), vec![c]));
        for (name, out, bias) in [
            ("q_proj", q, cfg.qkv_bias()),
            ("k_proj", kv, cfg.qkv_bias()),
            ("v_proj", kv, cfg.qkv_bias()),
        ] {
            v.push((l(&format!("self_attn.{name}.weight")), vec![out, c]));
            if bias {
                v.push((l(&format!("self_attn.{name}.bias")), vec![out]));
            }
        }
        v.push((l("self_attn.o_proj.weight"), vec![c, q]));
        if cfg.o_bias() {
            v.push((l("self_attn.o_proj.bias"), vec![c]));
        }
        if cfg.qk_norm() {
            v.push((l("self_attn.q_norm.weight"), vec![hd]));
            v.push((l("self_attn.k_norm.weight"), vec![hd]));
        }
        v.push((l("post_attention_layernorm.weight"), vec![c]));
        for (name, out, inp) in [
            ("gate_proj", i_, c),
            ("up_proj", i_, c),
            ("down_proj", c, i_),
        ] {
            v.push((l(&format!("mlp.{name}.weight")), vec![out, inp]));
            if cfg.mlp_has_bias() {
                v.push((l(&format!("mlp.{name}.bias")), vec![out]));
            }
        }
    }
    v.push(("model.norm.weight".into(), vec![c]));
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".into(), vec![cfg.vocab_size, c]));
    }
    v
}

/// What a checkpoint key holds: the weight of its name, with `model.` added to keys saved from
/// the bare decoder (`layers.0...`, `embed_tokens.weight`, `norm.weight`); skipped are a tied
/// model's `lm_head.weight` (some tied checkpoints still store the copy) and the
/// `rotary_emb.inv_freq` buffers older conversions saved.
fn role(cfg: &LlamaConfig, key: &str) -> KeyRole {
    if key.ends_with(".rotary_emb.inv_freq") || (cfg.tie_word_embeddings && key == "lm_head.weight")
    {
        return KeyRole::Ignore;
    }
    let bare = key.starts_with("layers.") || key == "embed_tokens.weight" || key == "norm.weight";
    KeyRole::Weight(if bare {
        format!("model.{key}")
    } else {
        key.to_string()
    })
}

/// Read the checkpoint of the model directory `dir` (`model.safetensors`, or
/// `model.safetensors.index.json` and its shards) strictly against `cfg`: every tensor of
/// [`tensor_shapes`] present with its exact shape, in f32, f16 or bf16, and no unknown tensor.
/// One error lists every problem, each tensor with its shard file.
pub fn load(dir: &Path, cfg: &LlamaConfig) -> Result<HostWeights> {
    load_checkpoint(&Checkpoint::open(dir)?, cfg)
}

/// [`load`] from a checkpoint already opened.
pub fn load_checkpoint(ckpt: &Checkpoint, cfg: &LlamaConfig) -> Result<HostWeights> {
    let family = match cfg.arch {
        super::LlamaArch::Llama => "Llama",
        super::LlamaArch::Qwen2 => "Qwen2",
        super::LlamaArch::Qwen3 => "Qwen3",
        super::LlamaArch::Mistral => "Mistral",
    };
    ckpt.load_strict(family, &tensor_shapes(cfg), |key| role(cfg, key))
}

/// Random weights in `cfg`'s shape, for benchmarks and tests, never a pretrained model:
/// linear weights and the embedding normal with std 0.02 (transformers' init), norm weights
/// 1 + normal(0.02) and biases normal(0.02) rather than exactly 1 and 0, so a test notices a
/// kernel that drops a norm weight or a bias.
pub fn random(cfg: &LlamaConfig, seed: u64) -> HostWeights {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = move || {
        // Box-Muller from two uniforms.
        let u1: f32 = rng.random_range(f32::EPSILON..1.0);
        let u2: f32 = rng.random_range(0.0..1.0);
        0.02 * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    };
    let mut out = HostWeights::new();
    for (name, shape) in tensor_shapes(cfg) {
        let n: usize = shape.iter().product();
        let is_norm = name.ends_with("norm.weight");
        let v = (0..n)
            .map(|_| if is_norm { 1.0 + normal() } else { normal() })
            .collect();
        out.insert(name, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(cfg: &LlamaConfig) -> usize {
        tensor_shapes(cfg)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    #[test]
    fn shapes_add_up_to_num_parameters() {
        for name in [
            "smollm2-135m",
            "qwen2.5-0.5b",
            "qwen3-0.6b",
            "llama-3.2-1b",
            "llama-tiny",
        ] {
            let cfg = LlamaConfig::named(name).unwrap();
            assert_eq!(count(&cfg), cfg.num_parameters(), "{name}");
        }
        let mut cfg = LlamaConfig::named("llama-tiny").unwrap();
        cfg.tie_word_embeddings = false;
        cfg.attention_bias = true;
        cfg.mlp_bias = true;
        assert_eq!(count(&cfg), cfg.num_parameters());
        let names: Vec<_> = tensor_shapes(&cfg).into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"lm_head.weight".to_string()));
        assert!(names.contains(&"model.layers.3.self_attn.o_proj.bias".to_string()));
        assert!(names.contains(&"model.layers.0.mlp.down_proj.bias".to_string()));
    }

    #[test]
    fn qwen_layouts() {
        let q2 = LlamaConfig::named("qwen2.5-0.5b").unwrap();
        let s: std::collections::BTreeMap<_, _> = tensor_shapes(&q2).into_iter().collect();
        assert_eq!(s["model.layers.0.self_attn.k_proj.weight"], vec![128, 896]);
        assert_eq!(s["model.layers.0.self_attn.k_proj.bias"], vec![128]);
        assert!(!s.contains_key("model.layers.0.self_attn.o_proj.bias"));
        let q3 = LlamaConfig::named("qwen3-0.6b").unwrap();
        let s: std::collections::BTreeMap<_, _> = tensor_shapes(&q3).into_iter().collect();
        assert_eq!(
            s["model.layers.0.self_attn.q_proj.weight"],
            vec![2048, 1024]
        );
        assert_eq!(
            s["model.layers.0.self_attn.o_proj.weight"],
            vec![1024, 2048]
        );
        assert_eq!(s["model.layers.27.self_attn.q_norm.weight"], vec![128]);
        assert!(!s.contains_key("model.layers.0.self_attn.q_proj.bias"));
    }

    #[test]
    fn random_is_seeded_and_norms_near_one() {
        let cfg = LlamaConfig::named("llama-tiny").unwrap();
        let a = random(&cfg, 7);
        assert_eq!(a, random(&cfg, 7));
        assert_ne!(a, random(&cfg, 8));
        let norm = &a["model.norm.weight"];
        assert!(norm.iter().all(|v| (v - 1.0).abs() < 0.2));
        assert!(norm.iter().any(|v| *v != 1.0));
        assert_eq!(a.len(), tensor_shapes(&cfg).len());
    }

    #[test]
    fn roles() {
        let cfg = LlamaConfig::named("llama-tiny").unwrap();
        assert_eq!(role(&cfg, "lm_head.weight"), KeyRole::Ignore);
        assert_eq!(
            role(&cfg, "layers.0.mlp.up_proj.weight"),
            KeyRole::Weight("model.layers.0.mlp.up_proj.weight".into())
        );
        assert_eq!(
            role(&cfg, "model.layers.0.self_attn.rotary_emb.inv_freq"),
            KeyRole::Ignore
        );
    }
}
