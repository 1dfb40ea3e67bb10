//! Research harness: candidate matmul kernels for llvmpipe/lavapipe (Mesa 22.3), side by side.
//!
//! `cargo bench --bench lavapipe_matmul [-- FILTER...]` times candidate C = A·B kernels at
//! 512x768x3072 and 512x768x768 (M x K x N), checks each against a CPU matmul (max abs error)
//! and prints the median and best GFLOP/s of `RUNS` (default 5) runs; `DUMP_WGSL=1` prints the
//! generated shaders of the register-blocked kernels. Not library code: the library keeps only
//! the winners (`matmul_image`, `matmul_image_sg`).
//!
//! Variant names: `{sto,tex,img}_r{R}c{C}_wg{X}x{Y}[_u]`: operands from storage buffers,
//! sampled textures or storage textures (image loads); R rows x C vec4 column groups per
//! invocation; `_u` = no naga runtime checks. `sgb` / `sgs` / `sg_a` share operands through
//! subgroups, `accmajor` / `colmajor` / `halves` are FMA orders, `diag_*` are cost probes with
//! wrong results on purpose. What each means, what was measured and why the library adopted what
//! it did: docs/lavapipe-research.md.
//!
//! Modules: `wgpu_ctx` (device, resources, running a candidate), `gather` (register-blocked and
//! subgroup kernels), `bcast` (uniform-buffer broadcast kernels), `library` (the library's
//! kernels for comparison).

mod bcast;
mod gather;
mod library;
mod wgpu_ctx;

use std::time::Instant;

use bcast::{prep_bcast, prep_bcast_b};
use gather::{prep_gather, prep_sgb, SgbBody};
use library::lib_register;
use wgpu_ctx::{buf, read, run_once, tex, Ctx, Prepared, Src};

struct Ops {
    m: u32,
    k: u32,
    n: u32,
    a: Vec<f32>,
    b: Vec<f32>,
    want: Vec<f32>,
    params: wgpu::Buffer,
    ab: wgpu::Buffer,
    bb: wgpu::Buffer,
    at: wgpu::TextureView,
    bt: wgpu::TextureView,
}

