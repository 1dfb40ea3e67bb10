//! Writing GGUF version 3 files, laid out as the `gguf` Python package's `GGUFWriter` lays them
//! out (each tensor's data padded to the alignment).

use std::collections::HashMap;
use std::path::Path;

use super::{format_err, TensorInfo, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// A GGUF file being assembled: metadata and tensors, written in the order added.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
    names: HashMap<String, usize>,
    /// Why entries given to [`add`](Self::add) were refused; [`write`](Self::write) reports it.
    refused: Vec<String>,
}

/// Why `v` cannot be stored in GGUF, if it cannot: an array's elements must share one type
/// (inner arrays of an array of arrays may differ in their element types).
fn unstorable(v: &Value) -> Option<String> {
    let Value::Array(items) = v else { return None };
    let first = items.first()?;
    if let Some(other) = items.iter().find(|i| i.type_id() != first.type_id()) {
        return Some(format!(
            "an array mixes {} and {} elements; GGUF arrays hold one type",
            first.type_name(),
            other.type_name()
        ));
    }
    items.iter().find_map(unstorable)
}

impl GgufWriter {
    /// An empty file: version 3, data aligned to 32 bytes unless `general.alignment` is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set metadata key `key` to `value` (replacing an earlier value of the key in place).
    ///
    /// A value GGUF cannot store (an array mixing element types; a `general.alignment` that is
    /// not a power-of-two integer) is refused: it is left out of [`to_bytes`](Self::to_bytes)
    /// and [`write`](Self::write) returns the reason.
    pub fn add(&mut self, key: &str, value: Value) {
        let reason = unstorable(&value).or_else(|| {
            (key == ALIGNMENT_KEY && !value.as_u64().is_some_and(|a| a.is_power_of_two()))
                .then(|| format!("{value:?} is not a power of two"))
        });
        if let Some(reason) = reason {
            self.refused.push(format!("metadata key `{key}`: {reason}"));
            return;
        }
        match self.keys.get(key) {
            Some(&i) => self.metadata[i].1 = value,
            None => {
                self.keys.insert(key.to_string(), self.metadata.len());
                self.metadata.push((key.to_string(), value));
            }
        }
    }

    /// Add tensor `name` of `shape` (numpy order, outermost first) stored as `ty` in `bytes`
    /// (exactly `ty.bytes_for(elements)` long; the innermost dim a multiple of the type's block).
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let bad =
            |detail: String| Error::shape("GgufWriter::add_tensor", format!("`{name}`: {detail}"));
        if self.names.contains_key(name) {
            return Err(bad("a tensor of this name was already added".into()));
        }
        if shape.is_empty() || shape.len() > MAX_DIMS {
            return Err(bad(format!(
                "shape {shape:?} has {} dims; GGUF tensors have 1 to {MAX_DIMS}",
                shape.len()
            )));
        }
        let inner = shape[shape.len() - 1];
        if inner % ty.block_len() != 0 {
            return Err(bad(format!(
                "the innermost dim {inner} is not a multiple of {ty}'s block of {} elements",
                ty.block_len()
            )));
        }
        let want = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| ty.bytes_for(n));
        if want != Some(bytes.len()) {
            return Err(bad(format!(
                "{} bytes given, but shape {shape:?} of {ty} takes {}",
                bytes.len(),
                want.map_or("more than can be addressed".into(), |w| w.to_string())
            )));
        }
        self.names.insert(name.to_string(), self.tensors.len());
        let info = TensorInfo {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
            offset: 0,
        };
        self.tensors.push((info, bytes));
        Ok(())
    }

    /// The data alignment: `general.alignment` if added, else 32.
    pub fn alignment(&self) -> usize {
        self.keys
            .get(ALIGNMENT_KEY)
            .and_then(|&i| self.metadata[i].1.as_u64())
            .and_then(|a| usize::try_from(a).ok())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The file's bytes (of the entries that were accepted; see [`add`](Self::add)).
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for (t, bytes) in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += bytes.len().next_multiple_of(align) as u64;
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for (_, bytes) in &self.tensors {
            out.extend_from_slice(bytes);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        out
    }

    /// Write the file to `path` atomically (a temporary sibling, fsynced, renamed over `path`);
    /// an error if [`add`](Self::add) refused an entry.
    pub fn write(&self, path: &Path) -> Result<()> {
        if !self.refused.is_empty() {
            return Err(format_err(
                path,
                format!(
                    "not written: {}; give values GGUF can store",
                    self.refused.join("; ")
                ),
            ));
        }
        crate::fsio::write_atomic(path, &self.to_bytes())
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A value without its type id (arrays write their element type and count).
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array has no element to take the type from: u8, as any would do.
            let ety = items.first().map_or(0, Value::type_id);
            out.extend_from_slice(&ety.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}
