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
