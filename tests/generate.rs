//! Text generation with a KV cache against independent references: transformers' greedy
//! `generate` (fixtures from scripts/make_generate_fixtures.py), the full-sequence training
//! graph's logits, a plain-loop attention, and hand-computed sampling filters.

mod common;

use std::path::PathBuf;

use common::{assert_close, gpu, random};
use lora_wgpu::cpu;
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::kernels::decode::{self, DecodeShape};
use lora_wgpu::lora::{peft, LoraConfig, LoraLayout};
use lora_wgpu::model::generate::{
    argmax, candidates, Generator, Sampler, SamplingConfig, ScaledAdapter, StopReason,
};
use lora_wgpu::model::{gpt2::weights, Gpt2Config, TrainGraph, Transformer};
use lora_wgpu::Error;
use serde_json::Value;

type Adapter = (LoraConfig, LoraLayout, Vec<f32>);

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_gpt2")
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("generate.json"))
        .expect("fixture missing: run scripts/make_generate_fixtures.py");
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The fixture model; `sharp` multiplies every matrix (not LayerNorms, not biases) by the
/// fixture's factor, exactly as the script does, so greedy output depends on the context.
fn model(sharp: bool) -> Transformer {
    let dir = fixture_dir().join("model");
    let cfg = Gpt2Config::from_file(&dir.join("config.json")).unwrap();
    let mut w = weights::load(&dir.join("model.safetensors"), &cfg).unwrap();
    if sharp {
        let f = fixture()["sharp"].as_f64().unwrap() as f32;
        for (name, v) in w.iter_mut() {
            if name.ends_with(".weight") && !name.contains("ln_") {
                v.iter_mut().for_each(|x| *x *= f);
            }
        }
    }
    Transformer::upload(gpu(), &cfg, &w).unwrap()
}

fn adapters(m: &Transformer) -> (Adapter, Adapter) {
    (
        peft::load(&fixture_dir().join("adapter"), &m.config).unwrap(),
        peft::load(&fixture_dir().join("adapter_mlp"), &m.config).unwrap(),
    )
}

fn greedy(g: &mut Generator, prompt: &[u32], n: usize) -> Vec<u32> {
    g.generate(gpu(), prompt, &SamplingConfig::greedy(), n, |_| true)
        .unwrap()
}

#[test]
fn greedy_generation_matches_transformers() {
    let f = fixture();
    let scales = &f["scales"];
    let half = scales["adapter_half"].as_f64().unwrap() as f32;
    let mlp_scale = scales["mlp"].as_f64().unwrap() as f32;
    for variant in ["plain", "sharp"] {
        let m = model(variant == "sharp");
        let (ad, mlp) = adapters(&m);
        // One generator for every configuration: only the adapters switch.
        let mut gen = Generator::new(gpu(), &m, m.config.max_positions()).unwrap();
        let configs: [(&str, Vec<ScaledAdapter>); 4] = [
            ("base", vec![]),
            ("adapter", vec![ScaledAdapter::of(&ad, 1.0)]),
            ("adapter_half", vec![ScaledAdapter::of(&ad, half)]),
            (
                "two_adapters",
                vec![
                    ScaledAdapter::of(&ad, 1.0),
                    ScaledAdapter::of(&mlp, mlp_scale),
                ],
            ),
        ];
        for (name, list) in &configs {
            gen.set_adapters(gpu(), list).unwrap();
            for case in f["cases"].as_array().unwrap() {
                let prompt = ids(&case["prompt"]);
                let want = ids(&case["expected"][variant][*name]);
                let n = case["max_new_tokens"].as_u64().unwrap() as usize;
                let fills = prompt.len() + n == m.config.max_positions();
                // Where the fixture fills the context, ask for more: generation must stop there.
                let ask = if fills { n + 10 } else { n };
                let mut streamed = Vec::new();
                let got = gen
                    .generate(gpu(), &prompt, &SamplingConfig::greedy(), ask, |t| {
                        streamed.push(t);
                        true
                    })
                    .unwrap();
                assert_eq!(
                    got, want,
                    "{variant} {name}, prompt {prompt:?}: ours vs transformers"
                );
                assert_eq!(streamed, got, "on_token saw every token in order");
                let reason = if fills {
                    StopReason::ContextFull
                } else {
                    StopReason::MaxTokens
                };
                assert_eq!(gen.stop_reason(), Some(reason), "{variant} {name}");
            }
        }
    }
}

