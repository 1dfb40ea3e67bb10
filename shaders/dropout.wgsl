// Inverted dropout with masks regenerated from (seed, offset) by Philox (philox.wgsl), never
// stored: out[i] = keep(i) ? inp[i] * scale : 0, scale = 1 / (1 - p).
// Backward is the same map applied to the incoming gradient, with the same seed and offset.
//   inp, out: (n,)    one thread per 4 consecutive elements (one Philox call)

struct Params {
    n: u32,
    offset: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,  // floor(p * 2^32); element kept when its word >= threshold
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

fn apply(chunk: u32) {
    if chunk * 4u >= p.n {
        return;
    }
    let w = dropout_words(chunk, p.offset, vec2<u32>(p.seed_lo, p.seed_hi));
    for (var j = 0u; j < 4u; j++) {
        let i = chunk * 4u + j;
        if i < p.n {
            out[i] = select(0.0, inp[i] * p.scale, w[j] >= p.threshold);
        }
    }
}

@compute @workgroup_size(256)
fn dropout_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    apply((wid.x + wid.y * nwg.x) * WG + lid);
}

@compute @workgroup_size(256)
fn dropout_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    apply((wid.x + wid.y * nwg.x) * WG + lid);
}
