//! Which kernel of each family a [`Gpu`] records: chosen once, when the `Gpu` is made, from the
//! device type, its features and [`GpuOptions::variants`] (`LORA_WGPU_MATMUL`,
//! `LORA_WGPU_LORA`, `LORA_WGPU_ATTENTION`, `LORA_WGPU_LAYERNORM`), and read by every launcher
//! from the `Gpu` it is given. Launchers never read the environment.
//!
//! `gpu/` may not know kernels, so it keeps this value as an opaque slot of the `Gpu` handle;
//! [`Gpu::new`] is defined here because it opens the device (`Gpu::open`, in `gpu/`) and
//! then resolves the variants, some of which depend on that device (its type, its features,
//! whether it autotunes). To compare variants, make a handle to the same device with other
//! ones: `gpu.with_variants(Variants { matmul: MatmulVariant::Image, ..gpu.variants() })`.

use super::attention::AttentionVariant;
use super::layernorm::LayernormVariant;
use super::lora::LoraVariant;
use super::matmul::MatmulVariant;
use crate::error::Result;
use crate::gpu::{Gpu, GpuOptions};

/// The kernel variant of each family a [`Gpu`] records with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variants {
    /// The matmul ([`MatmulVariant::resolve`]).
    pub matmul: MatmulVariant,
    /// The fused LoRA kernels ([`LoraVariant::resolve`]).
    pub lora: LoraVariant,
    /// Attention ([`AttentionVariant::resolve`]).
    pub attention: AttentionVariant,
    /// LayerNorm and RMSNorm, which spread rows alike ([`LayernormVariant::resolve`]).
    pub layernorm: LayernormVariant,
}

impl Variants {
    /// The variants for `gpu`'s device, with the choices in `options`' `variants` (by family
    /// name: `matmul`, `lora`, `attention`, `layernorm`) where they name one.
    pub fn resolve(gpu: &Gpu, options: &GpuOptions) -> Self {
        let forced = |family: &str| options.variants.get(family).map(String::as_str);
        Variants {
            matmul: MatmulVariant::resolve(gpu, forced("matmul")),
            lora: LoraVariant::resolve(gpu, forced("lora")),
            attention: AttentionVariant::resolve(gpu, forced("attention")),
            layernorm: LayernormVariant::resolve(gpu, forced("layernorm")),
        }
    }
}

impl Gpu {
    /// Open the best adapter: discrete > integrated > virtual > CPU, native backends before GL,
    /// unless `options` names one. Requests the adapter's own limits (wgpu's defaults are
    /// WebGPU's low ones) and enables SHADER_F16 / SUBGROUP where offered. Then chooses the
    /// kernel [`Variants`] for the device ([`Variants::resolve`]).
    pub fn new(options: &GpuOptions) -> Result<Gpu> {
        let gpu = Gpu::open(options)?;
        let variants = Variants::resolve(&gpu, options);
        Ok(gpu.with_choices(variants))
    }

    /// The kernel variants this handle records with.
    pub fn variants(&self) -> Variants {
        match self.choices::<Variants>() {
            Some(v) => *v,
            // Only a handle from `Gpu::open` that nothing has given variants yet.
            None => Variants::resolve(self, &GpuOptions::default()),
        }
    }

    /// A handle to the same device (sharing its buffers, caches and timing table) that records
    /// with `variants`: for tests and benchmarks that compare kernels.
    pub fn with_variants(&self, variants: Variants) -> Gpu {
        self.with_choices(variants)
    }
}
