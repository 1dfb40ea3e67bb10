//! `matmul.wgsl`: C = alpha · op(A) · op(B) (+ bias) (+ C), batched.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Dtype, Gpu, Kernel, MatmulVariant, Tensor};

use super::{expect_len, groups, u32_of};

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
/// load and the arithmetic stays f32.
pub fn matmul(
    gpu: &Gpu,
    variant: MatmulVariant,
    c: &Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    op: &MatmulOp,
) -> Result<Dispatch> {
    const OP: &str = "matmul";
    let mut variant = match variant {
        MatmulVariant::Auto => gpu.tuned_matmul(op)?,
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
        if let Some(d) = image(gpu, &params, c, a, b, bias, op)? {
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
            (
                Kernel::MatmulTiled,
                vec![("TM", tm as f64), ("TN", tn as f64)],
                grid,
            )
        }
        MatmulVariant::Register => {
            let kernel = if op.vec4_friendly() {
                Kernel::MatmulVec4
            } else {
                Kernel::MatmulRegister
            };
            let grid = if kernel == Kernel::MatmulVec4 {
                [groups(n, 64)?, groups(m, 64)?, z]
            } else {
                [groups(n, 256)?, groups(m, 4)?, z]
            };
            (kernel, vec![], grid)
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
            let kernel = if side == 16 {
                Kernel::MatmulCoop16
            } else {
                Kernel::MatmulCoop8
            };
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
    let kernel = match (b.dtype(), kernel) {
        (Dtype::F32, k) => k,
        (Dtype::F16, Kernel::MatmulTiled) => Kernel::MatmulTiledF16,
        (Dtype::F16, Kernel::MatmulRegister) => Kernel::MatmulRegisterF16,
        (Dtype::F16, Kernel::MatmulCoop8) => Kernel::MatmulCoop8F16,
        (Dtype::F16, Kernel::MatmulCoop16) => Kernel::MatmulCoop16F16,
        (Dtype::F16, _) => Kernel::MatmulVec4F16,
    };
    let bias = bias.unwrap_or(&gpu.dummy);
    gpu.dispatch(kernel, &constants, &params, &[a, b, bias, c], grid)
}

/// The image variant: pack op(A) and op(B) into storage textures (zero-padded to the kernel's
/// blocks: M to 32, K to 4, N to 64), then multiply them; one [`Dispatch`] that runs the packs
/// first. `None` for what it does not take (batches, empty shapes, a texture over the limit).
fn image(
    gpu: &Gpu,
    params: &Params,
    c: &Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    op: &MatmulOp,
) -> Result<Option<Dispatch>> {
    let MatmulOp { m, n, k, batch, .. } = *op;
    if batch != 1 || m == 0 || n == 0 || k == 0 {
        return Ok(None);
    }
    let (mp, kp, np) = (
        m.next_multiple_of(32),
        k.next_multiple_of(4),
        n.next_multiple_of(64),
    );
    let (wa, ha) = (u32_of("K / 4", kp / 4)?, u32_of("M", mp)?);
    let (wb, hb) = (u32_of("N / 4", np / 4)?, u32_of("K", kp)?);
    if !gpu.pack_texture_fits(wa, ha) || !gpu.pack_texture_fits(wb, hb) {
        return Ok(None);
    }
    let ta = gpu.pack_texture(0, wa, ha)?;
    let constants = [
        ("TRANS_A", f64::from(u8::from(op.trans_a))),
        ("TRANS_B", f64::from(u8::from(op.trans_b))),
    ];
    let pack = |kernel, t: &Tensor, view, w: usize, h: usize| {
        let grid = [groups(w, 8)?, groups(h, 8)?, 1];
        gpu.dispatch_with_textures(kernel, &constants, params, &[t], &[view], grid)
    };
    let pack_b = match b.dtype() {
        Dtype::F32 => Kernel::MatmulPackB,
        Dtype::F16 => Kernel::MatmulPackBF16,
    };
    let mut before = vec![pack(Kernel::MatmulPackA, a, &ta, kp / 4, mp)?];
    let tb = if op.frozen_b {
        // Packed once, now, into a texture of its own that lives as long as the weight.
        let key = (op.trans_b, k, n);
        match b.packed(&key) {
            Some(view) => view,
            None => {
                let view = gpu.new_pack_texture(wb, hb)?;
                gpu.run(&[&pack(pack_b, b, &view, np / 4, kp)?])?;
                b.keep_packed(key, view.clone());
                view
            }
        }
    } else {
        let tb = gpu.pack_texture(1, wb, hb)?;
        before.push(pack(pack_b, b, &tb, np / 4, kp)?);
        tb
    };
    let (kernel, grid) = if image_subgroups(gpu) {
        let grid = [u32_of("M / 16", mp / 16)?, u32_of("N / 64", np / 64)?, 1];
        (Kernel::MatmulImageSubgroup, grid)
    } else {
        let grid = [u32_of("N / 64", np / 64)?, u32_of("M / 32", mp / 32)?, 1];
        (Kernel::MatmulImage, grid)
    };
    let bias = bias.unwrap_or(&gpu.dummy);
    let d = gpu.dispatch_with_textures(kernel, &[], params, &[bias, c], &[&ta, &tb], grid)?;
    Ok(Some(d.after(before)))
}

/// Whether the image matmul can share op(B) through subgroups (`matmul_image_sg`): SUBGROUP
/// is enabled and every subgroup is exactly 8 invocations wide, as that kernel assumes
/// (llvmpipe on 256-bit vectors; elsewhere `matmul_image`).
pub fn image_subgroups(gpu: &Gpu) -> bool {
    let info = gpu.info();
    gpu.features().subgroup && info.subgroup_min_size == 8 && info.subgroup_max_size == 8
}

/// Pack a row-major (rows, cols) tensor (cols % 4 == 0) into pooled storage texture `slot`
/// (2 and up; 0 and 1 are the matmul's operands): texel (x, y) = t[y, 4x .. 4x+4]. The
/// dispatch that fills it and the texture; `None` past the adapter's texture size.
pub(crate) fn pack_rows(
    gpu: &Gpu,
    t: &Tensor,
    rows: usize,
    cols: usize,
    slot: u8,
) -> Result<Option<(Dispatch, wgpu::TextureView)>> {
    const OP: &str = "pack_rows";
    expect_len(OP, t.name(), t, rows * cols)?;
    let (h, w) = (rows.next_multiple_of(32), cols.div_ceil(4));
    let (tw, th) = (u32_of("cols / 4", w)?, u32_of("rows", h)?);
    if !gpu.pack_texture_fits(tw, th) {
        return Ok(None);
    }
    let view = gpu.pack_texture(slot, tw, th)?;
    let params = Params {
        m: u32_of("rows", rows)?,
        n: 0,
        k: u32_of("cols", cols)?,
        flags: 0,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        alpha: 1.0,
    };
    let grid = [groups(w, 8)?, groups(h, 8)?, 1];
    let d = gpu.dispatch_with_textures(Kernel::MatmulPackA, &[], &params, &[t], &[&view], grid)?;
    Ok(Some((d, view)))
}
