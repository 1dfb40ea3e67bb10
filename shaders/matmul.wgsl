// C[b] = alpha * op(A[b]) · op(B[b]) (+ bias) (+ C[b])
//
//   op(A): (M, K), stored (M, K) or, with TRANS_A, (K, M)
//   op(B): (K, N), stored (K, N) or, with TRANS_B, (N, K)
//   C: (M, N); bias: (N,), broadcast over rows and batches
//   batch b = workgroup_id.z; each operand starts at b * stride_* (a stride of 0 broadcasts)
//
// Two kernels, chosen per adapter (src/kernels/matmul.rs):
//   matmul_tiled     workgroup-memory tiles, 16x16 threads each computing TM x TN outputs
//                    (TM = TN = 1 is the textbook kernel). For GPUs. TM = TN = 8 selects the
//                    GPU-class kernel (tiled_8x8 below): 128x128 block tile, BK = 8, double
//                    buffered, 8x8 register micro-tile read from workgroup memory as vec4.
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

// Reads of the B operand (a frozen weight, in the training graph) go through b_at / b4_at:
// ShaderFile::MatmulF16 builds this file with B stored as f16 and widened here.
fn b_at(i: u32) -> f32 { return b[i]; }

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
        return b_at(base + col * p.k + kk);
    }
    return b_at(base + kk * p.n + col);
}

// op(A)[row, kk] and op(B)[kk, col], 0 past the edges (for staging partial tiles).
fn load_a_or_0(base: u32, row: u32, kk: u32) -> f32 {
    if row < p.m && kk < p.k {
        return load_a(base, row, kk);
    }
    return 0.0;
}

fn load_b_or_0(base: u32, kk: u32, col: u32) -> f32 {
    if kk < p.k && col < p.n {
        return load_b(base, kk, col);
    }
    return 0.0;
}

// Element e of a staged tile that is `side` rows (of op(A)) or columns (of op(B)) by `depth`
// along k, as (row or column, kk), in the order that walks global memory contiguously:
// `contig_k` when the operand's stored rows run along k (A not transposed, B transposed).
fn stage_coord(e: u32, side: u32, depth: u32, contig_k: bool) -> vec2<u32> {
    if contig_k {
        return vec2<u32>(e / depth, e % depth);
    }
    return vec2<u32>(e % side, e / side);
}

fn store_c(base: u32, row: u32, col: u32, acc: f32) {
    var b = 0.0;
    if (p.flags & FLAG_BIAS) != 0u {
        b = bias[col];
    }
    write_c(base + row * p.n + col, p.alpha * acc + b);
}

// C[i] = v, or += v when accumulating.
fn write_c(i: u32, v: f32) {
    var x = v;
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        x += c[i];
    }
    c[i] = x;
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
    // TM and TN are pipeline constants: the driver sees only one of the two paths.
    if TM == 8u && TN == 8u {
        tiled_8x8(wid, lid);
    } else {
        tiled_small(wid, lid);
    }
}

// TM, TN in 1..=4: one TILE-deep stage per barrier pair, scalar workgroup-memory reads.
fn tiled_small(wid: vec3<u32>, lid: vec3<u32>) {
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
            let rk = stage_coord(e, bm, TILE, !TRANS_A);
            tile_a[rk.y * bm + rk.x] = load_a_or_0(base_a, row0 + rk.x, t + rk.y);
        }
        for (var e = tid; e < bn * TILE; e += TILE * TILE) {
            let ck = stage_coord(e, bn, TILE, TRANS_B);
            tile_b[ck.y * bn + ck.x] = load_b_or_0(base_b, t + ck.y, col0 + ck.x);
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

// ---------------------------------------------------------------------------------------------
// tiled_8x8: the GPU-class kernel (matmul_tiled with TM = TN = 8).
//
// Workgroup of 16 x 16 threads owns a 128 x 128 block of C. Thread (tx, ty) owns rows
// row0 + ty*4 + {0..3} and row0 + 64 + ty*4 + {0..3}, columns col0 + tx*4 + {0..3} and
// col0 + 64 + tx*4 + {0..3}: an 8 x 8 micro-tile in 16 vec4 accumulators. Per step of k, it reads
// two vec4 of op(A) and two vec4 of op(B) from workgroup memory (broadcast within a warp for A,
// 16 consecutive vec4 for B) for 64 FMAs.
//
// Tiles of BK = 8 along k are staged k-major (big_a[kk][m], big_b[kk][n]) in two buffers: while
// the FMAs of tile t run, the global loads of tile t+1 are already in flight (into registers),
// and they are written to the other buffer afterwards, so there is one barrier per tile. Each
// thread loads 4 elements of each operand per tile, walking memory contiguously for every
// transpose; rows are padded to 132 floats so these scalar stores do not conflict on banks.
// Out-of-range elements load as 0; out-of-range outputs are not stored.

const BIG: u32 = 128u;     // block tile side
const BK: u32 = 8u;        // k depth of one stage
const LDS: u32 = 33u;      // vec4 per staged k-row: 128 floats + 4 of padding
const STAGE: u32 = 264u;   // BK * LDS: vec4 per buffer

var<workgroup> big_a: array<vec4<f32>, 528>;  // 2 buffers of (BK, LDS) vec4 over m
var<workgroup> big_b: array<vec4<f32>, 528>;  // 2 buffers of (BK, LDS) vec4 over n

// Element i (0..4) of this thread's share of a (BIG, BK) tile: (row or column, kk).
fn big_coord(tid: u32, i: u32, contig_k: bool) -> vec2<u32> {
    return stage_coord(tid + i * 256u, BIG, BK, contig_k);
}

fn big_fetch_a(base: u32, row0: u32, t: u32, tid: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let rk = big_coord(tid, i, !TRANS_A);
        v[i] = load_a_or_0(base, row0 + rk.x, t + rk.y);
    }
    return v;
}

