//! Research harness: candidate matmul kernels for llvmpipe/lavapipe (Mesa 22.3), side by side.
//!
//! `cargo bench --bench lavapipe_matmul [-- FILTER...]` times candidate C = A·B kernels at
//! 512x768x3072 and 512x768x768 (M x K x N), checks each against a CPU matmul (max abs error)
//! and prints the median and best GFLOP/s of `RUNS` (default 5) runs; `DUMP_WGSL=1` prints the
//! generated shaders of the register-blocked kernels. Not library code: the library keeps only
//! the winners (`matmul_image`, `matmul_image_sg`).
//!
//! Variant names: `{sto,tex,img}_r{R}c{C}_wg{X}x{Y}[_u]`: operands from storage buffers,
//! sampled textures or storage textures (image loads); R rows x C vec4 column groups per
//! invocation; `_u` = no naga runtime checks. `sgb` / `sgs` / `sg_a` share operands through
//! subgroups, `accmajor` / `colmajor` / `halves` are FMA orders, `diag_*` are cost probes with
//! wrong results on purpose. What each means, what was measured and why the library adopted what
//! it did: docs/lavapipe-research.md.

use std::fmt::Write as _;
use std::time::Instant;

use wgpu::util::DeviceExt;

struct Ctx {
    device: wgpu::Device,
    queue: wgpu::Queue,
}

/// One candidate, ready to run: encodes all its dispatches into a pass.
struct Prepared {
    pipeline: wgpu::ComputePipeline,
    /// (bind group index into `groups`, dynamic offsets, workgroup counts)
    dispatches: Vec<(usize, Vec<u32>, [u32; 3])>,
    groups: Vec<wgpu::BindGroup>,
    c: wgpu::Buffer,
    /// Some kernels accumulate into C (K chunks): clear it before each run.
    clear_c: bool,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Src {
    Tex,
    Storage,
    /// read-only storage textures (image loads)
    Image,
}

fn tex(ctx: &Ctx, d: &[f32], w: u32, h: u32) -> wgpu::TextureView {
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

fn buf(ctx: &Ctx, d: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: d,
            usage,
        })
}

