// Causal self-attention with grouped-query heads, flash-style: no (T, T) matrix is ever
// stored. The forward keeps only the output and each row's log-sum-exp; the backward recomputes
// the probabilities from q, k and that statistic (FlashAttention-2's recipe, in llm.c's
// two-kernel layout).
//   qkv: (B, T, (NH + 2·NKV)·HS) = [NH query heads | NKV key heads | NKV value heads], each HS
//        wide; query head h reads kv head h / (NH / NKV) (consecutive query heads share one,
//        as transformers' repeat_kv). Multi-head attention is NKV = NH: [q | k | v] of C each.
//   out: (B, T, NH·HS)     lse, dstat: (B, NH, T)
//   forward:        s = q kᵀ · scale (causal), out = softmax(s) v,  lse = log Σ exp(s) per row
//   backward_rows:  P = exp(s - lse), dP = dout vᵀ, D = rowsum(dout ⊙ out) (kept in dstat),
//                   dS = P ⊙ (dP - D),  dq = scale · dS k
//   backward_cols:  dk = scale · Σ_group dSᵀ q,  dv = Σ_group Pᵀ dout, one thread (or block)
//                   per kv head looping over the query heads of its group, so each dk and dv
//                   element has one writer (P and dS recomputed per key column)
// HS (head size) is an override constant (<= 128) so loops over it unroll.

struct Params {
    b: u32,
    t: u32,
    nh: u32,   // query heads
    nkv: u32,  // key / value heads, a divisor of nh
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override HS: u32 = 64u;
const MAX_HS: u32 = 128u;
const NEG_BIG: f32 = -3.402823e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read> lse_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> dstat: array<f32>;
@group(0) @binding(7) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(8) var<storage, read> dstat_in: array<f32>;
@group(0) @binding(9) var<storage, read> out_in: array<f32>;

struct Pos {
    b: u32,
    h: u32,
    t: u32,
    bh: u32,
    ok: bool,
}

// The thread's (batch, head, row) over `heads` heads (p.nh query heads, or p.nkv kv heads).
fn position(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, heads: u32) -> Pos {
    let idx = (wid.x + wid.y * nwg.x) * 64u + lid;
    let bh = idx / p.t;
    return Pos(bh / heads, bh % heads, idx % p.t, bh, idx < p.b * heads * p.t);
}

// Query heads per kv head.
fn group() -> u32 {
    return p.nh / p.nkv;
}

// Offset of row (b, t) in qkv.
fn row_at(b: u32, t: u32) -> u32 {
    return (b * p.t + t) * (p.nh + 2u * p.nkv) * HS;
}

// Column of query head h, key head kh and value head kh in a qkv row.
fn q_col(h: u32) -> u32 {
    return h * HS;
}

fn k_col(kh: u32) -> u32 {
    return (p.nh + kh) * HS;
}

fn v_col(kh: u32) -> u32 {
    return (p.nh + p.nkv + kh) * HS;
}

// Offset of query head h at (b, t) in out / dout.
fn out_at(b: u32, t: u32, h: u32) -> u32 {
    return (b * p.t + t) * p.nh * HS + h * HS;
}

// ---- Per-row kernels (CPU adapters): one thread per (batch, head, row) ----

// One pass over the keys with a running maximum (online softmax).
@compute @workgroup_size(64)
fn attention_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = position(wid, nwg, lid, p.nh);
    if !s.ok {
        return;
    }
    let kh = s.h / group();
    let qo = row_at(s.b, s.t) + q_col(s.h);
    var q: array<f32, MAX_HS>;
    for (var i = 0u; i < HS; i++) {
        q[i] = qkv[qo + i] * p.scale;
    }
    var m = NEG_BIG;
    var sum = 0.0;
    var o: array<f32, MAX_HS>;
    for (var t2 = 0u; t2 <= s.t; t2++) {
        let ko = row_at(s.b, t2) + k_col(kh);
        var d = 0.0;
        for (var i = 0u; i < HS; i++) {
            d = fma(q[i], qkv[ko + i], d);
        }
        if d > m {
            let c = exp(m - d);
            sum *= c;
            for (var i = 0u; i < HS; i++) {
                o[i] *= c;
            }
            m = d;
        }
        let e = exp(d - m);
        sum += e;
        let vo = row_at(s.b, t2) + v_col(kh);
        for (var i = 0u; i < HS; i++) {
            o[i] = fma(e, qkv[vo + i], o[i]);
        }
    }
    let inv = 1.0 / sum;
    let oo = out_at(s.b, s.t, s.h);
    for (var i = 0u; i < HS; i++) {
        out[oo + i] = o[i] * inv;
    }
    lse[s.bh * p.t + s.t] = m + log(sum);
}

