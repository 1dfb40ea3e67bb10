//! `kernels::adamw`'s reference: one AdamW step in the shader's f32 arithmetic.

use crate::kernels::adamw::AdamW;

/// One AdamW step at `step` (1-based) in the same f32 arithmetic as `adamw.wgsl`; `norm_sq`
/// is the squared global gradient norm used for clipping; when it is not finite the update is
/// skipped and nothing changes. Elements from `b_start` on are group B: learning rate
/// `lr · cfg.lr_ratio_b` in both the decay and the step (LoRA+).
pub fn update(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    cfg: &AdamW,
    step: u64,
    lr: f32,
    norm_sq: f32,
    b_start: usize,
) {
    if !norm_sq.is_finite() {
        return;
    }
    let lr_b = cfg.lr_b(lr);
    let (step_size_a, bc2_sqrt) = cfg.bias_correction(step, lr);
    let (step_size_b, _) = cfg.bias_correction(step, lr_b);
    let clip = if cfg.max_grad_norm > 0.0 {
        (cfg.max_grad_norm / (norm_sq.sqrt() + 1e-6)).min(1.0)
    } else {
        1.0
    };
    for i in 0..param.len() {
        let (lr, step_size) = if i < b_start {
            (lr, step_size_a)
        } else {
            (lr_b, step_size_b)
        };
        let g = grad[i] * clip;
        let mut w = param[i] * (1.0 - lr * cfg.weight_decay);
        let mi = m[i] + (1.0 - cfg.beta1) * (g - m[i]);
        let vi = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
        w -= step_size * mi / (vi.sqrt() / bc2_sqrt + cfg.eps);
        m[i] = mi;
        v[i] = vi;
        param[i] = w;
    }
}
