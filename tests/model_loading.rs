//! Configs, checkpoints, LoRA targets and PEFT adapters: what loads, and the errors for what
//! does not (each names the file or tensor at fault).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lora_wgpu::lora::{peft, Linear, LoraConfig, LoraLayout};
use lora_wgpu::model::{gpt2::weights, Gpt2Config};
use lora_wgpu::Error;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny_gpt2")
        .join(p)
}

fn small() -> Gpt2Config {
    Gpt2Config {
        n_embd: 8,
        n_layer: 2,
        n_head: 2,
        n_positions: 4,
        vocab_size: 10,
        ..Gpt2Config::named("tiny").unwrap()
    }
}

/// Write `w` as safetensors in `dtype` (F32, F16 or BF16), keys with a `transformer.` prefix.
fn write_checkpoint(
    path: &Path,
    cfg: &Gpt2Config,
    w: &weights::HostWeights,
    dtype: Dtype,
    edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>),
) {
    let mut items: Vec<(String, Vec<usize>, Vec<u8>)> = weights::tensor_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let vals = &w[&name];
            let bytes = match dtype {
                Dtype::F16 => vals
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => vals
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            (format!("transformer.{name}"), shape, bytes)
        })
        .collect();
    edit(&mut items);
    let views: Vec<(String, TensorView)> = items
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn presets_and_config_errors() {
    let g = Gpt2Config::named("gpt2").unwrap();
    assert_eq!(
        (g.n_embd, g.n_layer, g.n_head, g.vocab_size),
        (768, 12, 12, 50257)
    );
    assert_eq!(g.num_parameters(), 124_439_808);
    assert!(Gpt2Config::named("gpt3")
        .unwrap_err()
        .to_string()
        .contains("gpt2-medium"));
    let cfg = Gpt2Config::from_file(&fixture("model/config.json")).unwrap();
    assert_eq!((cfg.n_embd, cfg.n_layer, cfg.vocab_size), (48, 2, 99));

    let dir = tempfile::tempdir().unwrap();
    let missing = Gpt2Config::from_file(&dir.path().join("config.json")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("config.json"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    assert!(matches!(
        Gpt2Config::from_file(&bad).unwrap_err(),
        Error::Format { .. }
    ));
    let relu = Gpt2Config {
        activation_function: "relu".into(),
        ..small()
    };
    assert!(relu
        .validate()
        .unwrap_err()
        .to_string()
        .contains("gelu_new"));
    let heads = Gpt2Config {
        n_head: 3,
        ..small()
    };
    assert!(heads.validate().unwrap_err().to_string().contains("n_head"));
}

#[test]
fn checkpoints_load_strictly() {
    let cfg = small();
    let w = weights::random(&cfg, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");

    write_checkpoint(&path, &cfg, &w, Dtype::F32, |_| {});
    assert_eq!(weights::load(&path, &cfg).unwrap(), w, "f32 round trip");

    for (dtype, tol) in [(Dtype::F16, 1e-3), (Dtype::BF16, 8e-3)] {
        write_checkpoint(&path, &cfg, &w, dtype, |_| {});
        let h = weights::load(&path, &cfg).unwrap();
        let (got, want) = (&h["h.1.mlp.c_fc.weight"], &w["h.1.mlp.c_fc.weight"]);
        let ok = got
            .iter()
            .zip(want)
            .all(|(a, b)| (a - b).abs() <= tol * b.abs().max(1e-2));
        assert!(ok, "{dtype:?} checkpoint values");
    }
    write_checkpoint(&path, &cfg, &w, Dtype::F16, |_| {});
    let h = weights::load(&path, &cfg).unwrap();
    let wte = &h["wte.weight"];
    assert!(
        wte.iter()
            .zip(&w["wte.weight"])
            .all(|(a, b)| (a - b).abs() <= 1e-3 * b.abs().max(1e-2)),
        "f16"
    );

    write_checkpoint(&path, &cfg, &w, Dtype::F32, |items| {
        items.retain(|(n, _, _)| !n.ends_with("h.1.ln_2.bias"))
    });
    let e = weights::load(&path, &cfg).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("h.1.ln_2.bias"), "{e}");

    write_checkpoint(&path, &cfg, &w, Dtype::F32, |items| {
        items.push(("transformer.h.0.extra".into(), vec![1], vec![0; 4]))
    });
    let e = weights::load(&path, &cfg).unwrap_err().to_string();
    assert!(e.contains("unexpected") && e.contains("h.0.extra"), "{e}");

    write_checkpoint(&path, &cfg, &w, Dtype::F32, |items| {
        let wpe = items
            .iter_mut()
            .find(|(n, _, _)| n.ends_with("wpe.weight"))
            .unwrap();
        wpe.1 = vec![8, 4];
    });
    let e = weights::load(&path, &cfg).unwrap_err().to_string();
    assert!(e.contains("wpe.weight") && e.contains("[8, 4]"), "{e}");

    // Mask buffers and a tied lm_head are accepted and ignored.
    write_checkpoint(&path, &cfg, &w, Dtype::F32, |items| {
        items.push(("h.0.attn.bias".into(), vec![1, 1, 4, 4], vec![0; 64]));
        items.push(("lm_head.weight".into(), vec![10, 8], vec![0; 320]));
    });
    assert_eq!(weights::load(&path, &cfg).unwrap(), w);

    write_checkpoint(&path, &cfg, &w, Dtype::F32, |_| {});
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = weights::load(&path, &cfg).unwrap_err().to_string();
    assert!(e.contains("truncated or corrupt"), "{e}");
}

#[test]
fn lora_targets_follow_peft_matching() {
    let cfg = small();
    let layout = |targets: &[&str], layers: Option<Vec<usize>>| {
        let lora = LoraConfig {
            r: 2,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            layers_to_transform: layers,
            ..LoraConfig::default()
        };
        LoraLayout::new(&cfg, &lora)
    };
    let kinds = |l: LoraLayout| {
        l.entries
            .iter()
            .map(|e| (e.layer, e.linear))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(layout(&["c_proj"], None).unwrap()),
        vec![
            (0, Linear::AttnCProj),
            (0, Linear::MlpCProj),
            (1, Linear::AttnCProj),
            (1, Linear::MlpCProj)
        ]
    );
    assert_eq!(
        kinds(layout(&["attn.c_proj"], Some(vec![1])).unwrap()),
        vec![(1, Linear::AttnCProj)]
    );
    assert_eq!(layout(&["all-linear"], None).unwrap().entries.len(), 8);
    let e = layout(&["q_proj"], None).unwrap_err().to_string();
    assert!(
        e.contains("q_proj") && e.contains("c_attn") && e.contains("mlp.c_fc"),
        "{e}"
    );
    assert!(layout(&["c_attn"], Some(vec![5]))
        .unwrap_err()
        .to_string()
        .contains("layers_to_transform"));

    let l = layout(&["c_attn"], None).unwrap();
    assert_eq!(l.num_parameters(), 2 * 2 * (8 + 24));
    let init = l.init(7);
    assert_eq!(init, l.init(7), "deterministic from the seed");
    for e in &l.entries {
        let bound = 1.0 / (e.d_in as f32).sqrt();
        let a = &init[e.a_offset..e.a_offset + 2 * e.d_in];
        assert!(
            a.iter().all(|v| v.abs() <= bound) && a.iter().any(|&v| v != 0.0),
            "A is Kaiming-uniform"
        );
        assert!(
            init[e.b_offset..e.b_offset + 2 * e.d_out]
                .iter()
                .all(|&v| v == 0.0),
            "B starts at zero"
        );
    }
    // Group-major: every A (model order), then every B from b_start on, each piece aligned and
    // none overlapping; the B group ends the buffer.
    let l = layout(&["all-linear"], None).unwrap();
    let align = (lora_wgpu::gpu::VIEW_ALIGN / 4) as usize;
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    for e in &l.entries {
        assert!(e.a_offset + 2 * e.d_in <= l.b_start && e.b_offset >= l.b_start);
        pieces.push((e.a_offset, 2 * e.d_in));
        pieces.push((e.b_offset, 2 * e.d_out));
    }
    assert!(l
        .entries
        .windows(2)
        .all(|w| w[0].a_offset < w[1].a_offset && w[0].b_offset < w[1].b_offset));
    pieces.sort();
    assert!(pieces.iter().all(|&(at, _)| at % align == 0));
    assert!(pieces.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    let (last, n) = pieces[pieces.len() - 1];
    assert_eq!(l.len, (last + n).div_ceil(align) * align);
    assert_eq!(l.b_start % align, 0);
    for (r, alpha, dropout) in [
        (0, 16.0, 0.0),
        (9, 16.0, 0.0),
        (4, 0.0, 0.0),
        (4, 16.0, 1.0),
    ] {
        let bad = LoraConfig {
            r,
            alpha,
            dropout,
            ..LoraConfig::default()
        };
        assert!(
            LoraLayout::new(&cfg, &bad).is_err(),
            "r={r} alpha={alpha} dropout={dropout} accepted"
        );
    }
}

#[test]
fn peft_adapters_load_strictly() {
    let model = Gpt2Config::from_file(&fixture("model/config.json")).unwrap();
    let (cfg, layout, flat) = peft::load(&fixture("adapter"), &model).unwrap();
    assert_eq!((cfg.r, cfg.alpha, cfg.dropout), (4, 8.0, 0.0));
    assert_eq!(
        cfg.target_modules,
        vec!["c_attn".to_string(), "c_proj".to_string()]
    );
    assert_eq!(layout.entries.len(), 6);
    assert!(flat.iter().any(|&v| v != 0.0));
    // The same adapter on a model of another width: a shape error naming the tensor.
    let other = Gpt2Config {
        n_embd: 64,
        ..model.clone()
    };
    let e = peft::load(&fixture("adapter"), &other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lora_A.weight") && e.contains("another model"),
        "{e}"
    );
    // Targets the file lacks.
    let more = LoraLayout::new(
        &model,
        &LoraConfig {
            r: 4,
            target_modules: vec!["all-linear".into()],
            ..LoraConfig::default()
        },
    )
    .unwrap();
    let e = peft::read_weights(&fixture("adapter/adapter_model.safetensors"), &more)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing tensor") && e.contains("c_fc"), "{e}");
    // Unknown keys are an error (PEFT only warns).
    let fewer = LoraLayout::new(
        &model,
        &LoraConfig {
            r: 4,
            target_modules: vec!["c_attn".into()],
            ..LoraConfig::default()
        },
    )
    .unwrap();
    let e = peft::read_weights(&fixture("adapter/adapter_model.safetensors"), &fewer)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unexpected tensors") && e.contains("c_proj"),
        "{e}"
    );
}

#[test]
fn saved_adapters_round_trip_with_peft_names() {
    let model = Gpt2Config::from_file(&fixture("model/config.json")).unwrap();
    let (cfg, layout, flat) = peft::load(&fixture("adapter"), &model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    peft::save(&out, &cfg, &layout, &flat, Some("tiny_gpt2")).unwrap();
    let (cfg2, layout2, flat2) = peft::load(&out, &model).unwrap();
    assert_eq!((&cfg2, &layout2, &flat2), (&cfg, &layout, &flat));
    // Exactly PEFT's key names, shapes, dtype and metadata.
    let ours = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let theirs = std::fs::read(fixture("adapter/adapter_model.safetensors")).unwrap();
    let (ours, theirs) = (
        safetensors::SafeTensors::deserialize(&ours).unwrap(),
        safetensors::SafeTensors::deserialize(&theirs).unwrap(),
    );
    let mut a: Vec<_> = ours
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec(), v.dtype()))
        .collect();
    let mut b: Vec<_> = theirs
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec(), v.dtype()))
        .collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a, b);
    let (_, meta) = safetensors::SafeTensors::read_metadata(
        &std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            json["peft_type"].as_str(),
            json["fan_in_fan_out"].as_bool(),
            json["bias"].as_str()
        ),
        (Some("LORA"), Some(true), Some("none"))
    );
    // Every field PEFT wrote into the fixture's config is in ours too.
    let theirs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let missing: Vec<_> = theirs
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| json.get(k.as_str()).is_none())
        .collect();
    // Fields PEFT adds for features we do not implement (DoRA, LoftQ, ...) carry defaults.
    let core = [
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "fan_in_fan_out",
        "bias",
        "use_rslora",
        "layers_to_transform",
        "base_model_name_or_path",
        "use_dora",
        "lora_bias",
        "inference_mode",
    ];
    for k in core {
        assert!(!missing.iter().any(|m| m.as_str() == k), "{k} missing");
        assert!(theirs.get(k).is_some(), "fixture lacks {k}");
    }
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // A wrong-sized parameter vector is refused before anything is written.
    assert!(peft::save(&dir.path().join("bad"), &cfg, &layout, &flat[1..], None).is_err());
}
