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
// Each accumulator takes its four FMAs of a k step in a row (fma4 in matmul.wgsl).
// Each thread keeps a 2 x 16 block of C. Workgroup: 4 subgroups side by side over columns,
// a 16 x 64 block of C. Dispatch (Mp / 16, Np / 64): row blocks vary fastest, so consecutive
// workgroups reuse one 64-column panel of op(B) from cache. The same padding as matmul_image.

// A thread's 2 x 16 block of C: row i, texel column j.
struct Block2x16 {
    c00: vec4<f32>, c01: vec4<f32>, c02: vec4<f32>, c03: vec4<f32>,
    c10: vec4<f32>, c11: vec4<f32>, c12: vec4<f32>, c13: vec4<f32>,
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
        let lo = textureLoad(tb, vec2<u32>(bq, k4 + bk));
        let hi = textureLoad(tb, vec2<u32>(bq, k4 + 2u + bk));
        // op(B)[k4 + e], texel column q0 + j (b{e}{j}) is lane 4 (e % 2) + j of lo (e < 2)
        // or hi.
        let b00 = subgroupBroadcast(lo, 0u);
        let b01 = subgroupBroadcast(lo, 1u);
        let b02 = subgroupBroadcast(lo, 2u);
        let b03 = subgroupBroadcast(lo, 3u);
        let b10 = subgroupBroadcast(lo, 4u);
        let b11 = subgroupBroadcast(lo, 5u);
        let b12 = subgroupBroadcast(lo, 6u);
        let b13 = subgroupBroadcast(lo, 7u);
        let b20 = subgroupBroadcast(hi, 0u);
        let b21 = subgroupBroadcast(hi, 1u);
        let b22 = subgroupBroadcast(hi, 2u);
        let b23 = subgroupBroadcast(hi, 3u);
        let b30 = subgroupBroadcast(hi, 4u);
        let b31 = subgroupBroadcast(hi, 5u);
        let b32 = subgroupBroadcast(hi, 6u);
        let b33 = subgroupBroadcast(hi, 7u);
        // Accumulator by accumulator (fma4 in matmul.wgsl).
        acc = Block2x16(
            fma4(acc.c00, a0, b00, b10, b20, b30), fma4(acc.c01, a0, b01, b11, b21, b31),
            fma4(acc.c02, a0, b02, b12, b22, b32), fma4(acc.c03, a0, b03, b13, b23, b33),
            fma4(acc.c10, a1, b00, b10, b20, b30), fma4(acc.c11, a1, b01, b11, b21, b31),
            fma4(acc.c12, a1, b02, b12, b22, b32), fma4(acc.c13, a1, b03, b13, b23, b33),
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
