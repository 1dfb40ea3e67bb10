//! DoRA (PEFT's `use_dora`): the `dora` kernels against their CPU reference, and GPT-2 and Qwen2
//! with a DoRA adapter against PyTorch + PEFT (fixtures from scripts/make_dora_fixtures.py):
//! logits, loss, the gradients of A, B and the magnitude, 10 AdamW steps, the initial
//! magnitude, the merged model, greedy generation, the adapter format and its bad inputs.

mod common;

use std::path::{Path, PathBuf};

use common::fixture::{adamw, assert_rel, floats, ids, targets};
use common::{assert_close, gpu, random};
use lora_wgpu::cpu;
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::kernels::dora::{self, DoraNorm, DoraShape};
use lora_wgpu::lora::{peft, LoraConfig, LoraLayout, ParamTable};
use lora_wgpu::merge::merge_into;
use lora_wgpu::model::source::load_weights;
use lora_wgpu::model::{
    Generator, ModelConfig, SamplingConfig, ScaledAdapter, TrainGraph, Transformer,
};
use serde_json::Value;

const CASES: [&str; 2] = ["gpt2", "qwen2"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Case {
    name: &'static str,
    json: Value,
    model_dir: PathBuf,
    adapter_dir: PathBuf,
    model: Transformer,
    b: usize,
    t: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
}

fn load(name: &'static str) -> Case {
    let dir = fixtures().join("dora").join(name);
    let path = dir.join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/make_dora_fixtures.py)",
            path.display()
        )
    });
    let json: Value = serde_json::from_str(&text).unwrap();
    let model_dir = fixtures().join(json["base_model"].as_str().unwrap());
    Case {
        name,
        model: Transformer::load(gpu(), &model_dir).unwrap(),
        b: json["batch"].as_u64().unwrap() as usize,
        t: json["seq_len"].as_u64().unwrap() as usize,
        inputs: ids(&json["inputs"]),
        targets: targets(&json["targets"]),
        adapter_dir: dir.join("adapter"),
        model_dir,
        json,
    }
}

impl Case {
    fn adapter(&self) -> (LoraConfig, LoraLayout, Vec<f32>) {
        peft::load(&self.adapter_dir, &self.model.config).unwrap()
    }

