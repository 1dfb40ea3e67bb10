//! The GPT-2 op kernels (embedding, layernorm, gelu, residual add, attention, chunked
//! cross-entropy) against the CPU reference. A kernel's tests are named after its module
//! (`cargo test --test gpt2_ops layernorm`).

mod common;

use common::{assert_close, gpu, random, ATOL, RTOL};
use lora_wgpu::cpu;
use lora_wgpu::kernels::attention::{self, AttentionShape, AttentionVariant};
use lora_wgpu::kernels::cross_entropy::{self as ce, CeState, IGNORE};
use lora_wgpu::kernels::{elementwise, embedding, layernorm, Variants};

#[test]
fn embedding_over_vocab_shards() {
    let g = gpu();
    let (b, t, c, v) = (2, 5, 12, 37);
    let tokens: Vec<u32> = (0..b * t).map(|i| (i as u32 * 7 + 3) % v as u32).collect();
    let wte = random(v * c, 1);
    let wpe = random(8 * c, 2);
    let tt = g.upload_u32("tokens", &tokens, &[b * t]).unwrap();
    let s0 = g.upload("wte[0..20]", &wte[..20 * c], &[20, c]).unwrap();
    let s1 = g.upload("wte[20..37]", &wte[20 * c..], &[17, c]).unwrap();
    let tpe = g.upload("wpe", &wpe, &[8, c]).unwrap();
    let out = g.zeros("out", &[b * t, c]).unwrap();
    let ds = embedding::forward(g, &out, &tt, &[&s0, &s1], Some(&tpe), t, c).unwrap();
    g.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let mut want = vec![0.0; b * t * c];
    cpu::embedding::forward(&mut want, &tokens, &wte, &wpe, t, c);
    assert_close(&g.download(&out).unwrap(), &want, 1e-6, 0.0, "embedding");
}

#[test]
fn layernorm_forward_and_backward() {
    use layernorm::LayernormVariant::{Row, Workgroup};
    let g = gpu();
    for (v, n, c) in [
        (Row, 1, 1),
        (Row, 13, 70),
        (Row, 64, 768),
        (Workgroup, 1, 1),
        (Workgroup, 13, 70),
        (Workgroup, 64, 768),
        (Workgroup, 3, 1600),
    ] {
        let x: Vec<f32> = random(n * c, 3).iter().map(|v| v * 3.0 + 0.5).collect();
        let (w, bias, dout) = (random(c, 4), random(c, 5), random(n * c, 6));
        let dinp0 = random(n * c, 7);
        let up = |name, v: &[f32], len| g.upload(name, v, &[len]).unwrap();
        let (tx, tw, tb, tdout, tdinp) = (
            up("x", &x, n * c),
            up("w", &w, c),
            up("b", &bias, c),
            up("dout", &dout, n * c),
            up("dinp", &dinp0, n * c),
        );
        let (out, mean, rstd) = (
            g.zeros("out", &[n, c]).unwrap(),
            g.zeros("mean", &[n]).unwrap(),
            g.zeros("rstd", &[n]).unwrap(),
        );
        let gv = g.with_variants(Variants {
            layernorm: v,
            ..g.variants()
        });
        let f = layernorm::forward(&gv, &out, &mean, &rstd, &tx, &tw, &tb, c, 1e-5).unwrap();
        let bk = layernorm::backward(&gv, &tdinp, &tdout, &tx, &tw, &mean, &rstd, c).unwrap();
        g.run(&[&f, &bk]).unwrap();
        let (mut wo, mut wm, mut wr) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        cpu::layernorm::forward(&mut wo, &mut wm, &mut wr, &x, &w, &bias, c, 1e-5);
        let mut wd = dinp0.clone();
        cpu::layernorm::backward(&mut wd, &dout, &x, &w, &wm, &wr, c);
        assert_close(
            &g.download(&out).unwrap(),
            &wo,
            ATOL,
            RTOL,
            &format!("layernorm {v:?} out {n}x{c}"),
        );
        assert_close(&g.download(&rstd).unwrap(), &wr, ATOL, RTOL, "rstd");
        assert_close(
            &g.download(&tdinp).unwrap(),
            &wd,
            ATOL,
            RTOL,
            &format!("layernorm {v:?} dinp {n}x{c}"),
        );
    }
}