/// Reference logits of `tokens` (one full sequence) from the training graph's forward pass,
/// with the LoRA parameters `init` (B zero: the base model).
fn graph_logits(m: &Transformer, ad: &Adapter, init: &[f32], tokens: &[u32]) -> Vec<f32> {
    let g = gpu();
    let t = tokens.len();
    let mut graph = TrainGraph::new(g, m, &ad.0, Some(init), 0, 1, t, &AdamW::default()).unwrap();
    graph.forward(g, tokens, tokens).unwrap();
    graph.logits(g, m).unwrap()
}

#[test]
fn kv_cache_logits_match_the_full_sequence_graph() {
    let g = gpu();
    for sharp in [false, true] {
        let m = model(sharp);
        let (ad, _) = adapters(&m);
        let (v, ctx) = (m.config.vocab_size(), m.config.max_positions());
        let tokens: Vec<u32> = (0..ctx as u32).map(|i| (i * 37 + 11) % v as u32).collect();
        // Base: B = 0 leaves only the base model; half: lora_B halved is scale 0.5.
        let mut base = ad.2.clone();
        let mut half = ad.2.clone();
        for e in &ad.1.entries {
            let b = e.b_offset..e.b_offset + e.d_out * ad.1.r;
            base[b.clone()].iter_mut().for_each(|x| *x = 0.0);
            half[b].iter_mut().for_each(|x| *x *= 0.5);
        }
        let mut gen = Generator::new(g, &m, ctx).unwrap();
        for (name, init, scale) in [
            ("base", &base, 0.0),
            ("adapter", &ad.2, 1.0),
            ("adapter x0.5", &half, 0.5),
        ] {
            let want = graph_logits(&m, &ad, init, &tokens);
            let list = if scale == 0.0 {
                vec![]
            } else {
                vec![ScaledAdapter::of(&ad, scale)]
            };
            gen.set_adapters(g, &list).unwrap();
            let max_ref = want.iter().fold(0.0f32, |a, x| a.max(x.abs()));
            // Every position one token at a time, then prefill chunks of several sizes.
            let ones = vec![1; ctx];
            let chunks = [5, 1, 1, 3, 8, 1, 13];
            for plan in [&ones[..], &chunks[..]] {
                gen.reset();
                let mut at = 0;
                for &n in plan {
                    let got = gen.feed(g, &tokens[at..at + n]).unwrap();
                    at += n;
                    let row = &want[(at - 1) * v..at * v];
                    assert_close(
                        &got,
                        row,
                        1e-4,
                        0.0,
                        &format!("sharp={sharp} {name}: logits at position {}", at - 1),
                    );
                }
                assert_eq!(gen.position(), at);
            }
            assert!(max_ref > 0.1, "logits are not trivially small");
        }
    }
}

