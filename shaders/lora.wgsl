// The fused low-rank path of one LoRA layer and its backward pieces.
//
//   x: (M, K) input    a: (R, K) lora_A    b: (N, R) lora_B    y: (M, N) output of the base layer
//   forward:   u  = dropout(x) · aᵀ               (M, R), kept for dB
//              y += scale · u · bᵀ
//   backward:  du  = scale · dy · b               (M, R)
//              db (+)= scale · dyᵀ · u            (N, R)
//              da (+)= duᵀ · dropout(x)           (R, K)
//              dx += mask ⊙ (du · a) / (1 - p)    (M, K)
//
// dropout(x) is never materialised: the mask is regenerated from Philox (philox.wgsl) with the
// same (seed, offset, element index) convention as dropout.wgsl. R is an override constant
// (<= 64) so loops over the rank unroll and the accumulators stay in registers.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    accumulate: u32,  // 1: db / da add to what is there (gradient accumulation)
    scale: f32,
    drop_scale: f32,  // 1 / (1 - p)
    threshold: u32,   // floor(p * 2^32); 0 disables dropout
    offset: u32,
    seed_lo: u32,
    seed_hi: u32,
    _pad0: u32,
    _pad1: u32,
}

override R: u32 = 8u;
const MAX_R: u32 = 64u;
const WG: u32 = 64u;
const ROWS: u32 = 64u;  // rows per workgroup in lora_forward (one per thread)

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> u: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> dy: array<f32>;
@group(0) @binding(7) var<storage, read_write> du: array<f32>;
@group(0) @binding(8) var<storage, read> u_in: array<f32>;
@group(0) @binding(9) var<storage, read_write> db: array<f32>;
@group(0) @binding(10) var<storage, read> du_in: array<f32>;
@group(0) @binding(11) var<storage, read_write> da: array<f32>;
@group(0) @binding(12) var<storage, read_write> dx: array<f32>;

var<workgroup> tile_u: array<f32, 4096>;  // (ROWS, MAX_R)

fn seed() -> vec2<u32> {
    return vec2<u32>(p.seed_lo, p.seed_hi);
}

// Dropout multiplier (0 or 1/(1-p)) of element i of x, given the Philox words of its chunk.
fn keep(words: vec4<u32>, i: u32) -> f32 {
    return select(0.0, p.drop_scale, words[i & 3u] >= p.threshold);
}

// Dropout multipliers of four ascending element indices i.x <= .. <= i.w spanning at most two
// Philox chunks (one call per chunk).
fn keep4(i: vec4<u32>) -> vec4<f32> {
    let w0 = dropout_words(i.x >> 2u, p.offset, seed());
    var w1 = w0;
    if (i.w >> 2u) != (i.x >> 2u) {
        w1 = dropout_words(i.w >> 2u, p.offset, seed());
    }
    var m: vec4<f32>;
    for (var e = 0u; e < 4u; e++) {
        m[e] = keep(select(w1, w0, (i[e] >> 2u) == (i.x >> 2u)), i[e]);
    }
    return m;
}

// One thread per row: u[row] = dropout(x[row]) · aᵀ; then the workgroup adds
// scale · u · bᵀ to its 64 rows of y, one column per thread at a time.
@compute @workgroup_size(64)
fn lora_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row0 = wid.x * ROWS;
    let row = row0 + lid;
    if row < p.m {
        var acc: array<f32, MAX_R>;
        let base = row * p.k;
        if p.threshold == 0u {
            for (var kk = 0u; kk < p.k; kk++) {
                let xv = x[base + kk];
                for (var j = 0u; j < R; j++) {
                    acc[j] = fma(xv, a[j * p.k + kk], acc[j]);
                }
            }
        } else {
            var chunk = 0xFFFFFFFFu;
            var words = vec4<u32>();
            for (var kk = 0u; kk < p.k; kk++) {
                let i = base + kk;
                if (i >> 2u) != chunk {
                    chunk = i >> 2u;
                    words = dropout_words(chunk, p.offset, seed());
                }
                let xv = x[i] * keep(words, i);
                for (var j = 0u; j < R; j++) {
                    acc[j] = fma(xv, a[j * p.k + kk], acc[j]);
                }
            }
        }
        for (var j = 0u; j < R; j++) {
            u[row * R + j] = acc[j];
            tile_u[lid * R + j] = acc[j];
        }
    }
    workgroupBarrier();

    let rows = min(ROWS, p.m - min(row0, p.m));
    for (var col = lid; col < p.n; col += WG) {
        var bcol: array<f32, MAX_R>;
        for (var j = 0u; j < R; j++) {
            bcol[j] = b[col * R + j];
        }
        for (var i = 0u; i < rows; i++) {
            var s = 0.0;
            for (var j = 0u; j < R; j++) {
                s = fma(tile_u[i * R + j], bcol[j], s);
            }
            let yi = (row0 + i) * p.n + col;
            y[yi] = fma(p.scale, s, y[yi]);
        }
    }
}

