//! GGUF out: PEFT adapters as llama.cpp GGUF LoRA files (`export --format gguf`) and merged
//! models as one GGUF file (`merge --format gguf`), against the reference files of
//! scripts/make_gguf_export_fixtures.py (tests/fixtures/gguf_export/).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture::{floats, ids};
use common::gpu;
use lora_wgpu::gguf::{GgufFile, GgufWriter};
use lora_wgpu::kernels::qmatmul;
use lora_wgpu::lora::gguf::export_gguf;
use lora_wgpu::lora::{peft, LoraConfig, LoraLayout};
use lora_wgpu::merge::merge_model_gguf;
use lora_wgpu::model::gguf::{gguf_name, qk_permute_heads, unpermute_qk, GgufModel};
use lora_wgpu::model::{ModelConfig, ModelSource, TrainGraph, Transformer, WeightStorage};
use lora_wgpu::quant::GgmlType;
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference(name: &str) -> PathBuf {
    fixtures().join("gguf_export").join(name)
}

/// (base model dir, adapter dir) of the llama and GPT-2 fixtures.
fn case(name: &str) -> (PathBuf, PathBuf) {
    let d = match name {
        "llama" => fixtures().join("tiny_llama/llama_gqa"),
        _ => fixtures().join("tiny_gpt2"),
    };
    (d.join("model"), d.join("adapter"))
}

fn config(model: &Path) -> ModelConfig {
    ModelSource::Dir(model.to_path_buf()).config().unwrap()
}

fn expected() -> Json {
    let path = reference("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/make_gguf_export_fixtures.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Two files are byte for byte the same (without printing their bytes when not).
#[track_caller]
fn assert_same_bytes(a: &Path, b: &Path, what: &str) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    if x != y {
        let at = x
            .iter()
            .zip(&y)
            .position(|(p, q)| p != q)
            .unwrap_or(x.len().min(y.len()));
        panic!(
            "{what}: {} ({} bytes) and {} ({} bytes) differ from byte {at}",
            a.display(),
            x.len(),
            b.display(),
            y.len()
        );
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn exported_adapters_equal_the_converters_files() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["llama", "gpt2"] {
        let (model, adapter) = case(name);
        let cfg = config(&model);
        let out = tmp.path().join(format!("{name}.gguf"));
        let s = export_gguf(&adapter, &cfg, &out, false).unwrap();
        assert_eq!((s.r, s.alpha), (4, 8.0), "{name}");
        let ours = GgufFile::open(&out).unwrap();
        let want = GgufFile::open(&reference(&format!("{name}-lora.gguf"))).unwrap();
        // Metadata and tensors one by one first (a readable failure), then every byte.
        assert_eq!(ours.metadata(), want.metadata(), "{name}: metadata");
        let names = |f: &GgufFile| {
            f.tensors()
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&ours), names(&want), "{name}: tensor names and order");
        for (a, b) in ours.tensors().iter().zip(want.tensors()) {
            assert_eq!((a.ty, &a.shape), (b.ty, &b.shape), "{name}: {}", a.name);
            assert_eq!(a.ty, GgmlType::F32);
            assert_eq!(
                bits(&f32s(ours.data(a))),
                bits(&f32s(want.data(b))),
                "{name}: {}",
                a.name
            );
        }
        assert_same_bytes(
            &out,
            &reference(&format!("{name}-lora.gguf")),
            "{name}: bytes",
        );
        assert_eq!(
            ours.get_str("general.architecture").unwrap(),
            Some(cfg.architecture())
        );
        assert_eq!(ours.get_str("general.type").unwrap(), Some("adapter"));
        assert_eq!(ours.get_str("adapter.type").unwrap(), Some("lora"));
        assert_eq!(ours.get_f32("adapter.lora.alpha").unwrap(), Some(8.0));

        // Read back and undo the layout: PEFT's A and B, bit for bit.
        let (_, layout, params) = peft::load(&adapter, &cfg).unwrap();
        let mut permuted = 0;
        for e in &layout.entries {
            let weight = format!("{}.weight", e.path);
            let g = gguf_name(&cfg, &weight).unwrap();
            let a = ours.tensor(&format!("{g}.lora_a")).unwrap();
            let b = ours.tensor(&format!("{g}.lora_b")).unwrap();
            assert_eq!(a.shape, [4, e.d_in], "{g}");
            assert_eq!(b.shape, [e.d_out, 4], "{g}");
            let mut bv = f32s(ours.data(b));
            if let Some(heads) = qk_permute_heads(&cfg, &weight) {
                assert_ne!(bv, params[e.b_offset..e.b_offset + bv.len()], "{g}");
                bv = unpermute_qk(&bv, e.d_out, heads);
                permuted += 1;
            }
            assert_eq!(
                bits(&f32s(ours.data(a))),
                bits(&params[e.a_offset..e.a_offset + 4 * e.d_in]),
                "{g} A"
            );
            assert_eq!(
                bits(&bv),
                bits(&params[e.b_offset..e.b_offset + 4 * e.d_out]),
                "{g} B"
            );
        }
        assert_eq!(ours.tensors().len(), 2 * layout.entries.len());
        // llama: q and k of both layers permuted; GPT-2 none.
        assert_eq!(permuted, if name == "llama" { 4 } else { 0 }, "{name}");
    }
}

#[test]
fn rslora_alpha_gives_llama_cpp_the_peft_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, adapter) = case("llama");
    let dir = tmp.path().join("rs");
    std::fs::create_dir(&dir).unwrap();
    let mut c: Json =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    c["use_rslora"] = Json::Bool(true);
    std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
    std::fs::copy(
        adapter.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let out = tmp.path().join("rs.gguf");
    let s = export_gguf(&dir, &config(&model), &out, false).unwrap();
    // llama.cpp scales by alpha / r: 16 / 4 = PEFT's 8 / sqrt(4).
    assert_eq!(s.alpha, 16.0);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_f32("adapter.lora.alpha").unwrap(), Some(16.0));
}

