// LayerNorm over the last dimension (llm.c's layernorm_forward/backward). Two layouts, chosen
// by the override WG_ROW: one thread per row (CPU adapters, where barriers are expensive), or
// one 64-thread workgroup per row with tree reductions (GPUs, where a thread per row leaves
// the GPU idle: B·T rows are a few thousand threads).
//   inp, out: (N, C)   weight, bias: (C,)   mean, rstd: (N,) saved for backward
//   forward:  out = (inp - mean) * rstd * weight + bias
//   backward: dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)),
//             dnorm = dout * weight, norm = (inp - mean) * rstd. weight and bias are frozen:
//             no gradient for them.

struct Params {
    n: u32,
    c: u32,
    eps: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(7) var<storage, read> dout: array<f32>;
@group(0) @binding(8) var<storage, read> mean_in: array<f32>;
@group(0) @binding(9) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(10) var<storage, read_write> dinp: array<f32>;

override WG_ROW: bool = false;
const WG: u32 = 64u;
var<workgroup> red: array<vec2<f32>, 64>;

// Sum of x over the workgroup's 64 lanes (every lane gets the total).
fn wsum(x: vec2<f32>, lid: u32) -> vec2<f32> {
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

fn forward_wg(row: u32, lid: u32) {
    let base = row * p.c;
    var s = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        s += inp[base + i];
    }
    let m = wsum(vec2<f32>(s, 0.0), lid).x / f32(p.c);
    var v = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        let d = inp[base + i] - m;
        v = fma(d, d, v);
    }
    let r = inverseSqrt(wsum(vec2<f32>(v, 0.0), lid).x / f32(p.c) + p.eps);
    for (var i = lid; i < p.c; i += WG) {
        out[base + i] = (inp[base + i] - m) * r * weight[i] + bias[i];
    }
    if lid == 0u {
        mean[row] = m;
        rstd[row] = r;
    }
}

fn backward_wg(row: u32, lid: u32) {
    let base = row * p.c;
    let m = mean_in[row];
    let r = rstd_in[row];
    var acc = vec2<f32>(0.0);
    for (var i = lid; i < p.c; i += WG) {
        let norm = (inp[base + i] - m) * r;
        let dnorm = dout[base + i] * weight[i];
        acc += vec2<f32>(dnorm, dnorm * norm);
    }
    let means = wsum(acc, lid) / f32(p.c);
    for (var i = lid; i < p.c; i += WG) {
        let norm = (inp[base + i] - m) * r;
        let dnorm = dout[base + i] * weight[i];
        dinp[base + i] += r * (dnorm - means.x - norm * means.y);
    }
}

@compute @workgroup_size(64)
fn layernorm_forward(
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
    var s = 0.0;
    for (var i = 0u; i < p.c; i++) {
        s += inp[base + i];
    }
    let m = s / f32(p.c);
    var v = 0.0;
    for (var i = 0u; i < p.c; i++) {
        let d = inp[base + i] - m;
        v = fma(d, d, v);
    }
    let r = inverseSqrt(v / f32(p.c) + p.eps);
    for (var i = 0u; i < p.c; i++) {
        out[base + i] = (inp[base + i] - m) * r * weight[i] + bias[i];
    }
    mean[row] = m;
    rstd[row] = r;
}

@compute @workgroup_size(64)
fn layernorm_backward(
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
    let m = mean_in[row];
    let r = rstd_in[row];
    var dnorm_mean = 0.0;
    var dnorm_norm_mean = 0.0;
    for (var i = 0u; i < p.c; i++) {
        let norm = (inp[base + i] - m) * r;
        let dnorm = dout[base + i] * weight[i];
        dnorm_mean += dnorm;
        dnorm_norm_mean = fma(dnorm, norm, dnorm_norm_mean);
    }
    dnorm_mean /= f32(p.c);
    dnorm_norm_mean /= f32(p.c);
    for (var i = 0u; i < p.c; i++) {
        let norm = (inp[base + i] - m) * r;
        let dnorm = dout[base + i] * weight[i];
        dinp[base + i] += r * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
    }
}
