// Sum of squares in two passes (for the global gradient norm):
//   sumsq_partial: workgroup g writes partial[g] = Σ x[i]², i = g*256 + lid (+ stride ...)
//   sumsq_final:   one workgroup writes out[0] = Σ partial
//   x: (n,)   partial: (groups,)   out: (1,)

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;
@group(0) @binding(3) var<storage, read> partial_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> scratch: array<f32, 256>;

fn tree_sum(lid: u32, s: f32) -> f32 {
    scratch[lid] = s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            scratch[lid] += scratch[lid + half];
        }
        workgroupBarrier();
    }
    return scratch[0];
}

@compute @workgroup_size(256)
fn sumsq_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    var s = 0.0;
    for (var i = wid.x * WG + lid; i < p.n; i += nwg.x * WG) {
        s = fma(x[i], x[i], s);
    }
    let total = tree_sum(lid, s);
    if lid == 0u {
        partial[wid.x] = total;
    }
}

@compute @workgroup_size(256)
fn sumsq_final(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        s += partial_in[i];
    }
    let total = tree_sum(lid, s);
    if lid == 0u {
        out[0] = total;
    }
}
