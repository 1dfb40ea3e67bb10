//! `kernels::dropout`'s reference: inverted dropout with Philox masks.

use crate::kernels::dropout::Dropout;

/// out = dropout(inp): kept elements scaled by 1 / (1 - p), masks from Philox.
pub fn forward(out: &mut [f32], inp: &[f32], d: &Dropout) {
    for (i, (o, &x)) in out.iter_mut().zip(inp).enumerate() {
        *o = x * d.multiplier(i as u32);
    }
}
