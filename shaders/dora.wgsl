// DoRA (weight-decomposed LoRA, Liu et al. 2024) for a linear layer whose frozen weight W is
// stored [in, out] (k = in, n = out), with PEFT's arithmetic:
//   wn_j = ‖W[:, j] + scale · (B A)ᵀ[:, j]‖      the weight's norm per output feature
//   c_j  = m_j / wn_j                             wn is a constant to the backward (detached)
//   y    = c ∘ u + b,  u = x·W + scale · x·Aᵀ·Bᵀ   (dora_scale, after the matmul and LoRA term)
//   dm_j = Σ_t dy[t, j] · u[t, j] / wn_j           (dora_backward, which also
//   du   = c ∘ dy                                   writes the gradient at u, which the frozen
//                                                  product's and the LoRA term's backward take)
// `norm` holds c in [0, n) and wn in [n, 2n).
//   w: (k, n)   b: (n, r)   m, wsq: (n,)   aw: (r, n)   gram: (r, r)   y, u, dy, du: (rows, n)

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
@group(0) @binding(13) var<storage, read_write> wsq: array<f32>;
@group(0) @binding(14) var<storage, read> aw: array<f32>;
@group(0) @binding(15) var<storage, read> gram: array<f32>;

fn load_w(i: u32) -> f32 { return w[i]; }

// ‖W[:, j]‖², once per module (W is frozen): one thread per output feature, reading its column
// of W (coalesced across the workgroup) into norm's second half.
@compute @workgroup_size(64)
fn dora_col_sumsq(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= p.n {
        return;
    }
    var acc = 0.0;
    for (var i = 0u; i < p.k; i++) {
        let v = load_w(i * p.n + j);
        acc += v * v;
    }
    wsq[j] = acc;
}

// wn_j² = ‖W_j‖² + 2s·B_j·(A W)_j + s²·B_j (A Aᵀ) B_jᵀ, from the products the matmul computes
// (aw = A·W (r, n), gram = A·Aᵀ (r, r)): the norm without a pass over W.
@compute @workgroup_size(64)
fn dora_norm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= p.n {
        return;
    }
    var cross = 0.0;
    var quad = 0.0;
    for (var q = 0u; q < p.r; q++) {
        let bq = b[j * p.r + q];
        cross += bq * aw[q * p.n + j];
        var gb = 0.0;
        for (var t = 0u; t < p.r; t++) {
            gb += gram[q * p.r + t] * b[j * p.r + t];
        }
        quad += bq * gb;
    }
    let wn = sqrt(max(wsq[j] + 2.0 * p.scale * cross + p.scale * p.scale * quad, 0.0));
    norm[j] = m[j] / wn;
    norm[p.n + j] = wn;
}

const COLS: u32 = 64u;
const LANES: u32 = 4u;
// dora_scale's rows per workgroup: LANES lanes of 4 rows each.
const SCALE_ROWS: u32 = 16u;

// 64 output features × 16 rows per workgroup: each thread loads its c_j (and b_j) once for
// 4 rows.
@compute @workgroup_size(64, 4)
fn dora_scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let j = wid.x * COLS + lid.x;
    if j >= p.n {
        return;
    }
    let c = norm_in[j];
    var b = 0.0;
    if p.flag != 0u {
        b = bias[j];
    }
    for (var q = 0u; q < SCALE_ROWS / LANES; q++) {
        let t = wid.y * SCALE_ROWS + q * LANES + lid.y;
        if t < p.rows {
            let i = t * p.n + j;
            let v = y[i];
            if p.save != 0u {
                u[i] = v;
            }
            y[i] = c * v + b;
        }
    }
}

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
