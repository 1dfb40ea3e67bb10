//! GGUF model files (llama.cpp's format) as `--model`, against transformers' GGUF loader
//! (fixtures from scripts/make_gguf_model_fixtures.py): logits and loss of a llama at Q8_0, Q4_0
//! (tied, with a Q5_0 tensor) and F16, a qwen3 at Q8_0 and a GPT-2 at Q8_0 and F16; the config,
//! names and q/k permutation; the tokenizer built from the metadata against the tokenizer.json
//! it came from; clear errors for files we cannot use; and the CLI training on a GGUF model.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::fixture::{assert_rel, floats, ids, targets};
use common::{cli as run, gpu};
use lora_wgpu::gguf::{GgufFile, GgufWriter, Value};
use lora_wgpu::lora::{LoraConfig, LoraLayout};
use lora_wgpu::model::gguf::{checkpoint_name, gguf_name, permute_qk, unpermute_qk, GgufModel};
use lora_wgpu::model::{Model, ModelConfig, ModelSource, TrainGraph, Transformer};
use lora_wgpu::tokenizer::Tokenizer;
use serde_json::Value as Json;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_model")
}

fn file(name: &str) -> PathBuf {
    dir().join(format!("{name}.gguf"))
}

fn expected() -> Json {
    let path = dir().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/make_gguf_model_fixtures.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// The base model's logits and loss on the fixture's batch (an adapter with B = 0 adds nothing).
fn logits_and_loss(model: &Model, inputs: &[u32], targets: &[u32], t: usize) -> (Vec<f32>, f32) {
    let g = gpu();
    let lora = LoraConfig {
        target_modules: model.config.default_targets(),
        ..LoraConfig::default()
    };
    let zero = vec![0.0f32; LoraLayout::new(&model.config, &lora).unwrap().len];
    let b = inputs.len() / t;
    let mut graph = TrainGraph::new_eval(g, &model.transformer, &lora, Some(&zero), b, t).unwrap();
    graph.forward(g, inputs, targets).unwrap();
    let loss = graph.loss(g).unwrap();
    (graph.logits(g, &model.transformer).unwrap(), loss)
}

#[test]
fn gguf_logits_and_loss_match_transformers() {
    let json = expected();
    let (inputs, targets) = (ids(&json["inputs"]), targets(&json["targets"]));
    let t = json["seq_len"].as_u64().unwrap() as usize;
    let models = json["models"].as_object().unwrap();
    assert_eq!(models.len(), 6);
    for (name, want) in models {
        let start = Instant::now();
        let model = Model::load(gpu(), file(name).to_str().unwrap()).unwrap();
        let load = start.elapsed();
        assert_eq!(
            model.config.architecture(),
            want["architecture"].as_str().unwrap(),
            "{name}"
        );
        let (logits, loss) = logits_and_loss(&model, &inputs, &targets, t);
        assert_rel(&logits, &floats(&want["logits"]), 1e-3, 1e-3, name);
        let want_loss = want["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - want_loss).abs() <= 1e-3 * want_loss.abs(),
            "{name}: loss {loss} vs transformers {want_loss}"
        );
        // The same file dequantized to f32 on the host first gives the same logits; the
        // quantized weights passed through in their blocks take less memory.
        let gguf = GgufModel::open(&file(name)).unwrap();
        let f32_model = Model {
            transformer: Transformer::upload(gpu(), &gguf.config, &gguf.host_weights().unwrap())
                .unwrap(),
            ..Model::load(gpu(), file(name).to_str().unwrap()).unwrap()
        };
        let (dequantized, _) = logits_and_loss(&f32_model, &inputs, &targets, t);
        assert_rel(
            &logits,
            &dequantized,
            1e-4,
            1e-4,
            &format!("{name} via f32"),
        );
        let (ours, f32_bytes) = (
            model.transformer.allocated_bytes(),
            f32_model.transformer.allocated_bytes(),
        );
        if name.contains("q8_0") || name.contains("q4_0") {
            assert!(
                ours < f32_bytes,
                "{name}: {ours} B passed through vs {f32_bytes} B as f32"
            );
        } else {
            assert_eq!(ours, f32_bytes, "{name}");
        }
        println!(
            "{name}: loaded in {:.1} ms, {ours} bytes of weights on the GPU ({f32_bytes} as f32)",
            load.as_secs_f64() * 1e3,
        );
    }
}

#[test]
fn gguf_config_comes_from_the_metadata() {
    let cfg = |name: &str| GgufModel::open(&file(name)).unwrap().config;
    let llama = cfg("llama-q8_0");
    let l = llama.as_llama().unwrap();
    assert_eq!(llama.architecture(), "llama");
    assert_eq!(
        (l.hidden_size, l.intermediate_size, l.num_hidden_layers),
        (64, 128, 2)
    );
    assert_eq!((l.num_attention_heads, l.num_key_value_heads), (4, 2));
    assert_eq!((l.vocab_size, l.max_position_embeddings), (320, 64));
    assert_eq!((l.rms_norm_eps, l.rope.theta), (1e-5, 10000.0));
    assert!(!l.tie_word_embeddings);
    assert_eq!((l.bos_token_id, l.eos_token_id.clone()), (Some(0), vec![1]));
    assert!(cfg("llama-q4_0").tied_head(), "no output.weight: tied");
    let qwen3 = cfg("qwen3-q8_0");
    let q = qwen3.as_llama().unwrap();
    assert_eq!(qwen3.architecture(), "qwen3");
    assert_eq!(
        (q.head_dim(), q.num_key_value_heads, q.rope.theta),
        (128, 1, 1e6)
    );
    assert!(q.qk_norm() && q.tie_word_embeddings);
    let gpt2 = cfg("gpt2-q8_0");
    let g = gpt2.as_gpt2().unwrap();
    assert_eq!((g.n_embd, g.n_layer, g.n_head), (32, 2, 4));
    assert_eq!((g.n_positions, g.vocab_size), (1024, 320));

    // The source reads the same, and the parse of a .gguf path is the file.
    let src = ModelSource::parse(file("llama-q8_0").to_str().unwrap()).unwrap();
    assert_eq!(src, ModelSource::Gguf(file("llama-q8_0")));
    assert_eq!(src.config().unwrap(), llama);
    let err = ModelSource::parse("no/such/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.gguf") && err.contains("not found"),
        "{err}"
    );
}