fn big_fetch_b(base: u32, col0: u32, t: u32, tid: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let ck = big_coord(tid, i, TRANS_B);
        v[i] = load_b_or_0(base, t + ck.y, col0 + ck.x);
    }
    return v;
}

fn big_stage(buf: u32, tid: u32, va: vec4<f32>, vb: vec4<f32>) {
    let s = buf * STAGE;
    for (var i = 0u; i < 4u; i++) {
        let rk = big_coord(tid, i, !TRANS_A);
        big_a[s + rk.y * LDS + rk.x / 4u][rk.x % 4u] = va[i];
        let ck = big_coord(tid, i, TRANS_B);
        big_b[s + ck.y * LDS + ck.x / 4u][ck.x % 4u] = vb[i];
    }
}

// Store 4 consecutive outputs of one row, each guarded.
fn big_store(base: u32, row: u32, col: u32, v: vec4<f32>) {
    if row >= p.m {
        return;
    }
    for (var e = 0u; e < 4u; e++) {
        if col + e < p.n {
            store_c(base, row, col + e, v[e]);
        }
    }
}

fn tiled_8x8(wid: vec3<u32>, lid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;
    let row0 = wid.y * BIG;
    let col0 = wid.x * BIG;
    let base_a = wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = wid.z * p.stride_c;

    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0); var c41 = vec4<f32>(0.0);
    var c50 = vec4<f32>(0.0); var c51 = vec4<f32>(0.0);
    var c60 = vec4<f32>(0.0); var c61 = vec4<f32>(0.0);
    var c70 = vec4<f32>(0.0); var c71 = vec4<f32>(0.0);

    let tiles = (p.k + BK - 1u) / BK;
    var va = big_fetch_a(base_a, row0, 0u, tid);
    var vb = big_fetch_b(base_b, col0, 0u, tid);
    big_stage(0u, tid, va, vb);
    workgroupBarrier();
    var buf = 0u;
    for (var t = 0u; t < tiles; t++) {
        let more = t + 1u < tiles;
        if more {
            va = big_fetch_a(base_a, row0, (t + 1u) * BK, tid);
            vb = big_fetch_b(base_b, col0, (t + 1u) * BK, tid);
        }
        let s = buf * STAGE;
        for (var kk = 0u; kk < BK; kk++) {
            let o = s + kk * LDS;
            let a0 = big_a[o + ty];
            let a1 = big_a[o + 16u + ty];
            let b0 = big_b[o + tx];
            let b1 = big_b[o + 16u + tx];
            c00 = fma(vec4<f32>(a0.x), b0, c00); c01 = fma(vec4<f32>(a0.x), b1, c01);
            c10 = fma(vec4<f32>(a0.y), b0, c10); c11 = fma(vec4<f32>(a0.y), b1, c11);
            c20 = fma(vec4<f32>(a0.z), b0, c20); c21 = fma(vec4<f32>(a0.z), b1, c21);
            c30 = fma(vec4<f32>(a0.w), b0, c30); c31 = fma(vec4<f32>(a0.w), b1, c31);
            c40 = fma(vec4<f32>(a1.x), b0, c40); c41 = fma(vec4<f32>(a1.x), b1, c41);
            c50 = fma(vec4<f32>(a1.y), b0, c50); c51 = fma(vec4<f32>(a1.y), b1, c51);
            c60 = fma(vec4<f32>(a1.z), b0, c60); c61 = fma(vec4<f32>(a1.z), b1, c61);
            c70 = fma(vec4<f32>(a1.w), b0, c70); c71 = fma(vec4<f32>(a1.w), b1, c71);
        }
        if more {
            big_stage(buf ^ 1u, tid, va, vb);
        }
        workgroupBarrier();
        buf ^= 1u;
    }

    let r0 = row0 + ty * 4u;
    let r1 = row0 + 64u + ty * 4u;
    let q0 = col0 + tx * 4u;
    let q1 = col0 + 64u + tx * 4u;
    big_store(base_c, r0, q0, c00); big_store(base_c, r0, q1, c01);
    big_store(base_c, r0 + 1u, q0, c10); big_store(base_c, r0 + 1u, q1, c11);
    big_store(base_c, r0 + 2u, q0, c20); big_store(base_c, r0 + 2u, q1, c21);
    big_store(base_c, r0 + 3u, q0, c30); big_store(base_c, r0 + 3u, q1, c31);
    big_store(base_c, r1, q0, c40); big_store(base_c, r1, q1, c41);
    big_store(base_c, r1 + 1u, q0, c50); big_store(base_c, r1 + 1u, q1, c51);
    big_store(base_c, r1 + 2u, q0, c60); big_store(base_c, r1 + 2u, q1, c61);
    big_store(base_c, r1 + 3u, q0, c70); big_store(base_c, r1 + 3u, q1, c71);
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
fn b4_at(i: u32) -> vec4<f32> { return b4[i]; }

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
            b4_at((base + min(col0, last) * p.k + kk) / 4u),
            b4_at((base + min(col0 + 1u, last) * p.k + kk) / 4u),
            b4_at((base + min(col0 + 2u, last) * p.k + kk) / 4u),
            b4_at((base + min(col0 + 3u, last) * p.k + kk) / 4u),
        ));
    }
    let q = p.n / 4u;
    let s = (base + kk * p.n + min(col0, p.n - 4u)) / 4u;
    return mat4x4<f32>(b4_at(s), b4_at(s + q), b4_at(s + 2u * q), b4_at(s + 3u * q));
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