fn cpu_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        for kk in 0..k {
            let av = a[i * k + kk];
            let br = &b[kk * n..(kk + 1) * n];
            for (x, y) in row.iter_mut().zip(br) {
                *x += av * y;
            }
        }
    }
    c
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let inst = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(inst.request_adapter(&Default::default())).unwrap();
    println!("adapter: {:?}", adapter.get_info().name);
    let info = adapter.get_info();
    let sg = adapter.features().contains(wgpu::Features::SUBGROUP);
    println!(
        "subgroups: {sg}, sizes {}..{}",
        info.subgroup_min_size, info.subgroup_max_size
    );
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: if sg {
            wgpu::Features::SUBGROUP
        } else {
            wgpu::Features::empty()
        },
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let ctx = Ctx { device, queue };

    // (name, builder)
    type Build = Box<dyn Fn(&Ctx, &Ops) -> Prepared>;
    let mut variants: Vec<(String, Build)> = Vec::new();
    // the texture_probe kernel shape (8x8 per thread, loops) is the baseline for "loops"
    for &(src, tag) in &[
        (Src::Storage, "sto"),
        (Src::Tex, "tex"),
        (Src::Image, "img"),
    ] {
        for &(r, c, wx, wy) in &[
            (4u32, 1u32, 8u32, 1u32),
            (2, 2, 8, 1),
            (4, 2, 8, 1),
            (8, 1, 8, 1),
            (4, 2, 8, 8),
            (4, 2, 32, 1),
            (8, 2, 8, 8),
            (4, 4, 8, 8),
            (8, 4, 8, 4),
            (8, 3, 8, 8),
            (16, 4, 8, 2),
            (8, 8, 8, 4),
            (16, 8, 8, 1),
            (16, 2, 8, 4),
            (8, 2, 8, 4),
            (8, 2, 16, 4),
        ] {
            for trusted in [false, true] {
                if (src == Src::Storage && wx != 8) || (src == Src::Image && r * c < 8) {
                    continue;
                }
                let name = format!(
                    "{tag}_r{r}c{c}_wg{wx}x{wy}{}",
                    if trusted { "_u" } else { "" }
                );
                variants.push((
                    name,
                    Box::new(move |ctx, ops| {
                        prep_gather(ctx, ops, src, (r, c, wx, wy), trusted, 0)
                    }),
                ));
                if src == Src::Image {
                    let name = format!(
                        "{tag}_rf_r{r}c{c}_wg{wx}x{wy}{}",
                        if trusted { "_u" } else { "" }
                    );
                    variants.push((
                        name,
                        Box::new(move |ctx, ops| {
                            prep_gather(ctx, ops, src, (r, c, wx, wy), trusted, 16)
                        }),
                    ));
                }
            }
        }
    }
    for &(r, c, wx, wy) in &[(4u32, 2u32, 8u32, 8u32), (8, 2, 8, 4), (4, 4, 8, 4)] {
        variants.push((
            format!("accmajor_img_r{r}c{c}_wg{wx}x{wy}_u"),
            Box::new(move |ctx, ops| prep_gather(ctx, ops, Src::Image, (r, c, wx, wy), true, 32)),
        ));
    }
    for (mode, tag) in [(1u32, "diag_noload"), (2, "diag_bonly"), (3, "diag_aonly")] {
        for src in [Src::Tex, Src::Storage, Src::Image] {
            let name = format!(
                "{tag}_{}_r4c2_wg8x8",
                match src {
                    Src::Tex => "tex",
                    Src::Storage => "sto",
                    Src::Image => "img",
                }
            );
            variants.push((
                name,
                Box::new(move |ctx, ops| prep_gather(ctx, ops, src, (4, 2, 8, 8), false, mode)),
            ));
        }
    }
    if sg {
        for src in [Src::Image, Src::Tex] {
            for &(c, wx, wy) in &[
                (2u32, 8u32, 1u32),
                (2, 16, 1),
                (2, 32, 1),
                (3, 8, 1),
                (4, 8, 1),
                (1, 8, 1),
            ] {
                for trusted in [false, true] {
                    let tag = match src {
                        Src::Tex => "tex",
                        Src::Storage => "sto",
                        Src::Image => "img",
                    };
                    for rf in [0u32, 16] {
                        let name = format!(
                            "sg_a{}_{tag}_r8c{c}_wg{wx}x{wy}{}",
                            if rf != 0 { "_rf" } else { "" },
                            if trusted { "_u" } else { "" }
                        );
                        variants.push((
                            name,
                            Box::new(move |ctx, ops| {
                                prep_gather(ctx, ops, src, (8, c, wx, wy), trusted, 8 | rf)
                            }),
                        ));
                    }
                }
            }
        }
    }
    if sg {
        for &(r, c, wy) in &[
            (4u32, 2u32, 8u32),
            (2, 4, 8),
            (4, 4, 4),
            (4, 2, 4),
            (2, 4, 4),
            (8, 2, 8),
            (1, 8, 8),
            (1, 8, 4),
            (1, 4, 8),
            (2, 2, 8),
            (1, 16, 4),
            (2, 8, 4),
        ] {
            for trusted in [false, true] {
                for (tag, op) in [("sgb", "subgroupBroadcast"), ("sgs", "subgroupShuffle")] {
                    let name = format!(
                        "{tag}_img_r{r}c{c}_wg8x{wy}{}",
                        if trusted { "_u" } else { "" }
                    );
                    variants.push((
                        name,
                        Box::new(move |ctx, ops| {
                            prep_sgb(ctx, ops, (r, c, wy, 1, SgbBody::KMajor), trusted, op)
                        }),
                    ));
                }
            }
        }
    }
    if sg {
        // (rows, column groups, subgroups per workgroup, k texels per loop iteration, body)
        use SgbBody::{AccMajor, ColMajor, Halves, KMajor, NoBroadcast};
        for &(r, c, wy, u, body) in &[
            (2u32, 4u32, 4u32, 2u32, KMajor),
            (2, 4, 4, 4, KMajor),
            (2, 4, 4, 1, AccMajor),
            (2, 4, 4, 1, ColMajor),
            (2, 4, 4, 1, Halves),
            (4, 2, 4, 1, Halves),
            (4, 2, 4, 1, ColMajor),
            (4, 4, 4, 1, ColMajor),
            (4, 2, 4, 1, AccMajor),
            (4, 4, 4, 1, AccMajor),
            (8, 2, 8, 1, AccMajor),
            (2, 8, 4, 1, AccMajor),
            (2, 4, 4, 1, NoBroadcast),
        ] {
            let name = format!("sgbk_img_r{r}c{c}_wg8x{wy}_k{u}{}_u", body.tag());
            variants.push((
                name,
                Box::new(move |ctx, ops| {
                    prep_sgb(ctx, ops, (r, c, wy, u, body), true, "subgroupBroadcast")
                }),
            ));
        }
    }
    for &(r, c, kc, wx) in &[
        (2u32, 2u32, 64u32, 8u32),
        (4, 1, 64, 8),
        (4, 2, 64, 8),
        (4, 2, 128, 8),
        (4, 2, 256, 8),
        (8, 1, 128, 8),
        (4, 1, 256, 8),
        (2, 2, 256, 8),
    ] {
        for trusted in [false, true] {
            let name = format!(
                "bcast_r{r}c{c}k{kc}_wg{wx}{}",
                if trusted { "_u" } else { "" }
            );
            variants.push((
                name,
                Box::new(move |ctx, ops| prep_bcast(ctx, ops, (r, c, kc, wx), trusted)),
            ));
        }
    }
    for &(nb, wx, sv, kc) in &[
        (12u32, 8u32, false, 768u32),
        (12, 8, true, 768),
        (12, 8, true, 64),
        (12, 8, true, 128),
        (16, 8, true, 128),
        (8, 8, true, 128),
        (12, 32, true, 128),
    ] {
        for trusted in [false, true] {
            let name = format!(
                "bcastB_nb{nb}k{kc}_wg{wx}{}{}",
                if sv { "_v4" } else { "" },
                if trusted { "_u" } else { "" }
            );
            variants.push((
                name,
                Box::new(move |ctx, ops| prep_bcast_b(ctx, ops, (nb, wx, sv, kc), trusted, 0)),
            ));
        }
    }
    for (mode, tag) in [
        (1u32, "diag_bcastB_onefetch"),
        (2, "diag_bcastB_constB"),
        (3, "diag_bcastB_nonunifB"),
        (4, "bcastB_static"),
        (5, "diag_bcastB_noRMW"),
    ] {
        variants.push((
            format!("{tag}_nb12k128"),
            Box::new(move |ctx, ops| prep_bcast_b(ctx, ops, (12, 8, true, 128), true, mode)),
        ));
    }
    let variants: Vec<_> = variants
        .into_iter()
        // bcastB (K fully unrolled) takes minutes of LLVM compile per shape: only on request
        .filter(|(n, _)| {
            if filters.is_empty() {
                !n.starts_with("bcastB")
            } else {
                filters.iter().any(|f| n.contains(f.as_str()))
            }
        })
        .collect();

    let shapes = [(512u32, 768u32, 3072u32), (512, 768, 768)];
    let mut opss = Vec::new();
    for &(m, k, n) in &shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.05)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.05)
            .collect();
        let t = Instant::now();
        let want = cpu_matmul(&a, &b, m as usize, k as usize, n as usize);
        eprintln!(
            "cpu reference {m}x{k}x{n}: {:.2} s",
            t.elapsed().as_secs_f64()
        );
        let ab = buf(&ctx, bytemuck::cast_slice(&a), wgpu::BufferUsages::STORAGE);
        let bb = buf(&ctx, bytemuck::cast_slice(&b), wgpu::BufferUsages::STORAGE);
        let params = buf(
            &ctx,
            bytemuck::cast_slice(&[m, n, k, 0]),
            wgpu::BufferUsages::UNIFORM,
        );
        let at = tex(&ctx, &a, k / 4, m);
        let bt = tex(&ctx, &b, n / 4, k);
        opss.push(Ops {
            m,
            k,
            n,
            a,
            b,
            want,
            params,
            ab,
            bb,
            at,
            bt,
        });
    }

    println!("GFLOP/s as median / best of {runs} runs");
    println!(
        "{:<28} {:>16} {:>16} {:>9}",
        "variant", "512x768x3072", "512x768x768", "max err"
    );
    if filters.is_empty() || filters.iter().any(|f| "lib_register".contains(f.as_str())) {
        lib_register(&shapes, &opss, runs);
    }
    for (name, build) in &variants {
        let mut cols = Vec::new();
        let mut err = 0f32;
        for ops in &opss {
            let t = Instant::now();
            let p = build(&ctx, ops);
            run_once(&ctx, &p); // compiles the pipeline (lavapipe compiles lazily) and warms up
            let compile = t.elapsed().as_secs_f64();
            let got = read(&ctx, &p.c);
            for (g, w) in got.iter().zip(&ops.want) {
                err = err.max((g - w).abs());
            }
            let mut ts = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                run_once(&ctx, &p);
                ts.push(t.elapsed().as_secs_f64());
            }
            ts.sort_by(f64::total_cmp);
            let med = ts[ts.len() / 2];
            let flop = 2.0 * (ops.m as f64) * (ops.n as f64) * (ops.k as f64);
            // median, and best of the runs (another process on one of the 2 cores halves a run)
            cols.push(format!(
                "{:6.2} / {:6.2}",
                flop / med / 1e9,
                flop / ts[0] / 1e9
            ));
            eprintln!(
                "  {name} {}x{}x{}: first run {:.2}s, {} dispatches",
                ops.m,
                ops.k,
                ops.n,
                compile,
                p.dispatches.len()
            );
        }
        println!("{:<30} {:>16} {:>16} {:>9.2e}", name, cols[0], cols[1], err);
    }
}
