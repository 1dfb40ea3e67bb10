// C[b] = alpha * op(A[b]) · op(B[b]) (+ bias) (+ C[b])
//
//   op(A): (M, K), stored (M, K) or, with TRANS_A, (K, M)
//   op(B): (K, N), stored (K, N) or, with TRANS_B, (N, K)
//   C: (M, N); bias: (N,), broadcast over rows and batches
//   batch b = workgroup_id.z; each operand starts at b * stride_* (a stride of 0 broadcasts)
//
// Two kernels, chosen per adapter (src/kernels/matmul.rs):
//   matmul_tiled     workgroup-memory tiles, 16x16 threads each computing TM x TN outputs
//                    (TM = TN = 1 is the textbook kernel). For GPUs.
//   matmul_register  no workgroup memory and no barriers: each thread keeps a 4x4 block of C
//                    in registers. For CPU adapters (lavapipe), where barriers are very costly.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,     // bit 0: add bias; bit 1: accumulate into C
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
}

const FLAG_BIAS: u32 = 1u;
const FLAG_ACCUMULATE: u32 = 2u;

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override TM: u32 = 4u;
override TN: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// op(A)[row, kk]
fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if TRANS_A {
        return a[base + kk * p.m + row];
    }
    return a[base + row * p.k + kk];
}

// op(B)[kk, col]
fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if TRANS_B {
        return b[base + col * p.k + kk];
    }
    return b[base + kk * p.n + col];
}

fn store_c(base: u32, row: u32, col: u32, acc: f32) {
    let i = base + row * p.n + col;
    var v = p.alpha * acc;
    if (p.flags & FLAG_BIAS) != 0u {
        v += bias[col];
    }
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        v += c[i];
    }
    c[i] = v;
}

const TILE: u32 = 16u;     // threads per side, and the K depth of a tile
const MAX_BM: u32 = 64u;   // TILE * max TM

var<workgroup> tile_a: array<f32, 1024>;  // (TILE, BM): tile_a[kk * BM + r]
var<workgroup> tile_b: array<f32, 1024>;  // (TILE, BN): tile_b[kk * BN + c]

@compute @workgroup_size(16, 16)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let bm = TILE * TM;
    let bn = TILE * TN;
    let row0 = wid.y * bm;
    let col0 = wid.x * bn;
    let base_a = wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = wid.z * p.stride_c;
    let tid = lid.y * TILE + lid.x;

    var acc: array<f32, 16>;
    var ra: array<f32, 4>;
    var rb: array<f32, 4>;
    for (var t = 0u; t < p.k; t += TILE) {
        // Stage op(A)[row0 .. row0+bm, t .. t+TILE], walking memory contiguously.
        for (var e = tid; e < bm * TILE; e += TILE * TILE) {
            var r: u32;
            var kk: u32;
            if TRANS_A {
                kk = e / bm;
                r = e % bm;
            } else {
                r = e / TILE;
                kk = e % TILE;
            }
            var v = 0.0;
            if row0 + r < p.m && t + kk < p.k {
                v = load_a(base_a, row0 + r, t + kk);
            }
            tile_a[kk * bm + r] = v;
        }
        for (var e = tid; e < bn * TILE; e += TILE * TILE) {
            var cc: u32;
            var kk: u32;
            if TRANS_B {
                cc = e / TILE;
                kk = e % TILE;
            } else {
                kk = e / bn;
                cc = e % bn;
            }
            var v = 0.0;
            if col0 + cc < p.n && t + kk < p.k {
                v = load_b(base_b, t + kk, col0 + cc);
            }
            tile_b[kk * bn + cc] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk++) {
            for (var i = 0u; i < TM; i++) {
                ra[i] = tile_a[kk * bm + lid.y + i * TILE];
            }
            for (var j = 0u; j < TN; j++) {
                rb[j] = tile_b[kk * bn + lid.x + j * TILE];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * 4u + j] = fma(ra[i], rb[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let row = row0 + lid.y + i * TILE;
        for (var j = 0u; j < TN; j++) {
            let col = col0 + lid.x + j * TILE;
            if row < p.m && col < p.n {
                store_c(base_c, row, col, acc[i * 4u + j]);
            }
        }
    }
}

const REG_WG: u32 = 64u;   // threads per workgroup, all along N
const REG_RM: u32 = 4u;    // rows per thread (the same rows for the whole workgroup)
const REG_RN: u32 = 4u;    // columns per thread, REG_WG apart

// Each workgroup owns rows row0 .. row0+4 and 256 columns; thread x owns columns
// col0 + x + 64*j. Loads of op(A) are uniform across the workgroup, so a SIMD CPU driver
// fetches each once; out-of-range rows and columns are clamped on load and skipped on store,
// so the inner loop has no branches.
@compute @workgroup_size(64)
fn matmul_register(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.y * REG_RM;
    let col0 = wid.x * (REG_WG * REG_RN) + lid.x;
    let base_a = wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = wid.z * p.stride_c;
    let last_row = p.m - 1u;
    let last_col = p.n - 1u;
    let r0 = min(row0, last_row);
    let r1 = min(row0 + 1u, last_row);
    let r2 = min(row0 + 2u, last_row);
    let r3 = min(row0 + 3u, last_row);
    let c0 = min(col0, last_col);
    let c1 = min(col0 + REG_WG, last_col);
    let c2 = min(col0 + 2u * REG_WG, last_col);
    let c3 = min(col0 + 3u * REG_WG, last_col);

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(
            load_b(base_b, kk, c0),
            load_b(base_b, kk, c1),
            load_b(base_b, kk, c2),
            load_b(base_b, kk, c3),
        );
        acc0 = fma(vec4<f32>(load_a(base_a, r0, kk)), bv, acc0);
        acc1 = fma(vec4<f32>(load_a(base_a, r1, kk)), bv, acc1);
        acc2 = fma(vec4<f32>(load_a(base_a, r2, kk)), bv, acc2);
        acc3 = fma(vec4<f32>(load_a(base_a, r3, kk)), bv, acc3);
    }
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < REG_RM; i++) {
        let row = row0 + i;
        for (var j = 0u; j < REG_RN; j++) {
            let col = col0 + j * REG_WG;
            if row < p.m && col < p.n {
                store_c(base_c, row, col, rows[i][j]);
            }
        }
    }
}

