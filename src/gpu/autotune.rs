//! Matmul autotuning: the first time a shape class runs on an adapter, time the candidate
//! variants on that shape and keep the fastest, in memory and in the user's cache directory
//! (one table per adapter and driver), so later runs start tuned.
//!
//! On by default on GPUs; off on CPU adapters, where the register kernel is the right choice
//! and timing the workgroup-memory candidates would take seconds per shape. `LORA_WGPU_AUTOTUNE`
//! (`0` / `1`) and [`super::GpuOptions::autotune`] override that; `LORA_WGPU_MATMUL` forces one
//! variant everywhere.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use super::{Gpu, MatmulVariant};
use crate::error::Result;
use crate::kernels::matmul::{matmul, MatmulOp};

/// Timed runs per candidate (after one warm-up); the median counts.
const RUNS: usize = 3;

/// Variants tried, in order of preference on a tie.
pub const CANDIDATES: [MatmulVariant; 3] = [
    MatmulVariant::Tiled { tm: 8, tn: 8 },
    MatmulVariant::Tiled { tm: 4, tn: 4 },
    MatmulVariant::Register,
];

/// Tuning state of one device.
#[derive(Debug)]
pub(crate) struct Autotune {
    pub(crate) enabled: bool,
    /// JSON cache file, shared by every adapter (keyed inside).
    file: Option<PathBuf>,
    /// This adapter and driver, as the cache file's key.
    key: String,
    /// Shape class → winner.
    table: Mutex<BTreeMap<String, MatmulVariant>>,
}

impl Autotune {
    pub(crate) fn new(
        info: &wgpu::AdapterInfo,
        enabled: Option<bool>,
        dir: Option<PathBuf>,
    ) -> Self {
        let env = std::env::var("LORA_WGPU_AUTOTUNE").ok();
        let enabled = match env.as_deref().map(str::trim) {
            Some("0") | Some("false") | Some("off") => false,
            Some("1") | Some("true") | Some("on") => true,
            _ => enabled.unwrap_or(info.device_type != wgpu::DeviceType::Cpu),
        };
        let file = dir
            .or_else(default_cache_dir)
            .map(|d| d.join("autotune.json"));
        let key = format!(
            "{} | {:?} | {} {}",
            info.name, info.backend, info.driver, info.driver_info
        );
        let table = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v.get(&key).cloned())
            .and_then(|v| v.as_object().cloned())
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|(class, name)| Some((class.clone(), parse(name.as_str()?)?)))
                    .collect()
            })
            .unwrap_or_default();
        Autotune {
            enabled,
            file,
            key,
            table: Mutex::new(table),
        }
    }

    fn lookup(&self, class: &str) -> Option<MatmulVariant> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(class)
            .copied()
    }

    fn remember(&self, class: String, winner: MatmulVariant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.insert(class, winner);
        let Some(file) = &self.file else { return };
        // Merge into what is on disk (other adapters' tables), write atomically; a cache that
        // cannot be written only costs a re-tune next time.
        let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let ours: serde_json::Map<String, serde_json::Value> = table
            .iter()
            .map(|(c, v)| (c.clone(), serde_json::Value::String(name(*v))))
            .collect();
        all.insert(self.key.clone(), serde_json::Value::Object(ours));
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let text = serde_json::to_string_pretty(&all).expect("JSON values serialise");
        let _ = crate::fsio::write_atomic(file, text.as_bytes());
    }
}

/// `$XDG_CACHE_HOME/lora-wgpu`, `~/.cache/lora-wgpu`, or `%LOCALAPPDATA%\lora-wgpu`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("LOCALAPPDATA").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("lora-wgpu"))
}

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

impl Gpu {
    /// The variant to run `op` with when asked for [`MatmulVariant::Auto`]: the tuned winner
    /// for its shape class (tuning now if this class is new), or the device default when
    /// tuning is off.
    pub fn tuned_matmul(&self, op: &MatmulOp) -> Result<MatmulVariant> {
        if !self.autotune.enabled {
            return Ok(self.device_default_matmul());
        }
        let class = shape_class(op);
        if let Some(v) = self.autotune.lookup(&class) {
            return Ok(v);
        }
        let timings = self.time_matmul_variants(op)?;
        let winner = timings
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|t| t.0)
            .unwrap_or_else(|| self.device_default_matmul());
        log::info!(
            "autotune {class}: {} ({})",
            name(winner),
            timings
                .iter()
                .map(|(v, s)| format!("{} {:.3} ms", name(*v), s * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.autotune.remember(class, winner);
        Ok(winner)
    }

    /// Median seconds of every candidate variant that runs on this adapter, on `op`'s shape
    /// (scratch tensors; candidates the adapter cannot run are left out).
    pub fn time_matmul_variants(&self, op: &MatmulOp) -> Result<Vec<(MatmulVariant, f64)>> {
        let (m, n, k, batch) = (op.m, op.n, op.k, op.batch);
        let a = self.zeros("autotune A", &[batch * m * k])?;
        let b = self.zeros("autotune B", &[batch * k * n])?;
        let c = self.zeros("autotune C", &[batch * m * n])?;
        let mut out = Vec::new();
        for v in CANDIDATES {
            let Ok(d) = matmul(self, v, &c, &a, &b, None, op) else {
                continue;
            };
            self.run(&[&d])?;
            self.sync()?;
            let mut times = Vec::with_capacity(RUNS);
            for _ in 0..RUNS {
                let t = Instant::now();
                self.run(&[&d])?;
                self.sync()?;
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            out.push((v, times[RUNS / 2]));
        }
        Ok(out)
    }

    /// Winners tuned so far (loaded from the cache or measured), by shape class.
    pub fn tuned_matmuls(&self) -> BTreeMap<String, MatmulVariant> {
        self.autotune
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
