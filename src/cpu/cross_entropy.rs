//! `kernels::cross_entropy`'s reference: full-vocabulary softmax, loss and dlogits.

/// Full-vocabulary softmax cross-entropy: per-row losses (0 for `ignore`) and
/// dlogits = (softmax - onehot) · dloss.   logits, dlogits: (N, V)
pub fn loss_and_grad(
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
