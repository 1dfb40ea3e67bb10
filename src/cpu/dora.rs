//! `kernels::dora`'s reference, in f64: DoRA's weight norm, output rescaling and magnitude
//! gradient, for a weight stored [in, out].

/// (c, wn): wn_j = ‖W[:, j] + scale · (B A)ᵀ[:, j]‖ and c_j = m_j / wn_j.
///   w: (k, n)   a: (r, k)   b: (n, r)   m: (n,)
pub fn norm(
    w: &[f32],
    a: &[f32],
    b: &[f32],
    m: &[f32],
    k: usize,
    n: usize,
    r: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut c = vec![0.0f32; n];
    let mut wn = vec![0.0f32; n];
    for j in 0..n {
        let mut acc = 0.0f64;
        for i in 0..k {
            let d: f64 = (0..r)
                .map(|q| a[q * k + i] as f64 * b[j * r + q] as f64)
                .sum();
            let v = w[i * n + j] as f64 + scale as f64 * d;
            acc += v * v;
        }
        let norm = acc.sqrt();
        wn[j] = norm as f32;
        c[j] = (m[j] as f64 / norm) as f32;
    }
    (c, wn)
}

/// y = c ∘ y + b per output feature.   y: (rows, n)   c, bias: (n,)
pub fn scale(y: &mut [f32], c: &[f32], bias: Option<&[f32]>) {
    let n = c.len();
    for (i, v) in y.iter_mut().enumerate() {
        let j = i % n;
        *v = (c[j] as f64 * *v as f64 + bias.map_or(0.0, |b| b[j] as f64)) as f32;
    }
}

/// (dm, du): dm_j = Σ_t dy[t, j] · u[t, j] / wn_j and du = c ∘ dy.
///   dy, u: (rows, n)   c, wn: (n,)
pub fn backward(dy: &[f32], u: &[f32], c: &[f32], wn: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = c.len();
    let mut dm = vec![0.0f64; n];
    let mut du = vec![0.0f32; dy.len()];
    for (i, &g) in dy.iter().enumerate() {
        let j = i % n;
        dm[j] += g as f64 * u[i] as f64;
        du[i] = (c[j] as f64 * g as f64) as f32;
    }
    let dm = dm
        .iter()
        .zip(wn)
        .map(|(&d, &w)| (d / w as f64) as f32)
        .collect();
    (dm, du)
}
