//! lora, dropout, AdamW, reduce and merge kernels against the CPU reference. A kernel's tests
//! are named after its module (`cargo test --test kernels lora`).

mod common;

use common::{assert_close, gpu, random, ATOL, RTOL};
use lora_wgpu::cpu;
use lora_wgpu::gpu::Recording;
use lora_wgpu::kernels::adamw::{self, AdamW};
use lora_wgpu::kernels::dropout::{self, Dropout};
use lora_wgpu::kernels::lora::{self, LoraGrads, LoraShape, LoraVariant};
use lora_wgpu::kernels::matmul::{matmul, MatmulOp};
use lora_wgpu::kernels::philox::philox4x32_10;
use lora_wgpu::kernels::{merge, reduce, Variants};

#[test]
fn philox_known_answers() {
    // Random123's kat_vectors for philox4x32_10.
    assert_eq!(
        philox4x32_10([0, 0, 0, 0], [0, 0]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn dropout_matches_cpu_bit_for_bit_and_keeps_1_minus_p() {
    let g = gpu();
    let n = 1 << 20;
    let x: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
    let tx = g.upload("x", &x, &[n]).unwrap();
    let out = g.zeros("out", &[n]).unwrap();
    for (p, seed, offset) in [
        (0.1f32, 42u64, 0u32),
        (0.5, 0xDEAD_BEEF_0000_0001, 7),
        (0.0, 1, 1),
    ] {
        let d = Dropout::new(p, seed, offset).unwrap();
        g.run(&[&dropout::forward(g, &out, &tx, &d).unwrap()])
            .unwrap();
        let got = g.download(&out).unwrap();
        let mut want = vec![0.0; n];
        cpu::dropout::forward(&mut want, &x, &d);
        assert_eq!(got, want, "GPU and CPU masks differ at p={p}");
        let kept = got.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        assert!(
            (kept - (1.0 - p as f64)).abs() <= 0.005,
            "p={p}: kept {kept}, expected {} within 0.5%",
            1.0 - p
        );
        // Backward applies the same mask to the gradient.
        g.run(&[&dropout::backward(g, &out, &tx, &d).unwrap()])
            .unwrap();
        assert_eq!(
            g.download(&out).unwrap(),
            want,
            "backward mask differs at p={p}"
        );
    }
    // A different offset gives a different mask.
    let a: Vec<f32> = (0..64)
        .map(|i| Dropout::new(0.5, 3, 0).unwrap().multiplier(i))
        .collect();
    let b: Vec<f32> = (0..64)
        .map(|i| Dropout::new(0.5, 3, 1).unwrap().multiplier(i))
        .collect();
    assert_ne!(a, b);
    assert!(Dropout::new(1.0, 0, 0).is_err() && Dropout::new(-0.1, 0, 0).is_err());
}

struct LoraCase {
    s: LoraShape,
    scale: f32,
    d: Dropout,
}

fn lora_cases() -> Vec<LoraCase> {
    let mut v = Vec::new();
    for (m, k, n, r) in [
        (1, 1, 1, 1),
        (7, 13, 5, 8),
        (129, 257, 65, 64),
        (70, 768, 2304, 8),
        (33, 30, 17, 3),
    ] {
        for p in [0.0, 0.1] {
            v.push(LoraCase {
                s: LoraShape { m, k, n, r },
                scale: 16.0 / r as f32,
                d: Dropout::new(p, 1234 + r as u64, 5).unwrap(),
            });
        }
    }
    v
}

#[test]
fn lora_forward_matches_cpu() {
    let g = gpu();
    for (ci, c) in lora_cases().into_iter().enumerate() {
        let LoraShape { m, k, n, r } = c.s;
        let seed = 100 * ci as u64;
        let (x, a, b, y0) = (
            random(m * k, seed),
            random(r * k, seed + 1),
            random(n * r, seed + 2),
            random(m * n, seed + 3),
        );
        let tx = g.upload("x", &x, &[m, k]).unwrap();
        let ta = g.upload("a", &a, &[r, k]).unwrap();
        let tb = g.upload("b", &b, &[n, r]).unwrap();
        let ty = g.upload("y", &y0, &[m, n]).unwrap();
        let tu = g.zeros("u", &[m, r]).unwrap();
        let (mut y, mut u) = (y0.clone(), vec![0.0; m * r]);
        cpu::lora::forward(&mut y, &mut u, &x, &a, &b, &c.s, c.scale, &c.d);
        for variant in [
            LoraVariant::Workgroup,
            LoraVariant::Register,
            LoraVariant::Parallel,
        ] {
            g.write(&ty, &y0).unwrap();
            let gv = g.with_variants(Variants {
                lora: variant,
                ..g.variants()
            });
            let fwd = lora::forward(&gv, &ty, &tu, &tx, &ta, &tb, &c.s, c.scale, &c.d);
            let fwd = fwd.unwrap();
            g.run(&[&fwd]).unwrap();
            let what = format!("{variant:?} {:?} p={} ({:?})", c.s, c.d.p, fwd.kernel());
            assert_close(
                &g.download(&tu).unwrap(),
                &u,
                ATOL,
                RTOL,
                &format!("u {what}"),
            );
            assert_close(
                &g.download(&ty).unwrap(),
                &y,
                ATOL,
                RTOL,
                &format!("y {what}"),
            );
        }
    }
}

#[test]
fn lora_backward_matches_cpu() {
    let g = gpu();
    for (ci, c) in lora_cases().into_iter().enumerate() {
        let LoraShape { m, k, n, r } = c.s;
        let seed = 1000 + 100 * ci as u64;
        let x = random(m * k, seed);
        let a = random(r * k, seed + 1);
        let b = random(n * r, seed + 2);
        // Gradients scaled like a real network's (sums over n stay O(1)), so the f32 rounding of
        // du, which feeds dA and dx, stays inside the absolute tolerance on cancelling sums.
        let dy: Vec<f32> = random(m * n, seed + 3)
            .iter()
            .map(|v| v / (n as f32).sqrt())
            .collect();
        let dx0 = random(m * k, seed + 4);
        let da0 = random(r * k, seed + 5);
        let db0 = random(n * r, seed + 6);
        // u as the forward computes it
        let (mut y, mut u) = (vec![0.0; m * n], vec![0.0; m * r]);
        cpu::lora::forward(&mut y, &mut u, &x, &a, &b, &c.s, c.scale, &c.d);
        for (variant, accumulate) in [
            (LoraVariant::Workgroup, false),
            (LoraVariant::Workgroup, true),
            (LoraVariant::Register, false),
            (LoraVariant::Register, true),
            (LoraVariant::Parallel, false),
            (LoraVariant::Parallel, true),
        ] {
            let up = |name, v: &[f32], shape: &[usize]| g.upload(name, v, shape).unwrap();
            let (tx, ta, tb, tu, tdy) = (
                up("x", &x, &[m, k]),
                up("a", &a, &[r, k]),
                up("b", &b, &[n, r]),
                up("u", &u, &[m, r]),
                up("dy", &dy, &[m, n]),
            );
            let (tdx, tda, tdb) = (
                up("dx", &dx0, &[m, k]),
                up("da", &da0, &[r, k]),
                up("db", &db0, &[n, r]),
            );
            let tdu = g.zeros("du", &[m, r]).unwrap();
            let grads = LoraGrads {
                dx: Some(&tdx),
                da: &tda,
                db: &tdb,
                du: &tdu,
            };
            let gv = g.with_variants(Variants {
                lora: variant,
                ..g.variants()
            });
            let ds = lora::backward(
                &gv, grads, &tdy, &tx, &ta, &tb, &tu, &c.s, c.scale, &c.d, accumulate,
            )
            .unwrap();
            g.run(&ds.iter().collect::<Vec<_>>()).unwrap();
            let (mut dx, mut da, mut db, mut du) =
                (dx0.clone(), da0.clone(), db0.clone(), vec![0.0; m * r]);
            cpu::lora::backward(
                Some(&mut dx),
                &mut da,
                &mut db,
                &mut du,
                &dy,
                &x,
                &a,
                &b,
                &u,
                &c.s,
                c.scale,
                &c.d,
                accumulate,
            );
            let what = format!("{variant:?} {:?} p={} accumulate={accumulate}", c.s, c.d.p);
            assert_close(
                &g.download(&tdu).unwrap(),
                &du,
                ATOL,
                RTOL,
                &format!("du {what}"),
            );
            assert_close(
                &g.download(&tdb).unwrap(),
                &db,
                ATOL,
                RTOL,
                &format!("dB {what}"),
            );
            assert_close(
                &g.download(&tda).unwrap(),
                &da,
                ATOL,
                RTOL,
                &format!("dA {what}"),
            );
            assert_close(
                &g.download(&tdx).unwrap(),
                &dx,
                ATOL,
                RTOL,
                &format!("dx {what}"),
            );
        }
    }
}

#[test]
fn lora_fused_equals_unfused_composition() {
    // dropout -> matmul (x'·Aᵀ) -> matmul (scale·u·Bᵀ, accumulate), all on the GPU.
    let g = gpu();
    let s = LoraShape {
        m: 77,
        k: 96,
        n: 130,
        r: 8,
    };
    let d = Dropout::new(0.2, 9, 3).unwrap();
    let (x, a, b, y0) = (
        random(s.m * s.k, 1),
        random(s.r * s.k, 2),
        random(s.n * s.r, 3),
        random(s.m * s.n, 4),
    );
    let tx = g.upload("x", &x, &[s.m, s.k]).unwrap();
    let ta = g.upload("a", &a, &[s.r, s.k]).unwrap();
    let tb = g.upload("b", &b, &[s.n, s.r]).unwrap();
    let fused_y = g.upload("y", &y0, &[s.m, s.n]).unwrap();
    let u = g.zeros("u", &[s.m, s.r]).unwrap();
    let fused = lora::forward(g, &fused_y, &u, &tx, &ta, &tb, &s, 2.0, &d).unwrap();
    g.run(&[&fused]).unwrap();

    let slow_y = g.upload("y", &y0, &[s.m, s.n]).unwrap();
    let xd = g.zeros("x dropped", &[s.m, s.k]).unwrap();
    let u2 = g.zeros("u", &[s.m, s.r]).unwrap();
    let mut rec = Recording::new();
    rec.push(dropout::forward(g, &xd, &tx, &d).unwrap());
    rec.push(
        matmul(
            g,
            &u2,
            &xd,
            &ta,
            None,
            &MatmulOp::new(s.m, s.r, s.k).trans_b(),
        )
        .unwrap(),
    );
    rec.push(
        matmul(
            g,
            &slow_y,
            &u2,
            &tb,
            None,
            &MatmulOp::new(s.m, s.n, s.r)
                .trans_b()
                .alpha(2.0)
                .accumulate(),
        )
        .unwrap(),
    );
    rec.run(g).unwrap();
    assert_close(
        &g.download(&fused_y).unwrap(),
        &g.download(&slow_y).unwrap(),
        ATOL,
        RTOL,
        "fused vs unfused",
    );
}

#[test]
fn reduce_sumsq_matches_cpu() {
    let g = gpu();
    for n in [1usize, 255, 256, 257, 70_001, 1 << 20] {
        let x = random(n, n as u64);
        let tx = g.upload("x", &x, &[n]).unwrap();
        let out = g.zeros("out", &[1]).unwrap();
        let ds = reduce::sumsq(g, &out, &tx).unwrap();
        g.run(&[&ds[0], &ds[1]]).unwrap();
        let want = cpu::reduce::sumsq(&x) as f32;
        assert_close(
            &g.download(&out).unwrap(),
            &[want],
            ATOL,
            RTOL,
            &format!("sumsq n={n}"),
        );
    }
}

#[test]
fn adamw_ten_steps_match_cpu() {
    let g = gpu();
    let n = 10_007;
    // (config, first element of group B): one group, then LoRA+'s two with a split that is not
    // a multiple of the workgroup size.
    for (cfg, b_start) in [
        (
            AdamW {
                lr: 1e-2,
                weight_decay: 0.1,
                ..AdamW::default()
            },
            n,
        ),
        (
            AdamW {
                lr: 3e-3,
                max_grad_norm: 1.0,
                ..AdamW::default()
            },
            0,
        ),
        (
            AdamW {
                lr: 1e-3,
                weight_decay: 0.1,
                max_grad_norm: 1.0,
                lr_ratio_b: 16.0,
                ..AdamW::default()
            },
            4_099,
        ),
    ] {
        let mut p = random(n, 1);
        let tp = g.upload("param", &p, &[n]).unwrap();
        let tg = g.zeros("grad", &[n]).unwrap();
        let tm = g.zeros("m", &[n]).unwrap();
        let tv = g.zeros("v", &[n]).unwrap();
        let norm = g.zeros("norm_sq", &[1]).unwrap();
        let [s1, s2] = reduce::sumsq(g, &norm, &tg).unwrap();
        let upd = adamw::update(g, &tp, &tg, &tm, &tv, &norm, &cfg, b_start).unwrap();
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        for step in 1..=10u64 {
            let grad = random(n, 100 + step);
            g.write(&tg, &grad).unwrap();
            let lr = cfg.lr * (1.0 - step as f32 / 20.0); // a schedule: lr changes per step
            upd.set_step(g, step, lr).unwrap();
            g.run(&[&s1, &s2, upd.dispatch()]).unwrap();
            let norm_sq = g.download(&norm).unwrap()[0];
            assert_close(
                &[norm_sq],
                &[cpu::reduce::sumsq(&grad) as f32],
                ATOL,
                RTOL,
                "grad norm²",
            );
            cpu::adamw::update(
                &mut p, &grad, &mut m, &mut v, &cfg, step, lr, norm_sq, b_start,
            );
        }
        assert_close(
            &g.download(&tp).unwrap(),
            &p,
            1e-6,
            0.0,
            &format!("params {cfg:?} b_start {b_start}"),
        );
        assert_close(&g.download(&tm).unwrap(), &m, 1e-6, 0.0, "m");
        assert_close(&g.download(&tv).unwrap(), &v, 1e-6, 0.0, "v");
    }
    let bad = AdamW {
        lr: 0.0,
        ..AdamW::default()
    };
    let t = g.zeros("t", &[1]).unwrap();
    assert!(adamw::update(g, &t, &t, &t, &t, &t, &bad, 1)
        .unwrap_err()
        .to_string()
        .contains("learning rate"));
    for ratio in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let bad = AdamW {
            lr_ratio_b: ratio,
            ..AdamW::default()
        };
        let e = adamw::update(g, &t, &t, &t, &t, &t, &bad, 1).unwrap_err();
        assert!(e.to_string().contains("LoRA+ learning-rate ratio"), "{e}");
    }
    let e = adamw::update(g, &t, &t, &t, &t, &t, &AdamW::default(), 2).unwrap_err();
    assert!(e.to_string().contains("group B start"), "{e}");
}

/// LoRA+ in the CPU reference: group A (before `b_start`) steps exactly as with one learning
/// rate, group B exactly as with `lr · ratio`, decay included; so a reference that ignored the
/// split, or scaled only the step and not the decay, fails here.
#[test]
fn adamw_reference_splits_the_learning_rate_at_b_start() {
    let n = 1000;
    let b_start = 613;
    let lr = 1e-3;
    let ratio = 16.0;
    let plus = AdamW {
        lr,
        weight_decay: 0.1,
        lr_ratio_b: ratio,
        ..AdamW::default()
    };
    let run = |cfg: &AdamW, lr: f32, b_start: usize| {
        let (mut p, mut m, mut v) = (random(n, 1), vec![0.0; n], vec![0.0; n]);
        for step in 1..=10u64 {
            let grad = random(n, 100 + step);
            let norm_sq = cpu::reduce::sumsq(&grad) as f32;
            cpu::adamw::update(
                &mut p, &grad, &mut m, &mut v, cfg, step, lr, norm_sq, b_start,
            );
        }
        p
    };
    let got = run(&plus, lr, b_start);
    let one = AdamW {
        lr_ratio_b: 1.0,
        ..plus
    };
    let group_a = run(&one, lr, n);
    let group_b = run(&one, lr * ratio, n);
    assert_eq!(&got[..b_start], &group_a[..b_start], "group A");
    assert_eq!(&got[b_start..], &group_b[b_start..], "group B");
    assert_ne!(
        &got[b_start..],
        &group_a[b_start..],
        "the ratio changes group B"
    );
    // PyTorch's AdamW by hand for one element of each group, step 1 from zero moments:
    // w = w0 (1 - lr_i wd) - lr_i g / (|g| + eps).
    let (w0, g1) = (random(n, 1), random(n, 101));
    let (mut p, mut m, mut v) = (w0.clone(), vec![0.0; n], vec![0.0; n]);
    cpu::adamw::update(&mut p, &g1, &mut m, &mut v, &plus, 1, lr, 1.0, b_start);
    for (i, lr_i) in [(b_start - 1, lr as f64), (b_start, (lr * ratio) as f64)] {
        let (w, g) = (w0[i] as f64, g1[i] as f64);
        let want = w * (1.0 - lr_i * 0.1) - lr_i * g / (g.abs() + 1e-8);
        assert!(
            (p[i] as f64 - want).abs() < 1e-6,
            "element {i}: {} vs {want}",
            p[i]
        );
    }
}

#[test]
fn merge_matches_cpu_and_unmerge_restores() {
    let g = gpu();
    for (k, n, r) in [(1, 1, 1), (13, 7, 8), (768, 2304, 8), (257, 129, 64)] {
        for fan_in_fan_out in [true, false] {
            let s = LoraShape { m: 0, k, n, r };
            let w0 = random(k * n, 1);
            let a = random(r * k, 2);
            let b: Vec<f32> = random(n * r, 3).iter().map(|v| v * 0.1).collect();
            let scale = 2.0;
            let tw = g.upload("w", &w0, &[k * n]).unwrap();
            let ta = g.upload("a", &a, &[r, k]).unwrap();
            let tb = g.upload("b", &b, &[n, r]).unwrap();
            let fwd = merge::merge(g, &tw, &ta, &tb, &s, fan_in_fan_out, scale).unwrap();
            let back = merge::merge(g, &tw, &ta, &tb, &s, fan_in_fan_out, -scale).unwrap();
            g.run(&[&fwd]).unwrap();
            let mut want = w0.clone();
            cpu::merge::merge(&mut want, &a, &b, k, n, r, fan_in_fan_out, scale);
            let what = format!("k={k} n={n} r={r} fan_in_fan_out={fan_in_fan_out}");
            assert_close(
                &g.download(&tw).unwrap(),
                &want,
                ATOL,
                RTOL,
                &format!("merge {what}"),
            );
            g.run(&[&back]).unwrap();
            let restored = g.download(&tw).unwrap();
            let max_w = w0.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let max_err = restored
                .iter()
                .zip(&w0)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                max_err <= 1e-6 * max_w,
                "unmerge {what}: max error {max_err} vs max |w| {max_w}"
            );
        }
    }
}

#[test]
fn recording_replays_in_order_with_clears() {
    // y = 0; y += x (matmul with identity, accumulate) twice; replay twice -> 4x (cleared in between: 2x).
    let g = gpu();
    let x = random(6, 5);
    let tx = g.upload("x", &x, &[2, 3]).unwrap();
    let eye = g
        .upload("eye", &[1., 0., 0., 0., 1., 0., 0., 0., 1.], &[3, 3])
        .unwrap();
    let y = g.zeros("y", &[2, 3]).unwrap();
    let op = MatmulOp::new(2, 3, 3).accumulate();
    let mut rec = Recording::new();
    rec.clear(&y);
    rec.push(matmul(g, &y, &tx, &eye, None, &op).unwrap());
    rec.push(matmul(g, &y, &tx, &eye, None, &op).unwrap());
    rec.run(g).unwrap();
    rec.run(g).unwrap();
    let want: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
    assert_close(
        &g.download(&y).unwrap(),
        &want,
        1e-6,
        1e-6,
        "replayed recording",
    );
}

/// A NaN or Inf anywhere in the gradients makes the squared norm non-finite; AdamW must then
/// leave parameters and moments untouched (the trainer reports the skipped step).
#[test]
fn adamw_skips_non_finite_gradients() {
    let g = gpu();
    let n = 1000;
    let cfg = AdamW {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamW::default()
    };
    let p0 = random(n, 7);
    let tp = g.upload("param", &p0, &[n]).unwrap();
    let tg = g.zeros("grad", &[n]).unwrap();
    let tm = g.upload("m", &random(n, 8), &[n]).unwrap();
    let tv = g.upload("v", &vec![0.5; n], &[n]).unwrap();
    let norm = g.zeros("norm_sq", &[1]).unwrap();
    let [s1, s2] = reduce::sumsq(g, &norm, &tg).unwrap();
    let upd = adamw::update(g, &tp, &tg, &tm, &tv, &norm, &cfg, n / 2).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut grad = random(n, 9);
        grad[n / 2] = bad;
        g.write(&tg, &grad).unwrap();
        upd.set_step(g, 1, cfg.lr).unwrap();
        g.run(&[&s1, &s2, upd.dispatch()]).unwrap();
        assert!(!g.download(&norm).unwrap()[0].is_finite());
        assert_eq!(
            g.download(&tp).unwrap(),
            p0,
            "params changed by a {bad} gradient"
        );
        assert_eq!(g.download(&tv).unwrap(), vec![0.5; n], "v changed by {bad}");
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        cpu::adamw::update(
            &mut p,
            &grad,
            &mut m,
            &mut v,
            &cfg,
            1,
            cfg.lr,
            f32::NAN,
            n / 2,
        );
        assert_eq!(p, p0, "CPU reference must skip too");
    }
}
