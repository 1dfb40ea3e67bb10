//! Kernel figures: the FMA peak, matmul GFLOP/s of every variant per shape, fused LoRA forward.

use lora_wgpu::gpu::Dispatch;
use lora_wgpu::kernels::dropout::{self, Dropout};
use lora_wgpu::kernels::lora::{self, LoraShape, LoraVariant};
use lora_wgpu::kernels::matmul::{matmul, MatmulOp, MatmulVariant};
use lora_wgpu::kernels::Variants;
use lora_wgpu::Gpu;
use serde_json::{json, Value};

use crate::{filled, time, variant_name};

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

pub fn peak(g: &Gpu, quick: bool) -> lora_wgpu::Result<f64> {
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
pub fn matmuls(g: &Gpu, quick: bool, peak_gflops: f64) -> lora_wgpu::Result<Value> {
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
pub fn lora_fwd(g: &Gpu, quick: bool) -> lora_wgpu::Result<Value> {
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
