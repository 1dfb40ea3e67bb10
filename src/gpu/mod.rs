//! The GPU context: adapter choice, device limits and features, error handling, buffers and
//! recorded dispatches.
//!
//! Everything that talks to wgpu lives here; kernels (in [`crate::kernels`]) only describe what
//! to bind and how many workgroups to launch.

pub mod autotune;
mod dispatch;
mod readback;
mod tensor;

pub use dispatch::{Access, Dispatch, Kernel, Recording, ShaderFile};
pub use readback::ReadbackRing;
pub use tensor::{Dtype, Tensor, VIEW_ALIGN};

pub(crate) use dispatch::groups_1d;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Environment variable naming the adapter to use (a case-insensitive substring of its name, or
/// its index in `lora-wgpu devices`). wgpu itself reads `WGPU_BACKEND`.
pub const ENV_ADAPTER: &str = "WGPU_ADAPTER_NAME";
/// Environment variable that hides the optional SHADER_F16 / SUBGROUP features from this crate
/// even where the adapter offers them (set it to `1`), so the fallback kernels can be tested.
pub const ENV_NO_OPTIONAL_FEATURES: &str = "LORA_WGPU_NO_OPTIONAL_FEATURES";
/// Environment variable that asks for the cooperative-matrix matmul (set it to `1`): see
/// [`GpuOptions::cooperative_matrix`].
pub const ENV_COOPMAT: &str = "LORA_WGPU_COOPMAT";

/// How to choose the adapter. `Default` reads nothing; [`GpuOptions::from_env`] reads the
/// environment.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Restrict to these backends (`None`: every backend wgpu was built with, or `WGPU_BACKEND`).
    pub backends: Option<wgpu::Backends>,
    /// Adapter name substring (case-insensitive) or index into the enumerated list.
    pub adapter: Option<String>,
    /// Never enable SHADER_F16 / SUBGROUP, even when offered.
    pub no_optional_features: bool,
    /// Autotune matmul variants per shape class (`None`: on for GPUs, off for CPU adapters;
    /// `LORA_WGPU_AUTOTUNE` overrides).
    pub autotune: Option<bool>,
    /// Where the autotune table is kept (`None`: the user's cache dir, `lora-wgpu/`).
    pub cache_dir: Option<std::path::PathBuf>,
    /// Run matmuls on cooperative matrices (tensor cores, simdgroup matrices) with operands
    /// rounded to f16 and f32 accumulation ([`MatmulVariant::Coop`]). Enables wgpu's
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX`; [`Gpu::new`] fails on an adapter that does not offer
    /// f16 x f16 + f32 fragments of 8x8 or 16x16.
    pub cooperative_matrix: bool,
}

impl GpuOptions {
    /// Options from `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `LORA_WGPU_NO_OPTIONAL_FEATURES` and
    /// `LORA_WGPU_COOPMAT`.
    pub fn from_env() -> Self {
        let flag = |name| {
            let v = std::env::var(name).unwrap_or_default();
            !matches!(v.as_str(), "" | "0" | "false")
        };
        Self {
            backends: wgpu::Backends::from_env(),
            adapter: std::env::var(ENV_ADAPTER).ok().filter(|s| !s.is_empty()),
            no_optional_features: flag(ENV_NO_OPTIONAL_FEATURES),
            autotune: None,
            cache_dir: None,
            cooperative_matrix: flag(ENV_COOPMAT),
        }
    }

    /// Parse a backend name as the CLI accepts it: vulkan, metal, dx12, gl (or a comma list).
    pub fn parse_backends(names: &str) -> Result<wgpu::Backends> {
        let mut out = wgpu::Backends::empty();
        for name in names.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out |= match name.to_ascii_lowercase().as_str() {
                "vulkan" | "vk" => wgpu::Backends::VULKAN,
                "metal" | "mtl" => wgpu::Backends::METAL,
                "dx12" | "d3d12" => wgpu::Backends::DX12,
                "gl" | "gles" | "opengl" => wgpu::Backends::GL,
                other => {
                    return Err(Error::invalid(
                        "backend",
                        other,
                        "expected one of vulkan, metal, dx12, gl",
                    ))
                }
            };
        }
        if out.is_empty() {
            return Err(Error::invalid(
                "backend",
                names,
                "name at least one backend",
            ));
        }
        Ok(out)
    }
}

