//! `adamw.wgsl`: one fused AdamW dispatch over a flat parameter buffer, in two learning-rate
//! groups (LoRA+: the elements from `b_start` on take `lr · lr_ratio_b`).

use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, groups, u32_of};

/// AdamW hyperparameters (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Peak learning rate (a schedule may pass another per step).
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub max_grad_norm: f32,
    /// The learning rate of group B (the elements from [`update`]'s `b_start` on) as a multiple
    /// of group A's: LoRA+'s ratio ηB / ηA (PEFT's `loraplus_lr_ratio`). 1 = one learning rate.
    /// It scales both the step and the decoupled decay, as a per-group `lr` does in PyTorch.
    pub lr_ratio_b: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: 0.0,
            lr_ratio_b: 1.0,
        }
    }
}

impl AdamW {
    /// Check every hyperparameter is in range.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid(
                "learning rate",
                self.lr,
                "must be a finite number > 0",
            ));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::invalid(name, b, "must be in [0, 1)"));
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(Error::invalid("adam epsilon", self.eps, "must be > 0"));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(Error::invalid(
                "weight decay",
                self.weight_decay,
                "must be >= 0",
            ));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return Err(Error::invalid(
                "max grad norm",
                self.max_grad_norm,
                "must be >= 0 (0 = off)",
            ));
        }
        if !(self.lr_ratio_b > 0.0 && self.lr_ratio_b.is_finite()) {
            return Err(Error::invalid(
                "LoRA+ learning-rate ratio",
                self.lr_ratio_b,
                "must be a finite number > 0 (1 = the same learning rate for A and B)",
            ));
        }
        Ok(())
    }

    /// (lr / (1 - beta1^step), sqrt(1 - beta2^step)), computed in f64.
    pub fn bias_correction(&self, step: u64, lr: f32) -> (f32, f32) {
        let t = step.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        ((lr as f64 / bc1) as f32, bc2.sqrt() as f32)
    }

    /// Group B's learning rate for group A's `lr`: `lr · lr_ratio_b`, rounded once from f64.
    pub fn lr_b(&self, lr: f32) -> f32 {
        (lr as f64 * self.lr_ratio_b as f64) as f32
    }
}

/// Mirrors `struct Params` in adamw.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    b_start: u32,
    _pad: [u32; 2],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    max_norm: f32,
    lr_b: f32,
    step_size_b: f32,
    _pad_b: [f32; 2],
}

/// `adamw.wgsl`.
pub const SHADER: ShaderDef =
    ShaderDef::text("adamw.wgsl", include_str!("../../shaders/adamw.wgsl"));
/// Fused AdamW: param, grad, m, v, norm_sq.
pub const UPDATE: KernelDef = KernelDef::new(
    &SHADER,
    "adamw_update",
    &[(1, W), (2, R), (3, W), (4, W), (5, R)],
    std::mem::size_of::<Params>(),
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&UPDATE];

/// A recorded AdamW update whose step and learning rate are set before each replay.
#[derive(Debug)]
pub struct AdamWUpdate {
    dispatch: std::sync::Arc<Dispatch>,
    cfg: AdamW,
    n: u32,
    b_start: u32,
}

impl Params {
    fn new(cfg: &AdamW, n: u32, b_start: u32, step: u64, lr: f32) -> Self {
        let (step_size, bc2_sqrt) = cfg.bias_correction(step, lr);
        let lr_b = cfg.lr_b(lr);
        let (step_size_b, _) = cfg.bias_correction(step, lr_b);
        Params {
            n,
            b_start,
            _pad: [0; 2],
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            step_size,
            bc2_sqrt,
            max_norm: cfg.max_grad_norm,
            lr_b,
            step_size_b,
            _pad_b: [0.0; 2],
        }
    }
}

impl AdamWUpdate {
    /// Set the 1-based `step` and its learning rate for the next replay.
    pub fn set_step(&self, gpu: &Gpu, step: u64, lr: f32) -> Result<()> {
        if step == 0 {
            return Err(Error::invalid("AdamW step", step, "steps count from 1"));
        }
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(Error::invalid(
                "learning rate",
                lr,
                "must be finite and >= 0",
            ));
        }
        let params = Params::new(&self.cfg, self.n, self.b_start, step, lr);
        self.dispatch.set_params(gpu, &params);
        Ok(())
    }

    /// The dispatch to run (after [`AdamWUpdate::set_step`]).
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// The dispatch, shared, for a [`Recording`](crate::gpu::Recording): later
    /// [`AdamWUpdate::set_step`] calls still reach it.
    pub fn shared(&self) -> std::sync::Arc<Dispatch> {
        self.dispatch.clone()
    }
}

/// param -= AdamW(grad) in place, updating the moments m and v. Elements `b_start..n` are
/// group B and take the learning rate `lr · cfg.lr_ratio_b` (LoRA+); `b_start = n` is one group.
///   param, grad, m, v: (n,)   norm_sq: (1,) squared global grad norm (read when clipping)
pub fn update(
    gpu: &Gpu,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    norm_sq: &Tensor,
    cfg: &AdamW,
    b_start: usize,
) -> Result<AdamWUpdate> {
    const OP: &str = "adamw";
    cfg.validate()?;
    let n = param.len();
    expect_len(OP, "grad", grad, n)?;
    expect_len(OP, "m", m, n)?;
    expect_len(OP, "v", v, n)?;
    expect_len(OP, "norm_sq", norm_sq, 1)?;
    if b_start > n {
        return Err(Error::invalid(
            "AdamW group B start",
            b_start,
            format!("must be <= the parameter count {n}"),
        ));
    }
    let n = u32_of("parameter count", n)?;
    let b_start = b_start as u32;
    let params = Params::new(cfg, n, b_start, 1, cfg.lr);
    let grid = groups_1d(groups(n as usize, 256)?);
    let tensors = [param, grad, m, v, norm_sq];
    Ok(AdamWUpdate {
        dispatch: std::sync::Arc::new(gpu.dispatch(&UPDATE, &[], &params, &tensors, grid)?),
        cfg: *cfg,
        n,
        b_start,
    })
}
