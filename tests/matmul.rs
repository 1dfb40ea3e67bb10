//! matmul.wgsl against the CPU reference, every variant, odd shapes, every transpose.

mod common;

use common::{assert_close, gpu, random, ATOL, RTOL};
use lora_wgpu::cpu;
use lora_wgpu::kernels::matmul::{image, image_subgroups, matmul, MatmulOp, MatmulVariant};
use lora_wgpu::kernels::Variants;
use lora_wgpu::{Gpu, GpuOptions};

const VARIANTS: [MatmulVariant; 5] = [
    MatmulVariant::Image,
    MatmulVariant::Register,
    MatmulVariant::Tiled { tm: 4, tn: 4 },
    MatmulVariant::Tiled { tm: 1, tn: 1 },
    MatmulVariant::Tiled { tm: 8, tn: 8 },
];

/// A handle to `g`'s device that records matmuls with `variant`.
fn with(g: &Gpu, variant: MatmulVariant) -> Gpu {
    g.with_variants(Variants {
        matmul: variant,
        ..g.variants()
    })
}

/// Run `op` on the GPU with `variant` and compare with the CPU reference.
fn check(variant: MatmulVariant, op: MatmulOp, with_bias: bool, seed: u64) {
    check_with(variant, op, with_bias, seed, false, false);
}

fn round_f16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

/// [`check`], with B stored as f16 when `b_f16` (the reference then uses B rounded to f16),
/// and A's and B's values rounded to f16 (stored as f32 unless `b_f16`) when `round`.
fn check_with(
    variant: MatmulVariant,
    op: MatmulOp,
    with_bias: bool,
    seed: u64,
    b_f16: bool,
    round: bool,
) {
    let g = gpu();
    let a_len = op.m * op.k * op.batch;
    let b_len = op.k * op.n; // broadcast over the batch
    let mut a = random(a_len, seed);
    if round {
        a = round_f16(&a);
    }
    let mut b = random(b_len, seed + 1);
    if round {
        b = round_f16(&b);
    }
    let bias = random(op.n, seed + 2);
    let c0 = random(op.batch * op.m * op.n, seed + 3);
    let a_shape = if op.trans_a {
        [op.batch, op.k, op.m]
    } else {
        [op.batch, op.m, op.k]
    };
    let b_shape = if op.trans_b {
        [op.n, op.k]
    } else {
        [op.k, op.n]
    };
    let ta = g.upload("a", &a, &a_shape).unwrap();
    let tb = if b_f16 {
        b = round_f16(&b);
        g.upload_f16("b", &b, &b_shape).unwrap()
    } else {
        g.upload("b", &b, &b_shape).unwrap()
    };
    let tbias = g.upload("bias", &bias, &[op.n]).unwrap();
    let tc = g.upload("c", &c0, &[op.batch, op.m, op.n]).unwrap();
    let d = matmul(
        &with(g, variant),
        &tc,
        &ta,
        &tb,
        with_bias.then_some(&tbias),
        &op,
    )
    .unwrap();
    g.run(&[&d]).unwrap();
    let got = g.download(&tc).unwrap();
    let mut want = c0;
    cpu::matmul::matmul(&mut want, &a, &b, with_bias.then_some(&bias[..]), &op);
    assert_close(
        &got,
        &want,
        ATOL,
        RTOL,
        &format!("{variant:?} {op:?} bias={with_bias} f16 B={b_f16} rounded={round}"),
    );
}

#[test]
fn frozen_b_is_packed_once_and_reused() {
    // The image variant packs a frozen B once, when the first dispatch is built, and keeps it
    // with the tensor (per orientation): later dispatches with other A reuse it.
    let g = gpu();
    let (m, k, n) = (37, 20, 70);
    let w = random(k * n, 41);
    let tw = g.upload("w", &w, &[k, n]).unwrap();
    for (seed, trans_b) in [(42, false), (43, false), (44, true), (45, true)] {
        let (rows, cols) = if trans_b { (n, k) } else { (k, n) };
        let mut op = MatmulOp::new(m, cols, rows).frozen_b();
        op.trans_b = trans_b;
        let a = random(m * rows, seed);
        let ta = g.upload("a", &a, &[m, rows]).unwrap();
        let tc = g.zeros("c", &[m, cols]).unwrap();
        let d = matmul(&with(g, MatmulVariant::Image), &tc, &ta, &tw, None, &op).unwrap();
        g.run(&[&d]).unwrap();
        let mut want = vec![0.0; m * cols];
        cpu::matmul::matmul(&mut want, &a, &w, None, &op);
        let what = format!("frozen B, trans_b={trans_b}, seed {seed}");
        assert_close(&g.download(&tc).unwrap(), &want, ATOL, RTOL, &what);
    }
}

