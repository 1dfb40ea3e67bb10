//! Llama-family configs as the hub ships them (SmolLM2, Qwen2.5, Qwen3, Llama 3.2, Mistral, and
//! transformers 5's `rope_parameters` spelling), their RoPE tables and parameter counts, sharded
//! checkpoints and the errors for broken ones, and special tokens.

use std::collections::HashMap;
use std::path::Path;

use lora_wgpu::model::llama::{weights, LlamaArch, LlamaConfig, Rope, RopeKind};
use lora_wgpu::tokenizer::{chat_template, special_tokens, SpecialTokens, Tokenizer};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const SMOLLM2_135M: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "eos_token_id": 0,
  "hidden_act": "silu",
  "hidden_size": 576,
  "initializer_range": 0.041666666666666664,
  "intermediate_size": 1536,
  "is_llama_config": true,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 9,
  "num_hidden_layers": 30,
  "num_key_value_heads": 3,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_interleaved": false,
  "rope_scaling": null,
  "rope_theta": 100000,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 49152
}"#;

const QWEN25_05B: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_mrope": false,
  "use_sliding_window": false,
  "vocab_size": 151936
}"#;

const QWEN3_06B: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}"#;

const LLAMA32_1B: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}"#;

/// Llama-3.2-1B-Instruct as transformers 5's `save_pretrained` writes it: RoPE under
/// `rope_parameters` with the theta inside, `dtype` instead of `torch_dtype`, eos a list.
const LLAMA32_1B_V5: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "dtype": "bfloat16",
  "eos_token_id": [128001, 128008, 128009],
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pad_token_id": null,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rope_type": "llama3"
  },
  "tie_word_embeddings": true,
  "transformers_version": "5.0.0",
  "use_cache": true,
  "vocab_size": 128256
}"#;

/// Mistral-7B-v0.3's shape (its sliding window is off: null).
const MISTRAL_7B_V03: &str = r#"{
  "architectures": ["MistralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.0.dev0",
  "use_cache": true,
  "vocab_size": 32768
}"#;

fn parse(text: &str) -> lora_wgpu::Result<LlamaConfig> {
    LlamaConfig::from_json_bytes(text.as_bytes())
}

/// `text` with `"key": old` replaced (the key must occur once).
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from}");
    text.replace(from, to)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn hub_configs_parse_with_their_shapes() {
    let s = parse(SMOLLM2_135M).unwrap();
    assert_eq!(s.arch, LlamaArch::Llama);
    assert_eq!(
        (
            s.hidden_size,
            s.num_hidden_layers,
            s.num_attention_heads,
            s.num_key_value_heads
        ),
        (576, 30, 9, 3)
    );
    assert_eq!((s.head_dim(), s.q_dim(), s.kv_dim()), (64, 576, 192));
    assert_eq!(s.rope, Rope::new(100000.0));
    assert_eq!((s.rms_norm_eps, s.tie_word_embeddings), (1e-5, true));
    assert!(!s.qkv_bias() && !s.o_bias() && !s.qk_norm() && !s.mlp_has_bias());
    assert_eq!((s.bos_token_id, s.eos_token_id.clone()), (Some(0), vec![0]));
    assert_eq!(s, LlamaConfig::named("smollm2-135m").unwrap().with_raw(&s));
    // The raw object is kept for a merged model to write back.
    assert_eq!(s.raw["is_llama_config"], serde_json::json!(true));

    let q = parse(QWEN25_05B).unwrap();
    assert_eq!(q.arch, LlamaArch::Qwen2);
    assert!(q.qkv_bias() && !q.o_bias() && !q.qk_norm());
    assert_eq!(q.sliding_window, None, "use_sliding_window is false");
    assert_eq!(
        (q.head_dim(), q.rope.theta, q.rms_norm_eps),
        (64, 1e6, 1e-6)
    );
    assert_eq!(q, LlamaConfig::named("qwen2.5-0.5b").unwrap().with_raw(&q));

    let q3 = parse(QWEN3_06B).unwrap();
    assert_eq!(q3.arch, LlamaArch::Qwen3);
    assert_eq!((q3.head_dim(), q3.q_dim(), q3.kv_dim()), (128, 2048, 1024));
    assert!(q3.qk_norm() && !q3.qkv_bias() && !q3.o_bias());
    assert_eq!(q3.eos_token_id, vec![151645]);
    assert_eq!(q3, LlamaConfig::named("qwen3-0.6b").unwrap().with_raw(&q3));

    let l = parse(LLAMA32_1B).unwrap();
    let llama3 = Rope {
        theta: 500000.0,
        kind: RopeKind::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        },
    };
    assert_eq!(l.rope, llama3);
    assert_eq!(l, LlamaConfig::named("llama-3.2-1b").unwrap().with_raw(&l));

    let v5 = parse(LLAMA32_1B_V5).unwrap();
    assert_eq!(
        v5.rope, llama3,
        "rope_parameters reads as rope_theta + rope_scaling"
    );
    assert_eq!(v5.eos_token_id, vec![128001, 128008, 128009]);
    assert_eq!(v5.pad_token_id, None);
    // transformers 5 fills a missing original_max_position_embeddings from the config.
    let no_orig = edit(
        LLAMA32_1B_V5,
        "\"original_max_position_embeddings\": 8192,",
        "",
    );
    match parse(&no_orig).unwrap().rope.kind {
        RopeKind::Llama3 {
            original_max_position_embeddings,
            ..
        } => assert_eq!(original_max_position_embeddings, 131072),
        other => panic!("{other:?}"),
    }
    // The older `type` key, and linear scaling.
    let linear = edit(
        SMOLLM2_135M,
        "\"rope_scaling\": null",
        "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}",
    );
    assert_eq!(
        parse(&linear).unwrap().rope.kind,
        RopeKind::Linear { factor: 2.0 }
    );

    let m = parse(MISTRAL_7B_V03).unwrap();
    assert_eq!(m.arch, LlamaArch::Mistral);
    assert_eq!((m.sliding_window, m.head_dim()), (None, 128));
    assert!(!m.qkv_bias() && !m.o_bias() && !m.mlp_has_bias() && !m.tie_word_embeddings);
}

