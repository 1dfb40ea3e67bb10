//! `kernels::reduce`'s reference: the sum of squares.

/// Σ x², accumulated in f64.
pub fn sumsq(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}
