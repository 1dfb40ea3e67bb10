//! What the `lora-wgpu` binary does when something is wrong (issue 5): for every kind of bad
//! input it must exit with status 1 (not a panic's 101), print one `error:` that says what was
//! wrong and what to do, and leave no output file or directory behind.
//!
//! Each case runs the real binary. Model and adapter files come from the tiny fixture
//! (`tests/fixtures/tiny_gpt2`: 2 layers, 48 channels, 32 positions, vocab 99) copied into a
//! temporary directory together with a 99-word `tokenizer.json` written here, so text data can
//! be trained on it in a fraction of a second per step.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::Dtype;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_gpt2");

/// Words of the test tokenizer: `w0` .. `w97`, then `[UNK]` = 98 (the fixture's vocab is 99).
const WORDS: usize = 98;

/// Run the binary; (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
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
fn fails(args: &[&str], expect: &[&str], absent: &[&Path]) -> String {
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
fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{}", (i * 7 + i / 5) % WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A scratch directory with `model/` (the fixture model + tokenizer.json), `adapter/` (the
/// fixture adapter) and `text.txt` (400 tokens).
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        copy_dir(&Path::new(FIXTURE).join("model"), &root.join("model"));
        std::fs::write(root.join("model/tokenizer.json"), tokenizer_json()).unwrap();
        copy_dir(&Path::new(FIXTURE).join("adapter"), &root.join("adapter"));
        std::fs::write(root.join("text.txt"), words(400)).unwrap();
        Scratch { _dir: dir, root }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    fn s(&self, p: &str) -> String {
        self.path(p).to_str().unwrap().to_string()
    }

    /// A copy of `model/` named `name`, changed by `edit`.
    fn model_variant(&self, name: &str, edit: impl FnOnce(&Path)) -> String {
        let dir = self.path(name);
        copy_dir(&self.path("model"), &dir);
        edit(&dir);
        dir.to_str().unwrap().to_string()
    }

    /// A copy of `adapter/` named `name`, changed by `edit`.
    fn adapter_variant(&self, name: &str, edit: impl FnOnce(&Path)) -> String {
        let dir = self.path(name);
        copy_dir(&self.path("adapter"), &dir);
        edit(&dir);
        dir.to_str().unwrap().to_string()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrite a safetensors file after `edit` changes its tensors.
fn rewrite_safetensors(path: &Path, edit: impl FnOnce(&mut Tensors)) {
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

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// The smallest training run: 1 step of 1 x 16 tokens, no validation, no sample worth reading.
fn train_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
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

/// Model files: `merge` (no GPU needed) reads config.json and model.safetensors with the same
/// loader as train/eval/generate; the merged output must not appear.
#[test]
fn bad_model_files_are_clear_errors() {
    let s = Scratch::new();
    let adapter = s.s("adapter");
    let out = s.path("merged");
    let outs = out.to_str().unwrap();
    let merge = |model: &str, expect: &[&str]| {
        fails(
            &[
                "merge",
                "--model",
                model,
                "--adapter",
                &adapter,
                "--out",
                outs,
            ],
            expect,
            &[&out],
        );
    };
    // The fixture itself merges (so the failures below are the edits' doing).
    let (code, _, stderr) = run(&[
        "merge",
        "--model",
        &s.s("model"),
        "--adapter",
        &adapter,
        "--out",
        outs,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();

    // Missing model directory (train, eval and merge share ModelSource).
    let nope = s.s("no-such-model");
    merge(&nope, &["no-such-model", "not found", "config.json"]);
    fails(
        &train_args(&nope, &s.s("text.txt"), &s.s("run")),
        &["no-such-model", "not found"],
        &[&s.path("run")],
    );
    // A directory without the files.
    std::fs::create_dir(s.path("empty-model")).unwrap();
    merge(&s.s("empty-model"), &["has no config.json"]);
    let m = s.model_variant("no-weights", |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap()
    });
    merge(&m, &["has no model.safetensors"]);
    // config.json: not JSON, a field missing, a bad value, an unsupported activation.
    let m = s.model_variant("cfg-garbage", |d| {
        std::fs::write(d.join("config.json"), "{ n_embd: 48,").unwrap()
    });
    merge(&m, &["config.json", "not a GPT-2 config.json", "n_embd"]);
    let m = s.model_variant("cfg-missing", |d| {
        edit_json(&d.join("config.json"), |v| {
            v.as_object_mut().unwrap().remove("vocab_size");
        })
    });
    merge(&m, &["config.json", "vocab_size"]);
    let m = s.model_variant("cfg-heads", |d| {
        edit_json(&d.join("config.json"), |v| v["n_head"] = 5.into())
    });
    merge(&m, &["config.json", "n_head"]);
    let m = s.model_variant("cfg-huge", |d| {
        edit_json(&d.join("config.json"), |v| {
            v["vocab_size"] = (1u64 << 40).into()
        })
    });
    merge(&m, &["config.json", "too large"]);
    let m = s.model_variant("cfg-relu", |d| {
        edit_json(&d.join("config.json"), |v| {
            v["activation_function"] = "relu".into()
        })
    });
    merge(
        &m,
        &["config.json", "activation_function", "relu", "gelu_new"],
    );
    // model.safetensors: truncated (header intact, data cut), cut inside the header, empty,
    // random bytes.
    let weights = std::fs::read(s.path("model/model.safetensors")).unwrap();
    for (name, bytes) in [
        ("st-half", weights[..weights.len() / 2].to_vec()),
        ("st-header", weights[..20].to_vec()),
        ("st-empty", Vec::new()),
        (
            "st-noise",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
    ] {
        let m = s.model_variant(name, |d| {
            std::fs::write(d.join("model.safetensors"), &bytes).unwrap()
        });
        merge(&m, &["model.safetensors", "truncated or corrupt"]);
    }
    // A tensor of the wrong shape, of an unsupported dtype, missing, or unknown.
    let m = s.model_variant("st-shape", |d| {
        rewrite_safetensors(&d.join("model.safetensors"), |t| {
            let wpe = t.iter_mut().find(|t| t.0.ends_with("wpe.weight")).unwrap();
            wpe.2 = vec![wpe.2[1], wpe.2[0]];
        })
    });
    merge(
        &m,
        &["wpe.weight", "has shape [48, 32]", "expected [32, 48]"],
    );
    let m = s.model_variant("st-dtype", |d| {
        rewrite_safetensors(&d.join("model.safetensors"), |t| {
            let ln = t.iter_mut().find(|t| t.0.ends_with("ln_f.bias")).unwrap();
            ln.1 = Dtype::I32;
        })
    });
    merge(
        &m,
        &[
            "ln_f.bias",
            "dtype I32 is not supported",
            "f32, f16 or bf16",
        ],
    );
    let m = s.model_variant("st-missing", |d| {
        rewrite_safetensors(&d.join("model.safetensors"), |t| {
            t.retain(|t| !t.0.ends_with("h.1.ln_2.bias"))
        })
    });
    merge(&m, &["missing tensors", "h.1.ln_2.bias"]);
    let m = s.model_variant("st-extra", |d| {
        rewrite_safetensors(&d.join("model.safetensors"), |t| {
            t.push(("h.0.extra".into(), Dtype::F32, vec![1], vec![0; 4]))
        })
    });
    merge(&m, &["unexpected tensors", "h.0.extra"]);

    // The same loader under train: a corrupt checkpoint stops before --out is created.
    let m = s.path("st-half").to_str().unwrap().to_string();
    fails(
        &train_args(&m, &s.s("text.txt"), &s.s("run")),
        &["truncated or corrupt"],
        &[&s.path("run")],
    );
}

/// PEFT adapters: made for another model, unknown keys, bad values in adapter_config.json.
#[test]
fn bad_adapters_are_clear_errors() {
    let s = Scratch::new();
    let model = s.s("model");
    let out = s.path("merged");
    let outs = out.to_str().unwrap();
    let merge = |adapter: &str, expect: &[&str]| {
        fails(
            &[
                "merge",
                "--model",
                &model,
                "--adapter",
                adapter,
                "--out",
                outs,
            ],
            expect,
            &[&out],
        );
    };
    // Made for another model: the fixture adapter (C = 48) on the built-in tiny (C = 128),
    // both through eval (GPU) and merge.
    fails(
        &[
            "eval",
            "--model",
            "tiny",
            "--adapter",
            &s.s("adapter"),
            "--data",
            &s.s("text.txt"),
            "--block-size",
            "16",
        ],
        &["lora_A.weight", "has shape [4, 48]", "another model"],
        &[],
    );
    fails(
        &[
            "merge",
            "--model",
            "tiny",
            "--adapter",
            &s.s("adapter"),
            "--out",
            outs,
        ],
        &["another model"],
        &[&out],
    );
    // Its weights file has tensors its config does not name.
    let a = s.adapter_variant("a-extra", |d| {
        edit_json(&d.join("adapter_config.json"), |v| {
            v["target_modules"] = serde_json::json!(["c_attn"])
        })
    });
    merge(&a, &["unexpected tensors", "c_proj.lora_A.weight"]);
    let a = s.adapter_variant("a-unknown-key", |d| {
        rewrite_safetensors(&d.join("adapter_model.safetensors"), |t| {
            t.push((
                "base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector".into(),
                Dtype::F32,
                vec![4],
                vec![0; 16],
            ))
        })
    });
    merge(&a, &["unexpected tensors", "lora_magnitude_vector"]);
    // Missing tensors (config targets more than the file has).
    let a = s.adapter_variant("a-missing", |d| {
        edit_json(&d.join("adapter_config.json"), |v| {
            v["target_modules"] = serde_json::json!(["c_attn", "c_proj", "c_fc"])
        })
    });
    merge(&a, &["missing tensor", "c_fc"]);
    // Values outside their range, named with the file.
    for (name, field, value, expect) in [
        ("a-r0", "r", serde_json::json!(0), "rank"),
        ("a-r-big", "r", serde_json::json!(49), "rank"),
        ("a-alpha", "lora_alpha", serde_json::json!(-1.0), "alpha"),
        (
            "a-dropout",
            "lora_dropout",
            serde_json::json!(1.0),
            "dropout",
        ),
        ("a-type", "peft_type", serde_json::json!("IA3"), "only LORA"),
        (
            "a-r-str",
            "r",
            serde_json::json!("four"),
            "not a PEFT adapter_config.json",
        ),
    ] {
        let a = s.adapter_variant(name, |d| {
            edit_json(&d.join("adapter_config.json"), |v| v[field] = value.clone())
        });
        merge(&a, &["adapter_config.json", expect]);
    }
    // Truncated weights, missing directory.
    let a = s.adapter_variant("a-trunc", |d| {
        let p = d.join("adapter_model.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    });
    merge(&a, &["adapter_model.safetensors", "truncated or corrupt"]);
    merge(
        &s.s("no-such-adapter"),
        &["no-such-adapter", "adapter_config.json"],
    );
}

/// `--adapter DIR:SCALE` whose scale is not a number says so, for generate and merge (it once
/// reported `DIR:abc/adapter_config.json: No such file or directory`); a directory whose name
/// contains ':' still loads without a scale.
#[test]
fn an_adapter_scale_that_is_not_a_number_is_named() {
    let s = Scratch::new();
    let out = s.path("merged");
    let bad = format!("{}:abc", s.s("adapter"));
    let expect = ["`abc` is not a number", "DIR:SCALE", "0.5"];
    fails(
        &[
            "generate",
            "--model",
            &s.s("model"),
            "--adapter",
            &bad,
            "--prompt",
            "w1",
        ],
        &expect,
        &[],
    );
    fails(
        &[
            "merge",
            "--model",
            &s.s("model"),
            "--adapter",
            &bad,
            "--out",
            out.to_str().unwrap(),
        ],
        &expect,
        &[&out],
    );
    copy_dir(&s.path("adapter"), &s.path("adapter:v2"));
    let (code, stdout, stderr) = run(&[
        "merge",
        "--model",
        &s.s("model"),
        "--adapter",
        &s.s("adapter:v2"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("merged 1 adapter(s)"), "{stdout}");
}

/// LoRA and training hyperparameters outside their ranges. LoRA values are checked by `info`
/// (no GPU); the others by `train`, which must not create --out.
#[test]
fn bad_hyperparameters_are_clear_errors() {
    let s = Scratch::new();
    let model = s.s("model");
    // The fixture has n_embd 48, so min(d_in, d_out) = 48 for every linear layer.
    for (flag, value, expect) in [
        ("--rank", "0", &["invalid rank = 0", "1..=48"][..]),
        ("--rank", "49", &["invalid rank = 49", "min(d_in, d_out)"]),
        ("--alpha", "0", &["invalid alpha = 0", "> 0"]),
        ("--alpha", "-2", &["invalid alpha = -2", "> 0"]),
        ("--alpha", "NaN", &["alpha", "> 0"]),
        ("--dropout", "1", &["invalid dropout = 1", "[0, 1)"]),
        ("--dropout", "-0.1", &["invalid dropout = -0.1", "[0, 1)"]),
        ("--targets", "q_proj", &["q_proj", "matches no module"]),
    ] {
        // `--flag=value`: a negative value would otherwise look like a flag to clap.
        let arg = format!("{flag}={value}");
        fails(&["info", "--model", &model, &arg], expect, &[]);
    }
    let text = s.s("text.txt");
    let out = s.path("run");
    let outs = out.to_str().unwrap();
    for (flag, value, expect) in [
        ("--rank", "0", &["invalid rank = 0"][..]),
        ("--alpha", "0", &["invalid alpha = 0"]),
        ("--dropout", "1", &["invalid dropout = 1"]),
        ("--lr", "0", &["invalid learning rate = 0", "> 0"]),
        ("--lr", "-0.001", &["invalid learning rate = -0.001", "> 0"]),
        (
            "--batch-size",
            "0",
            &["invalid batch size = 0", "at least 1"],
        ),
        (
            "--block-size",
            "33",
            &["invalid block size = 33", "2..=32", "n_positions"],
        ),
        (
            "--grad-accum",
            "0",
            &["gradient accumulation", "at least 1"],
        ),
        (
            "--val-split",
            "1.5",
            &["validation fraction = 1.5", "(0, 1)"],
        ),
        (
            "--lr-scheduler",
            "step",
            &["lr scheduler", "linear, cosine or constant"],
        ),
    ] {
        let mut args = train_args(&model, &text, outs);
        // A second --rank/--batch-size/--block-size would be a clap error: drop the value
        // train_args set for the flag under test.
        if let Some(i) = args.iter().position(|a| *a == flag) {
            args.drain(i..i + 2);
        }
        let arg = format!("{flag}={value}");
        args.push(&arg);
        fails(&args, expect, &[&out]);
    }
    // eval checks its window and batch too.
    fails(
        &[
            "eval",
            "--model",
            &model,
            "--data",
            &text,
            "--block-size",
            "64",
        ],
        &["invalid block size = 64", "n_positions"],
        &[],
    );
    fails(
        &[
            "eval",
            "--model",
            &model,
            "--data",
            &text,
            "--batch-size",
            "0",
        ],
        &["batch size = 0"],
        &[],
    );
}

/// Training data: empty, shorter than one block, not UTF-8, a jsonl line that is not JSON.
#[test]
fn bad_data_is_a_clear_error() {
    let s = Scratch::new();
    let model = s.s("model");
    let out = s.path("run");
    let outs = out.to_str().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(s.path(name), bytes).unwrap();
        s.s(name)
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            write("empty.txt", b""),
            vec!["empty.txt", "the file is empty"],
        ),
        (
            write("short.txt", words(10).as_bytes()),
            vec!["10 tokens", "shorter than one block of 16", "--block-size"],
        ),
        (
            write("latin1.txt", b"w1 w2 caf\xe9 w3"),
            vec![
                "latin1.txt",
                "not valid UTF-8",
                "0xE9",
                "byte offset 9",
                "line 1",
                "iconv",
            ],
        ),
        (
            write(
                "bad.jsonl",
                format!(
                    "{{\"text\": \"{}\"}}\n\n{{\"text\": \"w1 w2\"\n{{\"text\": \"w3\"}}\n",
                    words(40)
                )
                .as_bytes(),
            ),
            vec!["bad.jsonl", "line 3", "not valid JSON"],
        ),
        (
            write("fields.jsonl", b"{\"prompt\": \"w1\"}\n"),
            vec!["line 1", "missing field \"completion\""],
        ),
        (s.s("no-such.txt"), vec!["no-such.txt", "data not found"]),
    ];
    for (data, expect) in cases {
        fails(&train_args(&model, &data, outs), &expect, &[&out]);
    }
    fails(
        &["eval", "--model", &model, "--data", &s.s("empty.txt")],
        &["the file is empty"],
        &[],
    );
}

/// --out: a directory that holds a run is refused without --overwrite or --resume (and left
/// untouched); a path that cannot be written fails before any training, with a hint.
#[test]
fn output_dir_problems_are_clear_errors() {
    let s = Scratch::new();
    let model = s.s("model");
    let text = s.s("text.txt");

    // A real (1-step) run, then the same --out again. Its validation set (2 or 3 blocks) is
    // smaller than a batch of 4, so evaluation pads the batch: the padding must be a token of
    // this 99-token vocabulary (it once was GPT-2's <|endoftext|>, 50256).
    let out = s.s("run");
    let mut first = train_args(&model, &text, &out);
    let i = first.iter().position(|a| *a == "--batch-size").unwrap();
    first[i + 1] = "4";
    first.extend(["--val-split", "0.1"]);
    let (code, stdout, stderr) = run(&first);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let state = std::fs::read(s.path("run/trainer_state.json")).unwrap();
    fails(
        &train_args(&model, &text, &out),
        &["already holds a training run", "--resume", "--overwrite"],
        &[],
    );
    assert_eq!(
        std::fs::read(s.path("run/trainer_state.json")).unwrap(),
        state,
        "the refused run changed the old one"
    );
    // --overwrite replaces it; --resume of a finished run is a no-op that succeeds.
    let mut again = train_args(&model, &text, &out);
    again.push("--overwrite");
    let (code, _, stderr) = run(&again);
    assert_eq!(code, Some(0), "--overwrite: {stderr}");
    let mut resume = train_args(&model, &text, &out);
    resume.push("--resume");
    let (code, stdout, stderr) = run(&resume);
    assert_eq!(code, Some(0), "--resume: {stderr}");
    assert!(stdout.contains("resume   from step 1"), "{stdout}");
    // --resume with nothing to resume from.
    let fresh = s.s("fresh");
    let mut resume = train_args(&model, &text, &fresh);
    resume.push("--resume");
    fails(&resume, &["no checkpoint"], &[]);

    // Unwritable outputs (tests may run as root, where chmod does not stop writes): a path
    // under a regular file, and a path in /proc.
    std::fs::write(s.path("a-file"), b"x").unwrap();
    let under_file = s.path("a-file/sub");
    fails(
        &train_args(&model, &text, under_file.to_str().unwrap()),
        &["a-file/sub", "writable --out"],
        &[],
    );
    fails(
        &train_args(&model, &text, &s.s("a-file")),
        &["a-file", "not a directory"],
        &[],
    );
    assert_eq!(std::fs::read(s.path("a-file")).unwrap(), b"x");
    fails(
        &train_args(&model, &text, "/proc/lora-wgpu-test/out"),
        &["/proc/lora-wgpu-test/out", "writable --out"],
        &[],
    );
    fails(
        &[
            "merge",
            "--model",
            &model,
            "--adapter",
            &s.s("adapter"),
            "--out",
            under_file.to_str().unwrap(),
        ],
        &["a-file", "not a directory"],
        &[],
    );
    // No temporary directory of the failed merges is left next to the target.
    let leftovers: Vec<_> = std::fs::read_dir(&s.root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A batch too big for the GPU: the error names the allocation and suggests a smaller batch or
/// block, and --out is not created. (On lavapipe a single buffer over the 128 MiB binding
/// limit fails first; on a GPU with larger limits the out-of-memory error scope reports the
/// same advice.)
#[test]
fn too_big_a_batch_names_the_allocation_and_the_fix() {
    let s = Scratch::new();
    let out = s.path("run");
    let (model, text) = (s.s("model"), s.s("text.txt"));
    let mut args = train_args(&model, &text, out.to_str().unwrap());
    let i = args.iter().position(|a| *a == "--batch-size").unwrap();
    args[i + 1] = "1000000";
    let e = fails(&args, &["bytes", "--batch-size", "--block-size"], &[&out]);
    assert!(
        e.contains("needs") || e.contains("out of memory"),
        "the error names the allocation: {e}"
    );
}

/// A run that diverges (NaN losses) stops with status 1, says what to change, and points at
/// its newest complete checkpoint, which --resume then loads.
#[test]
fn a_diverged_run_stops_and_names_the_checkpoint_to_resume() {
    let s = Scratch::new();
    let (model, text, out) = (s.s("model"), s.s("text.txt"), s.s("run"));
    let mut args = train_args(&model, &text, &out);
    let i = args.iter().position(|a| *a == "--max-steps").unwrap();
    args[i + 1] = "4";
    // lr 1e30 without clipping: step 1 is finite, its update makes step 2 NaN.
    args.extend([
        "--lr",
        "1e30",
        "--max-grad-norm",
        "0",
        "--max-bad-steps",
        "1",
        "--save-every",
        "1",
        "--log-every",
        "1",
    ]);
    let e = fails(
        &args,
        &[
            "training diverged",
            "lower --lr",
            "training stopped at step 2",
            "step-000001",
            "--resume",
        ],
        &[],
    );
    let step1 = s.path("run/checkpoints/step-000001");
    assert!(e.contains(step1.to_str().unwrap()), "{e}");
    assert!(s
        .path("run/checkpoints/step-000001/optimizer.safetensors")
        .is_file());
    assert!(!s.path("run/checkpoints/step-000002").exists());
    // The checkpoint it names loads (the run then diverges again, from step 1).
    args.push("--resume");
    let (code, stdout, stderr) = run(&args);
    assert!(
        stdout.contains("resume   from step 1"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(code, Some(1), "{stderr}");
}

/// The parse-from-bytes entry points (the fuzz targets' surface) refuse hostile input with an
/// error: header lengths past the end or near u64::MAX, shapes whose byte size overflows,
/// offsets outside the data, configs with absurd sizes, non-UTF-8 JSON.
#[test]
fn hostile_bytes_are_errors_not_panics() {
    use lora_wgpu::lora::{peft, LoraConfig, LoraLayout};
    use lora_wgpu::model::{weights, Gpt2Config};
    let cfg = Gpt2Config::from_json_bytes(
        br#"{"n_embd": 4, "n_layer": 1, "n_head": 1, "n_positions": 4, "vocab_size": 5}"#,
    )
    .unwrap();
    let layout = LoraLayout::new(
        &cfg,
        &LoraConfig {
            r: 2,
            ..LoraConfig::default()
        },
    )
    .unwrap();
    let header = |json: &str, len: u64, data: usize| {
        let mut b = len.to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    };
    let big = r#"{"wte.weight": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 16]}}"#;
    let outside =
        r#"{"wte.weight": {"dtype": "F32", "shape": [5, 4], "data_offsets": [0, 1099511627776]}}"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("short length", vec![1, 2, 3]),
        ("length past the end", header("{}", 1 << 20, 0)),
        ("length near u64::MAX", header("{}", u64::MAX - 3, 0)),
        ("overflowing shape", header(big, big.len() as u64, 16)),
        ("offsets outside", header(outside, outside.len() as u64, 80)),
        ("not JSON", header("{{{{", 4, 0)),
    ];
    for (what, bytes) in &cases {
        let e = weights::parse(std::path::Path::new("m.safetensors"), bytes, &cfg);
        assert!(e.is_err(), "{what}: weights accepted");
        let e = peft::parse_weights(std::path::Path::new("a.safetensors"), bytes, &layout);
        assert!(e.is_err(), "{what}: adapter weights accepted");
    }
    for bad in [
        &b"\xff\xfe{}"[..],
        br#"{"n_embd": 4}"#,
        br#"{"n_embd": 18446744073709551615, "n_layer": 1, "n_head": 1, "n_positions": 4, "vocab_size": 5}"#,
        br#"{"n_embd": 65536, "n_layer": 4096, "n_head": 1024, "n_positions": 1048576, "vocab_size": 16777216}"#,
        br#"{"n_embd": 4, "n_layer": 1, "n_head": 1, "n_positions": 4, "vocab_size": 5, "layer_norm_epsilon": -1}"#,
    ] {
        let e = Gpt2Config::from_json_bytes(bad);
        assert!(e.is_err(), "{}: accepted", String::from_utf8_lossy(bad));
    }
    for bad in [
        &b"\xff"[..],
        br#"{"peft_type": "LORA"}"#,
        br#"{"peft_type": "LORA", "r": -1, "lora_alpha": 1, "target_modules": "c_attn"}"#,
        br#"{"peft_type": "LORA", "r": 2, "lora_alpha": 1, "target_modules": 7}"#,
        br#"{"peft_type": "LORA", "r": 2, "lora_alpha": 1, "target_modules": "c_attn", "bias": "all"}"#,
    ] {
        let e = peft::parse_config(std::path::Path::new("adapter_config.json"), bad);
        assert!(e.is_err(), "{}: accepted", String::from_utf8_lossy(bad));
    }
}