/// Presets build their own raw config.json; compare everything else.
trait WithRaw {
    fn with_raw(self, other: &LlamaConfig) -> LlamaConfig;
}

impl WithRaw for LlamaConfig {
    fn with_raw(mut self, other: &LlamaConfig) -> LlamaConfig {
        self.raw = other.raw.clone();
        self
    }
}

#[test]
fn parameter_counts_match_the_published_models() {
    for (text, want) in [
        (SMOLLM2_135M, 134_515_008),
        (QWEN25_05B, 494_032_768),
        (QWEN3_06B, 596_049_920),
        (LLAMA32_1B, 1_235_814_400),
        (MISTRAL_7B_V03, 7_248_023_552),
    ] {
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.num_parameters(), want, "{:?}", cfg.arch);
        let shapes: usize = weights::tensor_shapes(&cfg)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(shapes, want);
    }
    assert_eq!(
        LlamaConfig::named("smollm2-360m").unwrap().num_parameters(),
        361_821_120
    );
}

#[test]
fn llama3_inv_freq_matches_an_independent_f64_computation() {
    let cfg = parse(LLAMA32_1B).unwrap();
    let got = cfg.rope.inv_freq(cfg.head_dim());
    assert_eq!(got.len(), 32);
    // Llama 3.1's scaling: wavelengths shorter than 8192/4 kept, longer than 8192/1 divided by
    // 32, in between a linear blend in 8192/wavelength.
    let (theta, factor, low, high, old) = (500000f64, 32f64, 1f64, 4f64, 8192f64);
    let mut scaled = 0;
    let mut blended = 0;
    for (i, &g) in got.iter().enumerate() {
        let f = theta.powf(-((2 * i) as f64) / 64.0);
        let wavelen = 2.0 * std::f64::consts::PI / f;
        let want = if wavelen < old / high {
            f
        } else if wavelen > old / low {
            scaled += 1;
            f / factor
        } else {
            blended += 1;
            let s = (old / wavelen - low) / (high - low);
            (1.0 - s) * f / factor + s * f
        };
        let rel = ((g as f64) - want).abs() / want;
        assert!(
            rel < 2e-6,
            "inv_freq[{i}] = {g}, expected {want} (rel {rel:e})"
        );
    }
    assert!(scaled > 0 && blended > 0, "both bands exercised");
    // Qwen3: plain RoPE over 128 channels, theta 1e6.
    let q3 = parse(QWEN3_06B).unwrap();
    let got = q3.rope.inv_freq(128);
    for (i, &g) in got.iter().enumerate() {
        let want = 1e6f64.powf(-((2 * i) as f64) / 128.0);
        assert!(((g as f64) - want).abs() / want < 2e-6, "{i}");
    }
    assert_eq!(q3.rope.attention_scaling(), 1.0);
}