// Vector-load variant of matmul_register for shapes whose contiguous dimensions are multiples
// of 4 (K always; M when TRANS_A; N unless TRANS_B). On lavapipe (Mesa 22) every storage load
// inside a loop costs a per-lane, per-component scalar loop, so what matters is FMAs per loaded
// element: each thread keeps an 8 x 8 block of C (VR rows, VC groups of 4 columns) and, per 4
// steps of k, loads 8 + 8 vec4 for 256 FMAs (the 4x4 scalar kernel: 8 scalars for 16).
// Workgroup: 8 x 8 threads covering 64 x 64 of C.
@group(0) @binding(5) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> b4: array<vec4<f32>>;

const VR: u32 = 8u;   // rows per thread (multiple of 4)
const VC: u32 = 2u;   // column groups of 4 per thread
const VWG: u32 = 8u;  // threads per side of the workgroup

// op(A)[row0 .. row0+4, kk .. kk+4] as 4 vectors over k (one per row); rows clamped to M.
fn load_a4(base: u32, row0: u32, kk: u32) -> mat4x4<f32> {
    if TRANS_A {
        // stored (K, M), M % 4 == 0: read 4 k-rows of 4 consecutive m, then transpose
        let q = p.m / 4u;
        let s = (base + kk * p.m + min(row0, p.m - 4u)) / 4u;
        return transpose(mat4x4<f32>(a4[s], a4[s + q], a4[s + 2u * q], a4[s + 3u * q]));
    }
    let last = p.m - 1u;
    return mat4x4<f32>(
        a4[(base + min(row0, last) * p.k + kk) / 4u],
        a4[(base + min(row0 + 1u, last) * p.k + kk) / 4u],
        a4[(base + min(row0 + 2u, last) * p.k + kk) / 4u],
        a4[(base + min(row0 + 3u, last) * p.k + kk) / 4u],
    );
}

// Column t of the result is op(B)[kk + t, col0 .. col0+4] (a vector over n); cols clamped.
fn load_b4(base: u32, col0: u32, kk: u32) -> mat4x4<f32> {
    if TRANS_B {
        // stored (N, K): read 4 n-rows of 4 consecutive k, then transpose
        let last = p.n - 1u;
        return transpose(mat4x4<f32>(
            b4[(base + min(col0, last) * p.k + kk) / 4u],
            b4[(base + min(col0 + 1u, last) * p.k + kk) / 4u],
            b4[(base + min(col0 + 2u, last) * p.k + kk) / 4u],
            b4[(base + min(col0 + 3u, last) * p.k + kk) / 4u],
        ));
    }
    let q = p.n / 4u;
    let s = (base + kk * p.n + min(col0, p.n - 4u)) / 4u;
    return mat4x4<f32>(b4[s], b4[s + q], b4[s + 2u * q], b4[s + 3u * q]);
}

@compute @workgroup_size(8, 8)
fn matmul_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = (wid.y * VWG + lid.y) * VR;
    let col0 = (wid.x * VWG + lid.x) * (4u * VC);
    let base_a = wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = wid.z * p.stride_c;

    var acc: array<vec4<f32>, 16>;  // acc[r * VC + j]: row r, columns 4j .. 4j+4
    var am: array<mat4x4<f32>, 2>;  // VR / 4 blocks of rows
    for (var kk = 0u; kk < p.k; kk += 4u) {
        for (var ib = 0u; ib < VR / 4u; ib++) {
            am[ib] = load_a4(base_a, row0 + 4u * ib, kk);
        }
        for (var j = 0u; j < VC; j++) {
            let bm = load_b4(base_b, col0 + 4u * j, kk);
            for (var r = 0u; r < VR; r++) {
                acc[r * VC + j] += bm * am[r / 4u][r % 4u];
            }
        }
    }
    for (var r = 0u; r < VR; r++) {
        for (var j = 0u; j < VC; j++) {
            for (var e = 0u; e < 4u; e++) {
                let row = row0 + r;
                let col = col0 + 4u * j + e;
                if row < p.m && col < p.n {
                    store_c(base_c, row, col, acc[r * VC + j][e]);
                }
            }
        }
    }
}