/// Every checkpoint tensor has a GGUF name that maps back, and the file's own names map to the
/// checkpoint's; llama's q/k permutation round-trips and is llama.cpp's.
#[test]
fn gguf_names_and_permutation_round_trip() {
    for name in ["llama-q8_0", "qwen3-q8_0", "gpt2-q8_0"] {
        let m = GgufModel::open(&file(name)).unwrap();
        let host = m.host_weights().unwrap();
        for key in host.keys() {
            let g = gguf_name(&m.config, key).unwrap_or_else(|| panic!("{name}: {key}"));
            assert!(m.file.tensor(&g).is_some(), "{name}: {g}");
            assert_eq!(
                checkpoint_name(&m.config, &g).as_deref(),
                Some(key.as_str())
            );
        }
        // Every file tensor but GPT-2's copy of the tied head is one of them.
        let mapped = m
            .file
            .tensors()
            .iter()
            .filter(|t| t.name != "output.weight" || !matches!(m.config, ModelConfig::Gpt2(_)))
            .count();
        assert_eq!(mapped, host.len(), "{name}");
    }
    // llama.cpp's permute(w, n_head): reshape (n_head, 2, rows / n_head / 2, cols), swap axes
    // 1 and 2. Rows of 3 columns, 2 heads of 8 rows.
    let (rows, cols, heads) = (16, 3, 2);
    let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let p = permute_qk(&w, rows, heads);
    let half = rows / heads / 2;
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let from = h * 2 * half + s * half + j;
                let to = h * 2 * half + j * 2 + s;
                assert_eq!(
                    p[to * cols..(to + 1) * cols],
                    w[from * cols..(from + 1) * cols]
                );
            }
        }
    }
    assert_eq!(unpermute_qk(&p, rows, heads), w);
    // The F16 file's k rows, un-permuted, are transformers' k_proj: its logits match (above);
    // here the permuted rows differ from the un-permuted ones, so the test can tell.
    let m = GgufModel::open(&file("llama-f16")).unwrap();
    let k = m.file.dequantize("blk.0.attn_k.weight").unwrap();
    let host = m.host_weights().unwrap();
    let ours = &host["model.layers.0.self_attn.k_proj.weight"];
    assert_ne!(&k, ours);
    assert_eq!(&permute_qk(ours, 32, 2), &k);
}

