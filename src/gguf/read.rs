//! The GGUF parser: every field read through a cursor that refuses to run past the end, every
//! count checked against the bytes left before anything is allocated.

use std::collections::HashMap;
use std::path::Path;

use super::{format_err, TensorInfo, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::error::Result;
use crate::quant::{names, GgmlType, ALL_TYPES};

/// Arrays nested deeper than this are refused (real files nest at most one level; the limit
/// keeps a hostile file from overflowing the stack).
const MAX_ARRAY_DEPTH: usize = 16;

/// What was parsed, for [`super::GgufFile`].
pub(super) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub keys: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub by_name: HashMap<String, usize>,
    pub alignment: usize,
    pub data_start: usize,
}

/// Advice for a file whose structure is wrong.
const DAMAGED: &str = "the file is damaged or was not written by a GGUF writer; download or \
                       convert it again";

/// A read position in the file's bytes.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

/// Context for messages, built only when an error is reported.
type What<'w> = &'w dyn Fn() -> String;

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn err(&self, detail: String) -> crate::Error {
        format_err(self.path, detail)
    }

    fn take(&mut self, n: usize, what: What) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.err(format!(
                "the file ends inside {} (at byte {}: {n} bytes needed, {} left): it is \
                 truncated; download or copy it again",
                what(),
                self.pos,
                self.left()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: What) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().unwrap())
    }

    fn u32(&mut self, what: What) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items taking at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, min_size: usize, items: &str, what: What) -> Result<usize> {
        let n = self.u64(what)?;
        let most = self.left() / min_size;
        match usize::try_from(n) {
            Ok(n) if n <= most => Ok(n),
            _ => Err(self.err(format!(
                "{} claims {n} {items}, but only {} bytes are left in the file (room for at \
                 most {most}): the file is truncated or damaged; download or convert it again",
                what(),
                self.left(),
            ))),
        }
    }

    fn string(&mut self, what: What) -> Result<String> {
        let start = self.pos;
        let len = self.count(1, "bytes", &|| format!("the length of {}", what()))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            self.err(format!(
                "{} (at byte {start}) is not valid UTF-8 ({e}): {DAMAGED}",
                what()
            ))
        })
    }

    /// A value of GGUF type `ty`.
    fn value(&mut self, ty: u32, depth: usize, what: What) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(self.err(format!(
                        "{} is a bool stored as {b}, not 0 or 1: {DAMAGED}",
                        what()
                    )))
                }
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "{} nests arrays more than {MAX_ARRAY_DEPTH} deep: {DAMAGED}",
                        what()
                    )));
                }
                let ety = self.u32(&|| format!("the element type of {}", what()))?;
                let min_size = min_value_size(ety).ok_or_else(|| {
                    self.err(format!(
                        "{} is an array of unknown value type {ety} (GGUF's types are 0 to 12): \
                         {DAMAGED}",
                        what()
                    ))
                })?;
                let n = self.count(min_size, "elements", what)?;
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    items.push(
                        self.value(ety, depth + 1, &|| format!("element {i} of {}", what()))?,
                    );
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.err(format!(
                    "{} has unknown value type {other} (GGUF's types are 0 to 12): {DAMAGED}",
                    what()
                )))
            }
        })
    }
}

/// The fewest bytes a value of GGUF type `ty` takes, or `None` for an unknown type.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// The fewest bytes one metadata entry takes: key length, value type, a one-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// The fewest bytes one tensor info takes: name length, dim count, one dim, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;

/// Parse and check the whole file (see the module documentation for what is checked).
pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed> {
    let mut c = Cursor {
        path,
        bytes,
        pos: 0,
    };
    if bytes.len() < 4 || &bytes[..4] != MAGIC {
        let start: String = bytes
            .iter()
            .take(4)
            .map(|&b| {
                if b.is_ascii_graphic() {
                    (b as char).to_string()
                } else {
                    format!("\\x{b:02x}")
                }
            })
            .collect();
        return Err(c.err(format!(
            "not a GGUF file: it starts with \"{start}\", not \"GGUF\" (a {}-byte file); give a \
             .gguf model file",
            bytes.len()
        )));
    }
    c.pos = 4;
    let version = c.u32(&|| "the header's version".into())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(c.err(
                "GGUF version 1 is not supported (only versions 2 and 3): convert the model \
                 again with a current llama.cpp"
                    .into(),
            ))
        }
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(c.err(format!(
                "a big-endian GGUF file (version {}) is not supported: convert it to \
                 little-endian (gguf-py's gguf_convert_endian.py)",
                v.swap_bytes()
            )))
        }
        v => {
            return Err(c.err(format!(
                "unsupported GGUF version {v} (only versions 2 and 3 are read): convert the \
                 model with a llama.cpp release that writes version 3"
            )))
        }
    }
    let n_tensors = c.u64(&|| "the header's tensor count".into())?;
    let n_kv = c.count(MIN_KV_BYTES, "metadata entries", &|| {
        "the header's metadata count".into()
    })?;
    // Checked once the metadata is read, against the bytes left then.
    let check_tensor_count = |c: &Cursor| match usize::try_from(n_tensors) {
        Ok(n) if n <= c.left() / MIN_TENSOR_INFO_BYTES => Ok(n),
        _ => Err(c.err(format!(
            "the header claims {n_tensors} tensors, but only {} bytes are left after the \
             metadata (room for at most {}): the file is truncated or damaged; download or \
             convert it again",
            c.left(),
            c.left() / MIN_TENSOR_INFO_BYTES
        ))),
    };

    let mut metadata = Vec::with_capacity(n_kv);
    let mut keys = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&|| format!("the name of metadata entry {i}"))?;
        let what = || format!("the value of metadata key `{key}`");
        let ty = c.u32(&|| format!("the value type of metadata key `{key}`"))?;
        let value = c.value(ty, 0, &what)?;
        if let Some(first) = keys.insert(key.clone(), i) {
            return Err(c.err(format!(
                "metadata key `{key}` appears twice (entries {first} and {i}): {DAMAGED}"
            )));
        }
        metadata.push((key, value));
    }

    let alignment = match keys.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64().and_then(|a| usize::try_from(a).ok()) {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(c.err(format!(
                    "metadata key `{ALIGNMENT_KEY}` is {v:?}; it must be a power of two \
                     (usually 32): {DAMAGED}"
                )))
            }
        },
    };

    let n_tensors = check_tensor_count(&c)?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut by_name = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("the name of tensor {i}"))?;
        let t = tensor_info(&mut c, name, alignment)?;
        if let Some(&j) = by_name.get(&t.name) {
            return Err(c.err(format!(
                "tensor `{}` appears twice (tensors {j} and {i}): {DAMAGED}",
                t.name
            )));
        }
        by_name.insert(t.name.clone(), i);
        tensors.push(t);
    }

    let data_start = c.pos.div_ceil(alignment).checked_mul(alignment);
    let data_start = match data_start {
        Some(s) if tensors.is_empty() || s <= bytes.len() => s,
        _ => {
            return Err(c.err(format!(
                "the data section would start at byte {} (the tensor infos end at {}, aligned \
                 to {alignment}), past the end of the {}-byte file: it is truncated; download or \
                 copy it again",
                data_start.map_or("(overflow)".into(), |s| s.to_string()),
                c.pos,
                bytes.len()
            )))
        }
    };
    check_data(path, &tensors, data_start, bytes.len())?;
    Ok(Parsed {
        version,
        metadata,
        keys,
        tensors,
        by_name,
        alignment,
        data_start,
    })
}