#[test]
fn config_errors_say_what_is_supported() {
    let e = err(&edit(
        SMOLLM2_135M,
        "\"model_type\": \"llama\"",
        "\"model_type\": \"phi3\"",
    ));
    assert!(
        e.contains("phi3") && e.contains("supported: gpt2, llama, qwen2, qwen3, mistral"),
        "{e}"
    );
    let yarn = edit(
        QWEN25_05B,
        "\"rope_theta\": 1000000.0,",
        "\"rope_theta\": 1000000.0, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0, \
         \"original_max_position_embeddings\": 32768},",
    );
    let e = err(&yarn);
    assert!(
        e.contains("yarn") && e.contains("default, linear, llama3"),
        "{e}"
    );
    let dynamic = edit(
        LLAMA32_1B_V5,
        "\"rope_type\": \"llama3\"",
        "\"rope_type\": \"dynamic\"",
    );
    assert!(err(&dynamic).contains("dynamic"));
    let e = err(&edit(SMOLLM2_135M, "\"silu\"", "\"gelu\""));
    assert!(
        e.contains("hidden_act") && e.contains("gelu") && e.contains("silu"),
        "{e}"
    );
    let e = err(&edit(
        SMOLLM2_135M,
        "\"num_key_value_heads\": 3",
        "\"num_key_value_heads\": 4",
    ));
    assert!(
        e.contains("num_key_value_heads") && e.contains("divide"),
        "{e}"
    );
    let e = err(&edit(QWEN3_06B, "\"head_dim\": 128", "\"head_dim\": 63"));
    assert!(e.contains("head_dim") && e.contains("even"), "{e}");
    let e = err(&edit(QWEN3_06B, "\"head_dim\": 128", "\"head_dim\": 256"));
    assert!(e.contains("head_dim") && e.contains("128"), "{e}");
    let e = err(&edit(
        SMOLLM2_135M,
        "\"hidden_size\": 576",
        "\"hidden_size\": 577",
    ));
    assert!(e.contains("whole heads"), "{e}");
    let e = err(&edit(
        SMOLLM2_135M,
        "\"hidden_size\": 576",
        "\"hidden_size\": 576000000",
    ));
    assert!(e.contains("too large"), "{e}");
    let e = err(&edit(SMOLLM2_135M, "\"hidden_size\": 576,", ""));
    assert!(e.contains("hidden_size"), "{e}");
    let e = err(&edit(
        SMOLLM2_135M,
        "\"vocab_size\": 49152",
        "\"vocab_size\": -1",
    ));
    assert!(e.contains("config.json"), "{e}");
    let e = err(&edit(
        LLAMA32_1B,
        "\"high_freq_factor\": 4.0",
        "\"high_freq_factor\": 1.0",
    ));
    assert!(e.contains("high_freq_factor"), "{e}");
    assert!(err("[1, 2]").contains("JSON object"));
    assert!(err("{").contains("JSON"));
    assert!(err("{\"hidden_size\": 3}").contains("model_type"));
    let gpt2 = err(r#"{"model_type": "gpt2", "n_embd": 768}"#);
    assert!(gpt2.contains("GPT-2"), "{gpt2}");
}

#[test]
fn sliding_windows_must_not_mask_anything() {
    let on = edit(
        MISTRAL_7B_V03,
        "\"sliding_window\": null",
        "\"sliding_window\": 4096",
    );
    let e = err(&on);
    assert!(e.contains("sliding_window") && e.contains("4096"), "{e}");
    let wide = edit(
        MISTRAL_7B_V03,
        "\"sliding_window\": null",
        "\"sliding_window\": 32768",
    );
    assert_eq!(parse(&wide).unwrap().sliding_window, Some(32768));
    // Qwen2 with the window switched on for layers past max_window_layers.
    let q = edit(
        QWEN25_05B,
        "\"use_sliding_window\": false",
        "\"use_sliding_window\": true",
    );
    let q = edit(&q, "\"sliding_window\": 32768", "\"sliding_window\": 4096");
    assert!(
        parse(&q).is_ok(),
        "max_window_layers = 24 = every layer: no window"
    );
    let q = edit(&q, "\"max_window_layers\": 24", "\"max_window_layers\": 12");
    assert!(err(&q).contains("sliding_window"));
}

#[test]
fn from_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, edit(SMOLLM2_135M, "\"silu\"", "\"relu\"")).unwrap();
    let e = LlamaConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("relu"),
        "{e}"
    );
    std::fs::write(&path, QWEN3_06B).unwrap();
    assert_eq!(
        LlamaConfig::from_file(&path).unwrap().arch,
        LlamaArch::Qwen3
    );
}

// ---- checkpoints ---------------------------------------------------------------------------

