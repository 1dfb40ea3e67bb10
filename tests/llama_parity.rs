//! Llama-family models + LoRA against PyTorch + transformers + PEFT (fixtures from
//! scripts/make_llama_fixtures.py): for a llama with grouped-query attention and an untied head,
//! a llama with llama3 rope scaling in the older top-level config keys, a qwen2 with q/k/v
//! biases and a tied head, and a qwen3 with q/k norms and head_dim ≠ hidden / heads: logits,
//! loss, every LoRA gradient, 10 AdamW steps, the merged model's logits, PEFT's parameter
//! count, and greedy generation token for token.

mod common;

use std::path::PathBuf;

use common::fixture::{self, assert_rel, floats, ids};
use common::gpu;
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::lora::{peft, ParamTable};
use lora_wgpu::merge::merge_into;
use lora_wgpu::model::source::load_weights;
use lora_wgpu::model::{
    Generator, ModelConfig, SamplingConfig, ScaledAdapter, TrainGraph, Transformer,
};
use serde_json::Value;

const CASES: [&str; 4] = ["llama_gqa", "llama3_rope", "qwen2", "qwen3"];

fn dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny_llama")
        .join(case)
}

fn json(case: &str, file: &str) -> Value {
    let path = dir(case).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/make_llama_fixtures.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

struct Case {
    name: &'static str,
    model: Transformer,
    json: Value,
    b: usize,
    t: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
}

fn load(name: &'static str) -> Case {
    let json = json(name, "expected.json");
    let targets = fixture::targets(&json["targets"]);
    Case {
        name,
        model: Transformer::load(gpu(), &dir(name).join("model")).unwrap(),
        b: json["batch"].as_u64().unwrap() as usize,
        t: json["seq_len"].as_u64().unwrap() as usize,
        inputs: ids(&json["inputs"]),
        targets,
        json,
    }
}

fn adamw(c: &Case) -> AdamW {
    fixture::adamw(&c.json["adamw"])
}

fn graph(c: &Case, opt: &AdamW) -> TrainGraph {
    let (cfg, _, init) = peft::load(&dir(c.name).join("adapter"), &c.model.config).unwrap();
    TrainGraph::new(gpu(), &c.model, &cfg, Some(&init), 0, c.b, c.t, opt).unwrap()
}

#[test]
fn llama_family_logits_and_loss_match_pytorch() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let mut graph = graph(&c, &AdamW::default());
        graph.forward(g, &c.inputs, &c.targets).unwrap();
        let loss = graph.loss(g).unwrap();
        let want = c.json["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - want).abs() <= 1e-5 * want.abs(),
            "{name}: loss {loss} vs PyTorch {want}"
        );
        let logits = graph.logits(g, &c.model).unwrap();
        assert_rel(&logits, &floats(&c.json["logits"]), 1e-4, 2e-4, name);
    }
}

#[test]
fn llama_family_lora_gradients_match_pytorch() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let mut graph = graph(&c, &AdamW::default());
        graph.gradients(g, &c.inputs, &c.targets).unwrap();
        let grads = g.download(&graph.grads).unwrap();
        let want = c.json["grads"].as_object().unwrap();
        fixture::assert_grads_match(graph.layout(), &grads, want, name);
    }
}

#[test]
fn llama_family_ten_adamw_steps_match_pytorch() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let opt = adamw(&c);
        let mut graph = graph(&c, &opt);
        let want = floats(&c.json["losses"]);
        for step in 1..=want.len() as u64 {
            graph.step(g, &c.inputs, &c.targets, step, opt.lr).unwrap();
        }
        for (i, w) in want.iter().enumerate() {
            let loss = graph.step_loss(g, i as u64 + 1).unwrap();
            assert!(
                (loss - w).abs() <= 1e-4,
                "{name} step {}: loss {loss} vs PyTorch {w}",
                i + 1
            );
        }
    }
}

/// The adapter merged into the host weights (nn.Linear layout: W += s·B·A) gives PEFT's
/// `merge_and_unload` logits, with no adapter on the graph.
#[test]
fn llama_family_merged_weights_match_peft_merge() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let model_dir = dir(name).join("model");
        let cfg = ModelConfig::from_file(&model_dir.join("config.json")).unwrap();
        let mut w = load_weights(&model_dir, &cfg).unwrap();
        let (lora, layout, params) = peft::load(&dir(name).join("adapter"), &cfg).unwrap();
        let merged = merge_into(&mut w, &cfg, (&lora, &layout, &params), 1.0).unwrap();
        assert_eq!(merged, layout.entries.len());
        let model = Transformer::upload(g, &cfg, &w).unwrap();
        // An adapter with B = 0 adds nothing: the graph computes the merged model alone.
        let zero = vec![0.0f32; layout.len];
        let mut graph = TrainGraph::new_eval(g, &model, &lora, Some(&zero), c.b, c.t).unwrap();
        graph.forward(g, &c.inputs, &c.targets).unwrap();
        let logits = graph.logits(g, &model).unwrap();
        assert_rel(
            &logits,
            &floats(&c.json["merged_logits"]),
            1e-4,
            2e-4,
            &format!("{name} merged"),
        );
    }
}

#[test]
fn llama_family_parameter_counts_match_peft() {
    for name in CASES {
        let c = load(name);
        let lora = peft::read_config(&dir(name).join("adapter/adapter_config.json")).unwrap();
        let table = ParamTable::new(&c.model.config, &lora).unwrap();
        let want = |k: &str| c.json[k].as_u64().unwrap() as usize;
        assert_eq!(
            (table.trainable, table.all),
            (want("trainable_params"), want("all_params")),
            "{name}: (trainable, all) vs PEFT's print_trainable_parameters"
        );
    }
}

#[test]
fn llama_family_greedy_generation_matches_transformers() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let fixture = json(name, "generate.json");
        let adapter = peft::load(&dir(name).join("adapter"), &c.model.config).unwrap();
        let ctx = c.model.config.max_positions();
        let mut generator = Generator::new(g, &c.model, ctx).unwrap();
        generator.set_eos_tokens(Vec::new()).unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let prompt = ids(&case["prompt"]);
            let n = case["max_new_tokens"].as_u64().unwrap() as usize;
            for (which, adapters) in [
                ("base", vec![]),
                ("adapter", vec![ScaledAdapter::of(&adapter, 1.0)]),
            ] {
                generator.set_adapters(g, &adapters).unwrap();
                let got = generator
                    .generate(g, &prompt, &SamplingConfig::greedy(), n, |_| true)
                    .unwrap();
                let want = ids(&case["expected"][which]);
                assert_eq!(got, want, "{name} {which}: prompt {prompt:?}");
            }
        }
    }
}
