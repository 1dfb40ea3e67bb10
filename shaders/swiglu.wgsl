// SwiGLU, the gated MLP activation of Llama / Qwen, one thread per element.
//   forward:  out = silu(gate) · up,   silu(x) = x · sigmoid(x) = x / (1 + exp(-x))
//   backward: dgate = dout · up · silu'(gate),   dup = dout · silu(gate)
//             silu'(x) = sigmoid(x) · (1 + x · (1 - sigmoid(x)))
//   gate, up, out, dout, dgate, dup: (n,)
// sigmoid evaluates exp only of -|x|, so no exp overflows for large |x|.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(6) var<storage, read_write> dup: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// 1 / (1 + exp(-x)), from e = exp(-|x|) in (0, 1].
fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    let s = 1.0 / (1.0 + e);
    return select(e * s, s, x >= 0.0);
}

@compute @workgroup_size(256)
fn swiglu_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    let x = gate[i];
    out[i] = x * sigmoid(x) * up[i];
}

@compute @workgroup_size(256)
fn swiglu_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    let x = gate[i];
    let s = sigmoid(x);
    let d = dout[i];
    dgate[i] = d * up[i] * s * (1.0 + x * (1.0 - s));
    dup[i] = d * x * s;
}
