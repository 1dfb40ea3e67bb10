//! A GPU buffer of 32-bit elements with a shape.

/// A storage buffer of `len()` 32-bit elements (f32 unless said otherwise), row-major `shape`.
///
/// Cloning is cheap: it shares the same GPU buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    shape: Vec<usize>,
    len: usize,
    name: String,
}

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
            shape: shape.to_vec(),
            len: shape.iter().product(),
            name: name.to_string(),
        }
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

    /// Size of the underlying buffer in bytes.
    pub fn bytes(&self) -> u64 {
        self.buffer.size()
    }

    /// The wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}