#[test]
fn elementwise_gelu_and_add() {
    let g = gpu();
    let n = 70_001;
    let x: Vec<f32> = random(n, 8).iter().map(|v| v * 5.0).collect();
    let dout = random(n, 9);
    let (tx, tdout) = (
        g.upload("x", &x, &[n]).unwrap(),
        g.upload("dout", &dout, &[n]).unwrap(),
    );
    let (out, dinp, sum) = (
        g.zeros("out", &[n]).unwrap(),
        g.zeros("dinp", &[n]).unwrap(),
        g.zeros("sum", &[n]).unwrap(),
    );
    let f = elementwise::gelu_forward(g, &out, &tx).unwrap();
    let bk = elementwise::gelu_backward(g, &dinp, &tdout, &tx).unwrap();
    let add = elementwise::add(g, &sum, &tx, &tdout).unwrap();
    g.run(&[&f, &bk, &add]).unwrap();
    let (mut wo, mut wd) = (vec![0.0; n], vec![0.0; n]);
    cpu::elementwise::gelu_forward(&mut wo, &x);
    cpu::elementwise::gelu_backward(&mut wd, &dout, &x);
    assert_close(&g.download(&out).unwrap(), &wo, ATOL, RTOL, "gelu");
    assert_close(
        &g.download(&dinp).unwrap(),
        &wd,
        ATOL,
        RTOL,
        "gelu backward",
    );
    let mut ws = vec![0.0; n];
    cpu::elementwise::add(&mut ws, &x, &dout);
    assert_close(&g.download(&sum).unwrap(), &ws, 0.0, 0.0, "add");
}

/// Forward and backward of `s` on variant `v` against the CPU reference (1e-4 + 1e-4·|x|).
/// Odd T gets larger scores: peaky rows, so the running maximum of the one-pass forward moves
/// by a lot and late.
fn check_attention(g: &lora_wgpu::Gpu, s: AttentionShape, v: AttentionVariant) {
    let AttentionShape { b, t, nh, nkv, hs } = s;
    let (wq, wo) = (s.qkv_width(), s.out_width());
    assert_eq!((wq, wo), ((nh + 2 * nkv) * hs, nh * hs));
    let amp = if t % 2 == 1 { 4.0 } else { 1.0 };
    let qkv: Vec<f32> = random(b * t * wq, 10).iter().map(|x| x * amp).collect();
    let dout = random(b * t * wo, 11);
    let tq = g.upload("qkv", &qkv, &[b, t, wq]).unwrap();
    let td = g.upload("dout", &dout, &[b, t, wo]).unwrap();
    let out = g.zeros("out", &[b, t, wo]).unwrap();
    let lse = g.zeros("lse", &[b, nh, t]).unwrap();
    let dstat = g.zeros("dstat", &[b, nh, t]).unwrap();
    // Not zeros: the backward writes every element, it does not add.
    let dqkv = g
        .upload("dqkv", &random(b * t * wq, 12), &[b, t, wq])
        .unwrap();
    let gv = g.with_variants(Variants {
        attention: v,
        ..g.variants()
    });
    let f = attention::forward(&gv, &out, &lse, &tq, &s).unwrap();
    let [r, cl] = attention::backward(&gv, &dqkv, &dstat, &td, &tq, &out, &lse, &s).unwrap();
    g.run(&[&f, &r, &cl]).unwrap();
    let (mut want_out, mut want_lse, mut want_dqkv) = (
        vec![0.0; b * t * wo],
        vec![0.0; b * nh * t],
        vec![0.0; b * t * wq],
    );
    cpu::attention::forward(&mut want_out, &mut want_lse, &qkv, b, t, nh, nkv, hs);
    cpu::attention::backward(&mut want_dqkv, &dout, &qkv, b, t, nh, nkv, hs);
    let what = format!("{v:?} {s:?}");
    let got = g.download(&out).unwrap();
    assert_close(
        &got,
        &want_out,
        ATOL,
        RTOL,
        &format!("attention out {what}"),
    );
    let got_lse = g.download(&lse).unwrap();
    assert_close(
        &got_lse,
        &want_lse,
        ATOL,
        RTOL,
        &format!("attention lse {what}"),
    );
    let got_dqkv = g.download(&dqkv).unwrap();
    assert_close(
        &got_dqkv,
        &want_dqkv,
        ATOL,
        RTOL,
        &format!("attention dqkv {what}"),
    );
}

