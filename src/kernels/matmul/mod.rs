//! `matmul.wgsl`: C = alpha · op(A) · op(B) (+ bias) (+ C), batched; its variants
//! ([`MatmulVariant`]), the image kernels' operand packing ([`image`]) and autotuning
//! ([`autotune`]).

pub mod autotune;
pub mod image;

use std::mem::size_of;

use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{Dispatch, Dtype, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, f16_build, groups, u32_of};

pub use image::image_subgroups;

/// Which matmul implementation suits an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Workgroup-memory tiled kernel, 16x16 threads each computing a `tm x tn` block
    /// (`tm = tn = 1` is the textbook kernel). Right for real GPUs.
    Tiled {
        /// Rows per thread (1..=4).
        tm: u32,
        /// Columns per thread (1..=4).
        tn: u32,
    },
    /// Register-tiled kernel with no workgroup memory and no barriers: each thread computes a
    /// 4x4 block. Right for CPU adapters (lavapipe), where barriers are very expensive.
    Register,
    /// Operands packed into rgba32float storage textures, then a register-blocked kernel that
    /// reads them with texture loads: right for CPU adapters, where (on Mesa's llvmpipe) a
    /// storage-buffer load costs a loop over the SIMD lanes and a texture load a vector
    /// gather. Where subgroups are exactly 8 wide (SUBGROUP enabled: lavapipe on Vulkan) the
    /// kernel shares op(B) through the subgroup (`matmul_image_sg`, faster there: see
    /// docs/benchmarks.md). Shapes it cannot take (a batch, a side over the texture size limit) run
    /// [`MatmulVariant::Register`].
    Image,
    /// Cooperative matrices (tensor cores): operands rounded to f16, products accumulated in
    /// f32; four subgroups per 128x128 block of C (64x64 with 8x8 fragments), each owning a
    /// quarter. Needs [`GpuOptions::cooperative_matrix`](crate::gpu::GpuOptions::cooperative_matrix)
    /// (and `SHADER_F16`, `SUBGROUP`).
    Coop,
    /// The autotuned winner for each shape class (see [`autotune`]).
    Auto,
}

impl MatmulVariant {
    /// The choice a [`Gpu`] is made with (its [`Variants::matmul`](super::Variants::matmul)):
    /// `forced` (the `matmul` entry of [`GpuOptions::variants`](crate::gpu::GpuOptions::variants),
    /// `LORA_WGPU_MATMUL`) when it names a variant, else [`MatmulVariant::Coop`] when
    /// [`GpuOptions::cooperative_matrix`](crate::gpu::GpuOptions::cooperative_matrix) enabled
    /// it, else [`MatmulVariant::Auto`] when autotuning is on (GPUs, by default), else
    /// [`MatmulVariant::device_default`].
    ///
    /// `forced` may be `image`, `register`, `tiled1x1`, `tiled4x4` or `tiled8x8` (any `tiledMxN`
    /// that [`matmul`] accepts), `coop` (which needs the cooperative-matrix option) or `auto`.
    /// An unrecognised value is ignored.
    pub fn resolve(gpu: &Gpu, forced: Option<&str>) -> Self {
        match forced.and_then(autotune::parse) {
            Some(v) => v,
            None if gpu.features().coop_matrix.is_some() => MatmulVariant::Coop,
            None if gpu.timings().enabled() => MatmulVariant::Auto,
            None => Self::device_default(gpu),
        }
    }

    /// The untuned choice by device type: the image kernel on CPU adapters, the 128x128
    /// block-tile kernel (`Tiled { tm: 8, tn: 8 }`) on discrete GPUs, and the 4x4-per-thread
    /// [`MatmulVariant::Tiled`] kernel on other GPUs.
    ///
    /// A 128x128 block needs enough blocks of C to fill a discrete GPU, which training shapes
    /// give (M = B·T); on smaller GPUs the 4x4 kernel's finer grid is the safer default. The
    /// H200 figures behind the choice are in docs/benchmarks.md.
    pub fn device_default(gpu: &Gpu) -> Self {
        match gpu.info().device_type {
            wgpu::DeviceType::Cpu => MatmulVariant::Image,
            wgpu::DeviceType::DiscreteGpu => MatmulVariant::Tiled { tm: 8, tn: 8 },
            _ => MatmulVariant::Tiled { tm: 4, tn: 4 },
        }
    }
}

const PARAMS: usize = size_of::<Params>();
const MATMUL_WGSL: &str = include_str!("../../../shaders/matmul.wgsl");

