//! Gather kernels (register-blocked, subgroup shared-B) and their FMA and store emitters.

use std::fmt::Write as _;

use crate::wgpu_ctx::{prepare, Ctx, Prepared, Src};
use crate::Ops;

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

pub fn prep_gather(
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

/// How a `gen_sgb` kernel's k step broadcasts op(B) and orders its FMAs.
#[derive(Clone, Copy, PartialEq)]
pub enum SgbBody {
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
    pub fn tag(self) -> &'static str {
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

pub fn prep_sgb(
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