const ATTENTION_VARIANTS: [AttentionVariant; 3] = [
    AttentionVariant::Rows,
    AttentionVariant::Tiled,
    AttentionVariant::Image,
];

#[test]
fn attention_forward_and_backward() {
    let g = gpu();
    // Multi-head (GPT-2) shapes (B, T, C, NH): T past one 64-key tile and not a multiple of
    // 16 or 32; head sizes 4 .. 128 (the tiled kernels take up to 64 and fall back to the
    // per-row ones above that).
    let shapes = [
        (1, 1, 4, 1),
        (2, 9, 24, 3),
        (1, 17, 128, 2),
        (2, 70, 128, 2),
        (1, 135, 96, 2),
        (1, 5, 128, 1),
    ];
    for (b, t, c, nh) in shapes {
        let s = AttentionShape::mha(b, t, c, nh);
        assert_eq!((s.nkv, s.hs, s.qkv_width()), (nh, c / nh, 3 * c));
        for v in ATTENTION_VARIANTS {
            check_attention(g, s, v);
        }
    }
}

#[test]
fn attention_grouped_query_heads_forward_and_backward() {
    let g = gpu();
    // (B, T, NH, NKV, HS): groups of 2, 6 and 1 query heads per kv head; head sizes that are
    // no C / NH of GPT-2 (12, 20) and the largest (128, the per-row kernels in Tiled); T odd,
    // and past one 64-key tile and one 32-query tile.
    let shapes = [
        (2, 7, 4, 2, 8),
        (2, 33, 4, 2, 8),
        (2, 7, 6, 1, 12),
        (2, 33, 6, 1, 12),
        (2, 33, 4, 4, 20),
        (1, 70, 8, 2, 16),
        (2, 7, 2, 1, 128),
        (2, 33, 2, 1, 128),
        (1, 9, 3, 1, 6),
    ];
    for (b, t, nh, nkv, hs) in shapes {
        let s = AttentionShape { b, t, nh, nkv, hs };
        for v in ATTENTION_VARIANTS {
            check_attention(g, s, v);
        }
    }
}

/// L = Σ out ⊙ dout through the CPU forward, in f64.
fn attention_loss(qkv: &[f32], dout: &[f32], s: AttentionShape) -> f64 {
    let AttentionShape { b, t, nh, nkv, hs } = s;
    let (mut out, mut lse) = (vec![0.0; b * t * nh * hs], vec![0.0; b * nh * t]);
    cpu::attention::forward(&mut out, &mut lse, qkv, b, t, nh, nkv, hs);
    out.iter()
        .zip(dout)
        .map(|(&o, &g)| o as f64 * g as f64)
        .sum()
}

#[test]
fn attention_cpu_backward_matches_finite_differences_of_the_cpu_forward() {
    for (b, t, nh, nkv, hs) in [(1, 4, 4, 2, 3), (2, 3, 3, 1, 2), (1, 3, 2, 2, 4)] {
        let s = AttentionShape { b, t, nh, nkv, hs };
        let n = b * t * s.qkv_width();
        let qkv: Vec<f32> = random(n, 20).iter().map(|x| x * 2.0).collect();
        let dout = random(b * t * s.out_width(), 21);
        let mut dqkv = vec![0.0; n];
        cpu::attention::backward(&mut dqkv, &dout, &qkv, b, t, nh, nkv, hs);
        let eps = 1e-3f32;
        let numeric: Vec<f32> = (0..n)
            .map(|i| {
                let (mut plus, mut minus) = (qkv.clone(), qkv.clone());
                plus[i] += eps;
                minus[i] -= eps;
                let step = (plus[i] - minus[i]) as f64;
                ((attention_loss(&plus, &dout, s) - attention_loss(&minus, &dout, s)) / step) as f32
            })
            .collect();
        assert_close(&dqkv, &numeric, 2e-3, 2e-3, &format!("dqkv {s:?}"));
        // Every kv head is used, so no part of the gradient is trivially zero.
        assert!(dqkv.iter().filter(|d| d.abs() > 1e-3).count() > n / 2);
    }
}

