//! `kernels::elementwise`'s reference: gelu_new and its derivative.

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

/// out = a + b, element-wise.
pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}