    fn graph(&self, opt: &AdamW) -> TrainGraph {
        let (cfg, _, init) = self.adapter();
        assert!(cfg.use_dora, "{}: the fixture is a DoRA adapter", self.name);
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

// ---- kernels against the CPU reference ----

fn shape(k: usize, n: usize, r: usize, rows: usize) -> DoraShape {
    DoraShape { k, n, r, rows }
}

#[test]
fn dora_norm_matches_cpu() {
    let g = gpu();
    for (k, n, r) in [(48, 144, 4), (65, 7, 1), (96, 130, 64)] {
        let (w, a, b) = (random(k * n, 1), random(r * k, 2), random(n * r, 3));
        let m: Vec<f32> = random(n, 4).iter().map(|v| 1.0 + v).collect();
        let scale = 0.7;
        let (want_c, want_wn) = cpu::dora::norm(&w, &a, &b, &m, k, n, r, scale);
        let (ta, tb) = (
            g.upload("a", &a, &[r, k]).unwrap(),
            g.upload("b", &b, &[n, r]).unwrap(),
        );
        let mut weights = vec![("f32", g.upload("w", &w, &[k, n]).unwrap(), w.clone())];
        if g.features().f16 {
            let w16: Vec<f32> = w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            weights.push(("f16", g.upload_f16("w", &w, &[k, n]).unwrap(), w16));
        }
        for (what, tw, host_w) in weights {
            let (want_c, want_wn) = if what == "f16" {
                cpu::dora::norm(&host_w, &a, &b, &m, k, n, r, scale)
            } else {
                (want_c.clone(), want_wn.clone())
            };
            let tm = g.upload("m", &m, &[n]).unwrap();
            let norm = g.upload("norm", &vec![f32::NAN; 2 * n], &[2 * n]).unwrap();
            let s = shape(k, n, r, 0);
            let plan = DoraNorm::new(g, "w", &tw, &s).unwrap();
            let ds = plan.record(g, &norm, &tm, &tw, &ta, &tb, scale).unwrap();
            g.run(&ds.iter().collect::<Vec<_>>()).unwrap();
            let got = g.download(&norm).unwrap();
            let what = format!("{what} k={k} n={n} r={r}");
            assert_close(&got[..n], &want_c, 1e-5, 1e-5, &format!("c {what}"));
            assert_close(&got[n..], &want_wn, 1e-5, 1e-5, &format!("wn {what}"));
        }
    }
}

#[test]
fn dora_scale_and_backward_match_cpu() {
    let g = gpu();
    for (rows, n) in [(1, 4), (37, 130), (300, 64)] {
        let (y, c, wn, bias) = (
            random(rows * n, 5),
            random(n, 6),
            random(n, 7),
            random(n, 8),
        );
        let wn: Vec<f32> = wn.iter().map(|v| 1.5 + v).collect();
        let mut norm = c.clone();
        norm.extend(&wn);
        let tnorm = g.upload("norm", &norm, &[2 * n]).unwrap();
        let s = shape(3, n, 2, rows);
        for with_bias in [false, true] {
            let ty = g.upload("y", &y, &[rows, n]).unwrap();
            let tu = g
                .upload("u", &vec![f32::NAN; rows * n], &[rows, n])
                .unwrap();
            let tb = g.upload("bias", &bias, &[n]).unwrap();
            let bias_t = with_bias.then_some(&tb);
            g.run(&[&dora::scale(g, &ty, &tnorm, bias_t, Some(&tu), &s).unwrap()])
                .unwrap();
            let mut want = y.clone();
            cpu::dora::scale(&mut want, &c, with_bias.then_some(&bias[..]));
            let what = format!("scale rows={rows} n={n} bias={with_bias}");
            assert_close(&g.download(&ty).unwrap(), &want, 1e-6, 1e-6, &what);
            assert_eq!(g.download(&tu).unwrap(), y, "{what}: the saved u");
        }
        let (dy, u, dm0) = (random(rows * n, 9), random(rows * n, 10), random(n, 11));
        let (tdy, tu) = (
            g.upload("dy", &dy, &[rows, n]).unwrap(),
            g.upload("u", &u, &[rows, n]).unwrap(),
        );
        let (want_dm, want_du) = cpu::dora::backward(&dy, &u, &c, &wn);
        for accumulate in [false, true] {
            let tdm = g.upload("dm", &dm0, &[n]).unwrap();
            let tdu = g
                .upload("du", &vec![f32::NAN; rows * n], &[rows, n])
                .unwrap();
            g.run(&[&dora::backward(g, &tdm, &tdu, &tdy, &tu, &tnorm, &s, accumulate).unwrap()])
                .unwrap();
            let want: Vec<f32> = if accumulate {
                want_dm.iter().zip(&dm0).map(|(a, b)| a + b).collect()
            } else {
                want_dm.clone()
            };
            let what = format!("backward rows={rows} n={n} accumulate={accumulate}");
            assert_close(&g.download(&tdm).unwrap(), &want, 1e-4, 1e-4, &what);
            assert_close(&g.download(&tdu).unwrap(), &want_du, 1e-6, 1e-6, &what);
        }
    }
}

/// The reference's dm is the derivative of Σ dy ∘ y with y = (m / wn) ∘ u (wn held fixed).
#[test]
fn dora_backward_reference_matches_finite_differences() {
    let (rows, n) = (5, 3);
    let (dy, u) = (random(rows * n, 12), random(rows * n, 13));
    let m = vec![0.8f32, 1.3, 2.0];
    let wn = vec![1.1f32, 0.9, 1.7];
    let loss = |m: &[f32]| -> f64 {
        let c: Vec<f32> = m.iter().zip(&wn).map(|(a, b)| a / b).collect();
        let mut y = u.clone();
        cpu::dora::scale(&mut y, &c, None);
        y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let c: Vec<f32> = m.iter().zip(&wn).map(|(a, b)| a / b).collect();
    let (dm, _) = cpu::dora::backward(&dy, &u, &c, &wn);
    for j in 0..n {
        let h = 1e-3;
        let (mut up, mut down) = (m.clone(), m.clone());
        up[j] += h;
        down[j] -= h;
        let fd = (loss(&up) - loss(&down)) / (2.0 * h as f64);
        assert!(
            (fd - dm[j] as f64).abs() < 1e-3,
            "dm[{j}]: {} vs {fd}",
            dm[j]
        );
    }
}

// ---- against PyTorch + PEFT ----

#[test]
fn dora_logits_and_loss_match_peft() {
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
        let logits = graph.logits(g, &c.model).unwrap();
        assert_rel(&logits, &floats(&c.json["logits"]), 1e-4, 2e-4, name);
        // The eval-only graph (no saved u) computes the same.
        let (cfg, _, params) = c.adapter();
        let mut eval = TrainGraph::new_eval(g, &c.model, &cfg, Some(&params), c.b, c.t).unwrap();
        eval.forward(g, &c.inputs, &c.targets).unwrap();
        assert_rel(
            &eval.logits(g, &c.model).unwrap(),
            &logits,
            1e-6,
            1e-6,
            name,
        );
    }
}

#[test]
fn dora_gradients_match_peft() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let mut graph = c.graph(&AdamW::default());
        graph.gradients(g, &c.inputs, &c.targets).unwrap();
        let grads = g.download(&graph.grads).unwrap();
        let want = c.json["grads"].as_object().unwrap();
        assert_eq!(
            want.len(),
            3 * graph.layout().entries.len(),
            "{name}: A, B and m"
        );
        common::fixture::assert_grads_match(graph.layout(), &grads, want, name);
    }
}