#[test]
fn attention_rejects_bad_head_shapes() {
    let g = gpu();
    let (b, t) = (1, 4);
    let bad = [
        (
            AttentionShape {
                b,
                t,
                nh: 4,
                nkv: 3,
                hs: 8,
            },
            "divide",
        ),
        (
            AttentionShape {
                b,
                t,
                nh: 4,
                nkv: 0,
                hs: 8,
            },
            "positive",
        ),
        (
            AttentionShape {
                b,
                t,
                nh: 2,
                nkv: 1,
                hs: 129,
            },
            "head size",
        ),
        (
            AttentionShape {
                b,
                t,
                nh: 2,
                nkv: 2,
                hs: 0,
            },
            "head size",
        ),
        (AttentionShape::mha(b, t, 10, 4), "split evenly"),
    ];
    for (s, says) in bad {
        // Buffers of the sizes the shape implies (or one value), so only the heads are wrong.
        let n = |x: usize| x.max(1);
        let qkv = g.zeros("qkv", &[n(b * t * s.qkv_width())]).unwrap();
        let out = g.zeros("out", &[n(b * t * s.out_width())]).unwrap();
        let lse = g.zeros("lse", &[n(b * s.nh * t)]).unwrap();
        let e = attention::forward(g, &out, &lse, &qkv, &s).unwrap_err();
        assert!(e.to_string().contains(says), "{s:?}: {e}");
        let e = attention::backward(g, &qkv, &lse, &out, &qkv, &out, &lse, &s).unwrap_err();
        assert!(e.to_string().contains(says), "{s:?}: {e}");
    }
    // The output width follows nh·hs, not the qkv width / 3.
    let s = AttentionShape {
        b,
        t,
        nh: 4,
        nkv: 2,
        hs: 8,
    };
    let qkv = g.zeros("qkv", &[b * t * 64]).unwrap();
    let wrong = g.zeros("out", &[b * t * 64 / 3 + 1]).unwrap();
    let lse = g.zeros("lse", &[b * 4 * t]).unwrap();
    assert!(attention::forward(g, &wrong, &lse, &qkv, &s).is_err());
}

#[test]
fn cross_entropy_chunked_matches_full_softmax() {
    let g = gpu();
    let (n, v) = (7, 50);
    let logits: Vec<f32> = random(n * v, 12).iter().map(|x| x * 8.0).collect();
    let targets: Vec<u32> = vec![0, 49, 17, IGNORE, 33, 16, 32];
    let counted = targets.iter().filter(|&&t| t != IGNORE).count() as f32;
    let tt = g.upload_u32("targets", &targets, &[n]).unwrap();
    let st = CeState::new(g, n).unwrap();
    let chunks = [(0, 16), (16, 16), (32, 16), (48, 2)];
    let slice = |v0: usize, vc: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|r| logits[r * v + v0..r * v + v0 + vc].to_vec())
            .collect()
    };
    // Pass 1: statistics over the chunks, then the loss.
    for (i, &(v0, vc)) in chunks.iter().enumerate() {
        let tl = g.upload("logits chunk", &slice(v0, vc), &[n, vc]).unwrap();
        g.run(&[&ce::stats(g, &st, &tl, &tt, v0, i == 0).unwrap()])
            .unwrap();
    }
    let loss = g.zeros("loss", &[n]).unwrap();
    g.run(&[&ce::loss(g, &loss, &st, &tt).unwrap()]).unwrap();
    let (mut wl, mut wd) = (vec![0.0; n], vec![0.0; n * v]);
    cpu::cross_entropy::loss_and_grad(
        &mut wl,
        &mut wd,
        &logits,
        &targets,
        v,
        1.0 / counted,
        IGNORE,
    );
    assert_close(&g.download(&loss).unwrap(), &wl, ATOL, RTOL, "loss");
    // Pass 2: dlogits chunk by chunk.
    let dloss = g.upload("dloss", &[1.0 / counted], &[1]).unwrap();
    for &(v0, vc) in &chunks {
        let tl = g.upload("logits chunk", &slice(v0, vc), &[n, vc]).unwrap();
        g.run(&[&ce::grad(g, &tl, &st, &tt, &dloss, v0).unwrap()])
            .unwrap();
        let want: Vec<f32> = (0..n)
            .flat_map(|r| wd[r * v + v0..r * v + v0 + vc].to_vec())
            .collect();
        assert_close(
            &g.download(&tl).unwrap(),
            &want,
            1e-6,
            RTOL,
            &format!("dlogits [{v0}, {})", v0 + vc),
        );
    }
}
