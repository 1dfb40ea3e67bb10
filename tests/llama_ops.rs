//! The Llama-family op kernels (RMSNorm, rotary embedding, SwiGLU) against the CPU reference,
//! and the reference's backward against finite differences of its forward. A kernel's tests
//! are named after its module (`cargo test --test llama_ops rope`).

mod common;

use common::{assert_close, gpu, random, ATOL, RTOL};
use lora_wgpu::kernels::rope::{self, RopeShape};
use lora_wgpu::kernels::{rmsnorm, swiglu, Variants};
use lora_wgpu::{cpu, Error, Gpu, Tensor};

fn up(g: &Gpu, name: &str, v: &[f32]) -> Tensor {
    g.upload(name, v, &[v.len()]).unwrap()
}

/// Central differences of the scalar `loss` at `x`, step `h`.
fn finite_diff(loss: impl Fn(&[f32]) -> f64, x: &[f32], h: f32) -> Vec<f32> {
    (0..x.len())
        .map(|i| {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[i] += h;
            b[i] -= h;
            ((loss(&a) - loss(&b)) / (a[i] as f64 - b[i] as f64)) as f32
        })
        .collect()
}

/// ⟨a, b⟩ in f64.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[test]
fn rmsnorm_forward_and_backward() {
    use lora_wgpu::kernels::layernorm::LayernormVariant::{Row, Workgroup};
    let g = gpu();
    // Rows not a multiple of 64; C from 1 to a model norm's 8192, and head sizes (q/k norm).
    let shapes = [
        (1, 1),
        (13, 7),
        (67, 48),
        (5, 130),
        (3, 1000),
        (130, 16),
        (2, 8192),
    ];
    for v in [Row, Workgroup] {
        let mut shapes = shapes.to_vec();
        if v == Workgroup {
            // Over 65535 rows: the grid goes 2-D (q/k norm rows are tokens·heads).
            shapes.push((70_001, 2));
        }
        for (n, c) in shapes {
            for accumulate in [false, true] {
                let x: Vec<f32> = random(n * c, 3).iter().map(|v| v * 3.0 + 0.5).collect();
                let (w, dout) = (random(c, 4), random(n * c, 6));
                let dinp0 = random(n * c, 7);
                let (tx, tw, tdout, tdinp) = (
                    up(g, "x", &x),
                    up(g, "w", &w),
                    up(g, "dout", &dout),
                    up(g, "dinp", &dinp0),
                );
                let out = g.zeros("out", &[n, c]).unwrap();
                let rstd = g.zeros("rstd", &[n]).unwrap();
                let gv = g.with_variants(Variants {
                    layernorm: v,
                    ..g.variants()
                });
                let f = rmsnorm::forward(&gv, &out, &rstd, &tx, &tw, c, 1e-6).unwrap();
                let bk =
                    rmsnorm::backward(&gv, &tdinp, &tdout, &tx, &tw, &rstd, c, accumulate).unwrap();
                g.run(&[&f, &bk]).unwrap();
                let (mut wo, mut wr) = (vec![0.0; n * c], vec![0.0; n]);
                cpu::rmsnorm::forward(&mut wo, &mut wr, &x, &w, c, 1e-6);
                let mut wd = dinp0.clone();
                cpu::rmsnorm::backward(&mut wd, &dout, &x, &w, &wr, c, accumulate);
                let what = format!("rmsnorm {v:?} {n}x{c} accumulate={accumulate}");
                assert_close(
                    &g.download(&out).unwrap(),
                    &wo,
                    ATOL,
                    RTOL,
                    &format!("{what}: out"),
                );
                assert_close(
                    &g.download(&rstd).unwrap(),
                    &wr,
                    ATOL,
                    RTOL,
                    &format!("{what}: rstd"),
                );
                assert_close(
                    &g.download(&tdinp).unwrap(),
                    &wd,
                    ATOL,
                    RTOL,
                    &format!("{what}: dinp"),
                );
            }
        }
    }
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let g = gpu();
    for (n, c) in [(1, 1), (2, 5), (3, 7)] {
        let x: Vec<f32> = random(n * c, 11).iter().map(|v| v * 2.0 + 0.3).collect();
        let (w, dout) = (random(c, 12), random(n * c, 13));
        let eps = 1e-5;
        let loss = |x: &[f32]| {
            let (mut o, mut r) = (vec![0.0; n * c], vec![0.0; n]);
            cpu::rmsnorm::forward(&mut o, &mut r, x, &w, c, eps);
            dot(&o, &dout)
        };
        let fd = finite_diff(loss, &x, 1e-3);
        let (mut o, mut r) = (vec![0.0; n * c], vec![0.0; n]);
        cpu::rmsnorm::forward(&mut o, &mut r, &x, &w, c, eps);
        let mut want = vec![f32::NAN; n * c];
        cpu::rmsnorm::backward(&mut want, &dout, &x, &w, &r, c, false);
        let what = format!("rmsnorm reference backward {n}x{c} vs finite differences");
        assert_close(&want, &fd, 2e-3, 2e-3, &what);

        let (tx, tw, tdout) = (up(g, "x", &x), up(g, "w", &w), up(g, "dout", &dout));
        let out = g.zeros("out", &[n, c]).unwrap();
        let rstd = g.zeros("rstd", &[n]).unwrap();
        let dinp = up(g, "dinp", &vec![f32::NAN; n * c]);
        let f = rmsnorm::forward(g, &out, &rstd, &tx, &tw, c, eps).unwrap();
        let bk = rmsnorm::backward(g, &dinp, &tdout, &tx, &tw, &rstd, c, false).unwrap();
        g.run(&[&f, &bk]).unwrap();
        let what = format!("rmsnorm gpu backward {n}x{c} vs finite differences");
        assert_close(&g.download(&dinp).unwrap(), &fd, 2e-3, 2e-3, &what);
    }
}

