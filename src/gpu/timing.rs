//! The per-adapter timing table: which variant of a kernel won on a class of shapes, measured
//! once on this adapter and driver and kept in memory and in the user's cache directory, so
//! later runs start tuned. What a class or a variant is, and how to time one, is the kernel's
//! business (`kernels::matmul::autotune`); this is only the table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// Tuning state of one device: whether to measure at all, and the winners so far.
#[derive(Debug)]
pub struct Timings {
    enabled: bool,
    /// JSON cache file, shared by every adapter (keyed inside).
    file: Option<PathBuf>,
    /// This adapter and driver, as the cache file's key.
    key: String,
    /// Shape class → name of the winning variant.
    table: Mutex<BTreeMap<String, String>>,
}

impl Timings {
    /// The table of the adapter `info`, loaded from `dir` (`None`: the user's cache dir,
    /// `lora-wgpu/`). Measuring is on when `enabled` says so, else on GPUs and off on CPU
    /// adapters (where the device's default variants are right and timing candidates takes
    /// seconds per shape).
    pub(crate) fn new(
        info: &wgpu::AdapterInfo,
        enabled: Option<bool>,
        dir: Option<PathBuf>,
    ) -> Self {
        let enabled = enabled.unwrap_or(info.device_type != wgpu::DeviceType::Cpu);
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
                    .filter_map(|(class, name)| Some((class.clone(), name.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Timings {
            enabled,
            file,
            key,
            table: Mutex::new(table),
        }
    }

    /// Whether kernels should measure their variants on this device.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The winner recorded for `class`.
    pub fn get(&self, class: &str) -> Option<String> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(class)
            .cloned()
    }

    /// Every winner recorded so far (loaded from the cache or measured), by class.
    pub fn all(&self) -> BTreeMap<String, String> {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Record `winner` for `class`, in memory and in the cache file.
    pub fn insert(&self, class: String, winner: String) {
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
            .map(|(c, v)| (c.clone(), serde_json::Value::String(v.clone())))
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
