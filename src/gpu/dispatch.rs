//! Recorded dispatches, replayed in one compute pass, and recordings of many.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::kernel::KernelDef;
use super::{Dtype, Gpu, Tensor};
use crate::error::{Error, Result};

/// Split `n` workgroups over x and y so that neither exceeds the 65,535 per-dimension limit.
/// Kernels recover the linear index as `wid.x + wid.y * num_workgroups.x`.
pub(crate) fn groups_1d(n: u32) -> [u32; 3] {
    const MAX: u32 = 65_535;
    if n <= MAX {
        [n, 1, 1]
    } else {
        [MAX, n.div_ceil(MAX), 1]
    }
}

impl Gpu {
    /// Build a dispatch of `kernel`: its uniform `params`, the tensors in the order of
    /// [`KernelDef::bindings`], and the workgroup counts. Nothing runs until the dispatch is
    /// passed to [`Gpu::run`] or a [`Recording`].
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &'static KernelDef,
        constants: &[(&'static str, f64)],
        params: &P,
        tensors: &[&Tensor],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        self.dispatch_with_textures(kernel, constants, params, tensors, &[], groups)
    }

    /// [`Gpu::dispatch`] for kernels that also bind storage textures, given in the order of
    /// [`KernelDef::textures`].
    pub(crate) fn dispatch_with_textures<P: bytemuck::Pod>(
        &self,
        kernel: &'static KernelDef,
        constants: &[(&'static str, f64)],
        params: &P,
        tensors: &[&Tensor],
        textures: &[&wgpu::TextureView],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        let spec = kernel.bindings;
        if std::mem::size_of::<P>() != kernel.params_size {
            return Err(Error::shape(
                "dispatch",
                format!(
                    "{} takes {}-byte parameters, {} given",
                    kernel.name(),
                    kernel.params_size,
                    std::mem::size_of::<P>()
                ),
            ));
        }
        if kernel.textures.len() != textures.len() {
            return Err(Error::shape(
                "dispatch",
                format!(
                    "{} takes {} textures, {} given",
                    kernel.name(),
                    kernel.textures.len(),
                    textures.len()
                ),
            ));
        }
        if spec.len() != tensors.len() {
            return Err(Error::shape(
                "dispatch",
                format!(
                    "{} takes {} buffers, {} given",
                    kernel.name(),
                    spec.len(),
                    tensors.len()
                ),
            ));
        }
        let max = self.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::shape(
                "dispatch",
                format!(
                    "{} needs {groups:?} workgroups, over the adapter's {max} per dimension; use a smaller shape",
                    kernel.name()
                ),
            ));
        }
        for (&(binding, _), t) in spec.iter().zip(tensors) {
            let want = if kernel.f16_binding == Some(binding) {
                Dtype::F16
            } else if kernel.quant_binding == Some(binding) {
                match t.dtype() {
                    q @ Dtype::Quant(_) => q,
                    _ => Dtype::Quant(crate::quant::GgmlType::Q8_0),
                }
            } else {
                Dtype::F32
            };
            if t.dtype() != want {
                return Err(Error::shape(
                    "dispatch",
                    format!(
                        "{} reads {} as {want:?}, but it holds {:?} elements",
                        kernel.name(),
                        t.name(),
                        t.dtype()
                    ),
                ));
            }
        }
        let pipeline = self.pipeline(kernel, constants)?;
        let layout = self.layout(kernel);
        let params = self
            .shared
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(kernel.entry),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params.as_entire_binding(),
        }];
        for (&(binding, _), t) in spec.iter().zip(tensors) {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: t.binding(),
            });
        }
        for (&(binding, _), view) in kernel.textures.iter().zip(textures) {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::TextureView(view),
            });
        }
        let scope = self
            .shared
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = self
            .shared
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry),
                layout: &layout.0,
                entries: &entries,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                context: format!("binding buffers for {}", kernel.name()),
                message: e.to_string(),
            });
        }
        Ok(Dispatch {
            kernel,
            pipeline,
            bind_group,
            groups,
            params,
            before: Vec::new(),
        })
    }

    /// Encode `dispatches` in order into one compute pass and submit them once. Does not wait.
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let mut enc = self
            .shared
            .device
            .create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.encode(&mut pass);
            }
        }
        self.shared.queue.submit([enc.finish()]);
        self.check("submitting kernels")
    }
}

