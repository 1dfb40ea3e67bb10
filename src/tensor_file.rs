//! Tensors of safetensors files as f32: reading f32 / f16 / bf16 data, and an f32 view to write.
//! Shared by the model's weights, adapters, optimizer checkpoints and merged models.

use std::path::Path;

use safetensors::Dtype;

use crate::error::{Error, Result};

/// The values of tensor `name` of the file at `path` (for messages), stored as `dtype`, as f32.
pub(crate) fn to_f32(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    let bad = |what: &str| Error::Checkpoint {
        path: path.to_path_buf(),
        detail: format!("tensor {name}: {what}"),
    };
    match dtype {
        Dtype::F32 => Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::F16 => Ok(bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        Dtype::BF16 => Ok(bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        other => Err(bad(&format!(
            "dtype {other:?} is not supported (use f32, f16 or bf16)"
        ))),
    }
}

/// One f32 tensor, viewed as little-endian bytes for safetensors without a copy on
/// little-endian machines.
pub(crate) struct F32View<'a> {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: &'a [f32],
}

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            std::borrow::Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}
