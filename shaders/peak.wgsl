// FMA throughput probe: each thread runs `iters` rounds; a round advances 8 independent vec4
// FMA chains 4 steps each (8 · 4 · 4 · 2 = 256 flops a round) and the thread writes one value so
// the work cannot be removed. The adapter's attainable f32 peak; kernel figures are quoted as a
// percentage of it.
//
// Several steps per chain in one round matter on llvmpipe, where every value carried around a
// loop costs work per iteration (its registers live in memory, written under the execution
// mask), so one step per chain a round measures that cost rather than the FMA rate
// (docs/lavapipe-research.md). The matmul kernels do 4 steps per
// accumulator per iteration too (one texel of k), and llvmpipe compiles their `fma` the same way
// as this one's: a multiply and an add (no FMA instruction in its JIT code).

struct Params {
    iters: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

// Four dependent FMA steps of one chain.
fn steps4(a: vec4<f32>, m: vec4<f32>, c: vec4<f32>) -> vec4<f32> {
    return fma(fma(fma(fma(a, m, c), m, c), m, c), m, c);
}

@compute @workgroup_size(64)
fn peak_fma(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + lid;
    let s = f32(i) * 1e-9;
    let m = vec4<f32>(0.999, 0.998, 0.997, 0.996);
    let c = vec4<f32>(1e-3, 2e-3, 3e-3, 4e-3);
    var a0 = vec4<f32>(s);
    var a1 = a0 + 0.1;
    var a2 = a0 + 0.2;
    var a3 = a0 + 0.3;
    var a4 = a0 + 0.4;
    var a5 = a0 + 0.5;
    var a6 = a0 + 0.6;
    var a7 = a0 + 0.7;
    for (var t = 0u; t < p.iters; t++) {
        a0 = steps4(a0, m, c);
        a1 = steps4(a1, m, c);
        a2 = steps4(a2, m, c);
        a3 = steps4(a3, m, c);
        a4 = steps4(a4, m, c);
        a5 = steps4(a5, m, c);
        a6 = steps4(a6, m, c);
        a7 = steps4(a7, m, c);
    }
    let v = (a0 + a1) + (a2 + a3) + (a4 + a5) + (a6 + a7);
    out[i] = v.x + v.y + v.z + v.w;
}