/// `matmul.wgsl`. Its kernels clamp or guard every index and the launchers check every
/// length, so naga's bounds checks are off ([`ShaderDef::trusted`]).
pub const SHADER: ShaderDef = ShaderDef::text("matmul.wgsl", MATMUL_WGSL).trusted();
/// `matmul.wgsl` with the B operand stored as f16 (frozen weights, `SHADER_F16`).
pub const SHADER_F16: ShaderDef = ShaderDef::built("matmul.wgsl (f16 B)", f16_source).trusted();
/// `matmul.wgsl` + `matmul_coop.wgsl` on 8x8 cooperative matrices.
pub const SHADER_COOP8: ShaderDef = ShaderDef::built("matmul_coop.wgsl (8x8)", coop8).trusted();
/// `matmul.wgsl` + `matmul_coop.wgsl` on 16x16 cooperative matrices.
pub const SHADER_COOP16: ShaderDef = ShaderDef::built("matmul_coop.wgsl (16x16)", coop16).trusted();
/// [`SHADER_COOP8`] with B stored as f16.
pub const SHADER_COOP8_F16: ShaderDef =
    ShaderDef::built("matmul_coop.wgsl (8x8, f16 B)", coop8_f16).trusted();
/// [`SHADER_COOP16`] with B stored as f16.
pub const SHADER_COOP16_F16: ShaderDef =
    ShaderDef::built("matmul_coop.wgsl (16x16, f16 B)", coop16_f16).trusted();

fn f16_source() -> String {
    f16_build(
        MATMUL_WGSL.to_string(),
        &[
            ("b: array<f32>;", "b: array<f16>;"),
            ("{ return b[i]; }", "{ return f32(b[i]); }"),
            ("b4: array<vec4<f32>>;", "b4: array<vec4<f16>>;"),
            ("{ return b4[i]; }", "{ return vec4<f32>(b4[i]); }"),
        ],
    )
}

/// `matmul_coop.wgsl` appended to `base` (matmul.wgsl, B stored as f32 or f16) with its
/// fragments `side` x `side`, behind the `enable`s it needs.
fn coop_build(base: String, side: u32) -> String {
    let base = base.strip_prefix("enable f16;\n").unwrap_or(&base);
    let coop = include_str!("../../../shaders/matmul_coop.wgsl");
    let coop = if side == 16 {
        coop.to_string()
    } else {
        const S16: &str = "const S: u32 = 16u;";
        assert_eq!(coop.matches(S16).count(), 1, "coop build: {S16}");
        coop.replace(S16, &format!("const S: u32 = {side}u;"))
            .replace("coop_mat16x16", &format!("coop_mat{side}x{side}"))
    };
    format!("enable f16;\nenable wgpu_cooperative_matrix;\n{base}\n{coop}")
}

fn coop8() -> String {
    coop_build(MATMUL_WGSL.to_string(), 8)
}

fn coop16() -> String {
    coop_build(MATMUL_WGSL.to_string(), 16)
}

fn coop8_f16() -> String {
    coop_build(f16_source(), 8)
}

fn coop16_f16() -> String {
    coop_build(f16_source(), 16)
}

const ABBC: &[(u32, crate::gpu::Access)] = &[(1, R), (2, R), (3, R), (4, W)];

/// Workgroup-memory tiled matmul (GPUs).
pub const TILED: KernelDef = KernelDef::new(&SHADER, "matmul_tiled", ABBC, PARAMS);
/// Register-tiled matmul without barriers (CPU adapters).
pub const REGISTER: KernelDef = KernelDef::new(&SHADER, "matmul_register", ABBC, PARAMS);
/// Register-tiled matmul with vec4 loads (CPU adapters, dimensions multiple of 4).
pub const VEC4: KernelDef = KernelDef::new(
    &SHADER,
    "matmul_vec4",
    &[(5, R), (6, R), (3, R), (4, W)],
    PARAMS,
);
/// [`TILED`] with B stored as f16.
pub const TILED_F16: KernelDef = TILED.in_shader(&SHADER_F16).f16(2);
/// [`REGISTER`] with B stored as f16.
pub const REGISTER_F16: KernelDef = REGISTER.in_shader(&SHADER_F16).f16(2);
/// [`VEC4`] with B stored as f16.
pub const VEC4_F16: KernelDef = VEC4.in_shader(&SHADER_F16).f16(6);
/// Matmul on 8x8 cooperative matrices, operands rounded to f16, f32 accumulation.
pub const COOP8: KernelDef = KernelDef::new(&SHADER_COOP8, "matmul_coop", ABBC, PARAMS);
/// Matmul on 16x16 cooperative matrices (tensor cores).
pub const COOP16: KernelDef = COOP8.in_shader(&SHADER_COOP16);
/// [`COOP8`] with B stored as f16.
pub const COOP8_F16: KernelDef = COOP8.in_shader(&SHADER_COOP8_F16).f16(2);
/// [`COOP16`] with B stored as f16.
pub const COOP16_F16: KernelDef = COOP8.in_shader(&SHADER_COOP16_F16).f16(2);

