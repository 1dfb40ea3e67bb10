//! `dora.wgsl`: DoRA's weight norm, its rescaling of a linear layer's output, and the
//! magnitude's gradient (PEFT's `use_dora`). The low-rank term itself is [`super::lora`]'s.

use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Dtype, Gpu, KernelDef, ShaderDef, Tensor};

use super::lora::MAX_RANK;
use super::matmul::{matmul, MatmulOp};
use super::{expect_len, f16_build, groups, u32_of};

/// Mirrors `struct Params` in dora.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    k: u32,
    n: u32,
    r: u32,
    rows: u32,
    scale: f32,
    flag: u32,
    save: u32,
    _pad: u32,
}

const DORA_WGSL: &str = include_str!("../../shaders/dora.wgsl");
/// `dora.wgsl`.
/// Every access is in bounds (indices guarded, launchers check lengths): no bounds checks.
pub const SHADER: ShaderDef = ShaderDef::text("dora.wgsl", DORA_WGSL).trusted();
/// `dora.wgsl` with the frozen weight stored as f16 (`SHADER_F16`).
pub const SHADER_F16: ShaderDef = ShaderDef::built("dora.wgsl (f16 W)", f16_source).trusted();

fn f16_source() -> String {
    f16_build(
        DORA_WGSL.to_string(),
        &[
            ("> w: array<f32>;", "> w: array<f16>;"),
            ("{ return w[i]; }", "{ return f32(w[i]); }"),
        ],
    )
}

const PARAMS: usize = std::mem::size_of::<Params>();
/// ‖W[:, j]‖² per output feature: w, wsq.
pub const COL_SUMSQ: KernelDef =
    KernelDef::new(&SHADER, "dora_col_sumsq", &[(1, R), (13, W)], PARAMS);
/// [`COL_SUMSQ`] reading an f16 weight.
pub const COL_SUMSQ_F16: KernelDef = COL_SUMSQ.in_shader(&SHADER_F16).f16(1);
/// The weight norm and c = m / norm from ‖W‖², A·W and A·Aᵀ: b, m, norm, wsq, aw, gram.
pub const NORM: KernelDef = KernelDef::new(
    &SHADER,
    "dora_norm",
    &[(3, R), (4, R), (5, W), (13, W), (14, R), (15, R)],
    PARAMS,
);
/// y = c ∘ y + b, saving y first: y, norm, bias, u.
pub const SCALE: KernelDef = KernelDef::new(
    &SHADER,
    "dora_scale",
    &[(6, W), (9, R), (7, R), (8, W)],
    PARAMS,
);
/// The magnitude's gradient and du = c ∘ dy: dy, u, norm, dm, du.
pub const BACKWARD: KernelDef = KernelDef::new(
    &SHADER,
    "dora_backward",
    &[(11, R), (8, W), (9, R), (10, W), (12, W)],
    PARAMS,
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&COL_SUMSQ, &COL_SUMSQ_F16, &NORM, &SCALE, &BACKWARD];

/// The shape of one DoRA module: `k` inputs, `n` outputs, rank `r`, `rows` rows of activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoraShape {
    /// Input features (W is (k, n), A is (r, k)).
    pub k: usize,
    /// Output features (B is (n, r), m is (n,)).
    pub n: usize,
    /// Rank.
    pub r: usize,
    /// Rows of the activations (batch · sequence).
    pub rows: usize,
}

impl DoraShape {
    fn params(&self, op: &'static str, scale: f32, flag: bool, save: bool) -> Result<Params> {
        if self.r == 0 || self.r > MAX_RANK {
            return Err(Error::shape(
                op,
                format!("rank {} is outside 1..={MAX_RANK}", self.r),
            ));
        }
        Ok(Params {
            k: u32_of("in features", self.k)?,
            n: u32_of("out features", self.n)?,
            r: u32_of("rank", self.r)?,
            rows: u32_of("rows", self.rows)?,
            scale,
            flag: flag.into(),
            save: save.into(),
            _pad: 0,
        })
    }
}

/// One module's weight norm, wn_j = ‖W[:, j] + scale · (B A)ᵀ[:, j]‖, expanded as
/// ‖W_j‖² + 2·scale·B_j·(A W)_j + scale²·B_j (A Aᵀ) B_jᵀ: ‖W_j‖² once ([`DoraNorm::new`], W is
/// frozen), then per forward A·W and A·Aᵀ by the matmul (the one pass over W, at matmul speed)
/// and a combine of O(r²) per output feature.
#[derive(Debug)]
pub struct DoraNorm {
    wsq: Tensor,
    aw: Tensor,
    gram: Tensor,
    shape: DoraShape,
}

