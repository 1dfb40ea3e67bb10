// matmul_coop: C = alpha * op(A) · op(B) (+ bias) (+ C) on cooperative matrices (tensor cores,
// simdgroup matrices), operands rounded to f16, products accumulated in f32.
//
// Appended to matmul.wgsl (src/gpu/dispatch.rs, ShaderFile::MatmulCoop*), whose Params,
// bindings, load_a_or_0 / load_b_or_0 (op(A), op(B) with their transposes, B possibly stored
// as f16), stage_coord and store_c (alpha, bias, accumulate) it uses, behind `enable f16;` and
// `enable wgpu_cooperative_matrix;`. Written for 16x16 fragments; the 8x8 build replaces
// `coop_mat16x16` and S.
//
// A workgroup of four subgroups (WG = 4 x the adapter's largest subgroup size) owns a CB x CB
// block of C; subgroup q owns the CT x CT tile (q / 2, q % 2) of it as F x F f32 accumulator
// fragments. Per stage of CK = 2*S along k, the whole workgroup stages op(A) and op(B) as f16
// in workgroup memory (zeros past the edges, walking global memory contiguously for every
// transpose); then each subgroup multiplies its 2 x F x F fragment pairs. At the end each
// fragment goes through a per-subgroup S x S scratch to the shared epilogue, which checks the
// edges. Were the subgroups smaller than the largest size, there would be more than four: the
// extra ones repeat a tile's products and store nothing.

const S: u32 = 16u;        // fragment side
const F: u32 = 4u;         // fragments per side of a subgroup's tile
const CT: u32 = F * S;     // subgroup tile side
const CB: u32 = 2u * CT;   // block side: 2 x 2 subgroup tiles
const CK: u32 = 2u * S;    // k depth of one stage

override WG: u32 = 128u;

var<workgroup> coop_a: array<f16, CB * CK>;      // (CB, CK) row-major: op(A)[row0 + r, t + kk]
var<workgroup> coop_b: array<f16, CK * CB>;      // (CK, CB) row-major: op(B)[t + kk, col0 + c]
var<workgroup> coop_c: array<f32, 4u * S * S>;   // one fragment per subgroup tile

@compute @workgroup_size(WG)
fn matmul_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let row0 = wid.y * CB;
    let col0 = wid.x * CB;
    let base_a = wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = wid.z * p.stride_c;
    let q = sg % 4u;
    let ti = (q / 2u) * CT;
    let tj = (q % 2u) * CT;

    var acc: array<coop_mat16x16<f32, C>, F * F>;  // fragment (i, j) at i * F + j
    for (var t = 0u; t < p.k; t += CK) {
        for (var e = tid; e < CB * CK; e += WG) {
            let rk = stage_coord(e, CB, CK, !TRANS_A);
            coop_a[rk.x * CK + rk.y] = f16(load_a_or_0(base_a, row0 + rk.x, t + rk.y));
        }
        for (var e = tid; e < CK * CB; e += WG) {
            let ck = stage_coord(e, CB, CK, TRANS_B);
            coop_b[ck.y * CB + ck.x] = f16(load_b_or_0(base_b, t + ck.y, col0 + ck.x));
        }
        workgroupBarrier();
        for (var ks = 0u; ks < CK; ks += S) {
            for (var i = 0u; i < F; i++) {
                let fa = coopLoadT<coop_mat16x16<f16, A>>(&coop_a[(ti + i * S) * CK + ks], CK);
                for (var j = 0u; j < F; j++) {
                    let fb = coopLoadT<coop_mat16x16<f16, B>>(&coop_b[ks * CB + tj + j * S], CB);
                    acc[i * F + j] = coopMultiplyAdd(fa, fb, acc[i * F + j]);
                }
            }
        }
        workgroupBarrier();
    }
    let scratch = q * S * S;
    for (var i = 0u; i < F; i++) {
        for (var j = 0u; j < F; j++) {
            if sg < 4u {
                coopStoreT(acc[i * F + j], &coop_c[scratch], S);
            }
            workgroupBarrier();
            if sg < 4u {
                for (var e = lane; e < S * S; e += sg_size) {
                    let row = row0 + ti + i * S + e / S;
                    let col = col0 + tj + j * S + e % S;
                    if row < p.m && col < p.n {
                        store_c(base_c, row, col, coop_c[scratch + e]);
                    }
                }
            }
            workgroupBarrier();
        }
    }
}
