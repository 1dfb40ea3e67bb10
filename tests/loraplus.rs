//! LoRA+ (B's learning rate R times A's) against PEFT's `create_loraplus_optimizer` (fixtures
//! from scripts/make_loraplus_fixtures.py): 10 steps on the tiny GPT-2 and the tiny Qwen2, each
//! from its parity fixture's adapter and batch, with R = 16.

mod common;

use std::path::{Path, PathBuf};

use common::gpu;
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::kernels::cross_entropy::IGNORE;
use lora_wgpu::lora::peft;
use lora_wgpu::model::{TrainGraph, Transformer};
use serde_json::Value;

const CASES: [&str; 2] = ["tiny_gpt2", "qwen2"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/make_loraplus_fixtures.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The 10 losses of our training graph on `case`'s model, adapter and batch with the fixture's
/// optimizer, its LoRA+ ratio replaced by `ratio` when given; and PEFT's 10 losses.
fn losses(case: &str, ratio: Option<f32>) -> (Vec<f32>, Vec<f32>) {
    let g = gpu();
    let want = read_json(&fixtures().join("loraplus").join(format!("{case}.json")));
    let src = fixtures().join(want["source"].as_str().unwrap());
    let batch = read_json(&src.join("expected.json"));
    let (b, t) = (
        batch["batch"].as_u64().unwrap() as usize,
        batch["seq_len"].as_u64().unwrap() as usize,
    );
    let inputs: Vec<u32> = f64s(&batch["inputs"]).iter().map(|&v| v as u32).collect();
    let targets: Vec<u32> = f64s(&batch["targets"])
        .iter()
        .map(|&v| if v < 0.0 { IGNORE } else { v as u32 })
        .collect();
    let a = &want["adamw"];
    let opt = AdamW {
        lr: a["lr"].as_f64().unwrap() as f32,
        weight_decay: a["weight_decay"].as_f64().unwrap() as f32,
        max_grad_norm: a["max_grad_norm"].as_f64().unwrap() as f32,
        lr_ratio_b: ratio.unwrap_or(a["loraplus_lr_ratio"].as_f64().unwrap() as f32),
        ..AdamW::default()
    };
    let model = Transformer::load(g, &src.join("model")).unwrap();
    let (lora, _, init) = peft::load(&src.join("adapter"), &model.config).unwrap();
    let mut graph = TrainGraph::new(g, &model, &lora, Some(&init), 0, b, t, &opt).unwrap();
    let want: Vec<f32> = f64s(&want["losses"]).iter().map(|&v| v as f32).collect();
    for step in 1..=want.len() as u64 {
        graph.step(g, &inputs, &targets, step, opt.lr).unwrap();
    }
    let got = (1..=want.len() as u64)
        .map(|s| graph.step_loss(g, s).unwrap())
        .collect();
    (got, want)
}

/// Within the plain AdamW parity tests' tolerance (1e-4 absolute on every loss).
#[test]
fn ten_loraplus_steps_match_peft() {
    for case in CASES {
        let (got, want) = losses(case, None);
        for (i, (l, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (l - w).abs() <= 1e-4,
                "{case} step {}: loss {l} vs PEFT's LoRA+ {w}",
                i + 1
            );
        }
    }
}

/// The fixture tells the groups apart: one learning rate for A and B (ratio 1) misses it by
/// far more than the tolerance.
#[test]
fn one_learning_rate_misses_the_loraplus_fixture() {
    let (got, want) = losses("tiny_gpt2", Some(1.0));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(l, w)| (l - w).abs())
        .fold(0.0f32, f32::max);
    assert!(worst > 1e-2, "ratio 1 came within {worst} of PEFT's LoRA+");
}