/// A tiny Qwen2 (q/k/v biases) with an untied head.
fn tiny_qwen2() -> LlamaConfig {
    parse(
        r#"{"model_type": "qwen2", "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 32, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": false, "hidden_act": "silu"}"#,
    )
    .unwrap()
}

fn encode(vals: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F16 => vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn round(v: f32, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::F16 => half::f16::from_f32(v).to_f32(),
        Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

type Items = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn write_shard(path: &Path, items: &Items) {
    let views: Vec<(String, TensorView)> = items
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// Write `w` as two shards (layer 0 and the embedding in f16, the rest in bf16) and an index,
/// after `edit` changes the tensor lists.
fn write_sharded(
    dir: &Path,
    cfg: &LlamaConfig,
    w: &weights::HostWeights,
    edit: impl Fn(&mut Items, &mut Items),
) {
    let (mut a, mut b): (Items, Items) = (Vec::new(), Vec::new());
    for (name, shape) in weights::tensor_shapes(cfg) {
        let first = name.starts_with("model.embed_tokens") || name.starts_with("model.layers.0.");
        let dtype = if first { Dtype::F16 } else { Dtype::BF16 };
        let item = (name.clone(), dtype, shape, encode(&w[&name], dtype));
        if first {
            a.push(item)
        } else {
            b.push(item)
        }
    }
    edit(&mut a, &mut b);
    let files = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut map = serde_json::Map::new();
    for (items, file) in [(&a, files[0]), (&b, files[1])] {
        write_shard(&dir.join(file), items);
        for (n, ..) in items.iter() {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
}

fn load_err(dir: &Path, cfg: &LlamaConfig) -> String {
    weights::load(dir, cfg).unwrap_err().to_string()
}

#[test]
fn sharded_f16_bf16_checkpoints_load() {
    let cfg = tiny_qwen2();
    let w = weights::random(&cfg, 3);
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path(), &cfg, &w, |_, _| {});
    let got = weights::load(dir.path(), &cfg).unwrap();
    assert_eq!(got.len(), weights::tensor_shapes(&cfg).len());
    for (name, vals) in &w {
        let dtype = if name.starts_with("model.embed_tokens") || name.starts_with("model.layers.0.")
        {
            Dtype::F16
        } else {
            Dtype::BF16
        };
        let want: Vec<f32> = vals.iter().map(|v| round(*v, dtype)).collect();
        assert_eq!(got[name], want, "{name}");
    }
    assert!(got.contains_key("model.layers.1.self_attn.v_proj.bias"));

    // A tied model may still store lm_head.weight: accepted, ignored.
    let mut tied = cfg.clone();
    tied.tie_word_embeddings = true;
    let got = weights::load(dir.path(), &tied).unwrap();
    assert!(!got.contains_key("lm_head.weight"));

    // A single model.safetensors (f32), keys without the `model.` prefix.
    let one = tempfile::tempdir().unwrap();
    let items: Items = weights::tensor_shapes(&cfg)
        .into_iter()
        .map(|(n, s)| {
            let key = n.strip_prefix("model.").unwrap_or(&n).to_string();
            (key, Dtype::F32, s, encode(&w[&n], Dtype::F32))
        })
        .collect();
    write_shard(&one.path().join("model.safetensors"), &items);
    assert_eq!(weights::load(one.path(), &cfg).unwrap(), w);
}

#[test]
fn broken_checkpoints_name_every_tensor_and_file() {
    let cfg = tiny_qwen2();
    let w = weights::random(&cfg, 4);
    let shard2 = "model-00002-of-00002.safetensors";

    // A shard the index names is missing.
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path(), &cfg, &w, |_, _| {});
    std::fs::remove_file(dir.path().join(shard2)).unwrap();
    let e = load_err(dir.path(), &cfg);
    assert!(
        e.contains(shard2) && e.contains("model.safetensors.index.json"),
        "{e}"
    );

    // Extra, mis-shaped and missing tensors, all in one message, each with its shard.
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path(), &cfg, &w, |a, b| {
        a.push((
            "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
            Dtype::F32,
            vec![2],
            vec![0; 8],
        ));
        b.push((
            "model.layers.1.mlp.extra.weight".into(),
            Dtype::BF16,
            vec![2],
            vec![0; 4],
        ));
        let i = a
            .iter()
            .position(|t| t.0 == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        a[i].2 = vec![8, 32];
        b.retain(|t| t.0 != "model.norm.weight");
    });
    let e = load_err(dir.path(), &cfg);
    assert!(
        e.contains(&format!("model.layers.1.mlp.extra.weight in {shard2}")),
        "{e}"
    );
    assert!(
        e.contains(
            "model.layers.0.self_attn.q_proj.weight in model-00001-of-00002.safetensors has \
             shape [8, 32], expected [16, 16]"
        ),
        "{e}"
    );
    assert!(e.contains("missing tensor(s): model.norm.weight"), "{e}");
    assert!(!e.contains("inv_freq"), "rotary buffers are ignored: {e}");

    // A tensor the index lists is absent from its shard.
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path(), &cfg, &w, |_, _| {});
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = shard2.into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let e = load_err(dir.path(), &cfg);
    assert!(
        e.contains("model.layers.9.mlp.up_proj.weight (in model-00002-of-00002.safetensors)"),
        "{e}"
    );

    // An index that is not JSON, and one naming a shard outside the directory.
    std::fs::write(&index_path, "{\"weight_map\": ").unwrap();
    let e = load_err(dir.path(), &cfg);
    assert!(e.contains("index.json") && e.contains("JSON"), "{e}");
    std::fs::write(
        &index_path,
        r#"{"weight_map": {"model.norm.weight": "../model.safetensors"}}"#,
    )
    .unwrap();
    assert!(load_err(dir.path(), &cfg).contains("beside the index"));

    // A dtype other than f32 / f16 / bf16.
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path(), &cfg, &w, |_, b| {
        let i = b.iter().position(|t| t.0 == "model.norm.weight").unwrap();
        b[i].1 = Dtype::I32;
        b[i].3 = vec![0; 16 * 4];
    });
    let e = load_err(dir.path(), &cfg);
    assert!(e.contains("model.norm.weight") && e.contains("I32"), "{e}");

    // A truncated shard.
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path(), &cfg, &w, |_, _| {});
    let p = dir.path().join(shard2);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_err(dir.path(), &cfg);
    assert!(e.contains(shard2) && e.contains("truncated"), "{e}");

    // No checkpoint at all.
    let empty = tempfile::tempdir().unwrap();
    let e = load_err(empty.path(), &cfg);
    assert!(e.contains("model.safetensors"), "{e}");
}

