// DoRA (weight-decomposed LoRA, Liu et al. 2024) for a linear layer whose frozen weight W is
// stored [in, out] (k = in, n = out), as PEFT computes it:
//   wn_j = ‖W[:, j] + scale · (B A)ᵀ[:, j]‖      the weight's norm per output feature
//   c_j  = m_j / wn_j                             wn is a constant to the backward (detached)
//   y    = c ∘ u + b,  u = x·W + scale · x·Aᵀ·Bᵀ   (dora_scale, after the matmul and LoRA term)
//   dm_j = Σ_t dy[t, j] · u[t, j] / wn_j           (dora_backward, which also
//   du   = c ∘ dy                                   writes the gradient at u, which the frozen
//                                                  product's and the LoRA term's backward take)
// `norm` holds c in [0, n) and wn in [n, 2n).
//   w: (k, n)   a: (r, k)   b: (n, r)   m: (n,)   y, u, dy, du: (rows, n)

struct Params {
    k: u32,
    n: u32,
    r: u32,
    rows: u32,
    scale: f32,
    // dora_scale: 1 adds the bias. dora_backward: 1 adds to dm instead of writing it.
    flag: u32,
    // dora_scale: 1 saves u before scaling.
    save: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> norm: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read> bias: array<f32>;
@group(0) @binding(8) var<storage, read_write> u: array<f32>;
@group(0) @binding(9) var<storage, read> norm_in: array<f32>;
@group(0) @binding(10) var<storage, read_write> dm: array<f32>;
@group(0) @binding(11) var<storage, read> dy: array<f32>;
@group(0) @binding(12) var<storage, read_write> du: array<f32>;

fn load_w(i: u32) -> f32 { return w[i]; }

const MAX_RANK: u32 = 64u;

// One thread per output feature: reads column j of W (coalesced across the workgroup) and
// row j of B, and rebuilds column j of scale · (B A)ᵀ on the fly.
@compute @workgroup_size(64)
fn dora_norm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= p.n {
        return;
    }
    var bj: array<f32, MAX_RANK>;
    for (var q = 0u; q < p.r; q++) {
        bj[q] = b[j * p.r + q];
    }
    var acc = 0.0;
    for (var i = 0u; i < p.k; i++) {
        var d = 0.0;
        for (var q = 0u; q < p.r; q++) {
            d += a[q * p.k + i] * bj[q];
        }
        let v = load_w(i * p.n + j) + p.scale * d;
        acc += v * v;
    }
    let wn = sqrt(acc);
    norm[j] = m[j] / wn;
    norm[p.n + j] = wn;
}

@compute @workgroup_size(256)
fn dora_scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= p.rows * p.n {
        return;
    }
    let j = i % p.n;
    let v = y[i];
    if p.save != 0u {
        u[i] = v;
    }
    var out = norm_in[j] * v;
    if p.flag != 0u {
        out += bias[j];
    }
    y[i] = out;
}

const COLS: u32 = 64u;
const LANES: u32 = 4u;
var<workgroup> partial: array<f32, 256>;

// 64 output features per workgroup, each summed over the rows by 4 lanes.
@compute @workgroup_size(64, 4)
fn dora_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let j = wid.x * COLS + lid.x;
    var acc = 0.0;
    if j < p.n {
        let c = norm_in[j];
        for (var t = lid.y; t < p.rows; t += LANES) {
            let i = t * p.n + j;
            let g = dy[i];
            acc += g * u[i];
            du[i] = c * g;
        }
    }
    partial[lid.y * COLS + lid.x] = acc;
    workgroupBarrier();
    if lid.y == 0u && j < p.n {
        var s = 0.0;
        for (var l = 0u; l < LANES; l++) {
            s += partial[l * COLS + lid.x];
        }
        let g = s / norm_in[p.n + j];
        if p.flag != 0u {
            dm[j] += g;
        } else {
            dm[j] = g;
        }
    }
}
