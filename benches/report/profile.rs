//! Per-kernel-kind profile of one training step: the kinds, timed alone, times their count.

use lora_wgpu::gpu::Dispatch;
use lora_wgpu::kernels::attention::{self, AttentionShape, AttentionVariant};
use lora_wgpu::kernels::dropout::Dropout;
use lora_wgpu::kernels::lora::{self, LoraGrads, LoraShape, LoraVariant};
use lora_wgpu::kernels::matmul::{matmul, MatmulOp};
use lora_wgpu::kernels::{elementwise, layernorm, Variants};
use lora_wgpu::model::graph::keeps_logits;
use lora_wgpu::model::Gpt2Config;
use lora_wgpu::Gpu;
use serde_json::{json, Value};

use crate::{filled, time, Args};

/// One kernel kind of a training step: its dispatches (timed together, in order) and how many
/// times the step runs them.
struct Kind {
    name: String,
    count: f64,
    dispatches: Vec<Dispatch>,
}

/// The kernel kinds of one GPT-2 training step at (B, T) with LoRA on c_attn and attn.c_proj,
/// for a per-kind profile: every kind of dispatch the graph records (matmuls at each layer's
/// shapes, the LM head, LoRA forward and the four backward kernels, attention, layernorm,
/// gelu, add) built at the graph's shapes, with its count per step. What the kinds do not cover
/// (cross-entropy stats and grad, embedding, grad norm, AdamW, clears, pass boundaries) shows
/// as the rest of the step. The LoRA and attention kernels are those of `lv` and `av`.
fn profile_kinds(
    g: &Gpu,
    cfg: &Gpt2Config,
    b: usize,
    t: usize,
    r: usize,
    lv: LoraVariant,
    av: AttentionVariant,
) -> lora_wgpu::Result<Vec<Kind>> {
    let (c, nh, l, v) = (cfg.n_embd, cfg.n_head, cfg.n_layer as f64, cfg.vocab_size);
    let bt = b * t;
    let g = &g.with_variants(Variants {
        lora: lv,
        attention: av,
        ..g.variants()
    });
    let shard = 4096.min(v);
    let shards = v as f64 / shard as f64;
    let x = |name: &str, n: usize, seed: usize| filled(g, name, &[bt, n], seed);
    let (x_c, x_c2, x_3c, x_4c, x_4c2) = (
        x("x C", c, 1),
        x("x C 2", c, 2),
        x("x 3C", 3 * c, 3),
        x("x 4C", 4 * c, 4),
        x("x 4C 2", 4 * c, 5),
    );
    let w = |rows: usize, cols: usize, seed: usize| filled(g, "w", &[rows, cols], seed);
    let (w_attn, w_proj, w_fc, w_mproj, wte) = (
        w(c, 3 * c, 6),
        w(c, c, 7),
        w(c, 4 * c, 8),
        w(4 * c, c, 9),
        w(shard, c, 10),
    );
    let bias = |n: usize| filled(g, "bias", &[n], 11);
    let (b_3c, b_c, b_4c) = (bias(3 * c), bias(c), bias(4 * c));
    let logits = x("logits", shard, 12);
    let mut kinds: Vec<Kind> = Vec::new();
    let mut add = |name: &str, count: f64, dispatches: Vec<Dispatch>| {
        kinds.push(Kind {
            name: name.to_string(),
            count,
            dispatches,
        })
    };
    let op = MatmulOp::new;
    add(
        "matmul fwd (4 per layer)",
        l,
        vec![
            matmul(g, &x_3c, &x_c, &w_attn, Some(&b_3c), &op(bt, 3 * c, c))?,
            matmul(g, &x_c2, &x_c, &w_proj, Some(&b_c), &op(bt, c, c))?,
            matmul(g, &x_4c, &x_c, &w_fc, Some(&b_4c), &op(bt, 4 * c, c))?,
            matmul(g, &x_c2, &x_4c, &w_mproj, Some(&b_c), &op(bt, c, 4 * c))?,
        ],
    );
    add(
        "matmul bwd dx (4 per layer)",
        l,
        vec![
            matmul(g, &x_c2, &x_3c, &w_attn, None, &op(bt, c, 3 * c).trans_b())?,
            matmul(g, &x_c2, &x_c, &w_proj, None, &op(bt, c, c).trans_b())?,
            matmul(g, &x_c2, &x_4c, &w_fc, None, &op(bt, c, 4 * c).trans_b())?,
            matmul(g, &x_4c2, &x_c, &w_mproj, None, &op(bt, 4 * c, c).trans_b())?,
        ],
    );
    // The graph recomputes the logits in backward unless it keeps them (small B·T·V).
    let keeps = keeps_logits(bt, v);
    let lm_fwd = || matmul(g, &logits, &x_c, &wte, None, &op(bt, shard, c).trans_b());
    let mut lm_head = vec![lm_fwd()?];
    if !keeps {
        lm_head.push(lm_fwd()?);
    }
    lm_head.push(matmul(
        g,
        &x_c2,
        &logits,
        &wte,
        None,
        &op(bt, c, shard).accumulate(),
    )?);
    let lm_name = if keeps {
        "LM head (1 fwd + 1 bwd per shard)"
    } else {
        "LM head (2 fwd + 1 bwd per shard)"
    };
    add(lm_name, shards, lm_head);
    // LoRA on c_attn (k = C, n = 3C) and attn.c_proj (k = n = C), dropout off as in the report's
    // training runs.
    let nod = Dropout::NONE;
    let mut lora_fwd = Vec::new();
    let mut lora_bwd: Vec<Vec<Dispatch>> = vec![Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let u = g.zeros("u", &[bt, r])?;
    let du = g.zeros("du", &[bt, r])?;
    for (k, n, y, dy, xin, dx) in [
        (c, 3 * c, &x_3c, &x_3c, &x_c, &x_c2),
        (c, c, &x_c2, &x_c2, &x_c, &x_c),
    ] {
        let s = LoraShape { m: bt, k, n, r };
        let a = filled(g, "lora_A", &[r, k], 13);
        let bm = filled(g, "lora_B", &[n, r], 14);
        let da = g.zeros("dA", &[r, k])?;
        let db = g.zeros("dB", &[n, r])?;
        lora_fwd.push(lora::forward(g, y, &u, xin, &a, &bm, &s, 2.0, &nod)?);
        let grads = LoraGrads {
            dx: Some(dx),
            da: &da,
            db: &db,
            du: &du,
        };
        let bwd = lora::backward(g, grads, dy, xin, &a, &bm, &u, &s, 2.0, &nod, true)?;
        for (i, d) in bwd.into_iter().enumerate() {
            lora_bwd[i].push(d);
        }
    }
    add("LoRA fwd (2 per layer)", l, lora_fwd);
    for (i, what) in ["du", "dB", "dA", "dx"].iter().enumerate() {
        let ds = std::mem::take(&mut lora_bwd[i]);
        add(&format!("LoRA bwd {what} (2 per layer)"), l, ds);
    }
    let ashape = AttentionShape::mha(b, t, c, nh);
    let lse = g.zeros("lse", &[b, nh, t])?;
    let dstat = g.zeros("dstat", &[b, nh, t])?;
    let qkv = x("qkv", 3 * c, 15);
    let dqkv = g.zeros("dqkv", &[bt, 3 * c])?;
    let atty = g.zeros("atty", &[bt, c])?;
    let fwd = attention::forward(g, &atty, &lse, &qkv, &ashape)?;
    // A real output and log-sum-exp for the backward kernels to read.
    g.run(&[&fwd])?;
    add("attention fwd", l, vec![fwd]);
    let (dy, y) = (&x_c, &atty);
    let [rows, cols] = attention::backward(g, &dqkv, &dstat, dy, &qkv, y, &lse, &ashape)?;
    add("attention bwd rows (dq)", l, vec![rows]);
    add("attention bwd cols (dk, dv)", l, vec![cols]);
    let lw = filled(g, "ln w", &[c], 16);
    let mean = g.zeros("mean", &[bt])?;
    let rstd = g.zeros("rstd", &[bt])?;
    let ln_out = g.zeros("ln out", &[bt, c])?;
    let lnf = layernorm::forward(g, &ln_out, &mean, &rstd, &x_c, &lw, &b_c, c, 1e-5)?;
    g.run(&[&lnf])?;
    add("layernorm fwd", 2.0 * l + 1.0, vec![lnf]);
    let lnb = layernorm::backward(g, &x_c2, &x_c, &ln_out, &lw, &mean, &rstd, c)?;
    add("layernorm bwd", 2.0 * l + 1.0, vec![lnb]);
    let gelu_out = g.zeros("gelu out", &[bt, 4 * c])?;
    add(
        "gelu fwd + bwd",
        l,
        vec![
            elementwise::gelu_forward(g, &gelu_out, &x_4c)?,
            elementwise::gelu_backward(g, &x_4c2, &gelu_out, &x_4c)?,
        ],
    );
    add(
        "residual add (2 per layer)",
        l,
        vec![
            elementwise::add(g, &ln_out, &x_c, &x_c2)?,
            elementwise::add(g, &ln_out, &x_c, &x_c2)?,
        ],
    );
    Ok(kinds)
}

/// Per-kernel-kind profile of one training step at each T: the kinds of `profile_kinds` timed
/// alone (`time`: back-to-back replays in one pass, waited for) times their count per step, on
/// GPUs for the first kernels ("before": `Workgroup` LoRA, per-row attention) and the adapter's
/// own, printed side by side. The sets are timed kind by kind, alternating, so a change of
/// clocks during the profile affects both alike.
pub fn profiles(g: &Gpu, args: &Args, cfg: &Gpt2Config) -> Value {
    let mut rows = Vec::new();
    for &t in &args.seqs {
        let own = (g.variants().lora, g.variants().attention);
        let mut sets = vec![("own", own)];
        if g.info().device_type != wgpu::DeviceType::Cpu {
            sets.insert(
                0,
                ("before", (LoraVariant::Workgroup, AttentionVariant::Rows)),
            );
        }
        let head = |label: &str, (lv, av): (LoraVariant, AttentionVariant)| {
            format!(
                "profile B={} T={t} r={} [{label}: lora {}, attention {}]",
                args.batch,
                args.rank,
                lv.name(),
                av.name()
            )
        };
        let timed = (|| -> lora_wgpu::Result<Vec<Vec<(String, f64, f64)>>> {
            let built = sets
                .iter()
                .map(|&(_, (lv, av))| profile_kinds(g, cfg, args.batch, t, args.rank, lv, av))
                .collect::<lora_wgpu::Result<Vec<_>>>()?;
            let mut out = vec![Vec::new(); built.len()];
            for i in 0..built[0].len() {
                for (si, kinds) in built.iter().enumerate() {
                    let k = &kinds[i];
                    let refs: Vec<&Dispatch> = k.dispatches.iter().collect();
                    let s = time(g, &refs, 5, 0.01)?;
                    out[si].push((k.name.clone(), s * 1e6, s * k.count * 1e3));
                }
            }
            Ok(out)
        })();
        match timed {
            Ok(all) => {
                for (&(label, set), kinds) in sets.iter().zip(&all) {
                    let head = head(label, set);
                    let total: f64 = kinds.iter().map(|k| k.2).sum();
                    for (name, us, ms) in kinds {
                        println!("{head} {name:<36} {us:>10.1} us/call-set  {ms:>9.2} ms/step");
                    }
                    println!(
                        "{head} {:<36} {:>10} {total:>9.2} ms/step",
                        "sum of kinds", ""
                    );
                    rows.push(json!({"seq": t, "set": label, "lora": set.0.name(),
                        "attention": set.1.name(), "total_ms": total,
                        "kinds": kinds.iter().map(|(n, us, ms)| json!({"kind": n,
                            "us_per_call_set": us, "ms_per_step": ms})).collect::<Vec<_>>()}));
                }
            }
            Err(e) => {
                println!("profile T={t}: FAILED: {e}");
                for &(label, _) in &sets {
                    rows.push(json!({"seq": t, "set": label, "error": e.to_string()}));
                }
            }
        }
    }
    Value::Array(rows)
}