/// One recorded kernel launch: pipeline, bind group (with its own uniform parameters) and
/// workgroup counts. Built once, replayed any number of times.
#[derive(Debug)]
pub struct Dispatch {
    kernel: &'static KernelDef,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
    params: wgpu::Buffer,
    /// Dispatches that run first, in order (the image matmul's operand packing).
    before: Vec<Dispatch>,
}

impl Dispatch {
    /// The kernel this dispatch launches.
    pub fn kernel(&self) -> &'static KernelDef {
        self.kernel
    }

    /// Workgroup counts.
    pub fn groups(&self) -> [u32; 3] {
        self.groups
    }

    /// Replace the uniform parameters (e.g. AdamW's step and learning rate). The write is
    /// ordered before the next submit.
    pub(crate) fn set_params<P: bytemuck::Pod>(&self, gpu: &Gpu, params: &P) {
        gpu.shared
            .queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(params));
    }

    /// This dispatch, preceded by `before` whenever it runs.
    pub(crate) fn after(mut self, before: Vec<Dispatch>) -> Self {
        self.before = before;
        self
    }

    fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.before {
            d.encode(pass);
        }
        let [x, y, z] = self.groups;
        if x == 0 || y == 0 || z == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

enum Op {
    Dispatch(Arc<Dispatch>),
    Clear(Tensor),
}

/// An ordered list of buffer clears and dispatches, recorded once and replayed with one
/// command encoder and one submit per [`Recording::run`]. Consecutive dispatches share one
/// compute pass.
#[derive(Default)]
pub struct Recording {
    ops: Vec<Op>,
}

impl Recording {
    /// An empty recording.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a dispatch.
    pub fn push(&mut self, d: Dispatch) {
        self.ops.push(Op::Dispatch(Arc::new(d)));
    }

    /// Append a dispatch that something else also holds (e.g. to update its parameters).
    pub fn push_shared(&mut self, d: Arc<Dispatch>) {
        self.ops.push(Op::Dispatch(d));
    }

    /// Append a zero-fill of `t`.
    pub fn clear(&mut self, t: &Tensor) {
        self.ops.push(Op::Clear(t.clone()));
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        let ops = &self.ops;
        let mut i = 0;
        while i < ops.len() {
            match &ops[i] {
                Op::Clear(t) => {
                    enc.clear_buffer(t.buffer(), t.offset(), Some(t.bytes()));
                    i += 1;
                }
                Op::Dispatch(_) => {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    while let Some(Op::Dispatch(d)) = ops.get(i) {
                        d.encode(&mut pass);
                        i += 1;
                    }
                }
            }
        }
    }

    /// Encode everything into one command buffer and submit it. Does not wait for the GPU.
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        Self::run_all(gpu, &[self])
    }

    /// Encode several recordings, in order, into one command buffer and submit it once.
    pub fn run_all(gpu: &Gpu, recordings: &[&Recording]) -> Result<()> {
        Self::run_all_then_copy(gpu, recordings, None)
    }

    /// Like [`Recording::run_all`], then copy `src` into the start of `dst` (a staging buffer
    /// for a readback that must not stall the next submit) in the same command buffer.
    pub fn run_all_then_copy(
        gpu: &Gpu,
        recordings: &[&Recording],
        copy: Option<(&Tensor, &wgpu::Buffer)>,
    ) -> Result<()> {
        let mut enc = gpu
            .shared
            .device
            .create_command_encoder(&Default::default());
        for r in recordings {
            r.encode(&mut enc);
        }
        if let Some((src, dst)) = copy {
            enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst, 0, src.bytes());
        }
        gpu.shared.queue.submit([enc.finish()]);
        gpu.check("running a recording")
    }
}
