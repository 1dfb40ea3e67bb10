//! A model checkpoint as Hugging Face writes it: one `model.safetensors`, or a
//! `model.safetensors.index.json` whose `weight_map` names the shard file of every tensor.
//!
//! Shards are memory-mapped and their headers checked when opened; a tensor's bytes are read
//! and converted to f32 (from f32, f16 or bf16) only when asked for, so opening a checkpoint
//! costs its headers, not its size. [`Checkpoint::load_strict`] reads a whole model against the
//! names and shapes its family expects, naming every missing, unknown, mis-shaped or
//! unreadable tensor and the file it is in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::tensor_file::to_f32;

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Largest index file read (real ones are well under 1 MiB even for models with thousands of
/// tensors).
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// One tensor of a checkpoint: its dtype and shape as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The stored element type.
    pub dtype: Dtype,
    /// The stored shape.
    pub shape: Vec<usize>,
    /// Index of the shard holding it.
    shard: usize,
    /// Byte range within the shard's data section.
    range: (usize, usize),
}

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Offset of the data section (8 + header length).
    data_start: usize,
}

/// A checkpoint opened for reading: every tensor's name, dtype, shape and file, with its data
/// mapped but not yet read.
pub struct Checkpoint {
    path: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// What a family's loader makes of one checkpoint key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRole {
    /// The weight of this name (one of the expected names, or an unknown tensor if not).
    Weight(String),
    /// A buffer or tied copy that carries no weight of its own: skipped.
    Ignore,
}

/// Whether tensors stored as `dtype` can be read as f32.
pub fn readable(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, detail: String) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        detail,
    }
}

/// At most `n` items of a list, then how many more.
fn some_of(items: &[String], n: usize) -> String {
    let mut s = items[..items.len().min(n)].join(", ");
    if items.len() > n {
        s.push_str(&format!(" and {} more", items.len() - n));
    }
    s
}

impl Shard {
    /// Map `path` and check its header against its length.
    fn open(path: &Path) -> Result<(Self, Vec<(String, TensorInfo)>)> {
        let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
        // SAFETY: the file is only read; a concurrent writer could change what we read but not
        // break memory safety of the byte slice beyond that (the usual mmap caveat).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(path, e))?;
        let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            bad(
                path,
                format!(
                    "not a readable safetensors file ({e}); the download may be truncated or \
                     corrupt"
                ),
            )
        })?;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                (
                    name,
                    TensorInfo {
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        shard: 0,
                        range: info.data_offsets,
                    },
                )
            })
            .collect();
        Ok((
            Shard {
                path: path.to_path_buf(),
                map,
                data_start: 8 + n,
            },
            tensors,
        ))
    }
}

