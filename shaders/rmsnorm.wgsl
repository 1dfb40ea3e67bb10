// RMSNorm over the last dimension, as transformers' LlamaRMSNorm computes it in f32 (also
// Qwen3's per-head q_norm / k_norm, rows = tokens·heads). Two layouts, chosen by the override
// WG_ROW, as in layernorm.wgsl: one thread per row (CPU adapters), or one 64-thread workgroup
// per row with a tree reduction (GPUs).
//   inp, out: (N, C)   weight: (C,)   rstd: (N,) saved for backward
//   forward:  out = (inp · rstd) · weight,   rstd = 1 / sqrt(mean(inp²) + eps)
//   backward: grad = rstd · (dnorm - norm · mean(dnorm · norm)),
//             dnorm = dout · weight, norm = inp · rstd. The weight is frozen: no gradient
//             for it. dinp = grad, or dinp += grad when p.accumulate is 1.

struct Params {
    n: u32,
    c: u32,
    eps: f32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> dinp: array<f32>;

override WG_ROW: bool = false;
const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

// Sum of x over the workgroup's 64 lanes (every lane gets the total).
fn wsum(x: f32, lid: u32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// Store the input gradient of element i: written, or added when p.accumulate is set.
fn store_dinp(i: u32, g: f32) {
    if p.accumulate != 0u {
        dinp[i] += g;
    } else {
        dinp[i] = g;
    }
}

fn forward_wg(row: u32, lid: u32) {
    let base = row * p.c;
    var ss = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        let x = inp[base + i];
        ss = fma(x, x, ss);
    }
    let r = inverseSqrt(wsum(ss, lid) / f32(p.c) + p.eps);
    for (var i = lid; i < p.c; i += WG) {
        out[base + i] = (inp[base + i] * r) * weight[i];
    }
    if lid == 0u {
        rstd[row] = r;
    }
}

fn backward_wg(row: u32, lid: u32) {
    let base = row * p.c;
    let r = rstd_in[row];
    var acc = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        let norm = inp[base + i] * r;
        let dnorm = dout[base + i] * weight[i];
        acc = fma(dnorm, norm, acc);
    }
    let m = wsum(acc, lid) / f32(p.c);
    for (var i = lid; i < p.c; i += WG) {
        let norm = inp[base + i] * r;
        let dnorm = dout[base + i] * weight[i];
        store_dinp(base + i, r * (dnorm - norm * m));
    }
}

@compute @workgroup_size(64)
fn rmsnorm_forward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if WG_ROW {
        let wrow = wid.x + wid.y * nwg.x;
        if wrow < p.n {
            forward_wg(wrow, lid);
        }
        return;
    }
    let row = gid.x;
    if row >= p.n {
        return;
    }
    let base = row * p.c;
    var ss = 0.0;
    for (var i = 0u; i < p.c; i++) {
        let x = inp[base + i];
        ss = fma(x, x, ss);
    }
    let r = inverseSqrt(ss / f32(p.c) + p.eps);
    for (var i = 0u; i < p.c; i++) {
        out[base + i] = (inp[base + i] * r) * weight[i];
    }
    rstd[row] = r;
}

@compute @workgroup_size(64)
fn rmsnorm_backward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if WG_ROW {
        let wrow = wid.x + wid.y * nwg.x;
        if wrow < p.n {
            backward_wg(wrow, lid);
        }
        return;
    }
    let row = gid.x;
    if row >= p.n {
        return;
    }
    let base = row * p.c;
    let r = rstd_in[row];
    var acc = 0.0;
    for (var i = 0u; i < p.c; i++) {
        let norm = inp[base + i] * r;
        let dnorm = dout[base + i] * weight[i];
        acc = fma(dnorm, norm, acc);
    }
    let m = acc / f32(p.c);
    for (var i = 0u; i < p.c; i++) {
        let norm = inp[base + i] * r;
        let dnorm = dout[base + i] * weight[i];
        store_dinp(base + i, r * (dnorm - norm * m));
    }
}
