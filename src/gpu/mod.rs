//! The GPU context: adapter choice, device limits and features, error handling, buffers and
//! tensors, the pipeline cache, recorded dispatches, readback, the per-adapter timing table and
//! the texture pool.
//!
//! Everything that talks to wgpu lives here, and nothing here knows a kernel: a kernel is a
//! [`KernelDef`] declared beside its launcher in [`crate::kernels`], and the caches key on that
//! definition (module name, entry point) and the override constants.
//!
//! A [`Gpu`] is a cheap handle (an `Arc`) to one device, plus the kernel layer's choice of
//! variants for it. That choice is kernel knowledge, so this module stores it as an opaque
//! value: [`crate::kernels::Variants`] resolves it (from the device type, the features and
//! [`GpuOptions::variants`]) in [`Gpu::new`], which is therefore defined in
//! `kernels/variants.rs`; `Gpu::open` here makes the device alone.

mod adapter;
mod buffers;
mod dispatch;
mod kernel;
mod pipeline;
mod readback;
mod tensor;
mod textures;
mod timing;

pub use adapter::{
    list_adapters, AdapterSummary, GpuOptions, ENV_ADAPTER, ENV_AUTOTUNE, ENV_COOPMAT,
    ENV_NO_OPTIONAL_FEATURES, ENV_VARIANT_PREFIX,
};
pub use dispatch::{Dispatch, Recording};
pub use kernel::{Access, KernelDef, ShaderDef, Source, TEXTURE_FORMAT};
pub use readback::ReadbackRing;
pub use tensor::{Dtype, Tensor, VIEW_ALIGN};
pub use timing::Timings;

pub(crate) use dispatch::groups_1d;

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use adapter::{choose, coop_fragment_side, enumerate, instance};

/// Optional features this crate may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuFeatures {
    /// `SHADER_F16` is enabled on the device.
    pub f16: bool,
    /// `SUBGROUP` is enabled on the device.
    pub subgroup: bool,
    /// Side (8 or 16) of the f16 x f16 + f32 cooperative-matrix fragments the matmul uses, when
    /// [`GpuOptions::cooperative_matrix`] enabled them.
    pub coop_matrix: Option<u32>,
}

type ErrorSlot = Arc<Mutex<Option<String>>>;

/// What every handle to one device shares.
struct Shared {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: GpuFeatures,
    pipelines: Mutex<HashMap<pipeline::PipelineKey, Arc<wgpu::ComputePipeline>>>,
    layouts:
        Mutex<HashMap<pipeline::KernelKey, Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)>>>,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    /// Pooled storage textures by (slot, width, height) (see [`Gpu::pooled_texture`]).
    textures: Mutex<HashMap<(u8, u32, u32), wgpu::TextureView>>,
    timings: Timings,
    uncaptured: ErrorSlot,
    lost: ErrorSlot,
    /// A 16-byte buffer bound where a kernel's optional input (e.g. a bias) is absent.
    dummy: Tensor,
}

/// A wgpu device and queue, with the pipeline cache and error plumbing this crate needs, and
/// the kernel variants chosen for it ([`Gpu::variants`]).
///
/// Cloning is cheap and shares the device, its caches and its timing table;
/// [`Gpu::with_variants`] makes a handle to the same device that records other variants.
#[derive(Clone)]
pub struct Gpu {
    shared: Arc<Shared>,
    /// The kernel layer's choices ([`crate::kernels::Variants`]), opaque here.
    choices: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = &self.shared.info;
        f.debug_struct("Gpu")
            .field("adapter", &info.name)
            .field("backend", &info.backend)
            .field("device_type", &info.device_type)
            .field("features", &self.shared.features)
            .finish()
    }
}

