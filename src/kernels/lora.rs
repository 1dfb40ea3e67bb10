//! `lora.wgsl`: the fused low-rank path y += scale · (dropout(x) · aᵀ) · bᵀ and its backward.

use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::dropout::Dropout;
use super::matmul::{matmul, MatmulOp, MatmulVariant};
use super::{expect_len, groups, u32_of, Variants};

/// Largest rank the fused kernels support.
pub const MAX_RANK: usize = 64;

/// Shape of one LoRA layer applied to `m` rows.
///   x: (m, k)   a: (r, k)   b: (n, r)   y: (m, n)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraShape {
    /// Rows (batch · tokens).
    pub m: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// Rank.
    pub r: usize,
}

impl LoraShape {
    fn check(&self) -> Result<()> {
        if self.r == 0 || self.r > MAX_RANK {
            return Err(Error::invalid(
                "rank",
                self.r,
                format!("must be in 1..={MAX_RANK}"),
            ));
        }
        Ok(())
    }
}

/// Mirrors `struct Params` in lora.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    m: u32,
    k: u32,
    n: u32,
    accumulate: u32,
    scale: f32,
    drop_scale: f32,
    threshold: u32,
    offset: u32,
    seed_lo: u32,
    seed_hi: u32,
    _pad: [u32; 2],
}

impl Params {
    fn new(s: &LoraShape, scale: f32, d: &Dropout, accumulate: bool) -> Result<Self> {
        s.check()?;
        Ok(Params {
            m: u32_of("rows", s.m)?,
            k: u32_of("in features", s.k)?,
            n: u32_of("out features", s.n)?,
            accumulate: accumulate.into(),
            scale,
            drop_scale: d.scale(),
            threshold: d.threshold(),
            offset: d.offset,
            seed_lo: d.seed as u32,
            seed_hi: (d.seed >> 32) as u32,
            _pad: [0; 2],
        })
    }
}

/// `lora.wgsl`, after `philox.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::built("lora.wgsl", || {
    format!(
        "{}\n{}",
        super::PHILOX,
        include_str!("../../shaders/lora.wgsl")
    )
});
const PARAMS: usize = std::mem::size_of::<Params>();
const FWD: &[(u32, crate::gpu::Access)] = &[(1, R), (2, R), (3, R), (4, W), (5, W)];
const DU: &[(u32, crate::gpu::Access)] = &[(6, R), (3, R), (7, W)];
const DB: &[(u32, crate::gpu::Access)] = &[(6, R), (8, R), (9, W)];
const DA: &[(u32, crate::gpu::Access)] = &[(10, R), (1, R), (11, W)];
/// Fused low-rank forward: x, a, b, u, y.
pub const FORWARD: KernelDef = KernelDef::new(&SHADER, "lora_forward", FWD, PARAMS);
/// Fused low-rank forward with vec4 loads and no workgroup memory (CPU adapters).
pub const FORWARD_VEC4: KernelDef = KernelDef::new(
    &SHADER,
    "lora_forward_vec4",
    &[(13, R), (14, R), (15, R), (4, W), (16, W)],
    PARAMS,
);
/// Fused low-rank forward with workgroup-wide reductions over k (GPUs).
pub const FORWARD_PAR: KernelDef = KernelDef::new(&SHADER, "lora_forward_par", FWD, PARAMS);
/// dU = scale · dY · B.
pub const BACKWARD_DU: KernelDef = KernelDef::new(&SHADER, "lora_backward_du", DU, PARAMS);
/// dB (+)= scale · dYᵀ · U.
pub const BACKWARD_DB: KernelDef = KernelDef::new(&SHADER, "lora_backward_db", DB, PARAMS);
/// dA (+)= dUᵀ · dropout(X).
pub const BACKWARD_DA: KernelDef = KernelDef::new(&SHADER, "lora_backward_da", DA, PARAMS);
/// dX += mask ⊙ (dU · A).
pub const BACKWARD_DX: KernelDef = KernelDef::new(
    &SHADER,
    "lora_backward_dx",
    &[(10, R), (2, R), (12, W)],
    PARAMS,
);
/// dU = scale · dY · B, reduced over n by a workgroup per 8 rows (GPUs).
pub const BACKWARD_DU_PAR: KernelDef = KernelDef::new(&SHADER, "lora_backward_du_par", DU, PARAMS);
/// dB (+)= scale · dYᵀ · U, reduced over m by a workgroup per 32 columns (GPUs).
pub const BACKWARD_DB_PAR: KernelDef = KernelDef::new(&SHADER, "lora_backward_db_par", DB, PARAMS);
/// dA (+)= dUᵀ · dropout(X), reduced over m by a workgroup per 32 columns (GPUs).
pub const BACKWARD_DA_PAR: KernelDef = KernelDef::new(&SHADER, "lora_backward_da_par", DA, PARAMS);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[
    &FORWARD,
    &FORWARD_VEC4,
    &FORWARD_PAR,
    &BACKWARD_DU,
    &BACKWARD_DB,
    &BACKWARD_DA,
    &BACKWARD_DX,
    &BACKWARD_DU_PAR,
    &BACKWARD_DB_PAR,
    &BACKWARD_DA_PAR,
];

