// Element-wise ops of the GPT-2 graph, one thread per element.
//   gelu_forward:  out = gelu_new(inp) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))
//   gelu_backward: dinp = gelu_new'(inp) · dout
//   add_forward:   out = a + b (the residual stream)
//   inp, out, dout, dinp, a, b: (n,)

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(5) var<storage, read> a: array<f32>;
@group(0) @binding(6) var<storage, read> b: array<f32>;

const GELU_SCALE: f32 = 0.7978845608028654;  // sqrt(2 / pi)

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn gelu_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    let x = inp[i];
    let cube = 0.044715 * x * x * x;
    out[i] = 0.5 * x * (1.0 + tanh(GELU_SCALE * (x + cube)));
}

@compute @workgroup_size(256)
fn gelu_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    let x = inp[i];
    let cube = 0.044715 * x * x * x;
    let th = tanh(GELU_SCALE * (x + cube));
    let sech2 = 1.0 - th * th;
    let local_grad = 0.5 * (1.0 + th) + x * 0.5 * sech2 * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
    dinp[i] = local_grad * dout[i];
}

@compute @workgroup_size(256)
fn add_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    out[i] = a[i] + b[i];
}