/// Every kernel of this file (and of [`image`]).
pub const KERNELS: &[&KernelDef] = &[
    &TILED,
    &REGISTER,
    &VEC4,
    &TILED_F16,
    &REGISTER_F16,
    &VEC4_F16,
    &COOP8,
    &COOP16,
    &COOP8_F16,
    &COOP16_F16,
    &image::PACK_A,
    &image::PACK_B,
    &image::PACK_B_F16,
    &image::IMAGE,
    &image::IMAGE_SG,
];

/// Shape and options of one (batched) matmul.
///
/// op(A) is (m, k), op(B) is (k, n), C is (batch, m, n). An operand holding a single
/// matrix is broadcast over the batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatmulOp {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Number of independent products.
    pub batch: usize,
    /// A is stored (k, m).
    pub trans_a: bool,
    /// B is stored (n, k).
    pub trans_b: bool,
    /// Scale applied to the product.
    pub alpha: f32,
    /// Add to C instead of overwriting it.
    pub accumulate: bool,
    /// B never changes after this dispatch is built (a frozen weight): kernels that repack
    /// B ([`MatmulVariant::Image`]) pack it once and keep the copy with the tensor.
    pub frozen_b: bool,
}

impl MatmulOp {
    /// C(m, n) = A(m, k) · B(k, n).
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        MatmulOp {
            m,
            n,
            k,
            batch: 1,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            accumulate: false,
            frozen_b: false,
        }
    }

    /// Batched over `batch` matrices.
    pub fn batch(self, batch: usize) -> Self {
        MatmulOp { batch, ..self }
    }

    /// A stored transposed, (k, m).
    pub fn trans_a(self) -> Self {
        MatmulOp {
            trans_a: true,
            ..self
        }
    }

    /// B stored transposed, (n, k).
    pub fn trans_b(self) -> Self {
        MatmulOp {
            trans_b: true,
            ..self
        }
    }

    /// Scale the product by `alpha`.
    pub fn alpha(self, alpha: f32) -> Self {
        MatmulOp { alpha, ..self }
    }

    /// Add to C.
    pub fn accumulate(self) -> Self {
        MatmulOp {
            accumulate: true,
            ..self
        }
    }

    /// B is a frozen weight (see [`MatmulOp::frozen_b`]).
    pub fn frozen_b(self) -> Self {
        MatmulOp {
            frozen_b: true,
            ..self
        }
    }

    /// Whether every contiguous dimension is a multiple of 4, so operands can be read as vec4:
    /// K always, M when A is transposed, N unless B is transposed.
    pub fn vec4_friendly(&self) -> bool {
        self.k.is_multiple_of(4)
            && (!self.trans_a || self.m.is_multiple_of(4))
            && (self.trans_b || self.n.is_multiple_of(4))
    }

    /// Floating-point operations (2·m·n·k per batch).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k) as f64
    }
}

/// Mirrors `struct Params` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
}

fn batch_stride(op: &'static str, what: &str, t: &Tensor, one: usize, batch: usize) -> Result<u32> {
    if t.len() == one {
        Ok(0)
    } else if t.len() == one * batch {
        u32_of("matmul stride", one)
    } else {
        Err(Error::shape(
            op,
            format!(
                "{what} ({}) has {} elements (shape {:?}); expected {one} or {batch} x {one}",
                t.name(),
                t.len(),
                t.shape()
            ),
        ))
    }
}

