// C = alpha * A · op(Q) (+ bias) (+ C), Q a frozen weight in ggml's quantized blocks, decoded in
// registers: no f32 or f16 copy of Q exists.
//
//   Q: (rows, cols), quantized along its rows in blocks of 32 (Q8_0, Q4_0) or 256 (Q4_K)
//      elements, repacked for 32-bit loads by src/kernels/qmatmul.rs (FORMAT says which):
//        Q8_0  the blocks' 32 int8 as 8 words each, then every block's f16 scale d, two a word
//              from word `p.scales` on: x = d * q
//        Q4_0  the blocks' 16 bytes of nibbles as 4 words each (byte j: element j in the low
//              nibble, j + 16 in the high), then the scales as for Q8_0: x = d * (q - 8)
//        Q4_K  ggml's 144-byte super-blocks as they are (36 words): f16 d and dmin, 12 bytes of
//              6-bit scales and mins for 8 sub-blocks of 32, 128 bytes of nibbles:
//              x = d * sc[j] * q - dmin * m[j]
//   qmatmul_nt  C (M, N) = A (M, K) · Qᵀ, Q (N, K): the forward of a linear layer, x · Wᵀ with W
//               in nn.Linear's (out, in) layout, and the LM head's h · Eᵀ
//   qmatmul_nn  C (M, N) = A (M, K) · Q, Q (K, N): the input gradient of the same layers, dy · W
//   bias: (N,); each thread computes a 4 x 4 block of C with no workgroup memory.
//   qmatmul_rows  C[i, :] = Q[ids[i] - v0, :] for ids in v0 .. v0 + K (the token embedding, one
//                 vocabulary shard of K rows of N), 0 otherwise, or added with FLAG_ACCUMULATE.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,     // bit 0: add bias; bit 1: accumulate into C
    cols: u32,      // Q's row length (K for qmatmul_nt, N for qmatmul_nn)
    scales: u32,    // first word of the scale region (Q8_0, Q4_0)
    alpha: f32,
    v0: u32,        // qmatmul_rows: the shard's first vocabulary row
}

const FLAG_BIAS: u32 = 1u;
const FLAG_ACCUMULATE: u32 = 2u;

const Q8_0: u32 = 0u;
const Q4_0: u32 = 1u;
const Q4_K: u32 = 2u;
override FORMAT: u32 = Q8_0;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> ids: array<u32>;

// The four bytes of w as signed 8-bit integers, lowest first.
fn bytes_i8(w: u32) -> vec4<f32> {
    let s = bitcast<i32>(w);
    return vec4<f32>(vec4<i32>(s << 24u, s << 16u, s << 8u, s) >> vec4<u32>(24u));
}

// The nibbles at bit `shift` of each of w's four bytes, lowest byte first.
fn nibbles(w: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> (vec4<u32>(0u, 8u, 16u, 24u) + shift)) & vec4<u32>(15u));
}

// Block `blk`'s f16 scale (Q8_0, Q4_0).
fn block_scale(blk: u32) -> f32 {
    let pair = unpack2x16float(q[p.scales + blk / 2u]);
    return select(pair.x, pair.y, (blk & 1u) == 1u);
}

// Byte i of Q4_K super-block `base`'s 12 bytes of packed scales and mins.
fn k_scale_byte(base: u32, i: u32) -> u32 {
    return (q[base + 1u + i / 4u] >> (8u * (i % 4u))) & 255u;
}

// Every format decodes in groups of 32 consecutive values of a row (a Q8_0 or Q4_0 block, a
// Q4_K sub-block): value = scale * raw - min, with the raw integers from raw4 and (scale, min)
// from group_scale, so the kernels apply a group's scale once to a sum over its 32 values.