#[test]
fn f16_weights_every_variant_and_transpose() {
    let g = gpu();
    if !g.features().f16 {
        // The CI run with optional features hidden: a clear refusal, never a silent misread.
        let e = g.upload_f16("w", &[1.0; 8], &[2, 4]).unwrap_err();
        assert!(e.to_string().contains("SHADER_F16"), "{e}");
        return;
    }
    // (64, 32, 128): the register variant's vec4 path; the others its scalar path.
    let shapes = [(7, 13, 5), (129, 65, 67), (64, 32, 128), (1, 768, 8)];
    let mut seed = 500;
    for variant in VARIANTS {
        for &(m, k, n) in &shapes {
            for tb in [false, true] {
                let mut op = MatmulOp::new(m, n, k);
                op.trans_b = tb;
                seed += 10;
                check_with(variant, op, true, seed, true, false);
            }
        }
    }
    // An f16 tensor where a kernel expects f32 is refused by name.
    let w = g.upload_f16("frozen w", &[0.5; 16], &[4, 4]).unwrap();
    let c = g.zeros("c", &[4, 4]).unwrap();
    let e = matmul(
        &with(g, VARIANTS[0]),
        &c,
        &w,
        &w,
        None,
        &MatmulOp::new(4, 4, 4),
    )
    .unwrap_err();
    assert!(e.to_string().contains("frozen w"), "{e}");
    assert_eq!(g.download(&w).unwrap(), vec![0.5; 16]);
}

#[test]
fn odd_shapes_all_variants_and_transposes() {
    let shapes = [
        (1, 1, 1),
        (7, 13, 5),
        (129, 257, 65),
        (3, 1, 17),
        (65, 5, 300),
    ];
    let mut seed = 0;
    for variant in VARIANTS {
        for &(m, k, n) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut op = MatmulOp::new(m, n, k);
                op.trans_a = ta;
                op.trans_b = tb;
                seed += 10;
                check(variant, op, false, seed);
            }
        }
    }
}

/// Where subgroups are exactly 8 wide (lavapipe on 256-bit vectors: the Vulkan CI pass) the
/// image variant runs `matmul_image_sg` (op(B) shared through the subgroup, 16-row blocks),
/// elsewhere `matmul_image` (GL, `LORA_WGPU_NO_OPTIONAL_FEATURES`): the tests in this file
/// check whichever runs. Here: edges of the 16 x 64 block in every dimension, bias, alpha and
/// accumulate, so both kernels' epilogues are covered.
#[test]
fn image_kernel_choice_and_block_edges() {
    let g = gpu();
    let info = g.info();
    let eight_wide =
        g.features().subgroup && info.subgroup_min_size == 8 && info.subgroup_max_size == 8;
    if info.backend == wgpu::Backend::Vulkan
        && info.name.contains("llvmpipe")
        && info.name.contains("256 bits")
        && !GpuOptions::from_env().no_optional_features
    {
        assert!(
            eight_wide,
            "lavapipe on Vulkan offers SUBGROUP with 8-wide subgroups, so matmul_image_sg \
             should be tested here: {info:?}, {:?}",
            g.features()
        );
    }
    let op = MatmulOp::new(17, 65, 9);
    let (a, b, c) = (
        g.zeros("a", &[17, 9]).unwrap(),
        g.zeros("b", &[9, 65]).unwrap(),
        g.zeros("c", &[17, 65]).unwrap(),
    );
    let d = matmul(&with(g, MatmulVariant::Image), &c, &a, &b, None, &op).unwrap();
    let want = if eight_wide {
        &image::IMAGE_SG
    } else {
        &image::IMAGE
    };
    assert_eq!(d.kernel(), want);
    assert_eq!(image_subgroups(g), eight_wide);
    let mut seed = 500;
    for (m, k, n) in [
        (15, 7, 63),
        (16, 8, 64),
        (17, 9, 65),
        (33, 12, 129),
        (48, 5, 200),
    ] {
        for (ta, tb) in [(false, false), (true, true)] {
            seed += 10;
            let mut op = MatmulOp::new(m, n, k).alpha(0.75).accumulate();
            op.trans_a = ta;
            op.trans_b = tb;
            check(MatmulVariant::Image, op, true, seed);
        }
    }
}

