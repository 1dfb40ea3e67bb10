//! `kernels::embedding`'s reference: token + position embedding.

/// `out[bt] = wte[tokens[bt]] + wpe[bt % t]`.   out: (N, C)
pub fn forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], t: usize, c: usize) {
    for (bt, &tok) in tokens.iter().enumerate() {
        let (tok, pos) = (tok as usize, bt % t);
        for i in 0..c {
            out[bt * c + i] = wte[tok * c + i] + wpe[pos * c + i];
        }
    }
}
