//! Merging PEFT adapters into GPT-2 weights (`lora_wgpu::merge`): against the CPU reference,
//! against the unmerged model on the GPU, and the written Hugging Face directory.

mod common;

use std::path::{Path, PathBuf};

use common::gpu;
use lora_wgpu::cpu;
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::lora::{peft, LoraConfig, LoraLayout};
use lora_wgpu::merge::{merge_dirs, merge_into, save_hf_dir};
use lora_wgpu::model::gpt2::weights::{self, HostWeights};
use lora_wgpu::model::{Gpt2Config, TrainGraph, Transformer};
use lora_wgpu::tokenizer::Tokenizer;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_gpt2")
}

fn base() -> (Gpt2Config, HostWeights) {
    let dir = fixture_dir().join("model");
    let cfg = Gpt2Config::from_file(&dir.join("config.json")).unwrap();
    let w = weights::load(&dir.join("model.safetensors"), &cfg).unwrap();
    (cfg, w)
}

fn adapter(cfg: &Gpt2Config) -> (LoraConfig, LoraLayout, Vec<f32>) {
    peft::load(&fixture_dir().join("adapter"), cfg).unwrap()
}

/// A second adapter on other modules (all four linears of block 1, rsLoRA), with non-zero A
/// and B.
fn second_adapter(cfg: &Gpt2Config) -> (LoraConfig, LoraLayout, Vec<f32>) {
    let lora = LoraConfig {
        r: 3,
        alpha: 5.0,
        target_modules: vec!["all-linear".into()],
        layers_to_transform: Some(vec![1]),
        use_rslora: true,
        ..LoraConfig::default()
    };
    let layout = LoraLayout::new(cfg, &lora).unwrap();
    let mut p = layout.init(11);
    let noise = common::random(layout.len, 12);
    for e in &layout.entries {
        for i in e.b_offset..e.b_offset + e.d_out * layout.r {
            p[i] = 0.2 * noise[i];
        }
    }
    (lora, layout, p)
}

/// The CPU reference: `cpu::merge::merge` on each adapted module, in the checkpoint's [in, out]
/// layout (fan_in_fan_out).
fn reference(w: &mut HostWeights, adapter: &(LoraConfig, LoraLayout, Vec<f32>), scale: f32) {
    let (lora, layout, p) = adapter;
    let r = layout.r;
    for e in &layout.entries {
        let wt = w.get_mut(&format!("{}.weight", e.path)).unwrap();
        cpu::merge::merge(
            wt,
            &p[e.a_offset..e.a_offset + r * e.d_in],
            &p[e.b_offset..e.b_offset + e.d_out * r],
            e.d_in,
            e.d_out,
            r,
            true,
            scale * lora.scale(),
        );
    }
}

#[track_caller]
fn assert_weights_close(got: &HostWeights, want: &HostWeights, tol: f32) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, g) in got {
        common::assert_close(g, &want[k], tol, tol, k);
    }
}

#[test]
fn merged_weights_match_the_cpu_reference_per_module() {
    let (cfg, w0) = base();
    let a = adapter(&cfg);
    let mut merged = w0.clone();
    let modules = merge_into(&mut merged, &cfg, (&a.0, &a.1, &a.2), 1.0).unwrap();
    assert_eq!(
        modules, 6,
        "c_attn and both c_proj (attn and mlp) of 2 layers"
    );
    let mut want = w0.clone();
    reference(&mut want, &a, 1.0);
    for e in &a.1.entries {
        let key = format!("{}.weight", e.path);
        common::assert_close(&merged[&key], &want[&key], 1e-6, 1e-6, &key);
        let changed = merged[&key]
            .iter()
            .zip(&w0[&key])
            .filter(|(x, y)| x != y)
            .count();
        assert!(
            changed > merged[&key].len() / 2,
            "{key}: merge changed little"
        );
    }
    // Everything the adapter does not target is untouched, bit for bit.
    for (k, v) in &merged {
        if !a
            .1
            .entries
            .iter()
            .any(|e| *k == format!("{}.weight", e.path))
        {
            assert_eq!(v, &w0[k], "{k} changed");
        }
    }
}

#[test]
fn adapters_merge_in_turn_and_unmerge() {
    let (cfg, w0) = base();
    let (a, b) = (adapter(&cfg), second_adapter(&cfg));
    let mut merged = w0.clone();
    merge_into(&mut merged, &cfg, (&a.0, &a.1, &a.2), 0.7).unwrap();
    merge_into(&mut merged, &cfg, (&b.0, &b.1, &b.2), 1.0).unwrap();
    let mut want = w0.clone();
    reference(&mut want, &a, 0.7);
    reference(&mut want, &b, 1.0);
    assert_weights_close(&merged, &want, 1e-6);
    // Scale -1 takes each back out.
    merge_into(&mut merged, &cfg, (&b.0, &b.1, &b.2), -1.0).unwrap();
    merge_into(&mut merged, &cfg, (&a.0, &a.1, &a.2), -0.7).unwrap();
    assert_weights_close(&merged, &w0, 1e-6);
}

