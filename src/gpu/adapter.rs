//! Adapter enumeration and choice, and the options that steer it.

use std::collections::BTreeMap;

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
/// Environment variable that turns autotuning on (`1`) or off (`0`): see
/// [`GpuOptions::autotune`].
pub const ENV_AUTOTUNE: &str = "LORA_WGPU_AUTOTUNE";
/// Prefix of the environment variables that choose a kernel variant: `LORA_WGPU_<NAME>=value`
/// becomes [`GpuOptions::variants`]`[name] = value` (e.g. `LORA_WGPU_MATMUL=image`).
pub const ENV_VARIANT_PREFIX: &str = "LORA_WGPU_";

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
    /// Measure kernel variants per shape class and keep the winners per adapter (autotuning;
    /// `None`: on for GPUs, off for CPU adapters). See [`crate::gpu::Timings`].
    pub autotune: Option<bool>,
    /// Where the autotune table is kept (`None`: the user's cache dir, `lora-wgpu/`).
    pub cache_dir: Option<std::path::PathBuf>,
    /// Run matmuls on cooperative matrices (tensor cores, simdgroup matrices) with operands
    /// rounded to f16 and f32 accumulation
    /// ([`MatmulVariant::Coop`](crate::kernels::matmul::MatmulVariant::Coop)). Enables wgpu's
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX`; [`Gpu::new`](crate::gpu::Gpu::new) fails on an adapter
    /// that does not offer f16 x f16 + f32 fragments of 8x8 or 16x16.
    pub cooperative_matrix: bool,
    /// Kernel variants asked for, by kernel family (lowercase, e.g. `matmul` -> `image`). This
    /// module does not interpret them: the kernel layer reads the names it knows when the
    /// [`Gpu`](crate::gpu::Gpu) is made ([`crate::kernels::Variants`]) and ignores the rest,
    /// and values it does not recognise.
    pub variants: BTreeMap<String, String>,
}

impl GpuOptions {
    /// Options from `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `LORA_WGPU_NO_OPTIONAL_FEATURES`,
    /// `LORA_WGPU_COOPMAT`, `LORA_WGPU_AUTOTUNE` (`0`/`false`/`off`, `1`/`true`/`on`) and
    /// the other `LORA_WGPU_<NAME>` variables as [`GpuOptions::variants`]. The library reads
    /// its `LORA_WGPU_*` variables here and nowhere else.
    pub fn from_env() -> Self {
        let flag = |name| {
            let v = std::env::var(name).unwrap_or_default();
            !matches!(v.as_str(), "" | "0" | "false")
        };
        let autotune = match std::env::var(ENV_AUTOTUNE).ok().as_deref().map(str::trim) {
            Some("0") | Some("false") | Some("off") => Some(false),
            Some("1") | Some("true") | Some("on") => Some(true),
            _ => None,
        };
        let own = [ENV_NO_OPTIONAL_FEATURES, ENV_COOPMAT, ENV_AUTOTUNE];
        let variants = std::env::vars()
            .filter(|(k, _)| !own.contains(&k.as_str()))
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(ENV_VARIANT_PREFIX)?;
                Some((name.to_ascii_lowercase(), v))
            })
            .collect();
        Self {
            backends: wgpu::Backends::from_env(),
            adapter: std::env::var(ENV_ADAPTER).ok().filter(|s| !s.is_empty()),
            no_optional_features: flag(ENV_NO_OPTIONAL_FEATURES),
            autotune,
            cache_dir: None,
            cooperative_matrix: flag(ENV_COOPMAT),
            variants,
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
pub(super) fn coop_fragment_side(
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

pub(super) fn instance(backends: Option<wgpu::Backends>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(b) = backends {
        desc.backends = b;
    }
    wgpu::Instance::new(desc)
}

pub(super) fn enumerate(inst: &wgpu::Instance) -> Vec<(wgpu::Adapter, AdapterSummary)> {
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
/// index of the one [`Gpu::new`](crate::gpu::Gpu::new) would choose (or why none would be).
pub fn list_adapters(options: &GpuOptions) -> (Vec<AdapterSummary>, Result<usize>) {
    let all = enumerate(&instance(options.backends));
    let chosen = choose(&all, options).map(|(_, s)| s.index);
    (all.into_iter().map(|(_, s)| s).collect(), chosen)
}

pub(super) fn choose<'a>(
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