#[test]
fn rmsnorm_rejects_mismatched_shapes() {
    let g = gpu();
    let (x, w) = (up(g, "x", &[1.0; 12]), up(g, "w", &[1.0; 4]));
    let out = g.zeros("out", &[12]).unwrap();
    let rstd = g.zeros("rstd", &[2]).unwrap();
    let e = rmsnorm::forward(g, &out, &rstd, &x, &w, 4, 1e-6).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = rmsnorm::backward(g, &out, &out, &x, &w, &rstd, 6, true).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

/// Gates over a wide range plus the extremes where a naive silu overflows.
fn gates(n: usize, seed: u64) -> Vec<f32> {
    let mut x: Vec<f32> = random(n, seed).iter().map(|v| v * 12.0).collect();
    let extremes = [100.0, -100.0, 0.0, 88.8, -88.8, 1e4, -1e4, 1e-30, -1e-30];
    x[..extremes.len()].copy_from_slice(&extremes);
    x
}

#[test]
fn swiglu_forward_and_backward() {
    let g = gpu();
    for n in [1, 9, 70_001] {
        let gate = gates(n.max(9), 21)[..n].to_vec();
        let (upv, dout) = (random(n, 22), random(n, 23));
        let (tg, tu, tdout) = (
            up(g, "gate", &gate),
            up(g, "up", &upv),
            up(g, "dout", &dout),
        );
        let out = g.zeros("out", &[n]).unwrap();
        // Filled with NaN: the backward must write, not add.
        let dgate = up(g, "dgate", &vec![f32::NAN; n]);
        let dup = up(g, "dup", &vec![f32::NAN; n]);
        let f = swiglu::forward(g, &out, &tg, &tu).unwrap();
        let bk = swiglu::backward(g, &dgate, &dup, &tdout, &tg, &tu).unwrap();
        g.run(&[&f, &bk]).unwrap();
        let (mut wo, mut wg, mut wu) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        cpu::swiglu::forward(&mut wo, &gate, &upv);
        cpu::swiglu::backward(&mut wg, &mut wu, &dout, &gate, &upv);
        let (go, gg, gu) = (
            g.download(&out).unwrap(),
            g.download(&dgate).unwrap(),
            g.download(&dup).unwrap(),
        );
        for (what, v) in [("out", &go), ("dgate", &gg), ("dup", &gu)] {
            assert!(v.iter().all(|x| x.is_finite()), "swiglu {what}: not finite");
        }
        assert_close(&go, &wo, ATOL, RTOL, &format!("swiglu {n}: out"));
        assert_close(&gg, &wg, ATOL, RTOL, &format!("swiglu {n}: dgate"));
        assert_close(&gu, &wu, ATOL, RTOL, &format!("swiglu {n}: dup"));
    }
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let n = 40;
    let gate: Vec<f32> = random(n, 31).iter().map(|v| v * 6.0).collect();
    let (upv, dout) = (random(n, 32), random(n, 33));
    let (mut dgate, mut dup) = (vec![0.0; n], vec![0.0; n]);
    cpu::swiglu::backward(&mut dgate, &mut dup, &dout, &gate, &upv);
    let loss_gate = |x: &[f32]| {
        let mut o = vec![0.0; n];
        cpu::swiglu::forward(&mut o, x, &upv);
        dot(&o, &dout)
    };
    let loss_up = |x: &[f32]| {
        let mut o = vec![0.0; n];
        cpu::swiglu::forward(&mut o, &gate, x);
        dot(&o, &dout)
    };
    let fd_gate = finite_diff(loss_gate, &gate, 1e-3);
    let fd_up = finite_diff(loss_up, &upv, 1e-3);
    assert_close(&dgate, &fd_gate, 2e-3, 2e-3, "swiglu reference dgate vs fd");
    assert_close(&dup, &fd_up, 2e-3, 2e-3, "swiglu reference dup vs fd");
}

/// Llama's inverse frequencies for head size `hs`: theta^(-2i/hs).
fn inv_freq(hs: usize, theta: f64) -> Vec<f32> {
    (0..hs / 2)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / hs as f64)) as f32)
        .collect()
}