#[test]
fn decode_attention_matches_a_plain_loop() {
    let g = gpu();
    let (n, c, nh, ctx, p0) = (3, 24, 3, 20, 6);
    let hs = c / nh;
    let qkv = random(n * 3 * c, 1);
    let k_old = random(ctx * c, 2);
    let v_old = random(ctx * c, 3);
    let t_qkv = g.upload("qkv", &qkv, &[n, 3 * c]).unwrap();
    let kc = g.upload("k", &k_old, &[ctx, c]).unwrap();
    let vc = g.upload("v", &v_old, &[ctx, c]).unwrap();
    let pos = g.upload_u32("pos", &[p0 as u32], &[1]).unwrap();
    let out = g.zeros("out", &[n, c]).unwrap();
    let att = g.zeros("att", &[n, nh, ctx]).unwrap();
    let s = DecodeShape::mha(n, c, nh, ctx);
    assert_eq!(
        (s.nkv, s.hs, s.qkv_width(), s.kv_width()),
        (nh, hs, 3 * c, c)
    );
    let store = decode::kv_store(g, &kc, &vc, &pos, &t_qkv, &s).unwrap();
    let attn = decode::attention(g, &out, &att, &pos, &t_qkv, &kc, &vc, &s).unwrap();
    g.run(&[&store, &attn]).unwrap();

    // Reference: the cache with rows p0 .. p0 + n replaced, then causal softmax attention.
    let (mut k, mut vv) = (k_old.clone(), v_old.clone());
    for r in 0..n {
        for j in 0..c {
            k[(p0 + r) * c + j] = qkv[r * 3 * c + c + j];
            vv[(p0 + r) * c + j] = qkv[r * 3 * c + 2 * c + j];
        }
    }
    assert_close(&g.download(&kc).unwrap(), &k, 0.0, 0.0, "k cache");
    assert_close(&g.download(&vc).unwrap(), &vv, 0.0, 0.0, "v cache");
    let mut want = vec![0.0f32; n * c];
    for r in 0..n {
        for h in 0..nh {
            let q = &qkv[r * 3 * c + h * hs..r * 3 * c + (h + 1) * hs];
            let scores: Vec<f64> = (0..=p0 + r)
                .map(|t| {
                    let kt = &k[t * c + h * hs..t * c + (h + 1) * hs];
                    q.iter().zip(kt).map(|(a, b)| (a * b) as f64).sum::<f64>() / (hs as f64).sqrt()
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hs {
                let o: f64 = (0..=p0 + r)
                    .map(|t| e[t] / sum * vv[t * c + h * hs + d] as f64)
                    .sum();
                want[r * c + h * hs + d] = o as f32;
            }
        }
    }
    assert_close(&g.download(&out).unwrap(), &want, 1e-5, 1e-5, "attention");
}

/// The KV-cached attention of n new rows at p0 (kv_store, then decode::attention) against the
/// training-side CPU forward over the whole sequence 0 .. p0 + n: rows before p0 take their
/// keys and values from the cache as it was, later ones from the new qkv rows.
fn check_decode_attention(n: usize, nh: usize, nkv: usize, hs: usize, ctx: usize, p0: usize) {
    let g = gpu();
    let s = DecodeShape {
        n,
        nh,
        nkv,
        hs,
        ctx,
    };
    let (wq, wkv) = (s.qkv_width(), s.kv_width());
    assert_eq!((wq, wkv), ((nh + 2 * nkv) * hs, nkv * hs));
    let qkv: Vec<f32> = random(n * wq, 4).iter().map(|x| x * 3.0).collect();
    let k_old: Vec<f32> = random(ctx * wkv, 5).iter().map(|x| x * 3.0).collect();
    let v_old = random(ctx * wkv, 6);
    let t_qkv = g.upload("qkv", &qkv, &[n, wq]).unwrap();
    let kc = g.upload("k", &k_old, &[ctx, wkv]).unwrap();
    let vc = g.upload("v", &v_old, &[ctx, wkv]).unwrap();
    let pos = g.upload_u32("pos", &[p0 as u32], &[1]).unwrap();
    let out = g.zeros("out", &[n, nh * hs]).unwrap();
    let att = g.zeros("att", &[n, nh, ctx]).unwrap();
    let store = decode::kv_store(g, &kc, &vc, &pos, &t_qkv, &s).unwrap();
    let attn = decode::attention(g, &out, &att, &pos, &t_qkv, &kc, &vc, &s).unwrap();
    g.run(&[&store, &attn]).unwrap();

    // The caches: rows p0 .. p0 + n are the new rows' kv heads, the rest as they were.
    let (mut k, mut v) = (k_old.clone(), v_old.clone());
    for r in 0..n {
        let src = r * wq + nh * hs;
        k[(p0 + r) * wkv..][..wkv].copy_from_slice(&qkv[src..src + wkv]);
        v[(p0 + r) * wkv..][..wkv].copy_from_slice(&qkv[src + wkv..src + 2 * wkv]);
    }
    let what = format!("{s:?} at {p0}");
    assert_close(
        &g.download(&kc).unwrap(),
        &k,
        0.0,
        0.0,
        &format!("k cache {what}"),
    );
    assert_close(
        &g.download(&vc).unwrap(),
        &v,
        0.0,
        0.0,
        &format!("v cache {what}"),
    );

    // The whole sequence in the training layout; queries before p0 are never looked at.
    let t = p0 + n;
    let mut full = random(t * wq, 7);
    for tt in 0..t {
        let row = &mut full[tt * wq..(tt + 1) * wq];
        if tt >= p0 {
            row.copy_from_slice(&qkv[(tt - p0) * wq..][..wq]);
        } else {
            row[nh * hs..nh * hs + wkv].copy_from_slice(&k_old[tt * wkv..][..wkv]);
            row[nh * hs + wkv..].copy_from_slice(&v_old[tt * wkv..][..wkv]);
        }
    }
    let (mut want, mut lse) = (vec![0.0; t * nh * hs], vec![0.0; nh * t]);
    cpu::attention::forward(&mut want, &mut lse, &full, 1, t, nh, nkv, hs);
    assert_close(
        &g.download(&out).unwrap(),
        &want[p0 * nh * hs..],
        1e-5,
        1e-5,
        &format!("attention {what}"),
    );
}

#[test]
fn decode_grouped_query_attention_matches_the_cpu_forward() {
    // (n, NH, NKV, HS, ctx, p0): groups of 2, 6, 1 and 2 query heads per kv head, a prefill at
    // 0, single rows and short runs at offsets, the last one filling the cache exactly.
    for (n, nh, nkv, hs, ctx, p0) in [
        (3, 4, 2, 8, 20, 6),
        (1, 6, 1, 12, 16, 9),
        (5, 4, 4, 20, 12, 0),
        (2, 2, 1, 128, 40, 33),
        (4, 8, 2, 16, 70, 66),
    ] {
        check_decode_attention(n, nh, nkv, hs, ctx, p0);
    }
}

#[test]
fn decode_shapes_are_checked() {
    let g = gpu();
    let pos = g.upload_u32("pos", &[0], &[1]).unwrap();
    let buf = g.zeros("buf", &[4096]).unwrap();
    for (s, says) in [
        (
            DecodeShape {
                n: 1,
                nh: 4,
                nkv: 3,
                hs: 8,
                ctx: 4,
            },
            "divide",
        ),
        (
            DecodeShape {
                n: 1,
                nh: 1,
                nkv: 1,
                hs: 130,
                ctx: 4,
            },
            "head size",
        ),
        (DecodeShape::mha(1, 10, 3, 4), "split evenly"),
    ] {
        let e = decode::kv_store(g, &buf, &buf, &pos, &buf, &s).unwrap_err();
        assert!(e.to_string().contains(says), "{s:?}: {e}");
    }
    // The caches are (ctx, nkv·hs): one of (ctx, nh·hs) is refused.
    let s = DecodeShape {
        n: 1,
        nh: 4,
        nkv: 2,
        hs: 8,
        ctx: 4,
    };
    let qkv = g.zeros("qkv", &[1, 64]).unwrap();
    let wide = g.zeros("cache", &[4, 32]).unwrap();
    assert!(decode::kv_store(g, &wide, &wide, &pos, &qkv, &s).is_err());
    let cache = g.zeros("cache", &[4, 16]).unwrap();
    assert!(decode::kv_store(g, &cache, &cache, &pos, &qkv, &s).is_ok());
}

#[test]
fn decode_gemv_kernels_match_the_cpu_matmul() {
    use lora_wgpu::kernels::matmul::MatmulOp;
    let g = gpu();
    for (m, k, n) in [
        (1, 4, 4),
        (1, 48, 144),
        (3, 20, 12),
        (8, 12, 36),
        (13, 48, 192),
    ] {
        let (x, w, bias) = (random(m * k, 1), random(k * n, 2), random(n, 3));
        let tx = g.upload("x", &x, &[m, k]).unwrap();
        let tw = g.upload("w", &w, &[k, n]).unwrap();
        let tb = g.upload("bias", &bias, &[n]).unwrap();
        let y = g.zeros("y", &[m, n]).unwrap();
        let d = decode::gemv_cols(g, &y, &tx, &tw, Some(&tb), m, k, n).unwrap();
        g.run(&[&d]).unwrap();
        let mut want = vec![0.0; m * n];
        lora_wgpu::cpu::matmul::matmul(&mut want, &x, &w, Some(&bias), &MatmulOp::new(m, n, k));
        assert_close(&g.download(&y).unwrap(), &want, 1e-5, 1e-5, "gemv_cols");
        // The same weight stored as f16 (where the adapter offers it): the reference rounds it.
        if g.features().f16 {
            let w16: Vec<f32> = w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            let tw16 = g.upload_f16("w f16", &w16, &[k, n]).unwrap();
            let d = decode::gemv_cols(g, &y, &tx, &tw16, Some(&tb), m, k, n).unwrap();
            g.run(&[&d]).unwrap();
            lora_wgpu::cpu::matmul::matmul(
                &mut want,
                &x,
                &w16,
                Some(&bias),
                &MatmulOp::new(m, n, k),
            );
            assert_close(&g.download(&y).unwrap(), &want, 1e-5, 1e-5, "gemv_cols f16");
        }
    }
    for (k, n) in [(4, 1), (12, 7), (48, 99), (20, 130)] {
        let (x, w) = (random(k, 4), random(n * k, 5));
        let tx = g.upload("x", &x, &[1, k]).unwrap();
        let tw = g.upload("w", &w, &[n, k]).unwrap();
        let y = g.zeros("y", &[n]).unwrap();
        let d = decode::gemv_rows(g, &y, &tx, &tw, k, n).unwrap();
        g.run(&[&d]).unwrap();
        let mut want = vec![0.0; n];
        lora_wgpu::cpu::matmul::matmul(&mut want, &x, &w, None, &MatmulOp::new(1, n, k).trans_b());
        assert_close(&g.download(&y).unwrap(), &want, 1e-5, 1e-5, "gemv_rows");
    }
    let (x, w) = (
        g.zeros("x", &[1, 6]).unwrap(),
        g.zeros("w", &[6, 8]).unwrap(),
    );
    let y = g.zeros("y", &[1, 8]).unwrap();
    assert!(
        decode::gemv_cols(g, &y, &x, &w, None, 1, 6, 8).is_err(),
        "k % 4 != 0"
    );
}

#[test]
fn switching_adapters_changes_the_output_and_switching_back_restores_it() {
    let g = gpu();
    let m = model(true);
    let (ad, mlp) = adapters(&m);
    let prompt = [5, 17, 42, 8];
    let mut gen = Generator::new(g, &m, 24).unwrap();
    let bytes_base = gen.allocated_bytes();
    let base = greedy(&mut gen, &prompt, 12);
    gen.set_adapters(g, &[ScaledAdapter::of(&ad, 1.0)]).unwrap();
    let with = greedy(&mut gen, &prompt, 12);
    assert_ne!(base, with, "the adapter changed nothing");
    let extra = gen.allocated_bytes() - bytes_base;
    assert!(
        extra as usize <= 4 * ad.1.len,
        "switching allocated {extra} bytes, more than the adapter's {} values",
        ad.1.len
    );
    gen.set_adapters(
        g,
        &[ScaledAdapter::of(&ad, 1.0), ScaledAdapter::of(&mlp, -0.7)],
    )
    .unwrap();
    let both = greedy(&mut gen, &prompt, 12);
    assert_ne!(both, with, "the second adapter changed nothing");
    gen.set_adapters(g, &[]).unwrap();
    assert_eq!(greedy(&mut gen, &prompt, 12), base, "base restored");
    assert_eq!(gen.allocated_bytes(), bytes_base);
    // Scale 0 is the base model too.
    gen.set_adapters(g, &[ScaledAdapter::of(&ad, 0.0)]).unwrap();
    assert_eq!(greedy(&mut gen, &prompt, 12), base, "scale 0 = base");
    gen.set_adapters(g, &[ScaledAdapter::of(&ad, 1.0)]).unwrap();
    assert_eq!(greedy(&mut gen, &prompt, 12), with, "adapter restored");
}

#[test]
fn same_seed_same_tokens_and_top_k_1_is_greedy() {
    let g = gpu();
    let m = model(false);
    let mut gen = Generator::new(g, &m, 32).unwrap();
    let prompt = [3, 1, 4, 1, 5];
    let cfg = SamplingConfig {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        seed: 7,
    };
    let a = gen.generate(g, &prompt, &cfg, 20, |_| true).unwrap();
    let b = gen.generate(g, &prompt, &cfg, 20, |_| true).unwrap();
    assert_eq!(a, b, "same seed, same tokens");
    let other = SamplingConfig { seed: 8, ..cfg };
    let c = gen.generate(g, &prompt, &other, 20, |_| true).unwrap();
    assert_ne!(a, c, "another seed, other tokens");
    assert_ne!(a, greedy(&mut gen, &prompt, 20), "sampling is not greedy");

    let m = model(true);
    let mut gen = Generator::new(g, &m, 32).unwrap();
    let top1 = SamplingConfig {
        temperature: 1.7,
        top_k: 1,
        top_p: 1.0,
        seed: 3,
    };
    for prompt in [&[98u32][..], &[18, 56, 69, 52, 69, 70]] {
        let want = greedy(&mut gen, prompt, 12);
        let got = gen.generate(g, prompt, &top1, 12, |_| true).unwrap();
        assert_eq!(got, want, "top_k = 1 picks the argmax");
        let tiny_p = SamplingConfig {
            top_k: 0,
            top_p: 1e-6,
            ..top1.clone()
        };
        let got = gen.generate(g, prompt, &tiny_p, 12, |_| true).unwrap();
        assert_eq!(got, want, "a tiny top_p keeps only the argmax");
    }
}

#[test]
fn stops_at_eos_callback_and_context() {
    let g = gpu();
    let m = model(true);
    let mut gen = Generator::new(g, &m, 32).unwrap();
    assert_eq!(gen.eos_token(), None, "vocabulary 99 has no token 50256");
    let prompt = [18, 56, 69, 52, 69, 70];
    let free = greedy(&mut gen, &prompt, 12);
    // Stop at the first occurrence of a token that appears later in the free run.
    let eos = free[2];
    let first = free.iter().position(|&t| t == eos).unwrap();
    gen.set_eos_token(Some(eos)).unwrap();
    let got = greedy(&mut gen, &prompt, 12);
    assert_eq!(got, free[..=first], "stops after the end-of-text token");
    assert_eq!(gen.stop_reason(), Some(StopReason::Eos));
    // An empty prompt starts from the end-of-text token.
    let from_empty = greedy(&mut gen, &[], 3);
    gen.set_eos_token(None).unwrap();
    assert_eq!(from_empty, greedy(&mut gen, &[eos], 3)[..from_empty.len()]);

    let mut seen = 0;
    let got = gen
        .generate(g, &prompt, &SamplingConfig::greedy(), 12, |_| {
            seen += 1;
            seen < 3
        })
        .unwrap();
    assert_eq!(
        got,
        free[..3],
        "on_token returning false stops after that token"
    );
    assert_eq!(gen.stop_reason(), Some(StopReason::Callback));

    let mut small = Generator::new(g, &m, 10).unwrap();
    let got = greedy(&mut small, &prompt, 12);
    assert_eq!(got, free[..4], "a context of 10 leaves room for 4 tokens");
    assert_eq!(small.stop_reason(), Some(StopReason::ContextFull));
    let full: Vec<u32> = (0..10).collect();
    assert!(greedy(&mut small, &full, 5).is_empty());
    assert_eq!(small.stop_reason(), Some(StopReason::ContextFull));
    assert!(greedy(&mut small, &prompt, 0).is_empty());
    assert_eq!(small.stop_reason(), Some(StopReason::MaxTokens));
}

fn invalid(e: Error) -> String {
    assert!(
        matches!(e, Error::InvalidArgument { .. } | Error::Shape { .. }),
        "{e:?}"
    );
    e.to_string()
}

#[test]
fn bad_input_is_a_clear_error() {
    let g = gpu();
    let m = model(false);
    let mut gen = Generator::new(g, &m, 8).unwrap();
    let greedy_cfg = SamplingConfig::greedy();
    let msg = invalid(
        gen.generate(g, &[1; 9], &greedy_cfg, 1, |_| true)
            .unwrap_err(),
    );
    assert!(msg.contains("exceeds the context of 8"), "{msg}");
    let msg = invalid(gen.generate(g, &[], &greedy_cfg, 1, |_| true).unwrap_err());
    assert!(msg.contains("no beginning-of-text token"), "{msg}");
    let msg = invalid(
        gen.generate(g, &[99], &greedy_cfg, 1, |_| true)
            .unwrap_err(),
    );
    assert!(msg.contains("vocabulary size 99"), "{msg}");
    assert!(gen.set_eos_token(Some(99)).is_err());
    let msg = invalid(Generator::new(g, &m, 33).unwrap_err());
    assert!(msg.contains("n_positions"), "{msg}");
    assert!(Generator::new(g, &m, 0).is_err());
    gen.feed(g, &[1; 6]).unwrap();
    let msg = invalid(gen.feed(g, &[1; 3]).unwrap_err());
    assert!(msg.contains("does not fit the context"), "{msg}");
    assert!(gen.feed(g, &[]).is_err());

    for bad in [
        SamplingConfig {
            temperature: -0.1,
            ..SamplingConfig::default()
        },
        SamplingConfig {
            temperature: f32::NAN,
            ..SamplingConfig::default()
        },
        SamplingConfig {
            top_p: 0.0,
            ..SamplingConfig::default()
        },
        SamplingConfig {
            top_p: 1.5,
            ..SamplingConfig::default()
        },
    ] {
        let msg = invalid(gen.generate(g, &[1], &bad, 1, |_| true).unwrap_err());
        assert!(
            msg.contains("temperature") || msg.contains("top_p"),
            "{msg}"
        );
    }
    let zero_k = SamplingConfig {
        top_k: 0,
        ..SamplingConfig::default()
    };
    assert!(zero_k.validate().is_ok(), "top_k 0 means no cut");

    // An adapter whose layout is not this model's, or whose values are short.
    let (ad, _) = adapters(&m);
    let mut other = m.config.as_gpt2().unwrap().clone();
    other.n_embd = 64;
    let wrong_layout = LoraLayout::new(&other, &ad.0).unwrap();
    let wrong = ScaledAdapter {
        layout: &wrong_layout,
        ..ScaledAdapter::of(&ad, 1.0)
    };
    let msg = invalid(gen.set_adapters(g, &[wrong]).unwrap_err());
    assert!(msg.contains("layout does not match"), "{msg}");
    let short = ScaledAdapter {
        params: &ad.2[..10],
        ..ScaledAdapter::of(&ad, 1.0)
    };
    assert!(gen.set_adapters(g, &[short]).is_err());
    let nan = ScaledAdapter::of(&ad, f32::NAN);
    assert!(gen.set_adapters(g, &[nan]).is_err());
    // The generator still works after rejected adapters.
    assert_eq!(
        gen.generate(g, &[1, 2], &greedy_cfg, 2, |_| true)
            .unwrap()
            .len(),
        2
    );
}

// ---- CPU-side sampling ----

#[test]
fn argmax_takes_the_lowest_id_on_ties() {
    assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]).unwrap(), 1);
    assert_eq!(argmax(&[f32::NEG_INFINITY, -3.0]).unwrap(), 1);
    assert!(argmax(&[]).is_err());
    assert!(argmax(&[1.0, f32::NAN]).is_err());
}