// (scale, min) of group g (values 32 g .. 32 g + 32) of Q's row `row`.
fn group_scale(row: u32, g: u32) -> vec2<f32> {
    if FORMAT == Q4_K {
        let base = (row * (p.cols / 256u) + g / 8u) * 36u;
        let j = g % 8u;
        var sc: u32;
        var mn: u32;
        if j < 4u {
            sc = k_scale_byte(base, j) & 63u;
            mn = k_scale_byte(base, j + 4u) & 63u;
        } else {
            let hi = k_scale_byte(base, j + 4u);
            sc = (hi & 15u) | ((k_scale_byte(base, j - 4u) >> 6u) << 4u);
            mn = (hi >> 4u) | ((k_scale_byte(base, j) >> 6u) << 4u);
        }
        let dm = unpack2x16float(q[base]);
        return vec2<f32>(dm.x * f32(sc), dm.y * f32(mn));
    }
    return vec2<f32>(block_scale(row * (p.cols / 32u) + g), 0.0);
}

// The raw integers of Q[row, col .. col + 4] (col a multiple of 4) as f32.
fn raw4(row: u32, col: u32) -> vec4<f32> {
    if FORMAT == Q4_K {
        let e = col % 256u;
        let j = e / 32u;
        let w = q[(row * (p.cols / 256u) + col / 256u) * 36u + 4u + (j / 2u) * 8u + (e % 32u) / 4u];
        return nibbles(w, (j % 2u) * 4u);
    }
    let blk = row * (p.cols / 32u) + col / 32u;
    let e = col % 32u;
    if FORMAT == Q4_0 {
        let w = q[blk * 4u + (e % 16u) / 4u];
        return nibbles(w, select(0u, 4u, e >= 16u)) - vec4<f32>(8.0);
    }
    return bytes_i8(q[blk * 8u + e / 4u]);
}

// Q[row, col .. col + 4], dequantized.
fn load4(row: u32, col: u32) -> vec4<f32> {
    let sm = group_scale(row, col / 32u);
    return sm.x * raw4(row, col) - vec4<f32>(sm.y);
}

// C[row, col] = alpha * acc (+ bias) (+ C), for col < N.
fn store(row: u32, col: u32, acc: f32) {
    if col >= p.n {
        return;
    }
    var v = p.alpha * acc;
    if (p.flags & FLAG_BIAS) != 0u {
        v += bias[col];
    }
    let i = row * p.n + col;
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        v += c[i];
    }
    c[i] = v;
}

// Row i of a 4-row block of C (row0 + i), 4 columns from col0, each stored when in range.
fn store_row(row0: u32, i: u32, col0: u32, acc: vec4<f32>) {
    if row0 + i < p.m {
        store(row0 + i, col0, acc.x);
        store(row0 + i, col0 + 1u, acc.y);
        store(row0 + i, col0 + 2u, acc.z);
        store(row0 + i, col0 + 3u, acc.w);
    }
}

// The kernels keep their 4 x 4 block of C in named registers and unroll the 4 rows by hand: a
// private array indexed in a loop is spilled to memory by some compilers (llvmpipe).