// dq of one query row; also D = dout · out of the row, for backward_cols.
@compute @workgroup_size(64)
fn attention_backward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = position(wid, nwg, lid, p.nh);
    if !s.ok {
        return;
    }
    let kh = s.h / group();
    let go = out_at(s.b, s.t, s.h);
    let qo = row_at(s.b, s.t) + q_col(s.h);
    var g: array<f32, MAX_HS>;
    var q: array<f32, MAX_HS>;
    var dd = 0.0;
    for (var i = 0u; i < HS; i++) {
        g[i] = dout[go + i];
        q[i] = qkv[qo + i] * p.scale;
        dd = fma(g[i], out_in[go + i], dd);
    }
    let stat = s.bh * p.t + s.t;
    let l = lse_in[stat];
    var dq: array<f32, MAX_HS>;
    for (var t2 = 0u; t2 <= s.t; t2++) {
        let ko = row_at(s.b, t2) + k_col(kh);
        let vo = ko + p.nkv * HS;
        var sc = 0.0;
        var dp = 0.0;
        for (var i = 0u; i < HS; i++) {
            sc = fma(q[i], qkv[ko + i], sc);
            dp = fma(g[i], qkv[vo + i], dp);
        }
        let ds = exp(sc - l) * (dp - dd);
        for (var i = 0u; i < HS; i++) {
            dq[i] = fma(ds, qkv[ko + i], dq[i]);
        }
    }
    for (var i = 0u; i < HS; i++) {
        dqkv[qo + i] = p.scale * dq[i];
    }
    dstat[stat] = dd;
}

// dk and dv of one key row of one kv head, over the queries at or after it of every query
// head of the head's group.
@compute @workgroup_size(64)
fn attention_backward_cols(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = position(wid, nwg, lid, p.nkv);  // s.h is the kv head, s.t the key position
    if !s.ok {
        return;
    }
    let ko = row_at(s.b, s.t) + k_col(s.h);
    let vo = ko + p.nkv * HS;
    var k: array<f32, MAX_HS>;
    var v: array<f32, MAX_HS>;
    for (var i = 0u; i < HS; i++) {
        k[i] = qkv[ko + i] * p.scale;
        v[i] = qkv[vo + i];
    }
    var dk: array<f32, MAX_HS>;
    var dv: array<f32, MAX_HS>;
    let grp = group();
    for (var j = 0u; j < grp; j++) {
        let h = s.h * grp + j;
        let bh = s.b * p.nh + h;
        for (var t = s.t; t < p.t; t++) {
            let qo = row_at(s.b, t) + q_col(h);
            let go = out_at(s.b, t, h);
            var sc = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < HS; i++) {
                sc = fma(qkv[qo + i], k[i], sc);
                dp = fma(dout[go + i], v[i], dp);
            }
            let stat = bh * p.t + t;
            let w = exp(sc - lse_in[stat]);
            let ds = w * (dp - dstat_in[stat]);
            for (var i = 0u; i < HS; i++) {
                dk[i] = fma(ds, qkv[qo + i], dk[i]);
                dv[i] = fma(w, dout[go + i], dv[i]);
            }
        }
    }
    for (var i = 0u; i < HS; i++) {
        dqkv[ko + i] = p.scale * dk[i];
        dqkv[vo + i] = dv[i];
    }
}

