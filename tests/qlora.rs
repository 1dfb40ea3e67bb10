//! LoRA on a quantized frozen base (`--quantize`, `WeightStorage::Quant`): against PEFT on the
//! base quantized and dequantized by the `gguf` package (fixtures from
//! scripts/make_qlora_fixtures.py) for Q8_0 and Q4_0, and against our own f32 path on the
//! dequantized weights for every format the kernels read, including GPT-2's Conv1D layout and
//! Q4_K; training lowers the loss, greedy generation agrees, the memory shrinks as the formats
//! say, and what cannot run on quantized weights says so.

mod common;

use std::path::PathBuf;

use common::fixture::{self, assert_rel, floats, ids};
use common::gpu;
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::kernels::qmatmul::FORMATS;
use lora_wgpu::lora::{peft, AdaptableModel, LoraConfig, LoraLayout};
use lora_wgpu::model::llama::{self, LlamaConfig};
use lora_wgpu::model::source::load_weights;
use lora_wgpu::model::{
    gpt2, Generator, HostWeights, ModelConfig, SamplingConfig, TrainGraph, Transformer,
    WeightStorage,
};
use lora_wgpu::quant::{self, GgmlType};
use serde_json::Value;

const CASES: [&str; 2] = ["llama_gqa_q8_0", "qwen2_q4_0"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Case {
    json: Value,
    base: PathBuf,
    model: Transformer,
    b: usize,
    t: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
}

fn load(name: &'static str) -> Case {
    let path = fixtures().join("qlora").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/make_qlora_fixtures.py)",
            path.display()
        )
    });
    let json: Value = serde_json::from_str(&text).unwrap();
    let base = fixtures()
        .join("tiny_llama")
        .join(json["case"].as_str().unwrap());
    let batch: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("expected.json")).unwrap())
            .unwrap();
    let ty = GgmlType::parse(json["quant"].as_str().unwrap()).unwrap();
    let dir = base.join("model");
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let host = load_weights(&dir, &config).unwrap();
    let model = Transformer::upload_with(gpu(), &config, &host, WeightStorage::Quant(ty)).unwrap();
    Case {
        base,
        model,
        b: batch["batch"].as_u64().unwrap() as usize,
        t: batch["seq_len"].as_u64().unwrap() as usize,
        inputs: ids(&batch["inputs"]),
        targets: fixture::targets(&batch["targets"]),
        json,
    }
}

impl Case {
    fn graph(&self, opt: &AdamW) -> TrainGraph {
        let (cfg, _, init) = peft::load(&self.base.join("adapter"), &self.model.config).unwrap();
        TrainGraph::new(
            gpu(),
            &self.model,
            &cfg,
            Some(&init),
            0,
            self.b,
            self.t,
            opt,
        )
        .unwrap()
    }
}

#[test]
fn qlora_logits_and_loss_match_peft_on_the_dequantized_base() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let mut graph = c.graph(&AdamW::default());
        graph.forward(g, &c.inputs, &c.targets).unwrap();
        let loss = graph.loss(g).unwrap();
        let want = c.json["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - want).abs() <= 1e-5 * want.abs(),
            "{name}: loss {loss} vs PEFT {want}"
        );
        let unquantized = c.json["unquantized_loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - unquantized).abs() > 1e-5,
            "{name}: the quantized base computes the f32 one's loss"
        );
        let logits = graph.logits(g, &c.model).unwrap();
        assert_rel(&logits, &floats(&c.json["logits"]), 1e-4, 2e-4, name);
    }
}

#[test]
fn qlora_gradients_match_peft_on_the_dequantized_base() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let mut graph = c.graph(&AdamW::default());
        graph.gradients(g, &c.inputs, &c.targets).unwrap();
        let grads = g.download(&graph.grads).unwrap();
        let want = c.json["grads"].as_object().unwrap();
        fixture::assert_grads_match(graph.layout(), &grads, want, name);
    }
}

/// Training on the quantized base follows PEFT's AdamW steps and lowers the loss.
#[test]
fn qlora_training_matches_peft_and_lowers_the_loss() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let opt = fixture::adamw(&c.json["adamw"]);
        let mut graph = c.graph(&opt);
        let want = floats(&c.json["losses"]);
        for step in 1..=want.len() as u64 {
            graph.step(g, &c.inputs, &c.targets, step, opt.lr).unwrap();
        }
        let got: Vec<f32> = (1..=want.len() as u64)
            .map(|s| graph.step_loss(g, s).unwrap())
            .collect();
        for (i, (l, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (l - w).abs() <= 1e-4,
                "{name} step {}: loss {l} vs PEFT {w}",
                i + 1
            );
        }
        assert!(
            got[got.len() - 1] < 0.5 * got[0],
            "{name}: the loss did not fall: {got:?}"
        );
    }
}