impl Gpu {
    /// Open the best adapter: discrete > integrated > virtual > CPU, native backends before GL,
    /// unless `options` names one. Requests the adapter's own limits (wgpu's defaults are
    /// WebGPU's low ones) and enables SHADER_F16 / SUBGROUP where offered. The handle carries
    /// no kernel choices yet: [`Gpu::new`] adds them.
    pub(crate) fn open(options: &GpuOptions) -> Result<Gpu> {
        let inst = instance(options.backends);
        let all = enumerate(&inst);
        let (adapter, summary) = choose(&all, options)?;
        let offered = adapter.features();
        let mut features = GpuFeatures::default();
        let mut required = wgpu::Features::empty();
        if !options.no_optional_features {
            if offered.contains(wgpu::Features::SHADER_F16) {
                required |= wgpu::Features::SHADER_F16;
                features.f16 = true;
            }
            if offered.contains(wgpu::Features::SUBGROUP) {
                required |= wgpu::Features::SUBGROUP;
                features.subgroup = true;
            }
        }
        let mut experimental = wgpu::ExperimentalFeatures::disabled();
        if options.cooperative_matrix {
            let side = coop_fragment_side(offered, &summary.cooperative_matrix)
                .filter(|_| features.f16 && features.subgroup && summary.info.subgroup_max_size > 0)
                .ok_or_else(|| {
                    Error::invalid(
                        "cooperative matrix",
                        format!("{} ({:?})", summary.info.name, summary.info.backend),
                        "an adapter offering f16 x f16 + f32 cooperative-matrix fragments of 8x8 \
                         or 16x16 (wgpu's EXPERIMENTAL_COOPERATIVE_MATRIX; `lora-wgpu devices` \
                         marks them coopmat), SHADER_F16 and SUBGROUP, with optional features not hidden; \
                         run without the cooperative-matrix option (--coopmat, \
                         LORA_WGPU_COOPMAT)",
                    )
                })?;
            required |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            features.coop_matrix = Some(side);
            // SAFETY: wgpu asks callers of experimental features to accept that its
            // implementation may have bugs. Only the cooperative-matrix matmul uses it, and only
            // when the user asked for it; tests check it against the CPU reference.
            experimental = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("lora-wgpu"),
            required_features: required,
            required_limits: limits.clone(),
            experimental_features: experimental,
            ..Default::default()
        }))
        .map_err(|source| Error::RequestDevice {
            adapter: summary.info.name.clone(),
            source,
        })?;

        let uncaptured: ErrorSlot = Arc::default();
        let slot = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            s.get_or_insert_with(|| e.to_string());
        }));
        let lost: ErrorSlot = Arc::default();
        let slot = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
                s.get_or_insert_with(|| format!("{reason:?}: {msg}"));
            }
        });
        let dummy = Tensor::new_raw(&device, "dummy", &[4], 16);
        let timings = Timings::new(&summary.info, options.autotune, options.cache_dir.clone());
        let shared = Shared {
            device,
            queue,
            info: summary.info.clone(),
            limits,
            features,
            pipelines: Mutex::default(),
            layouts: Mutex::default(),
            modules: Mutex::default(),
            textures: Mutex::default(),
            timings,
            uncaptured,
            lost,
            dummy,
        };
        Ok(Gpu {
            shared: Arc::new(shared),
            choices: Arc::new(()),
        })
    }

    /// The adapter in use.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.shared.info
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.shared.limits
    }

    /// Optional features enabled on the device.
    pub fn features(&self) -> GpuFeatures {
        self.shared.features
    }

    /// The device's timing table (autotuned kernel variants).
    pub fn timings(&self) -> &Timings {
        &self.shared.timings
    }

    /// A 16-byte tensor to bind where a kernel's optional input (e.g. a bias) is absent.
    pub(crate) fn dummy(&self) -> &Tensor {
        &self.shared.dummy
    }

    /// The kernel layer's choices stored in this handle, if they are a `T`.
    pub(crate) fn choices<T: Any>(&self) -> Option<&T> {
        self.choices.downcast_ref()
    }

    /// A handle to the same device carrying `choices` instead.
    pub(crate) fn with_choices<T: Any + Send + Sync>(&self, choices: T) -> Gpu {
        Gpu {
            shared: self.shared.clone(),
            choices: Arc::new(choices),
        }
    }

    /// Surface any error wgpu reported asynchronously (validation, device loss).
    pub fn check(&self, context: &str) -> Result<()> {
        if let Some(reason) = self
            .shared
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(Error::DeviceLost { reason });
        }
        if let Some(message) = self
            .shared
            .uncaptured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(Error::Gpu {
                context: context.to_string(),
                message,
            });
        }
        Ok(())
    }

    /// Block until every submitted command has finished, then report any GPU error.
    pub fn sync(&self) -> Result<()> {
        self.shared
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                context: "waiting for the GPU".into(),
                message: e.to_string(),
            })?;
        self.check("GPU work")
    }
}
