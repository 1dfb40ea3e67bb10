//! One-run performance report: the adapter, its FMA peak, matmul GFLOP/s of every variant at
//! GPT-2 shapes and 4096³ (with a simple autotune: the fastest variant per shape), the fused
//! LoRA forward against the unfused path, and training tokens/s of GPT-2 with LoRA.
//! Prints readable lines and writes every figure to a JSON file.
//!
//! ```text
//! cargo bench --bench report -- [--quick] [--json target/report.json]
//!     [--shape gpt2] [--batch 4] [--seq 128,1024] [--rank 8] [--steps 10] [--warmup 2]
//!     [--train-variants default,before,tiled8x8] [--max-train-seconds 30] [--no-kernels]
//!     [--no-train] [--no-profile] [--f16-weights] [--layers 10,11]
//! ```
//!
//! `--quick` uses small shapes (minutes on lavapipe): kernels at 64..256, training the `tiny`
//! shape at B=2 T=32. Timed training steps stop after `--max-train-seconds` (at least 3 run);
//! `--steps 0` only builds each training graph and reports what it allocates (memory, no
//! speed). Timing: each sample submits `reps` copies of the dispatches in one compute pass and waits for the GPU; `reps` is chosen so that a sample lasts about 30 ms (one run at
//! least), and the figure is the median of the samples, after a warm-up run.
//! `--train-variants` names the matmul variants the training graph is built with (through
//! `LORA_WGPU_MATMUL`; `default` is the adapter's own choice; `before` is the adapter's matmul
//! with the first LoRA and attention kernels, `LORA_WGPU_LORA=workgroup`,
//! `LORA_WGPU_ATTENTION=rows`).
//! `--f16-weights` stores the linear layers' frozen weights as f16 (`WeightStorage::F16`).
//! `--layers` adapts only those blocks (the backward stops below the first adapted one).
//! Before the training runs (unless `--no-profile`), a per-kernel-kind profile of one training
//! step at each T (see `profile`), on GPUs for the first kernels and the adapter's own.

use std::time::Instant;

use lora_wgpu::gpu::Dispatch;
use lora_wgpu::kernels::adamw::AdamW;
use lora_wgpu::kernels::attention::{self, AttentionShape, AttentionVariant};
use lora_wgpu::kernels::dropout::{self, Dropout};
use lora_wgpu::kernels::lora::{self, LoraGrads, LoraShape, LoraVariant};
use lora_wgpu::kernels::matmul::{matmul, MatmulOp, MatmulVariant};
use lora_wgpu::kernels::{elementwise, layernorm, Variants};
use lora_wgpu::lora::LoraConfig;
use lora_wgpu::model::graph::keeps_logits;
use lora_wgpu::model::{weights, Gpt2, Gpt2Config, TrainGraph, WeightStorage};
use lora_wgpu::{Gpu, GpuOptions, Tensor};
use serde_json::{json, Value};

struct Args {
    quick: bool,
    json: String,
    shape: String,
    batch: usize,
    seqs: Vec<usize>,
    rank: usize,
    steps: usize,
    warmup: usize,
    train_variants: Vec<String>,
    max_train_s: f64,
    kernels: bool,
    train: bool,
    profile: bool,
    f16_weights: bool,
    /// Adapt only these blocks (`--layers 10,11`; default all).
    layers: Option<Vec<usize>>,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let has = |name: &str| args.iter().any(|a| a == name);
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let num = |name: &str, default: usize| {
        get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v}"))
        })
    };
    let quick = has("--quick");
    let seqs = get("--seq").unwrap_or_else(|| if quick { "32" } else { "128,1024" }.into());
    Args {
        quick,
        json: get("--json").unwrap_or_else(|| "target/report.json".into()),
        shape: get("--shape").unwrap_or_else(|| if quick { "tiny" } else { "gpt2" }.into()),
        batch: num("--batch", if quick { 2 } else { 4 }),
        seqs: seqs
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("--seq takes numbers, e.g. 128,1024")
            })
            .collect(),
        rank: num("--rank", 8),
        steps: num("--steps", if quick { 2 } else { 10 }),
        warmup: num("--warmup", if quick { 1 } else { 2 }),
        train_variants: get("--train-variants")
            .unwrap_or_else(|| "default".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .collect(),
        max_train_s: get("--max-train-seconds").map_or(30.0, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--max-train-seconds takes a number, got {v}"))
        }),
        kernels: !has("--no-kernels"),
        train: !has("--no-train"),
        profile: !has("--no-profile"),
        f16_weights: has("--f16-weights"),
        layers: get("--layers").map(|v| {
            v.split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .expect("--layers takes block indices, e.g. 10,11")
                })
                .collect()
        }),
    }
}

