// Incremental decoding with a KV cache (text generation). A call processes n new rows at
// absolute positions p0 .. p0 + n, where p0 = pos[0] is written by the host before each replay,
// so one recording serves every position.
//   decode_embedding:  out[r] = wpe[p0 + r] (+ wte[tokens[r]] when the token is in rows v0..v1
//                      of this shard); flags = 1 on the first shard (writes the position part),
//                      2 on the first shard of a model without wpe (writes zero first)
//   kv_store:          k_cache[p0 + r] = the NKV key heads of qkv row r, v_cache[p0 + r] its
//                      NKV value heads (each kv head stored once, not per query head)
//   decode_attention:  one workgroup per (row r, query head h): the query at p0 + r attends
//                      causally to cache rows 0 ..= p0 + r of kv head h / (NH / NKV);
//                      out[r, h] = softmax(q kᵀ · scale) v
//   copy_row:          out = inp[row]  (the last position, the only one the LM head needs)
//   gemv_cols:         y = x · W (+ bias) for a few rows, W stored (K, N) as GPT-2's Conv1D
//                      (K % 4 == 0, N % 4 == 0); W is read once per ROWS rows
//   gemv_rows:         y = x · Wᵀ for one row, W stored (N, K) as the tied LM head (K % 4 == 0)
//
// Shapes: qkv (n, (NH + 2·NKV)·HS) = [NH query heads | NKV key heads | NKV value heads]
//         k_cache, v_cache (ctx, NKV·HS), kv head j at columns j·HS .. (j+1)·HS
//         att (n, NH, ctx) scratch probabilities   out (n, NH·HS) from attention, (n, C) from
//         the embedding   tokens (n,) u32   pos (1,) u32
// The host guarantees p0 + n <= ctx; indices are clamped to the cache all the same.

struct Params {
    n: u32,      // rows in this call (gemv: output columns / rows of W)
    c: u32,      // channels (gemv: K)
    nh: u32,     // query heads
    ctx: u32,    // rows of each cache
    v0: u32,     // embedding: first vocab row of this shard
    v1: u32,     // embedding: one past its last row
    flags: u32,  // embedding: write the position part; gemv_cols: add the bias
    row: u32,    // copy_row: source row; gemv_cols: last row
    scale: f32,  // attention: 1 / sqrt(HS)
    nkv: u32,    // kv_store, attention: key / value heads (a divisor of nh)
    _pad1: u32,
    _pad2: u32,
}

override HS: u32 = 64u;
const MAX_HS: u32 = 128u;
override ROWS: u32 = 1u;  // gemv_cols: rows per thread, <= MAX_ROWS
const MAX_ROWS: u32 = 8u;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pos: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> wte: array<f32>;
@group(0) @binding(4) var<storage, read> wpe: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> qkv: array<f32>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(9) var<storage, read> k_in: array<f32>;
@group(0) @binding(10) var<storage, read> v_in: array<f32>;
@group(0) @binding(11) var<storage, read_write> att: array<f32>;
@group(0) @binding(12) var<storage, read> inp: array<f32>;
@group(0) @binding(14) var<storage, read> w4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read> bias: array<f32>;
@group(0) @binding(16) var<storage, read> x4: array<vec4<f32>>;

// Reads of the weight w4 go through w4_at: ShaderFile::DecodeF16 builds this file with it
// stored as f16 and widened here.
fn w4_at(i: u32) -> vec4<f32> { return w4[i]; }

var<workgroup> red: array<f32, WG>;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * size + lid;
}

@compute @workgroup_size(256)
fn decode_embedding(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = linear_index(wid, nwg, lid, 256u);
    if e >= p.n * p.c {
        return;
    }
    let row = e / p.c;
    let col = e % p.c;
    var v: f32;
    if p.flags == 1u {
        v = wpe[(pos[0] + row) * p.c + col];
    } else if p.flags == 2u {
        v = 0.0;  // the first shard of a model without position embeddings
    } else {
        v = out[e];
    }
    let tok = tokens[row];
    if tok >= p.v0 && tok < p.v1 {
        v += wte[(tok - p.v0) * p.c + col];
    }
    out[e] = v;
}

// Values per row of qkv.
fn qkv_width() -> u32 {
    return (p.nh + 2u * p.nkv) * HS;
}

@compute @workgroup_size(256)
fn kv_store(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let kvw = p.nkv * HS;
    let e = linear_index(wid, nwg, lid, 256u);
    if e >= p.n * kvw {
        return;
    }
    let row = e / kvw;
    let col = e % kvw;
    let dst = min(pos[0] + row, p.ctx - 1u) * kvw + col;
    let src = row * qkv_width() + p.nh * HS + col;
    k_cache[dst] = qkv[src];
    v_cache[dst] = qkv[src + kvw];
}

