//! `kernels::rmsnorm`'s reference: RMSNorm forward and its input gradient.

/// RMSNorm forward: out = (inp · rstd) · weight, rstd = 1 / sqrt(mean(inp²) + eps), row by row.
///   out, inp: (N, C)   rstd: (N,)   weight: (C,)
pub fn forward(out: &mut [f32], rstd: &mut [f32], inp: &[f32], weight: &[f32], c: usize, eps: f32) {
    for (row, x) in inp.chunks(c).enumerate() {
        let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
        let r = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..c {
            out[row * c + i] = (x[i] as f64 * r) as f32 * weight[i];
        }
        rstd[row] = r as f32;
    }
}

/// RMSNorm input gradient: rstd · (dnorm - norm · mean(dnorm · norm)), dnorm = dout · weight,
/// norm = inp · rstd; written to `dinp`, or added to it when `accumulate`.
///   dinp, dout, inp: (N, C)   rstd: (N,)   weight: (C,)
pub fn backward(
    dinp: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    c: usize,
    accumulate: bool,
) {
    for (row, &r) in rstd[..inp.len() / c].iter().enumerate() {
        let r = r as f64;
        let base = row * c;
        let norm = |i: usize| inp[base + i] as f64 * r;
        let dnorm = |i: usize| dout[base + i] as f64 * weight[i] as f64;
        let m = (0..c).map(|i| dnorm(i) * norm(i)).sum::<f64>() / c as f64;
        for i in 0..c {
            let g = (r * (dnorm(i) - norm(i) * m)) as f32;
            if accumulate {
                dinp[base + i] += g;
            } else {
                dinp[base + i] = g;
            }
        }
    }
}
