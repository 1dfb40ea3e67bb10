// Merge (scale > 0) or unmerge (scale < 0) a LoRA update into a frozen weight:
//   fan_in_fan_out = 1: w (K, N) as GPT-2's Conv1D stores it, w += scale · (b · a)ᵀ
//   fan_in_fan_out = 0: w (N, K) as nn.Linear stores it,      w += scale · b · a
//   a: (R, K) lora_A    b: (N, R) lora_B    one thread per element of w

struct Params {
    k: u32,
    n: u32,
    r: u32,
    fan_in_fan_out: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> w: array<f32>;

@compute @workgroup_size(256)
fn merge_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wid.x + wid.y * nwg.x) * 256u + lid;
    if e >= p.k * p.n {
        return;
    }
    var row: u32;  // output feature
    var col: u32;  // input feature
    if p.fan_in_fan_out != 0u {
        col = e / p.n;
        row = e % p.n;
    } else {
        row = e / p.k;
        col = e % p.k;
    }
    var s = 0.0;
    for (var j = 0u; j < p.r; j++) {
        s = fma(b[row * p.r + j], a[j * p.k + col], s);
    }
    w[e] = fma(p.scale, s, w[e]);
}