// ---- Tiled kernels for GPUs (AttentionVariant::Tiled), head size <= 64 ----
//
// The kernels above give one thread a whole query row: every thread streams all keys and
// values of its head from memory, and private arrays of MAX_HS floats spill. These give a
// workgroup of 256 threads a block of 16 query rows of one (batch, query head) (forward,
// backward_rows) or 16 key rows of one (batch, kv head) (backward_cols), and stream the other side through workgroup memory in
// tiles of 64 keys (32 queries): every key and value row is read once per 16 queries.
// Thread layout: (row r = lid / 16, lane l = lid % 16); a thread owns the 4 tile columns
// l, l + 16, l + 32, l + 48 of its row (scores) or the 4 head dimensions l, l + 16, ...
// (outputs). Workgroup memory per kernel stays under 32 KiB.

const TB: u32 = 16u;       // query (or key) rows per workgroup
const KT: u32 = 64u;       // keys per tile
const QT: u32 = 32u;       // queries per tile (backward_cols)
const SD: u32 = 65u;       // padded row stride of tiles in workgroup memory
const TWG: u32 = 256u;

var<workgroup> tile_rows: array<f32, 1040>;   // (TB, SD): the block's q, dout or k rows
var<workgroup> tile_rows2: array<f32, 1040>;  // (TB, SD): the block's q or v rows
var<workgroup> tile_kv: array<f32, 4160>;     // (KT, SD): keys or values
var<workgroup> tile_p: array<f32, 1024>;      // (TB, KT): probabilities or dS
var<workgroup> tile_red: array<f32, 256>;     // (TB, 16) partial max / sums
var<workgroup> tile_stat: array<f32, 16>;     // (TB,) per-row result
var<workgroup> tile_q: array<f32, 2080>;      // (QT, SD) backward_cols: q rows
var<workgroup> tile_g: array<f32, 2080>;      // (QT, SD) backward_cols: dout rows
var<workgroup> tile_a: array<f32, 512>;       // (QT, TB) backward_cols: P
var<workgroup> tile_d: array<f32, 512>;       // (QT, TB) backward_cols: dS
var<workgroup> tile_l: array<f32, 32>;        // (QT,) backward_cols: lse of the query rows
var<workgroup> tile_dd: array<f32, 32>;       // (QT,) backward_cols: D of the query rows

struct Block {
    b: u32,
    h: u32,     // query head (forward, backward_rows) or kv head (backward_cols)
    bh: u32,
    t0: u32,    // first row of the block
    rows: u32,  // rows of the block inside T
}

// The workgroup's block over `heads` heads (p.nh query heads, or p.nkv kv heads).
fn block_of(wid: vec3<u32>, nwg: vec3<u32>, heads: u32) -> Block {
    let idx = wid.x + wid.y * nwg.x;
    let nb = (p.t + TB - 1u) / TB;
    let bh = idx / nb;
    let t0 = (idx % nb) * TB;
    return Block(bh / heads, bh % heads, bh, t0, min(TB, p.t - t0));
}