// du[row] = scale · dy[row] · b, one thread per row.
@compute @workgroup_size(64)
fn lora_backward_du(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if row >= p.m {
        return;
    }
    var acc: array<f32, MAX_R>;
    for (var col = 0u; col < p.n; col++) {
        let g = dy[row * p.n + col];
        for (var j = 0u; j < R; j++) {
            acc[j] = fma(g, b[col * R + j], acc[j]);
        }
    }
    for (var j = 0u; j < R; j++) {
        du[row * R + j] = p.scale * acc[j];
    }
}

// db[col] (+)= scale · Σ_rows dy[row, col] · u[row], one thread per output column.
@compute @workgroup_size(64)
fn lora_backward_db(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if col >= p.n {
        return;
    }
    var acc: array<f32, MAX_R>;
    for (var row = 0u; row < p.m; row++) {
        let g = dy[row * p.n + col];
        for (var j = 0u; j < R; j++) {
            acc[j] = fma(g, u_in[row * R + j], acc[j]);
        }
    }
    for (var j = 0u; j < R; j++) {
        let i = col * R + j;
        var v = p.scale * acc[j];
        if p.accumulate != 0u {
            v += db[i];
        }
        db[i] = v;
    }
}

// da[:, k0 .. k0+4] (+)= duᵀ · dropout(x)[:, k0 .. k0+4], one thread per 4 input features.
@compute @workgroup_size(64)
fn lora_backward_da(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k0 = gid.x * 4u;
    if k0 >= p.k {
        return;
    }
    var acc: array<vec4<f32>, MAX_R>;
    let last = p.k - 1u;
    let ks = vec4<u32>(k0, min(k0 + 1u, last), min(k0 + 2u, last), min(k0 + 3u, last));
    for (var row = 0u; row < p.m; row++) {
        let base = row * p.k;
        var xv = vec4<f32>(x[base + ks.x], x[base + ks.y], x[base + ks.z], x[base + ks.w]);
        if p.threshold != 0u {
            xv *= keep4(base + ks);
        }
        for (var j = 0u; j < R; j++) {
            acc[j] = fma(vec4<f32>(du_in[row * R + j]), xv, acc[j]);
        }
    }
    for (var j = 0u; j < R; j++) {
        for (var e = 0u; e < 4u; e++) {
            if k0 + e < p.k {
                let i = j * p.k + k0 + e;
                var v = acc[j][e];
                if p.accumulate != 0u {
                    v += da[i];
                }
                da[i] = v;
            }
        }
    }
}

const DX_ROWS: u32 = 16u;

// dx[rows, k0 .. k0+4] += mask ⊙ (du · a)[rows, k0 .. k0+4]: one thread per 4 input features
// and a block of 16 rows (workgroup_id.y), holding those 4 columns of a in registers.
@compute @workgroup_size(64)
fn lora_backward_dx(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k0 = gid.x * 4u;
    if k0 >= p.k {
        return;
    }
    let last = p.k - 1u;
    let ks = vec4<u32>(k0, min(k0 + 1u, last), min(k0 + 2u, last), min(k0 + 3u, last));
    var acol: array<vec4<f32>, MAX_R>;
    for (var j = 0u; j < R; j++) {
        let base = j * p.k;
        acol[j] = vec4<f32>(a[base + ks.x], a[base + ks.y], a[base + ks.z], a[base + ks.w]);
    }
    let row0 = gid.y * DX_ROWS;
    let row1 = min(row0 + DX_ROWS, p.m);
    for (var row = row0; row < row1; row++) {
        var s = vec4<f32>(0.0);
        for (var j = 0u; j < R; j++) {
            s = fma(vec4<f32>(du_in[row * R + j]), acol[j], s);
        }
        let i = row * p.k + ks;
        if p.threshold != 0u {
            s *= keep4(i);
        }
        for (var e = 0u; e < 4u; e++) {
            if k0 + e < p.k {
                dx[i[e]] += s[e];
            }
        }
    }
}

