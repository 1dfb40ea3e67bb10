// The fused classifier's softmax + cross-entropy + dlogits, over vocabulary chunks so full
// logits are never stored. For each chunk of `vc` vocab ids starting at v0 the LM-head matmul
// writes logits (N, vc); then:
//   ce_stats:  per row, online max m and Σ exp(l - m) across chunks, and the target's logit
//   ce_loss:   loss[row] = log Σ exp + m - logit[target]  (0 where the target is IGNORE)
//   ce_grad:   logits <- dlogits = (softmax - onehot(target)) · dloss, in place (second pass,
//              after the logits of the chunk are recomputed)
//   targets: (N,) u32, IGNORE = 0xFFFFFFFF    maxv, sumexp, target_logit, loss: (N,)
//   dloss: (1,) d(mean loss)/d(loss[row]) = 1 / (number of counted targets), set per batch

struct Params {
    n: u32,
    vc: u32,
    v0: u32,
    first: u32,     // 1 for the first chunk: reset the running statistics
    _pad0: u32,
    _pad3: u32,
    _pad1: u32,
    _pad2: u32,
}

const IGNORE: u32 = 0xFFFFFFFFu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read> logits_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> maxv: array<f32>;
@group(0) @binding(4) var<storage, read_write> sumexp: array<f32>;
@group(0) @binding(5) var<storage, read_write> target_logit: array<f32>;
@group(0) @binding(6) var<storage, read_write> loss: array<f32>;
@group(0) @binding(7) var<storage, read> maxv_in: array<f32>;
@group(0) @binding(8) var<storage, read> sumexp_in: array<f32>;
@group(0) @binding(9) var<storage, read> target_logit_in: array<f32>;
@group(0) @binding(10) var<storage, read_write> logits: array<f32>;
@group(0) @binding(11) var<storage, read> dloss: array<f32>;

@compute @workgroup_size(64)
fn ce_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if row >= p.n {
        return;
    }
    var m = -3.402823e38;
    var s = 0.0;
    if p.first == 0u {
        m = maxv[row];
        s = sumexp[row];
    }
    let base = row * p.vc;
    var cm = -3.402823e38;
    for (var j = 0u; j < p.vc; j++) {
        cm = max(cm, logits_in[base + j]);
    }
    let nm = max(m, cm);
    s *= exp(m - nm);
    for (var j = 0u; j < p.vc; j++) {
        s += exp(logits_in[base + j] - nm);
    }
    maxv[row] = nm;
    sumexp[row] = s;
    let tgt = targets[row];
    if tgt >= p.v0 && tgt < p.v0 + p.vc {
        target_logit[row] = logits_in[base + tgt - p.v0];
    }
}

@compute @workgroup_size(64)
fn ce_loss(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if row >= p.n {
        return;
    }
    var l = 0.0;
    if targets[row] != IGNORE {
        l = log(sumexp_in[row]) + maxv_in[row] - target_logit_in[row];
    }
    loss[row] = l;
}

@compute @workgroup_size(256)
fn ce_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wid.x + wid.y * nwg.x) * 256u + lid;
    if e >= p.n * p.vc {
        return;
    }
    let row = e / p.vc;
    let tgt = targets[row];
    var g = 0.0;
    if tgt != IGNORE {
        let prob = exp(logits[e] - maxv_in[row]) / sumexp_in[row];
        let onehot = select(0.0, 1.0, tgt == p.v0 + e % p.vc);
        g = (prob - onehot) * dloss[0];
    }
    logits[e] = g;
}