/// Softmax of logits / t in f64, for the reference values below.
fn softmax(logits: &[f64], t: f64) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| ((l - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[test]
fn temperature_top_k_and_top_p_filters() {
    let logits = [1.0f32, 3.0, 2.0, 3.0, 0.0, -1.0];
    let l64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    let cfg = |temperature, top_k, top_p| SamplingConfig {
        temperature,
        top_k,
        top_p,
        seed: 0,
    };
    let check = |got: Vec<(u32, f32)>, want: &[(u32, f64)]| {
        let got_ids: Vec<u32> = got.iter().map(|c| c.0).collect();
        let want_ids: Vec<u32> = want.iter().map(|c| c.0).collect();
        assert_eq!(got_ids, want_ids);
        for (g, w) in got.iter().zip(want) {
            assert!((g.1 as f64 - w.1).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    };
    // No cut: every token, by probability (ties by id).
    let p = softmax(&l64, 1.0);
    check(
        candidates(&logits, &cfg(1.0, 0, 1.0)).unwrap(),
        &[
            (1, p[1]),
            (3, p[3]),
            (2, p[2]),
            (0, p[0]),
            (4, p[4]),
            (5, p[5]),
        ],
    );
    // Temperature 2: softmax of logits / 2.
    let p = softmax(&l64, 2.0);
    let all = candidates(&logits, &cfg(2.0, 0, 1.0)).unwrap();
    assert!((all[0].1 as f64 - p[1]).abs() < 1e-6 && (all[5].1 as f64 - p[5]).abs() < 1e-6);
    // top_k = 3: the three largest (ids 1, 3 tie at 3.0; then 2), renormalised.
    let p = softmax(&[3.0, 3.0, 2.0], 1.0);
    check(
        candidates(&logits, &cfg(1.0, 3, 1.0)).unwrap(),
        &[(1, p[0]), (3, p[1]), (2, p[2])],
    );
    // top_k = 2 splits nothing: exactly two kept, the lower id first on the tie.
    check(
        candidates(&logits, &cfg(1.0, 2, 1.0)).unwrap(),
        &[(1, 0.5), (3, 0.5)],
    );
    // top_p: probabilities sorted are p1 = p3 ≈ 0.4046, p2 ≈ 0.1488, ...: 0.5 needs two tokens,
    // 0.85 needs three (0.809 < 0.85), 0.8 needs... 0.809 >= 0.8: three.
    let p = softmax(&l64, 1.0);
    assert!(p[1] + p[3] < 0.85 && p[1] + p[3] + p[2] > 0.85);
    check(
        candidates(&logits, &cfg(1.0, 0, 0.5)).unwrap(),
        &[(1, 0.5), (3, 0.5)],
    );
    let s3 = p[1] + p[3] + p[2];
    check(
        candidates(&logits, &cfg(1.0, 0, 0.85)).unwrap(),
        &[(1, p[1] / s3), (3, p[3] / s3), (2, p[2] / s3)],
    );
    // top_p smaller than the largest probability keeps one token.
    check(candidates(&logits, &cfg(1.0, 0, 0.1)).unwrap(), &[(1, 1.0)]);
    // top_k then top_p: k = 3, then 0.9 of the renormalised three.
    let q = softmax(&[3.0, 3.0, 2.0], 1.0);
    assert!(q[0] + q[1] < 0.9);
    check(
        candidates(&logits, &cfg(1.0, 3, 0.9)).unwrap(),
        &[(1, q[0]), (3, q[1]), (2, q[2])],
    );
    // Greedy: the argmax alone.
    check(candidates(&logits, &cfg(0.0, 0, 1.0)).unwrap(), &[(1, 1.0)]);
    // -inf logits get probability 0 and are drawn last.
    let masked = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
    let c = candidates(&masked, &cfg(1.0, 0, 1.0)).unwrap();
    assert_eq!(c[0], (1, 1.0));
}

#[test]
fn sampling_frequencies_follow_the_probabilities() {
    let logits = [0.2f32, 1.5, -0.3, 1.0, 0.7];
    let cfg = SamplingConfig {
        temperature: 0.8,
        top_k: 4,
        top_p: 0.9,
        seed: 11,
    };
    let want = candidates(&logits, &cfg).unwrap();
    let mut s = Sampler::new(&cfg).unwrap();
    let n = 40_000;
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[s.sample(&logits).unwrap() as usize] += 1;
    }
    for (id, p) in &want {
        let f = counts[*id as usize] as f64 / n as f64;
        assert!((f - *p as f64).abs() < 0.01, "token {id}: {f} vs {p}");
    }
    let kept: usize = want.iter().map(|(id, _)| counts[*id as usize]).sum();
    assert_eq!(kept, n, "only candidates are drawn");
    // Same seed, same draws.
    let mut a = Sampler::new(&cfg).unwrap();
    let mut b = Sampler::new(&cfg).unwrap();
    let da: Vec<u32> = (0..50).map(|_| a.sample(&logits).unwrap()).collect();
    let db: Vec<u32> = (0..50).map(|_| b.sample(&logits).unwrap()).collect();
    assert_eq!(da, db);
}

/// Decode speed on GPT-2 124M's shape (random weights): `cargo test --release --test generate
/// -- --ignored --nocapture`.
#[test]
#[ignore]
fn decode_speed_gpt2_124m_shape() {
    use std::time::Instant;
    let g = gpu();
    for (name, m) in [
        ("fixture", model(false)),
        ("gpt2 124M shape", {
            let cfg = Gpt2Config::named("gpt2").unwrap();
            Transformer::upload(g, &cfg, &weights::random(&cfg, 0)).unwrap()
        }),
    ] {
        let mut gen = Generator::new(g, &m, 32).unwrap();
        let prompt: Vec<u32> = (0..8).collect();
        let cfg = SamplingConfig::greedy();
        gen.generate(g, &prompt, &cfg, 2, |_| true).unwrap(); // build and warm up
        let t0 = Instant::now();
        gen.reset();
        gen.feed(g, &prompt).unwrap();
        let prefill = t0.elapsed().as_secs_f64();
        let n = 8;
        let t1 = Instant::now();
        for i in 0..n {
            gen.feed(g, &[i as u32]).unwrap();
        }
        let dt = t1.elapsed().as_secs_f64();
        eprintln!(
            "{name}: prefill of {} tokens {:.1} ms; decode {:.2} tokens/s ({:.1} ms/token)",
            prompt.len(),
            prefill * 1e3,
            n as f64 / dt,
            dt / n as f64 * 1e3
        );
    }
}