// lora_forward for CPU adapters, when k, n and R are multiples of 4. Each thread owns 8 rows
// and all n columns: u for its rows stays in registers between the two phases, so there is no
// workgroup memory and no barrier, and every load is a vec4 (on lavapipe loads, not FMAs, are
// the cost: 4 FMAs per loaded element here against about 1 in lora_forward). The dropout mask
// of 4 consecutive elements is one Philox call, since k % 4 == 0 keeps chunks row-aligned.
@group(0) @binding(13) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read_write> y4: array<vec4<f32>>;

const VROWS: u32 = 8u;

@compute @workgroup_size(8)
fn lora_forward_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.x * VROWS;
    if row0 >= p.m {
        return;
    }
    let k4 = p.k / 4u;
    let r4 = R / 4u;
    var rows: array<u32, 8>;
    for (var rr = 0u; rr < VROWS; rr++) {
        rows[rr] = min(row0 + rr, p.m - 1u);
    }

    // u[rr * R + j] = dropout(x[row rr]) · a[j]
    var u_acc: array<f32, 512>;  // (VROWS, MAX_R)
    var xv: array<vec4<f32>, 8>;
    for (var kc = 0u; kc < k4; kc++) {
        for (var rr = 0u; rr < VROWS; rr++) {
            let chunk = rows[rr] * k4 + kc;
            xv[rr] = x4[chunk];
            if p.threshold != 0u {
                let w = dropout_words(chunk, p.offset, seed());
                xv[rr] *= select(vec4<f32>(0.0), vec4<f32>(p.drop_scale), w >= vec4<u32>(p.threshold));
            }
        }
        for (var j = 0u; j < R; j++) {
            let av = a4[j * k4 + kc];
            for (var rr = 0u; rr < VROWS; rr++) {
                u_acc[rr * R + j] += dot(xv[rr], av);
            }
        }
    }
    for (var rr = 0u; rr < VROWS; rr++) {
        if row0 + rr < p.m {
            for (var j = 0u; j < R; j++) {
                u[(row0 + rr) * R + j] = u_acc[rr * R + j];
            }
        }
    }

    // y[rows, c .. c+4] += scale · u[rows] · b[c .. c+4]ᵀ
    let n4 = p.n / 4u;
    for (var cb = 0u; cb < n4; cb++) {
        var bcol: array<vec4<f32>, 64>;  // (4 columns, MAX_R / 4)
        for (var e = 0u; e < 4u; e++) {
            for (var jb = 0u; jb < r4; jb++) {
                bcol[e * r4 + jb] = b4[(cb * 4u + e) * r4 + jb];
            }
        }
        for (var rr = 0u; rr < VROWS; rr++) {
            if row0 + rr < p.m {
                var s = vec4<f32>(0.0);
                for (var jb = 0u; jb < r4; jb++) {
                    let uv = vec4<f32>(
                        u_acc[rr * R + 4u * jb],
                        u_acc[rr * R + 4u * jb + 1u],
                        u_acc[rr * R + 4u * jb + 2u],
                        u_acc[rr * R + 4u * jb + 3u],
                    );
                    s += vec4<f32>(
                        dot(uv, bcol[jb]),
                        dot(uv, bcol[r4 + jb]),
                        dot(uv, bcol[2u * r4 + jb]),
                        dot(uv, bcol[3u * r4 + jb]),
                    );
                }
                let yi = (row0 + rr) * n4 + cb;
                y4[yi] = fma(vec4<f32>(p.scale), s, y4[yi]);
            }
        }
    }
}

// ---- GPU kernels with workgroup-wide reductions (LoraVariant::Parallel) ----
//
// The kernels above give one thread a whole row (or column) and loop it over K, N or M: on a
// large GPU that leaves most of the chip idle and the loads uncoalesced. These instead split
// every reduction over many threads of a workgroup and finish it in workgroup memory:
//   lora_forward_par:  8 rows per workgroup, 32 lanes per row reduce over k (one Philox call
//                      per 4-element chunk), then the workgroup adds scale · u · bᵀ to its rows.
//   lora_backward_du_par: the same row reduction over n for du = scale · dy · b.
//   lora_backward_db_par / lora_backward_da_par: 32 columns per workgroup (4 per thread),
//                      32 row groups each summing a strided share of the m rows; the row groups
//                      are then summed in workgroup memory, 4 ranks at a time.