@compute @workgroup_size(64)
fn qmatmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * 4u;
    let col0 = (wid.x * 64u + lid.x) * 4u;
    let last = p.m - 1u;
    let k4 = p.k / 4u;
    let a0 = min(row0, last) * k4;
    let a1 = min(row0 + 1u, last) * k4;
    let a2 = min(row0 + 2u, last) * k4;
    let a3 = min(row0 + 3u, last) * k4;
    let n0 = min(col0, p.n - 1u);
    let n1 = min(col0 + 1u, p.n - 1u);
    let n2 = min(col0 + 2u, p.n - 1u);
    let n3 = min(col0 + 3u, p.n - 1u);
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    let one = vec4<f32>(1.0);
    for (var g = 0u; g < p.k / 32u; g++) {
        // Sums over the group of A times the raw integers, and of A alone (for the mins).
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        var s2 = vec4<f32>(0.0);
        var s3 = vec4<f32>(0.0);
        var xs = vec4<f32>(0.0);
        for (var w = 0u; w < 8u; w++) {
            let k = 8u * g + w;
            let kk = 4u * k;
            let b0 = raw4(n0, kk);
            let b1 = raw4(n1, kk);
            let b2 = raw4(n2, kk);
            let b3 = raw4(n3, kk);
            let x0 = a4[a0 + k];
            let x1 = a4[a1 + k];
            let x2 = a4[a2 + k];
            let x3 = a4[a3 + k];
            s0 += vec4<f32>(dot(x0, b0), dot(x0, b1), dot(x0, b2), dot(x0, b3));
            s1 += vec4<f32>(dot(x1, b0), dot(x1, b1), dot(x1, b2), dot(x1, b3));
            s2 += vec4<f32>(dot(x2, b0), dot(x2, b1), dot(x2, b2), dot(x2, b3));
            s3 += vec4<f32>(dot(x3, b0), dot(x3, b1), dot(x3, b2), dot(x3, b3));
            if FORMAT == Q4_K {
                xs += vec4<f32>(dot(x0, one), dot(x1, one), dot(x2, one), dot(x3, one));
            }
        }
        let m0 = group_scale(n0, g);
        let m1 = group_scale(n1, g);
        let m2 = group_scale(n2, g);
        let m3 = group_scale(n3, g);
        let sc = vec4<f32>(m0.x, m1.x, m2.x, m3.x);
        let mn = vec4<f32>(m0.y, m1.y, m2.y, m3.y);
        c0 += s0 * sc - xs.x * mn;
        c1 += s1 * sc - xs.y * mn;
        c2 += s2 * sc - xs.z * mn;
        c3 += s3 * sc - xs.w * mn;
    }
    store_row(row0, 0u, col0, c0);
    store_row(row0, 1u, col0, c1);
    store_row(row0, 2u, col0, c2);
    store_row(row0, 3u, col0, c3);
}

@compute @workgroup_size(64)
fn qmatmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * 4u;
    let col0 = (wid.x * 64u + lid.x) * 4u;
    if col0 >= p.n {
        return;
    }
    let last = p.m - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + 1u, last);
    let r2 = min(row0 + 2u, last);
    let r3 = min(row0 + 3u, last);
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var kk = 0u;
    if p.k % 4u == 0u {
        // Four rows of Q per step, A read as vec4 along K.
        let k4 = p.k / 4u;
        for (var k = 0u; k < k4; k++) {
            let x0 = a4[r0 * k4 + k];
            let x1 = a4[r1 * k4 + k];
            let x2 = a4[r2 * k4 + k];
            let x3 = a4[r3 * k4 + k];
            let b0 = load4(4u * k, col0);
            let b1 = load4(4u * k + 1u, col0);
            let b2 = load4(4u * k + 2u, col0);
            let b3 = load4(4u * k + 3u, col0);
            c0 += x0.x * b0 + x0.y * b1 + x0.z * b2 + x0.w * b3;
            c1 += x1.x * b0 + x1.y * b1 + x1.z * b2 + x1.w * b3;
            c2 += x2.x * b0 + x2.y * b1 + x2.z * b2 + x2.w * b3;
            c3 += x3.x * b0 + x3.y * b1 + x3.z * b2 + x3.w * b3;
        }
        kk = p.k;
    }
    for (; kk < p.k; kk++) {
        let b = load4(kk, col0);
        c0 += a[r0 * p.k + kk] * b;
        c1 += a[r1 * p.k + kk] * b;
        c2 += a[r2 * p.k + kk] * b;
        c3 += a[r3 * p.k + kk] * b;
    }
    store_row(row0, 0u, col0, c0);
    store_row(row0, 1u, col0, c1);
    store_row(row0, 2u, col0, c2);
    store_row(row0, 3u, col0, c3);
}

@compute @workgroup_size(64)
fn qmatmul_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = ((wid.x + wid.y * nwg.x) * 64u + lid) * 4u;
    if e >= p.m * p.n {
        return;
    }
    let row = e / p.n;
    let col = e % p.n;
    let id = ids[row];
    var v = vec4<f32>(0.0);
    if id >= p.v0 && id - p.v0 < p.k {
        v = load4(id - p.v0, col);
    }
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        v += vec4<f32>(c[e], c[e + 1u], c[e + 2u], c[e + 3u]);
    }
    c[e] = v.x;
    c[e + 1u] = v.y;
    c[e + 2u] = v.z;
    c[e + 3u] = v.w;
}
