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

// Q[row, col .. col + 4], dequantized; col is a multiple of 4.
fn load4(row: u32, col: u32) -> vec4<f32> {
    if FORMAT == Q4_K {
        let blk = row * (p.cols / 256u) + col / 256u;
        let base = blk * 36u;
        let e = col % 256u;
        let j = e / 32u;
        let l = e % 32u;
        let w = q[base + 4u + (j / 2u) * 8u + l / 4u];
        let x = nibbles(w, (j % 2u) * 4u);
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
        return (dm.x * f32(sc)) * x - vec4<f32>(dm.y * f32(mn));
    }
    let blk = row * (p.cols / 32u) + col / 32u;
    let e = col % 32u;
    let d = block_scale(blk);
    if FORMAT == Q4_0 {
        let w = q[blk * 4u + (e % 16u) / 4u];
        return d * (nibbles(w, select(0u, 4u, e >= 16u)) - vec4<f32>(8.0));
    }
    return d * bytes_i8(q[blk * 8u + e / 4u]);
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

// Rows row0 .. row0 + 4 of C, clamped to the last (duplicates are computed, not stored).
fn rows4(row0: u32) -> vec4<u32> {
    return min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.m - 1u));
}

@compute @workgroup_size(64)
fn qmatmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * 4u;
    let col0 = (wid.x * 64u + lid.x) * 4u;
    if col0 >= p.n {
        return;
    }
    let r = rows4(row0);
    let n = min(vec4<u32>(col0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u));
    let k4 = p.k / 4u;
    var acc: array<vec4<f32>, 4>;
    for (var kk = 0u; kk < p.k; kk += 4u) {
        let b0 = load4(n.x, kk);
        let b1 = load4(n.y, kk);
        let b2 = load4(n.z, kk);
        let b3 = load4(n.w, kk);
        for (var i = 0u; i < 4u; i++) {
            let x = a4[r[i] * k4 + kk / 4u];
            acc[i] += vec4<f32>(dot(x, b0), dot(x, b1), dot(x, b2), dot(x, b3));
        }
    }
    for (var i = 0u; i < 4u; i++) {
        if row0 + i < p.m {
            for (var j = 0u; j < 4u; j++) {
                store(row0 + i, col0 + j, acc[i][j]);
            }
        }
    }
}

@compute @workgroup_size(64)
fn qmatmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * 4u;
    let col0 = (wid.x * 64u + lid.x) * 4u;
    if col0 >= p.n {
        return;
    }
    let r = rows4(row0);
    var acc: array<vec4<f32>, 4>;
    for (var kk = 0u; kk < p.k; kk++) {
        let b = load4(kk, col0);
        for (var i = 0u; i < 4u; i++) {
            acc[i] += a[r[i] * p.k + kk] * b;
        }
    }
    for (var i = 0u; i < 4u; i++) {
        if row0 + i < p.m {
            for (var j = 0u; j < 4u; j++) {
                store(row0 + i, col0 + j, acc[i][j]);
            }
        }
    }
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
