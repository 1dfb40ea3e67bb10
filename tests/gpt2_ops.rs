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

#[test]
fn attention_forward_and_backward() {
    let g = gpu();
    // T past one 64-key tile and not a multiple of 16 or 32; head sizes 4 .. 128 (the tiled
    // kernels take up to 64 and fall back to the per-row ones above that).
    let shapes = [
        (1, 1, 4, 1),
        (2, 9, 24, 3),
        (1, 17, 128, 2),
        (2, 70, 128, 2),
        (1, 135, 96, 2),
        (1, 5, 128, 1),
    ];
    let variants = [
        AttentionVariant::Rows,
        AttentionVariant::Tiled,
        AttentionVariant::Image,
    ];
    for ((b, t, c, nh), v) in shapes
        .into_iter()
        .flat_map(|s| variants.map(move |v| (s, v)))
    {
        let s = AttentionShape { b, t, c, nh };
        // Odd T: larger scores, peaky rows, so the running maximum of the one-pass forward
        // moves by a lot and late.
        let amp = if t % 2 == 1 { 4.0 } else { 1.0 };
        let qkv: Vec<f32> = random(b * t * 3 * c, 10).iter().map(|x| x * amp).collect();
        let dout = random(b * t * c, 11);
        let tq = g.upload("qkv", &qkv, &[b, t, 3 * c]).unwrap();
        let td = g.upload("dout", &dout, &[b, t, c]).unwrap();
        let out = g.zeros("out", &[b, t, c]).unwrap();
        let lse = g.zeros("lse", &[b, nh, t]).unwrap();
        let dstat = g.zeros("dstat", &[b, nh, t]).unwrap();
        let dqkv = g.zeros("dqkv", &[b, t, 3 * c]).unwrap();
        let gv = g.with_variants(Variants {
            attention: v,
            ..g.variants()
        });
        let f = attention::forward(&gv, &out, &lse, &tq, &s).unwrap();
        let [r, cl] = attention::backward(&gv, &dqkv, &dstat, &td, &tq, &out, &lse, &s).unwrap();
        g.run(&[&f, &r, &cl]).unwrap();
        let (mut wo, mut wl, mut wd) = (
            vec![0.0; b * t * c],
            vec![0.0; b * nh * t],
            vec![0.0; b * t * 3 * c],
        );
        cpu::attention::forward(&mut wo, &mut wl, &qkv, b, t, c, nh);
        cpu::attention::backward(&mut wd, &dout, &qkv, b, t, c, nh);
        let what = format!("{v:?} {s:?}");
        let got = g.download(&out).unwrap();
        assert_close(&got, &wo, ATOL, RTOL, &format!("attention out {what}"));
        let got_lse = g.download(&lse).unwrap();
        assert_close(&got_lse, &wl, ATOL, RTOL, &format!("attention lse {what}"));
        let got_dqkv = g.download(&dqkv).unwrap();
        assert_close(
            &got_dqkv,
            &wd,
            ATOL,
            RTOL,
            &format!("attention dqkv {what}"),
        );
    }
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