#[test]
fn gguf_tokenizer_from_metadata_matches_tokenizer_json() {
    let json = expected();
    for (kind, file_name) in [
        ("llama", "llama-q8_0"),
        ("qwen3", "qwen3-q8_0"),
        ("gpt2", "gpt2-q8_0"),
    ] {
        let m = GgufModel::open(&file(file_name)).unwrap();
        let ours = m.metadata_tokenizer().unwrap();
        let theirs = Tokenizer::from_file(&dir().join(format!("{kind}-tokenizer.json"))).unwrap();
        assert_eq!(ours.vocab_size(), theirs.vocab_size(), "{kind}");
        for id in 0..theirs.vocab_size() as u32 {
            assert_eq!(
                ours.id_to_token(id),
                theirs.id_to_token(id),
                "{kind}: id {id}"
            );
        }
        let want = &json["tokenizers"][kind];
        let mut strings = 0;
        for case in want["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                ours.encode(text).unwrap(),
                ids(&case["ids"]),
                "{kind}: {text:?}"
            );
            assert_eq!(
                ours.encode_prompt(text).unwrap(),
                ids(&case["prompt_ids"]),
                "{kind} prompt: {text:?}"
            );
            assert_eq!(ours.decode(&ours.encode(text).unwrap()).unwrap(), text);
            strings += 1;
        }
        assert!(strings >= 5);
        // Special tokens: one token each, and the model's ends.
        let special = m.special_tokens().unwrap();
        let bos = ours.id_to_token(special.bos.unwrap()).unwrap();
        assert_eq!(
            ours.encode(&format!("{bos}a")).unwrap()[0],
            special.bos.unwrap()
        );
        assert!(!special.eos.is_empty());
    }
}

#[test]
fn gguf_tokenizer_json_beside_the_file_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    std::fs::copy(file("llama-q8_0"), &path).unwrap();
    let from_metadata = GgufModel::open(&path).unwrap().tokenizer().unwrap();
    assert_eq!(from_metadata.vocab_size(), 320);
    // GPT-2's tokenizer (50257 tokens) beside it is the one used.
    std::fs::write(
        tmp.path().join("tokenizer.json"),
        Tokenizer::gpt2().unwrap().to_json().unwrap(),
    )
    .unwrap();
    let beside = GgufModel::open(&path).unwrap().tokenizer().unwrap();
    assert_eq!(beside.vocab_size(), 50257);
}

/// A copy of fixture `name` with its metadata edited and tensors dropped, in `dir`.
fn edited(
    dir: &Path,
    name: &str,
    edit: impl Fn(&mut Vec<(String, Value)>),
    drop: &[&str],
) -> PathBuf {
    let src = GgufFile::open(&file(name)).unwrap();
    let mut meta = src.metadata().to_vec();
    edit(&mut meta);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add(&k, v);
    }
    for t in src.tensors() {
        if !drop.contains(&t.name.as_str()) {
            w.add_tensor(&t.name, &t.shape, t.ty, src.data(t).to_vec())
                .unwrap();
        }
    }
    let out = dir.join(format!("{name}-{}.gguf", dir.read_dir().unwrap().count()));
    w.write(&out).unwrap();
    out
}

fn set(meta: &mut [(String, Value)], key: &str, value: Value) {
    let slot = meta
        .iter_mut()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key}"));
    slot.1 = value;
}

