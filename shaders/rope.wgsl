// Rotary position embedding, Hugging Face's rotate_half convention (the two halves of a head
// rotate together, not interleaved pairs), fused with the concatenation of q, k and v into the
// row layout attention reads. One thread per element of a qkv row.
//   q: (rows, NH·HS)   k, v: (rows, NKV·HS)   qkv: (rows, (NH + 2·NKV)·HS)
//   qkv row = [NH rotated q heads | NKV rotated k heads | NKV v heads, copied]
//   cos, sin: (P, HS/2) tables   pos: (1,) u32, the position of row 0; row r is at
//   position pos[0] + r % T.
//   forward, for a head x and i < HS/2 at position p:
//     y[i]        = x[i] · cos[p, i] - x[i + HS/2] · sin[p, i]
//     y[i + HS/2] = x[i + HS/2] · cos[p, i] + x[i] · sin[p, i]
//   backward: the transposed rotation, dx = Rᵀ dy (and dv = the v part of dqkv), written.

struct Params {
    // Elements of qkv: rows · (NH + 2·NKV) · HS.
    n: u32,
    t: u32,
    nh: u32,
    nkv: u32,
    hs: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pos: array<u32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read> q: array<f32>;
@group(0) @binding(5) var<storage, read> k: array<f32>;
@group(0) @binding(6) var<storage, read> v: array<f32>;
@group(0) @binding(7) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(8) var<storage, read> dqkv: array<f32>;
@group(0) @binding(9) var<storage, read_write> dq: array<f32>;
@group(0) @binding(10) var<storage, read_write> dk: array<f32>;
@group(0) @binding(11) var<storage, read_write> dv: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// Where element `col` of a qkv row sits and how it rotates.
struct Site {
    // 0: q, 1: k, 2: v.
    part: u32,
    // Index in the part's row (q: NH·HS wide, k and v: NKV·HS).
    at: u32,
    // Index of the element it rotates with, in the same row.
    partner: u32,
    // -1 for the first half of a head, +1 for the second: y = x·cos + sign·x[partner]·sin.
    sign: f32,
    cos: f32,
    sin: f32,
}

fn site(row: u32, col: u32) -> Site {
    let qw = p.nh * p.hs;
    let kw = p.nkv * p.hs;
    var out: Site;
    if col < qw {
        out.part = 0u;
        out.at = col;
    } else if col < qw + kw {
        out.part = 1u;
        out.at = col - qw;
    } else {
        out.part = 2u;
        out.at = col - qw - kw;
    }
    let half = p.hs / 2u;
    let d = out.at % p.hs;
    let first = d < half;
    out.partner = select(out.at - half, out.at + half, first);
    out.sign = select(1.0, -1.0, first);
    let tab = (pos[0] + row % p.t) * half + d % half;
    out.cos = cos_t[tab];
    out.sin = sin_t[tab];
    return out;
}

@compute @workgroup_size(256)
fn rope_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    let w = (p.nh + 2u * p.nkv) * p.hs;
    let row = i / w;
    let s = site(row, i % w);
    if s.part == 0u {
        let b = row * p.nh * p.hs;
        qkv[i] = q[b + s.at] * s.cos + s.sign * q[b + s.partner] * s.sin;
    } else if s.part == 1u {
        let b = row * p.nkv * p.hs;
        qkv[i] = k[b + s.at] * s.cos + s.sign * k[b + s.partner] * s.sin;
    } else {
        qkv[i] = v[row * p.nkv * p.hs + s.at];
    }
}

@compute @workgroup_size(256)
fn rope_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    let w = (p.nh + 2u * p.nkv) * p.hs;
    let row = i / w;
    let s = site(row, i % w);
    // Rᵀ: the partner's term changes sign. The partner sits in the same part of the same row.
    let g = dqkv[i] * s.cos - s.sign * dqkv[i - s.at + s.partner] * s.sin;
    if s.part == 0u {
        dq[row * p.nh * p.hs + s.at] = g;
    } else if s.part == 1u {
        dk[row * p.nkv * p.hs + s.at] = g;
    } else {
        dv[row * p.nkv * p.hs + s.at] = dqkv[i];
    }
}
