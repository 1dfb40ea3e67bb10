//! Helpers: run the binary and check its failure, the scratch directory, file edits.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::Dtype;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_gpt2");

/// Words of the test tokenizer: `w0` .. `w97`, then `[UNK]` = 98 (the fixture's vocab is 99).
const WORDS: usize = 98;

/// Run the binary; (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lora-wgpu"))
        .args(args)
        .env_remove("WGPU_ADAPTER_NAME")
        .output()
        .expect("failed to start lora-wgpu");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `args`, which must fail cleanly: exit code 1, no panic, an `error:` line containing
/// every one of `expect` (case-insensitive), and none of `absent` on disk afterwards.
#[track_caller]
pub fn fails(args: &[&str], expect: &[&str], absent: &[&Path]) -> String {
    let (code, stdout, stderr) = run(args);
    let context = format!(
        "lora-wgpu {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    assert_eq!(code, Some(1), "expected exit code 1: {context}");
    assert!(!stderr.contains("panicked"), "panicked: {context}");
    let error = stderr
        .lines()
        .skip_while(|l| !l.starts_with("error: "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!error.is_empty(), "no `error:` line: {context}");
    for e in expect {
        assert!(
            error.to_lowercase().contains(&e.to_lowercase()),
            "the error does not mention {e:?}: {context}"
        );
    }
    for p in absent {
        assert!(!p.exists(), "{} was left behind: {context}", p.display());
    }
    error
}

/// A 99-token word-level tokenizer for the fixture model.
fn tokenizer_json() -> String {
    let mut vocab: serde_json::Map<String, serde_json::Value> = (0..WORDS)
        .map(|i| (format!("w{i}"), serde_json::Value::from(i)))
        .collect();
    vocab.insert("[UNK]".into(), WORDS.into());
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

/// `n` words of text the test tokenizer knows (one token each).
pub fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{}", (i * 7 + i / 5) % WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A scratch directory with `model/` (the fixture model + tokenizer.json), `adapter/` (the
/// fixture adapter) and `text.txt` (400 tokens).
pub struct Scratch {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        copy_dir(&Path::new(FIXTURE).join("model"), &root.join("model"));
        std::fs::write(root.join("model/tokenizer.json"), tokenizer_json()).unwrap();
        copy_dir(&Path::new(FIXTURE).join("adapter"), &root.join("adapter"));
        std::fs::write(root.join("text.txt"), words(400)).unwrap();
        Scratch { _dir: dir, root }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    pub fn s(&self, p: &str) -> String {
        self.path(p).to_str().unwrap().to_string()
    }

    /// A copy of `model/` named `name`, changed by `edit`.
    pub fn model_variant(&self, name: &str, edit: impl FnOnce(&Path)) -> String {
        let dir = self.path(name);
        copy_dir(&self.path("model"), &dir);
        edit(&dir);
        dir.to_str().unwrap().to_string()
    }

    /// A copy of `adapter/` named `name`, changed by `edit`.
    pub fn adapter_variant(&self, name: &str, edit: impl FnOnce(&Path)) -> String {
        let dir = self.path(name);
        copy_dir(&self.path("adapter"), &dir);
        edit(&dir);
        dir.to_str().unwrap().to_string()
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrite a safetensors file after `edit` changes its tensors.
pub fn rewrite_safetensors(path: &Path, edit: impl FnOnce(&mut Tensors)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut items: Tensors = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut items);
    let views: Vec<_> = items
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

pub fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// The smallest training run: 1 step of 1 x 16 tokens, no validation, no sample worth reading.
pub fn train_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        "1",
        "--block-size",
        "16",
        "--batch-size",
        "1",
        "--rank",
        "2",
    ]
}