#[test]
fn dora_ten_adamw_steps_match_peft() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let opt = adamw(&c.json["adamw"]);
        let mut graph = c.graph(&opt);
        let want = floats(&c.json["losses"]);
        for step in 1..=want.len() as u64 {
            graph.step(g, &c.inputs, &c.targets, step, opt.lr).unwrap();
        }
        for (i, w) in want.iter().enumerate() {
            let loss = graph.step_loss(g, i as u64 + 1).unwrap();
            assert!(
                (loss - w).abs() <= 1e-4,
                "{name} step {}: loss {loss} vs PEFT {w}",
                i + 1
            );
        }
    }
}

/// A fresh DoRA adapter's magnitude is PEFT's: the norm of W per output feature (B = 0).
#[test]
fn dora_initial_magnitude_is_the_weight_norm() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let (cfg, layout, _) = c.adapter();
        let graph =
            TrainGraph::new(g, &c.model, &cfg, None, 3, c.b, c.t, &AdamW::default()).unwrap();
        let params = g.download(&graph.params).unwrap();
        let want = c.json["init_magnitude"].as_object().unwrap();
        for e in &layout.entries {
            let key = peft::key(&layout, e, "M");
            let at = e.m_offset.unwrap();
            let got = &params[at..at + e.d_out];
            assert_rel(
                got,
                &floats(&want[&key]),
                1e-5,
                0.0,
                &format!("{name} {key}"),
            );
        }
    }
}

