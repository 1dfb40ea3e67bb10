//! `kernels::swiglu`'s reference: out = silu(gate) · up and its gradients.

/// sigmoid(x) in f64, evaluating exp only of -|x| so that it never overflows.
fn sigmoid(x: f64) -> f64 {
    let e = (-x.abs()).exp();
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// out = silu(gate) · up, silu(x) = x / (1 + exp(-x)), element-wise.   out, gate, up: (n,)
pub fn forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for i in 0..gate.len() {
        let x = gate[i] as f64;
        out[i] = (x * sigmoid(x) * up[i] as f64) as f32;
    }
}

/// dgate = dout · up · silu'(gate), dup = dout · silu(gate), written (not added).
///   dgate, dup, dout, gate, up: (n,)
pub fn backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    for i in 0..gate.len() {
        let (x, d) = (gate[i] as f64, dout[i] as f64);
        let s = sigmoid(x);
        dgate[i] = (d * up[i] as f64 * s * (1.0 + x * (1.0 - s))) as f32;
        dup[i] = (d * x * s) as f32;
    }
}