#[test]
fn gguf_files_we_cannot_use_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let open = |path: &Path| GgufModel::open(path).unwrap_err().to_string();
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            edited(
                tmp.path(),
                "llama-q8_0",
                |m| set(m, "general.architecture", Value::String("falcon".into())),
                &[],
            ),
            vec!["\"falcon\"", "gpt2, llama", "qwen3"],
        ),
        (
            edited(
                tmp.path(),
                "llama-q8_0",
                |m| set(m, "llama.embedding_length", Value::U32(48)),
                &[],
            ),
            vec![
                "token_embd.weight is [320, 64]",
                "llama.embedding_length = 48",
            ],
        ),
        (
            edited(
                tmp.path(),
                "llama-q8_0",
                |m| set(m, "llama.block_count", Value::U32(3)),
                &[],
            ),
            vec!["llama.block_count = 3", "2 blocks"],
        ),
        (
            edited(
                tmp.path(),
                "llama-q8_0",
                |m| set(m, "llama.attention.head_count_kv", Value::U32(3)),
                &[],
            ),
            vec![
                "llama.attention.head_count_kv = 3 does not divide",
                "head_count = 4",
            ],
        ),
        (
            edited(tmp.path(), "llama-q8_0", |_| {}, &["blk.1.attn_k.weight"]),
            vec![
                "missing tensor blk.1.attn_k.weight",
                "model.layers.1.self_attn.k_proj.weight",
            ],
        ),
        (
            edited(
                tmp.path(),
                "gpt2-q8_0",
                |m| set(m, "gpt2.embedding_length", Value::U32(64)),
                &[],
            ),
            vec![
                "token_embd.weight is [320, 32]",
                "gpt2.embedding_length = 64",
            ],
        ),
    ];
    for (path, wants) in &cases {
        let err = open(path);
        for w in wants {
            assert!(err.contains(w), "{w:?} missing in: {err}");
        }
        // The CLI's model loading fails the same way.
        let spec = path.to_str().unwrap();
        assert!(Model::load(gpu(), spec).is_err());
    }

    // A SentencePiece tokenizer without tokenizer.json beside the file; then with one.
    let spm = edited(
        tmp.path(),
        "llama-q8_0",
        |m| set(m, "tokenizer.ggml.model", Value::String("llama".into())),
        &[],
    );
    let m = GgufModel::open(&spm).unwrap();
    let err = m.tokenizer().unwrap_err().to_string();
    for w in [
        "\"llama\" (SentencePiece)",
        "tokenizer.json",
        "beside the file",
    ] {
        assert!(err.contains(w), "{w:?} missing in: {err}");
    }
    let pre = edited(
        tmp.path(),
        "llama-q8_0",
        |m| set(m, "tokenizer.ggml.pre", Value::String("falcon".into())),
        &[],
    );
    let err = GgufModel::open(&pre)
        .unwrap()
        .tokenizer()
        .unwrap_err()
        .to_string();
    for w in [
        "\"falcon\"",
        "llama-bpe",
        "qwen2",
        "smollm",
        "tokenizer.json",
    ] {
        assert!(err.contains(w), "{w:?} missing in: {err}");
    }
    std::fs::copy(
        dir().join("llama-tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    assert_eq!(m.tokenizer().unwrap().vocab_size(), 320);
}

#[test]
fn gguf_model_trains_evaluates_and_generates_from_the_cli() {
    let _ = gpu(); // fail with the library's message when there is no adapter
    let tmp = tempfile::tempdir().unwrap();
    let model = file("llama-q4_0");
    let m = model.to_str().unwrap();
    let text = tmp.path().join("data.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let data = text.to_str().unwrap();
    let out = tmp.path().join("run");
    let (ok, stdout, stderr) = run(&[
        "train",
        "--model",
        m,
        "--data",
        data,
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "8",
        "--block-size",
        "32",
        "--batch-size",
        "2",
        "--lr",
        "1e-2",
    ]);
    assert!(ok, "train failed:\n{stdout}\n{stderr}");
    assert!(out.join("adapter_model.safetensors").is_file());
    let cfg: Json =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );

    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            m,
            "--data",
            data,
            "--block-size",
            "32",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "eval failed:\n{stderr}");
        let v: Json = serde_json::from_str(stdout.trim()).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let base = eval(&[]);
    let tuned = eval(&["--adapter", out.to_str().unwrap()]);
    assert!(
        tuned < base - 0.1,
        "training lowered the loss only from {base} to {tuned}"
    );

    let (ok, stdout, stderr) = run(&[
        "generate",
        "--model",
        m,
        "--adapter",
        out.to_str().unwrap(),
        "--prompt",
        "The quick",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    assert!(ok, "generate failed:\n{stderr}");
    assert!(stdout.starts_with("The quick"), "{stdout}");
    let (ok, stdout, stderr) = run(&["info", "--model", m]);
    assert!(ok, "info failed:\n{stderr}");
    for w in [
        "llama, 2 layers",
        "GGUF tensors by type:",
        "f32 5 (",
        "q4_0 13 (",
        "q5_0 2 (",
    ] {
        assert!(stdout.contains(w), "{w:?} missing in:\n{stdout}");
    }
}