#[test]
fn bad_merges_are_errors_and_change_nothing() {
    let (cfg, w0) = base();
    let (lora, layout, p) = adapter(&cfg);
    let mut w = w0.clone();
    let e = merge_into(&mut w, &cfg, (&lora, &layout, &p[1..]), 1.0).unwrap_err();
    assert!(e.to_string().contains("parameters"), "{e}");
    let other = second_adapter(&cfg);
    let e = merge_into(&mut w, &cfg, (&lora, &other.1, &other.2), 1.0).unwrap_err();
    assert!(e.to_string().contains("layout"), "{e}");
    let e = merge_into(&mut w, &cfg, (&lora, &layout, &p), f32::NAN).unwrap_err();
    assert!(e.to_string().contains("scale"), "{e}");
    let mut missing = w0.clone();
    missing.remove("h.1.attn.c_proj.weight");
    let before = missing.clone();
    let e = merge_into(&mut missing, &cfg, (&lora, &layout, &p), 1.0).unwrap_err();
    assert!(e.to_string().contains("h.1.attn.c_proj.weight"), "{e}");
    assert_eq!(missing, before, "a failed merge changed the weights");
    assert_eq!(w, w0);
}

#[test]
fn merged_model_logits_equal_base_plus_adapter_on_the_gpu() {
    let g = gpu();
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap(),
    )
    .unwrap();
    let (b, t) = (
        json["batch"].as_u64().unwrap() as usize,
        json["seq_len"].as_u64().unwrap() as usize,
    );
    let inputs: Vec<u32> = json["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let targets: Vec<u32> = inputs[1..].iter().copied().chain([0]).collect::<Vec<_>>();
    let (cfg, w0) = base();
    let a = adapter(&cfg);
    let opt = AdamW::default();

    // Unmerged: base weights + the adapter's LoRA path.
    let base_model = Transformer::upload(g, &cfg, &w0).unwrap();
    let mut unmerged = TrainGraph::new(g, &base_model, &a.0, Some(&a.2), 0, b, t, &opt).unwrap();
    unmerged.forward(g, &inputs, &targets).unwrap();
    let want = unmerged.logits(g, &base_model).unwrap();

    // Merged: the adapter folded into the weights; the graph's own LoRA has B = 0 (PEFT's
    // initialisation), so it adds exactly nothing.
    let mut w = w0.clone();
    merge_into(&mut w, &cfg, (&a.0, &a.1, &a.2), 1.0).unwrap();
    let merged_model = Transformer::upload(g, &cfg, &w).unwrap();
    let mut merged = TrainGraph::new(g, &merged_model, &a.0, None, 0, b, t, &opt).unwrap();
    merged.forward(g, &inputs, &targets).unwrap();
    let got = merged.logits(g, &merged_model).unwrap();

    // And the base alone differs, so the comparison can fail.
    let mut plain = TrainGraph::new(g, &base_model, &a.0, None, 0, b, t, &opt).unwrap();
    plain.forward(g, &inputs, &targets).unwrap();
    let base_logits = plain.logits(g, &base_model).unwrap();
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()))
    };
    assert!(
        diff(&base_logits, &want) > 1e-2,
        "the adapter barely changes the logits"
    );
    let d = diff(&got, &want);
    assert!(d <= 1e-4, "merged vs unmerged logits: max |diff| {d}");
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn saved_dir_round_trips_through_our_loader() {
    let (cfg, w0) = base();
    let a = adapter(&cfg);
    let mut w = w0.clone();
    merge_into(&mut w, &cfg, (&a.0, &a.1, &a.2), 1.0).unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nested/merged");
    save_hf_dir(&out, &cfg, &w, &tok, None, false).unwrap();

    assert_eq!(
        Gpt2Config::from_file(&out.join("config.json")).unwrap(),
        cfg
    );
    let back = weights::load(&out.join("model.safetensors"), &cfg).unwrap();
    assert_eq!(back, w, "weights differ after the round trip");

    let c = read_json(&out.join("config.json"));
    assert_eq!(c["model_type"], "gpt2");
    assert_eq!(c["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(c["n_ctx"], cfg.n_positions);
    assert_eq!(c["tie_word_embeddings"], true);
    // The fixture's vocabulary (99) has no <|endoftext|>.
    assert_eq!(c["eos_token_id"], Value::Null);

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let m = meta.metadata().as_ref().unwrap();
    assert_eq!(m.get("format").map(String::as_str), Some("pt"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    assert!(
        names.iter().all(|n| n.starts_with("transformer.")),
        "{names:?}"
    );
    assert!(names.contains(&"transformer.h.1.mlp.c_fc.weight"));
    assert_eq!(
        st.tensor("transformer.h.0.attn.c_attn.weight")
            .unwrap()
            .shape(),
        &[cfg.n_embd, 3 * cfg.n_embd]
    );
    assert_eq!(names.len(), weights::tensor_shapes(&cfg).len());

    let tok2 = Tokenizer::from_file(&out.join("tokenizer.json")).unwrap();
    let text = "Merged weights, same tokens: <|endoftext|> café 1234";
    assert_eq!(tok2.encode(text).unwrap(), tok.encode(text).unwrap());
    assert_eq!(tok2.vocab_size(), tok.vocab_size());
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["eos_token"], "<|endoftext|>");

    // Nothing is left beside it.
    let siblings: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, vec![std::ffi::OsString::from("merged")]);
}

#[test]
fn gpt2_vocab_gets_eot_ids() {
    let cfg = Gpt2Config::named("tiny").unwrap();
    let c = lora_wgpu::merge::hf_config_json(&cfg);
    assert_eq!(c["bos_token_id"], 50256);
    assert_eq!(c["eos_token_id"], 50256);
    assert_eq!(c["vocab_size"], 50257);
}

#[test]
fn existing_output_is_refused_unless_overwrite() {
    let (cfg, w) = base();
    let tok = Tokenizer::gpt2().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // An empty directory is fine to write into.
    save_hf_dir(&out, &cfg, &w, &tok, None, false).unwrap();
    std::fs::write(out.join("keep.txt"), "user file").unwrap();
    let e = save_hf_dir(&out, &cfg, &w, &tok, None, false).unwrap_err();
    assert!(
        e.to_string().contains("not empty") && e.to_string().contains("--overwrite"),
        "{e}"
    );
    assert!(
        out.join("keep.txt").exists(),
        "refusal touched the directory"
    );
    // With overwrite the directory is replaced as a whole.
    let mut w2 = w.clone();
    w2.get_mut("ln_f.bias").unwrap()[0] += 1.0;
    save_hf_dir(&out, &cfg, &w2, &tok, None, true).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert_eq!(
        weights::load(&out.join("model.safetensors"), &cfg).unwrap(),
        w2
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("out")],
        "temporary dirs left"
    );
    // A file in the way is an error even with overwrite.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = save_hf_dir(&file, &cfg, &w, &tok, None, true).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    // Incomplete weights are refused before anything is written.
    let mut short = w.clone();
    short.remove("wpe.weight");
    let e = save_hf_dir(&tmp.path().join("new"), &cfg, &short, &tok, None, false).unwrap_err();
    assert!(e.to_string().contains("wpe.weight"), "{e}");
    assert!(!tmp.path().join("new").exists());
}

/// Also leaves `target/merged-tiny-gpt2` for `scripts/check_merge.py`.
#[test]
fn merge_dirs_writes_the_merged_fixture() {
    let (cfg, w0) = base();
    let a = adapter(&cfg);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/merged-tiny-gpt2");
    let s = merge_dirs(
        &fixture_dir().join("model"),
        &[(fixture_dir().join("adapter"), 1.0)],
        &out,
        true,
    )
    .unwrap();
    assert_eq!((s.adapters, s.modules), (1, 6));
    let mut want = w0.clone();
    reference(&mut want, &a, 1.0);
    let got = weights::load(&out.join("model.safetensors"), &cfg).unwrap();
    assert_weights_close(&got, &want, 1e-6);
    let e = merge_dirs(&fixture_dir().join("model"), &[], &out, true).unwrap_err();
    assert!(e.to_string().contains("adapter"), "{e}");
}

#[test]
fn merge_dirs_never_replaces_an_input() {
    // On a copy of the fixture: a bug here would delete the directory.
    let tmp = tempfile::tempdir().unwrap();
    let (model, adapter) = (tmp.path().join("model"), tmp.path().join("adapter"));
    for (src, dst) in [("model", &model), ("adapter", &adapter)] {
        std::fs::create_dir(dst).unwrap();
        for f in std::fs::read_dir(fixture_dir().join(src)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
    }
    for out in [&model, &adapter] {
        let e = merge_dirs(&model, &[(adapter.clone(), 1.0)], out, true).unwrap_err();
        assert!(e.to_string().contains("one of the inputs"), "{e}");
    }
    assert!(
        model.join("model.safetensors").exists() && adapter.join("adapter_config.json").exists()
    );
}
