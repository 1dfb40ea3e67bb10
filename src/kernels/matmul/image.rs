//! The image matmul ([`MatmulVariant::Image`](super::MatmulVariant::Image)): operands packed
//! into storage textures, then multiplied with texture loads. Also packs other kernels' row-major
//! inputs (`pack_rows`, the image attention).
//!
//! Packed textures come from the [`Gpu`]'s pool by slot: [`A_SLOT`] and [`B_SLOT`] here, other
//! kernels' slots beside them (`attention`). A frozen B is packed once into a texture of its
//! own, kept with the tensor.

use crate::error::Result;
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{Dispatch, Dtype, Gpu, KernelDef, Tensor};

use super::super::{expect_len, groups, u32_of};
use super::{MatmulOp, Params, PARAMS, SHADER, SHADER_F16};

/// Pool slot of the packed op(A).
pub const A_SLOT: u8 = 0;
/// Pool slot of the packed op(B) (when B is not frozen).
pub const B_SLOT: u8 = 1;

/// Pack op(A) into an rgba32float storage texture (also `pack_rows`).
pub const PACK_A: KernelDef =
    KernelDef::new(&SHADER, "matmul_pack_a", &[(1, R)], PARAMS).textures(&[(7, W)]);
/// Pack op(B) into an rgba32float storage texture.
pub const PACK_B: KernelDef =
    KernelDef::new(&SHADER, "matmul_pack_b", &[(2, R)], PARAMS).textures(&[(7, W)]);
/// [`PACK_B`] with B stored as f16.
pub const PACK_B_F16: KernelDef = PACK_B.in_shader(&SHADER_F16).f16(2);
/// Matmul of two packed operand textures (CPU adapters).
pub const IMAGE: KernelDef =
    KernelDef::new(&SHADER, "matmul_image", &[(3, R), (4, W)], PARAMS).textures(&[(8, R), (9, R)]);
/// `matmul.wgsl` + `matmul_image_sg.wgsl`: the image matmul sharing op(B) through 8-wide
/// subgroups (`SUBGROUP`).
pub const SHADER_SG: crate::gpu::ShaderDef =
    crate::gpu::ShaderDef::built("matmul_image_sg.wgsl", sg_source).trusted();
/// [`IMAGE`] with op(B) shared through 8-wide subgroups (llvmpipe).
pub const IMAGE_SG: KernelDef =
    KernelDef::new(&SHADER_SG, "matmul_image_sg", &[(3, R), (4, W)], PARAMS)
        .textures(&[(8, R), (9, R)]);

fn sg_source() -> String {
    format!(
        "{}\n{}",
        include_str!("../../../shaders/matmul.wgsl"),
        include_str!("../../../shaders/matmul_image_sg.wgsl")
    )
}

/// The image variant: pack op(A) and op(B) into storage textures (zero-padded to the kernel's
/// blocks: M to 32, K to 4, N to 64), then multiply them; one [`Dispatch`] that runs the packs
/// first. `None` for what it does not take (batches, empty shapes, a texture over the limit).
pub(super) fn matmul(
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
    if !gpu.texture_fits(wa, ha) || !gpu.texture_fits(wb, hb) {
        return Ok(None);
    }
    let ta = gpu.pooled_texture(A_SLOT, wa, ha)?;
    let constants = [
        ("TRANS_A", f64::from(u8::from(op.trans_a))),
        ("TRANS_B", f64::from(u8::from(op.trans_b))),
    ];
    let pack = |kernel: &'static KernelDef, t: &Tensor, view, w: usize, h: usize| {
        let grid = [groups(w, 8)?, groups(h, 8)?, 1];
        gpu.dispatch_with_textures(kernel, &constants, params, &[t], &[view], grid)
    };
    let pack_b = match b.dtype() {
        Dtype::F32 => &PACK_B,
        Dtype::F16 => &PACK_B_F16,
        Dtype::Quant(_) => return Ok(None),
    };
    let mut before = vec![pack(&PACK_A, a, &ta, kp / 4, mp)?];
    let tb = if op.frozen_b {
        // Packed once, now, into a texture of its own that lives as long as the weight.
        let key = format!("matmul packed B (trans {}, k {k}, n {n})", op.trans_b);
        match b.derived(&key) {
            Some(view) => view,
            None => {
                let view = gpu.new_texture(wb, hb)?;
                gpu.run(&[&pack(pack_b, b, &view, np / 4, kp)?])?;
                b.keep_derived(key, view.clone());
                view
            }
        }
    } else {
        let tb = gpu.pooled_texture(B_SLOT, wb, hb)?;
        before.push(pack(pack_b, b, &tb, np / 4, kp)?);
        tb
    };
    let (kernel, grid) = if image_subgroups(gpu) {
        let grid = [u32_of("M / 16", mp / 16)?, u32_of("N / 64", np / 64)?, 1];
        (&IMAGE_SG, grid)
    } else {
        let grid = [u32_of("N / 64", np / 64)?, u32_of("M / 32", mp / 32)?, 1];
        (&IMAGE, grid)
    };
    let bias = bias.unwrap_or(gpu.dummy());
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
/// (not [`A_SLOT`] or [`B_SLOT`]): texel (x, y) = t[y, 4x .. 4x+4]. The
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
    if !gpu.texture_fits(tw, th) {
        return Ok(None);
    }
    let view = gpu.pooled_texture(slot, tw, th)?;
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
    let d = gpu.dispatch_with_textures(&PACK_A, &[], &params, &[t], &[&view], grid)?;
    Ok(Some((d, view)))
}
