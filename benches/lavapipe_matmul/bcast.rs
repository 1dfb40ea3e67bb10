//! Broadcast kernels: one operand from a uniform-buffer window, the other from a texture.

use std::fmt::Write as _;

use crate::wgpu_ctx::{buf, entry, module, out_buf, pipeline, Ctx, Prepared};
use crate::Ops;

/// Broadcast design: A comes from a uniform buffer window (dynamic offset) read at constant
/// offsets, so llvmpipe loads each A scalar once and broadcasts it (the `load_ubo` uniform
/// path); B is gathered from an rgba32float texture. The k loop is fully unrolled over a chunk
/// of `kc`, so each dispatch covers `r` rows x all N x `kc` of K; C accumulates over chunks.
/// A is repacked on the host as blocks [M/r][K/kc][r][kc].
fn gen_bcast(r: u32, c: u32, kc: u32, wx: u32, n: u32) -> String {
    let mut s = String::new();
    let words = r * kc / 4;
    let _ = writeln!(s, "struct Aw {{ v: array<vec4<f32>, {words}> }}");
    s += "struct D { r0: u32, k0: u32, first: u32, pad: u32 }\n";
    s += "@group(0) @binding(0) var<uniform> d: D;\n";
    s += "@group(0) @binding(1) var<uniform> aw: Aw;\n";
    s += "@group(0) @binding(2) var bt: texture_2d<f32>;\n";
    s += "@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;\n";
    let nq = n / 4;
    let qs = nq / c;
    let _ = writeln!(s, "@compute @workgroup_size({wx})");
    s += "fn main(@builtin(global_invocation_id) g: vec3<u32>) {\n";
    for j in 0..c {
        let _ = writeln!(s, "  let q{j} = g.x + {}u;", j * qs);
    }
    for i in 0..r {
        for j in 0..c {
            let _ = writeln!(s, "  var acc{i}_{j} = vec4<f32>(0.0);");
        }
    }
    for kq in 0..kc / 4 {
        for i in 0..r {
            let _ = writeln!(s, "  let a{i}_{kq} = aw.v[{}];", (i * kc) / 4 + kq);
        }
        for e in 0..4u32 {
            let comp = ["x", "y", "z", "w"][e as usize];
            let kk = kq * 4 + e;
            for j in 0..c {
                let _ = writeln!(
                    s,
                    "  let b{kk}_{j} = textureLoad(bt, vec2<u32>(q{j}, d.k0 + {kk}u), 0);"
                );
            }
            for i in 0..r {
                for j in 0..c {
                    let _ = writeln!(
                        s,
                        "  acc{i}_{j} = fma(vec4<f32>(a{i}_{kq}.{comp}), b{kk}_{j}, acc{i}_{j});"
                    );
                }
            }
        }
    }
    for i in 0..r {
        for j in 0..c {
            let _ = writeln!(s, "  let o{i}_{j} = (d.r0 + {i}u) * {nq}u + q{j};");
            let _ = writeln!(
                s,
                "  if d.first != 0u {{ c4[o{i}_{j}] = acc{i}_{j}; }} else {{ c4[o{i}_{j}] += acc{i}_{j}; }}"
            );
        }
    }
    s += "}\n";
    s
}

