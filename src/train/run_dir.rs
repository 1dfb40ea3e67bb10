//! The output directory of a training run ([`RunDir`]): its layout, the checks on it before a
//! run starts, and every file the trainer writes into it or reads back from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{LogRecord, TrainerState};
use crate::error::{Error, Result};
use crate::fsio::{self, create_dir_all, io_err, write_atomic};
use crate::lora::{peft, LoraConfig, LoraLayout};
use crate::model::ModelConfig;
use crate::tensor_file::{self, F32View};

/// The files of an adapter in PEFT's format ([`peft::save`]).
const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];
const TRAINER_STATE: &str = "trainer_state.json";
const METRICS: &str = "metrics.jsonl";
const LOSS_CURVE: &str = "loss_curve.svg";
const BEST: &str = "best";
const CHECKPOINTS: &str = "checkpoints";
const LATEST: &str = "latest";
const OPTIMIZER: &str = "optimizer.safetensors";
/// The metadata key and value that say the moments are in [`LoraLayout`]'s group-major order
/// (every A, then every B). Files without it come from versions that interleaved A and B per
/// module; they are reordered when read.
const MOMENTS_LAYOUT: (&str, &str) = ("layout", "group-major");

/// Files every complete checkpoint directory holds.
const CHECKPOINT_FILES: [&str; 4] = [TRAINER_STATE, OPTIMIZER, ADAPTER_FILES[0], ADAPTER_FILES[1]];

/// What to do when the output directory already holds a training run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExistingRun {
    /// Refuse to start (the default: two runs never mix in one directory).
    Refuse,
    /// Continue it (`--resume`): its files stay.
    Resume,
    /// Replace it (`--overwrite`): its files are deleted once the new run can start.
    Overwrite,
}