/// Whether `kernel` regenerates the LoRA dropout mask (so a recording that replays it with
/// dropout on must move the mask's offset every step): the forward kernels, dA and dx. du and
/// dB never read the mask (and on CPU adapters are matmuls with their own parameters).
pub fn reads_dropout_mask(kernel: &KernelDef) -> bool {
    [
        &FORWARD,
        &FORWARD_VEC4,
        &FORWARD_PAR,
        &BACKWARD_DA,
        &BACKWARD_DA_PAR,
        &BACKWARD_DX,
    ]
    .contains(&kernel)
}

/// A recorded LoRA dispatch whose dropout mask must change every step: keeps what its
/// parameters were built from so [`Reseed::set_offset`] can rewrite them before a replay.
#[derive(Debug)]
pub struct Reseed {
    dispatch: std::sync::Arc<Dispatch>,
    shape: LoraShape,
    scale: f32,
    dropout: Dropout,
    accumulate: bool,
}

impl Reseed {
    /// Wrap a dispatch made by [`forward`] or [`backward`] with the same arguments; `None`
    /// for one that does not read the mask (see [`reads_dropout_mask`]), whose parameters must
    /// not be rewritten.
    pub fn new(
        dispatch: std::sync::Arc<Dispatch>,
        shape: LoraShape,
        scale: f32,
        dropout: Dropout,
        accumulate: bool,
    ) -> Option<Self> {
        reads_dropout_mask(dispatch.kernel()).then_some(Reseed {
            dispatch,
            shape,
            scale,
            dropout,
            accumulate,
        })
    }

    /// Use the dropout mask at counter `offset` from the next replay on.
    pub fn set_offset(&self, gpu: &Gpu, offset: u32) -> Result<()> {
        let d = Dropout {
            offset,
            ..self.dropout
        };
        let p = Params::new(&self.shape, self.scale, &d, self.accumulate)?;
        self.dispatch.set_params(gpu, &p);
        Ok(())
    }
}

fn rank(s: &LoraShape) -> [(&'static str, f64); 1] {
    [("R", s.r as f64)]
}

/// Which LoRA kernels to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraVariant {
    /// 64 rows per workgroup sharing u through workgroup memory, one thread per row (the
    /// first GPU kernels; slow on large GPUs: kept for comparison). Backward: one thread per
    /// row, column or 4 input features, each looping over the whole reduction.
    Workgroup,
    /// 8 rows per thread, vec4 loads, no workgroup memory (CPU adapters). Needs k, n and r
    /// to be multiples of 4, and falls back to [`LoraVariant::Workgroup`] otherwise. Backward:
    /// du and dB as image matmuls ([`MatmulVariant::Image`]), dA and dx as
    /// [`LoraVariant::Workgroup`].
    Register,
    /// Workgroup-wide reductions (GPUs): forward and du reduce over k (n) with 32 threads per
    /// row, 8 rows per workgroup; dB and dA reduce over m with 32 row groups per 32-column
    /// block. Any shape.
    Parallel,
}