// ---- Image variant (CPU adapters): operands packed into rgba32float storage textures ----
//
// Mesa's llvmpipe compiles a storage-buffer load whose address varies across the SIMD lanes
// into a loop over the lanes with a branch per lane, and treats every address inside a loop
// as varying (its uniformity test accepts only constants and push constants); a storage
// texture load is a branch-free vector gather, about 25 times cheaper per vec4 (measured by
// benches/lavapipe_matmul/). So on CPU adapters matmul runs as three dispatches: pack_a and
// pack_b write op(A) (Mp x Kp/4 texels) and op(B) (Kp x Np/4 texels), zero-padded to
// Mp % 32 == 0, Kp % 4 == 0, Np % 64 == 0, and matmul_image multiplies them with no bounds
// checks in its loop, storing C through store_c (alpha, bias, accumulate). Batches of 1.

@group(0) @binding(7) var pack_out: texture_storage_2d<rgba32float, write>;
@group(0) @binding(8) var ta: texture_storage_2d<rgba32float, read>;
@group(0) @binding(9) var tb: texture_storage_2d<rgba32float, read>;

// texel (x, y) = op(A)[y, 4x .. 4x+4], zero past M or K.
@compute @workgroup_size(8, 8)
fn matmul_pack_a(@builtin(global_invocation_id) g: vec3<u32>) {
    let size = textureDimensions(pack_out);
    if g.x >= size.x || g.y >= size.y {
        return;
    }
    var v: vec4<f32>;
    for (var e = 0u; e < 4u; e++) {
        v[e] = load_a_or_0(0u, g.y, 4u * g.x + e);
    }
    textureStore(pack_out, g.xy, v);
}

// texel (x, y) = op(B)[y, 4x .. 4x+4], zero past K or N.
@compute @workgroup_size(8, 8)
fn matmul_pack_b(@builtin(global_invocation_id) g: vec3<u32>) {
    let size = textureDimensions(pack_out);
    if g.x >= size.x || g.y >= size.y {
        return;
    }
    var v: vec4<f32>;
    for (var e = 0u; e < 4u; e++) {
        v[e] = load_b_or_0(0u, g.y, 4u * g.x + e);
    }
    textureStore(pack_out, g.xy, v);
}

// A thread's 4 x 8 block of C: row i, column groups j = 0 (g.x) and 1 (g.x + Np/8).
struct Block4x8 {
    c00: vec4<f32>, c01: vec4<f32>,
    c10: vec4<f32>, c11: vec4<f32>,
    c20: vec4<f32>, c21: vec4<f32>,
    c30: vec4<f32>, c31: vec4<f32>,
}

