//! The wgpu side: device, buffers and textures, pipelines, running a candidate, reading C.

use wgpu::util::DeviceExt;

use crate::Ops;

pub struct Ctx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
}

/// One candidate, ready to run: encodes all its dispatches into a pass.
pub struct Prepared {
    pub pipeline: wgpu::ComputePipeline,
    /// (bind group index into `groups`, dynamic offsets, workgroup counts)
    pub dispatches: Vec<(usize, Vec<u32>, [u32; 3])>,
    pub groups: Vec<wgpu::BindGroup>,
    pub c: wgpu::Buffer,
    /// Some kernels accumulate into C (K chunks): clear it before each run.
    pub clear_c: bool,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Src {
    Tex,
    Storage,
    /// read-only storage textures (image loads)
    Image,
}

pub fn tex(ctx: &Ctx, d: &[f32], w: u32, h: u32) -> wgpu::TextureView {
    let size = wgpu::Extent3d {
        width: w,
        height: h,
        depth_or_array_layers: 1,
    };
    let t = ctx.device.create_texture(&wgpu::TextureDescriptor {
        label: None,
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING
            | wgpu::TextureUsages::STORAGE_BINDING
            | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    ctx.queue.write_texture(
        wgpu::TexelCopyTextureInfo {
            texture: &t,
            mip_level: 0,
            origin: wgpu::Origin3d::ZERO,
            aspect: wgpu::TextureAspect::All,
        },
        bytemuck::cast_slice(d),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(w * 16),
            rows_per_image: Some(h),
        },
        size,
    );
    t.create_view(&Default::default())
}

pub fn buf(ctx: &Ctx, d: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: d,
            usage,
        })
}

pub fn out_buf(ctx: &Ctx, m: u32, n: u32) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (m * n * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

pub fn module(ctx: &Ctx, src: &str, trusted: bool) -> wgpu::ShaderModule {
    let desc = wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(src.into()),
    };
    if trusted {
        // SAFETY: every kernel here reads and writes in bounds for the shapes it is given
        // (checked by the harness: exact multiples of the block sizes).
        unsafe {
            ctx.device
                .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        }
    } else {
        ctx.device.create_shader_module(desc)
    }
}

pub fn pipeline(
    ctx: &Ctx,
    m: &wgpu::ShaderModule,
    layout: Option<&wgpu::PipelineLayout>,
) -> wgpu::ComputePipeline {
    ctx.device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout,
            module: m,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        })
}

pub fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// Compile `code` and bind it to `ops` (params, A and B as textures or storage buffers, a
/// fresh C): one dispatch of `grid`.
pub fn prepare(
    ctx: &Ctx,
    ops: &Ops,
    code: &str,
    trusted: bool,
    src: Src,
    grid: [u32; 3],
) -> Prepared {
    if std::env::var_os("DUMP_WGSL").is_some() {
        println!("{code}");
    }
    let md = module(ctx, code, trusted);
    let pipe = pipeline(ctx, &md, None);
    let cb = out_buf(ctx, ops.m, ops.n);
    let (a, b) = match src {
        Src::Tex | Src::Image => (
            wgpu::BindingResource::TextureView(&ops.at),
            wgpu::BindingResource::TextureView(&ops.bt),
        ),
        Src::Storage => (ops.ab.as_entire_binding(), ops.bb.as_entire_binding()),
    };
    let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[
            entry(0, ops.params.as_entire_binding()),
            entry(1, a),
            entry(2, b),
            entry(3, cb.as_entire_binding()),
        ],
    });
    Prepared {
        pipeline: pipe,
        dispatches: vec![(0, vec![], grid)],
        groups: vec![bg],
        c: cb,
        clear_c: false,
    }
}

pub fn run_once(ctx: &Ctx, p: &Prepared) {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    if p.clear_c {
        enc.clear_buffer(&p.c, 0, None);
    }
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&p.pipeline);
        for (g, offs, [x, y, z]) in &p.dispatches {
            pass.set_bind_group(0, &p.groups[*g], offs);
            pass.dispatch_workgroups(*x, *y, *z);
        }
    }
    ctx.queue.submit([enc.finish()]);
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
}

pub fn read(ctx: &Ctx, b: &wgpu::Buffer) -> Vec<f32> {
    let st = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: b.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(b, 0, &st, 0, b.size());
    ctx.queue.submit([enc.finish()]);
    st.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let v = bytemuck::cast_slice::<u8, f32>(&st.slice(..).get_mapped_range().unwrap()).to_vec();
    v
}