/// c = alpha · op(a) · op(b) (+ bias) (+ c).
///   c: (batch, m, n)   a: (\[batch,\] m, k) or transposed   b: (\[batch,\] k, n) or transposed
///   bias: (n,)
/// `b` may be an f16 tensor ([`Gpu::upload_f16`], a frozen weight): it is widened to f32 on
/// load and the arithmetic stays f32. A quantized `b` ([`Dtype::Quant`]) runs
/// [`qmatmul`](super::qmatmul).
pub fn matmul(
    gpu: &Gpu,
    c: &Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    op: &MatmulOp,
) -> Result<Dispatch> {
    const OP: &str = "matmul";
    if let Dtype::Quant(_) = b.dtype() {
        return super::qmatmul::qmatmul(gpu, c, a, b, bias, op);
    }
    let mut variant = match gpu.variants().matmul {
        MatmulVariant::Auto => autotune::tuned(gpu, op)?,
        v => v,
    };
    let MatmulOp { m, n, k, batch, .. } = *op;
    expect_len(OP, "C", c, batch * m * n)?;
    let stride_a = batch_stride(OP, "A", a, m * k, batch)?;
    let stride_b = batch_stride(OP, "B", b, k * n, batch)?;
    if let Some(bias) = bias {
        expect_len(OP, "bias", bias, n)?;
    }
    let params = Params {
        m: u32_of("m", m)?,
        n: u32_of("n", n)?,
        k: u32_of("k", k)?,
        flags: u32::from(bias.is_some()) | (u32::from(op.accumulate) << 1),
        stride_a,
        stride_b,
        stride_c: u32_of("matmul stride", m * n)?,
        alpha: op.alpha,
    };
    if variant == MatmulVariant::Image {
        if let Some(d) = image::matmul(gpu, &params, c, a, b, bias, op)? {
            return Ok(d);
        }
        variant = MatmulVariant::Register;
    }
    let z = u32_of("batch", batch)?;
    let (kernel, constants, grid) = match variant {
        MatmulVariant::Tiled { tm, tn } => {
            let small = (1..=4).contains(&tm) && (1..=4).contains(&tn);
            if !small && (tm, tn) != (8, 8) {
                return Err(Error::invalid(
                    "matmul tile",
                    format!("{tm}x{tn}"),
                    "1..=4 per side, or 8x8 (the 128x128 block-tile kernel)",
                ));
            }
            let grid = [
                groups(n, 16 * tn as usize)?,
                groups(m, 16 * tm as usize)?,
                z,
            ];
            (&TILED, vec![("TM", tm as f64), ("TN", tn as f64)], grid)
        }
        MatmulVariant::Register => {
            if op.vec4_friendly() {
                (&VEC4, vec![], [groups(n, 64)?, groups(m, 64)?, z])
            } else {
                (&REGISTER, vec![], [groups(n, 256)?, groups(m, 4)?, z])
            }
        }
        MatmulVariant::Coop => {
            let Some(side) = gpu.features().coop_matrix else {
                return Err(Error::invalid(
                    "matmul variant",
                    "coop",
                    "the cooperative-matrix matmul needs GpuOptions::cooperative_matrix (--coopmat, \
                     LORA_WGPU_COOPMAT=1) on an adapter that offers it",
                ));
            };
            // Four subgroups per workgroup, each a 4x4-fragment tile of a 2x2-tile block.
            let block = 8 * side as usize;
            let grid = [groups(n, block)?, groups(m, block)?, z];
            let kernel = if side == 16 { &COOP16 } else { &COOP8 };
            let wg = f64::from(4 * gpu.info().subgroup_max_size);
            (kernel, vec![("WG", wg)], grid)
        }
        MatmulVariant::Auto | MatmulVariant::Image => unreachable!("resolved above"),
    };
    let mut constants = constants;
    constants.push(("TRANS_A", f64::from(u8::from(op.trans_a))));
    constants.push(("TRANS_B", f64::from(u8::from(op.trans_b))));
    let grid = if m == 0 || n == 0 || batch == 0 {
        [0, 0, 0]
    } else {
        grid
    };
    let kernel: &'static KernelDef = match b.dtype() {
        Dtype::F32 => kernel,
        Dtype::F16 if *kernel == TILED => &TILED_F16,
        Dtype::F16 if *kernel == REGISTER => &REGISTER_F16,
        Dtype::F16 if *kernel == COOP8 => &COOP8_F16,
        Dtype::F16 if *kernel == COOP16 => &COOP16_F16,
        Dtype::F16 => &VEC4_F16,
        Dtype::Quant(_) => unreachable!("sent to qmatmul above"),
    };
    let bias = bias.unwrap_or(gpu.dummy());
    gpu.dispatch(kernel, &constants, &params, &[a, b, bias, c], grid)
}