@compute @workgroup_size(64)
fn decode_attention(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wid.x;
    let h = wid.y;
    let kvw = p.nkv * HS;
    let kv = (h / (p.nh / p.nkv)) * HS;  // column of the kv head in the caches
    let nk = min(pos[0] + r + 1u, p.ctx);
    var q: array<f32, MAX_HS>;
    let qo = r * qkv_width() + h * HS;
    for (var i = 0u; i < HS; i++) {
        q[i] = qkv[qo + i];
    }
    let arow = (r * p.nh + h) * p.ctx;

    // Scores of this thread's keys, and their maximum over the workgroup.
    var m = -3.402823e38;
    for (var t = lid; t < nk; t += WG) {
        let ko = t * kvw + kv;
        var d = 0.0;
        for (var i = 0u; i < HS; i++) {
            d = fma(q[i], k_in[ko + i], d);
        }
        d *= p.scale;
        att[arow + t] = d;
        m = max(m, d);
    }
    red[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();

    // exp and the sum over the workgroup.
    var sum = 0.0;
    for (var t = lid; t < nk; t += WG) {
        let e = exp(att[arow + t] - mx);
        att[arow + t] = e;
        sum += e;
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    // Every thread's exp values (in att, storage memory) visible to the whole workgroup.
    storageBarrier();

    // out[r, h] = Σ_t att[t] · v[t] / sum, one head channel per thread.
    for (var d = lid; d < HS; d += WG) {
        var o = 0.0;
        for (var t = 0u; t < nk; t++) {
            o = fma(att[arow + t], v_in[t * kvw + kv + d], o);
        }
        out[(r * p.nh + h) * HS + d] = o * inv;
    }
}

@compute @workgroup_size(64)
fn copy_row(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if col >= p.c {
        return;
    }
    out[col] = inp[p.row * p.c + col];
}

// One thread per 4 consecutive output columns and ROWS rows (workgroup row wid.y covers rows
// ROWS·wid.y ..): W is read once per ROWS rows, x as vec4. Rows past the end are clamped on load
// and skipped on store.
@compute @workgroup_size(64)
fn gemv_cols(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let j = wid.x * 64u + lid;
    let n4 = p.n / 4u;
    if j >= n4 {
        return;
    }
    let k4 = p.c / 4u;
    let r0 = wid.y * ROWS;
    var acc: array<vec4<f32>, MAX_ROWS>;
    for (var k = 0u; k < p.c; k += 4u) {
        let o = k * n4 + j;
        let w0 = w4_at(o);
        let w1 = w4_at(o + n4);
        let w2 = w4_at(o + 2u * n4);
        let w3 = w4_at(o + 3u * n4);
        for (var i = 0u; i < ROWS; i++) {
            let xv = x4[min(r0 + i, p.row) * k4 + k / 4u];
            acc[i] = fma(vec4<f32>(xv.x), w0, acc[i]);
            acc[i] = fma(vec4<f32>(xv.y), w1, acc[i]);
            acc[i] = fma(vec4<f32>(xv.z), w2, acc[i]);
            acc[i] = fma(vec4<f32>(xv.w), w3, acc[i]);
        }
    }
    for (var i = 0u; i < ROWS; i++) {
        let r = r0 + i;
        if r <= p.row {
            for (var e = 0u; e < 4u; e++) {
                var v = acc[i][e];
                if p.flags != 0u {
                    v += bias[4u * j + e];
                }
                out[r * p.n + 4u * j + e] = v;
            }
        }
    }
}

// One thread per row of W: y[v] = x · W[v].
@compute @workgroup_size(64)
fn gemv_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let v = linear_index(wid, nwg, lid, 64u);
    if v >= p.n {
        return;
    }
    let k4 = p.c / 4u;
    // Two accumulators (K % 8 == 0 not required: the odd vec4 is added last).
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    let base = v * k4;
    var k = 0u;
    for (; k + 1u < k4; k += 2u) {
        acc0 = fma(x4[k], w4_at(base + k), acc0);
        acc1 = fma(x4[k + 1u], w4_at(base + k + 1u), acc1);
    }
    if k < k4 {
        acc0 = fma(x4[k], w4_at(base + k), acc0);
    }
    let acc = acc0 + acc1;
    out[v] = (acc.x + acc.y) + (acc.z + acc.w);
}