const PAR_WG: u32 = 256u;
const PAR_ROWS: u32 = 8u;    // rows per workgroup (forward, du)
const PAR_LANES: u32 = 32u;  // threads per row
const PAR_QUADS: u32 = 8u;   // 4-column groups per workgroup (db, da)
const PAR_GROUPS: u32 = 32u; // row groups (db, da)

var<workgroup> red: array<vec4<f32>, 256>;   // (PAR_WG,) partials of 4 ranks or 4 columns
var<workgroup> red_s: array<f32, 1024>;      // (4 ranks, PAR_WG) partials
var<workgroup> tile_ur: array<f32, 512>;     // (PAR_ROWS, MAX_R)

// Sum the partials `v` (ranks jb .. jb+4) of the 32 lanes of each row into tile_ur.
// Called by every thread of the workgroup (uniform control flow).
fn par_row_sums(lid: u32, jb: u32, v: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        red_s[e * PAR_WG + lid] = v[e];
    }
    workgroupBarrier();
    if lid < PAR_ROWS * 4u {
        let rr = lid / 4u;
        let e = lid % 4u;
        var s = 0.0;
        for (var l = 0u; l < PAR_LANES; l++) {
            s += red_s[e * PAR_WG + rr * PAR_LANES + l];
        }
        if jb + e < R {
            tile_ur[rr * MAX_R + jb + e] = s;
        }
    }
    workgroupBarrier();
}

// Partial sums over this lane's share of row `row` of dropout(x) · aᵀ: the lane takes the
// Philox chunks c0 + lane, c0 + lane + 32, ... that overlap the row.
fn par_xa(row: u32, lane: u32) -> array<f32, MAX_R> {
    var acc: array<f32, MAX_R>;
    let base = row * p.k;
    let end = base + p.k;
    let c1 = (end - 1u) >> 2u;
    for (var chunk = (base >> 2u) + lane; chunk <= c1; chunk += PAR_LANES) {
        var keepv = vec4<f32>(1.0);
        if p.threshold != 0u {
            let w = dropout_words(chunk, p.offset, seed());
            keepv = select(vec4<f32>(0.0), vec4<f32>(p.drop_scale), w >= vec4<u32>(p.threshold));
        }
        for (var e = 0u; e < 4u; e++) {
            let i = chunk * 4u + e;
            if i >= base && i < end {
                let kk = i - base;
                let xv = x[i] * keepv[e];
                for (var j = 0u; j < R; j++) {
                    acc[j] = fma(xv, a[j * p.k + kk], acc[j]);
                }
            }
        }
    }
    return acc;
}

@compute @workgroup_size(256)
fn lora_forward_par(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row0 = (wid.x + wid.y * nwg.x) * PAR_ROWS;
    let rr = lid / PAR_LANES;
    let lane = lid % PAR_LANES;
    let row = min(row0 + rr, p.m - 1u);
    let acc = par_xa(row, lane);
    for (var jb = 0u; jb < R; jb += 4u) {
        var v = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            if jb + e < R {
                v[e] = acc[jb + e];
            }
        }
        par_row_sums(lid, jb, v);
    }
    let rows = min(PAR_ROWS, p.m - min(row0, p.m));
    for (var i = lid; i < rows * R; i += PAR_WG) {
        u[row0 * R + i] = tile_ur[(i / R) * MAX_R + i % R];
    }
    for (var col = lid; col < p.n; col += PAR_WG) {
        var bcol: array<f32, MAX_R>;
        for (var j = 0u; j < R; j++) {
            bcol[j] = b[col * R + j];
        }
        for (var i = 0u; i < rows; i++) {
            var s = 0.0;
            for (var j = 0u; j < R; j++) {
                s = fma(tile_ur[i * MAX_R + j], bcol[j], s);
            }
            let yi = (row0 + i) * p.n + col;
            y[yi] = fma(p.scale, s, y[yi]);
        }
    }
}

