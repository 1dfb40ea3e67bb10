//! The texture pool: storage textures (packed kernel operands) that every dispatch of one size
//! and slot shares, and textures made for one owner.

use super::kernel::TEXTURE_FORMAT;
use super::Gpu;
use crate::error::Result;

impl Gpu {
    /// Whether a `width` x `height`-texel storage texture is within the adapter's limits
    /// (callers fall back to buffer kernels when not).
    pub(crate) fn texture_fits(&self, width: u32, height: u32) -> bool {
        let max = self.shared.limits.max_texture_dimension_2d;
        (1..=max).contains(&width) && (1..=max).contains(&height)
    }

    /// The pooled storage texture of `slot` (the caller's choice of what it holds: kernels that
    /// could be recorded into one pass each use their own slots) of `width` x `height` texels,
    /// made on first use. Every dispatch of that slot and size shares it: the queue runs them
    /// in order and wgpu orders each write after the previous reader. The size must fit
    /// ([`Gpu::texture_fits`]).
    pub(crate) fn pooled_texture(
        &self,
        slot: u8,
        width: u32,
        height: u32,
    ) -> Result<wgpu::TextureView> {
        let mut pool = self
            .shared
            .textures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(v) = pool.get(&(slot, width, height)) {
            return Ok(v.clone());
        }
        let view = self.new_texture(width, height)?;
        pool.insert((slot, width, height), view.clone());
        Ok(view)
    }

    /// A new `width` x `height` storage texture of [`TEXTURE_FORMAT`], outside the pool.
    pub(crate) fn new_texture(&self, width: u32, height: u32) -> Result<wgpu::TextureView> {
        let name = "packed operand";
        self.scoped(name, u64::from(width) * u64::from(height) * 16, || {
            self.shared
                .device
                .create_texture(&wgpu::TextureDescriptor {
                    label: Some(name),
                    size: wgpu::Extent3d {
                        width,
                        height,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: TEXTURE_FORMAT,
                    usage: wgpu::TextureUsages::STORAGE_BINDING,
                    view_formats: &[],
                })
                .create_view(&Default::default())
        })
    }
}