fn out_buf(ctx: &Ctx, m: u32, n: u32) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (m * n * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn module(ctx: &Ctx, src: &str, trusted: bool) -> wgpu::ShaderModule {
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

fn pipeline(
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

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// FMAs of an `r` x `c`-group register block at the k offsets `es` of one k step (a subset of
/// 0..4), each accumulator's in a row, nested in k order:
/// `acc{i}_{j} = fma(a{i}.<e1>, b{e1}_{j}, fma(a{i}.<e0>, b{e0}_{j}, acc{i}_{j}))`. Accumulators
/// row by row, or column group by column group (`cols_outer`). One offset at a time is the k
/// step by k step order; all four, accumulator-major (`accmajor`, `colmajor`); two, `halves`.
fn write_fmas(s: &mut String, r: u32, c: u32, es: std::ops::Range<usize>, cols_outer: bool) {
    let order: Vec<(u32, u32)> = if cols_outer {
        (0..c).flat_map(|j| (0..r).map(move |i| (i, j))).collect()
    } else {
        (0..r).flat_map(|i| (0..c).map(move |j| (i, j))).collect()
    };
    for (i, j) in order {
        let mut expr = format!("acc{i}_{j}");
        for e in es.clone() {
            let comp = ["x", "y", "z", "w"][e];
            expr = format!("fma(vec4<f32>(a{i}.{comp}), b{e}_{j}, {expr})");
        }
        let _ = writeln!(s, "    acc{i}_{j} = {expr};");
    }
}

/// Store the register block: column group j of row i at vec4 column `{col0} + {j}u{step}`.
fn write_stores(s: &mut String, r: u32, c: u32, col0: &str, step: &str) {
    for i in 0..r {
        for j in 0..c {
            let _ = writeln!(
                s,
                "  c4[(r0 + {i}u) * nq + {col0} + {j}u{step}] = acc{i}_{j};"
            );
        }
    }
}

/// Compile `code` and bind it to `ops` (params, A and B as textures or storage buffers, a
/// fresh C): one dispatch of `grid`.
fn prepare(ctx: &Ctx, ops: &Ops, code: &str, trusted: bool, src: Src, grid: [u32; 3]) -> Prepared {
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

/// Register-blocked kernel, both operands gathered (textures or storage), k loop at run time
/// with a fully unrolled body. Each invocation owns `r` rows x `c` vec4 column groups; column
/// group j of invocation x is x + j * (n/4/c) so neighbouring lanes read neighbouring texels.
fn gen_gather(src: Src, r: u32, c: u32, wx: u32, wy: u32, mode: u32) -> String {
    // mode bit 16: rows vary fastest over the dispatch (workgroup_id.x walks row blocks, .y column
    // blocks), so consecutive workgroups reuse one B panel from cache
    let rows_fast = mode & 16 != 0;
    // mode bit 32: the FMAs accumulator by accumulator (`write_fmas` over 0..4)
    let acc_major = mode & 32 != 0;
    let mode = mode & !48;
    // mode 8: A through subgroups: lane i of each 8-lane SIMD vector loads row r0 + i, and
    // subgroupBroadcast(a, i) hands row i to every lane (r must be 8 = llvmpipe's subgroup size)
    let sg_a = mode == 8;
    let mut s = String::new();
    // (naga 30 enables subgroup builtins through Features::SUBGROUP, not `enable subgroups;`)
    s +=
        "struct P { m: u32, n: u32, k: u32, pad: u32 }\n@group(0) @binding(0) var<uniform> p: P;\n";
    match src {
        Src::Tex => {
            s += "@group(0) @binding(1) var at: texture_2d<f32>;\n@group(0) @binding(2) var bt: texture_2d<f32>;\n";
            s += "fn la(r: u32, kk: u32) -> vec4<f32> { return textureLoad(at, vec2<u32>(kk, r), 0); }\n";
            s += "fn lb(k: u32, q: u32) -> vec4<f32> { return textureLoad(bt, vec2<u32>(q, k), 0); }\n";
        }
        Src::Image => {
            s += "@group(0) @binding(1) var at: texture_storage_2d<rgba32float, read>;\n@group(0) @binding(2) var bt: texture_storage_2d<rgba32float, read>;\n";
            s += "fn la(r: u32, kk: u32) -> vec4<f32> { return textureLoad(at, vec2<u32>(kk, r)); }\n";
            s +=
                "fn lb(k: u32, q: u32) -> vec4<f32> { return textureLoad(bt, vec2<u32>(q, k)); }\n";
        }
        Src::Storage => {
            s += "@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;\n@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;\n";
            s += "fn la(r: u32, kk: u32) -> vec4<f32> { return a4[r * (p.k / 4u) + kk]; }\n";
            s += "fn lb(k: u32, q: u32) -> vec4<f32> { return b4[k * (p.n / 4u) + q]; }\n";
        }
    }
    s += "@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;\n";
    let _ = writeln!(s, "@compute @workgroup_size({wx}, {wy})");
    let sid = if sg_a {
        ", @builtin(subgroup_invocation_id) sid: u32"
    } else {
        ""
    };
    if rows_fast {
        let _ = writeln!(s, "fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>{sid}) {{");
        let _ = writeln!(
            s,
            "  let g = vec2<u32>(wid.y * {wx}u + lid.x, wid.x * {wy}u + lid.y);"
        );
    } else {
        let _ = writeln!(
            s,
            "fn main(@builtin(global_invocation_id) g: vec3<u32>{sid}) {{"
        );
    }
    let _ = writeln!(
        s,
        "  let nq = p.n / 4u; let qs = nq / {c}u; let r0 = g.y * {r}u;"
    );
    for i in 0..r {
        for j in 0..c {
            let _ = writeln!(s, "  var acc{i}_{j} = vec4<f32>(0.0);");
        }
    }
    // mode (diagnostics, wrong results): 1 = operands loaded before the loop, 2 = only B
    // loaded in the loop, 3 = only A loaded in the loop
    let a_in = mode == 0 || mode == 3 || mode == 8;
    let b_in = mode == 0 || mode == 2 || mode == 8;
    for i in 0..r {
        if !a_in {
            let _ = writeln!(s, "  let a{i} = la(r0 + {i}u, 0u);");
        }
    }
    for e in 0..4 {
        for j in 0..c {
            if !b_in {
                let _ = writeln!(s, "  let b{e}_{j} = lb({e}u, g.x + {j}u * qs);");
            }
        }
    }
    s += "  for (var kk = 0u; kk < p.k / 4u; kk++) {\n";
    if sg_a {
        assert_eq!(r, 8);
        s += "    let amine = la(r0 + sid, kk);\n";
        for i in 0..r {
            let _ = writeln!(s, "    let a{i} = subgroupBroadcast(amine, {i}u);");
        }
    }
    for i in 0..r {
        if a_in && !sg_a {
            let _ = writeln!(s, "    let a{i} = la(r0 + {i}u, kk);");
        }
    }
    for e in 0..4 {
        for j in 0..c {
            if b_in {
                let _ = writeln!(s, "    let b{e}_{j} = lb(kk * 4u + {e}u, g.x + {j}u * qs);");
            }
        }
        if !acc_major {
            write_fmas(&mut s, r, c, e..e + 1, false);
        }
    }
    if acc_major {
        write_fmas(&mut s, r, c, 0..4, false);
    }
    s += "  }\n";
    write_stores(&mut s, r, c, "g.x", " * qs");
    s += "}\n";
    s
}

fn prep_gather(
    ctx: &Ctx,
    ops: &Ops,
    src: Src,
    (r, c, wx, wy): (u32, u32, u32, u32),
    trusted: bool,
    mode: u32,
) -> Prepared {
    let (m, n) = (ops.m, ops.n);
    assert!(n % (4 * c * wx) == 0 && m % (r * wy) == 0);
    let grid = if mode & 16 != 0 {
        [m / r / wy, n / 4 / c / wx, 1]
    } else {
        [n / 4 / c / wx, m / r / wy, 1]
    };
    let code = gen_gather(src, r, c, wx, wy, mode);
    prepare(ctx, ops, &code, trusted, src, grid)
}

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

fn prep_bcast(
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

/// How a `gen_sgb` kernel's k step broadcasts op(B) and orders its FMAs.
#[derive(Clone, Copy, PartialEq)]
enum SgbBody {
    /// All broadcasts, then the FMAs k step by k step.
    KMajor,
    /// Cost probe, wrong results: no broadcasts (each lane uses its own gathered texels).
    NoBroadcast,
    /// Each accumulator's four FMAs in a row, row by row.
    AccMajor,
    /// The same, column group by column group.
    ColMajor,
    /// Broadcasts and FMAs half a k step at a time.
    Halves,
}

impl SgbBody {
    /// Variant name suffix.
    fn tag(self) -> &'static str {
        match self {
            SgbBody::KMajor => "",
            SgbBody::NoBroadcast => "_diag_nobcast",
            SgbBody::AccMajor => "_accmajor",
            SgbBody::ColMajor => "_colmajor",
            SgbBody::Halves => "_halves",
        }
    }
}

/// Shared-B design: the 8 lanes of a SIMD vector (one llvmpipe subgroup) own 8 different row
/// blocks of `r` rows and the same `c` vec4 column groups, so the 4·c texels of op(B) a k step
/// needs are the same for every lane: lane l gathers texel l (one gather per 8 texels) and
/// `subgroupBroadcast` hands each to every lane; A stays one gather per row. Per k step:
/// r + 4c/8 gathers instead of r + 4c. Dispatch: x walks row blocks (8 per workgroup), y column
/// blocks (`wy` per workgroup).
fn gen_sgb(r: u32, c: u32, wy: u32, op: &str, u: u32, body: SgbBody) -> String {
    assert!((4 * c).is_multiple_of(8));
    let mut s = String::new();
    s +=
        "struct P { m: u32, n: u32, k: u32, pad: u32 }\n@group(0) @binding(0) var<uniform> p: P;\n";
    s += "@group(0) @binding(1) var at: texture_storage_2d<rgba32float, read>;\n@group(0) @binding(2) var bt: texture_storage_2d<rgba32float, read>;\n";
    s += "fn la(r: u32, kk: u32) -> vec4<f32> { return textureLoad(at, vec2<u32>(kk, r)); }\n";
    s += "fn lb(k: u32, q: u32) -> vec4<f32> { return textureLoad(bt, vec2<u32>(q, k)); }\n";
    s += "@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;\n";
    // (naga allows the subgroup builtins only with a one-dimensional workgroup)
    let _ = writeln!(s, "@compute @workgroup_size({})", 8 * wy);
    s += "fn main(@builtin(workgroup_id) w: vec3<u32>, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) sid: u32) {\n";
    let _ = writeln!(
        s,
        "  let nq = p.n / 4u; let r0 = (w.x * 8u + sid) * {r}u; let q0 = (w.y * {wy}u + sg) * {c}u;"
    );
    for i in 0..r {
        for j in 0..c {
            let _ = writeln!(s, "  var acc{i}_{j} = vec4<f32>(0.0);");
        }
    }
    let _ = writeln!(s, "  for (var k0 = 0u; k0 < p.k / 4u; k0 += {u}u) {{");
    for h in 0..u {
        let _ = writeln!(s, "   {{ let kk = k0 + {h}u;");
        for t in 0..(4 * c) / 8 {
            let _ = writeln!(
                s,
                "    let bm{t} = lb(kk * 4u + (sid + {o}u) / {c}u, q0 + (sid + {o}u) % {c}u);",
                o = 8 * t
            );
        }
        for i in 0..r {
            let _ = writeln!(s, "    let a{i} = la(r0 + {i}u, kk);");
        }
        for e in 0..4 {
            if body == SgbBody::Halves && e == 2 {
                write_fmas(&mut s, r, c, 0..2, false);
            }
            for j in 0..c {
                let l = e * c + j;
                if body == SgbBody::NoBroadcast {
                    let _ = writeln!(s, "    let b{e}_{j} = bm{};", l / 8);
                } else {
                    let _ = writeln!(s, "    let b{e}_{j} = {op}(bm{}, {}u);", l / 8, l % 8);
                }
            }
            if matches!(body, SgbBody::KMajor | SgbBody::NoBroadcast) {
                write_fmas(&mut s, r, c, e as usize..e as usize + 1, false);
            }
        }
        match body {
            SgbBody::AccMajor | SgbBody::ColMajor => {
                write_fmas(&mut s, r, c, 0..4, body == SgbBody::ColMajor)
            }
            SgbBody::Halves => write_fmas(&mut s, r, c, 2..4, false),
            SgbBody::KMajor | SgbBody::NoBroadcast => {}
        }
        s += "   }\n";
    }
    s += "  }\n";
    write_stores(&mut s, r, c, "q0", "");
    s += "}\n";
    s
}

fn prep_sgb(
    ctx: &Ctx,
    ops: &Ops,
    (r, c, wy, u, body): (u32, u32, u32, u32, SgbBody),
    trusted: bool,
    op: &'static str,
) -> Prepared {
    let (m, n) = (ops.m, ops.n);
    assert!(n % (4 * c * wy) == 0 && m % (r * 8) == 0);
    let code = gen_sgb(r, c, wy, op, u, body);
    prepare(
        ctx,
        ops,
        &code,
        trusted,
        Src::Image,
        [m / r / 8, n / 4 / c / wy, 1],
    )
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

fn prep_bcast_b(
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

struct Ops {
    m: u32,
    k: u32,
    n: u32,
    a: Vec<f32>,
    b: Vec<f32>,
    want: Vec<f32>,
    params: wgpu::Buffer,
    ab: wgpu::Buffer,
    bb: wgpu::Buffer,
    at: wgpu::TextureView,
    bt: wgpu::TextureView,
}

fn cpu_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        for kk in 0..k {
            let av = a[i * k + kk];
            let br = &b[kk * n..(kk + 1) * n];
            for (x, y) in row.iter_mut().zip(br) {
                *x += av * y;
            }
        }
    }
    c
}

fn run_once(ctx: &Ctx, p: &Prepared) {
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

fn read(ctx: &Ctx, b: &wgpu::Buffer) -> Vec<f32> {
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

/// The library's kernels on their own device, same shapes and data, for reference: the
/// register kernel (the CPU-adapter choice before this probe) and the image kernel that came
/// out of it (B frozen, as in training: packed once).
fn lib_register(shapes: &[(u32, u32, u32)], opss: &[Ops], runs: usize) {
    use lora_wgpu::gpu::{Gpu, GpuOptions};
    use lora_wgpu::kernels::matmul::{matmul, MatmulOp, MatmulVariant};
    use lora_wgpu::kernels::Variants;
    let g = Gpu::new(&GpuOptions::from_env()).unwrap();
    for (name, variant) in [
        ("lib_register", MatmulVariant::Register),
        ("lib_image", MatmulVariant::Image),
    ] {
        let mut cols = Vec::new();
        let mut err = 0f32;
        for (&(m, k, n), ops) in shapes.iter().zip(opss) {
            let (m, k, n) = (m as usize, k as usize, n as usize);
            let a = g.upload("a", &ops.a, &[m, k]).unwrap();
            let b = g.upload("b", &ops.b, &[k, n]).unwrap();
            let c = g.zeros("c", &[m, n]).unwrap();
            let op = MatmulOp::new(m, n, k).frozen_b();
            let gv = g.with_variants(Variants {
                matmul: variant,
                ..g.variants()
            });
            let d = matmul(&gv, &c, &a, &b, None, &op).unwrap();
            g.run(&[&d]).unwrap();
            g.sync().unwrap();
            let got = g.download(&c).unwrap();
            for (x, y) in got.iter().zip(&ops.want) {
                err = err.max((x - y).abs());
            }
            let mut ts = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                g.run(&[&d]).unwrap();
                g.sync().unwrap();
                ts.push(t.elapsed().as_secs_f64());
            }
            ts.sort_by(f64::total_cmp);
            let med = ts[ts.len() / 2];
            let flop = 2.0 * (m * n * k) as f64;
            cols.push(format!(
                "{:6.2} / {:6.2}",
                flop / med / 1e9,
                flop / ts[0] / 1e9
            ));
        }
        println!("{name:<30} {:>16} {:>16} {err:>9.2e}", cols[0], cols[1]);
    }
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let inst = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(inst.request_adapter(&Default::default())).unwrap();
    println!("adapter: {:?}", adapter.get_info().name);
    let info = adapter.get_info();
    let sg = adapter.features().contains(wgpu::Features::SUBGROUP);
    println!(
        "subgroups: {sg}, sizes {}..{}",
        info.subgroup_min_size, info.subgroup_max_size
    );
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: if sg {
            wgpu::Features::SUBGROUP
        } else {
            wgpu::Features::empty()
        },
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let ctx = Ctx { device, queue };

    // (name, builder)
    type Build = Box<dyn Fn(&Ctx, &Ops) -> Prepared>;
    let mut variants: Vec<(String, Build)> = Vec::new();
    // the texture_probe kernel shape (8x8 per thread, loops) is the baseline for "loops"
    for &(src, tag) in &[
        (Src::Storage, "sto"),
        (Src::Tex, "tex"),
        (Src::Image, "img"),
    ] {
        for &(r, c, wx, wy) in &[
            (4u32, 1u32, 8u32, 1u32),
            (2, 2, 8, 1),
            (4, 2, 8, 1),
            (8, 1, 8, 1),
            (4, 2, 8, 8),
            (4, 2, 32, 1),
            (8, 2, 8, 8),
            (4, 4, 8, 8),
            (8, 4, 8, 4),
            (8, 3, 8, 8),
            (16, 4, 8, 2),
            (8, 8, 8, 4),
            (16, 8, 8, 1),
            (16, 2, 8, 4),
            (8, 2, 8, 4),
            (8, 2, 16, 4),
        ] {
            for trusted in [false, true] {
                if (src == Src::Storage && wx != 8) || (src == Src::Image && r * c < 8) {
                    continue;
                }
                let name = format!(
                    "{tag}_r{r}c{c}_wg{wx}x{wy}{}",
                    if trusted { "_u" } else { "" }
                );
                variants.push((
                    name,
                    Box::new(move |ctx, ops| {
                        prep_gather(ctx, ops, src, (r, c, wx, wy), trusted, 0)
                    }),
                ));
                if src == Src::Image {
                    let name = format!(
                        "{tag}_rf_r{r}c{c}_wg{wx}x{wy}{}",
                        if trusted { "_u" } else { "" }
                    );
                    variants.push((
                        name,
                        Box::new(move |ctx, ops| {
                            prep_gather(ctx, ops, src, (r, c, wx, wy), trusted, 16)
                        }),
                    ));
                }
            }
        }
    }
    for &(r, c, wx, wy) in &[(4u32, 2u32, 8u32, 8u32), (8, 2, 8, 4), (4, 4, 8, 4)] {
        variants.push((
            format!("accmajor_img_r{r}c{c}_wg{wx}x{wy}_u"),
            Box::new(move |ctx, ops| prep_gather(ctx, ops, Src::Image, (r, c, wx, wy), true, 32)),
        ));
    }
    for (mode, tag) in [(1u32, "diag_noload"), (2, "diag_bonly"), (3, "diag_aonly")] {
        for src in [Src::Tex, Src::Storage, Src::Image] {
            let name = format!(
                "{tag}_{}_r4c2_wg8x8",
                match src {
                    Src::Tex => "tex",
                    Src::Storage => "sto",
                    Src::Image => "img",
                }
            );
            variants.push((
                name,
                Box::new(move |ctx, ops| prep_gather(ctx, ops, src, (4, 2, 8, 8), false, mode)),
            ));
        }
    }
    if sg {
        for src in [Src::Image, Src::Tex] {
            for &(c, wx, wy) in &[
                (2u32, 8u32, 1u32),
                (2, 16, 1),
                (2, 32, 1),
                (3, 8, 1),
                (4, 8, 1),
                (1, 8, 1),
            ] {
                for trusted in [false, true] {
                    let tag = match src {
                        Src::Tex => "tex",
                        Src::Storage => "sto",
                        Src::Image => "img",
                    };
                    for rf in [0u32, 16] {
                        let name = format!(
                            "sg_a{}_{tag}_r8c{c}_wg{wx}x{wy}{}",
                            if rf != 0 { "_rf" } else { "" },
                            if trusted { "_u" } else { "" }
                        );
                        variants.push((
                            name,
                            Box::new(move |ctx, ops| {
                                prep_gather(ctx, ops, src, (8, c, wx, wy), trusted, 8 | rf)
                            }),
                        ));
                    }
                }
            }
        }
    }
    if sg {
        for &(r, c, wy) in &[
            (4u32, 2u32, 8u32),
            (2, 4, 8),
            (4, 4, 4),
            (4, 2, 4),
            (2, 4, 4),
            (8, 2, 8),
            (1, 8, 8),
            (1, 8, 4),
            (1, 4, 8),
            (2, 2, 8),
            (1, 16, 4),
            (2, 8, 4),
        ] {
            for trusted in [false, true] {
                for (tag, op) in [("sgb", "subgroupBroadcast"), ("sgs", "subgroupShuffle")] {
                    let name = format!(
                        "{tag}_img_r{r}c{c}_wg8x{wy}{}",
                        if trusted { "_u" } else { "" }
                    );
                    variants.push((
                        name,
                        Box::new(move |ctx, ops| {
                            prep_sgb(ctx, ops, (r, c, wy, 1, SgbBody::KMajor), trusted, op)
                        }),
                    ));
                }
            }
        }
    }
    if sg {
        // (rows, column groups, subgroups per workgroup, k texels per loop iteration, body)
        use SgbBody::{AccMajor, ColMajor, Halves, KMajor, NoBroadcast};
        for &(r, c, wy, u, body) in &[
            (2u32, 4u32, 4u32, 2u32, KMajor),
            (2, 4, 4, 4, KMajor),
            (2, 4, 4, 1, AccMajor),
            (2, 4, 4, 1, ColMajor),
            (2, 4, 4, 1, Halves),
            (4, 2, 4, 1, Halves),
            (4, 2, 4, 1, ColMajor),
            (4, 4, 4, 1, ColMajor),
            (4, 2, 4, 1, AccMajor),
            (4, 4, 4, 1, AccMajor),
            (8, 2, 8, 1, AccMajor),
            (2, 8, 4, 1, AccMajor),
            (2, 4, 4, 1, NoBroadcast),
        ] {
            let name = format!("sgbk_img_r{r}c{c}_wg8x{wy}_k{u}{}_u", body.tag());
            variants.push((
                name,
                Box::new(move |ctx, ops| {
                    prep_sgb(ctx, ops, (r, c, wy, u, body), true, "subgroupBroadcast")
                }),
            ));
        }
    }
    for &(r, c, kc, wx) in &[
        (2u32, 2u32, 64u32, 8u32),
        (4, 1, 64, 8),
        (4, 2, 64, 8),
        (4, 2, 128, 8),
        (4, 2, 256, 8),
        (8, 1, 128, 8),
        (4, 1, 256, 8),
        (2, 2, 256, 8),
    ] {
        for trusted in [false, true] {
            let name = format!(
                "bcast_r{r}c{c}k{kc}_wg{wx}{}",
                if trusted { "_u" } else { "" }
            );
            variants.push((
                name,
                Box::new(move |ctx, ops| prep_bcast(ctx, ops, (r, c, kc, wx), trusted)),
            ));
        }
    }
    for &(nb, wx, sv, kc) in &[
        (12u32, 8u32, false, 768u32),
        (12, 8, true, 768),
        (12, 8, true, 64),
        (12, 8, true, 128),
        (16, 8, true, 128),
        (8, 8, true, 128),
        (12, 32, true, 128),
    ] {
        for trusted in [false, true] {
            let name = format!(
                "bcastB_nb{nb}k{kc}_wg{wx}{}{}",
                if sv { "_v4" } else { "" },
                if trusted { "_u" } else { "" }
            );
            variants.push((
                name,
                Box::new(move |ctx, ops| prep_bcast_b(ctx, ops, (nb, wx, sv, kc), trusted, 0)),
            ));
        }
    }
    for (mode, tag) in [
        (1u32, "diag_bcastB_onefetch"),
        (2, "diag_bcastB_constB"),
        (3, "diag_bcastB_nonunifB"),
        (4, "bcastB_static"),
        (5, "diag_bcastB_noRMW"),
    ] {
        variants.push((
            format!("{tag}_nb12k128"),
            Box::new(move |ctx, ops| prep_bcast_b(ctx, ops, (12, 8, true, 128), true, mode)),
        ));
    }
    let variants: Vec<_> = variants
        .into_iter()
        // bcastB (K fully unrolled) takes minutes of LLVM compile per shape: only on request
        .filter(|(n, _)| {
            if filters.is_empty() {
                !n.starts_with("bcastB")
            } else {
                filters.iter().any(|f| n.contains(f.as_str()))
            }
        })
        .collect();

    let shapes = [(512u32, 768u32, 3072u32), (512, 768, 768)];
    let mut opss = Vec::new();
    for &(m, k, n) in &shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.05)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.05)
            .collect();
        let t = Instant::now();
        let want = cpu_matmul(&a, &b, m as usize, k as usize, n as usize);
        eprintln!(
            "cpu reference {m}x{k}x{n}: {:.2} s",
            t.elapsed().as_secs_f64()
        );
        let ab = buf(&ctx, bytemuck::cast_slice(&a), wgpu::BufferUsages::STORAGE);
        let bb = buf(&ctx, bytemuck::cast_slice(&b), wgpu::BufferUsages::STORAGE);
        let params = buf(
            &ctx,
            bytemuck::cast_slice(&[m, n, k, 0]),
            wgpu::BufferUsages::UNIFORM,
        );
        let at = tex(&ctx, &a, k / 4, m);
        let bt = tex(&ctx, &b, n / 4, k);
        opss.push(Ops {
            m,
            k,
            n,
            a,
            b,
            want,
            params,
            ab,
            bb,
            at,
            bt,
        });
    }

    println!("GFLOP/s as median / best of {runs} runs");
    println!(
        "{:<28} {:>16} {:>16} {:>9}",
        "variant", "512x768x3072", "512x768x768", "max err"
    );
    if filters.is_empty() || filters.iter().any(|f| "lib_register".contains(f.as_str())) {
        lib_register(&shapes, &opss, runs);
    }
    for (name, build) in &variants {
        let mut cols = Vec::new();
        let mut err = 0f32;
        for ops in &opss {
            let t = Instant::now();
            let p = build(&ctx, ops);
            run_once(&ctx, &p); // compiles the pipeline (lavapipe compiles lazily) and warms up
            let compile = t.elapsed().as_secs_f64();
            let got = read(&ctx, &p.c);
            for (g, w) in got.iter().zip(&ops.want) {
                err = err.max((g - w).abs());
            }
            let mut ts = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                run_once(&ctx, &p);
                ts.push(t.elapsed().as_secs_f64());
            }
            ts.sort_by(f64::total_cmp);
            let med = ts[ts.len() / 2];
            let flop = 2.0 * (ops.m as f64) * (ops.n as f64) * (ops.k as f64);
            // median, and best of the runs (another process on one of the 2 cores halves a run)
            cols.push(format!(
                "{:6.2} / {:6.2}",
                flop / med / 1e9,
                flop / ts[0] / 1e9
            ));
            eprintln!(
                "  {name} {}x{}x{}: first run {:.2}s, {} dispatches",
                ops.m,
                ops.k,
                ops.n,
                compile,
                p.dispatches.len()
            );
        }
        println!("{:<30} {:>16} {:>16} {:>9.2e}", name, cols[0], cols[1], err);
    }
}