/// Random operands of one rope call, and tables for positions 0 .. pos + t.
struct RopeCase {
    s: RopeShape,
    pos: u32,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dqkv: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeCase {
    fn new(s: RopeShape, pos: u32, seed: u64) -> Self {
        // theta = 100 makes the angles of the last pairs large enough to matter at small p.
        let (cos, sin) = rope::tables(&inv_freq(s.hs, 100.0), pos as usize + s.t);
        RopeCase {
            s,
            pos,
            q: random(s.rows * s.nh * s.hs, seed),
            k: random(s.rows * s.nkv * s.hs, seed + 1),
            v: random(s.rows * s.nkv * s.hs, seed + 2),
            dqkv: random(s.rows * s.qkv_width(), seed + 3),
            cos,
            sin,
        }
    }
}

const ROPE_SHAPES: [(RopeShape, u32); 6] = [
    (
        RopeShape {
            rows: 15,
            t: 5,
            nh: 4,
            nkv: 2,
            hs: 6,
        },
        3,
    ),
    (
        RopeShape {
            rows: 15,
            t: 5,
            nh: 4,
            nkv: 2,
            hs: 10,
        },
        3,
    ),
    (
        RopeShape {
            rows: 14,
            t: 7,
            nh: 3,
            nkv: 3,
            hs: 8,
        },
        0,
    ),
    (
        RopeShape {
            rows: 9,
            t: 9,
            nh: 4,
            nkv: 1,
            hs: 128,
        },
        2,
    ),
    // One decoded row deep into the cache.
    (
        RopeShape {
            rows: 1,
            t: 1,
            nh: 2,
            nkv: 1,
            hs: 64,
        },
        1000,
    ),
    // Many workgroups: 300 rows of B = 3 sequences.
    (
        RopeShape {
            rows: 300,
            t: 100,
            nh: 8,
            nkv: 2,
            hs: 64,
        },
        0,
    ),
];

/// Run rope forward and backward on the GPU: (qkv, dq, dk, dv).
fn rope_gpu(g: &Gpu, r: &RopeCase) -> [Vec<f32>; 4] {
    let s = &r.s;
    let (tq, tk, tv, tdqkv) = (
        up(g, "q", &r.q),
        up(g, "k", &r.k),
        up(g, "v", &r.v),
        up(g, "dqkv", &r.dqkv),
    );
    let (tcos, tsin) = (
        g.upload("cos", &r.cos, &[r.cos.len() / (s.hs / 2), s.hs / 2])
            .unwrap(),
        g.upload("sin", &r.sin, &[r.sin.len() / (s.hs / 2), s.hs / 2])
            .unwrap(),
    );
    let pos = g.upload_u32("pos", &[r.pos], &[1]).unwrap();
    // Filled with NaN: both directions must write every element, not add.
    let nan = |name, len| up(g, name, &vec![f32::NAN; len]);
    let qkv = nan("qkv", s.rows * s.qkv_width());
    let dq = nan("dq", r.q.len());
    let dk = nan("dk", r.k.len());
    let dv = nan("dv", r.v.len());
    let f = rope::forward(g, &qkv, &tq, &tk, &tv, &tcos, &tsin, &pos, s).unwrap();
    let bk = rope::backward(g, &dq, &dk, &dv, &tdqkv, &tcos, &tsin, &pos, s).unwrap();
    g.run(&[&f, &bk]).unwrap();
    [&qkv, &dq, &dk, &dv].map(|t| g.download(t).unwrap())
}

/// Rope forward and backward with the CPU reference: (qkv, dq, dk, dv).
fn rope_cpu(r: &RopeCase) -> [Vec<f32>; 4] {
    let s = &r.s;
    let mut qkv = vec![0.0; s.rows * s.qkv_width()];
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; r.q.len()],
        vec![0.0; r.k.len()],
        vec![0.0; r.v.len()],
    );
    cpu::rope::forward(&mut qkv, &r.q, &r.k, &r.v, &r.cos, &r.sin, r.pos, s);
    cpu::rope::backward(&mut dq, &mut dk, &mut dv, &r.dqkv, &r.cos, &r.sin, r.pos, s);
    [qkv, dq, dk, dv]
}