#[test]
fn bias_alpha_accumulate_and_batch() {
    for variant in VARIANTS {
        check(variant, MatmulOp::new(33, 70, 19).alpha(0.5), true, 1);
        check(variant, MatmulOp::new(33, 70, 19).accumulate(), true, 2);
        check(
            variant,
            MatmulOp::new(9, 31, 40).batch(3).trans_b().accumulate(),
            false,
            3,
        );
        check(
            variant,
            MatmulOp::new(17, 6, 23).batch(2).trans_a().alpha(-2.0),
            true,
            4,
        );
    }
}

#[test]
fn block_tile_8x8_crosses_tiles_in_every_dimension() {
    // 128x128 block tiles, 8-deep k stages: shapes that leave partial tiles in m, n and k, more
    // than two k stages (both staging buffers reused), batched, every transpose.
    let v = MatmulVariant::Tiled { tm: 8, tn: 8 };
    let mut seed = 100;
    for (m, k, n) in [(130, 43, 259), (256, 24, 128), (5, 17, 131)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut op = MatmulOp::new(m, n, k).batch(2).alpha(0.75).accumulate();
            op.trans_a = ta;
            op.trans_b = tb;
            seed += 10;
            check(v, op, true, seed);
        }
    }
}

#[test]
fn unsupported_tiles_are_errors() {
    let g = gpu();
    let a = g.zeros("a", &[4, 3]).unwrap();
    let b = g.zeros("b", &[3, 5]).unwrap();
    let c = g.zeros("c", &[4, 5]).unwrap();
    for (tm, tn) in [(0, 1), (5, 4), (8, 4), (16, 16)] {
        let v = MatmulVariant::Tiled { tm, tn };
        let err = matmul(&with(g, v), &c, &a, &b, None, &MatmulOp::new(4, 5, 3)).unwrap_err();
        assert!(err.to_string().contains("matmul tile"), "{err}");
    }
}

#[test]
fn gpt2_shape_512x768x2304() {
    // M x K x N of GPT-2's c_attn at B·T = 512, on the adapter's own variant and the GPU one.
    let g = gpu();
    check(g.variants().matmul, MatmulOp::new(512, 2304, 768), true, 7);
    check(
        MatmulVariant::Tiled { tm: 4, tn: 4 },
        MatmulOp::new(512, 2304, 768),
        false,
        8,
    );
}

#[test]
fn shape_errors_are_reported() {
    let g = gpu();
    let a = g.zeros("a", &[4, 3]).unwrap();
    let b = g.zeros("b", &[3, 5]).unwrap();
    let c = g.zeros("c", &[4, 6]).unwrap();
    let err = matmul(g, &c, &a, &b, None, &MatmulOp::new(4, 5, 3)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("matmul") && msg.contains("C (c)"), "{msg}");
}

#[test]
fn register_variant_uses_vec4_loads_when_dimensions_allow() {
    use lora_wgpu::kernels::matmul::{REGISTER, VEC4};
    let g = gpu();
    let kernel_for = |op: MatmulOp| {
        let a = g.zeros("a", &[op.m * op.k]).unwrap();
        let b = g.zeros("b", &[op.k * op.n]).unwrap();
        let c = g.zeros("c", &[op.m * op.n]).unwrap();
        matmul(&with(g, MatmulVariant::Register), &c, &a, &b, None, &op)
            .unwrap()
            .kernel()
    };
    assert_eq!(kernel_for(MatmulOp::new(7, 12, 8)), &VEC4);
    assert_eq!(kernel_for(MatmulOp::new(7, 13, 8).trans_b()), &VEC4);
    assert_eq!(kernel_for(MatmulOp::new(7, 12, 8).trans_a()), &REGISTER);
    assert_eq!(kernel_for(MatmulOp::new(8, 12, 6)), &REGISTER);
}

