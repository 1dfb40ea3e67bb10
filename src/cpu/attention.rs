//! `kernels::attention`'s reference: causal self-attention with grouped-query heads from the
//! full softmax of each row, in f64.
//!
//! Rows of `qkv` are `[nh query heads | nkv key heads | nkv value heads]`, each `hs` wide;
//! query head `h` uses kv head `h / (nh / nkv)`. This reference does what transformers'
//! `repeat_kv` does: it copies each kv head out once per query head of its group and runs
//! plain multi-head attention per query head; the backward sums the copies' gradients back
//! into their kv head.

/// Per (batch, query head): q, and the k and v of its kv head, each (T, hs), in f64.
struct Heads {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

/// Split `qkv` (B, T, (nh + 2·nkv)·hs) into `b · nh` [`Heads`], the kv heads repeated.
fn split(qkv: &[f32], b: usize, t: usize, nh: usize, nkv: usize, hs: usize) -> Vec<Heads> {
    assert!(
        nkv > 0 && nh.is_multiple_of(nkv),
        "{nh} heads over {nkv} kv heads"
    );
    let width = (nh + 2 * nkv) * hs;
    assert_eq!(qkv.len(), b * t * width, "qkv length");
    let take = |bb: usize, col: usize| -> Vec<f64> {
        (0..t)
            .flat_map(|tt| {
                let o = (bb * t + tt) * width + col;
                qkv[o..o + hs].iter().map(|&x| x as f64)
            })
            .collect()
    };
    let mut heads = Vec::with_capacity(b * nh);
    for bb in 0..b {
        for h in 0..nh {
            let kh = h / (nh / nkv);
            heads.push(Heads {
                q: take(bb, h * hs),
                k: take(bb, (nh + kh) * hs),
                v: take(bb, (nh + nkv + kh) * hs),
            });
        }
    }
    heads
}

/// Softmax probabilities of causal row `tq` of one head and the log-sum-exp of its scaled
/// scores.
fn probabilities(hd: &Heads, tq: usize, hs: usize) -> (Vec<f64>, f64) {
    let scale = 1.0 / (hs as f64).sqrt();
    let q = &hd.q[tq * hs..(tq + 1) * hs];
    let scores: Vec<f64> = (0..=tq)
        .map(|t2| {
            let k = &hd.k[t2 * hs..(t2 + 1) * hs];
            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale
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
///   out: (B, T, nh·hs)   lse: (B, nh, T)   qkv: (B, T, (nh + 2·nkv)·hs)
#[allow(clippy::too_many_arguments)]
pub fn forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hs: usize,
) {
    let heads = split(qkv, b, t, nh, nkv, hs);
    for bb in 0..b {
        for h in 0..nh {
            let hd = &heads[bb * nh + h];
            for tq in 0..t {
                let (att, l) = probabilities(hd, tq, hs);
                lse[(bb * nh + h) * t + tq] = l as f32;
                for i in 0..hs {
                    let o: f64 = (0..=tq).map(|t2| att[t2] * hd.v[t2 * hs + i]).sum();
                    out[((bb * t + tq) * nh + h) * hs + i] = o as f32;
                }
            }
        }
    }
}

/// Causal self-attention backward: dqkv (written) in `qkv`'s layout, from the full softmax of
/// each row; each kv head's dk and dv are the sums over the query heads that share it.
///   dqkv: (B, T, (nh + 2·nkv)·hs)   dout: (B, T, nh·hs)
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hs: usize,
) {
    let scale = 1.0 / (hs as f64).sqrt();
    let width = (nh + 2 * nkv) * hs;
    let heads = split(qkv, b, t, nh, nkv, hs);
    let mut acc = vec![0.0f64; dqkv.len()];
    for bb in 0..b {
        for h in 0..nh {
            let hd = &heads[bb * nh + h];
            // Gradients of this query head's q and of its private copies of k and v.
            let (mut dq, mut dk, mut dv) =
                (vec![0.0; t * hs], vec![0.0; t * hs], vec![0.0; t * hs]);
            for tq in 0..t {
                let (att, _) = probabilities(hd, tq, hs);
                let g = &dout[((bb * t + tq) * nh + h) * hs..][..hs];
                let datt: Vec<f64> = (0..=tq)
                    .map(|t2| (0..hs).map(|i| g[i] as f64 * hd.v[t2 * hs + i]).sum())
                    .collect();
                let s: f64 = (0..=tq).map(|t2| att[t2] * datt[t2]).sum();
                for t2 in 0..=tq {
                    let a = att[t2];
                    let dp = a * (datt[t2] - s);
                    for i in 0..hs {
                        dq[tq * hs + i] += scale * dp * hd.k[t2 * hs + i];
                        dk[t2 * hs + i] += scale * dp * hd.q[tq * hs + i];
                        dv[t2 * hs + i] += a * g[i] as f64;
                    }
                }
            }
            let kh = h / (nh / nkv);
            for tt in 0..t {
                let row = (bb * t + tt) * width;
                for i in 0..hs {
                    acc[row + h * hs + i] += dq[tt * hs + i];
                    acc[row + (nh + kh) * hs + i] += dk[tt * hs + i];
                    acc[row + (nh + nkv + kh) * hs + i] += dv[tt * hs + i];
                }
            }
        }
    }
    for (d, a) in dqkv.iter_mut().zip(acc) {
        *d = a as f32;
    }
}