impl DoraNorm {
    /// Allocate the module's buffers and compute ‖W_j‖² (runs on the GPU now).
    ///   w: (k, n) f32 or f16   (`s.rows` unused)
    pub fn new(gpu: &Gpu, name: &str, w: &Tensor, s: &DoraShape) -> Result<Self> {
        const OP: &str = "dora::DoraNorm::new";
        expect_len(OP, "weight", w, s.k * s.n)?;
        let params = s.params(OP, 0.0, false, false)?;
        let wsq = gpu.zeros(&format!("{name} dora ‖W‖²"), &[s.n])?;
        let kernel = match w.dtype() {
            Dtype::F32 => &COL_SUMSQ,
            Dtype::F16 => &COL_SUMSQ_F16,
            Dtype::Quant(ty) => {
                return Err(Error::invalid(
                    "DoRA base weight",
                    w.name(),
                    format!(
                        "DoRA needs the weight's column norms, and {} weights are not read here; \
                         train DoRA on an f32 or f16 base (a Hugging Face directory without \
                         --quantize; a GGUF file's q8_0/q4_0/q4_k weights stay as stored), or \
                         plain LoRA on the quantized one",
                        ty.name()
                    ),
                ))
            }
        };
        let grid = groups_1d(groups(s.n, 64)?);
        gpu.run(&[&gpu.dispatch(kernel, &[], &params, &[w, &wsq], grid)?])?;
        Ok(DoraNorm {
            wsq,
            aw: gpu.zeros(&format!("{name} dora A·W"), &[s.r, s.n])?,
            gram: gpu.zeros(&format!("{name} dora A·Aᵀ"), &[s.r, s.r])?,
            shape: *s,
        })
    }

    /// Bytes of GPU memory it holds.
    pub fn bytes(&self) -> u64 {
        self.wsq.bytes() + self.aw.bytes() + self.gram.bytes()
    }

    /// The dispatches that write `norm` = [c | wn] with c_j = m_j / wn_j (PEFT's initial
    /// magnitude is wn).
    ///   w: (k, n), the weight given to [`DoraNorm::new`]   a: (r, k)   b: (n, r)   m: (n,)
    ///   norm: (2n,)
    pub fn record(
        &self,
        gpu: &Gpu,
        norm: &Tensor,
        m: &Tensor,
        w: &Tensor,
        a: &Tensor,
        b: &Tensor,
        scale: f32,
    ) -> Result<Vec<Dispatch>> {
        const OP: &str = "dora::DoraNorm::record";
        let s = &self.shape;
        expect_len(OP, "weight", w, s.k * s.n)?;
        expect_len(OP, "lora_A", a, s.r * s.k)?;
        expect_len(OP, "lora_B", b, s.n * s.r)?;
        expect_len(OP, "magnitude", m, s.n)?;
        expect_len(OP, "norm", norm, 2 * s.n)?;
        let params = s.params(OP, scale, false, false)?;
        let (k, n, r) = (s.k, s.n, s.r);
        Ok(vec![
            matmul(
                gpu,
                &self.aw,
                a,
                w,
                None,
                &MatmulOp::new(r, n, k).frozen_b(),
            )?,
            matmul(
                gpu,
                &self.gram,
                a,
                a,
                None,
                &MatmulOp::new(r, r, k).trans_b(),
            )?,
            gpu.dispatch(
                &NORM,
                &[],
                &params,
                &[b, m, norm, &self.wsq, &self.aw, &self.gram],
                groups_1d(groups(n, 64)?),
            )?,
        ])
    }
}

/// y = c ∘ y + b per output feature (c from [`DoraNorm`]), first copying y to `save` when given
/// (the u the backward needs).
///   y, save: (rows, n)   norm: (2n,)   bias: (n,)
pub fn scale(
    gpu: &Gpu,
    y: &Tensor,
    norm: &Tensor,
    bias: Option<&Tensor>,
    save: Option<&Tensor>,
    s: &DoraShape,
) -> Result<Dispatch> {
    const OP: &str = "dora::scale";
    expect_len(OP, "y", y, s.rows * s.n)?;
    expect_len(OP, "norm", norm, 2 * s.n)?;
    if let Some(bias) = bias {
        expect_len(OP, "bias", bias, s.n)?;
    }
    if let Some(u) = save {
        expect_len(OP, "saved u", u, s.rows * s.n)?;
    }
    let params = s.params(OP, 0.0, bias.is_some(), save.is_some())?;
    let row_groups = groups(s.rows, 16)?;
    if row_groups > 65_535 {
        return Err(Error::shape(
            OP,
            format!("{} rows is too many for one dispatch", s.rows),
        ));
    }
    // Without a save, y stands in for the unused u binding (both read-write, so one buffer
    // may fill both; the shared read-only dummy may not).
    gpu.dispatch(
        &SCALE,
        &[],
        &params,
        &[y, norm, bias.unwrap_or(gpu.dummy()), save.unwrap_or(y)],
        [groups(s.n, 64)?, row_groups, 1],
    )
}

/// The magnitude's gradient, dm_j = Σ_t dy[t, j] · u[t, j] / wn_j (added to `dm` with
/// `accumulate`, else written), and du = c ∘ dy: the gradient at u, which the frozen
/// product's and the LoRA term's backward then take.
///   dy, u, du: (rows, n)   norm: (2n,)   dm: (n,)
pub fn backward(
    gpu: &Gpu,
    dm: &Tensor,
    du: &Tensor,
    dy: &Tensor,
    u: &Tensor,
    norm: &Tensor,
    s: &DoraShape,
    accumulate: bool,
) -> Result<Dispatch> {
    const OP: &str = "dora::backward";
    expect_len(OP, "dy", dy, s.rows * s.n)?;
    expect_len(OP, "u", u, s.rows * s.n)?;
    expect_len(OP, "norm", norm, 2 * s.n)?;
    expect_len(OP, "dm", dm, s.n)?;
    expect_len(OP, "du", du, s.rows * s.n)?;
    let params = s.params(OP, 0.0, accumulate, false)?;
    gpu.dispatch(
        &BACKWARD,
        &[],
        &params,
        &[dy, u, norm, dm, du],
        groups_1d(groups(s.n, 64)?),
    )
}
