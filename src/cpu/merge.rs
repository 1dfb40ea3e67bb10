//! `kernels::merge`'s reference: fold a LoRA update into a weight.

/// w += scale · (b · a)ᵀ when `fan_in_fan_out` (w: (K, N)), else w += scale · b · a (w: (N, K)).
///   a: (R, K)   b: (N, R)
pub fn merge(
    w: &mut [f32],
    a: &[f32],
    b: &[f32],
    k: usize,
    n: usize,
    r: usize,
    fan_in_fan_out: bool,
    scale: f32,
) {
    for row in 0..n {
        for col in 0..k {
            let s: f64 = (0..r)
                .map(|j| b[row * r + j] as f64 * a[j * k + col] as f64)
                .sum();
            let e = if fan_in_fan_out {
                col * n + row
            } else {
                row * k + col
            };
            w[e] += (scale as f64 * s) as f32;
        }
    }
}