/// The round trip of `w` (rows of the last dimension) through `ty`.
fn round_trip(w: &[f32], ty: GgmlType) -> Vec<f32> {
    let q = quant::quantize(ty, w).unwrap();
    quant::dequantize(ty, &q, w.len()).unwrap()
}

/// The tables `--quantize` quantizes besides the blocks' linear layers: a Llama-family model's
/// token embedding and untied LM head (GPT-2 adds a learned position table to its embedding,
/// which stays f32).
const TABLES: [&str; 2] = ["model.embed_tokens.weight", "lm_head.weight"];

/// `host` with every weight that `--quantize` quantizes replaced by its round trip through `ty`
/// (blocks along the input, as the GPU stores them): the f32 model the quantized one computes.
fn dequantized(config: &ModelConfig, host: &HostWeights, ty: GgmlType) -> HostWeights {
    let (def, mut out) = (config, host.clone());
    for name in TABLES {
        if let Some(w) = host.get(name) {
            out.insert(name.to_string(), round_trip(w, ty));
        }
    }
    for layer in 0..def.num_layers() {
        for (site, d_in, d_out) in def.linear_layers() {
            let name = format!("{}.weight", def.module_path(layer, site));
            let w = &host[&name];
            // Checkpoint layout: GPT-2's Conv1D is [in, out], nn.Linear [out, in].
            let out_in = if def.fan_in_fan_out() {
                transpose(w, d_in, d_out)
            } else {
                w.clone()
            };
            let back = round_trip(&out_in, ty);
            let back = if def.fan_in_fan_out() {
                transpose(&back, d_out, d_in)
            } else {
                back
            };
            out.insert(name, back);
        }
    }
    out
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

/// A Llama-family shape whose every linear input is a multiple of 256 (Q4_K's block).
fn llama_256() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        vocab_size: 128,
        ..LlamaConfig::named("llama-tiny").unwrap()
    }
}

/// The shapes the kernels' formats are checked on: GPT-2's Conv1D layout with biases, and a
/// Llama whose inputs take Q4_K's blocks.
fn models() -> Vec<(ModelConfig, HostWeights)> {
    let gpt2 = gpt2::Gpt2Config::named("tiny").unwrap();
    let llama = llama_256();
    vec![
        (gpt2.clone().into(), gpt2::weights::random(&gpt2, 3)),
        (llama.clone().into(), llama::weights::random(&llama, 4)),
    ]
}

/// Loss, logits and every LoRA gradient of a random adapter on the quantized model equal those
/// on the f32 model of the dequantized weights.
#[test]
fn qlora_equals_the_f32_model_on_dequantized_weights() {
    let g = gpu();
    let (b, t) = (2, 8);
    for (config, host) in models() {
        for &ty in FORMATS {
            if config.hidden_size() % ty.block_len() != 0 {
                continue; // GPT-2 tiny (128 wide) takes no Q4_K
            }
            let what = format!("{} {}", config.architecture(), ty.name());
            let lora = LoraConfig {
                r: 4,
                target_modules: vec!["all-linear".into()],
                ..LoraConfig::default()
            };
            let layout = LoraLayout::new(&config, &lora).unwrap();
            let params = common::random(layout.len, 5);
            let inputs: Vec<u32> = (0..b * t).map(|i| (i * 37 % 100) as u32).collect();
            let targets: Vec<u32> = (0..b * t).map(|i| (i * 11 % 100) as u32).collect();
            let run = |m: &Transformer| {
                let opt = AdamW::default();
                let mut graph = TrainGraph::new(g, m, &lora, Some(&params), 0, b, t, &opt).unwrap();
                graph.gradients(g, &inputs, &targets).unwrap();
                let loss = graph.loss(g).unwrap();
                (
                    loss,
                    graph.logits(g, m).unwrap(),
                    g.download(&graph.grads).unwrap(),
                )
            };
            let q = Transformer::upload_with(g, &config, &host, WeightStorage::Quant(ty)).unwrap();
            let f = Transformer::upload(g, &config, &dequantized(&config, &host, ty)).unwrap();
            let (lq, xq, gq) = run(&q);
            let (lf, xf, gf) = run(&f);
            assert!(
                (lq - lf).abs() <= 1e-5 * lf.abs(),
                "{what}: loss {lq} vs {lf}"
            );
            assert_rel(&xq, &xf, 1e-4, 1e-4, &what);
            assert_rel(&gq, &gf, 1e-4, 1e-5, &what);
        }
    }
}