/// Deterministic values in [-0.5, 0.5), never all zero.
fn filled(g: &Gpu, name: &str, shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| (((i + seed * 7) * 7919 + seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    g.upload(name, &data, shape)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Median seconds per run of `ds` (dispatched in order): a warm-up run, then `samples`
/// samples of `reps` back-to-back runs in one submit, each waited for.
fn time(g: &Gpu, ds: &[&Dispatch], samples: usize, target_s: f64) -> lora_wgpu::Result<f64> {
    let run = |reps: usize| -> lora_wgpu::Result<f64> {
        let all: Vec<&Dispatch> = (0..reps).flat_map(|_| ds.iter().copied()).collect();
        g.sync()?;
        let t = Instant::now();
        g.run(&all)?;
        g.sync()?;
        Ok(t.elapsed().as_secs_f64())
    };
    run(1)?; // warm-up: first-use costs
    let once = run(1)?;
    let reps = ((target_s / once.max(1e-7)) as usize).clamp(1, 500);
    let mut t: Vec<f64> = (0..samples)
        .map(|_| run(reps).map(|s| s / reps as f64))
        .collect::<lora_wgpu::Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn variant_name(v: MatmulVariant) -> String {
    lora_wgpu::kernels::matmul::autotune::name(v)
}

/// A handle to `g`'s device that records matmuls with `matmul`.
fn with_matmul(g: &Gpu, matmul: MatmulVariant) -> Gpu {
    g.with_variants(Variants {
        matmul,
        ..g.variants()
    })
}

fn max_rel_diff(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, &w| m.max(w.abs() as f64));
    let diff = got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| {
        let d = (a as f64 - b as f64).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    });
    diff / scale.max(1e-30)
}

fn peak(g: &Gpu, quick: bool) -> lora_wgpu::Result<f64> {
    // Enough threads to fill a large GPU; a CPU adapter is filled by far fewer.
    let small = quick || g.info().device_type == wgpu::DeviceType::Cpu;
    let (threads, iters) = if small {
        (1 << 14, 1024)
    } else {
        (1 << 20, 4096)
    };
    let probe = lora_wgpu::kernels::peak::probe(g, threads, iters)?;
    let s = time(g, &[probe.dispatch()], 5, 0.05)?;
    Ok(probe.flops() / s / 1e9)
}

/// Time every variant at every shape; the output of each is compared with the first variant's
/// (a real-driver sanity check; the tests compare with the CPU reference).
fn matmuls(g: &Gpu, quick: bool, peak_gflops: f64) -> lora_wgpu::Result<Value> {
    let mut shapes: Vec<(usize, usize, usize, String)> = if quick {
        vec![
            (64, 128, 128, "small".into()),
            (256, 256, 256, "256^3".into()),
        ]
    } else {
        let mut s = Vec::new();
        for m in [512, 4096] {
            s.push((m, 768, 2304, format!("c_attn M={m}")));
            s.push((m, 768, 768, format!("attn.c_proj M={m}")));
            s.push((m, 768, 3072, format!("c_fc M={m}")));
            s.push((m, 3072, 768, format!("mlp.c_proj M={m}")));
        }
        s.push((4096, 4096, 4096, "4096^3".into()));
        s
    };
    let mut variants = vec![
        MatmulVariant::Tiled { tm: 8, tn: 8 },
        MatmulVariant::Tiled { tm: 4, tn: 4 },
        MatmulVariant::Tiled { tm: 1, tn: 1 },
        MatmulVariant::Register,
        MatmulVariant::Image,
    ];
    if g.features().coop_matrix.is_some() {
        variants.push(MatmulVariant::Coop);
    }
    if !quick && g.info().device_type == wgpu::DeviceType::Cpu {
        // A CPU adapter takes seconds per run of the workgroup-memory kernels at these sizes:
        // time its own variant at the M=512 shapes only.
        shapes.retain(|s| s.0 == 512);
        variants = vec![g.variants().matmul];
    }
    let mut rows = Vec::new();
    for (m, k, n, label) in shapes {
        // B is a weight, frozen as in training (the image variant packs it once).
        let op = MatmulOp::new(m, n, k).frozen_b();
        let a = filled(g, "a", &[m, k], 1);
        let w = filled(g, "w", &[k, n], 2);
        let bias = filled(g, "bias", &[n], 3);
        let out = g.zeros("c", &[m, n])?;
        let mut reference: Option<Vec<f32>> = None;
        let mut results = Vec::new();
        let mut best: Option<(String, f64)> = None;
        for &v in &variants {
            let d = matmul(&with_matmul(g, v), &out, &a, &w, Some(&bias), &op)?;
            let s = time(g, &[&d], if quick { 3 } else { 7 }, 0.03)?;
            let gflops = op.flops() / s / 1e9;
            g.run(&[&d])?;
            let got = g.download(&out)?;
            let diff = match &reference {
                None => {
                    reference = Some(got);
                    0.0
                }
                Some(r) => max_rel_diff(&got, r),
            };
            println!(
                "matmul {label:<20} {m}x{k}x{n}  {:<10} {:>9.1} GFLOP/s  {:>5.1}% of FMA peak  {:>9.3} ms  max|diff|/max|ref| vs first {diff:.1e}",
                variant_name(v),
                gflops,
                100.0 * gflops / peak_gflops,
                s * 1e3
            );
            if best.as_ref().is_none_or(|b| gflops > b.1) {
                best = Some((variant_name(v), gflops));
            }
            results.push(json!({"variant": variant_name(v), "gflops": gflops,
                "pct_of_peak": 100.0 * gflops / peak_gflops, "ms": s * 1e3, "rel_diff_vs_first": diff}));
        }
        let (bv, bg) = best.unwrap_or_default();
        println!("matmul {label:<20} autotune: {bv} ({bg:.1} GFLOP/s)");
        rows.push(
            json!({"shape": label, "m": m, "k": k, "n": n, "variants": results,
            "best": bv, "best_gflops": bg}),
        );
    }
    Ok(Value::Array(rows))
}

/// Fused LoRA forward against the unfused path (dropout, x·Aᵀ, scale·u·Bᵀ added to y).
fn lora_fwd(g: &Gpu, quick: bool) -> lora_wgpu::Result<Value> {
    let shapes: Vec<(usize, usize, usize, &str)> = if quick {
        vec![(64, 128, 384, "small")]
    } else {
        vec![
            (512, 768, 2304, "c_attn"),
            (512, 768, 768, "attn.c_proj"),
            (512, 3072, 768, "mlp.c_proj"),
            (4096, 768, 2304, "c_attn M=4096"),
        ]
    };
    let r = 8;
    let d = Dropout::new(0.1, 7, 0)?;
    let mut rows = Vec::new();
    for (m, k, n, label) in shapes {
        let s = LoraShape { m, k, n, r };
        let x = filled(g, "x", &[m, k], 4);
        let a = filled(g, "lora_A", &[r, k], 5);
        let b = filled(g, "lora_B", &[n, r], 6);
        let y = g.zeros("y", &[m, n])?;
        let u = g.zeros("u", &[m, r])?;
        let own = g.variants().lora;
        let fused = lora::forward(g, &y, &u, &x, &a, &b, &s, 2.0, &d)?;
        let tf = time(g, &[&fused], 7, 0.02)?;
        // The first GPU kernel, for comparison with the adapter's own.
        let tw = if own == LoraVariant::Workgroup || g.info().device_type == wgpu::DeviceType::Cpu {
            tf
        } else {
            let first = g.with_variants(Variants {
                lora: LoraVariant::Workgroup,
                ..g.variants()
            });
            let wg = lora::forward(&first, &y, &u, &x, &a, &b, &s, 2.0, &d)?;
            time(g, &[&wg], 7, 0.02)?
        };
        let xd = g.zeros("x dropped", &[m, k])?;
        let unfused = [
            dropout::forward(g, &xd, &x, &d)?,
            matmul(g, &u, &xd, &a, None, &MatmulOp::new(m, r, k).trans_b())?,
            matmul(
                g,
                &y,
                &u,
                &b,
                None,
                &MatmulOp::new(m, n, r).trans_b().alpha(2.0).accumulate(),
            )?,
        ];
        let refs: Vec<&Dispatch> = unfused.iter().collect();
        let tu = time(g, &refs, 7, 0.02)?;
        println!(
            "lora fwd r=8 {label:<14} {m}x{k}x{n}  fused [{}] {:>8.1} us  unfused {:>8.1} us  speed-up {:.2}x  (fused [workgroup] {:>8.1} us)",
            own.name(),
            tf * 1e6,
            tu * 1e6,
            tu / tf,
            tw * 1e6
        );
        rows.push(
            json!({"shape": label, "m": m, "k": k, "n": n, "variant": own.name(),
            "fused_us": tf * 1e6, "unfused_us": tu * 1e6, "speedup": tu / tf,
            "workgroup_us": tw * 1e6}),
        );
    }
    Ok(Value::Array(rows))
}

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
    let ashape = AttentionShape { b, t, c, nh };
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
fn profiles(g: &Gpu, args: &Args, cfg: &Gpt2Config) -> Value {
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

/// Training tokens/s at one (B, T) with the matmul variant `variant` (`default`: the adapter's).
fn train(g: &Gpu, args: &Args, model: &Gpt2, wbytes: usize, t: usize, variant: &str) -> Value {
    let b = args.batch;
    let cfg = &model.config;
    let label = format!(
        "train {} B={b} T={t} r={} [{variant}]",
        args.shape, args.rank
    );
    // `before`: the adapter's matmul with the first LoRA and attention kernels.
    let forced = (variant != "default" && variant != "before").then_some(variant);
    let mut chosen = Variants {
        matmul: MatmulVariant::resolve(g, forced),
        ..g.variants()
    };
    if variant == "before" {
        chosen.lora = LoraVariant::Workgroup;
        chosen.attention = AttentionVariant::Rows;
    }
    let g = &g.with_variants(chosen);
    let lora = LoraConfig {
        r: args.rank,
        alpha: 2.0 * args.rank as f32,
        layers_to_transform: args.layers.clone(),
        ..LoraConfig::default()
    };
    let result = (|| -> lora_wgpu::Result<Value> {
        let mm = format!(
            "{}, lora {}, attention {}",
            variant_name(g.variants().matmul),
            g.variants().lora.name(),
            g.variants().attention.name()
        );
        let build = Instant::now();
        let mut graph = TrainGraph::new(g, model, &lora, None, 0, b, t, &AdamW::default())?;
        let build_s = build.elapsed().as_secs_f64();
        let graph_mib = graph.allocated_bytes() as f64 / (1u64 << 20) as f64;
        let weights_mib = wbytes as f64 / (1u64 << 20) as f64;
        if args.steps == 0 {
            // Memory only: everything a step uses is allocated when the graph is built.
            println!(
                "{label}: graph {graph_mib:.1} MiB + weights {weights_mib:.1} MiB = {:.1} MiB allocated (no steps run)",
                graph_mib + weights_mib
            );
            return Ok(
                json!({"shape": args.shape, "batch": b, "seq": t, "rank": args.rank,
                "variant": variant, "matmul": mm, "graph_mib": graph_mib,
                "weights_mib": weights_mib, "peak_mib": graph_mib + weights_mib,
                "build_s": build_s}),
            );
        }
        let tokens: Vec<u32> = (0..b * t)
            .map(|i| ((i * 7919) % cfg.vocab_size) as u32)
            .collect();
        let targets: Vec<u32> = (0..b * t)
            .map(|i| ((i * 7919 + 1) % cfg.vocab_size) as u32)
            .collect();
        for s in 0..args.warmup {
            graph.step(g, &tokens, &targets, s as u64 + 1, 1e-4)?;
        }
        g.sync()?;
        let mut times = Vec::new();
        let mut loss = 0.0;
        let begin = Instant::now();
        for s in 0..args.steps {
            // Keep the whole report bounded on slow adapters: at least 3 timed steps, then stop
            // once the budget is spent.
            if s >= 3 && begin.elapsed().as_secs_f64() > args.max_train_s {
                break;
            }
            let start = Instant::now();
            let step = (args.warmup + s) as u64 + 1;
            graph.step(g, &tokens, &targets, step, 1e-4)?;
            loss = graph.step_loss(g, step)?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let tps = (b * t) as f64 / median;
        println!(
            "{label}: matmul {mm}, step {:.2} ms (median of {}), {tps:.1} tokens/s, loss {loss:.4}, graph {graph_mib:.1} MiB + weights {weights_mib:.1} MiB = {:.1} MiB, build {build_s:.2} s",
            median * 1e3,
            times.len(),
            graph_mib + weights_mib
        );
        Ok(
            json!({"shape": args.shape, "batch": b, "seq": t, "rank": args.rank,
            "variant": variant, "matmul": mm, "step_ms_median": median * 1e3,
            "step_ms_all": times.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
            "tokens_per_s": tps, "loss": loss, "graph_mib": graph_mib, "weights_mib": weights_mib,
            "peak_mib": graph_mib + weights_mib, "build_s": build_s}),
        )
    })();
    result.unwrap_or_else(|e| {
        println!("{label}: FAILED: {e}");
        json!({"shape": args.shape, "batch": b, "seq": t, "variant": variant,
            "error": e.to_string()})
    })
}

fn main() -> lora_wgpu::Result<()> {
    let args = parse_args();
    let g = Gpu::new(&GpuOptions::from_env())?;
    let info = g.info().clone();
    println!(
        "adapter: {} ({:?}, {:?}), driver {} {}, default matmul {}",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        variant_name(g.variants().matmul)
    );
    let mut report = json!({
        "adapter": info.name, "backend": format!("{:?}", info.backend),
        "device_type": format!("{:?}", info.device_type), "driver": info.driver,
        "driver_info": info.driver_info, "quick": args.quick,
        "default_matmul": variant_name(g.variants().matmul),
    });
    if args.kernels {
        let p = peak(&g, args.quick)?;
        println!("FMA peak probe: {p:.1} GFLOP/s");
        report["peak_gflops"] = json!(p);
        report["matmul"] = matmuls(&g, args.quick, p)?;
        report["lora_forward"] = lora_fwd(&g, args.quick)?;
    }
    if args.train {
        let cfg = Gpt2Config::named(&args.shape)?;
        let host = weights::random(&cfg, 0);
        let storage = if args.f16_weights {
            WeightStorage::F16
        } else {
            WeightStorage::F32
        };
        let model = Gpt2::upload_with(&g, &cfg, &host, storage)?;
        let wbytes = model.allocated_bytes() as usize;
        drop(host);
        if args.profile {
            report["profile"] = profiles(&g, &args, &cfg);
        }
        let mut runs = Vec::new();
        for &t in &args.seqs {
            for v in &args.train_variants {
                runs.push(train(&g, &args, &model, wbytes, t, v));
            }
        }
        report["train"] = Value::Array(runs);
    }
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    if let Some(dir) = std::path::Path::new(&args.json).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&args.json, text).map_err(|source| lora_wgpu::Error::Io {
        path: args.json.clone().into(),
        source,
    })?;
    println!("report written to {}", args.json);
    Ok(())
}