#[test]
fn rope_forward_and_backward() {
    let g = gpu();
    for (i, (s, pos)) in ROPE_SHAPES.into_iter().enumerate() {
        let r = RopeCase::new(s, pos, 40 + 4 * i as u64);
        let got = rope_gpu(g, &r);
        let want = rope_cpu(&r);
        for (j, what) in ["qkv", "dq", "dk", "dv"].iter().enumerate() {
            assert_close(
                &got[j],
                &want[j],
                1e-5,
                1e-5,
                &format!("rope {s:?} pos {pos}: {what}"),
            );
        }
    }
}

#[test]
fn rope_forward_rotates_by_hand() {
    // One head of size 4 at position 2: pairs (0, 2) and (1, 3) rotate by 2·f0 and 2·f1.
    let g = gpu();
    let s = RopeShape {
        rows: 1,
        t: 1,
        nh: 1,
        nkv: 1,
        hs: 4,
    };
    let (f0, f1) = (0.5f32, 0.25f32);
    let (cos, sin) = rope::tables(&[f0, f1], 3);
    let (q, k, v) = (
        [1.0, 2.0, 3.0, 4.0],
        [0.5, -1.0, 2.0, 0.0],
        [7.0, 8.0, 9.0, 10.0],
    );
    let rot = |x: [f32; 4]| {
        let (a0, a1) = ((2.0 * f0) as f64, (2.0 * f1) as f64);
        let (x0, x1, x2, x3) = (x[0] as f64, x[1] as f64, x[2] as f64, x[3] as f64);
        [
            x0 * a0.cos() - x2 * a0.sin(),
            x1 * a1.cos() - x3 * a1.sin(),
            x2 * a0.cos() + x0 * a0.sin(),
            x3 * a1.cos() + x1 * a1.sin(),
        ]
        .map(|y| y as f32)
    };
    let mut want = rot(q).to_vec();
    want.extend(rot(k));
    want.extend(v);
    let qkv = g.zeros("qkv", &[12]).unwrap();
    let pos = g.upload_u32("pos", &[2], &[1]).unwrap();
    let f = rope::forward(
        g,
        &qkv,
        &up(g, "q", &q),
        &up(g, "k", &k),
        &up(g, "v", &v),
        &up(g, "cos", &cos),
        &up(g, "sin", &sin),
        &pos,
        &s,
    )
    .unwrap();
    g.run(&[&f]).unwrap();
    assert_close(
        &g.download(&qkv).unwrap(),
        &want,
        1e-6,
        1e-6,
        "rope by hand",
    );
    let mut cpu_qkv = vec![0.0; 12];
    cpu::rope::forward(&mut cpu_qkv, &q, &k, &v, &cos, &sin, 2, &s);
    assert_close(&cpu_qkv, &want, 1e-6, 1e-6, "rope reference by hand");
}

#[test]
fn rope_backward_is_the_adjoint() {
    // ⟨qkv(x), y⟩ = ⟨x, backward(y)⟩ for x = (q, k, v), y = dqkv: on the GPU and the reference.
    let g = gpu();
    for (i, (s, pos)) in ROPE_SHAPES.into_iter().take(5).enumerate() {
        let r = RopeCase::new(s, pos, 80 + 4 * i as u64);
        for (who, [qkv, dq, dk, dv]) in [("gpu", rope_gpu(g, &r)), ("cpu", rope_cpu(&r))] {
            let lhs = dot(&qkv, &r.dqkv);
            let rhs = dot(&r.q, &dq) + dot(&r.k, &dk) + dot(&r.v, &dv);
            assert!(
                (lhs - rhs).abs() <= 1e-5 * (1.0 + lhs.abs()),
                "rope {who} {s:?}: <Rx, y> = {lhs} but <x, R^T y> = {rhs}"
            );
        }
    }
}

