//! Matmul autotuning: the first time a shape class runs on an adapter, time the candidate
//! variants on that shape and keep the fastest in the device's timing table
//! ([`Timings`](crate::gpu::Timings): in memory and in the user's cache directory, one table
//! per adapter and driver), so later runs start tuned.
//!
//! On by default on GPUs; off on CPU adapters, where the device default is the right choice
//! and timing the workgroup-memory candidates would take seconds per shape.
//! [`GpuOptions::autotune`](crate::gpu::GpuOptions::autotune) (`LORA_WGPU_AUTOTUNE`) overrides
//! that; a `matmul` variant in [`GpuOptions::variants`](crate::gpu::GpuOptions::variants)
//! (`LORA_WGPU_MATMUL`) forces one variant everywhere.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{matmul, MatmulOp, MatmulVariant};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::Variants;

/// Timed runs per candidate (after one warm-up); the median counts.
const RUNS: usize = 3;

/// Variants tried, in order of preference on a tie.
pub const CANDIDATES: [MatmulVariant; 3] = [
    MatmulVariant::Tiled { tm: 8, tn: 8 },
    MatmulVariant::Tiled { tm: 4, tn: 4 },
    MatmulVariant::Register,
];

/// The name `LORA_WGPU_MATMUL` and the cache use for a variant.
pub fn name(v: MatmulVariant) -> String {
    match v {
        MatmulVariant::Tiled { tm, tn } => format!("tiled{tm}x{tn}"),
        MatmulVariant::Register => "register".into(),
        MatmulVariant::Image => "image".into(),
        MatmulVariant::Coop => "coop".into(),
        MatmulVariant::Auto => "auto".into(),
    }
}

/// Parse a variant name (`tiled8x8`, `tiled4x4`, ..., `register`, `image`, `coop`, `auto`).
pub fn parse(s: &str) -> Option<MatmulVariant> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "register" => return Some(MatmulVariant::Register),
        "image" => return Some(MatmulVariant::Image),
        "coop" => return Some(MatmulVariant::Coop),
        "auto" => return Some(MatmulVariant::Auto),
        _ => {}
    }
    let (tm, tn) = s.strip_prefix("tiled")?.split_once('x')?;
    let (tm, tn) = (tm.parse().ok()?, tn.parse().ok()?);
    let ok = ((1..=4).contains(&tm) && (1..=4).contains(&tn)) || (tm, tn) == (8, 8);
    ok.then_some(MatmulVariant::Tiled { tm, tn })
}

/// Shapes that tune alike: each dimension rounded up to a power of two, transposes, batching.
pub fn shape_class(op: &MatmulOp) -> String {
    let p = |x: usize| x.next_power_of_two();
    format!(
        "{}x{}x{}{}{}{}",
        p(op.m),
        p(op.k),
        p(op.n),
        if op.trans_a { "-ta" } else { "" },
        if op.trans_b { "-tb" } else { "" },
        if op.batch > 1 { "-batched" } else { "" },
    )
}

/// The variant to run `op` with when the [`Gpu`] asks for [`MatmulVariant::Auto`]: the tuned
/// winner for its shape class (tuning now if this class is new), or the device default when
/// tuning is off.
pub fn tuned(gpu: &Gpu, op: &MatmulOp) -> Result<MatmulVariant> {
    let timings = gpu.timings();
    if !timings.enabled() {
        return Ok(MatmulVariant::device_default(gpu));
    }
    let class = shape_class(op);
    if let Some(v) = timings.get(&class).as_deref().and_then(parse) {
        return Ok(v);
    }
    let measured = time_variants(gpu, op)?;
    let winner = measured
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|t| t.0)
        .unwrap_or_else(|| MatmulVariant::device_default(gpu));
    log::info!(
        "autotune {class}: {} ({})",
        name(winner),
        measured
            .iter()
            .map(|(v, s)| format!("{} {:.3} ms", name(*v), s * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    timings.insert(class, name(winner));
    Ok(winner)
}

/// Median seconds of every candidate variant that runs on this adapter, on `op`'s shape
/// (scratch tensors; candidates the adapter cannot run are left out).
pub fn time_variants(gpu: &Gpu, op: &MatmulOp) -> Result<Vec<(MatmulVariant, f64)>> {
    let (m, n, k, batch) = (op.m, op.n, op.k, op.batch);
    let a = gpu.zeros("autotune A", &[batch * m * k])?;
    let b = gpu.zeros("autotune B", &[batch * k * n])?;
    let c = gpu.zeros("autotune C", &[batch * m * n])?;
    let mut out = Vec::new();
    for v in CANDIDATES {
        let g = gpu.with_variants(Variants {
            matmul: v,
            ..gpu.variants()
        });
        let Ok(d) = matmul(&g, &c, &a, &b, None, op) else {
            continue;
        };
        gpu.run(&[&d])?;
        gpu.sync()?;
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t = Instant::now();
            gpu.run(&[&d])?;
            gpu.sync()?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        out.push((v, times[RUNS / 2]));
    }
    Ok(out)
}

/// Winners tuned so far on `gpu` (loaded from the cache or measured), by shape class.
pub fn tuned_so_far(gpu: &Gpu) -> BTreeMap<String, MatmulVariant> {
    gpu.timings()
        .all()
        .into_iter()
        .filter_map(|(class, v)| Some((class, parse(&v)?)))
        .collect()
}