/// The adapter merged into the host weights gives PEFT's `merge_and_unload` logits.
#[test]
fn dora_merged_weights_match_peft_merge() {
    let g = gpu();
    for name in CASES {
        let c = load(name);
        let cfg = ModelConfig::from_file(&c.model_dir.join("config.json")).unwrap();
        let mut w = load_weights(&c.model_dir, &cfg).unwrap();
        let (lora, layout, params) = c.adapter();
        let before = w.clone();
        let err = merge_into(&mut w, &cfg, (&lora, &layout, &params), -1.0).unwrap_err();
        assert!(err.to_string().contains("DoRA"), "{name}: {err}");
        assert!(w == before, "{name}: a refused merge changed the weights");
        merge_into(&mut w, &cfg, (&lora, &layout, &params), 1.0).unwrap();
        let model = Transformer::upload(g, &cfg, &w).unwrap();
        let plain = LoraConfig {
            use_dora: false,
            ..lora.clone()
        };
        let zero = vec![0.0f32; LoraLayout::new(&cfg, &plain).unwrap().len];
        let mut graph = TrainGraph::new_eval(g, &model, &plain, Some(&zero), c.b, c.t).unwrap();
        graph.forward(g, &c.inputs, &c.targets).unwrap();
        let logits = graph.logits(g, &model).unwrap();
        let want = floats(&c.json["merged_logits"]);
        assert_rel(&logits, &want, 1e-4, 2e-4, &format!("{name} merged"));
    }
}

/// The KV-cache decoder applies DoRA as the training graph does: greedy ids equal
/// transformers' `generate` with the adapter.
#[test]
fn dora_greedy_generation_matches_transformers() {
    let g = gpu();
    let c = load("qwen2");
    let gen = &c.json["generate"];
    let adapter = c.adapter();
    let mut generator = Generator::new(g, &c.model, c.model.config.max_positions()).unwrap();
    generator.set_eos_tokens(Vec::new()).unwrap();
    generator
        .set_adapters(g, &[ScaledAdapter::of(&adapter, 1.0)])
        .unwrap();
    let n = gen["max_new_tokens"].as_u64().unwrap() as usize;
    let got = generator
        .generate(
            g,
            &ids(&gen["prompt"]),
            &SamplingConfig::greedy(),
            n,
            |_| true,
        )
        .unwrap();
    assert_eq!(got, ids(&gen["expected"]));
    // A DoRA adapter rescales whole layers: it cannot be stacked with another adapter.
    let two = [
        ScaledAdapter::of(&adapter, 1.0),
        ScaledAdapter::of(&adapter, 0.5),
    ];
    let err = generator.set_adapters(g, &two).unwrap_err().to_string();
    assert!(err.contains("DoRA"), "{err}");
}

/// `info`'s counts include the magnitudes, as PEFT's `print_trainable_parameters` does.
#[test]
fn dora_parameter_counts_match_peft() {
    for name in CASES {
        let c = load(name);
        let (lora, ..) = c.adapter();
        let table = ParamTable::new(&c.model.config, &lora).unwrap();
        let want = |k: &str| c.json[k].as_u64().unwrap() as usize;
        assert_eq!(
            (table.trainable, table.all),
            (want("trainable_params"), want("all_params")),
            "{name}: (trainable, all) vs PEFT"
        );
    }
}