/// One adapter as wgpu reports it, with what matters for choosing it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Position in the enumeration (usable as `--device INDEX`).
    pub index: usize,
    /// wgpu's adapter info (name, backend, device type, driver).
    pub info: wgpu::AdapterInfo,
    /// Whether the adapter can run compute shaders at all.
    pub compute: bool,
    /// The adapter's limits.
    pub limits: wgpu::Limits,
    /// The adapter's features.
    pub features: wgpu::Features,
    /// Cooperative-matrix (tensor-core) configurations the adapter offers, if any.
    pub cooperative_matrix: Vec<wgpu::CooperativeMatrixProperties>,
}

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

/// Which matmul implementation suits an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Workgroup-memory tiled kernel, 16x16 threads each computing a `tm x tn` block
    /// (`tm = tn = 1` is the textbook kernel). Right for real GPUs.
    Tiled {
        /// Rows per thread (1..=4).
        tm: u32,
        /// Columns per thread (1..=4).
        tn: u32,
    },
    /// Register-tiled kernel with no workgroup memory and no barriers: each thread computes a
    /// 4x4 block. Right for CPU adapters (lavapipe), where barriers are very expensive.
    Register,
    /// Operands packed into rgba32float storage textures, then a register-blocked kernel that
    /// reads them with texture loads: right for CPU adapters, where (on Mesa's llvmpipe) a
    /// storage-buffer load costs a loop over the SIMD lanes and a texture load a vector
    /// gather. Where subgroups are exactly 8 wide (SUBGROUP enabled: lavapipe on Vulkan) the
    /// kernel shares op(B) through the subgroup (`matmul_image_sg`, about 1.3–1.4x faster on
    /// Mesa 22). Shapes it cannot take (a batch, a side over the texture size limit) run
    /// [`MatmulVariant::Register`].
    Image,
    /// Cooperative matrices (tensor cores): operands rounded to f16, products accumulated in
    /// f32; four subgroups per 128x128 block of C (64x64 with 8x8 fragments), each owning a
    /// quarter. Needs [`GpuOptions::cooperative_matrix`] (and `SHADER_F16`, `SUBGROUP`).
    Coop,
    /// The autotuned winner for each shape class (see [`autotune`]).
    Auto,
}

type ErrorSlot = Arc<Mutex<Option<String>>>;

/// A wgpu device and queue, with the pipeline cache and error plumbing this crate needs.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: GpuFeatures,
    pipelines: Mutex<HashMap<dispatch::PipelineKey, Arc<wgpu::ComputePipeline>>>,
    layouts: Mutex<HashMap<Kernel, Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)>>>,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    /// Packed-operand textures of the image kernels, by (slot, width, height). Reused by
    /// every dispatch of that size: the queue runs them in order and wgpu orders each pack
    /// after the previous reader.
    pack_textures: Mutex<HashMap<(u8, u32, u32), wgpu::TextureView>>,
    autotune: autotune::Autotune,
    uncaptured: ErrorSlot,
    lost: ErrorSlot,
    /// A 16-byte buffer bound where a kernel's optional input (e.g. a bias) is absent.
    pub(crate) dummy: Tensor,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("device_type", &self.info.device_type)
            .field("features", &self.features)
            .finish()
    }
}

fn device_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u8 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    }
}

/// The fragment side the cooperative-matrix matmul would use on an adapter: 16 where f16 x f16
/// + f32 fragments of 16x16x16 are offered (tensor cores), else 8 (8x8x8), else none.
fn coop_fragment_side(
    offered: wgpu::Features,
    configs: &[wgpu::CooperativeMatrixProperties],
) -> Option<u32> {
    use wgpu::CooperativeScalarType::{F16, F32};
    if !offered.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        return None;
    }
    [16, 8].into_iter().find(|&side| {
        configs.iter().any(|c| {
            (c.m_size, c.n_size, c.k_size) == (side, side, side)
                && c.ab_type == F16
                && c.cr_type == F32
        })
    })
}

fn instance(backends: Option<wgpu::Backends>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(b) = backends {
        desc.backends = b;
    }
    wgpu::Instance::new(desc)
}

fn enumerate(inst: &wgpu::Instance) -> Vec<(wgpu::Adapter, AdapterSummary)> {
    let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .into_iter()
        .enumerate()
        .map(|(index, a)| {
            let compute = a
                .get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
            let summary = AdapterSummary {
                index,
                info: a.get_info(),
                compute,
                limits: a.limits(),
                features: a.features(),
                cooperative_matrix: a.cooperative_matrix_properties(),
            };
            (a, summary)
        })
        .collect()
}