@compute @workgroup_size(256)
fn lora_backward_du_par(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row0 = (wid.x + wid.y * nwg.x) * PAR_ROWS;
    let rr = lid / PAR_LANES;
    let lane = lid % PAR_LANES;
    let row = min(row0 + rr, p.m - 1u);
    var acc: array<f32, MAX_R>;
    for (var col = lane; col < p.n; col += PAR_LANES) {
        let g = dy[row * p.n + col];
        for (var j = 0u; j < R; j++) {
            acc[j] = fma(g, b[col * R + j], acc[j]);
        }
    }
    for (var jb = 0u; jb < R; jb += 4u) {
        var v = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            if jb + e < R {
                v[e] = acc[jb + e];
            }
        }
        par_row_sums(lid, jb, v);
    }
    let rows = min(PAR_ROWS, p.m - min(row0, p.m));
    for (var i = lid; i < rows * R; i += PAR_WG) {
        du[row0 * R + i] = p.scale * tile_ur[(i / R) * MAX_R + i % R];
    }
}

// Sum the partials `v` (4 columns of one rank) of the 32 row groups; thread q of row group 0
// gets the total of its 4 columns. Called by every thread (uniform control flow).
fn par_col_sums(lid: u32, v: vec4<f32>) -> vec4<f32> {
    red[lid] = v;
    workgroupBarrier();
    var s = vec4<f32>(0.0);
    if lid < PAR_QUADS {
        for (var g = 0u; g < PAR_GROUPS; g++) {
            s += red[g * PAR_QUADS + lid];
        }
    }
    workgroupBarrier();
    return s;
}

@compute @workgroup_size(256)
fn lora_backward_db_par(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let q = lid % PAR_QUADS;
    let grp = lid / PAR_QUADS;
    let c0 = ((wid.x + wid.y * nwg.x) * PAR_QUADS + q) * 4u;
    let last = p.n - 1u;
    let cs = min(vec4<u32>(c0, c0 + 1u, c0 + 2u, c0 + 3u), vec4<u32>(last));
    var acc: array<vec4<f32>, MAX_R>;
    for (var row = grp; row < p.m; row += PAR_GROUPS) {
        let o = row * p.n;
        let g = vec4<f32>(dy[o + cs.x], dy[o + cs.y], dy[o + cs.z], dy[o + cs.w]);
        for (var j = 0u; j < R; j++) {
            acc[j] = fma(vec4<f32>(u_in[row * R + j]), g, acc[j]);
        }
    }
    for (var j = 0u; j < R; j++) {
        let s = par_col_sums(lid, acc[j]);
        if lid < PAR_QUADS {
            for (var e = 0u; e < 4u; e++) {
                if c0 + e < p.n {
                    let i = (c0 + e) * R + j;
                    var v = p.scale * s[e];
                    if p.accumulate != 0u {
                        v += db[i];
                    }
                    db[i] = v;
                }
            }
        }
    }
}

@compute @workgroup_size(256)
fn lora_backward_da_par(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let q = lid % PAR_QUADS;
    let grp = lid / PAR_QUADS;
    let k0 = ((wid.x + wid.y * nwg.x) * PAR_QUADS + q) * 4u;
    let last = p.k - 1u;
    let ks = min(vec4<u32>(k0, k0 + 1u, k0 + 2u, k0 + 3u), vec4<u32>(last));
    var acc: array<vec4<f32>, MAX_R>;
    for (var row = grp; row < p.m; row += PAR_GROUPS) {
        let base = row * p.k;
        var xv = vec4<f32>(x[base + ks.x], x[base + ks.y], x[base + ks.z], x[base + ks.w]);
        if p.threshold != 0u {
            xv *= keep4(base + ks);
        }
        for (var j = 0u; j < R; j++) {
            acc[j] = fma(vec4<f32>(du_in[row * R + j]), xv, acc[j]);
        }
    }
    for (var j = 0u; j < R; j++) {
        let s = par_col_sums(lid, acc[j]);
        if lid < PAR_QUADS {
            for (var e = 0u; e < 4u; e++) {
                if k0 + e < p.k {
                    let i = j * p.k + k0 + e;
                    var v = s[e];
                    if p.accumulate != 0u {
                        v += da[i];
                    }
                    da[i] = v;
                }
            }
        }
    }
}