pub fn prep_bcast(
    ctx: &Ctx,
    ops: &Ops,
    (r, c, kc, wx): (u32, u32, u32, u32),
    trusted: bool,
) -> Prepared {
    let (m, k, n) = (ops.m, ops.k, ops.n);
    assert!(m % r == 0 && k % kc == 0 && n % (4 * c * wx) == 0 && (r * kc) % 64 == 0);
    let code = gen_bcast(r, c, kc, wx, n);
    let md = module(ctx, &code, trusted);
    let dev = &ctx.device;
    let ubo = |min: u64| wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Uniform,
        has_dynamic_offset: true,
        min_binding_size: std::num::NonZeroU64::new(min),
    };
    let cs = wgpu::ShaderStages::COMPUTE;
    let bgl = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: None,
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: cs,
                ty: ubo(16),
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 1,
                visibility: cs,
                ty: ubo((r * kc * 4) as u64),
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 2,
                visibility: cs,
                ty: wgpu::BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Float { filterable: false },
                    view_dimension: wgpu::TextureViewDimension::D2,
                    multisampled: false,
                },
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 3,
                visibility: cs,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: false },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            },
        ],
    });
    let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(&bgl)],
        immediate_size: 0,
    });
    let pipe = pipeline(ctx, &md, Some(&pl));
    // A packed as [M/r][K/kc][r][kc]
    let (rb, kb) = (m / r, k / kc);
    let mut packed = Vec::with_capacity((m * k) as usize);
    for bi in 0..rb {
        for bk in 0..kb {
            for i in 0..r {
                let row = bi * r + i;
                let s = (row * k + bk * kc) as usize;
                packed.extend_from_slice(&ops.a[s..s + kc as usize]);
            }
        }
    }
    let ap = buf(
        ctx,
        bytemuck::cast_slice(&packed),
        wgpu::BufferUsages::UNIFORM,
    );
    let mut dparams = Vec::new();
    let mut dispatches = Vec::new();
    let win = r * kc * 4;
    for bi in 0..rb {
        for bk in 0..kb {
            let slot = dparams.len() as u32 / 64;
            let mut rec = [0u32; 64];
            rec[0] = bi * r;
            rec[1] = bk * kc;
            rec[2] = (bk == 0) as u32;
            dparams.extend_from_slice(&rec);
            dispatches.push((
                0usize,
                vec![slot * 256, (bi * kb + bk) * win],
                [n / 4 / c / wx, 1, 1],
            ));
        }
    }
    let db = buf(
        ctx,
        bytemuck::cast_slice(&dparams),
        wgpu::BufferUsages::UNIFORM,
    );
    let cb = out_buf(ctx, m, n);
    let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &bgl,
        entries: &[
            entry(
                0,
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &db,
                    offset: 0,
                    size: std::num::NonZeroU64::new(16),
                }),
            ),
            entry(
                1,
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &ap,
                    offset: 0,
                    size: std::num::NonZeroU64::new(win as u64),
                }),
            ),
            entry(2, wgpu::BindingResource::TextureView(&ops.bt)),
            entry(3, cb.as_entire_binding()),
        ],
    });
    Prepared {
        pipeline: pipe,
        dispatches,
        groups: vec![bg],
        c: cb,
        clear_c: false,
    }
}

/// Broadcast-B design ("row lanes"): the 8 SIMD lanes are 8 rows of C; each invocation owns one
/// row and `nb` columns. B comes from a uniform-buffer window of K x nb (dynamic offset, B
/// repacked as [N/nb][K][nb]) read at constant offsets with K fully unrolled, so every B scalar
/// is one scalar load + broadcast; A is gathered from an rgba32float texture (4 k per fetch, one
/// fetch per 4 nb FMAs... i.e. 4*nb FMAs per fetch). One dispatch per column block.
fn gen_bcast_b(
    nb: u32,
    k: u32,
    wx: u32,
    n: u32,
    store_vec: bool,
    chunked: bool,
    mode: u32,
) -> String {
    // mode (diagnostics, wrong results): 1 = one A fetch for the whole chunk, 2 = B constants
    let mut s = String::new();
    let words = k * nb / 4;
    let _ = writeln!(s, "struct Bw {{ v: array<vec4<f32>, {words}> }}");
    s += "struct D { n0: u32, k0: u32, first: u32, p3: u32 }\n";
    s += "@group(0) @binding(0) var<uniform> d: D;\n";
    s += "@group(0) @binding(1) var<uniform> bw: Bw;\n";
    s += "@group(0) @binding(2) var at: texture_2d<f32>;\n";
    if store_vec {
        s += "@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;\n";
    } else {
        s += "@group(0) @binding(3) var<storage, read_write> c: array<f32>;\n";
    }
    let _ = writeln!(s, "@compute @workgroup_size({wx})");
    s += "fn main(@builtin(global_invocation_id) g: vec3<u32>) {\n  let row = g.x;\n";
    for j in 0..nb {
        let _ = writeln!(s, "  var c{j} = 0.0;");
    }
    for kq in 0..k / 4 {
        let kq_a = if mode == 1 { 0 } else { kq };
        let _ = writeln!(
            s,
            "  {{ let a = textureLoad(at, vec2<u32>(d.k0 / 4u + {kq_a}u, row), 0);"
        );
        for e in 0..4 {
            let comp = ["x", "y", "z", "w"][e as usize];
            let kk = kq * 4 + e;
            for jq in 0..nb / 4 {
                if mode == 2 {
                    let _ = writeln!(s, "  let b{e}_{jq} = vec4<f32>({kk}.0, {jq}.0, 0.5, 0.25);");
                } else if mode == 3 {
                    // same address, but not provably uniform (d.p3 == 0 comes from a UBO)
                    let _ = writeln!(s, "  let b{e}_{jq} = bw.v[{}u + d.p3];", (kk * nb) / 4 + jq);
                } else {
                    let _ = writeln!(s, "  let b{e}_{jq} = bw.v[{}];", (kk * nb) / 4 + jq);
                }
                for t in 0..4 {
                    let j = jq * 4 + t;
                    let bc = ["x", "y", "z", "w"][t as usize];
                    let _ = writeln!(s, "  c{j} = fma(a.{comp}, b{e}_{jq}.{bc}, c{j});");
                }
            }
        }
        s += "  }\n";
    }
    if store_vec {
        for jq in 0..nb / 4 {
            let v = format!(
                "vec4<f32>(c{}, c{}, c{}, c{})",
                jq * 4,
                jq * 4 + 1,
                jq * 4 + 2,
                jq * 4 + 3
            );
            let _ = writeln!(s, "  let o{jq} = (row * {n}u + d.n0) / 4u + {jq}u;");
            if chunked {
                let _ = writeln!(
                    s,
                    "  if d.first != 0u {{ c[o{jq}] = {v}; }} else {{ c[o{jq}] += {v}; }}"
                );
            } else {
                let _ = writeln!(s, "  c[o{jq}] = {v};");
            }
        }
    } else {
        for j in 0..nb {
            let _ = writeln!(s, "  c[row * {n}u + d.n0 + {j}u] = c{j};");
        }
    }
    s += "}\n";
    s
}