/// A run's output directory (`--out`): where each of its files lives, the checks made on it
/// before a run starts, and the writes the trainer makes into it.
///
/// ```text
/// out/adapter_config.json, adapter_model.safetensors   final adapter (PEFT format)
/// out/best/                                             adapter with the lowest val loss
/// out/checkpoints/step-000100/                          adapter + optimizer.safetensors
///                                                       + trainer_state.json
/// out/checkpoints/latest                                name of the newest complete checkpoint
/// out/trainer_state.json, metrics.jsonl, loss_curve.svg
/// ```
///
/// Every file is written to a temporary sibling, fsynced and renamed; a checkpoint directory is
/// assembled under a temporary name (`.tmp-step-N`) and renamed whole, and `latest` moves only
/// after that. A run killed at any moment therefore resumes from its newest complete
/// [`Checkpoint`], and the next run removes what the killed one left.
///
/// ```
/// use lora_wgpu::train::RunDir;
///
/// let run = RunDir::new("runs/demo");
/// assert!(run.checkpoint(100).ends_with("checkpoints/step-000100"));
/// assert!(run.metrics().ends_with("metrics.jsonl"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root` (nothing is touched on disk).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    /// A new directory name for a run started now: `runs/run-<unix seconds>`.
    pub fn timestamped() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        RunDir::new(format!("runs/run-{secs}"))
    }

    /// The directory itself; the final adapter (PEFT format) is written here.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `best/`: the adapter with the lowest val loss.
    pub fn best(&self) -> PathBuf {
        self.root.join(BEST)
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }

    /// The checkpoint directory of `step`: `checkpoints/step-000100`.
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(checkpoint_name(step))
    }

    /// `trainer_state.json` of the finished run.
    pub fn trainer_state(&self) -> PathBuf {
        self.root.join(TRAINER_STATE)
    }

    /// `metrics.jsonl`: one [`LogRecord`] per logged step.
    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS)
    }

    /// `loss_curve.svg`, drawn from the metrics at the end of the run.
    pub fn loss_curve(&self) -> PathBuf {
        self.root.join(LOSS_CURVE)
    }

    /// Whether the directory holds (part of) a training run.
    pub fn holds_run(&self) -> bool {
        [TRAINER_STATE, CHECKPOINTS, METRICS]
            .iter()
            .any(|f| self.root.join(f).exists())
    }

    /// Refuse to mix two runs in one directory unless `existing` says what to do with the old
    /// one, and refuse a path that is a file; changes nothing on disk.
    pub fn check(&self, existing: ExistingRun) -> Result<()> {
        let out = &self.root;
        if out.exists() && !out.is_dir() {
            return Err(out_dir_error(
                out,
                format!(
                    "--out {} exists and is not a directory: choose a path for a new directory",
                    out.display()
                ),
                None,
            ));
        }
        if existing == ExistingRun::Refuse && self.holds_run() {
            return Err(out_dir_error(
                out,
                format!(
                    "{} already holds a training run; pass --resume to continue it, --overwrite \
                     to replace it, or choose another --out",
                    out.display()
                ),
                None,
            ));
        }
        Ok(())
    }

    /// Create the directory (after [`RunDir::check`]), deleting the files of a previous run with
    /// [`ExistingRun::Overwrite`], and make sure it is writable.
    pub fn prepare(&self, existing: ExistingRun) -> Result<()> {
        self.check(existing)?;
        let out = &self.root;
        if existing == ExistingRun::Overwrite && self.holds_run() {
            for f in [TRAINER_STATE, METRICS, LOSS_CURVE]
                .iter()
                .chain(&ADAPTER_FILES)
            {
                let _ = std::fs::remove_file(out.join(f));
            }
            for d in [CHECKPOINTS, BEST] {
                let _ = std::fs::remove_dir_all(out.join(d));
            }
        }
        std::fs::create_dir_all(out).map_err(|e| {
            out_dir_error(
                out,
                format!(
                    "cannot create the output directory {}; choose a writable --out",
                    out.display()
                ),
                Some(e),
            )
        })?;
        let probe = out.join(".write-test");
        std::fs::write(&probe, b"").map_err(|e| {
            out_dir_error(
                out,
                format!(
                    "cannot write into the output directory {} (read-only or full?); choose a \
                     writable --out",
                    out.display()
                ),
                Some(e),
            )
        })?;
        let _ = std::fs::remove_file(probe);
        Ok(())
    }

    /// Create the directory and remove what a killed run left in it, in `best/` and in
    /// `checkpoints/`.
    pub(crate) fn open(&self) -> Result<()> {
        create_dir_all(&self.root)?;
        for dir in [self.root.clone(), self.best(), self.checkpoints()] {
            remove_leftovers(&dir);
        }
        Ok(())
    }

    /// Append `rec` as one line of `metrics.jsonl`.
    pub(crate) fn append_metrics(&self, rec: &LogRecord) -> Result<()> {
        let path = self.metrics();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let line = serde_json::to_string(rec).expect("plain data serialises");
        writeln!(f, "{line}").map_err(|e| io_err(&path, e))
    }

    /// Drop the `metrics.jsonl` lines after `step` (a resumed run writes them again),
    /// atomically.
    pub(crate) fn truncate_metrics(&self, step: u64) -> Result<()> {
        let path = self.metrics();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<LogRecord>(l)
                    .map(|r| r.step <= step)
                    .unwrap_or(false)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&path, kept.as_bytes())
    }

    /// Write the finished run's `trainer_state.json` and draw `loss_curve.svg` from the metrics.
    pub(crate) fn finish(&self, state: &TrainerState) -> Result<()> {
        write_json(&self.trainer_state(), state)?;
        super::plot::write_loss_curve(&self.metrics(), &self.loss_curve())
    }

    /// Write the checkpoint of `state.global_step` (the adapter as saved: config, layout, values,
    /// base model name; AdamW's moments `(m, v)`; trainer state), point `latest` at it, and
    /// delete the oldest beyond `keep` (0 keeps all). Returns its directory.
    pub(crate) fn save_checkpoint(
        &self,
        adapter: (&LoraConfig, &LoraLayout, &[f32], Option<&str>),
        moments: (&[f32], &[f32]),
        state: &TrainerState,
        keep: usize,
    ) -> Result<PathBuf> {
        let root = self.checkpoints();
        create_dir_all(&root)?;
        let name = checkpoint_name(state.global_step);
        let tmp = root.join(format!(".tmp-{name}"));
        let done = root.join(&name);
        remove_leftovers(&root);
        create_dir_all(&tmp)?;
        let (lora, layout, params, base_model) = adapter;
        peft::save(&tmp, lora, layout, params, base_model)?;
        write_moments(&tmp.join(OPTIMIZER), moments.0, moments.1)?;
        write_json(&tmp.join(TRAINER_STATE), state)?;
        // An older checkpoint of the same step (a run resumed from before it) is moved aside
        // whole, never deleted in place: a kill at any point leaves every `step-N` complete.
        let trash = root.join(format!(".trash-{name}"));
        if done.exists() {
            std::fs::rename(&done, &trash).map_err(|e| io_err(&done, e))?;
        }
        std::fs::rename(&tmp, &done).map_err(|e| io_err(&done, e))?;
        fsio::sync_dir(&root);
        let _ = std::fs::remove_dir_all(&trash);
        write_atomic(&root.join(LATEST), name.as_bytes())?;
        prune(&root, &name, keep)?;
        Ok(done)
    }
}

