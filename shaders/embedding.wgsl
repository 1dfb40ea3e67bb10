// Token (+ position) embedding, one vocabulary shard at a time (an embedding is larger than a
// storage binding on some adapters, so it is split by vocab rows).
//   tokens: (N,) u32, N = B·T     wte: (v1 - v0, C) rows v0 .. v1 of the table
//   wpe: (n_positions, C)         out: (N, C)
//   add_pos = 1: out = wpe[t] (+ wte[tok] if tok is in this shard)        (GPT-2's first shard)
//   add_pos = 2: out = (wte[tok] if tok is in this shard, else 0)        (first shard, no wpe)
//   add_pos = 0: out += wte[tok] if tok is in this shard                 (the other shards)
// One thread per output element.

struct Params {
    n: u32,
    t: u32,
    c: u32,
    add_pos: u32,
    v0: u32,
    v1: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> wte: array<f32>;
@group(0) @binding(3) var<storage, read> wpe: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn embedding_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wid.x + wid.y * nwg.x) * 256u + lid;
    if e >= p.n * p.c {
        return;
    }
    let row = e / p.c;
    let col = e % p.c;
    var v: f32;
    if p.add_pos == 1u {
        v = wpe[(row % p.t) * p.c + col];
    } else if p.add_pos == 2u {
        v = 0.0;
    } else {
        v = out[e];
    }
    let tok = tokens[row];
    if tok >= p.v0 && tok < p.v1 {
        v += wte[(tok - p.v0) * p.c + col];
    }
    out[e] = v;
}