#[test]
fn qlora_greedy_generation_equals_the_dequantized_model() {
    let g = gpu();
    let (config, host) = models().remove(1);
    for &ty in FORMATS {
        let q = Transformer::upload_with(g, &config, &host, WeightStorage::Quant(ty)).unwrap();
        let f = Transformer::upload(g, &config, &dequantized(&config, &host, ty)).unwrap();
        let prompt = [5u32, 17, 42, 8];
        let gen = |m: &Transformer| {
            let mut gen = Generator::new(g, m, 64).unwrap();
            gen.set_eos_tokens(Vec::new()).unwrap();
            gen.generate(g, &prompt, &SamplingConfig::greedy(), 12, |_| true)
                .unwrap()
        };
        assert_eq!(gen(&q), gen(&f), "{}", ty.name());
    }
}

/// The blocks' linear weights and the embedding take the formats' sizes; the rest stays f32.
#[test]
fn qlora_weights_take_the_formats_memory() {
    let g = gpu();
    let (config, host) = models().remove(1);
    let f32_model = Transformer::upload(g, &config, &host).unwrap();
    let linear: usize = (0..config.num_layers())
        .flat_map(|_| config.linear_layers())
        .map(|(_, i, o)| i * o)
        .sum();
    let tables: usize = TABLES
        .iter()
        .filter_map(|n| host.get(*n))
        .map(Vec::len)
        .sum();
    let quantized = linear + tables;
    for &ty in FORMATS {
        let q = Transformer::upload_with(g, &config, &host, WeightStorage::Quant(ty)).unwrap();
        let bits = match ty {
            GgmlType::Q8_0 => 8.5,
            GgmlType::Q4_0 | GgmlType::Q4_K => 4.5,
            _ => unreachable!(),
        };
        let want = f32_model.allocated_bytes() as f64 - quantized as f64 * (4.0 - bits / 8.0);
        assert_eq!(q.allocated_bytes() as f64, want, "{}", ty.name());
    }
}

#[test]
fn qlora_refuses_what_quantized_weights_cannot_do() {
    let g = gpu();
    // GPT-2 tiny's rows are 128 long: not whole Q4_K blocks.
    let (config, host) = models().remove(0);
    let e = Transformer::upload_with(g, &config, &host, WeightStorage::Quant(GgmlType::Q4_K))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("128") && e.contains("q4_k") && e.contains("q8_0"),
        "{e}"
    );
    // DoRA needs the weights' column norms.
    let q =
        Transformer::upload_with(g, &config, &host, WeightStorage::Quant(GgmlType::Q8_0)).unwrap();
    let lora = LoraConfig {
        r: 4,
        use_dora: true,
        dropout: 0.0,
        target_modules: vec!["c_attn".into()],
        ..LoraConfig::default()
    };
    let e = TrainGraph::new(g, &q, &lora, None, 0, 1, 8, &AdamW::default())
        .expect_err("DoRA on a quantized base is refused")
        .to_string();
    assert!(e.contains("DoRA") && e.contains("q8_0"), "{e}");
}

/// The qwen2 fixture base as a [`Model`] with its blocks' weights and embedding in `ty`.
fn quantized_model(ty: GgmlType) -> lora_wgpu::model::Model {
    use lora_wgpu::model::{Model, ModelSource};
    let dir = fixtures().join("tiny_llama/qwen2/model");
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let host = load_weights(&dir, &config).unwrap();
    let storage = WeightStorage::Quant(ty);
    Model {
        transformer: Transformer::upload_with(gpu(), &config, &host, storage).unwrap(),
        source: ModelSource::Dir(dir),
        config,
        tokenizer: lora_wgpu::tokenizer::Tokenizer::gpt2().unwrap(),
        special: Default::default(),
    }
}

/// A QLoRA run stopped and resumed gives the adapter of the straight run; resuming it on a base
/// stored another way is refused, naming the storage.
#[test]
fn qlora_run_resumes_exactly_and_only_on_the_same_base() {
    use lora_wgpu::train::{Duration, TrainConfig, Trainer};
    let model = quantized_model(GgmlType::Q4_0);
    assert_eq!(model.transformer.storage().as_deref(), Some("q4_0"));
    let cfg = TrainConfig {
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["all-linear".into()],
            ..LoraConfig::default()
        },
        lr: 1e-2,
        duration: Duration::Steps(6),
        batch_size: 2,
        block_size: 16,
        seed: 9,
        log_every: 1,
        save_every: 3,
        ..TrainConfig::default()
    };
    let train = common::random_dataset(400, 16, 1);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    common::straight_and_resumed(&model, &cfg, &train, &a, &b, 3);
    let read = |p: &std::path::Path| std::fs::read(p.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        read(&a),
        read(&b),
        "final QLoRA adapters differ after resume"
    );

    let other = quantized_model(GgmlType::Q8_0);
    let mut trainer = Trainer::new(gpu(), &other, cfg, train).unwrap();
    let e = trainer.resume(&a).unwrap_err().to_string();
    assert!(e.contains("--quantize was q4_0, now q8_0"), "{e}");
}