// Load the HS columns from `col` of KT rows of qkv (rows t0 ..; a key or value head) into
// tile_kv (zeros past T).
fn load_kv(b: u32, col: u32, t0: u32, lid: u32) {
    for (var i = lid; i < KT * HS; i += TWG) {
        let r = i / HS;
        let d = i % HS;
        var v = 0.0;
        if t0 + r < p.t {
            v = qkv[row_at(b, t0 + r) + col + d];
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

// out and lse of 16 query rows: one pass over the key tiles with a running row maximum; a
// thread keeps its share of the row's exp-sum and its 4 output columns, rescaled whenever
// the maximum grows.
@compute @workgroup_size(256)
fn attention_forward_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blk = block_of(wid, nwg, p.nh);
    let r = lid / 16u;
    let l = lid % 16u;
    let t = blk.t0 + r;  // this thread's query row (may be past T: computes, never stores)
    let valid = r < blk.rows;
    let kc = k_col(blk.h / group());
    let vc = v_col(blk.h / group());
    for (var i = lid; i < TB * HS; i += TWG) {
        let rr = i / HS;
        var v = 0.0;
        if rr < blk.rows {
            v = qkv[row_at(blk.b, blk.t0 + rr) + q_col(blk.h) + i % HS] * p.scale;
        }
        tile_rows[rr * SD + i % HS] = v;
    }
    let tiles = (blk.t0 + blk.rows - 1u) / KT + 1u;
    var m = NEG_BIG;  // the row's running maximum (the same in its 16 threads)
    var sum = 0.0;    // this thread's share of Σ exp(s - m)
    var o = vec4<f32>(0.0);
    for (var kt = 0u; kt < tiles; kt++) {
        workgroupBarrier();
        load_kv(blk.b, kc, kt * KT, lid);
        workgroupBarrier();
        var sc = vec4<f32>(NEG_BIG);
        var tmax = NEG_BIG;
        for (var e = 0u; e < 4u; e++) {
            let kj = l + 16u * e;
            var d = 0.0;
            for (var i = 0u; i < HS; i++) {
                d = fma(tile_rows[r * SD + i], tile_kv[kj * SD + i], d);
            }
            if valid && kt * KT + kj <= t {
                sc[e] = d;
                tmax = max(tmax, d);
            }
        }
        row_reduce(lid, tmax, true);
        let m_new = max(m, tile_stat[r]);
        let c = exp(m - m_new);
        sum *= c;
        o *= c;
        m = m_new;
        for (var e = 0u; e < 4u; e++) {
            let w = select(0.0, exp(sc[e] - m), sc[e] > NEG_BIG);
            sum += w;
            tile_p[r * KT + l + 16u * e] = w;
        }
        workgroupBarrier();
        load_kv(blk.b, vc, kt * KT, lid);
        workgroupBarrier();
        for (var kj = 0u; kj < KT; kj++) {
            let w = tile_p[r * KT + kj];
            for (var e = 0u; e < 4u; e++) {
                let d = min(l + 16u * e, HS - 1u);
                o[e] = fma(w, tile_kv[kj * SD + d], o[e]);
            }
        }
    }
    row_reduce(lid, sum, false);
    let total = tile_stat[r];
    if valid {
        let oo = out_at(blk.b, t, blk.h);
        for (var e = 0u; e < 4u; e++) {
            let d = l + 16u * e;
            if d < HS {
                out[oo + d] = o[e] / total;
            }
        }
        if l == 0u {
            lse[blk.bh * p.t + t] = m + log(total);
        }
    }
}

// dq and D of 16 query rows; per key tile: dP from the value tile, then P and dS from the
// key tile, which stays in workgroup memory for dq += dS k.
@compute @workgroup_size(256)
fn attention_backward_rows_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blk = block_of(wid, nwg, p.nh);
    let r = lid / 16u;
    let l = lid % 16u;
    let t = blk.t0 + r;
    let valid = r < blk.rows;
    let kc = k_col(blk.h / group());
    let vc = v_col(blk.h / group());
    for (var i = lid; i < TB * HS; i += TWG) {
        let rr = i / HS;
        let d = i % HS;
        var g = 0.0;
        var q = 0.0;
        if rr < blk.rows {
            g = dout[out_at(blk.b, blk.t0 + rr, blk.h) + d];
            q = qkv[row_at(blk.b, blk.t0 + rr) + q_col(blk.h) + d] * p.scale;
        }
        tile_rows[rr * SD + d] = g;
        tile_rows2[rr * SD + d] = q;
    }
    var part = 0.0;
    if valid {
        let go = out_at(blk.b, t, blk.h);
        for (var d = l; d < HS; d += 16u) {
            part = fma(dout[go + d], out_in[go + d], part);
        }
    }
    row_reduce(lid, part, false);
    let dd = tile_stat[r];
    let stat = blk.bh * p.t + min(t, p.t - 1u);
    let lrow = lse_in[stat];
    if valid && l == 0u {
        dstat[stat] = dd;
    }
    let tiles = (blk.t0 + blk.rows - 1u) / KT + 1u;
    var dq = vec4<f32>(0.0);
    for (var kt = 0u; kt < tiles; kt++) {
        workgroupBarrier();
        load_kv(blk.b, vc, kt * KT, lid);
        workgroupBarrier();
        var dp = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            let kj = l + 16u * e;
            var d = 0.0;
            for (var i = 0u; i < HS; i++) {
                d = fma(tile_rows[r * SD + i], tile_kv[kj * SD + i], d);
            }
            dp[e] = d;
        }
        workgroupBarrier();
        load_kv(blk.b, kc, kt * KT, lid);
        workgroupBarrier();
        for (var e = 0u; e < 4u; e++) {
            let kj = l + 16u * e;
            var sc = 0.0;
            for (var i = 0u; i < HS; i++) {
                sc = fma(tile_rows2[r * SD + i], tile_kv[kj * SD + i], sc);
            }
            var ds = 0.0;
            if valid && kt * KT + kj <= t {
                ds = exp(sc - lrow) * (dp[e] - dd);
            }
            tile_p[r * KT + kj] = ds;
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
        let qo = row_at(blk.b, t) + q_col(blk.h);
        for (var e = 0u; e < 4u; e++) {
            let d = l + 16u * e;
            if d < HS {
                dqkv[qo + d] = p.scale * dq[e];
            }
        }
    }
}

// dk, dv of a block of 16 key rows of one kv head: for each query head of its group, queries
// t >= key in tiles of 32; P and dS of each (query, key) pair of a tile are recomputed once,
// two pairs per thread.
@compute @workgroup_size(256)
fn attention_backward_cols_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blk = block_of(wid, nwg, p.nkv);  // blk.h: the kv head, blk.t0: first key of the block
    let r = lid / 16u;                    // this thread's key row in the block
    let l = lid % 16u;
    for (var i = lid; i < TB * HS; i += TWG) {
        let rr = i / HS;
        let d = i % HS;
        var k = 0.0;
        var v = 0.0;
        if rr < blk.rows {
            let row = row_at(blk.b, blk.t0 + rr);
            k = qkv[row + k_col(blk.h) + d] * p.scale;
            v = qkv[row + v_col(blk.h) + d];
        }
        tile_rows[rr * SD + d] = k;
        tile_rows2[rr * SD + d] = v;
    }
    var dk = vec4<f32>(0.0);
    var dv = vec4<f32>(0.0);
    let q_first = blk.t0 - blk.t0 % QT;
    let grp = group();
    for (var j = 0u; j < grp; j++) {
        let h = blk.h * grp + j;
        let bh = blk.b * p.nh + h;
        for (var q0 = q_first; q0 < p.t; q0 += QT) {
            workgroupBarrier();
            for (var i = lid; i < QT * HS; i += TWG) {
                let qi = i / HS;
                let d = i % HS;
                var qv = 0.0;
                var gv = 0.0;
                if q0 + qi < p.t {
                    qv = qkv[row_at(blk.b, q0 + qi) + q_col(h) + d];
                    gv = dout[out_at(blk.b, q0 + qi, h) + d];
                }
                tile_q[qi * SD + d] = qv;
                tile_g[qi * SD + d] = gv;
            }
            if lid < QT {
                var lv = 0.0;
                var dv2 = 0.0;
                if q0 + lid < p.t {
                    let stat = bh * p.t + q0 + lid;
                    lv = lse_in[stat];
                    dv2 = dstat_in[stat];
                }
                tile_l[lid] = lv;
                tile_dd[lid] = dv2;
            }
            workgroupBarrier();
            for (var u = 0u; u < 2u; u++) {
                let idx = lid + u * TWG;
                let qi = idx / TB;
                let kj = idx % TB;
                let tq = q0 + qi;
                var w = 0.0;
                var ds = 0.0;
                if tq < p.t && blk.t0 + kj <= tq && kj < blk.rows {
                    var sc = 0.0;
                    var dp = 0.0;
                    for (var i = 0u; i < HS; i++) {
                        sc = fma(tile_q[qi * SD + i], tile_rows[kj * SD + i], sc);
                        dp = fma(tile_g[qi * SD + i], tile_rows2[kj * SD + i], dp);
                    }
                    w = exp(sc - tile_l[qi]);
                    ds = w * (dp - tile_dd[qi]);
                }
                tile_a[idx] = w;
                tile_d[idx] = ds;
            }
            workgroupBarrier();
            for (var qi = 0u; qi < QT; qi++) {
                let w = tile_a[qi * TB + r];
                let ds = tile_d[qi * TB + r];
                for (var e = 0u; e < 4u; e++) {
                    let d = min(l + 16u * e, HS - 1u);
                    dk[e] = fma(ds, tile_q[qi * SD + d], dk[e]);
                    dv[e] = fma(w, tile_g[qi * SD + d], dv[e]);
                }
            }
        }
    }
    if r < blk.rows {
        let row = row_at(blk.b, blk.t0 + r);
        for (var e = 0u; e < 4u; e++) {
            let d = l + 16u * e;
            if d < HS {
                dqkv[row + k_col(blk.h) + d] = p.scale * dk[e];
                dqkv[row + v_col(blk.h) + d] = dv[e];
            }
        }
    }
}