// ---- the adapter format ----

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lora-wgpu-dora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn copy_adapter(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn dora_adapter_round_trips_in_peft_format() {
    let c = load("qwen2");
    let (cfg, layout, params) = c.adapter();
    let out = scratch("roundtrip");
    peft::save(&out, &cfg, &layout, &params, None).unwrap();
    let (cfg2, layout2, params2) = peft::load(&out, &c.model.config).unwrap();
    assert!(cfg2.use_dora);
    assert_eq!((cfg2, layout2, params2), (cfg, layout, params));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn dora_bad_adapters_are_clear_errors() {
    let c = load("gpt2");
    let cfg_json = |dir: &Path| -> serde_json::Map<String, Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap()
    };
    // Magnitude vectors in an adapter whose config does not say use_dora.
    let dir = scratch("no-flag");
    copy_adapter(&c.adapter_dir, &dir);
    let mut j = cfg_json(&dir);
    j.insert("use_dora".into(), Value::Bool(false));
    std::fs::write(
        dir.join("adapter_config.json"),
        Value::Object(j).to_string(),
    )
    .unwrap();
    let err = peft::load(&dir, &c.model.config).unwrap_err().to_string();
    assert!(
        err.contains("lora_magnitude_vector") && err.contains("use_dora"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // A magnitude vector of the wrong length.
    let (cfg, layout, params) = c.adapter();
    let dir = scratch("short");
    peft::save(&dir, &cfg, &layout, &params, None).unwrap();
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let victim = peft::key(&layout, &layout.entries[0], "M");
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let (shape, data) = if k == victim {
                (vec![v.shape()[0] - 1], v.data()[4..].to_vec())
            } else {
                (v.shape().to_vec(), v.data().to_vec())
            };
            (k, shape, data)
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let err = peft::load(&dir, &c.model.config).unwrap_err().to_string();
    assert!(
        err.contains(&victim) && err.contains("one value per output feature"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // DoRA trains without dropout: a graph with both is refused, naming the dropout.
    let with_dropout = LoraConfig {
        dropout: 0.1,
        ..cfg
    };
    let graph = TrainGraph::new(
        gpu(),
        &c.model,
        &with_dropout,
        None,
        0,
        1,
        4,
        &AdamW::default(),
    );
    let Err(err) = graph else {
        panic!("DoRA with dropout is refused");
    };
    let err = err.to_string();
    assert!(err.contains("dropout") && err.contains("DoRA"), "{err}");
}

/// A fresh DoRA run with the Gaussian init gets PEFT's magnitudes too, and DoRA refuses the
/// inits that move the base (PiSSA, OLoRA).
#[test]
fn dora_with_other_inits() {
    use lora_wgpu::lora::init::{initial_params, LoraInit};
    let g = gpu();
    let c = load("gpt2");
    let (cfg, layout, _) = c.adapter();
    let gauss = LoraConfig {
        init: LoraInit::Gaussian,
        ..cfg.clone()
    };
    let start = initial_params(LoraInit::Gaussian, &layout, 5).unwrap();
    let graph = TrainGraph::new(
        g,
        &c.model,
        &gauss,
        Some(&start),
        5,
        c.b,
        c.t,
        &AdamW::default(),
    )
    .unwrap();
    let params = g.download(&graph.params).unwrap();
    let want = c.json["init_magnitude"].as_object().unwrap();
    for e in &layout.entries {
        let key = peft::key(&layout, e, "M");
        let at = e.m_offset.unwrap();
        assert_rel(
            &params[at..at + e.d_out],
            &floats(&want[&key]),
            1e-5,
            0.0,
            &key,
        );
    }
    for init in [LoraInit::Pissa, LoraInit::Olora] {
        let bad = LoraConfig {
            init,
            ..cfg.clone()
        };
        let err = LoraLayout::new(&c.model.config, &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DoRA"), "{err}");
    }
}

/// A DoRA run with LoRA+ stopped after 3 steps and resumed ends with the same adapter, byte for
/// byte, as 6 steps straight (the magnitudes and their moments are restored, not
/// re-initialised).
#[test]
fn dora_run_resumes_exactly() {
    use lora_wgpu::train::{Duration, TrainConfig};
    let model = common::tiny_gpt2_model();
    let cfg = TrainConfig {
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            use_dora: true,
            ..LoraConfig::default()
        },
        lr: 1e-2,
        loraplus_lr_ratio: Some(4.0),
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
    let read = |p: &Path| std::fs::read(p.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        read(&a),
        read(&b),
        "final DoRA adapters differ after resume"
    );
    let (lora, layout, params) = peft::load(&a, &model.config).unwrap();
    assert!(lora.use_dora);
    let e = &layout.entries[0];
    let m = &params[e.m_offset.unwrap()..][..e.d_out];
    assert!(m.iter().all(|v| v.is_finite()), "{m:?}");
}