// One accumulator over one texel of k: c + a.x·b0 + a.y·b1 + a.z·b2 + a.w·b3, where a is
// op(A)[row, k4 .. k4 + 3] and b_e the accumulator's column group of op(B)[k4 + e], as four FMAs
// in k order. The image kernels give each accumulator its four FMAs in a row (accumulator by
// accumulator) rather than k by k: the same operations in the same order per accumulator, so the
// same bits; the harness measured this order as its `accmajor` variant
// (docs/lavapipe-research.md). Plain values, no arrays: indexing a private array by a loop
// counter would spill.
fn fma4(
    c: vec4<f32>,
    a: vec4<f32>,
    b0: vec4<f32>,
    b1: vec4<f32>,
    b2: vec4<f32>,
    b3: vec4<f32>,
) -> vec4<f32> {
    let c1 = fma(vec4<f32>(a.x), b0, c);
    let c2 = fma(vec4<f32>(a.y), b1, c1);
    let c3 = fma(vec4<f32>(a.z), b2, c2);
    return fma(vec4<f32>(a.w), b3, c3);
}

// Each thread: 4 rows x 8 columns of C (two vec4 groups Np/8 columns apart, so the 8 lanes of
// a SIMD vector read 8 consecutive texels). Dispatch (Np / 64, Mp / 32).
@compute @workgroup_size(8, 8)
fn matmul_image(@builtin(global_invocation_id) g: vec3<u32>) {
    let kq = textureDimensions(ta).x;
    let qs = textureDimensions(tb).x / 2u;
    let r0 = g.y * 4u;
    let z = vec4<f32>(0.0);
    var acc = Block4x8(z, z, z, z, z, z, z, z);
    for (var kk = 0u; kk < kq; kk++) {
        let a0 = textureLoad(ta, vec2<u32>(kk, r0));
        let a1 = textureLoad(ta, vec2<u32>(kk, r0 + 1u));
        let a2 = textureLoad(ta, vec2<u32>(kk, r0 + 2u));
        let a3 = textureLoad(ta, vec2<u32>(kk, r0 + 3u));
        // op(B)[k4 + e], column group j: b{e}{j}
        let k4 = 4u * kk;
        let b00 = textureLoad(tb, vec2<u32>(g.x, k4));
        let b01 = textureLoad(tb, vec2<u32>(g.x + qs, k4));
        let b10 = textureLoad(tb, vec2<u32>(g.x, k4 + 1u));
        let b11 = textureLoad(tb, vec2<u32>(g.x + qs, k4 + 1u));
        let b20 = textureLoad(tb, vec2<u32>(g.x, k4 + 2u));
        let b21 = textureLoad(tb, vec2<u32>(g.x + qs, k4 + 2u));
        let b30 = textureLoad(tb, vec2<u32>(g.x, k4 + 3u));
        let b31 = textureLoad(tb, vec2<u32>(g.x + qs, k4 + 3u));
        acc = Block4x8(
            fma4(acc.c00, a0, b00, b10, b20, b30), fma4(acc.c01, a0, b01, b11, b21, b31),
            fma4(acc.c10, a1, b00, b10, b20, b30), fma4(acc.c11, a1, b01, b11, b21, b31),
            fma4(acc.c20, a2, b00, b10, b20, b30), fma4(acc.c21, a2, b01, b11, b21, b31),
            fma4(acc.c30, a3, b00, b10, b20, b30), fma4(acc.c31, a3, b01, b11, b21, b31),
        );
    }
    var c0 = array<vec4<f32>, 4>(acc.c00, acc.c10, acc.c20, acc.c30);
    var c1 = array<vec4<f32>, 4>(acc.c01, acc.c11, acc.c21, acc.c31);
    let col0 = 4u * g.x;
    let col1 = 4u * (g.x + qs);
    // The bias of this thread's 8 columns, read once for its 4 rows (each storage load is a
    // loop over the lanes here).
    var bias0 = vec4<f32>(0.0);
    var bias1 = vec4<f32>(0.0);
    if (p.flags & FLAG_BIAS) != 0u {
        for (var e = 0u; e < 4u; e++) {
            bias0[e] = bias[min(col0 + e, p.n - 1u)];
            bias1[e] = bias[min(col1 + e, p.n - 1u)];
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let row = r0 + i;
        if row < p.m {
            let v0 = p.alpha * c0[i] + bias0;
            let v1 = p.alpha * c1[i] + bias1;
            for (var e = 0u; e < 4u; e++) {
                if col0 + e < p.n {
                    write_c(row * p.n + col0 + e, v0[e]);
                }
                if col1 + e < p.n {
                    write_c(row * p.n + col1 + e, v1[e]);
                }
            }
        }
    }
}
