//! Bad model and adapter files: config.json, model.safetensors, PEFT adapters, DIR:SCALE.

use safetensors::Dtype;

use crate::support::{copy_dir, edit_json, fails, rewrite_safetensors, run, train_args, Scratch};

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
