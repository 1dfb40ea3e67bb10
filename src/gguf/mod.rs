//! Versions 2 and 3, little-endian: [`GgufFile`] reads, [`GgufWriter`] writes.
//!
//! We parse GGUF ourselves: the Rust GGUF crates are young, little used, often v3-only and not
//! strict on hostile input.
//!
//! A file is a header (magic `GGUF`, version, tensor count, metadata count), the metadata
//! key/value pairs, one info per tensor (name, ggml's dims innermost first, type, offset), padding
//! to `general.alignment` (default 32), then the data section holding every tensor at its offset.
//! Every count and length is checked against the bytes left before anything is allocated, so a
//! hostile header cannot make us allocate more than a small multiple of the file's size; every
//! error names the file, the key or tensor, what was wrong and what to do.
//!
//! ```
//! use lora_wgpu::gguf::{GgufFile, GgufWriter, Value};
//! use lora_wgpu::quant::{quantize, GgmlType};
//! # fn main() -> lora_wgpu::Result<()> {
//! let w: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
//! let mut out = GgufWriter::new();
//! out.add("general.architecture", Value::String("llama".into()));
//! out.add_tensor("w", &[2, 32], GgmlType::Q8_0, quantize(GgmlType::Q8_0, &w)?)?;
//! let file = GgufFile::from_bytes("w.gguf".as_ref(), out.to_bytes())?;
//! assert_eq!(file.get_str("general.architecture")?, Some("llama"));
//! assert_eq!(file.tensor("w").unwrap().shape, [2, 32]);
//! let back = file.dequantize("w")?;
//! assert!(back.iter().zip(&w).all(|(a, b)| (a - b).abs() < 0.01));
//! # Ok(())
//! # }
//! ```

mod read;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::quant::GgmlType;

pub use write::GgufWriter;

/// The file's first four bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The alignment of tensor data when `general.alignment` is not set.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The metadata key of the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's most dimensions a tensor has.
pub const MAX_DIMS: usize = 4;

/// A metadata value. Arrays hold values of one type (an array of arrays may mix the inner
/// arrays' element types).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 12.
    F64(f64),
    /// GGUF type 7 (one byte, 0 or 1).
    Bool(bool),
    /// GGUF type 8 (u64 length, UTF-8 bytes).
    String(String),
    /// GGUF type 9 (element type, u64 count, elements).
    Array(Vec<Value>),
}

/// GGUF's value type ids and names, in id order.
const VALUE_TYPES: [&str; 13] = [
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
];

impl Value {
    /// GGUF's id of the value's type.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The type's name: "u32", "string", "array of f32", ...
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(items) => match items.first() {
                Some(first) => format!("array of {}", first.type_name()),
                None => "empty array".into(),
            },
            other => VALUE_TYPES[other.type_id() as usize].into(),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an unsigned integer, if it is an integer of any type and not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// One tensor's entry in a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// numpy order, outermost first (GGUF stores ggml's `ne`, innermost first: reversed here).
    pub shape: Vec<usize>,
    /// The element type.
    pub ty: GgmlType,
    /// Byte offset inside the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The number of elements (the product of the shape; checked not to overflow when read).
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The size of the tensor's data in bytes.
    pub fn n_bytes(&self) -> usize {
        self.ty.bytes_for(self.n_elements()).unwrap_or(0)
    }
}

/// The bytes of a file: memory-mapped, or owned (tests, fuzzing).
enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A GGUF file opened for reading: its metadata and tensor infos parsed and checked, its data
/// mapped but not read until asked for.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: usize,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// An [`Error::Format`] for the file at `path`.
pub(crate) fn format_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

impl GgufFile {
    /// Memory-map the file at `path` and parse it; errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| crate::fsio::io_err(path, e))?;
        // SAFETY: the map is only read; a concurrent writer could change what we read but not
        // break memory safety of the byte slice beyond that (the usual mmap caveat).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| crate::fsio::io_err(path, e))?;
        Self::parse(path, Bytes::Map(map))
    }

    /// Parse a file's bytes, with the same checks as [`open`](Self::open); `path` is only used
    /// in messages.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path, Bytes::Owned(bytes))
    }

    fn parse(path: &Path, bytes: Bytes) -> Result<Self> {
        let parsed = read::parse(path, &bytes)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            bytes,
            version: parsed.version,
            metadata: parsed.metadata,
            keys: parsed.keys,
            tensors: parsed.tensors,
            by_name: parsed.by_name,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
        })
    }

    /// The file's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The data alignment: `general.alignment`, or 32.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// The byte offset of the data section in the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    fn wrong_type(&self, key: &str, found: &Value, expected: &str) -> Error {
        format_err(
            &self.path,
            format!(
                "metadata key `{key}` is a {}, expected {expected}; the file was written for \
                 another reader or is damaged",
                found.type_name()
            ),
        )
    }

    /// The string value of `key`; an error if it is present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, v, "a string")),
        }
    }

    /// The value of `key` as a `usize`, from any integer type; an error if it is present with
    /// another type, negative, or too large.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().map(usize::try_from) {
                Some(Ok(n)) => Ok(Some(n)),
                _ => Err(self.wrong_type(
                    key,
                    v,
                    &format!("a non-negative integer (found {})", short(v)),
                )),
            },
        }
    }

    /// The value of `key` as an f32, from f32 or f64; an error if present with another type.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => Err(self.wrong_type(key, v, "an f32 or f64")),
        }
    }

    /// The value of `key` as a list of strings (an array of strings, or an empty array); an
    /// error if present with another type.
    pub fn get_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Array(items)) => items
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "an array of strings")),
            Some(v) => Err(self.wrong_type(key, v, "an array of strings")),
        }
    }

    /// Every tensor's info, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of tensor `t` (one of [`tensors`](Self::tensors); another file's info
    /// yields its range in this file, or an empty slice if that is out of bounds).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        usize::try_from(t.offset)
            .ok()
            .and_then(|o| o.checked_add(self.data_start))
            .and_then(|start| Some(start..start.checked_add(t.n_bytes())?))
            .and_then(|r| self.bytes.get(r))
            .unwrap_or(&[])
    }

    /// Tensor `name`'s values as f32 (numpy order, as [`TensorInfo::shape`]).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name).ok_or_else(|| {
            format_err(
                &self.path,
                format!(
                    "no tensor named `{name}` ({} tensors{}); check the name against the file's \
                     tensors",
                    self.tensors.len(),
                    match self.tensors.first() {
                        Some(t) => format!(", the first `{}`", t.name),
                        None => String::new(),
                    }
                ),
            )
        })?;
        crate::quant::dequantize(t.ty, self.data(t), t.n_elements())
    }
}

/// A value for a message: itself if short, else its type.
fn short(v: &Value) -> String {
    match v {
        Value::Array(_) | Value::String(_) => v.type_name(),
        other => format!("{other:?}"),
    }
}
