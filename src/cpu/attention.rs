//! `kernels::attention`'s reference: causal self-attention from the full softmax of each row.

/// Softmax probabilities of one causal attention row (f64) and the log-sum-exp of its scaled
/// scores.
fn attention_row(
    qkv: &[f32],
    tq: usize,
    at: impl Fn(usize, usize) -> usize,
    hs: usize,
) -> (Vec<f64>, f64) {
    let scale = 1.0 / (hs as f64).sqrt();
    let scores: Vec<f64> = (0..=tq)
        .map(|t2| {
            (0..hs)
                .map(|i| qkv[at(tq, 0) + i] as f64 * qkv[at(t2, 1) + i] as f64)
                .sum::<f64>()
                * scale
        })
        .collect();
    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
    let sum: f64 = scores.iter().map(|s| (s - m).exp()).sum();
    (
        scores.iter().map(|s| (s - m).exp() / sum).collect(),
        m + sum.ln(),
    )
}

/// Causal self-attention forward: the output and each row's log-sum-exp of the scaled scores.
///   out: (B, T, C)   lse: (B, NH, T)   qkv: (B, T, 3C)
pub fn forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    for bb in 0..b {
        for h in 0..nh {
            let at = |tt: usize, part: usize| (bb * t + tt) * 3 * c + part * c + h * hs;
            for tq in 0..t {
                let (att, l) = attention_row(qkv, tq, at, hs);
                lse[(bb * nh + h) * t + tq] = l as f32;
                for i in 0..hs {
                    let o: f64 = (0..=tq).map(|t2| att[t2] * qkv[at(t2, 2) + i] as f64).sum();
                    out[(bb * t + tq) * c + h * hs + i] = o as f32;
                }
            }
        }
    }
}

/// Causal self-attention backward: dqkv (written), from the full softmax of each row.
pub fn backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut acc = vec![0.0f64; dqkv.len()];
    for bb in 0..b {
        for h in 0..nh {
            let at = |tt: usize, part: usize| (bb * t + tt) * 3 * c + part * c + h * hs;
            for tq in 0..t {
                let (att, _) = attention_row(qkv, tq, at, hs);
                let go = (bb * t + tq) * c + h * hs;
                let datt: Vec<f64> = (0..=tq)
                    .map(|t2| {
                        (0..hs)
                            .map(|i| dout[go + i] as f64 * qkv[at(t2, 2) + i] as f64)
                            .sum()
                    })
                    .collect();
                let s: f64 = (0..=tq).map(|t2| att[t2] * datt[t2]).sum();
                for t2 in 0..=tq {
                    let a = att[t2];
                    let dp = a * (datt[t2] - s);
                    for i in 0..hs {
                        acc[at(tq, 0) + i] += scale * dp * qkv[at(t2, 1) + i] as f64;
                        acc[at(t2, 1) + i] += scale * dp * qkv[at(tq, 0) + i] as f64;
                        acc[at(t2, 2) + i] += a * dout[go + i] as f64;
                    }
                }
            }
        }
    }
    for (d, a) in dqkv.iter_mut().zip(acc) {
        *d = a as f32;
    }
}
