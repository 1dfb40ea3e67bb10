//! Shared test helpers: one GPU for the whole test binary, seeded random data, tolerances.
#![allow(dead_code)]

use std::sync::OnceLock;

use lora_wgpu::{Gpu, GpuOptions};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The adapter the library would choose. Without one the test fails (never skips) with the
/// library's message, which says how to install a driver.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(&GpuOptions::from_env()) {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    })
}

/// `n` values uniform in [-1, 1), reproducible from `seed`.
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Assert |got - want| <= atol + rtol * |want| element-wise, naming the worst element.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        let excess = if excess.is_nan() {
            f32::INFINITY
        } else {
            excess
        };
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let (i, excess) = worst;
    assert!(
        excess <= 0.0,
        "{what}: element {i}: gpu {} vs cpu {} (|diff| = {}, allowed {})",
        got[i],
        want[i],
        (got[i] - want[i]).abs(),
        atol + rtol * want[i].abs()
    );
}

/// The kernels' tolerance from the issue: 1e-4 absolute + 1e-4 relative.
pub const ATOL: f32 = 1e-4;
/// See [`ATOL`].
pub const RTOL: f32 = 1e-4;