/// Every adapter wgpu finds under `options` (backend filter applied, name filter not), and the
/// index of the one [`Gpu::new`] would choose (or why none would be).
pub fn list_adapters(options: &GpuOptions) -> (Vec<AdapterSummary>, Result<usize>) {
    let all = enumerate(&instance(options.backends));
    let chosen = choose(&all, options).map(|(_, s)| s.index);
    (all.into_iter().map(|(_, s)| s).collect(), chosen)
}

fn choose<'a>(
    all: &'a [(wgpu::Adapter, AdapterSummary)],
    options: &GpuOptions,
) -> Result<&'a (wgpu::Adapter, AdapterSummary)> {
    let names = || {
        all.iter()
            .map(|(_, s)| format!("{}: {} ({:?})", s.index, s.info.name, s.info.backend))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let candidates: Vec<_> = all.iter().filter(|(_, s)| s.compute).collect();
    let filtered: Vec<_> = match &options.adapter {
        None => candidates,
        Some(want) => {
            let by_index = want.parse::<usize>().ok();
            let want_lc = want.to_lowercase();
            let hit: Vec<_> = candidates
                .into_iter()
                .filter(|(_, s)| {
                    by_index == Some(s.index) || s.info.name.to_lowercase().contains(&want_lc)
                })
                .collect();
            if hit.is_empty() {
                return Err(Error::NoAdapter {
                    detail: format!(
                        ": no compute-capable adapter matches '{want}' (found: {})",
                        if all.is_empty() {
                            "none".into()
                        } else {
                            names()
                        }
                    ),
                });
            }
            hit
        }
    };
    filtered
        .into_iter()
        .min_by_key(|(_, s)| {
            (
                device_rank(s.info.device_type),
                backend_rank(s.info.backend),
                s.index,
            )
        })
        .ok_or_else(|| {
            if all.is_empty() {
                Error::NoAdapter {
                    detail: match options.backends {
                        Some(b) => format!(" for backends {b:?}"),
                        None => String::new(),
                    },
                }
            } else {
                Error::AdapterNotFound {
                    wanted: "compute shader support".into(),
                    found: names(),
                }
            }
        })
}

impl Gpu {
    /// Open the best adapter: discrete > integrated > virtual > CPU, native backends before GL,
    /// unless `options` names one. Requests the adapter's own limits (wgpu's defaults are
    /// WebGPU's low ones) and enables SHADER_F16 / SUBGROUP where offered.
    pub fn new(options: &GpuOptions) -> Result<Gpu> {
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
        Ok(Gpu {
            device,
            queue,
            info: summary.info.clone(),
            limits,
            features,
            pipelines: Mutex::default(),
            layouts: Mutex::default(),
            modules: Mutex::default(),
            pack_textures: Mutex::default(),
            uncaptured,
            lost,
            dummy,
            autotune: autotune::Autotune::new(
                &summary.info,
                options.autotune,
                options.cache_dir.clone(),
            ),
        })
    }

    /// The adapter in use.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Optional features enabled on the device.
    pub fn features(&self) -> GpuFeatures {
        self.features
    }

    /// The matmul variant to record with: `LORA_WGPU_MATMUL` when set, else
    /// [`MatmulVariant::Coop`] when [`GpuOptions::cooperative_matrix`] enabled it, else
    /// [`MatmulVariant::Auto`] when autotuning is on (GPUs, by default), else
    /// [`Gpu::device_default_matmul`]: [`MatmulVariant::Register`] on CPU adapters,
    /// the 128x128 block-tile kernel (`Tiled { tm: 8, tn: 8 }`) on discrete GPUs, and the
    /// 4x4-per-thread [`MatmulVariant::Tiled`] kernel on other GPUs.
    ///
    /// On an NVIDIA H200 (Vulkan, `benches/report.rs`) the 128x128 kernel ran 1.4-2.6x faster
    /// than 4x4 at every GPT-2 shape with M = 4096 and at 4096³ (24 TFLOP/s), and GPT-2 training
    /// at B=4 T=1024 9% faster (at T=128 the two were within 3%); 4x4 was faster only at
    /// M = 512 with N = 768 (too few 128x128 blocks to fill the GPU). Integrated GPUs are
    /// unmeasured and keep the 4x4 kernel.
    ///
    /// The environment variable `LORA_WGPU_MATMUL` overrides the choice (for benchmarks and
    /// comparisons): `image`, `register`, `tiled1x1`, `tiled4x4` or `tiled8x8` (any `tiledMxN`
    /// that [`crate::kernels::matmul::matmul`] accepts), or `coop` (which needs
    /// [`GpuOptions::cooperative_matrix`]). An unrecognised value is ignored.
    pub fn default_matmul(&self) -> MatmulVariant {
        let forced = std::env::var("LORA_WGPU_MATMUL")
            .ok()
            .and_then(|v| autotune::parse(&v));
        match forced {
            Some(v) => v,
            None if self.features.coop_matrix.is_some() => MatmulVariant::Coop,
            None if self.autotune.enabled => MatmulVariant::Auto,
            None => self.device_default_matmul(),
        }
    }

