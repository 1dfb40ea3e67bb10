//! The bundled GPT-2 tokenizer against transformers' GPT2TokenizerFast (fixture written by
//! scripts/make_fixtures.py over the same vocabulary files).

use lora_wgpu::tokenizer::{Tokenizer, EOT};

#[test]
fn gpt2_tokenizer_matches_transformers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gpt2_tokenizer.json"
    );
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text).unwrap(), want, "encoding {text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text, "decoding {text:?}");
    }
    assert_eq!(tok.encode("<|endoftext|>").unwrap(), vec![EOT]);
}

#[test]
fn model_dir_without_tokenizer_json_uses_gpt2s() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny_gpt2/model"
    );
    let tok = Tokenizer::for_model_dir(std::path::Path::new(dir)).unwrap();
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("tokenizer.json"), "{}").unwrap();
    let e = Tokenizer::for_model_dir(bad.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

/// A model directory's tokenizer.json against transformers' fast tokenizer over the same file
/// (fixtures from scripts/make_tokenizer_fixtures.py): Llama 3's byte-level BPE with its digit
/// and whitespace split and special tokens, and SentencePiece-style BPE with byte fallback in
/// the form Llama 2 / TinyLlama ship (and the Metaspace form transformers 5 writes). ASCII,
/// Unicode, digits, whitespace runs and special tokens, encoded without added specials and
/// decoded back.
#[test]
fn llama_family_tokenizers_match_transformers() {
    for name in ["bytelevel", "sentencepiece", "sentencepiece_metaspace"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizers")
            .join(name);
        let tok = Tokenizer::for_model_dir(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join("cases.json")).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = cases.as_array().unwrap();
        assert!(cases.len() >= 10, "{name}: {} cases", cases.len());
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text).unwrap(), want, "{name}: encoding {text:?}");
            let decoded = case["decoded"].as_str().unwrap();
            assert_eq!(
                tok.decode(&want).unwrap(),
                decoded,
                "{name}: decoding {text:?}"
            );
        }
    }
}
