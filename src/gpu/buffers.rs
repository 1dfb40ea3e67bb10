//! Buffers: allocation inside error scopes, uploads (f32, f16, u32), writes, clears and
//! blocking downloads.

use super::{Dtype, Gpu, Tensor};
use crate::error::{Error, Result};

impl Gpu {
    fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        let l = &self.shared.limits;
        if bytes > l.max_buffer_size {
            return Err(Error::BufferTooLarge {
                what: what.into(),
                bytes,
                limit: l.max_buffer_size,
                kind: "buffer",
            });
        }
        if bytes > l.max_storage_buffer_binding_size {
            return Err(Error::BufferTooLarge {
                what: what.into(),
                bytes,
                limit: l.max_storage_buffer_binding_size,
                kind: "storage binding",
            });
        }
        Ok(())
    }

    /// Run `f` (which creates a resource) inside out-of-memory and validation error scopes.
    pub(crate) fn scoped<T>(&self, what: &str, bytes: u64, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self
            .shared
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self
            .shared
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let val = pollster::block_on(val.pop());
        let oom = pollster::block_on(oom.pop());
        if oom.is_some() {
            return Err(Error::OutOfMemory {
                what: what.into(),
                bytes,
            });
        }
        if let Some(e) = val {
            return Err(Error::Gpu {
                context: format!("allocating {what}"),
                message: e.to_string(),
            });
        }
        Ok(out)
    }

    /// A zero-filled f32 tensor of `shape`.
    pub fn zeros(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        let bytes = (len.max(1) * 4) as u64;
        self.check_size(name, bytes)?;
        self.scoped(name, bytes, || {
            Tensor::new_raw(&self.shared.device, name, shape, bytes)
        })
    }

    /// A tensor of `shape` holding `data` (f32, row-major).
    pub fn upload(&self, name: &str, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.upload_words("upload", name, data, shape)
    }

    /// A tensor of `shape` holding `data` rounded to half precision ([`Dtype::F16`]): half the
    /// memory, for frozen weights that kernels read as f16. Needs `SHADER_F16`
    /// ([`Gpu::features`]); values beyond f16's range (±65504) are refused.
    pub fn upload_f16(&self, name: &str, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "upload_f16";
        if !self.shared.features.f16 {
            return Err(Error::invalid(
                "f16 weights",
                name,
                "this adapter does not offer SHADER_F16 (or LORA_WGPU_NO_OPTIONAL_FEATURES hides it); keep f32 weights",
            ));
        }
        let len: usize = shape.iter().product();
        if len != data.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "{name}: shape {shape:?} holds {len} values but {} were given",
                    data.len()
                ),
            ));
        }
        let mut half: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
        if let Some(i) = (0..half.len()).find(|&i| half[i].is_infinite() && data[i].is_finite()) {
            return Err(Error::invalid(
                "f16 weights",
                name,
                format!(
                    "element {i} = {} is beyond f16's range; keep f32 weights",
                    data[i]
                ),
            ));
        }
        // Whole 32-bit words: wgpu writes and sizes buffers in multiples of 4 bytes.
        if half.len() % 2 == 1 {
            half.push(half::f16::ZERO);
        }
        let bytes = (half.len().max(2) * 2) as u64;
        self.check_size(name, bytes)?;
        let t = self.scoped(name, bytes, || {
            Tensor::new_raw(&self.shared.device, name, shape, bytes).with_dtype(Dtype::F16)
        })?;
        if !half.is_empty() {
            self.shared
                .queue
                .write_buffer(t.buffer(), t.offset(), bytemuck::cast_slice(&half));
        }
        Ok(t)
    }

    /// A tensor of `shape` whose elements are `dtype`, holding `words` as they are (a quantized
    /// weight packed by [`crate::kernels::qmatmul::pack`]).
    pub(crate) fn upload_packed(
        &self,
        name: &str,
        words: &[u32],
        shape: &[usize],
        dtype: Dtype,
    ) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        let bytes = dtype.bytes(len).next_multiple_of(4);
        if bytes != 4 * words.len() {
            return Err(Error::shape(
                "upload_packed",
                format!(
                    "{name}: shape {shape:?} of {dtype:?} takes {bytes} bytes but {} were given",
                    4 * words.len()
                ),
            ));
        }
        let bytes = bytes.max(4) as u64;
        self.check_size(name, bytes)?;
        let t = self.scoped(name, bytes, || {
            Tensor::new_raw(&self.shared.device, name, shape, bytes).with_dtype(dtype)
        })?;
        if !words.is_empty() {
            self.shared
                .queue
                .write_buffer(t.buffer(), t.offset(), bytemuck::cast_slice(words));
        }
        Ok(t)
    }

    /// A tensor of `shape` holding raw 32-bit words (token ids and other integers).
    pub fn upload_u32(&self, name: &str, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        self.upload_words("upload_u32", name, data, shape)
    }

    /// Overwrite all of `t` with `data`. Ordered before the next submitted work.
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        self.write_words("write", t, data)
    }

    /// Overwrite all of `t` with raw 32-bit words. Ordered before the next submitted work.
    pub fn write_u32(&self, t: &Tensor, data: &[u32]) -> Result<()> {
        self.write_words("write_u32", t, data)
    }

    fn upload_words<T: bytemuck::Pod>(
        &self,
        op: &'static str,
        name: &str,
        data: &[T],
        shape: &[usize],
    ) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        if len != data.len() {
            return Err(Error::shape(
                op,
                format!(
                    "{name}: shape {shape:?} holds {len} values but {} were given",
                    data.len()
                ),
            ));
        }
        let t = self.zeros(name, shape)?;
        self.write_words(op, &t, data)?;
        Ok(t)
    }

    fn write_words<T: bytemuck::Pod>(
        &self,
        op: &'static str,
        t: &Tensor,
        data: &[T],
    ) -> Result<()> {
        if t.len() != data.len() {
            return Err(Error::shape(
                op,
                format!("{} has {} values, {} given", t.name(), t.len(), data.len()),
            ));
        }
        if t.dtype() != Dtype::F32 {
            return Err(Error::shape(
                op,
                format!(
                    "{} holds {:?} elements; only 32-bit tensors are written in place",
                    t.name(),
                    t.dtype()
                ),
            ));
        }
        if !data.is_empty() {
            self.shared
                .queue
                .write_buffer(t.buffer(), t.offset(), bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Fill `t` with zeros (ordered before the next submitted work).
    pub fn clear(&self, t: &Tensor) -> Result<()> {
        let mut enc = self
            .shared
            .device
            .create_command_encoder(&Default::default());
        enc.clear_buffer(t.buffer(), t.offset(), Some(t.bytes()));
        self.shared.queue.submit([enc.finish()]);
        self.check("clear")
    }

    /// Copy `t` back to the host as f32, widening f16 tensors and dequantizing quantized ones
    /// (waits for the GPU).
    pub fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        let words = self.download_words(t)?;
        Ok(match t.dtype() {
            Dtype::F32 => bytemuck::cast_slice(&words).to_vec(),
            Dtype::F16 => bytemuck::cast_slice::<u32, half::f16>(&words)[..t.len()]
                .iter()
                .map(|h| h.to_f32())
                .collect(),
            Dtype::Quant(ty) => {
                let blocks = crate::kernels::qmatmul::unpack(ty, &words, t.len())?;
                crate::quant::dequantize(ty, &blocks, t.len())?
            }
        })
    }

    /// Copy `t` back to the host as raw 32-bit words (waits for the GPU).
    pub fn download_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        self.download_words(t)
    }

    /// The tensor's bytes as 32-bit words (an f16 tensor's padded to whole words).
    fn download_words(&self, t: &Tensor) -> Result<Vec<u32>> {
        let bytes = t.bytes().next_multiple_of(4);
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.scoped("readback staging buffer", bytes, || {
            self.shared.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut enc = self
            .shared
            .device
            .create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(t.buffer(), t.offset(), &staging, 0, bytes);
        self.shared.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.sync()?;
        let mapped = rx.recv().map_err(|e| Error::Gpu {
            context: format!("reading back {}", t.name()),
            message: e.to_string(),
        })?;
        mapped.map_err(|e| Error::Gpu {
            context: format!("reading back {}", t.name()),
            message: e.to_string(),
        })?;
        let words = {
            let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu {
                context: format!("reading back {}", t.name()),
                message: e.to_string(),
            })?;
            bytemuck::cast_slice::<u8, u32>(&view).to_vec()
        };
        staging.unmap();
        Ok(words)
    }
}
