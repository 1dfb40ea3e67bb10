//! The library's own matmul kernels at the same shapes and data, for comparison.

use std::time::Instant;

use crate::Ops;

/// The library's kernels on their own device, same shapes and data, for reference: the
/// register kernel (the CPU-adapter choice before this probe) and the image kernel that came
/// out of it (B frozen, as in training: packed once).
pub fn lib_register(shapes: &[(u32, u32, u32)], opss: &[Ops], runs: usize) {
    use lora_wgpu::gpu::{Gpu, GpuOptions};
    use lora_wgpu::kernels::matmul::{matmul, MatmulOp, MatmulVariant};
    use lora_wgpu::kernels::Variants;
    let g = Gpu::new(&GpuOptions::from_env()).unwrap();
    for (name, variant) in [
        ("lib_register", MatmulVariant::Register),
        ("lib_image", MatmulVariant::Image),
    ] {
        let mut cols = Vec::new();
        let mut err = 0f32;
        for (&(m, k, n), ops) in shapes.iter().zip(opss) {
            let (m, k, n) = (m as usize, k as usize, n as usize);
            let a = g.upload("a", &ops.a, &[m, k]).unwrap();
            let b = g.upload("b", &ops.b, &[k, n]).unwrap();
            let c = g.zeros("c", &[m, n]).unwrap();
            let op = MatmulOp::new(m, n, k).frozen_b();
            let gv = g.with_variants(Variants {
                matmul: variant,
                ..g.variants()
            });
            let d = matmul(&gv, &c, &a, &b, None, &op).unwrap();
            g.run(&[&d]).unwrap();
            g.sync().unwrap();
            let got = g.download(&c).unwrap();
            for (x, y) in got.iter().zip(&ops.want) {
                err = err.max((x - y).abs());
            }
            let mut ts = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                g.run(&[&d]).unwrap();
                g.sync().unwrap();
                ts.push(t.elapsed().as_secs_f64());
            }
            ts.sort_by(f64::total_cmp);
            let med = ts[ts.len() / 2];
            let flop = 2.0 * (m * n * k) as f64;
            cols.push(format!(
                "{:6.2} / {:6.2}",
                flop / med / 1e9,
                flop / ts[0] / 1e9
            ));
        }
        println!("{name:<30} {:>16} {:>16} {err:>9.2e}", cols[0], cols[1]);
    }
}