#[test]
fn dora_adapters_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dora.gguf");
    let dora = fixtures().join("dora/gpt2/adapter");
    let e = export_gguf(&dora, &config(&case("gpt2").0), &out, false).unwrap_err();
    assert!(e.to_string().contains("DoRA"), "{e}");
    assert!(!out.exists());
}

/// Logits of a GGUF model file read by our loader (quantized linear weights in their blocks).
fn logits_of(path: &Path, inputs: &[u32], b: usize, t: usize) -> Vec<f32> {
    let m = GgufModel::open(path).unwrap();
    let (host, quant) = m.weights(qmatmul::supported).unwrap();
    let tr =
        Transformer::upload_quant(gpu(), &m.config, &host, &quant, WeightStorage::F32).unwrap();
    let lora = LoraConfig {
        target_modules: m.config.default_targets(),
        ..LoraConfig::default()
    };
    let zero = vec![0.0f32; LoraLayout::new(&m.config, &lora).unwrap().len];
    let mut graph = TrainGraph::new_eval(gpu(), &tr, &lora, Some(&zero), b, t).unwrap();
    graph.forward(gpu(), inputs, inputs).unwrap();
    graph.logits(gpu(), &tr).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The bound for q8_0 weights: PEFT's logits go up to about 5 on this tiny model, whose
/// weights (std 0.16) carry q8_0's 0.5 % error through two layers; transformers reading the
/// same file is off by 0.16.
const Q8_0_BOUND: f32 = 0.3;

#[test]
fn merged_gguf_gives_pefts_merged_logits() {
    let json = expected();
    let inputs = ids(&json["inputs"]);
    let (b, t) = (
        json["batch"].as_u64().unwrap() as usize,
        json["seq_len"].as_u64().unwrap() as usize,
    );
    let tmp = tempfile::tempdir().unwrap();
    let (model, adapter) = case("llama");
    let source = ModelSource::Dir(model.clone());
    let want = floats(&json["models"]["llama"]["logits"]);
    for (q, bound) in [(None, 1e-4), (Some(GgmlType::Q8_0), Q8_0_BOUND)] {
        let tag = q.map_or("f32".to_string(), |t: GgmlType| t.to_string());
        let out = tmp.path().join(format!("{tag}.gguf"));
        let (summary, report) =
            merge_model_gguf(&source, &[(adapter.clone(), 1.0)], &out, q, false).unwrap();
        assert_eq!(summary.modules, 14);
        assert!(report.fallbacks.is_empty(), "{:?}", report.fallbacks);
        assert!(
            report.no_tokenizer.is_some(),
            "the tiny llama has no tokenizer"
        );
        let got = logits_of(&out, &inputs, b, t);
        let d = max_diff(&got, &want);
        println!("llama merged {tag}: max |ours - PEFT| = {d:.3e}");
        assert!(d <= bound, "{tag}: {d} > {bound}");
        // Byte for byte the file transformers was checked on (see the script's --check).
        assert!(
            std::fs::read(&out).unwrap()
                == std::fs::read(reference(&format!("llama-merged-{tag}.gguf"))).unwrap(),
            "{tag}: the merged GGUF differs from tests/fixtures/gguf_export/llama-merged-{tag}.gguf; \
             if the format changed on purpose, regenerate and --check it (scripts/make_gguf_export_fixtures.py)"
        );
        let f = GgufFile::open(&out).unwrap();
        let ty = f.tensor("blk.0.attn_q.weight").unwrap().ty;
        assert_eq!(ty, q.unwrap_or(GgmlType::F32));
        assert_eq!(f.tensor("token_embd.weight").unwrap().ty, ty);
        assert_eq!(
            f.tensor("blk.0.attn_norm.weight").unwrap().ty,
            GgmlType::F32
        );
    }

    // The bound fails for a wrong layout: the f32 file with q not permuted for ggml's RoPE.
    let good = GgufFile::open(&tmp.path().join("f32.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in good.metadata() {
        w.add(k, v.clone());
    }
    for ti in good.tensors() {
        let mut bytes = good.data(ti).to_vec();
        if ti.name.ends_with("attn_q.weight") {
            let v = unpermute_qk(&f32s(&bytes), ti.shape[0], 4);
            bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
        w.add_tensor(&ti.name, &ti.shape, ti.ty, bytes).unwrap();
    }
    let wrong = tmp.path().join("wrong.gguf");
    w.write(&wrong).unwrap();
    let d = max_diff(&logits_of(&wrong, &inputs, b, t), &want);
    println!("llama merged, q not permuted: max |ours - PEFT| = {d:.3e}");
    assert!(d > Q8_0_BOUND, "a wrong layout passes the bound: {d}");

    // GPT-2 (transformers cannot read a tiny GPT-2 GGUF; our loader checks it): Conv1D
    // weights transposed, the tied head written again.
    let (model, adapter) = case("gpt2");
    let out = tmp.path().join("gpt2.gguf");
    let (_, report) = merge_model_gguf(
        &ModelSource::Dir(model),
        &[(adapter, 1.0)],
        &out,
        None,
        false,
    )
    .unwrap();
    // GPT-2's tokenizer (50257 tokens) is not this 99-token model's.
    assert!(report.no_tokenizer.is_some());
    let d = max_diff(
        &logits_of(&out, &inputs, b, t),
        &floats(&json["models"]["gpt2"]["logits"]),
    );
    println!("gpt2 merged f32: max |ours - PEFT| = {d:.3e}");
    assert!(d <= 1e-4, "gpt2: {d}");
}

#[test]
fn quantize_falls_back_for_rows_the_block_does_not_divide() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, adapter) = case("llama");
    let out = tmp.path().join("q4k.gguf");
    let (_, report) = merge_model_gguf(
        &ModelSource::Dir(model),
        &[(adapter, 1.0)],
        &out,
        Some(GgmlType::Q4_K),
        false,
    )
    .unwrap();
    // Rows of 64 and 96: not multiples of q4_k's 256, multiples of q4_0's 32.
    assert_eq!(report.fallbacks.len(), 16, "{:?}", report.fallbacks);
    assert!(report
        .fallbacks
        .iter()
        .all(|(_, a, b)| (*a, *b) == (GgmlType::Q4_K, GgmlType::Q4_0)));
    let m = GgufModel::open(&out).unwrap();
    assert_eq!(
        m.file.tensor("blk.1.ffn_down.weight").unwrap().ty,
        GgmlType::Q4_0
    );
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lora-wgpu"))
        .args(args)
        .output()
        .expect("failed to start lora-wgpu");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_exports_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, adapter) = case("llama");
    let (model, adapter) = (model.to_str().unwrap(), adapter.to_str().unwrap());
    let out = tmp.path().join("a.gguf");
    let o = out.to_str().unwrap();
    let export = |adapter: &str, format: &str, extra: &[&str]| {
        let mut a = vec![
            "export",
            "--adapter",
            adapter,
            "--model",
            model,
            "--format",
            format,
            "--out",
            o,
        ];
        a.extend_from_slice(extra);
        run(&a)
    };

    let (ok, _, err) = export(tmp.path().join("none").to_str().unwrap(), "gguf", &[]);
    assert!(!ok && err.contains("adapter_config.json"), "{err}");
    assert!(!out.exists());
    let (ok, _, err) = export(adapter, "safetensors", &[]);
    assert!(
        !ok && err.contains("--format") && err.contains("gguf"),
        "{err}"
    );
    assert!(!out.exists());

    let (ok, stdout, err) = export(adapter, "gguf", &[]);
    assert!(ok, "{err}");
    assert!(stdout.contains("14 modules"), "{stdout}");
    assert_same_bytes(
        &out,
        &reference("llama-lora.gguf"),
        "the file differs from the reference",
    );

    // An existing file is kept unless --overwrite.
    std::fs::write(&out, b"keep").unwrap();
    let (ok, _, err) = export(adapter, "gguf", &[]);
    assert!(!ok && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    let (ok, _, err) = export(adapter, "gguf", &["--overwrite"]);
    assert!(ok, "{err}");
    assert_same_bytes(
        &out,
        &reference("llama-lora.gguf"),
        "the file differs from the reference",
    );
    // Nothing but the output file was left in the folder (no temporary file).
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    // merge: the same rule for the output, --quantize only with --format gguf.
    let merged = tmp.path().join("m.gguf");
    let m = merged.to_str().unwrap();
    let merge = |extra: &[&str]| {
        let mut a = vec!["merge", "--model", model, "--adapter", adapter, "--out", m];
        a.extend_from_slice(extra);
        run(&a)
    };
    let (ok, _, err) = merge(&["--quantize", "q8_0"]);
    assert!(!ok && err.contains("--format gguf"), "{err}");
    let (ok, _, err) = merge(&["--format", "gguf", "--quantize", "q5_k"]);
    assert!(!ok && err.contains("q4_k"), "{err}");
    assert!(!merged.exists());
    let (ok, stdout, err) = merge(&["--format", "gguf", "--quantize", "q8_0"]);
    assert!(ok, "{err}");
    assert!(err.contains("without tokenizer metadata"), "{err}");
    assert!(stdout.contains("q8_0"), "{stdout}");
    assert_same_bytes(
        &merged,
        &reference("llama-merged-q8_0.gguf"),
        "the file differs from the reference",
    );
    std::fs::write(&merged, b"keep").unwrap();
    let (ok, _, err) = merge(&["--format", "gguf"]);
    assert!(!ok && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&merged).unwrap(), b"keep");
}

