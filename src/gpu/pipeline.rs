//! The shader-module, bind-group-layout and pipeline caches, keyed by a kernel's definition
//! (module name, entry point) and its override constants.

use std::sync::Arc;

use super::kernel::{Access, KernelDef, ShaderDef, TEXTURE_FORMAT};
use super::Gpu;
use crate::error::{Error, Result};

/// Module name and entry point: a kernel's identity in the caches.
pub(crate) type KernelKey = (&'static str, &'static str);

fn kernel_key(kernel: &KernelDef) -> KernelKey {
    (kernel.shader.name, kernel.entry)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    kernel: KernelKey,
    constants: Vec<(&'static str, u64)>,
}

/// Annotate WGSL with line numbers for error messages.
fn numbered(src: &str) -> String {
    src.lines()
        .enumerate()
        .map(|(i, l)| format!("{:4} | {l}\n", i + 1))
        .collect()
}

impl Gpu {
    fn module(&self, shader: &ShaderDef) -> Result<Arc<wgpu::ShaderModule>> {
        let shared = &self.shared;
        let mut modules = shared.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(shader.name) {
            return Ok(m.clone());
        }
        let src = shader.source();
        let scope = shared
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(src.as_str().into()),
        };
        // Every loop in shaders/ is a counted `for` over bounds from uniforms or constants
        // with a non-zero step, so none can run forever: naga's loop bounding (a counter
        // checked on every iteration of every loop) is off for all modules. It stops
        // llvmpipe from unrolling the fixed-length inner loops over a head, so private arrays
        // indexed by their counters went to scratch memory (attention several times slower on
        // lavapipe). Bounds checks stay, except in trusted modules.
        let checks = if shader.trusted {
            wgpu::ShaderRuntimeChecks::unchecked()
        } else {
            wgpu::ShaderRuntimeChecks {
                force_loop_bounding: false,
                ..wgpu::ShaderRuntimeChecks::checked()
            }
        };
        // SAFETY: no loop in any module can run forever (above); the kernels of a trusted
        // module clamp or guard every index themselves and their launchers check every buffer
        // length (see `ShaderDef::trusted`); the driver's robust buffer access still applies.
        let module = unsafe { shared.device.create_shader_module_trusted(desc, checks) };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                kernel: shader.name.into(),
                message: e.to_string(),
                source_text: numbered(&src),
            });
        }
        let module = Arc::new(module);
        modules.insert(shader.name, module.clone());
        Ok(module)
    }

    pub(crate) fn layout(
        &self,
        kernel: &KernelDef,
    ) -> Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)> {
        let shared = &self.shared;
        let mut layouts = shared.layouts.lock().unwrap_or_else(|p| p.into_inner());
        layouts
            .entry(kernel_key(kernel))
            .or_insert_with(|| {
                let buffer = |binding, ty| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                };
                let mut entries = vec![buffer(0, wgpu::BufferBindingType::Uniform)];
                for &(binding, access) in kernel.bindings {
                    let read_only = access == Access::Read;
                    entries.push(buffer(
                        binding,
                        wgpu::BufferBindingType::Storage { read_only },
                    ));
                }
                for &(binding, access) in kernel.textures {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::StorageTexture {
                            access: match access {
                                Access::Read => wgpu::StorageTextureAccess::ReadOnly,
                                Access::ReadWrite => wgpu::StorageTextureAccess::WriteOnly,
                            },
                            format: TEXTURE_FORMAT,
                            view_dimension: wgpu::TextureViewDimension::D2,
                        },
                        count: None,
                    });
                }
                let bgl =
                    shared
                        .device
                        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                            label: Some(kernel.entry),
                            entries: &entries,
                        });
                let pl = shared
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(kernel.entry),
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                Arc::new((bgl, pl))
            })
            .clone()
    }

    /// The compute pipeline for `kernel` with `constants`, built once and cached.
    pub(crate) fn pipeline(
        &self,
        kernel: &KernelDef,
        constants: &[(&'static str, f64)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let shared = &self.shared;
        let key = PipelineKey {
            kernel: kernel_key(kernel),
            constants: constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
        };
        if let Some(p) = shared
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let module = self.module(kernel.shader)?;
        let layout = self.layout(kernel);
        let scope = shared
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = shared
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: Some(&layout.1),
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                kernel: format!("{} with constants {constants:?}", kernel.name()),
                message: e.to_string(),
                source_text: numbered(&kernel.shader.source()),
            });
        }
        let pipeline = Arc::new(pipeline);
        shared
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }
}
