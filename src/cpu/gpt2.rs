//! Plain-loop references of the GPT-2 ops (llm.c's train_gpt2.c, in f32 with f64 sums).

/// `out[bt] = wte[tokens[bt]] + wpe[bt % t]`.   out: (N, C)
pub fn embedding(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], t: usize, c: usize) {
    for (bt, &tok) in tokens.iter().enumerate() {
        let (tok, pos) = (tok as usize, bt % t);
        for i in 0..c {
            out[bt * c + i] = wte[tok * c + i] + wpe[pos * c + i];
        }
    }
}

/// LayerNorm forward.   out, inp: (N, C)   mean, rstd: (N,)
pub fn layernorm_forward(
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
pub fn layernorm_backward(
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

const GELU_SCALE: f64 = 0.797_884_560_802_865_4;

/// gelu_new (tanh approximation), element-wise.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        let x = x as f64;
        *o = (0.5 * x * (1.0 + (GELU_SCALE * (x + 0.044715 * x * x * x)).tanh())) as f32;
    }
}

/// dinp = gelu_new'(inp) · dout.
pub fn gelu_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    for i in 0..inp.len() {
        let x = inp[i] as f64;
        let th = (GELU_SCALE * (x + 0.044715 * x * x * x)).tanh();
        let sech2 = 1.0 - th * th;
        let g = 0.5 * (1.0 + th) + x * 0.5 * sech2 * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] = (g * dout[i] as f64) as f32;
    }
}

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
pub fn attention_forward(
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
pub fn attention_backward(
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

/// Full-vocabulary softmax cross-entropy: per-row losses (0 for `ignore`) and
/// dlogits = (softmax - onehot) · dloss.   logits, dlogits: (N, V)
pub fn cross_entropy(
    loss: &mut [f32],
    dlogits: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    v: usize,
    dloss: f32,
    ignore: u32,
) {
    for (row, &tgt) in targets.iter().enumerate() {
        let l = &logits[row * v..(row + 1) * v];
        let m = l.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let sum: f64 = l.iter().map(|&x| (x as f64 - m).exp()).sum();
        let valid = tgt != ignore;
        loss[row] = if valid {
            (sum.ln() + m - l[tgt as usize] as f64) as f32
        } else {
            0.0
        };
        for j in 0..v {
            let p = (l[j] as f64 - m).exp() / sum;
            let y = if valid && j == tgt as usize { 1.0 } else { 0.0 };
            dlogits[row * v + j] = if valid {
                ((p - y) * dloss as f64) as f32
            } else {
                0.0
            };
        }
    }
}