/// Autotuning times the candidates once per shape class, runs the winner (which must agree
/// with the CPU reference like every variant), keeps it in the cache directory, and a new
/// device on the same adapter starts from that table without re-timing.
#[test]
fn autotune_runs_the_winner_and_caches_it_per_adapter() {
    use lora_wgpu::kernels::matmul::autotune::{
        shape_class, time_variants, tuned_so_far, CANDIDATES,
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = GpuOptions {
        autotune: Some(true),
        cache_dir: Some(dir.path().to_path_buf()),
        ..GpuOptions::from_env()
    };
    let g = Gpu::new(&opts).unwrap();
    let op = MatmulOp::new(37, 29, 45).trans_b();
    let timings = time_variants(&g, &op).unwrap();
    assert_eq!(
        timings.len(),
        CANDIDATES.len(),
        "every candidate runs here: {timings:?}"
    );
    assert!(timings.iter().all(|(_, s)| *s > 0.0));

    let (a, b) = (random(37 * 45, 1), random(29 * 45, 2));
    let ta = g.upload("a", &a, &[37, 45]).unwrap();
    let tb = g.upload("b", &b, &[29, 45]).unwrap();
    let tc = g.zeros("c", &[37, 29]).unwrap();
    let d = matmul(&with(&g, MatmulVariant::Auto), &tc, &ta, &tb, None, &op).unwrap();
    g.run(&[&d]).unwrap();
    let mut want = vec![0.0; 37 * 29];
    cpu::matmul::matmul(&mut want, &a, &b, None, &op);
    assert_close(&g.download(&tc).unwrap(), &want, ATOL, RTOL, "autotuned");

    let tuned = tuned_so_far(&g);
    let class = shape_class(&op);
    assert_eq!(class, "64x64x32-tb");
    assert!(CANDIDATES.contains(&tuned[&class]), "{tuned:?}");
    let file = std::fs::read_to_string(dir.path().join("autotune.json")).unwrap();
    assert!(file.contains(&class), "{file}");
    drop(g);
    assert_eq!(tuned_so_far(&Gpu::new(&opts).unwrap()), tuned);

    let off = Gpu::new(&GpuOptions {
        autotune: Some(false),
        ..opts
    })
    .unwrap();
    if std::env::var_os("LORA_WGPU_MATMUL").is_none() {
        assert_eq!(off.variants().matmul, MatmulVariant::device_default(&off));
    }
}

#[test]
fn cooperative_matrix_variant_matches_reference() {
    let g = gpu();
    let v = MatmulVariant::Coop;
    let Some(side) = g.features().coop_matrix else {
        // Not asked for (LORA_WGPU_COOPMAT; CI asks on a Mesa whose lavapipe offers 8x8
        // fragments): a clear refusal that says how to ask.
        let t = g.zeros("t", &[4, 4]).unwrap();
        let e = matmul(&with(g, v), &t, &t, &t, None, &MatmulOp::new(4, 4, 4)).unwrap_err();
        assert!(e.to_string().contains("LORA_WGPU_COOPMAT"), "{e}");
        return;
    };
    assert!(side == 8 || side == 16, "fragment side {side}");
    assert_eq!(
        g.variants().matmul,
        v,
        "asking for cooperative matrices selects them"
    );
    // Operands with f16 values, so only the order of the f32 sums differs from the reference:
    // partial blocks in m, n and k (several k stages), batches, every transpose, the epilogue.
    let b = 8 * side as usize; // the block side
    let shapes = [
        (1, 1, 1),
        (7, 13, 5),
        (b + 1, 3 * side as usize + 5, 2 * b - 3),
        (64, 32, 128),
    ];
    let mut seed = 900;
    for &(m, k, n) in &shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for b_f16 in [false, true] {
                let mut op = MatmulOp::new(m, n, k).batch(2).alpha(0.75).accumulate();
                op.trans_a = ta;
                op.trans_b = tb;
                seed += 10;
                check_with(v, op, true, seed, b_f16, true);
            }
        }
    }
    // f32 operands: rounded to f16 in the kernel, so within f16's precision of the f32 product.
    let op = MatmulOp::new(96, 80, 200);
    let (a, w) = (random(96 * 200, 1), random(200 * 80, 2));
    let ta = g.upload("a", &a, &[96, 200]).unwrap();
    let tw = g.upload("w", &w, &[200, 80]).unwrap();
    let tc = g.zeros("c", &[96, 80]).unwrap();
    g.run(&[&matmul(&with(g, v), &tc, &ta, &tw, None, &op).unwrap()])
        .unwrap();
    let mut want = vec![0.0; 96 * 80];
    cpu::matmul::matmul(&mut want, &a, &w, None, &op);
    assert_close(
        &g.download(&tc).unwrap(),
        &want,
        2e-2,
        1e-2,
        "coop, f32 operands",
    );
}