/// `step-000100`.
fn checkpoint_name(step: u64) -> String {
    format!("step-{step:06}")
}

fn out_dir_error(path: &Path, detail: String, source: Option<std::io::Error>) -> Error {
    Error::OutputDir {
        path: path.to_path_buf(),
        detail,
        source,
    }
}

/// A complete checkpoint directory (`out/checkpoints/step-N`), to resume from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// The checkpoint `path` names: a checkpoint itself, or an output dir / checkpoints dir whose
    /// `latest` (or else newest complete `step-N`) is used.
    pub fn find(path: &Path) -> Result<Self> {
        if is_complete_checkpoint(path) {
            return Ok(Checkpoint {
                dir: path.to_path_buf(),
            });
        }
        let root = if path.join(CHECKPOINTS).is_dir() {
            path.join(CHECKPOINTS)
        } else {
            path.to_path_buf()
        };
        if let Ok(name) = std::fs::read_to_string(root.join(LATEST)) {
            let dir = root.join(name.trim());
            if is_complete_checkpoint(&dir) {
                return Ok(Checkpoint { dir });
            }
        }
        let mut all = list_checkpoints(&root).unwrap_or_default();
        all.sort();
        all.pop()
            .map(|(_, n)| Checkpoint { dir: root.join(n) })
            .ok_or_else(|| Error::Checkpoint {
                path: path.to_path_buf(),
                detail:
                    "no checkpoint here (expected out/checkpoints/step-N with trainer_state.json); \
                     train with --save-every to write some"
                        .into(),
            })
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its `trainer_state.json`.
    pub(crate) fn trainer_state(&self) -> Result<TrainerState> {
        read_json(&self.dir.join(TRAINER_STATE))
    }

    /// Its adapter, loaded for `model` ([`peft::load`]).
    pub(crate) fn adapter(
        &self,
        model: &ModelConfig,
    ) -> Result<(LoraConfig, LoraLayout, Vec<f32>)> {
        peft::load(&self.dir, model)
    }

    /// AdamW's first and second moments, `layout.len` values each, in `layout`'s order.
    pub(crate) fn moments(&self, layout: &LoraLayout) -> Result<(Vec<f32>, Vec<f32>)> {
        read_moments(&self.dir.join(OPTIMIZER), layout)
    }
}

fn is_complete_checkpoint(dir: &Path) -> bool {
    CHECKPOINT_FILES.iter().all(|f| dir.join(f).is_file())
}

