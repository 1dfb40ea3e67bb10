// Fused AdamW (decoupled weight decay, Loshchilov & Hutter) over one flat parameter buffer,
// in PyTorch's order of operations, with global grad-norm clipping folded in:
//   clip = max_norm > 0 ? min(1, max_norm / (sqrt(norm_sq) + 1e-6)) : 1
//   g  = grad * clip
//   w *= 1 - lr_i * weight_decay
//   m += (1 - beta1) * (g - m)
//   v  = beta2 * v + (1 - beta2) * g * g
//   w -= step_size_i * m / (sqrt(v) / bc2_sqrt + eps)
// Two learning-rate groups (LoRA+, as PyTorch param groups): elements i < b_start take lr and
// step_size, the rest lr_b and step_size_b. step_size = lr / (1 - beta1^t), step_size_b =
// lr_b / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) come from the host each step.
// A non-finite norm_sq (a NaN or Inf somewhere in the gradients) skips the whole update: the
// parameters and moments stay as they were, and the host sees the norm it reads back.
//   param, grad, m, v: (n,)    norm_sq: (1,) from reduce.wgsl

struct Params {
    n: u32,
    b_start: u32,
    _pad1: u32,
    _pad2: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    max_norm: f32,
    lr_b: f32,
    step_size_b: f32,
    _pad3: f32,
    _pad4: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> norm_sq: array<f32>;

@compute @workgroup_size(256)
fn adamw_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= p.n {
        return;
    }
    let ns = norm_sq[0];
    // Exponent bits all ones: Inf or NaN (compared as bits, since WGSL may assume finite floats).
    if (bitcast<u32>(ns) & 0x7f800000u) == 0x7f800000u {
        return;
    }
    var clip = 1.0;
    if p.max_norm > 0.0 {
        clip = min(1.0, p.max_norm / (sqrt(ns) + 1e-6));
    }
    let in_b = i >= p.b_start;
    let lr = select(p.lr, p.lr_b, in_b);
    let step_size = select(p.step_size, p.step_size_b, in_b);
    let g = grad[i] * clip;
    var w = param[i] * (1.0 - lr * p.weight_decay);
    let mi = m[i] + (1.0 - p.beta1) * (g - m[i]);
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    w -= step_size * mi / (sqrt(vi) / p.bc2_sqrt + p.eps);
    m[i] = mi;
    v[i] = vi;
    param[i] = w;
}
