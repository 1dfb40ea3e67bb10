//! Probe: on lavapipe, are operand loads through textures faster than through storage buffers?
//!
//! `cargo bench --bench texture_probe` times one register-blocked matmul kernel (8x8 outputs per
//! thread, vec4 operands) at 512x768x768 three ways: both operands from storage buffers, both
//! from rgba32float textures (`textureLoad`), and A from storage with B from a texture. Mesa 22.3's
//! llvmpipe scalarises storage-buffer loads inside loops per lane; its texel fetch path is
//! vectorised. A research probe for the speed issue, not a kernel the library uses (yet).

use std::time::Instant;

const COMMON: &str = r#"
struct P { m: u32, n: u32, k: u32, pad: u32 }
@group(0) @binding(0) var<uniform> p: P;
"#;

const STORAGE: &str = r#"
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
fn la(r: u32, kk: u32) -> vec4<f32> { return a4[r * (p.k / 4u) + kk]; }
fn lb(k: u32, c: u32) -> vec4<f32> { return b4[k * (p.n / 4u) + c]; }
"#;

const TEXTURE: &str = r#"
@group(0) @binding(1) var at: texture_2d<f32>;
@group(0) @binding(2) var bt: texture_2d<f32>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
fn la(r: u32, kk: u32) -> vec4<f32> { return textureLoad(at, vec2<u32>(kk, r), 0); }
fn lb(k: u32, c: u32) -> vec4<f32> { return textureLoad(bt, vec2<u32>(c, k), 0); }
"#;

const MIXED: &str = r#"
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var bt: texture_2d<f32>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
fn la(r: u32, kk: u32) -> vec4<f32> { return a4[r * (p.k / 4u) + kk]; }
fn lb(k: u32, c: u32) -> vec4<f32> { return textureLoad(bt, vec2<u32>(c, k), 0); }
"#;

const KERNEL: &str = r#"
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let row0 = g.y * 8u;
    let c0 = g.x * 2u;
    let nq = p.n / 4u;
    var acc: array<vec4<f32>, 16>;
    for (var kk = 0u; kk < p.k / 4u; kk++) {
        var a: array<vec4<f32>, 8>;
        for (var r = 0u; r < 8u; r++) { a[r] = la(row0 + r, kk); }
        for (var e = 0u; e < 4u; e++) {
            let b0 = lb(kk * 4u + e, c0);
            let b1 = lb(kk * 4u + e, c0 + 1u);
            for (var r = 0u; r < 8u; r++) {
                acc[2u * r] += a[r][e] * b0;
                acc[2u * r + 1u] += a[r][e] * b1;
            }
        }
    }
    for (var r = 0u; r < 8u; r++) {
        c4[(row0 + r) * nq + c0] = acc[2u * r];
        c4[(row0 + r) * nq + c0 + 1u] = acc[2u * r + 1u];
    }
}
"#;

fn main() {
    let (m, k, n) = (512u32, 768u32, 768u32);
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let inst = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(inst.request_adapter(&Default::default())).unwrap();
    println!("{:?}", adapter.get_info().name);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32) * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 5) as f32) * 0.1).collect();
    use wgpu::util::DeviceExt;
    let buf = |d: &[f32], usage| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(d),
            usage,
        })
    };
    let ab = buf(&a, wgpu::BufferUsages::STORAGE);
    let bb = buf(&b, wgpu::BufferUsages::STORAGE);
    let cb = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (m * n * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let ub = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&[m, n, k, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let tex = |d: &[f32], w: u32, h: u32| {
        let t = device.create_texture(&wgpu::TextureDescriptor {
            label: None,
            size: wgpu::Extent3d {
                width: w,
                height: h,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        queue.write_texture(
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
            wgpu::Extent3d {
                width: w,
                height: h,
                depth_or_array_layers: 1,
            },
        );
        t.create_view(&Default::default())
    };
    let at = tex(&a, k / 4, m);
    let bt = tex(&b, n / 4, k);
    for (name, body) in [("storage", STORAGE), ("texture", TEXTURE), ("mixed", MIXED)] {
        let src = format!("{COMMON}{body}{KERNEL}");
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let pipe = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let entries: Vec<wgpu::BindGroupEntry> = if name == "mixed" {
            vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: ub.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: ab.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::TextureView(&bt),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: cb.as_entire_binding(),
                },
            ]
        } else if name == "storage" {
            vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: ub.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: ab.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: bb.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: cb.as_entire_binding(),
                },
            ]
        } else {
            vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: ub.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::TextureView(&at),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::TextureView(&bt),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: cb.as_entire_binding(),
                },
            ]
        };
        let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.get_bind_group_layout(0),
            entries: &entries,
        });
        let run = || {
            let mut enc = device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipe);
                pass.set_bind_group(0, &bg, &[]);
                pass.dispatch_workgroups(n / 8 / 8, m / 8 / 8, 1);
            }
            queue.submit([enc.finish()]);
            device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
        };
        run();
        let mut ts = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            run();
            ts.push(t.elapsed().as_secs_f64());
        }
        ts.sort_by(f64::total_cmp);
        let flops = 2.0 * (m * n * k) as f64;
        println!(
            "{name:>8}: median {:.1} ms, {:.2} GFLOP/s",
            ts[2] * 1e3,
            flops / ts[2] / 1e9
        );
    }
}