/// Remove what a killed run may have left in `dir` (an output, `best/` or `checkpoints/`
/// directory): checkpoints being assembled (`.tmp-step-N/`), being deleted (`.trash-step-N/`)
/// and temporary files of atomic writes (`.NAME.tmp-PID`).
fn remove_leftovers(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && (name.starts_with(".tmp-step-") || name.starts_with(".trash-step-")) {
            let _ = std::fs::remove_dir_all(e.path());
        } else if !is_dir
            && name
                .rsplit_once(".tmp-")
                .is_some_and(|(_, pid)| pid.bytes().all(|b| b.is_ascii_digit()))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Complete checkpoints (`step-N` directories) under `root`, with their step.
fn list_checkpoints(root: &Path) -> Result<Vec<(u64, String)>> {
    let rd = std::fs::read_dir(root).map_err(|e| io_err(root, e))?;
    Ok(rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            is_complete_checkpoint(&e.path()).then_some((step, name))
        })
        .collect())
}

/// Delete the oldest checkpoints under `root` beyond `keep` (0 keeps all), never `newest`.
fn prune(root: &Path, newest: &str, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let mut all = list_checkpoints(root)?;
    all.sort();
    let excess = all.len().saturating_sub(keep);
    for (_, name) in all.into_iter().take(excess) {
        if name != newest {
            // Rename first so that a kill mid-delete leaves no half-deleted `step-N`.
            let trash = root.join(format!(".trash-{name}"));
            if std::fs::rename(root.join(&name), &trash).is_ok() {
                let _ = std::fs::remove_dir_all(trash);
            }
        }
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("plain data serialises");
    write_atomic(path, text.as_bytes())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

fn write_moments(path: &Path, m: &[f32], v: &[f32]) -> Result<()> {
    let views = [("m", m), ("v", v)].map(|(k, data)| {
        let shape = vec![data.len()];
        (k, F32View { shape, data })
    });
    let meta = [MOMENTS_LAYOUT]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    write_atomic(path, &data)
}

fn read_moments(path: &Path, layout: &LoraLayout) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = layout.len;
    let bad = |detail: String| Error::Checkpoint {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let order = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(MOMENTS_LAYOUT.0).cloned());
    let reorder = match order.as_deref() {
        Some(o) if o == MOMENTS_LAYOUT.1 => false,
        None => true,
        Some(other) => {
            return Err(bad(format!(
                "the moments are in layout `{other}`, which this version does not know                  (it writes `{}`)",
                MOMENTS_LAYOUT.1
            )))
        }
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let get = |k: &str| -> Result<Vec<f32>> {
        let t = st.tensor(k).map_err(|e| bad(format!("tensor {k}: {e}")))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != [n] {
            return Err(bad(format!(
                "tensor {k} is {:?} {:?}, expected F32 [{n}]",
                t.dtype(),
                t.shape()
            )));
        }
        let values = tensor_file::to_f32(path, k, t.dtype(), t.data())?;
        Ok(if reorder {
            from_interleaved(layout, &values)
        } else {
            values
        })
    };
    Ok((get("m")?, get("v")?))
}

/// `old`, in the order of versions before the group-major layout (each module's A then its B,
/// every piece aligned as now), rearranged into `layout`'s order. Both orders have the same
/// length.
fn from_interleaved(layout: &LoraLayout, old: &[f32]) -> Vec<f32> {
    let align = (crate::gpu::VIEW_ALIGN / 4) as usize;
    let mut out = vec![0.0f32; layout.len];
    let mut at = 0usize;
    for e in &layout.entries {
        for (to, n) in [
            (e.a_offset, layout.r * e.d_in),
            (e.b_offset, e.d_out * layout.r),
        ] {
            out[to..to + n].copy_from_slice(&old[at..at + n]);
            at += n.div_ceil(align) * align;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> RunDir {
        let dir =
            std::env::temp_dir().join(format!("lora-wgpu-rundir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        RunDir::new(dir)
    }

    /// Moments written with the layout marker read back as written; a file without it (an
    /// older version's, A and B interleaved per module) is reordered into the group-major layout.
    #[test]
    fn moments_read_back_in_the_group_major_layout() {
        let model = crate::model::Gpt2Config::named("tiny").unwrap();
        let lora = LoraConfig {
            r: 2,
            target_modules: vec!["all-linear".into()],
            ..LoraConfig::default()
        };
        let layout = LoraLayout::new(&model, &lora).unwrap();
        let dir = scratch("moments");
        create_dir_all(dir.root()).unwrap();
        let path = dir.root().join(OPTIMIZER);
        let m: Vec<f32> = (0..layout.len).map(|i| i as f32).collect();
        let v: Vec<f32> = m.iter().map(|x| -x).collect();
        write_moments(&path, &m, &v).unwrap();
        assert_eq!(
            read_moments(&path, &layout).unwrap(),
            (m.clone(), v.clone())
        );

        // The old order: module by module, A then B; each value names its module and matrix.
        let align = (crate::gpu::VIEW_ALIGN / 4) as usize;
        let mut old = Vec::new();
        let mut want = vec![0.0f32; layout.len];
        for (i, e) in layout.entries.iter().enumerate() {
            for (j, to, n) in [
                (0, e.a_offset, layout.r * e.d_in),
                (1, e.b_offset, e.d_out * layout.r),
            ] {
                let tag = (2 * i + j + 1) as f32;
                old.extend(std::iter::repeat_n(tag, n));
                old.resize(old.len().div_ceil(align) * align, 0.0);
                want[to..to + n].fill(tag);
            }
        }
        assert_eq!(old.len(), layout.len);
        let views = [("m", &old), ("v", &old)].map(|(k, data)| {
            let shape = vec![data.len()];
            (k, F32View { shape, data })
        });
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        assert_eq!(read_moments(&path, &layout).unwrap(), (want.clone(), want));
        std::fs::remove_dir_all(dir.root()).unwrap();
    }

    #[test]
    fn layout() {
        let r = RunDir::new("out");
        assert_eq!(r.root(), Path::new("out"));
        assert_eq!(r.best(), Path::new("out/best"));
        assert_eq!(r.checkpoint(7), Path::new("out/checkpoints/step-000007"));
        assert_eq!(r.trainer_state(), Path::new("out/trainer_state.json"));
        assert_eq!(r.metrics(), Path::new("out/metrics.jsonl"));
        assert_eq!(r.loss_curve(), Path::new("out/loss_curve.svg"));
    }

    #[test]
    fn check_and_prepare() {
        let r = scratch("prepare");
        r.check(ExistingRun::Refuse).unwrap();
        r.prepare(ExistingRun::Refuse).unwrap();
        assert!(r.root().is_dir() && !r.holds_run());
        std::fs::write(r.metrics(), b"{}\n").unwrap();
        std::fs::create_dir_all(r.best()).unwrap();
        let e = r.check(ExistingRun::Refuse).unwrap_err().to_string();
        assert!(e.contains("already holds a training run"), "{e}");
        r.check(ExistingRun::Resume).unwrap();
        r.prepare(ExistingRun::Overwrite).unwrap();
        assert!(!r.holds_run() && !r.best().exists());
        // A leftover temporary file of an atomic write goes; other dot files stay.
        std::fs::write(r.root().join(".metrics.jsonl.tmp-123"), b"").unwrap();
        std::fs::write(r.root().join(".keep"), b"").unwrap();
        r.open().unwrap();
        assert!(!r.root().join(".metrics.jsonl.tmp-123").exists());
        assert!(r.root().join(".keep").exists());
        std::fs::remove_dir_all(r.root()).unwrap();
        let file = scratch("file");
        std::fs::write(file.root(), b"x").unwrap();
        let e = file.check(ExistingRun::Overwrite).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_file(file.root()).unwrap();
    }

    #[test]
    fn no_checkpoint_is_a_clear_error() {
        let r = scratch("none");
        r.prepare(ExistingRun::Refuse).unwrap();
        let e = Checkpoint::find(r.root()).unwrap_err().to_string();
        assert!(e.contains("no checkpoint here"), "{e}");
        std::fs::remove_dir_all(r.root()).unwrap();
    }
}