// ---- Image kernels (CPU adapters; AttentionVariant::Image), head size % 4 == 0 ----
//
// The per-row kernels with q, k, v and dout read as vec4 texels of rgba32float storage
// textures (packed by matmul.wgsl's matmul_pack_a: row b·T + t, texel column / 4): on Mesa's
// llvmpipe a texture load is a vector gather, a storage-buffer load a loop over the SIMD lanes.

@group(0) @binding(10) var qkv_t: texture_storage_2d<rgba32float, read>;
@group(0) @binding(11) var dout_t: texture_storage_2d<rgba32float, read>;

const MAX_HS4: u32 = 32u;

// Texel i of the head at column `col` of qkv (q_col, k_col or v_col) at (b, t).
fn qkv4(b: u32, t: u32, col: u32, i: u32) -> vec4<f32> {
    return textureLoad(qkv_t, vec2<u32>(col / 4u + i, b * p.t + t));
}

// Texel i of head h's dout at (b, t).
fn dout4(b: u32, t: u32, h: u32, i: u32) -> vec4<f32> {
    return textureLoad(dout_t, vec2<u32>(h * HS / 4u + i, b * p.t + t));
}

fn sum4(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(64)
fn attention_forward_image(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = position(wid, nwg, lid, p.nh);
    if !s.ok {
        return;
    }
    let n4 = HS / 4u;
    let kc = k_col(s.h / group());
    let vc = v_col(s.h / group());
    var q: array<vec4<f32>, MAX_HS4>;
    for (var i = 0u; i < n4; i++) {
        q[i] = qkv4(s.b, s.t, q_col(s.h), i) * p.scale;
    }
    var m = NEG_BIG;
    var sum = 0.0;
    var o: array<vec4<f32>, MAX_HS4>;
    for (var t2 = 0u; t2 <= s.t; t2++) {
        var d4 = vec4<f32>(0.0);
        for (var i = 0u; i < n4; i++) {
            d4 = fma(q[i], qkv4(s.b, t2, kc, i), d4);
        }
        let d = sum4(d4);
        if d > m {
            let c = exp(m - d);
            sum *= c;
            for (var i = 0u; i < n4; i++) {
                o[i] *= c;
            }
            m = d;
        }
        let e = exp(d - m);
        sum += e;
        for (var i = 0u; i < n4; i++) {
            o[i] = fma(vec4<f32>(e), qkv4(s.b, t2, vc, i), o[i]);
        }
    }
    let inv = 1.0 / sum;
    let oo = out_at(s.b, s.t, s.h);
    for (var i = 0u; i < n4; i++) {
        for (var e = 0u; e < 4u; e++) {
            out[oo + 4u * i + e] = o[i][e] * inv;
        }
    }
    lse[s.bh * p.t + s.t] = m + log(sum);
}

@compute @workgroup_size(64)
fn attention_backward_rows_image(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = position(wid, nwg, lid, p.nh);
    if !s.ok {
        return;
    }
    let n4 = HS / 4u;
    let kc = k_col(s.h / group());
    let vc = v_col(s.h / group());
    let go = out_at(s.b, s.t, s.h);
    var g: array<vec4<f32>, MAX_HS4>;
    var q: array<vec4<f32>, MAX_HS4>;
    var dd4 = vec4<f32>(0.0);
    for (var i = 0u; i < n4; i++) {
        g[i] = dout4(s.b, s.t, s.h, i);
        q[i] = qkv4(s.b, s.t, q_col(s.h), i) * p.scale;
        let o = go + 4u * i;
        dd4 = fma(g[i], vec4<f32>(out_in[o], out_in[o + 1u], out_in[o + 2u], out_in[o + 3u]), dd4);
    }
    let dd = sum4(dd4);
    let stat = s.bh * p.t + s.t;
    let l = lse_in[stat];
    var dq: array<vec4<f32>, MAX_HS4>;
    for (var t2 = 0u; t2 <= s.t; t2++) {
        var sc4 = vec4<f32>(0.0);
        var dp4 = vec4<f32>(0.0);
        for (var i = 0u; i < n4; i++) {
            sc4 = fma(q[i], qkv4(s.b, t2, kc, i), sc4);
            dp4 = fma(g[i], qkv4(s.b, t2, vc, i), dp4);
        }
        let ds = exp(sum4(sc4) - l) * (sum4(dp4) - dd);
        for (var i = 0u; i < n4; i++) {
            dq[i] = fma(vec4<f32>(ds), qkv4(s.b, t2, kc, i), dq[i]);
        }
    }
    let qo = row_at(s.b, s.t) + q_col(s.h);
    for (var i = 0u; i < n4; i++) {
        for (var e = 0u; e < 4u; e++) {
            dqkv[qo + 4u * i + e] = p.scale * dq[i][e];
        }
    }
    dstat[stat] = dd;
}

@compute @workgroup_size(64)
fn attention_backward_cols_image(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = position(wid, nwg, lid, p.nkv);  // s.h is the kv head, s.t the key position
    if !s.ok {
        return;
    }
    let n4 = HS / 4u;
    var k: array<vec4<f32>, MAX_HS4>;
    var v: array<vec4<f32>, MAX_HS4>;
    for (var i = 0u; i < n4; i++) {
        k[i] = qkv4(s.b, s.t, k_col(s.h), i) * p.scale;
        v[i] = qkv4(s.b, s.t, v_col(s.h), i);
    }
    var dk: array<vec4<f32>, MAX_HS4>;
    var dv: array<vec4<f32>, MAX_HS4>;
    let grp = group();
    for (var j = 0u; j < grp; j++) {
        let h = s.h * grp + j;
        let qc = q_col(h);
        let bh = s.b * p.nh + h;
        for (var t = s.t; t < p.t; t++) {
            var sc4 = vec4<f32>(0.0);
            var dp4 = vec4<f32>(0.0);
            for (var i = 0u; i < n4; i++) {
                sc4 = fma(qkv4(s.b, t, qc, i), k[i], sc4);
                dp4 = fma(dout4(s.b, t, h, i), v[i], dp4);
            }
            let stat = bh * p.t + t;
            let w = exp(sum4(sc4) - lse_in[stat]);
            let ds = w * (sum4(dp4) - dstat_in[stat]);
            for (var i = 0u; i < n4; i++) {
                dk[i] = fma(vec4<f32>(ds), qkv4(s.b, t, qc, i), dk[i]);
                dv[i] = fma(vec4<f32>(w), dout4(s.b, t, h, i), dv[i]);
            }
        }
    }
    let ko = row_at(s.b, s.t) + k_col(s.h);
    let vo = row_at(s.b, s.t) + v_col(s.h);
    for (var i = 0u; i < n4; i++) {
        for (var e = 0u; e < 4u; e++) {
            dqkv[ko + 4u * i + e] = p.scale * dk[i][e];
            dqkv[vo + 4u * i + e] = dv[i][e];
        }
    }
}