#[test]
fn merged_gguf_round_trips_weights_shape_and_tokenizer() {
    // Bases written by the converter's layout (tests/fixtures/gguf_model): llama (q/k
    // permuted, Llama 3 tokenizer), qwen3 (no permutation, q/k norms, Qwen2 tokenizer) and
    // GPT-2 (Conv1D transposed, tied head, GPT-2 tokenizer).
    let tmp = tempfile::tempdir().unwrap();
    for name in ["llama-q8_0", "qwen3-q8_0", "gpt2-f16"] {
        let path = fixtures().join(format!("gguf_model/{name}.gguf"));
        let source = ModelSource::Gguf(path.clone());
        let cfg = source.config().unwrap();
        let lora = LoraConfig {
            r: 4,
            target_modules: cfg.default_targets(),
            ..LoraConfig::default()
        };
        let layout = LoraLayout::new(&cfg, &lora).unwrap();
        let params: Vec<f32> = common::random(layout.len, 7)
            .iter()
            .map(|x| 0.05 * x)
            .collect();
        let adapter = tmp.path().join(format!("{name}-adapter"));
        peft::save(&adapter, &lora, &layout, &params, None).unwrap();
        let out = tmp.path().join(format!("{name}.gguf"));
        let adapters = [(adapter, 1.0)];
        let (_, report) = merge_model_gguf(&source, &adapters, &out, None, false).unwrap();
        assert_eq!(report, Default::default(), "{name}");

        // What the merge computed in memory is what the file holds, bit for bit, in
        // checkpoint names and layouts once our loader undoes the GGUF layout.
        let mut want = source.host_weights(&cfg).unwrap();
        lora_wgpu::merge::merge_adapters(&mut want, &cfg, &adapters).unwrap();
        let ours = GgufModel::open(&out).unwrap();
        assert_eq!(ours.config, cfg, "{name}: the shape read back");
        let got = ours.host_weights().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, v) in &want {
            assert_eq!(bits(&got[k]), bits(v), "{name}: {k}");
        }

        // llama.cpp's reading of the exported LoRA: for every `X.lora_a` / `X.lora_b`, the
        // base's GGUF tensor X is [out, in] with a [r, in] and b [out, r] (llama.cpp's shape
        // check), and X + alpha / r · b a is the merged file's X (in GGUF layout: q/k rows
        // permuted, GPT-2 transposed).
        let lora_file = tmp.path().join(format!("{name}-lora.gguf"));
        let s = export_gguf(&adapters[0].0, &cfg, &lora_file, false).unwrap();
        let (lf, base) = (
            GgufFile::open(&lora_file).unwrap(),
            GgufFile::open(&path).unwrap(),
        );
        let scale = s.alpha / s.r as f32;
        let mut checked = 0;
        for ta in lf.tensors().iter().filter(|t| t.name.ends_with(".lora_a")) {
            let x = ta.name.trim_end_matches(".lora_a");
            let tb = lf.tensor(&format!("{x}.lora_b")).unwrap();
            let w = base.tensor(x).unwrap();
            let (out_f, in_f, r) = (w.shape[0], w.shape[1], s.r);
            assert_eq!(
                (&ta.shape[..], &tb.shape[..]),
                (&[r, in_f][..], &[out_f, r][..]),
                "{name}: {x}"
            );
            let (a, b) = (f32s(lf.data(ta)), f32s(lf.data(tb)));
            let w0 = base.dequantize(x).unwrap();
            let merged = ours.file.dequantize(x).unwrap();
            let mut worst = 0f32;
            for o in 0..out_f {
                for i in 0..in_f {
                    let d: f32 = (0..r).map(|k| b[o * r + k] * a[k * in_f + i]).sum();
                    let want = w0[o * in_f + i] + scale * d;
                    worst = worst.max((merged[o * in_f + i] - want).abs());
                }
            }
            assert!(worst <= 1e-5, "{name}: {x}: {worst}");
            checked += 1;
        }
        assert_eq!(checked, layout.entries.len(), "{name}");

        // The tokenizer metadata is the converter's (the base's own, written by
        // scripts/make_gguf_model_fixtures.py as _set_vocab_gpt2 does), and reads back to a
        // tokenizer that gives the same ids.
        for (k, v) in base.metadata() {
            if k.starts_with("tokenizer.ggml.") {
                assert_eq!(ours.file.get(k), Some(v), "{name}: {k}");
            }
        }
        let (a, b) = (
            GgufModel::open(&path)
                .unwrap()
                .metadata_tokenizer()
                .unwrap(),
            ours.metadata_tokenizer().unwrap(),
        );
        for text in [
            "Hello world",
            "It's 2024, isn't it?",
            "  two  spaces\nand 12345",
        ] {
            assert_eq!(
                a.encode_prompt(text).unwrap(),
                b.encode_prompt(text).unwrap(),
                "{name}: {text:?}"
            );
        }
    }
}

