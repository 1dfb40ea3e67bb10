//! Criterion benchmarks of every kernel at GPT-2 124M shapes (B·T = 512).
//!
//! Throughput is reported as elements/s where an "element" is one floating-point operation
//! (so `Gelem/s` reads as GFLOP/s) for compute-bound kernels, and as bytes/s for memory-bound
//! ones. Each sample submits the dispatch and waits for the GPU before reading the clock.
//!
//! `cargo bench --bench kernels -- matmul/512x768x768` runs one group.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lora_wgpu::gpu::Dispatch;
use lora_wgpu::kernels::adamw::{self, AdamW};
use lora_wgpu::kernels::attention::{self, AttentionShape};
use lora_wgpu::kernels::dora::{self, DoraNorm, DoraShape};
use lora_wgpu::kernels::dropout::{self, Dropout};
use lora_wgpu::kernels::lora::{self, LoraGrads, LoraShape};
use lora_wgpu::kernels::matmul::{image, image_subgroups, matmul, MatmulOp, MatmulVariant, VEC4};
use lora_wgpu::kernels::qmatmul;
use lora_wgpu::kernels::{merge, reduce, Variants};
use lora_wgpu::{Gpu, GpuOptions, Tensor};

/// (M, K, N) of GPT-2 124M's linear layers at B·T = 512.
const GPT2_SHAPES: [(usize, usize, usize, &str); 4] = [
    (512, 768, 2304, "c_attn"),
    (512, 768, 768, "attn.c_proj"),
    (512, 768, 3072, "c_fc"),
    (512, 3072, 768, "mlp.c_proj"),
];

fn gpu() -> Gpu {
    let g = Gpu::new(&GpuOptions::from_env()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "adapter: {} ({:?}, {:?}, driver {} {})",
        g.info().name,
        g.info().backend,
        g.info().device_type,
        g.info().driver,
        g.info().driver_info
    );
    g
}

fn filled(g: &Gpu, name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    g.upload(name, &data, shape).unwrap()
}

/// Time `iters` submissions of `ds` (each its own submit, as a training step would), waiting
/// for the GPU at the end.
fn time(g: &Gpu, ds: &[&Dispatch], iters: u64) -> Duration {
    g.sync().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        g.run(ds).unwrap();
    }
    g.sync().unwrap();
    t.elapsed()
}

fn variant_name(v: MatmulVariant, d: &Dispatch) -> String {
    match v {
        MatmulVariant::Register if *d.kernel() == VEC4 => "register8x8_vec4".into(),
        MatmulVariant::Register => "register4x4".into(),
        MatmulVariant::Image if *d.kernel() == image::IMAGE_SG => "image2x16_subgroup".into(),
        MatmulVariant::Image => "image4x8".into(),
        MatmulVariant::Coop => "coop_f16".into(),
        MatmulVariant::Tiled { tm: 1, tn: 1 } => "textbook16x16".into(),
        MatmulVariant::Tiled { tm: 8, tn: 8 } => "block128x128_8x8".into(),
        MatmulVariant::Tiled { tm, tn } => format!("tiled{tm}x{tn}"),
        MatmulVariant::Auto => "autotuned".into(),
    }
}

fn bench_peak(c: &mut Criterion) {
    let g = gpu();
    let probe = lora_wgpu::kernels::peak::probe(&g, 1 << 14, 1024).unwrap();
    let mut grp = c.benchmark_group("peak");
    grp.sample_size(10);
    grp.throughput(Throughput::Elements(probe.flops() as u64));
    grp.bench_function("fma_vec4_8chains", |b| {
        b.iter_custom(|it| time(&g, &[probe.dispatch()], it))
    });
    grp.finish();
}

