//! A GPU buffer of 32-bit (or, for frozen weights, 16-bit or quantized) elements with a shape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::quant::GgmlType;

/// Element type of a [`Tensor`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 32-bit words: f32, or u32 where a kernel says so.
    #[default]
    F32,
    /// IEEE half precision: frozen weights stored at half size where the adapter offers
    /// `SHADER_F16` (see [`Gpu::upload_f16`](crate::gpu::Gpu::upload_f16)).
    F16,
    /// A frozen weight in one of ggml's quantized block formats, repacked for the GPU
    /// ([`crate::kernels::qmatmul`]): rows of the tensor's last dimension, in blocks.
    Quant(GgmlType),
}

impl Dtype {
    /// Bytes that `len` elements take on the GPU.
    pub fn bytes(self, len: usize) -> usize {
        match self {
            Dtype::F32 => 4 * len,
            Dtype::F16 => 2 * len,
            Dtype::Quant(ty) => crate::kernels::qmatmul::packed_bytes(ty, len),
        }
    }

    /// Bytes per element of a plain (unquantized) type; `None` for a quantized one.
    pub fn size(self) -> Option<usize> {
        match self {
            Dtype::F32 => Some(4),
            Dtype::F16 => Some(2),
            Dtype::Quant(_) => None,
        }
    }
}

/// A storage buffer of `len()` elements of [`Tensor::dtype`] (32-bit, f32 unless said
/// otherwise), row-major `shape`.
///
/// Cloning is cheap: it shares the same GPU buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    /// Byte offset of element 0 inside `buffer` (non-zero for views).
    offset: u64,
    shape: Vec<usize>,
    len: usize,
    dtype: Dtype,
    name: String,
    /// Textures derived from this tensor's contents (a kernel's packed copy of a frozen
    /// weight), by a key their maker chooses; shared by clones, dropped with the last one.
    /// Views start with none.
    derived: Arc<Mutex<HashMap<String, wgpu::TextureView>>>,
}

/// Views start at multiples of this many bytes: WebGPU's largest allowed
/// `min_storage_buffer_offset_alignment`, so a layout is valid on every adapter.
pub const VIEW_ALIGN: u64 = 256;

impl Tensor {
    pub(crate) fn new_raw(device: &wgpu::Device, name: &str, shape: &[usize], bytes: u64) -> Self {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Tensor {
            buffer,
            offset: 0,
            shape: shape.to_vec(),
            len: shape.iter().product(),
            dtype: Dtype::F32,
            name: name.to_string(),
            derived: Arc::default(),
        }
    }

    /// The texture kept under `key` by [`Tensor::keep_derived`], if any.
    pub(crate) fn derived(&self, key: &str) -> Option<wgpu::TextureView> {
        let map = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }

    /// Keep `view`, a texture computed from this tensor's contents (which its maker promises
    /// do not change), under `key` for as long as the tensor lives.
    pub(crate) fn keep_derived(&self, key: String, view: wgpu::TextureView) {
        let mut map = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, view);
    }

    /// This tensor with its elements read as `dtype` (the buffer must hold them).
    pub(crate) fn with_dtype(mut self, dtype: Dtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// A view of `shape` starting `start` elements into this tensor, sharing its buffer.
    /// `start` times the element size must be a multiple of [`VIEW_ALIGN`].
    pub fn view(&self, name: &str, start: usize, shape: &[usize]) -> crate::Result<Tensor> {
        let len: usize = shape.iter().product();
        let Some(esize) = self.dtype.size().map(|s| s as u64) else {
            return Err(crate::Error::shape(
                "view",
                format!("{name}: {} is quantized; it has no views", self.name),
            ));
        };
        let offset = self.offset + start as u64 * esize;
        if start + len > self.len || !offset.is_multiple_of(VIEW_ALIGN) {
            return Err(crate::Error::shape(
                "view",
                format!(
                    "{name}: elements {start}..{} of {} ({} elements); views must lie inside it and start at a multiple of {} elements",
                    start + len,
                    self.name,
                    self.len,
                    VIEW_ALIGN / esize
                ),
            ));
        }
        Ok(Tensor {
            buffer: self.buffer.clone(),
            offset,
            shape: shape.to_vec(),
            len,
            dtype: self.dtype,
            name: name.to_string(),
            derived: Arc::default(),
        })
    }

    /// Byte offset of the first element inside [`Tensor::buffer`].
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The bytes this tensor covers, for binding: whole buffer or the view's range.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            // Whole words: an odd-length f16 tensor's buffer is padded to them.
            size: wgpu::BufferSize::new(
                self.dtype.bytes(self.len.max(1)).next_multiple_of(4) as u64
            ),
        })
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The name given at allocation (used in error messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Size in bytes of the elements this tensor covers.
    pub fn bytes(&self) -> u64 {
        self.dtype.bytes(self.len) as u64
    }

    /// The wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}
