//! `kernels::layernorm`'s reference: LayerNorm forward and its input gradient.

/// LayerNorm forward.   out, inp: (N, C)   mean, rstd: (N,)
pub fn forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    c: usize,
    eps: f32,
) {
    for (row, x) in inp.chunks(c).enumerate() {
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c as f64;
        let r = 1.0 / (var + eps as f64).sqrt();
        for i in 0..c {
            out[row * c + i] = ((x[i] as f64 - m) * r) as f32 * weight[i] + bias[i];
        }
        mean[row] = m as f32;
        rstd[row] = r as f32;
    }
}

/// LayerNorm input gradient, added to `dinp`.
pub fn backward(
    dinp: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    for row in 0..inp.len() / c {
        let (m, r) = (mean[row] as f64, rstd[row] as f64);
        let base = row * c;
        let norm = |i: usize| (inp[base + i] as f64 - m) * r;
        let dnorm = |i: usize| dout[base + i] as f64 * weight[i] as f64;
        let dmean = (0..c).map(dnorm).sum::<f64>() / c as f64;
        let dnm = (0..c).map(|i| dnorm(i) * norm(i)).sum::<f64>() / c as f64;
        for i in 0..c {
            dinp[base + i] += (r * (dnorm(i) - dmean - norm(i) * dnm)) as f32;
        }
    }
}