fn bench_matmul(c: &mut Criterion) {
    let g = gpu();
    // Where the image kernel shares op(B) through subgroups, the plain one too, side by side:
    // a second device on the same adapter without optional features.
    let plain = image_subgroups(&g).then(|| {
        Gpu::new(&GpuOptions {
            no_optional_features: true,
            cooperative_matrix: false,
            ..GpuOptions::from_env()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    });
    for (m, k, n, layer) in GPT2_SHAPES {
        let mut grp = c.benchmark_group(format!("matmul/{m}x{k}x{n}"));
        grp.sample_size(10).warm_up_time(Duration::from_millis(500));
        // B is a weight, frozen as in training (the image variant packs it once).
        let op = MatmulOp::new(m, n, k).frozen_b();
        grp.throughput(Throughput::Elements(op.flops() as u64));
        // The adapter's own choice at every shape; all variants side by side at one shape
        // (everywhere on a GPU, where none of them is slow).
        let all = [
            MatmulVariant::Image,
            MatmulVariant::Register,
            MatmulVariant::Tiled { tm: 8, tn: 8 },
            MatmulVariant::Tiled { tm: 4, tn: 4 },
            MatmulVariant::Tiled { tm: 1, tn: 1 },
        ];
        let on_cpu = g.info().device_type == wgpu::DeviceType::Cpu;
        let mut variants: Vec<_> = if layer == "attn.c_proj" || !on_cpu {
            all.to_vec()
        } else {
            vec![g.variants().matmul]
        };
        // With LORA_WGPU_COOPMAT=1 on an adapter that offers cooperative matrices.
        if g.features().coop_matrix.is_some() && !variants.contains(&MatmulVariant::Coop) {
            variants.push(MatmulVariant::Coop);
        }
        let plain_image = plain.as_ref().map(|p| (p, vec![MatmulVariant::Image]));
        for (dev, variants) in std::iter::once((&g, variants)).chain(plain_image) {
            let a = filled(dev, "x", &[m, k]);
            let w = filled(dev, "w", &[k, n]);
            let bias = filled(dev, "bias", &[n]);
            let out = dev.zeros("y", &[m, n]).unwrap();
            for v in variants {
                let with_v = dev.with_variants(Variants {
                    matmul: v,
                    ..dev.variants()
                });
                let d = matmul(&with_v, &out, &a, &w, Some(&bias), &op).unwrap();
                grp.bench_function(BenchmarkId::new(variant_name(v, &d), layer), |b| {
                    b.iter_custom(|it| time(dev, &[&d], it))
                });
            }
        }
        grp.finish();
    }
}

/// Fused LoRA forward against the unfused path (dropout, x·Aᵀ, scale·u·Bᵀ added to y).
fn bench_lora(c: &mut Criterion) {
    let g = gpu();
    let r = 8;
    let d = Dropout::new(0.1, 7, 0).unwrap();
    for (m, k, n, layer) in GPT2_SHAPES {
        let s = LoraShape { m, k, n, r };
        let mut grp = c.benchmark_group(format!("lora_r8/{m}x{k}x{n}"));
        grp.sample_size(20).warm_up_time(Duration::from_millis(500));
        grp.throughput(Throughput::Elements((2 * m * r * (k + n)) as u64));
        let x = filled(&g, "x", &[m, k]);
        let a = filled(&g, "lora_A", &[r, k]);
        let b = filled(&g, "lora_B", &[n, r]);
        let y = g.zeros("y", &[m, n]).unwrap();
        let u = g.zeros("u", &[m, r]).unwrap();
        let fused = lora::forward(&g, &y, &u, &x, &a, &b, &s, 2.0, &d).unwrap();
        grp.bench_function(BenchmarkId::new("fused", layer), |bch| {
            bch.iter_custom(|it| time(&g, &[&fused], it))
        });
        let xd = g.zeros("x dropped", &[m, k]).unwrap();
        let unfused = [
            dropout::forward(&g, &xd, &x, &d).unwrap(),
            matmul(&g, &u, &xd, &a, None, &MatmulOp::new(m, r, k).trans_b()).unwrap(),
            matmul(
                &g,
                &y,
                &u,
                &b,
                None,
                &MatmulOp::new(m, n, r).trans_b().alpha(2.0).accumulate(),
            )
            .unwrap(),
        ];
        let refs: Vec<&Dispatch> = unfused.iter().collect();
        grp.bench_function(BenchmarkId::new("unfused", layer), |bch| {
            bch.iter_custom(|it| time(&g, &refs, it))
        });
        let du = g.zeros("du", &[m, r]).unwrap();
        let dx = g.zeros("dx", &[m, k]).unwrap();
        let da = g.zeros("da", &[r, k]).unwrap();
        let db = g.zeros("db", &[n, r]).unwrap();
        let grads = LoraGrads {
            dx: Some(&dx),
            da: &da,
            db: &db,
            du: &du,
        };
        let bwd = lora::backward(&g, grads, &y, &x, &a, &b, &u, &s, 2.0, &d, false).unwrap();
        let refs: Vec<&Dispatch> = bwd.iter().collect();
        grp.throughput(Throughput::Elements((2 * m * r * (2 * k + 2 * n)) as u64));
        grp.bench_function(BenchmarkId::new("backward", layer), |bch| {
            bch.iter_custom(|it| time(&g, &refs, it))
        });
        grp.finish();
    }
}

/// DoRA's kernels on GPT-2 124M's linear layers at B·T = 512, r = 8: the weight norm (once per
/// step per module), the output rescale (with bias and the saved u) and the magnitude's
/// gradient with the gradient at u; each its extra cost over the layer's LoRA path
/// (`lora_r8`).
fn bench_dora(c: &mut Criterion) {
    let g = gpu();
    let r = 8;
    for (m, k, n, layer) in GPT2_SHAPES {
        let s = DoraShape { k, n, r, rows: m };
        let mut grp = c.benchmark_group(format!("dora_r8/{m}x{k}x{n}"));
        grp.sample_size(20).warm_up_time(Duration::from_millis(500));
        let w = filled(&g, "w", &[k, n]);
        let a = filled(&g, "lora_A", &[r, k]);
        let b = filled(&g, "lora_B", &[n, r]);
        let mag = filled(&g, "m", &[n]);
        let norm = g.zeros("norm", &[2 * n]).unwrap();
        let plan = DoraNorm::new(&g, "w", &w, &s).unwrap();
        let nd = plan.record(&g, &norm, &mag, &w, &a, &b, 2.0).unwrap();
        let nd: Vec<&Dispatch> = nd.iter().collect();
        grp.throughput(Throughput::Elements((2 * k * n * (r + 1)) as u64));
        grp.bench_function(BenchmarkId::new("norm", layer), |bch| {
            bch.iter_custom(|it| time(&g, &nd, it))
        });
        let y = filled(&g, "y", &[m, n]);
        let u = g.zeros("u", &[m, n]).unwrap();
        let bias = filled(&g, "bias", &[n]);
        let sc = dora::scale(&g, &y, &norm, Some(&bias), Some(&u), &s).unwrap();
        grp.throughput(Throughput::Bytes((12 * m * n) as u64));
        grp.bench_function(BenchmarkId::new("scale", layer), |bch| {
            bch.iter_custom(|it| time(&g, &[&sc], it))
        });
        let (dm, du) = (
            g.zeros("dm", &[n]).unwrap(),
            g.zeros("du", &[m, n]).unwrap(),
        );
        let bk = dora::backward(&g, &dm, &du, &y, &u, &norm, &s, true).unwrap();
        grp.throughput(Throughput::Bytes((12 * m * n) as u64));
        grp.bench_function(BenchmarkId::new("backward", layer), |bch| {
            bch.iter_custom(|it| time(&g, &[&bk], it))
        });
        grp.finish();
    }
}

/// (M, K, N) of Llama 3.2 1B's linear layers at B·T = 512 (q_proj and o_proj; down_proj).
const LLAMA_1B_SHAPES: [(usize, usize, usize, &str); 2] =
    [(512, 2048, 2048, "q_proj"), (512, 8192, 2048, "down_proj")];

/// The frozen product of a linear layer with its weight stored as f32, f16 (where the adapter
/// offers it) and each quantized format the kernels read, side by side at Llama 3.2 1B's
/// shapes: the forward (x·W) and the input gradient (dy·Wᵀ), in FLOP/s.
fn bench_qmatmul(c: &mut Criterion) {
    let g = gpu();
    for (m, k, n, layer) in LLAMA_1B_SHAPES {
        let mut grp = c.benchmark_group(format!("qmatmul/{m}x{k}x{n}_{layer}"));
        grp.sample_size(10).warm_up_time(Duration::from_millis(500));
        grp.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let x = filled(&g, "x", &[m, k]);
        let dy = filled(&g, "dy", &[m, n]);
        let y = g.zeros("y", &[m, n]).unwrap();
        let dx = g.zeros("dx", &[m, k]).unwrap();
        let values: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        // (name, weight, stored [out, in]): f32 and f16 weights are [in, out],
        // quantized ones [out, in] with blocks along the input.
        let mut weights = vec![(
            "f32".to_string(),
            g.upload("w", &values, &[k, n]).unwrap(),
            false,
        )];
        if g.features().f16 {
            weights.push((
                "f16".into(),
                g.upload_f16("w", &values, &[k, n]).unwrap(),
                false,
            ));
        }
        for &ty in qmatmul::FORMATS {
            let t = qmatmul::quantize_upload(&g, "w", ty, &values, [n, k]).unwrap();
            weights.push((ty.name().into(), t, true));
        }
        for (name, w, out_in) in &weights {
            let (fwd, bwd) = if *out_in {
                (
                    MatmulOp::new(m, n, k).trans_b().frozen_b(),
                    MatmulOp::new(m, k, n).frozen_b(),
                )
            } else {
                (
                    MatmulOp::new(m, n, k).frozen_b(),
                    MatmulOp::new(m, k, n).trans_b().frozen_b(),
                )
            };
            let f = matmul(&g, &y, &x, w, None, &fwd).unwrap();
            grp.bench_function(BenchmarkId::new("forward", name), |b| {
                b.iter_custom(|it| time(&g, &[&f], it))
            });
            let d = matmul(&g, &dx, &dy, w, None, &bwd).unwrap();
            grp.bench_function(BenchmarkId::new("input_grad", name), |b| {
                b.iter_custom(|it| time(&g, &[&d], it))
            });
        }
        grp.finish();
    }
}

/// Causal attention of GPT-2 124M (B = 4, T = 128, 12 heads of 64) with the `Gpu`'s
/// [`AttentionVariant`](lora_wgpu::kernels::attention::AttentionVariant): the forward and the
/// backward's two dispatches, each timed alone, in FLOP/s of the causal half of q kᵀ and P v
/// (and their gradients).
fn bench_attention(c: &mut Criterion) {
    let g = gpu();
    let (b, t, ch, nh) = (4, 128, 768, 12);
    let s = AttentionShape::mha(b, t, ch, nh);
    let mut grp = c.benchmark_group(format!("attention/{b}x{t}x{ch}_h{nh}"));
    grp.sample_size(20).warm_up_time(Duration::from_millis(500));
    let qkv = filled(&g, "qkv", &[b, t, 3 * ch]);
    let dout = filled(&g, "dout", &[b, t, ch]);
    let out = g.zeros("out", &[b, t, ch]).unwrap();
    let lse = g.zeros("lse", &[b, nh, t]).unwrap();
    let dstat = g.zeros("dstat", &[b, nh, t]).unwrap();
    let dqkv = g.zeros("dqkv", &[b, t, 3 * ch]).unwrap();
    let fwd = attention::forward(&g, &out, &lse, &qkv, &s).unwrap();
    let [rows, cols] = attention::backward(&g, &dqkv, &dstat, &dout, &qkv, &out, &lse, &s).unwrap();
    // A real output, log-sum-exp and D for the backward to read.
    g.run(&[&fwd, &rows]).unwrap();
    let variant = g.variants().attention.name();
    // FLOPs of one causal (T, T) / 2 product of width C per batch (q kᵀ, P v, dS k, ...):
    // the forward makes 2, backward_rows 3, backward_cols 4.
    let product = (2 * b * t * t / 2 * ch) as u64;
    for (name, d, mul) in [
        ("forward", &fwd, 2),
        ("backward_rows", &rows, 3),
        ("backward_cols", &cols, 4),
    ] {
        grp.throughput(Throughput::Elements(mul * product));
        grp.bench_function(BenchmarkId::new(name, variant), |bch| {
            bch.iter_custom(|it| time(&g, &[d], it))
        });
    }
    grp.finish();
}

/// Memory-bound kernels, reported in bytes moved per second.
fn bench_elementwise(c: &mut Criterion) {
    let g = gpu();
    let mut grp = c.benchmark_group("elementwise");
    grp.sample_size(20).warm_up_time(Duration::from_millis(500));

    let n = 512 * 3072;
    let x = filled(&g, "x", &[n]);
    let out = g.zeros("out", &[n]).unwrap();
    let drop = dropout::forward(&g, &out, &x, &Dropout::new(0.1, 1, 0).unwrap()).unwrap();
    grp.throughput(Throughput::Bytes((8 * n) as u64));
    grp.bench_function("dropout/512x3072", |b| {
        b.iter_custom(|it| time(&g, &[&drop], it))
    });

    // LoRA r=8 on PEFT's targets c_attn,c_proj of GPT-2 124M (c_proj matches attn.c_proj and
    // mlp.c_proj): 12 layers · 8 · ((768+2304) + (768+768) + (3072+768)) = 811,008 parameters.
    let p = 12 * 8 * ((768 + 2304) + (768 + 768) + (3072 + 768));
    let (param, grad, m, v) = (
        filled(&g, "p", &[p]),
        filled(&g, "g", &[p]),
        filled(&g, "m", &[p]),
        g.zeros("v", &[p]).unwrap(),
    );
    let norm = g.zeros("norm", &[1]).unwrap();
    let [s1, s2] = reduce::sumsq(&g, &norm, &grad).unwrap();
    grp.throughput(Throughput::Bytes((4 * p) as u64));
    grp.bench_function(format!("grad_norm/{p}"), |b| {
        b.iter_custom(|it| time(&g, &[&s1, &s2], it))
    });
    let cfg = AdamW {
        max_grad_norm: 1.0,
        ..AdamW::default()
    };
    let upd = adamw::update(&g, &param, &grad, &m, &v, &norm, &cfg, p).unwrap();
    grp.throughput(Throughput::Bytes((7 * 4 * p) as u64));
    grp.bench_function(format!("adamw/{p}"), |b| {
        b.iter_custom(|it| time(&g, &[upd.dispatch()], it))
    });

    let (k, n, r) = (768, 2304, 8);
    let w = filled(&g, "w", &[k, n]);
    let a = filled(&g, "a", &[r, k]);
    let bm = filled(&g, "b", &[n, r]);
    let s = LoraShape { m: 0, k, n, r };
    let mg = merge::merge(&g, &w, &a, &bm, &s, true, 0.0).unwrap();
    grp.throughput(Throughput::Bytes((8 * k * n) as u64));
    grp.bench_function("merge/768x2304_r8", |b| {
        b.iter_custom(|it| time(&g, &[&mg], it))
    });
    grp.finish();
}

criterion_group!(
    benches,
    bench_peak,
    bench_matmul,
    bench_lora,
    bench_dora,
    bench_qmatmul,
    bench_attention,
    bench_elementwise
);
criterion_main!(benches);