// ---- special tokens ------------------------------------------------------------------------

/// A word-level tokenizer.json with a few chat-model special tokens.
fn write_tokenizer(dir: &Path) -> Tokenizer {
    use tokenizers::models::wordlevel::WordLevel;
    let vocab: HashMap<String, u32> =
        ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "hi"]
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let tok = tokenizers::Tokenizer::new(model);
    let path = dir.join("tokenizer.json");
    tok.save(&path, false).unwrap();
    Tokenizer::from_file(&path).unwrap()
}

#[test]
fn special_tokens_from_generation_config_and_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    let tok = write_tokenizer(dir.path());
    let d = dir.path();
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type": "qwen2", "bos_token_id": null, "eos_token_id": 1}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("generation_config.json"),
        r#"{"bos_token_id": null, "eos_token_id": [3, 1], "do_sample": true}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"bos_token": null,
            "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": false,
                          "normalized": false, "rstrip": false, "single_word": false},
            "pad_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false,
                          "normalized": false, "rstrip": false, "single_word": false},
            "chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"}"#,
    )
    .unwrap();
    assert_eq!(
        special_tokens(d, &tok).unwrap(),
        SpecialTokens {
            bos: None,
            eos: vec![3, 1],
            pad: Some(1),
        }
    );
    assert!(chat_template(d).unwrap().unwrap().starts_with("{% for m"));

    // Without generation_config.json, config.json's eos; without either, tokenizer_config's.
    std::fs::remove_file(d.join("generation_config.json")).unwrap();
    assert_eq!(special_tokens(d, &tok).unwrap().eos, vec![1]);
    std::fs::write(d.join("config.json"), r#"{"model_type": "qwen2"}"#).unwrap();
    assert_eq!(special_tokens(d, &tok).unwrap().eos, vec![3]);

    // A token text the tokenizer lacks, and a broken file, are named.
    std::fs::write(d.join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).unwrap();
    let e = special_tokens(d, &tok).unwrap_err().to_string();
    assert!(
        e.contains("</s>") && e.contains("tokenizer_config.json"),
        "{e}"
    );
    std::fs::write(
        d.join("generation_config.json"),
        "{\"eos_token_id\": \"x\"}",
    )
    .unwrap();
    let e = special_tokens(d, &tok).unwrap_err().to_string();
    assert!(
        e.contains("generation_config.json") && e.contains("eos_token_id"),
        "{e}"
    );
}
