//! The `lora-wgpu` binary on a Llama-family model directory, as a user downloads one: a small
//! random llama with a byte-level tokenizer, a ChatML chat template and a generation config.
//! Every command (train on chat data, eval, generate, merge, info) runs; the merged directory
//! gives the adapter's loss; bad chat data and a model without a template are clear errors.

mod common;

use std::path::{Path, PathBuf};

use common::{cli as run, gpu};
use lora_wgpu::merge::save_hf_dir;
use lora_wgpu::model::{llama, LlamaConfig};
use lora_wgpu::tokenizer::Tokenizer;

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A byte-level BPE tokenizer (256 byte symbols, a few merges) with ChatML's special tokens.
fn tokenizer() -> tokenizers::Tokenizer {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::AddedToken;
    let mut symbols: Vec<String> = ByteLevel::alphabet()
        .into_iter()
        .map(String::from)
        .collect();
    symbols.sort();
    let merges: Vec<(String, String)> = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    symbols.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    let vocab: tokenizers::models::bpe::Vocab = symbols
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<_> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    t.add_special_tokens(&specials);
    t
}

/// Write the model directory: config.json, model.safetensors, tokenizer.json, and (with
/// `template`) tokenizer_config.json with the ChatML template and generation_config.json.
fn model_dir(root: &Path, template: bool) -> PathBuf {
    let dir = root.join(if template { "chat-model" } else { "base-model" });
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = LlamaConfig::named("llama-tiny").unwrap();
    let tok_path = root.join("tokenizer.json");
    tokenizer().save(&tok_path, false).unwrap();
    let tok = Tokenizer::from_file(&tok_path).unwrap();
    assert!(tok.vocab_size() <= cfg.vocab_size);
    let weights = llama::weights::random(&cfg, 5);
    save_hf_dir(&dir, &cfg, &weights, &tok, None, false).unwrap();
    if template {
        let chatml = include_str!("fixtures/chat/qwen2.5.jinja");
        let tc = serde_json::json!({
            "chat_template": chatml,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "bos_token": null,
        });
        std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
        let end = |s: &str| tok.token_to_id(s).unwrap();
        let gc = serde_json::json!({"eos_token_id": [end("<|im_end|>"), end("<|endoftext|>")]});
        std::fs::write(dir.join("generation_config.json"), gc.to_string()).unwrap();
    }
    dir
}

fn chat_file(root: &Path, lines: &[serde_json::Value]) -> PathBuf {
    let path = root.join("chat.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    path
}

fn conversation(i: usize) -> serde_json::Value {
    serde_json::json!({"messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": format!("What is {i} plus {i}?")},
        {"role": "assistant", "content": format!("{}", 2 * i)},
        {"role": "user", "content": "And the other way?"},
        {"role": "assistant", "content": format!("Still {}.", 2 * i)},
    ]})
}

fn loss_of(stdout: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    v["loss"].as_f64().unwrap()
}