#[test]
fn tokenizer_metadata_takes_byte_level_bpe_only() {
    use lora_wgpu::gguf::Value;
    use lora_wgpu::model::gguf::tokenizer_metadata;
    use lora_wgpu::tokenizer::{SpecialTokens, Tokenizer};
    let special = SpecialTokens {
        bos: Some(0),
        eos: vec![1],
        pad: None,
    };
    let read = |p: &str| -> Json {
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(p)).unwrap()).unwrap()
    };
    let get =
        |m: &[(String, Value)], k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());

    // Qwen2's own tokenizer.json keeps offsets untrimmed: the ids are the same, so it is "qwen2";
    // a non-special added token is user-defined (4).
    let mut j = read("gguf_model/qwen3-tokenizer.json");
    j["pre_tokenizer"]["pretokenizers"][1]["trim_offsets"] = Json::Bool(false);
    j["added_tokens"][1]["special"] = Json::Bool(false);
    let tok = Tokenizer::from_json(&j.to_string()).unwrap();
    let m = tokenizer_metadata(&tok, &special, 320).unwrap();
    assert_eq!(
        get(&m, "tokenizer.ggml.pre"),
        Some(Value::String("qwen2".into()))
    );
    let Some(Value::Array(types)) = get(&m, "tokenizer.ggml.token_type") else {
        panic!("no token types")
    };
    let id = j["added_tokens"][1]["id"].as_u64().unwrap() as usize;
    assert_eq!(types[id], Value::I32(4));
    assert_eq!(types[0], Value::I32(3));
    // A vocabulary that is not the model's.
    let e = tokenizer_metadata(&tok, &special, 99).unwrap_err();
    assert!(e.contains("320 tokens") && e.contains("99"), "{e}");
    // An embedding padded past the vocabulary (as Qwen's are): placeholder tokens, type unused.
    let m = tokenizer_metadata(&tok, &special, 330).unwrap();
    let (Some(Value::Array(tokens)), Some(Value::Array(types))) = (
        get(&m, "tokenizer.ggml.tokens"),
        get(&m, "tokenizer.ggml.token_type"),
    ) else {
        panic!("no tokens")
    };
    assert_eq!(tokens.len(), 330);
    assert_eq!(tokens[325], Value::String("[PAD325]".into()));
    assert_eq!(types[325], Value::I32(5));
    // SentencePiece (byte-fallback BPE): not expressible as "gpt2".
    let sp =
        Tokenizer::from_file(&fixtures().join("tokenizers/sentencepiece/tokenizer.json")).unwrap();
    let e = tokenizer_metadata(&sp, &special, sp.vocab_size()).unwrap_err();
    assert!(e.contains("byte"), "{e}");
}

/// llama.cpp's converter writes Mistral as llama, q/k rows permuted: so do we, and the file
/// reads back as a llama of the same shape.
#[test]
fn gguf_mistral_is_written_as_llama() {
    use lora_wgpu::model::gguf::gguf_architecture;
    use lora_wgpu::model::llama::{LlamaArch, LlamaConfig};
    use lora_wgpu::model::ModelConfig;
    let mistral: ModelConfig = LlamaConfig {
        arch: LlamaArch::Mistral,
        ..LlamaConfig::named("llama-tiny").unwrap()
    }
    .into();
    assert_eq!(gguf_architecture(&mistral), "llama");
    let q = "model.layers.0.self_attn.q_proj.weight";
    let k = "model.layers.0.self_attn.k_proj.weight";
    assert_eq!(qk_permute_heads(&mistral, q), Some(4));
    assert_eq!(qk_permute_heads(&mistral, k), Some(2));
    let qwen2: ModelConfig = LlamaConfig {
        arch: LlamaArch::Qwen2,
        ..LlamaConfig::named("llama-tiny").unwrap()
    }
    .into();
    assert_eq!(qk_permute_heads(&qwen2, q), None);
}