impl Checkpoint {
    /// Open the checkpoint of a model directory: `model.safetensors.index.json` and its shards
    /// when the index exists, else `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_file(&single);
        }
        Err(io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "the model directory has neither {SINGLE_FILE} nor {INDEX_FILE} (Hugging \
                     Face writes one of them beside config.json)"
                ),
            ),
        ))
    }

    /// Open one safetensors file as a whole checkpoint.
    pub fn open_file(path: &Path) -> Result<Self> {
        let (shard, tensors) = Shard::open(path)?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            shards: vec![shard],
            tensors: tensors.into_iter().collect(),
        })
    }

    /// Open a sharded checkpoint from its index. Every shard the `weight_map` names must exist
    /// beside the index and hold the tensors listed for it; a tensor a shard holds but the index
    /// does not list is still part of the checkpoint (transformers loads whole shards), unless
    /// two shards both hold it.
    pub fn open_index(index: &Path) -> Result<Self> {
        let meta = std::fs::metadata(index).map_err(|e| io(index, e))?;
        if meta.len() > MAX_INDEX_BYTES {
            return Err(bad(
                index,
                format!(
                    "{} bytes is too large for a checkpoint index (at most {MAX_INDEX_BYTES})",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(index).map_err(|e| io(index, e))?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
            bad(
                index,
                format!("not a readable checkpoint index ({e}); it must be JSON with a weight_map"),
            )
        })?;
        let Some(map) = json.get("weight_map").and_then(Value::as_object) else {
            return Err(bad(
                index,
                "no weight_map object: a checkpoint index maps each tensor name to its shard file"
                    .into(),
            ));
        };
        let dir = index.parent().unwrap_or(Path::new("."));
        // Shard file name -> its position in `shards`, in first-named order.
        let mut names: Vec<String> = Vec::new();
        let mut listed: BTreeMap<String, usize> = BTreeMap::new();
        for (tensor, file) in map {
            let Some(file) = file.as_str() else {
                return Err(bad(
                    index,
                    format!("weight_map entry {tensor} is {file}, not a shard file name"),
                ));
            };
            let plain = Path::new(file)
                .file_name()
                .is_some_and(|n| n == std::ffi::OsStr::new(file));
            if !plain || file.contains(['/', '\\']) {
                return Err(bad(
                    index,
                    format!(
                        "weight_map names shard {file:?} for {tensor}; a shard must be a file \
                         name beside the index"
                    ),
                ));
            }
            let i = match names.iter().position(|n| n == file) {
                Some(i) => i,
                None => {
                    names.push(file.to_string());
                    names.len() - 1
                }
            };
            listed.insert(tensor.clone(), i);
        }
        let mut shards = Vec::with_capacity(names.len());
        let mut held: Vec<BTreeMap<String, TensorInfo>> = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            if !path.is_file() {
                let example = listed
                    .iter()
                    .find(|(_, &s)| s == i)
                    .map(|(t, _)| t.as_str())
                    .unwrap_or("?");
                let count = listed.values().filter(|&&s| s == i).count();
                return Err(bad(
                    index,
                    format!(
                        "the index names shard {name} ({count} tensors, e.g. {example}) but \
                         {} does not exist; download the whole checkpoint (every shard the \
                         index lists)",
                        path.display()
                    ),
                ));
            }
            let (shard, tensors) = Shard::open(&path)?;
            shards.push(shard);
            held.push(
                tensors
                    .into_iter()
                    .map(|(n, mut t)| {
                        t.shard = i;
                        (n, t)
                    })
                    .collect(),
            );
        }
        let mut tensors = BTreeMap::new();
        let mut absent = Vec::new();
        for (tensor, &i) in &listed {
            match held[i].remove(tensor) {
                Some(t) => {
                    tensors.insert(tensor.clone(), t);
                }
                None => absent.push(format!("{tensor} (in {})", names[i])),
            }
        }
        if !absent.is_empty() {
            return Err(bad(
                index,
                format!(
                    "{} tensor(s) listed in the index are missing from their shard: {}; the \
                     shards do not belong to this index, or a download is incomplete",
                    absent.len(),
                    some_of(&absent, 10)
                ),
            ));
        }
        let mut twice = Vec::new();
        for (i, rest) in held.into_iter().enumerate() {
            for (tensor, t) in rest {
                if let Some(other) = tensors.get(&tensor) {
                    twice.push(format!(
                        "{tensor} (in {} and {})",
                        names[other.shard], names[i]
                    ));
                } else {
                    tensors.insert(tensor, t);
                }
            }
        }
        if !twice.is_empty() {
            return Err(bad(
                index,
                format!(
                    "tensor(s) stored in more than one shard and not listed in the index: {}",
                    some_of(&twice, 10)
                ),
            ));
        }
        Ok(Checkpoint {
            path: index.to_path_buf(),
            shards,
            tensors,
        })
    }

    /// The file that stands for the whole checkpoint: the single file, or the index.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Dtype and shape of tensor `name`, if the checkpoint has it.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The file holding tensor `name`, if the checkpoint has it.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors
            .get(name)
            .map(|t| self.shards[t.shard].path.as_path())
    }

    /// The values of tensor `name` as f32. Errors name the tensor and its file: absent, or
    /// stored in a dtype other than f32, f16 and bf16.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let Some(t) = self.tensors.get(name) else {
            return Err(bad(&self.path, format!("no tensor named {name}")));
        };
        let shard = &self.shards[t.shard];
        let start = shard.data_start + t.range.0;
        let end = shard.data_start + t.range.1;
        // read_metadata checked every range against the file's length.
        let bytes = &shard.map[start..end];
        to_f32(&shard.path, name, t.dtype, bytes)
    }

    /// Read every weight a model expects, strictly. `expected` lists the names and shapes;
    /// `role` maps each checkpoint key to the weight it holds (e.g. stripping a prefix) or
    /// marks it ignored. Every problem is collected into one [`Error::Checkpoint`] naming the
    /// checkpoint: each unknown tensor, each of the wrong shape or an unreadable dtype, each key
    /// that maps onto a weight another key already holds (with their files), and each missing
    /// weight. `family` names the model in the message ("Llama", ...).
    pub fn load_strict(
        &self,
        family: &str,
        expected: &[(String, Vec<usize>)],
        role: impl Fn(&str) -> KeyRole,
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let sharded = self.shards.len() > 1 || self.path.ends_with(INDEX_FILE);
        let at = |key: &str| -> String {
            match self.file_of(key) {
                Some(p) if sharded => format!(
                    " in {}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ),
                _ => String::new(),
            }
        };
        let want: BTreeMap<&str, &[usize]> = expected
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        let mut source: BTreeMap<&str, &str> = BTreeMap::new(); // weight -> checkpoint key
        let mut unknown = Vec::new();
        let mut misshaped = Vec::new();
        let mut dtypes = Vec::new();
        let mut twice = Vec::new();
        for (key, info) in &self.tensors {
            let name = match role(key) {
                KeyRole::Ignore => continue,
                KeyRole::Weight(name) => name,
            };
            let Some((&wname, &shape)) = want.get_key_value(name.as_str()) else {
                unknown.push(format!("{key}{}", at(key)));
                continue;
            };
            if let Some(first) = source.insert(wname, key) {
                twice.push(format!(
                    "{wname} (as {first}{} and {key}{})",
                    at(first),
                    at(key)
                ));
            }
            if info.shape != shape {
                misshaped.push(format!(
                    "{key}{} has shape {:?}, expected {shape:?}",
                    at(key),
                    info.shape
                ));
            }
            if !readable(info.dtype) {
                dtypes.push(format!("{key}{} is {:?}", at(key), info.dtype));
            }
        }
        let missing: Vec<String> = expected
            .iter()
            .filter(|(n, _)| !source.contains_key(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!(
                "{} missing tensor(s): {}",
                missing.len(),
                some_of(&missing, 20)
            ));
        }
        if !unknown.is_empty() {
            problems.push(format!(
                "{} unexpected tensor(s) for a {family} checkpoint of this config.json: {}",
                unknown.len(),
                some_of(&unknown, 20)
            ));
        }
        if !misshaped.is_empty() {
            problems.push(format!(
                "{} tensor(s) of the wrong shape for this config.json: {}",
                misshaped.len(),
                some_of(&misshaped, 20)
            ));
        }
        if !dtypes.is_empty() {
            problems.push(format!(
                "{} tensor(s) in an unsupported dtype (f32, f16 and bf16 are read): {}",
                dtypes.len(),
                some_of(&dtypes, 20)
            ));
        }
        if !twice.is_empty() {
            problems.push(format!(
                "weight(s) stored twice under different names: {}",
                some_of(&twice, 20)
            ));
        }
        if !problems.is_empty() {
            return Err(bad(
                &self.path,
                format!(
                    "not a {family} checkpoint matching config.json: {}",
                    problems.join("; ")
                ),
            ));
        }
        source
            .into_iter()
            .map(|(name, key)| Ok((name.to_string(), self.read_f32(key)?)))
            .collect()
    }
}
