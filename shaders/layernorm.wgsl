// LayerNorm over the last dimension, one thread per row (llm.c's layernorm_forward/backward).
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

@compute @workgroup_size(64)
fn layernorm_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
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
fn layernorm_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
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
