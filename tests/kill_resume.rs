//! A quick kill test (issue 5; `scripts/kill_test.sh` is the long one): `lora-wgpu train` with a
//! checkpoint after every step is SIGKILLed three times while it trains, and resumed with
//! `--resume` each time. Every kill must leave only complete checkpoints, `checkpoints/latest`
//! must name one, the resumed run must start from it, and the run must then finish.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tiny_gpt2/model"
);
const STEPS: u64 = 60;

/// The fixture model (vocab 99) with a word-level tokenizer `w0`..`w97`, `[UNK]`.
fn model_dir(root: &Path) -> PathBuf {
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(FIXTURE).join(f), dir.join(f)).unwrap();
    }
    let mut vocab: serde_json::Map<String, serde_json::Value> =
        (0..98).map(|i| (format!("w{i}"), i.into())).collect();
    vocab.insert("[UNK]".into(), 98.into());
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    dir
}

/// Start a training run; its stdout lines arrive on the receiver.
fn start(args: &[String]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lora-wgpu"))
        .args(args)
        .env_remove("WGPU_ADAPTER_NAME")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start lora-wgpu");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines until one starts with `prefix` (None if the process ended first).
fn wait_for(rx: &mpsc::Receiver<String>, prefix: &str, seen: &mut Vec<String>) -> Option<String> {
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) if l.starts_with(prefix) => {
                seen.push(l.clone());
                return Some(l);
            }
            Ok(l) => seen.push(l),
            Err(_) => return None,
        }
    }
}

const FILES: [&str; 4] = [
    "trainer_state.json",
    "optimizer.safetensors",
    "adapter_config.json",
    "adapter_model.safetensors",
];

/// Every `step-N` complete and readable, `latest` naming one; the step `latest` names.
fn check_checkpoints(out: &Path) -> u64 {
    let root = out.join("checkpoints");
    let Ok(rd) = std::fs::read_dir(&root) else {
        return 0;
    };
    for e in rd.map(Result::unwrap) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("step-") {
            continue;
        }
        for f in FILES {
            let p = e.path().join(f);
            let bytes = std::fs::read(&p).unwrap_or_else(|_| panic!("{name} lacks {f}"));
            if f.ends_with(".safetensors") {
                safetensors::SafeTensors::deserialize(&bytes)
                    .unwrap_or_else(|e| panic!("{name}/{f} is half-written: {e}"));
            } else {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .unwrap_or_else(|e| panic!("{name}/{f} is half-written: {e}"));
            }
        }
    }
    match std::fs::read_to_string(root.join("latest")) {
        Ok(name) => {
            assert!(
                root.join(name.trim()).is_dir(),
                "latest names {name}, which is gone"
            );
            name.trim().trim_start_matches("step-").parse().unwrap()
        }
        Err(_) => 0,
    }
}

#[test]
fn killed_training_resumes_from_its_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path());
    let text: String = (0..2000)
        .map(|i| format!("w{} ", (i * 7 + i / 5) % 98))
        .collect();
    std::fs::write(dir.path().join("text.txt"), text).unwrap();
    let out = dir.path().join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut args: Vec<String> = [
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&dir.path().join("text.txt")),
        "--out",
        &s(&out),
        "--max-steps",
        &STEPS.to_string(),
        "--block-size",
        "16",
        "--batch-size",
        "2",
        "--rank",
        "2",
        "--save-every",
        "1",
        "--save-total-limit",
        "2",
        "--log-every",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();

    let mut latest = 0;
    // Kill after a few logged steps (a save follows each one), at growing offsets so that the
    // kills land at different points of a step or a save.
    for (kill, extra_ms) in [(1u64, 0u64), (2, 7), (3, 23)] {
        let (mut child, rx) = start(&args);
        let mut seen = Vec::new();
        if kill > 1 {
            let line = wait_for(&rx, "resume", &mut seen)
                .unwrap_or_else(|| panic!("kill {kill}: no resume line: {seen:?}"));
            let step: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
            assert!(
                step >= latest,
                "kill {kill}: resumed from step {step}, but latest was {latest}"
            );
        }
        for _ in 0..3 {
            assert!(
                wait_for(&rx, "step", &mut seen).is_some(),
                "kill {kill}: the run ended early: {seen:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        latest = check_checkpoints(&out);
        assert!(
            latest > 0,
            "kill {kill}: no checkpoint after 3 logged steps"
        );
        if kill == 1 {
            args.push("--resume".into());
        }
    }
    // Finish without a kill.
    let (mut child, rx) = start(&args);
    let mut seen = Vec::new();
    let line = wait_for(&rx, "resume", &mut seen).expect("no resume line");
    let step: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(step >= latest, "resumed from {step}, latest was {latest}");
    while rx.recv_timeout(Duration::from_secs(300)).is_ok() {}
    assert!(child.wait().unwrap().success(), "the final run failed");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["global_step"], STEPS);
    assert_eq!(check_checkpoints(&out), STEPS);
    let leftovers: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