#[test]
fn rope_backward_matches_finite_differences() {
    // The loss ⟨dqkv, forward(q, k, v)⟩ is linear, so its differences are exact up to rounding.
    let s = RopeShape {
        rows: 6,
        t: 3,
        nh: 2,
        nkv: 1,
        hs: 6,
    };
    let r = RopeCase::new(s, 2, 120);
    let [_, dq, dk, dv] = rope_cpu(&r);
    let loss = |q: &[f32], k: &[f32], v: &[f32]| {
        let mut qkv = vec![0.0; s.rows * s.qkv_width()];
        cpu::rope::forward(&mut qkv, q, k, v, &r.cos, &r.sin, r.pos, &s);
        dot(&qkv, &r.dqkv)
    };
    let fq = finite_diff(|q| loss(q, &r.k, &r.v), &r.q, 1e-2);
    let fk = finite_diff(|k| loss(&r.q, k, &r.v), &r.k, 1e-2);
    let fv = finite_diff(|v| loss(&r.q, &r.k, v), &r.v, 1e-2);
    assert_close(&dq, &fq, 1e-4, 1e-4, "rope reference dq vs fd");
    assert_close(&dk, &fk, 1e-4, 1e-4, "rope reference dk vs fd");
    assert_close(&dv, &fv, 1e-4, 1e-4, "rope reference dv vs fd");
}

#[test]
fn rope_tables_match_f64_formula() {
    let hs = 128;
    let freqs = inv_freq(hs, 500_000.0);
    let positions = 4100;
    let (cos, sin) = rope::tables(&freqs, positions);
    assert_eq!(cos.len(), positions * hs / 2);
    assert_eq!(sin.len(), positions * hs / 2);
    for p in 0..positions {
        for (i, &f) in freqs.iter().enumerate() {
            let angle = p as f64 * f as f64;
            // The f32 angle is off by up to half an ulp of the angle.
            let tol = 1e-7 + angle * f32::EPSILON as f64;
            let (c, s) = (cos[p * hs / 2 + i] as f64, sin[p * hs / 2 + i] as f64);
            assert!(
                (c - angle.cos()).abs() <= tol && (s - angle.sin()).abs() <= tol,
                "p {p} i {i}: ({c}, {s}) vs ({}, {})",
                angle.cos(),
                angle.sin()
            );
        }
    }
    // Position 0 is the identity; the angle is rounded to f32 first, as transformers does.
    assert!(cos[..hs / 2].iter().all(|&c| c == 1.0));
    assert!(sin[..hs / 2].iter().all(|&s| s == 0.0));
    let a = 4099.0f32 * freqs[1];
    assert_eq!(cos[4099 * hs / 2 + 1], (a as f64).cos() as f32);
    assert_eq!(sin[4099 * hs / 2 + 1], (a as f64).sin() as f32);
}

#[test]
fn rope_rejects_bad_shapes() {
    let g = gpu();
    let s = RopeShape {
        rows: 2,
        t: 2,
        nh: 1,
        nkv: 1,
        hs: 5,
    };
    let t = |n| g.zeros("t", &[n]).unwrap();
    let pos = g.upload_u32("pos", &[0], &[1]).unwrap();
    let (q, k, v, qkv) = (t(10), t(10), t(10), t(30));
    // Odd head size.
    let e = rope::forward(g, &qkv, &q, &k, &v, &t(4), &t(4), &pos, &s).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = rope::backward(g, &q, &k, &v, &qkv, &t(4), &t(4), &pos, &s).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // Tables not a multiple of hs/2, or of different lengths.
    let s = RopeShape { hs: 6, ..s };
    let (q, k, v, qkv) = (t(12), t(12), t(12), t(36));
    let e = rope::forward(g, &qkv, &q, &k, &v, &t(7), &t(7), &pos, &s).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = rope::forward(g, &qkv, &q, &k, &v, &t(6), &t(9), &pos, &s).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // Wrong qkv width.
    let e = rope::forward(g, &t(30), &q, &k, &v, &t(6), &t(6), &pos, &s).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert!(rope::forward(g, &qkv, &q, &k, &v, &t(6), &t(6), &pos, &s).is_ok());
}
