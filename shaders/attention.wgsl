// Causal multi-head self-attention (llm.c's attention_forward/backward), one thread per
// (batch, head, query position).
//   qkv: (B, T, 3C) = [q | k | v], head h at columns h·HS .. (h+1)·HS of each part
//   out: (B, T, C)     att: (B, NH, T, T) softmax probabilities, row t valid for t2 <= t
//   forward:        att = softmax(q kᵀ · scale, causal), out = att v
//   backward_rows:  dpreatt = att ⊙ (datt - Σ att ⊙ datt), datt = dout vᵀ;  dq = scale · dpreatt k
//   backward_cols:  dk = scale · dpreattᵀ q,  dv = attᵀ dout
// HS (head size) is an override constant (<= 128) so loops over it unroll.

struct Params {
    b: u32,
    t: u32,
    c: u32,
    nh: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override HS: u32 = 64u;
const MAX_HS: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read> att_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> dpreatt: array<f32>;
@group(0) @binding(7) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(8) var<storage, read> dpre_in: array<f32>;

struct Pos {
    b: u32,
    h: u32,
    t: u32,
    bh: u32,
    ok: bool,
}

fn position(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Pos {
    let idx = (wid.x + wid.y * nwg.x) * 64u + lid;
    let bh = idx / p.t;
    return Pos(bh / p.nh, bh % p.nh, idx % p.t, bh, idx < p.b * p.nh * p.t);
}

// Offset of head h's q (part 0), k (1) or v (2) at (b, t) in qkv.
fn qkv_at(b: u32, t: u32, h: u32, part: u32) -> u32 {
    return (b * p.t + t) * 3u * p.c + part * p.c + h * HS;
}

@compute @workgroup_size(64)
fn attention_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = position(wid, nwg, lid);
    if !s.ok {
        return;
    }
    let qo = qkv_at(s.b, s.t, s.h, 0u);
    var q: array<f32, MAX_HS>;
    for (var i = 0u; i < HS; i++) {
        q[i] = qkv[qo + i];
    }
    let row = (s.bh * p.t + s.t) * p.t;
    var maxv = -3.402823e38;
    for (var t2 = 0u; t2 <= s.t; t2++) {
        let ko = qkv_at(s.b, t2, s.h, 1u);
        var d = 0.0;
        for (var i = 0u; i < HS; i++) {
            d = fma(q[i], qkv[ko + i], d);
        }
        d *= p.scale;
        att[row + t2] = d;
        maxv = max(maxv, d);
    }
    var sum = 0.0;
    for (var t2 = 0u; t2 <= s.t; t2++) {
        let e = exp(att[row + t2] - maxv);
        att[row + t2] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    var o: array<f32, MAX_HS>;
    for (var t2 = 0u; t2 <= s.t; t2++) {
        let w = att[row + t2] * inv;
        att[row + t2] = w;
        let vo = qkv_at(s.b, t2, s.h, 2u);
        for (var i = 0u; i < HS; i++) {
            o[i] = fma(w, qkv[vo + i], o[i]);
        }
    }
    let oo = (s.b * p.t + s.t) * p.c + s.h * HS;
    for (var i = 0u; i < HS; i++) {
        out[oo + i] = o[i];
    }
}

@compute @workgroup_size(64)
fn attention_backward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = position(wid, nwg, lid);
    if !s.ok {
        return;
    }
    let go = (s.b * p.t + s.t) * p.c + s.h * HS;
    var g: array<f32, MAX_HS>;
    for (var i = 0u; i < HS; i++) {
        g[i] = dout[go + i];
    }
    let row = (s.bh * p.t + s.t) * p.t;
    var sum = 0.0;
    for (var t2 = 0u; t2 <= s.t; t2++) {
        let vo = qkv_at(s.b, t2, s.h, 2u);
        var d = 0.0;
        for (var i = 0u; i < HS; i++) {
            d = fma(g[i], qkv[vo + i], d);
        }
        dpreatt[row + t2] = d;
        sum = fma(att_in[row + t2], d, sum);
    }
    var dq: array<f32, MAX_HS>;
    for (var t2 = 0u; t2 <= s.t; t2++) {
        let dp = att_in[row + t2] * (dpreatt[row + t2] - sum);
        dpreatt[row + t2] = dp;
        let ko = qkv_at(s.b, t2, s.h, 1u);
        for (var i = 0u; i < HS; i++) {
            dq[i] = fma(dp, qkv[ko + i], dq[i]);
        }
    }
    let qo = qkv_at(s.b, s.t, s.h, 0u);
    for (var i = 0u; i < HS; i++) {
        dqkv[qo + i] = p.scale * dq[i];
    }
}

@compute @workgroup_size(64)
fn attention_backward_cols(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = position(wid, nwg, lid);  // s.t is the key position t2
    if !s.ok {
        return;
    }
    var dk: array<f32, MAX_HS>;
    var dv: array<f32, MAX_HS>;
    for (var t = s.t; t < p.t; t++) {
        let a = (s.bh * p.t + t) * p.t + s.t;
        let w = att_in[a];
        let dp = dpre_in[a];
        let qo = qkv_at(s.b, t, s.h, 0u);
        let go = (s.b * p.t + t) * p.c + s.h * HS;
        for (var i = 0u; i < HS; i++) {
            dk[i] = fma(dp, qkv[qo + i], dk[i]);
            dv[i] = fma(w, dout[go + i], dv[i]);
        }
    }
    let ko = qkv_at(s.b, s.t, s.h, 1u);
    let vo = qkv_at(s.b, s.t, s.h, 2u);
    for (var i = 0u; i < HS; i++) {
        dqkv[ko + i] = p.scale * dk[i];
        dqkv[vo + i] = dv[i];
    }
}

// ---- Tiled kernels for GPUs (AttentionVariant::Tiled), head size <= 64 ----
//
// The kernels above give one thread a whole query row: every thread streams all keys and
// values of its head from memory, and private arrays of MAX_HS floats spill. These give a
// workgroup of 256 threads a block of 16 query rows (forward, backward_rows) or 16 key rows
// (backward_cols) of one (batch, head), and stream the other side through workgroup memory in
// tiles of 64 keys (32 queries): every key and value row is read once per 16 queries.
// Thread layout: (row r = lid / 16, lane l = lid % 16); a thread owns the 4 tile columns
// l, l + 16, l + 32, l + 48 of its row (scores) or the 4 head dimensions l, l + 16, ...
// (outputs). The probabilities in `att` are the same as the per-row kernels write.

const TB: u32 = 16u;       // query (or key) rows per workgroup
const KT: u32 = 64u;       // keys per tile
const QT: u32 = 32u;       // queries per tile (backward_cols)
const SD: u32 = 65u;       // padded row stride of tiles in workgroup memory
const TWG: u32 = 256u;

var<workgroup> tile_rows: array<f32, 1040>;   // (TB, SD): q or dout rows of the block
var<workgroup> tile_kv: array<f32, 4160>;     // (KT, SD): keys or values
var<workgroup> tile_p: array<f32, 1024>;      // (TB, KT): probabilities or dpreatt
var<workgroup> tile_red: array<f32, 256>;     // (TB, 16) partial max / sums
var<workgroup> tile_stat: array<f32, 16>;     // (TB,) per-row result
var<workgroup> tile_q: array<f32, 2080>;      // (QT, SD) backward_cols: q rows
var<workgroup> tile_g: array<f32, 2080>;      // (QT, SD) backward_cols: dout rows
var<workgroup> tile_a: array<f32, 512>;       // (QT, TB) backward_cols: att
var<workgroup> tile_d: array<f32, 512>;       // (QT, TB) backward_cols: dpreatt

struct Block {
    b: u32,
    h: u32,
    bh: u32,
    t0: u32,    // first row of the block
    rows: u32,  // rows of the block inside T
}

fn block_of(wid: vec3<u32>, nwg: vec3<u32>) -> Block {
    let idx = wid.x + wid.y * nwg.x;
    let nb = (p.t + TB - 1u) / TB;
    let bh = idx / nb;
    let t0 = (idx % nb) * TB;
    return Block(bh / p.nh, bh % p.nh, bh, t0, min(TB, p.t - t0));
}

// Load HS columns of `rows` rows of part `part` of qkv (rows t0 ..) into tile_kv (zeros past T).
fn load_kv(b: u32, h: u32, t0: u32, part: u32, lid: u32) {
    for (var i = lid; i < KT * HS; i += TWG) {
        let r = i / HS;
        let d = i % HS;
        var v = 0.0;
        if t0 + r < p.t {
            v = qkv[qkv_at(b, t0 + r, h, part) + d];
        }
        tile_kv[r * SD + d] = v;
    }
}

// Sum (or max, when `take_max`) of the 16 lanes' values of each row; the result of row r is
// tile_stat[r] afterwards. Uniform control flow.
fn row_reduce(lid: u32, v: f32, take_max: bool) {
    tile_red[lid] = v;
    workgroupBarrier();
    if lid < TB {
        var s = tile_red[lid * 16u];
        for (var l = 1u; l < 16u; l++) {
            let x = tile_red[lid * 16u + l];
            s = select(s + x, max(s, x), take_max);
        }
        tile_stat[lid] = s;
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn attention_forward_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blk = block_of(wid, nwg);
    let r = lid / 16u;
    let l = lid % 16u;
    let t = blk.t0 + r;  // this thread's query row (may be past T: computes, never stores)
    let valid = r < blk.rows;
    let row = (blk.bh * p.t + min(t, p.t - 1u)) * p.t;
    for (var i = lid; i < TB * HS; i += TWG) {
        let rr = i / HS;
        var v = 0.0;
        if rr < blk.rows {
            v = qkv[qkv_at(blk.b, blk.t0 + rr, blk.h, 0u) + i % HS];
        }
        tile_rows[rr * SD + i % HS] = v;
    }
    let t_last = blk.t0 + blk.rows - 1u;
    let tiles = t_last / KT + 1u;

    // Scores, written raw to att; running max per row.
    var mx = -3.402823e38;
    for (var kt = 0u; kt < tiles; kt++) {
        workgroupBarrier();
        load_kv(blk.b, blk.h, kt * KT, 1u, lid);
        workgroupBarrier();
        for (var e = 0u; e < 4u; e++) {
            let kj = l + 16u * e;
            let key = kt * KT + kj;
            var d = 0.0;
            for (var i = 0u; i < HS; i++) {
                d = fma(tile_rows[r * SD + i], tile_kv[kj * SD + i], d);
            }
            if valid && key <= t {
                d *= p.scale;
                att[row + key] = d;
                mx = max(mx, d);
            }
        }
    }
    row_reduce(lid, mx, true);
    let rmax = tile_stat[r];
    var sum = 0.0;
    if valid {
        for (var key = l; key <= t; key += 16u) {
            sum += exp(att[row + key] - rmax);
        }
    }
    workgroupBarrier();
    row_reduce(lid, sum, false);
    let inv = 1.0 / tile_stat[r];

    // out = P v, one value tile at a time; att gets the normalised probabilities.
    var o = vec4<f32>(0.0);
    for (var kt = 0u; kt < tiles; kt++) {
        workgroupBarrier();
        load_kv(blk.b, blk.h, kt * KT, 2u, lid);
        for (var e = 0u; e < 4u; e++) {
            let kj = l + 16u * e;
            let key = kt * KT + kj;
            var w = 0.0;
            if valid && key <= t {
                w = exp(att[row + key] - rmax) * inv;
                att[row + key] = w;
            }
            tile_p[r * KT + kj] = w;
        }
        workgroupBarrier();
        for (var kj = 0u; kj < KT; kj++) {
            let w = tile_p[r * KT + kj];
            for (var e = 0u; e < 4u; e++) {
                let d = min(l + 16u * e, HS - 1u);
                o[e] = fma(w, tile_kv[kj * SD + d], o[e]);
            }
        }
    }
    if valid {
        let oo = (blk.b * p.t + t) * p.c + blk.h * HS;
        for (var e = 0u; e < 4u; e++) {
            let d = l + 16u * e;
            if d < HS {
                out[oo + d] = o[e];
            }
        }
    }
}

@compute @workgroup_size(256)
fn attention_backward_rows_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blk = block_of(wid, nwg);
    let r = lid / 16u;
    let l = lid % 16u;
    let t = blk.t0 + r;
    let valid = r < blk.rows;
    let row = (blk.bh * p.t + min(t, p.t - 1u)) * p.t;
    for (var i = lid; i < TB * HS; i += TWG) {
        let rr = i / HS;
        var v = 0.0;
        if rr < blk.rows {
            v = dout[(blk.b * p.t + blk.t0 + rr) * p.c + blk.h * HS + i % HS];
        }
        tile_rows[rr * SD + i % HS] = v;
    }
    let t_last = blk.t0 + blk.rows - 1u;
    let tiles = t_last / KT + 1u;

    // datt = dout vᵀ (kept in dpreatt), and Σ att ⊙ datt per row.
    var sum = 0.0;
    for (var kt = 0u; kt < tiles; kt++) {
        workgroupBarrier();
        load_kv(blk.b, blk.h, kt * KT, 2u, lid);
        workgroupBarrier();
        for (var e = 0u; e < 4u; e++) {
            let kj = l + 16u * e;
            let key = kt * KT + kj;
            var d = 0.0;
            for (var i = 0u; i < HS; i++) {
                d = fma(tile_rows[r * SD + i], tile_kv[kj * SD + i], d);
            }
            if valid && key <= t {
                dpreatt[row + key] = d;
                sum = fma(att_in[row + key], d, sum);
            }
        }
    }
    row_reduce(lid, sum, false);
    let total = tile_stat[r];

    // dpreatt = att ⊙ (datt - Σ), dq = scale · dpreatt k.
    var dq = vec4<f32>(0.0);
    for (var kt = 0u; kt < tiles; kt++) {
        workgroupBarrier();
        load_kv(blk.b, blk.h, kt * KT, 1u, lid);
        for (var e = 0u; e < 4u; e++) {
            let kj = l + 16u * e;
            let key = kt * KT + kj;
            var dp = 0.0;
            if valid && key <= t {
                dp = att_in[row + key] * (dpreatt[row + key] - total);
                dpreatt[row + key] = dp;
            }
            tile_p[r * KT + kj] = dp;
        }
        workgroupBarrier();
        for (var kj = 0u; kj < KT; kj++) {
            let w = tile_p[r * KT + kj];
            for (var e = 0u; e < 4u; e++) {
                let d = min(l + 16u * e, HS - 1u);
                dq[e] = fma(w, tile_kv[kj * SD + d], dq[e]);
            }
        }
    }
    if valid {
        let qo = qkv_at(blk.b, t, blk.h, 0u);
        for (var e = 0u; e < 4u; e++) {
            let d = l + 16u * e;
            if d < HS {
                dqkv[qo + d] = p.scale * dq[e];
            }
        }
    }
}

// dk, dv of a block of 16 key rows: queries t >= key, in tiles of 32.
@compute @workgroup_size(256)
fn attention_backward_cols_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blk = block_of(wid, nwg);  // blk.t0: first key of the block
    let r = lid / 16u;             // this thread's key row in the block
    let l = lid % 16u;
    var dk = vec4<f32>(0.0);
    var dv = vec4<f32>(0.0);
    let q_first = blk.t0 - blk.t0 % QT;
    for (var q0 = q_first; q0 < p.t; q0 += QT) {
        workgroupBarrier();
        for (var i = lid; i < QT * HS; i += TWG) {
            let qi = i / HS;
            let d = i % HS;
            var qv = 0.0;
            var gv = 0.0;
            if q0 + qi < p.t {
                qv = qkv[qkv_at(blk.b, q0 + qi, blk.h, 0u) + d];
                gv = dout[(blk.b * p.t + q0 + qi) * p.c + blk.h * HS + d];
            }
            tile_q[qi * SD + d] = qv;
            tile_g[qi * SD + d] = gv;
        }
        for (var i = lid; i < QT * TB; i += TWG) {
            let qi = i / TB;
            let kj = i % TB;
            let tq = q0 + qi;
            let key = blk.t0 + kj;
            var av = 0.0;
            var dv2 = 0.0;
            if tq < p.t && key <= tq && kj < blk.rows {
                let a = (blk.bh * p.t + tq) * p.t + key;
                av = att_in[a];
                dv2 = dpre_in[a];
            }
            tile_a[i] = av;
            tile_d[i] = dv2;
        }
        workgroupBarrier();
        for (var qi = 0u; qi < QT; qi++) {
            let w = tile_a[qi * TB + r];
            let dp = tile_d[qi * TB + r];
            for (var e = 0u; e < 4u; e++) {
                let d = min(l + 16u * e, HS - 1u);
                dk[e] = fma(dp, tile_q[qi * SD + d], dk[e]);
                dv[e] = fma(w, tile_g[qi * SD + d], dv[e]);
            }
        }
    }
    if r < blk.rows {
        let ko = qkv_at(blk.b, blk.t0 + r, blk.h, 1u);
        let vo = qkv_at(blk.b, blk.t0 + r, blk.h, 2u);
        for (var e = 0u; e < 4u; e++) {
            let d = l + 16u * e;
            if d < HS {
                dqkv[ko + d] = p.scale * dk[e];
                dqkv[vo + d] = dv[e];
            }
        }
    }
}
