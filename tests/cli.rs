//! The `lora-wgpu` binary: the built-in demo run, eval, merge, generate, info, devices,
//! `--backend` and `--device`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{cli as run, cli_env as run_env};

#[test]
fn devices_lists_adapters_and_marks_the_one_used() {
    let (ok, stdout, stderr) = run(&["devices"]);
    assert!(ok, "devices failed: {stderr}");
    let marked: Vec<_> = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("*"))
        .collect();
    assert_eq!(
        marked.len(),
        1,
        "exactly one adapter is marked as used:\n{stdout}"
    );
    assert!(
        stdout.contains("storage bind") && stdout.contains("* = used"),
        "{stdout}"
    );
}

#[test]
fn backend_option_restricts_the_list() {
    let (ok, stdout, stderr) = run(&["devices", "--backend", "vulkan"]);
    assert!(ok, "{stderr}");
    let rows: Vec<_> = stdout
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(!rows.is_empty(), "{stdout}");
    assert!(
        rows.iter().all(|l| l.contains("Vulkan")),
        "non-Vulkan adapter listed:\n{stdout}"
    );
}

#[test]
fn unknown_backend_is_a_clear_error() {
    let (ok, _, stderr) = run(&["devices", "--backend", "cuda"]);
    assert!(!ok);
    assert!(
        stderr.contains("cuda") && stderr.contains("vulkan, metal, dx12, gl"),
        "{stderr}"
    );
}

#[test]
fn unknown_device_lists_what_exists() {
    let (ok, _, stderr) = run(&["devices", "--device", "no-such-gpu"]);
    assert!(!ok);
    assert!(
        stderr.contains("no-such-gpu") && stderr.contains("found: 0:"),
        "{stderr}"
    );
}