/// The rest of one tensor info after its name: dims, type and offset, each checked.
fn tensor_info(c: &mut Cursor, name: String, alignment: usize) -> Result<TensorInfo> {
    let n_dims = c.u32(&|| format!("the dim count of tensor `{name}`"))?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(c.err(format!(
            "tensor `{name}` has {n_dims} dimensions; ggml tensors have 1 to {MAX_DIMS}: \
             {DAMAGED}"
        )));
    }
    let mut shape = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        let dim = c.u64(&|| format!("dim {d} of tensor `{name}`"))?;
        let dim = usize::try_from(dim)
            .ok()
            .filter(|&d| d <= i64::MAX as usize);
        shape.push(dim.ok_or_else(|| {
            c.err(format!(
                "tensor `{name}`'s dim {d} is too large for this machine: {DAMAGED}"
            ))
        })?);
    }
    // ggml's ne is innermost first; numpy order is outermost first.
    shape.reverse();
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            c.err(format!(
                "tensor `{name}`'s shape {shape:?} has more elements than this machine can \
                 address: {DAMAGED}"
            ))
        })?;
    let id = c.u32(&|| format!("the type of tensor `{name}`"))?;
    let ty = GgmlType::from_id(id).ok_or_else(|| {
        let which = GgmlType::other_name(id)
            .map_or_else(|| "an unknown type".to_string(), |n| format!("ggml's {n}"));
        c.err(format!(
            "tensor `{name}` has type id {id} ({which}), which we cannot read; supported types: \
             {}. Convert or re-quantize the model to one of them (llama.cpp's llama-quantize)",
            names(&ALL_TYPES)
        ))
    })?;
    let inner = shape[shape.len() - 1];
    if inner % ty.block_len() != 0 {
        return Err(c.err(format!(
            "tensor `{name}` ({ty}, shape {shape:?}): its innermost dim {inner} is not a \
             multiple of {ty}'s block of {} elements: {DAMAGED}",
            ty.block_len()
        )));
    }
    if ty.bytes_for(n).is_none() {
        return Err(c.err(format!(
            "tensor `{name}` ({ty}, shape {shape:?}) has more bytes than this machine can \
             address: {DAMAGED}"
        )));
    }
    let offset = c.u64(&|| format!("the data offset of tensor `{name}`"))?;
    if offset % alignment as u64 != 0 {
        return Err(c.err(format!(
            "tensor `{name}`'s data offset {offset} is not a multiple of the file's alignment \
             {alignment} (`{ALIGNMENT_KEY}`): {DAMAGED}"
        )));
    }
    Ok(TensorInfo {
        name,
        shape,
        ty,
        offset,
    })
}

/// Every tensor's bytes lie inside the file, and no two tensors overlap.
fn check_data(path: &Path, tensors: &[TensorInfo], data_start: usize, len: usize) -> Result<()> {
    let room = (len - data_start.min(len)) as u64;
    for t in tensors {
        let size = t.n_bytes() as u64;
        if t.offset > room || size > room - t.offset {
            return Err(format_err(
                path,
                format!(
                    "tensor `{}` ({}, shape {:?}: {size} bytes at data offset {}) runs past the \
                     end of the file ({room} bytes of data): the file is truncated, or the \
                     tensor's byte size disagrees with its shape and type; download or convert \
                     it again",
                    t.name, t.ty, t.shape, t.offset
                ),
            ));
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes() > 0).collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        let a_end = a.offset + a.n_bytes() as u64;
        if a_end > b.offset {
            return Err(format_err(
                path,
                format!(
                    "tensors `{}` (data bytes {}..{a_end}) and `{}` (from {}) overlap: {DAMAGED}",
                    a.name, a.offset, b.name, b.offset
                ),
            ));
        }
    }
    Ok(())
}