#[test]
fn llama_chat_model_trains_generates_merges_and_reports() {
    let _ = gpu(); // fail with the library's message when there is no adapter
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root, true);
    let m = model.to_str().unwrap();
    let lines: Vec<_> = (0..24).map(conversation).collect();
    let data = chat_file(root, &lines);
    let out = root.join("run");
    let (ok, stdout, stderr) = run(&[
        "train",
        "--model",
        m,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "4",
        "--block-size",
        "64",
        "--batch-size",
        "2",
        "--lr",
        "1e-2",
    ]);
    assert!(ok, "train failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("llama, 4 layers"), "{stdout}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    assert_eq!(cfg["fan_in_fan_out"], false);

    // The adapter's loss, then the merged model's on the same text: equal.
    let text = root.join("held-out.txt");
    std::fs::write(&text, "What is 7 plus 7? 14. The other way? Still 14.").unwrap();
    let t = text.to_str().unwrap();
    let adapter = out.to_str().unwrap();
    let eval = |args: &[&str]| {
        let (ok, stdout, stderr) = run(args);
        assert!(ok, "eval failed:\n{stderr}");
        loss_of(&stdout)
    };
    let base = eval(&[
        "eval",
        "--model",
        m,
        "--data",
        t,
        "--block-size",
        "16",
        "--json",
    ]);
    let tuned = eval(&[
        "eval",
        "--model",
        m,
        "--adapter",
        adapter,
        "--data",
        t,
        "--block-size",
        "16",
        "--json",
    ]);
    assert!((base - tuned).abs() > 1e-4, "the adapter changed nothing");
    let merged = root.join("merged");
    let (ok, _, stderr) = run(&[
        "merge",
        "--model",
        m,
        "--adapter",
        adapter,
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(ok, "merge failed:\n{stderr}");
    for f in [
        "config.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let (a, b) = (
            std::fs::read_to_string(model.join(f)).unwrap(),
            std::fs::read_to_string(merged.join(f)).unwrap(),
        );
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&a).unwrap(),
            serde_json::from_str(&b).unwrap(),
        );
        assert_eq!(a, b, "{f} of the merged model");
    }
    let merged_dir = merged.to_str().unwrap();
    let merged_loss = eval(&[
        "eval",
        "--model",
        merged_dir,
        "--data",
        t,
        "--block-size",
        "16",
        "--json",
    ]);
    assert!(
        (merged_loss - tuned).abs() <= 1e-4 * tuned.abs(),
        "merged {merged_loss} vs adapter {tuned}"
    );

    let (ok, stdout, stderr) = run(&[
        "generate",
        "--model",
        m,
        "--adapter",
        adapter,
        "--prompt",
        "<|im_start|>user\nWhat is 3 plus 3?<|im_end|>\n<|im_start|>assistant\n",
        "--max-new-tokens",
        "6",
        "--temperature",
        "0",
    ]);
    assert!(ok, "generate failed:\n{stderr}");
    assert!(stdout.starts_with("<|im_start|>user"), "{stdout}");

    let (ok, stdout, stderr) = run(&["info", "--model", m, "--targets", "all-linear"]);
    assert!(ok, "info failed:\n{stderr}");
    for name in ["self_attn.q_proj", "mlp.down_proj", "trainable params:"] {
        assert!(stdout.contains(name), "{name} missing:\n{stdout}");
    }
    assert!(stdout.contains("4 heads (2 kv)"), "{stdout}");
}

#[test]
fn llama_chat_data_errors_are_clear() {
    let _ = gpu();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let out = root.join("run");
    let train = |model: &Path, data: &Path| {
        run(&[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
            "--block-size",
            "32",
        ])
    };
    // A chat file for a model without a chat template.
    let data = chat_file(root, &[conversation(1)]);
    let (ok, _, stderr) = train(&model_dir(root, false), &data);
    assert!(!ok);
    assert!(
        stderr.contains("chat data") && stderr.contains("chat_template"),
        "{stderr}"
    );
    // A message with a role the format does not have.
    let bad = serde_json::json!({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "narrator", "content": "and so on"},
    ]});
    let data = chat_file(root, &[conversation(1), bad]);
    let (ok, _, stderr) = train(&model_dir(root, true), &data);
    assert!(!ok);
    assert!(
        stderr.contains("narrator") && stderr.contains("line 2"),
        "{stderr}"
    );
    assert!(
        !out.exists(),
        "a failed start left {} behind",
        out.display()
    );

    // An architecture we do not train, a rope type we do not do, a missing tokenizer.json, a
    // sharded index naming a missing shard: each named, before anything is written.
    let text = root.join("text.txt");
    std::fs::write(
        &text,
        "some text to train on, long enough for a block or two.",
    )
    .unwrap();
    let edit_config = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = model_dir(root, true);
        let moved = root.join(name);
        std::fs::rename(&dir, &moved).unwrap();
        let path = moved.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(&path, cfg.to_string()).unwrap();
        moved
    };
    let neox = edit_config("neox", &|c| c["model_type"] = "gpt_neox".into());
    let yarn = edit_config("yarn", &|c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0})
    });
    let no_tok = edit_config("no-tokenizer", &|_| {});
    std::fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
    let sharded = edit_config("sharded", &|_| {});
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors",
    }});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    for (model, wants) in [
        (&neox, &["gpt_neox", "llama, qwen2, qwen3"][..]),
        (&yarn, &["yarn", "llama3"]),
        (&no_tok, &["tokenizer.json"]),
        (&sharded, &["model-00001-of-00002.safetensors"]),
    ] {
        let (ok, _, stderr) = train(model, &text);
        assert!(!ok, "{} trained", model.display());
        for w in wants {
            assert!(
                stderr.contains(w),
                "{}: {w} missing in:\n{stderr}",
                model.display()
            );
        }
        assert!(!out.exists());
    }
}