fn eval_json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = run(args);
    assert!(ok, "eval failed: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The README's first command on a tiny budget, then every command on what it wrote: eval
/// (with and without the adapter), merge (whose eval must equal base + adapter), generate
/// with a scaled adapter, and the refusal to train into the same directory twice.
#[test]
fn demo_train_then_eval_merge_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out_s = out.to_str().unwrap();
    let (ok, stdout, stderr) = run(&[
        "train",
        "--max-steps",
        "2",
        "--block-size",
        "16",
        "--batch-size",
        "2",
        "--val-split",
        "0.003",
        "--eval-every",
        "1",
        "--out",
        out_s,
    ]);
    assert!(ok, "demo train failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("tiny (built-in demo model, random weights)"),
        "{stdout}"
    );
    let evals: Vec<f32> = stdout
        .lines()
        .filter(|l| l.starts_with("eval"))
        .filter_map(|l| {
            l.split("val_loss ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(evals.len(), 2, "{stdout}");
    assert!(
        evals.iter().all(|l| l.is_finite() && *l < 11.5),
        "{evals:?}"
    );
    assert!(stdout.contains("sample"), "{stdout}");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainer_state.json",
        "metrics.jsonl",
        "loss_curve.svg",
        "best/adapter_model.safetensors",
        "checkpoints/step-000002/optimizer.safetensors",
        "checkpoints/latest",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["loss"].as_f64().unwrap().is_finite() && v["lr"].is_number(),
            "{line}"
        );
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);

    // Same directory again: refused, and nothing in it is touched.
    let before = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let (ok, _, stderr) = run(&["train", "--max-steps", "1", "--out", out_s]);
    assert!(
        !ok && stderr.contains("already holds a training run"),
        "{stderr}"
    );
    assert_eq!(
        before,
        std::fs::read(out.join("adapter_model.safetensors")).unwrap()
    );

    // eval: windows of N tokens over the whole text, no special tokens added.
    let text = "Alice was beginning to get very tired of sitting by her sister on the bank, \
                and of having nothing to do: once or twice she had peeped into the book her \
                sister was reading, but it had no pictures or conversations in it.";
    let data = tmp.path().join("eval.txt");
    std::fs::write(&data, text).unwrap();
    let ids = lora_wgpu::tokenizer::Tokenizer::gpt2()
        .unwrap()
        .encode(text)
        .unwrap();
    let data_s = data.to_str().unwrap();
    let eval = |model: &str, adapter: Option<&str>| {
        let mut args = vec![
            "eval",
            "--model",
            model,
            "--data",
            data_s,
            "--block-size",
            "16",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        args.push("--json");
        eval_json(&args)
    };
    let base = eval("tiny", None);
    let tuned = eval("tiny", Some(out_s));
    assert_eq!(base["windows"], ids.len() / 16);
    assert_eq!(base["tokens"], (ids.len() / 16) * 16);
    let (lb, lt) = (
        base["loss"].as_f64().unwrap(),
        tuned["loss"].as_f64().unwrap(),
    );
    assert!((base["perplexity"].as_f64().unwrap() - lb.exp()).abs() < 1e-3 * lb.exp());
    assert!(
        (lb - lt).abs() > 1e-4,
        "the adapter changed nothing: {lb} vs {lt}"
    );

    // The tuned eval with one f16 option: the loss within 1e-2 of f32 where the adapter offers
    // what the option needs, else a clear refusal naming the `missing` feature.
    let eval_option = |flag: &str, offered: bool, missing: &str| {
        let (ok, stdout, stderr) = run(&[
            "eval",
            "--model",
            "tiny",
            "--adapter",
            out_s,
            "--data",
            data_s,
            "--block-size",
            "16",
            "--json",
            flag,
        ]);
        if offered {
            assert!(ok, "eval {flag} failed: {stderr}");
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            let l = v["loss"].as_f64().unwrap();
            assert!((l - lt).abs() < 1e-2, "{flag}: {l} vs f32 {lt}");
        } else {
            assert!(!ok && stderr.contains(missing), "{stderr}");
        }
    };
    // --f16-weights: the linear layers' weights at half size (needs SHADER_F16, which the
    // features-hidden run hides).
    let options = lora_wgpu::GpuOptions::from_env();
    let f16 = lora_wgpu::Gpu::new(&options).unwrap().features().f16;
    eval_option("--f16-weights", f16, "SHADER_F16");
    // --coopmat: cooperative-matrix matmuls (f16 operands, f32 sums), refused up front where
    // the adapter does not offer them.
    let options = lora_wgpu::GpuOptions {
        cooperative_matrix: true,
        ..options
    };
    let coop = lora_wgpu::Gpu::new(&options).is_ok();
    eval_option("--coopmat", coop, "EXPERIMENTAL_COOPERATIVE_MATRIX");

    // merge: the merged model alone evaluates like base + adapter.
    let merged = tmp.path().join("merged");
    let merged_s = merged.to_str().unwrap();
    let (ok, _, stderr) = run(&[
        "merge",
        "--model",
        "tiny",
        "--adapter",
        out_s,
        "--out",
        merged_s,
    ]);
    assert!(ok, "merge failed: {stderr}");
    let lm = eval(merged_s, None)["loss"].as_f64().unwrap();
    assert!((lm - lt).abs() < 1e-4, "merged {lm} vs base + adapter {lt}");

    // generate: greedy is deterministic and streams the prompt first.
    let gen = |scale: &str| {
        let adapter = format!("{out_s}:{scale}");
        let (ok, stdout, stderr) = run(&[
            "generate",
            "--model",
            "tiny",
            "--adapter",
            &adapter,
            "--prompt",
            "Alice said",
            "--max-new-tokens",
            "6",
            "--temperature",
            "0",
        ]);
        assert!(ok, "generate failed: {stderr}");
        assert!(stdout.starts_with("Alice said"), "{stdout}");
        stdout
    };
    assert_eq!(gen("1"), gen("1"));
}

/// On a headless machine (no `XDG_RUNTIME_DIR`) no command prints a stray
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` (from libwayland, through
/// Mesa's Vulkan device-select layer).
#[test]
fn headless_commands_print_no_stray_errors() {
    for args in [&["devices"][..], &["info", "--model", "random:gpt2"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_lora-wgpu"))
            .args(args)
            .env_remove("WGPU_ADAPTER_NAME")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("NODEVICE_SELECT")
            .output()
            .expect("failed to start lora-wgpu");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            !stderr.lines().any(|l| l.starts_with("error:")),
            "{args:?} printed an error line:\n{stderr}"
        );
    }
}

#[test]
fn info_counts_peft_parameters() {
    // GPT-2 124M with r=8 on c_attn + c_proj (PEFT's "c_proj" matches attn and mlp):
    // 12 · 8 · ((768 + 2304) + (768 + 768) + (3072 + 768)) = 811,008.
    let (ok, stdout, stderr) = run(&["info", "--model", "random:gpt2"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("trainable params: 811008 ||"), "{stdout}");
    let (ok, stdout, _) = run(&["info", "--model", "random:gpt2", "--targets", "all-linear"]);
    assert!(
        ok && stdout.contains("trainable params: 1179648 ||"),
        "{stdout}"
    );
}

#[test]
fn hub_id_offline_says_how_to_use_a_local_dir() {
    let home = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run_env(
        &["info", "--model", "openai-community/gpt2"],
        &[
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    assert!(
        !ok,
        "a hub id must never fall back to random weights: {stdout}"
    );
    assert!(stderr.contains("--model ./gpt2"), "{stderr}");
}

#[test]
fn model_and_data_go_together() {
    let (ok, _, stderr) = run(&["train", "--model", "tiny"]);
    assert!(
        !ok && stderr.contains("pass both --model and --data"),
        "{stderr}"
    );
    let missing = Path::new("/nonexistent/model");
    let (ok, _, stderr) = run(&["info", "--model", missing.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains("model directory not found"),
        "{stderr}"
    );
}

/// `--dora` end to end on the demo model: the adapter is written in PEFT's DoRA format, eval
/// applies it, the merged model evaluates the same, generate runs with it; DoRA with dropout
/// and a target that matches nothing are clear errors that write nothing.
#[test]
fn dora_train_then_eval_merge_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out_s = out.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--dora",
            "--max-steps",
            "2",
            "--block-size",
            "16",
            "--batch-size",
            "2",
            "--lr",
            "1e-2",
            "--out",
            out_s,
        ];
        args.extend(extra);
        run(&args)
    };
    for (extra, want) in [
        (&["--dropout", "0.1"][..], "must be 0 with DoRA"),
        (&["--targets", "no_such_module"][..], "matches no module"),
    ] {
        let (ok, _, stderr) = train(extra);
        assert!(!ok && stderr.contains(want), "{extra:?}: {stderr}");
        assert!(!out.join("adapter_config.json").exists(), "{extra:?}");
    }
    let (ok, stdout, stderr) = train(&[]);
    assert!(ok, "DoRA train failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("dropout=0 dora"), "{stdout}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["use_dora"], true);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let magnitudes = st
        .names()
        .iter()
        .filter(|n| n.ends_with(".lora_magnitude_vector"))
        .count();
    assert_eq!(magnitudes * 3, st.len(), "A, B and a magnitude per module");

    let data = tmp.path().join("eval.txt");
    std::fs::write(
        &data,
        "Alice was beginning to get very tired of sitting by her sister on the bank, and of \
         having nothing to do: once or twice she had peeped into the book her sister was reading.",
    )
    .unwrap();
    let data_s = data.to_str().unwrap();
    let eval = |model: &str, adapter: Option<&str>| {
        let mut args = vec![
            "eval",
            "--model",
            model,
            "--data",
            data_s,
            "--block-size",
            "16",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        args.push("--json");
        eval_json(&args)["loss"].as_f64().unwrap()
    };
    let (base, tuned) = (eval("tiny", None), eval("tiny", Some(out_s)));
    assert!((base - tuned).abs() > 1e-4, "DoRA changed nothing: {base}");
    let merged = tmp.path().join("merged");
    let merged_s = merged.to_str().unwrap();
    let (ok, _, stderr) = run(&[
        "merge",
        "--model",
        "tiny",
        "--adapter",
        out_s,
        "--out",
        merged_s,
    ]);
    assert!(ok, "merge failed: {stderr}");
    let lm = eval(merged_s, None);
    assert!(
        (lm - tuned).abs() < 1e-4,
        "merged {lm} vs base + DoRA {tuned}"
    );
    let (ok, stdout, stderr) = run(&[
        "generate",
        "--model",
        "tiny",
        "--adapter",
        out_s,
        "--prompt",
        "Alice said",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    assert!(ok && stdout.starts_with("Alice said"), "{stdout}\n{stderr}");
}