impl LoraVariant {
    /// The choice a [`Gpu`] is made with (its [`Variants::lora`]): `forced` (the `lora` entry of
    /// [`GpuOptions::variants`](crate::gpu::GpuOptions::variants), `LORA_WGPU_LORA`:
    /// `workgroup`, `register` or `parallel`) when it names one, else the variant that suits the
    /// adapter: `Register` on CPU adapters, else `Parallel`. An unrecognised value is ignored.
    ///
    /// On an NVIDIA H200 (Vulkan, `benches/report/`, GPT-2 124M B=4 r=8) `Parallel`'s
    /// forward took 65-140 us per call at m = 512 against `Workgroup`'s 1.0-2.8 ms, and the
    /// LoRA kernels' share of a training step fell from about 180 ms to 17 ms at T=1024.
    pub fn resolve(gpu: &Gpu, forced: Option<&str>) -> Self {
        if let Some(v) = forced.and_then(Self::parse) {
            return v;
        }
        match gpu.info().device_type {
            wgpu::DeviceType::Cpu => LoraVariant::Register,
            _ => LoraVariant::Parallel,
        }
    }

    /// `workgroup`, `register` or `parallel` (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "workgroup" => Some(LoraVariant::Workgroup),
            "register" => Some(LoraVariant::Register),
            "parallel" => Some(LoraVariant::Parallel),
            _ => None,
        }
    }

    /// The lowercase name [`LoraVariant::parse`] accepts.
    pub fn name(self) -> &'static str {
        match self {
            LoraVariant::Workgroup => "workgroup",
            LoraVariant::Register => "register",
            LoraVariant::Parallel => "parallel",
        }
    }
}

/// y += scale · u · bᵀ where u = dropout(x) · aᵀ is also written (backward needs it), with the
/// kernels of the `Gpu`'s [`LoraVariant`].
///   y: (m, n)   u: (m, r)   x: (m, k)   a: (r, k)   b: (n, r)
#[allow(clippy::too_many_arguments)]
pub fn forward(
    gpu: &Gpu,
    y: &Tensor,
    u: &Tensor,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    s: &LoraShape,
    scale: f32,
    d: &Dropout,
) -> Result<Dispatch> {
    const OP: &str = "lora::forward";
    let params = Params::new(s, scale, d, false)?;
    expect_len(OP, "y", y, s.m * s.n)?;
    expect_len(OP, "u", u, s.m * s.r)?;
    expect_len(OP, "x", x, s.m * s.k)?;
    expect_len(OP, "lora_A", a, s.r * s.k)?;
    expect_len(OP, "lora_B", b, s.n * s.r)?;
    let vec4 = s.k.is_multiple_of(4) && s.n.is_multiple_of(4) && s.r.is_multiple_of(4);
    let (kernel, grid) = match gpu.variants().lora {
        LoraVariant::Register if vec4 => (&FORWARD_VEC4, [groups(s.m, 64)?, 1, 1]),
        LoraVariant::Parallel => (&FORWARD_PAR, groups_1d(groups(s.m, 8)?)),
        _ => (&FORWARD, [groups(s.m, 64)?, 1, 1]),
    };
    gpu.dispatch(kernel, &rank(s), &params, &[x, a, b, u, y], grid)
}

/// Where the LoRA backward writes. `da` and `db` are overwritten unless `accumulate`;
/// `dx` (if given) is always added to; `du` (m, r) is scratch.
#[derive(Clone, Copy, Debug)]
pub struct LoraGrads<'a> {
    /// (m, k), added to; `None` when the input needs no gradient.
    pub dx: Option<&'a Tensor>,
    /// (r, k)
    pub da: &'a Tensor,
    /// (n, r)
    pub db: &'a Tensor,
    /// (m, r) scratch: scale · dy · b.
    pub du: &'a Tensor,
}