pub fn prep_bcast_b(
    ctx: &Ctx,
    ops: &Ops,
    (nb, wx, store_vec, kc): (u32, u32, bool, u32),
    trusted: bool,
    mode: u32,
) -> Prepared {
    // mode 5 (diagnostic, wrong results): plain store of each chunk's partial sums, no C read-modify-write
    // mode 4: like 0 but one bind group per dispatch (window offsets baked in, no dynamic offsets)
    let dynamic = mode != 4;
    let (m, kfull, n) = (ops.m, ops.k, ops.n);
    let k = kc.min(kfull);
    assert!(kfull % k == 0 && (store_vec || k == kfull));
    assert!(
        n % nb == 0 && m % wx == 0 && nb % 4 == 0 && (k * nb * 4) % 256 == 0 && k * nb * 4 <= 65536
    );
    let code = gen_bcast_b(nb, k, wx, n, store_vec, k < kfull && mode != 5, mode);
    let md = module(ctx, &code, trusted);
    let dev = &ctx.device;
    let ubo = |min: u64| wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Uniform,
        has_dynamic_offset: dynamic,
        min_binding_size: std::num::NonZeroU64::new(min),
    };
    let cs = wgpu::ShaderStages::COMPUTE;
    let win = k * nb * 4;
    let bgl = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: None,
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: cs,
                ty: ubo(16),
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 1,
                visibility: cs,
                ty: ubo(win as u64),
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 2,
                visibility: cs,
                ty: wgpu::BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Float { filterable: false },
                    view_dimension: wgpu::TextureViewDimension::D2,
                    multisampled: false,
                },
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 3,
                visibility: cs,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: false },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            },
        ],
    });
    let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(&bgl)],
        immediate_size: 0,
    });
    let pipe = pipeline(ctx, &md, Some(&pl));
    // B (K, N) row-major packed as [N/nb][K/kc][kc][nb]
    let mut packed = Vec::with_capacity((kfull * n) as usize);
    for bj in 0..n / nb {
        for kk in 0..kfull {
            let s = (kk * n + bj * nb) as usize;
            packed.extend_from_slice(&ops.b[s..s + nb as usize]);
        }
    }
    let bp = buf(
        ctx,
        bytemuck::cast_slice(&packed),
        wgpu::BufferUsages::UNIFORM,
    );
    let mut dparams = Vec::new();
    let mut dispatches = Vec::new();
    let kb = kfull / k;
    for bj in 0..n / nb {
        for bk in 0..kb {
            let slot = bj * kb + bk;
            let mut rec = [0u32; 64];
            rec[0] = bj * nb;
            rec[1] = bk * k;
            rec[2] = (bk == 0) as u32;
            dparams.extend_from_slice(&rec);
            dispatches.push((0usize, vec![slot * 256, slot * win], [m / wx, 1, 1]));
        }
    }
    let db = buf(
        ctx,
        bytemuck::cast_slice(&dparams),
        wgpu::BufferUsages::UNIFORM,
    );
    let cb = out_buf(ctx, m, n);
    let mk = |o0: u32, o1: u32| {
        dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &bgl,
            entries: &[
                entry(
                    0,
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &db,
                        offset: o0 as u64,
                        size: std::num::NonZeroU64::new(16),
                    }),
                ),
                entry(
                    1,
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &bp,
                        offset: o1 as u64,
                        size: std::num::NonZeroU64::new(win as u64),
                    }),
                ),
                entry(2, wgpu::BindingResource::TextureView(&ops.at)),
                entry(3, cb.as_entire_binding()),
            ],
        })
    };
    let mut groups = Vec::new();
    if dynamic {
        groups.push(mk(0, 0));
    } else {
        for (i, d) in dispatches.iter_mut().enumerate() {
            groups.push(mk(d.1[0], d.1[1]));
            d.0 = i;
            d.1.clear();
        }
    }
    Prepared {
        pipeline: pipe,
        dispatches,
        groups,
        c: cb,
        clear_c: false,
    }
}