    /// The untuned choice by device type: 8x8 block tiles on discrete GPUs, 4x4 tiles on other
    /// GPUs, the image kernel on CPU adapters.
    pub fn device_default_matmul(&self) -> MatmulVariant {
        match self.info.device_type {
            wgpu::DeviceType::Cpu => MatmulVariant::Image,
            wgpu::DeviceType::DiscreteGpu => MatmulVariant::Tiled { tm: 8, tn: 8 },
            _ => MatmulVariant::Tiled { tm: 4, tn: 4 },
        }
    }

    /// Whether a `width` x `height`-texel packed-operand texture is within the adapter's
    /// limits (callers fall back to buffer kernels when not).
    pub(crate) fn pack_texture_fits(&self, width: u32, height: u32) -> bool {
        let max = self.limits.max_texture_dimension_2d;
        (1..=max).contains(&width) && (1..=max).contains(&height)
    }

    /// The pooled storage texture that holds packed operand `slot` (0: A, 1: B of a matmul;
    /// 2 and up: other kernels' inputs) of `width` x `height` texels, made on first use.
    /// The size must fit ([`Gpu::pack_texture_fits`]).
    pub(crate) fn pack_texture(
        &self,
        slot: u8,
        width: u32,
        height: u32,
    ) -> Result<wgpu::TextureView> {
        let mut pool = self.pack_textures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = pool.get(&(slot, width, height)) {
            return Ok(v.clone());
        }
        let view = self.new_pack_texture(width, height)?;
        pool.insert((slot, width, height), view.clone());
        Ok(view)
    }

    /// A new `width` x `height` rgba32float storage texture for packed matmul operands.
    pub(crate) fn new_pack_texture(&self, width: u32, height: u32) -> Result<wgpu::TextureView> {
        let name = "packed matmul operand";
        self.scoped(name, u64::from(width) * u64::from(height) * 16, || {
            self.device
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
                    format: dispatch::PACK_FORMAT,
                    usage: wgpu::TextureUsages::STORAGE_BINDING,
                    view_formats: &[],
                })
                .create_view(&Default::default())
        })
    }

    /// Surface any error wgpu reported asynchronously (validation, device loss).
    pub fn check(&self, context: &str) -> Result<()> {
        if let Some(reason) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(Error::DeviceLost { reason });
        }
        if let Some(message) = self
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
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                context: "waiting for the GPU".into(),
                message: e.to_string(),
            })?;
        self.check("GPU work")
    }

    fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        let l = &self.limits;
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
    fn scoped<T>(&self, what: &str, bytes: u64, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
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
            Tensor::new_raw(&self.device, name, shape, bytes)
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
        if !self.features.f16 {
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
            Tensor::new_raw(&self.device, name, shape, bytes).with_dtype(Dtype::F16)
        })?;
        if !half.is_empty() {
            self.queue
                .write_buffer(t.buffer(), t.offset(), bytemuck::cast_slice(&half));
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
            self.queue
                .write_buffer(t.buffer(), t.offset(), bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Fill `t` with zeros (ordered before the next submitted work).
    pub fn clear(&self, t: &Tensor) -> Result<()> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.clear_buffer(t.buffer(), t.offset(), Some(t.bytes()));
        self.queue.submit([enc.finish()]);
        self.check("clear")
    }

    /// Copy `t` back to the host as f32, widening f16 tensors (waits for the GPU).
    pub fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        let words = self.download_words(t)?;
        Ok(match t.dtype() {
            Dtype::F32 => bytemuck::cast_slice(&words).to_vec(),
            Dtype::F16 => bytemuck::cast_slice::<u32, half::f16>(&words)[..t.len()]
                .iter()
                .map(|h| h.to_f32())
                .collect(),
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
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(t.buffer(), t.offset(), &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
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
