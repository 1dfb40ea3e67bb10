//! Runs that fail midway (a batch too big, divergence) and hostile bytes for the parsers.

use crate::support::{fails, run, train_args, Scratch};

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
    use lora_wgpu::model::{gpt2::weights, Gpt2Config};
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