/// The backward dispatches, in order: du, db, da, then dx when requested, with the kernels of
/// the `Gpu`'s [`LoraVariant`].
///   dy: (m, n)   x: (m, k)   a: (r, k)   b: (n, r)   u: (m, r) from [`forward`]
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    g: LoraGrads<'_>,
    dy: &Tensor,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    u: &Tensor,
    s: &LoraShape,
    scale: f32,
    d: &Dropout,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "lora::backward";
    let variant = gpu.variants().lora;
    let params = Params::new(s, scale, d, accumulate)?;
    expect_len(OP, "dy", dy, s.m * s.n)?;
    expect_len(OP, "x", x, s.m * s.k)?;
    expect_len(OP, "lora_A", a, s.r * s.k)?;
    expect_len(OP, "lora_B", b, s.n * s.r)?;
    expect_len(OP, "u", u, s.m * s.r)?;
    expect_len(OP, "du", g.du, s.m * s.r)?;
    expect_len(OP, "dA", g.da, s.r * s.k)?;
    expect_len(OP, "dB", g.db, s.n * s.r)?;
    let c = rank(s);
    let mut out = if variant == LoraVariant::Parallel {
        vec![
            gpu.dispatch(
                &BACKWARD_DU_PAR,
                &c,
                &params,
                &[dy, b, g.du],
                groups_1d(groups(s.m, 8)?),
            )?,
            gpu.dispatch(
                &BACKWARD_DB_PAR,
                &c,
                &params,
                &[dy, u, g.db],
                groups_1d(groups(s.n, 32)?),
            )?,
            gpu.dispatch(
                &BACKWARD_DA_PAR,
                &c,
                &params,
                &[g.du, x, g.da],
                groups_1d(groups(s.k, 32)?),
            )?,
        ]
    } else {
        let (du, db) = if variant == LoraVariant::Register {
            // du = scale · dY · B and dB (+)= scale · dYᵀ · U are matmuls with r columns: on
            // CPU adapters the image matmul (padded to 64 columns) beats the per-thread loops,
            // whose storage-buffer loads lavapipe runs lane by lane.
            let img = gpu.with_variants(Variants {
                matmul: MatmulVariant::Image,
                ..gpu.variants()
            });
            let du_op = MatmulOp::new(s.m, s.r, s.n).alpha(scale);
            let mut db_op = MatmulOp::new(s.n, s.r, s.m).trans_a().alpha(scale);
            db_op.accumulate = accumulate;
            (
                matmul(&img, g.du, dy, b, None, &du_op)?,
                matmul(&img, g.db, dy, u, None, &db_op)?,
            )
        } else {
            (
                gpu.dispatch(
                    &BACKWARD_DU,
                    &c,
                    &params,
                    &[dy, b, g.du],
                    [groups(s.m, 64)?, 1, 1],
                )?,
                gpu.dispatch(
                    &BACKWARD_DB,
                    &c,
                    &params,
                    &[dy, u, g.db],
                    [groups(s.n, 64)?, 1, 1],
                )?,
            )
        };
        vec![
            du,
            db,
            gpu.dispatch(
                &BACKWARD_DA,
                &c,
                &params,
                &[g.du, x, g.da],
                [groups(s.k.div_ceil(4), 64)?, 1, 1],
            )?,
        ]
    };
    if let Some(dx) = g.dx {
        expect_len(OP, "dx", dx, s.m * s.k)?;
        let grid = [groups(s.k.div_ceil(4), 64)?, groups(s.m, 16)?, 1];
        out.push(gpu.dispatch(&BACKWARD_DX, &c, &params, &[g.du, a, dx], grid)?);
    }
    Ok(out)
}
