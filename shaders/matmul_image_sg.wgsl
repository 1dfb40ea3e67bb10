// matmul_image_sg: the image matmul (matmul_image) with op(B) shared through the subgroup.
// Appended to matmul.wgsl (ShaderFile::MatmulImageSubgroup: its Params, bindings, packed
// operand textures ta / tb and write_c); built only where the adapter enables SUBGROUP and its
// subgroups are exactly 8 invocations wide (llvmpipe on 256-bit vectors, where a subgroup is
// the 8 lanes of one SIMD vector).
//
// Why: on llvmpipe every texel load is a gather of one texel per lane (about 5-7 ns per 8-lane
// vector). In matmul_image the 8 lanes of a vector share their rows and each loads its own 8
// texels of op(B) per k step, 12 loads for 32 vector FMAs. Here the lanes of a subgroup own 8
// different pairs of rows and the same 16 columns, so the 16 texels of op(B) a k step needs are
// the same for every lane: two loads fetch them (lane l: row k4 + l / 4 (+ 2), texel column
// q0 + l % 4) and subgroupBroadcast hands each to every lane, 4 loads for 32 vector FMAs.
// Each thread keeps a 2 x 16 block of C. Workgroup: 4 subgroups side by side over columns,
// a 16 x 64 block of C. Dispatch (Mp / 16, Np / 64): row blocks vary fastest, so consecutive
// workgroups reuse one 64-column panel of op(B) from cache. The same padding as matmul_image.

// A thread's 2 x 16 block of C: row i, texel column j.
struct Block2x16 {
    c00: vec4<f32>, c01: vec4<f32>, c02: vec4<f32>, c03: vec4<f32>,
    c10: vec4<f32>, c11: vec4<f32>, c12: vec4<f32>, c13: vec4<f32>,
}

// One k step: a0, a1 op(A)[row i, k]; b0..b3 the four texels of op(B)[k] (16 columns).
fn block2x16_fma(
    c: Block2x16,
    a0: f32,
    a1: f32,
    b0: vec4<f32>,
    b1: vec4<f32>,
    b2: vec4<f32>,
    b3: vec4<f32>,
) -> Block2x16 {
    let x = vec4<f32>(a0);
    let y = vec4<f32>(a1);
    return Block2x16(
        fma(x, b0, c.c00), fma(x, b1, c.c01), fma(x, b2, c.c02), fma(x, b3, c.c03),
        fma(y, b0, c.c10), fma(y, b1, c.c11), fma(y, b2, c.c12), fma(y, b3, c.c13),
    );
}

@compute @workgroup_size(32)
fn matmul_image_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let kq = textureDimensions(ta).x;
    let r0 = (wid.x * 8u + lane) * 2u;
    let q0 = (wid.y * 4u + sg) * 4u;
    // The op(B) texel this lane fetches for its subgroup: k offset lane / 4 (and + 2).
    let bq = q0 + lane % 4u;
    let bk = lane / 4u;
    let z = vec4<f32>(0.0);
    var acc = Block2x16(z, z, z, z, z, z, z, z);
    for (var kk = 0u; kk < kq; kk++) {
        let k4 = 4u * kk;
        let a0 = textureLoad(ta, vec2<u32>(kk, r0));
        let a1 = textureLoad(ta, vec2<u32>(kk, r0 + 1u));
        // Texel (k4 + e, q0 + j) is in lane 4 (e % 2) + j of lo (e < 2) or hi.
        let lo = textureLoad(tb, vec2<u32>(bq, k4 + bk));
        let hi = textureLoad(tb, vec2<u32>(bq, k4 + 2u + bk));
        acc = block2x16_fma(
            acc, a0.x, a1.x,
            subgroupBroadcast(lo, 0u), subgroupBroadcast(lo, 1u),
            subgroupBroadcast(lo, 2u), subgroupBroadcast(lo, 3u),
        );
        acc = block2x16_fma(
            acc, a0.y, a1.y,
            subgroupBroadcast(lo, 4u), subgroupBroadcast(lo, 5u),
            subgroupBroadcast(lo, 6u), subgroupBroadcast(lo, 7u),
        );
        acc = block2x16_fma(
            acc, a0.z, a1.z,
            subgroupBroadcast(hi, 0u), subgroupBroadcast(hi, 1u),
            subgroupBroadcast(hi, 2u), subgroupBroadcast(hi, 3u),
        );
        acc = block2x16_fma(
            acc, a0.w, a1.w,
            subgroupBroadcast(hi, 4u), subgroupBroadcast(hi, 5u),
            subgroupBroadcast(hi, 6u), subgroupBroadcast(hi, 7u),
        );
    }
    var rows = array<array<vec4<f32>, 4>, 2>(
        array<vec4<f32>, 4>(acc.c00, acc.c01, acc.c02, acc.c03),
        array<vec4<f32>, 4>(acc.c10, acc.c11, acc.c12, acc.c13),
    );
    let col0 = 4u * q0;
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + 4u * j;
        // The bias of these 4 columns, read once for both rows.
        var bias4 = vec4<f32>(0.0);
        if (p.flags & FLAG_BIAS) != 0u {
            for (var e = 0u; e < 4u; e++) {
                bias4[e] = bias[min(col + e, p.n - 1u)];
            }
        }
        for (var i = 0u; i < 2u; i++) {
            let row = r0 + i;
            if row < p.m {
                let v = p.alpha * rows[i][j] + bias4;
                for (var e = 0u; e < 4u; e++) {
                    if col + e < p.n {
                        write_c(row * p.n + col + e, v[e]);
                    }
                }
            }
        }
    }
}
