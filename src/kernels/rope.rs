//! `rope.wgsl`: rotary position embedding (Hugging Face's rotate_half convention) of q and k,
//! fused with packing q, k and v into the qkv rows attention reads; its transpose for the
//! backward; and [`tables`], the host-side cos / sin tables the kernels read.

use crate::error::{Error, Result};
use crate::gpu::Access::{Read as R, ReadWrite as W};
use crate::gpu::{groups_1d, Dispatch, Gpu, KernelDef, ShaderDef, Tensor};

use super::{expect_len, groups, u32_of};

/// Shape of one rope call: `rows` rows of `nh` query heads and `nkv` key / value heads of size
/// `hs`; row r is at position `pos[0] + r % t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeShape {
    /// Rows: B·T when training, the new rows when decoding.
    pub rows: usize,
    /// Sequence length: positions restart every `t` rows.
    pub t: usize,
    /// Query heads.
    pub nh: usize,
    /// Key / value heads (grouped-query attention: `nh` is a multiple of it).
    pub nkv: usize,
    /// Head size; must be even.
    pub hs: usize,
}

impl RopeShape {
    /// Width of a qkv row: (nh + 2·nkv)·hs.
    pub fn qkv_width(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hs
    }

    /// Check the shape and the tensors common to both directions (the tables and `pos`);
    /// return the number of qkv elements.
    fn check(&self, op: &'static str, cos: &Tensor, sin: &Tensor, pos: &Tensor) -> Result<usize> {
        if self.hs == 0 || !self.hs.is_multiple_of(2) {
            return Err(Error::shape(
                op,
                format!("head size {} must be even and positive", self.hs),
            ));
        }
        if self.t == 0 {
            return Err(Error::shape(op, "sequence length t must be positive"));
        }
        let half = self.hs / 2;
        if !cos.len().is_multiple_of(half) {
            return Err(Error::shape(
                op,
                format!(
                    "cos ({}) has {} elements, not a multiple of hs/2 = {half}",
                    cos.name(),
                    cos.len()
                ),
            ));
        }
        expect_len(op, "sin", sin, cos.len())?;
        expect_len(op, "pos", pos, 1)?;
        Ok(self.rows * self.qkv_width())
    }

    fn params(&self, n: usize) -> Result<Params> {
        Ok(Params {
            n: u32_of("qkv elements", n)?,
            t: u32_of("T", self.t)?,
            nh: u32_of("heads", self.nh)?,
            nkv: u32_of("kv heads", self.nkv)?,
            hs: u32_of("head size", self.hs)?,
            _pad: [0; 3],
        })
    }
}

/// Mirrors `struct Params` in rope.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    n: u32,
    t: u32,
    nh: u32,
    nkv: u32,
    hs: u32,
    _pad: [u32; 3],
}

/// `rope.wgsl`.
pub const SHADER: ShaderDef = ShaderDef::text("rope.wgsl", include_str!("../../shaders/rope.wgsl"));
const PARAMS: usize = std::mem::size_of::<Params>();
/// Rope forward: pos, cos, sin, q, k, v, qkv.
pub const FORWARD: KernelDef = KernelDef::new(
    &SHADER,
    "rope_forward",
    &[(1, R), (2, R), (3, R), (4, R), (5, R), (6, R), (7, W)],
    PARAMS,
);
/// Rope backward: pos, cos, sin, dqkv, dq, dk, dv.
pub const BACKWARD: KernelDef = KernelDef::new(
    &SHADER,
    "rope_backward",
    &[(1, R), (2, R), (3, R), (8, R), (9, W), (10, W), (11, W)],
    PARAMS,
);
/// Every kernel of this file.
pub const KERNELS: &[&KernelDef] = &[&FORWARD, &BACKWARD];

/// qkv = [rope(q) | rope(k) | v] row by row: q and k rotated by the angles of each row's
/// position, v copied.
///   qkv: (rows, (nh + 2·nkv)·hs)   q: (rows, nh·hs)   k, v: (rows, nkv·hs)
///   cos, sin: (P, hs/2), from [`tables`]   pos: (1,) u32, the position of row 0
/// Positions `pos[0] .. pos[0] + t` must be rows of the tables (the caller's check: `pos` is
/// only known on the device).
pub fn forward(
    gpu: &Gpu,
    qkv: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    pos: &Tensor,
    s: &RopeShape,
) -> Result<Dispatch> {
    const OP: &str = "rope::forward";
    let n = s.check(OP, cos, sin, pos)?;
    expect_len(OP, "qkv", qkv, n)?;
    expect_len(OP, "q", q, s.rows * s.nh * s.hs)?;
    expect_len(OP, "k", k, s.rows * s.nkv * s.hs)?;
    expect_len(OP, "v", v, s.rows * s.nkv * s.hs)?;
    let t = [pos, cos, sin, q, k, v, qkv];
    gpu.dispatch(&FORWARD, &[], &s.params(n)?, &t, groups_1d(groups(n, 256)?))
}

/// The gradients of [`forward`] in one dispatch, written (not added): dq and dk are the q and
/// k parts of dqkv rotated back (Rᵀ), dv is its v part.
///   dq: (rows, nh·hs)   dk, dv: (rows, nkv·hs)   dqkv: (rows, (nh + 2·nkv)·hs)
///   cos, sin: (P, hs/2)   pos: (1,) u32
pub fn backward(
    gpu: &Gpu,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
    dqkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    pos: &Tensor,
    s: &RopeShape,
) -> Result<Dispatch> {
    const OP: &str = "rope::backward";
    let n = s.check(OP, cos, sin, pos)?;
    expect_len(OP, "dqkv", dqkv, n)?;
    expect_len(OP, "dq", dq, s.rows * s.nh * s.hs)?;
    expect_len(OP, "dk", dk, s.rows * s.nkv * s.hs)?;
    expect_len(OP, "dv", dv, s.rows * s.nkv * s.hs)?;
    let t = [pos, cos, sin, dqkv, dq, dk, dv];
    gpu.dispatch(
        &BACKWARD,
        &[],
        &s.params(n)?,
        &t,
        groups_1d(groups(n, 256)?),
    )
}

/// The cos and sin tables, each (positions, hs/2) row-major, for `inv_freq` (hs/2 inverse
/// frequencies), as transformers builds them: the angle `(p as f32) * inv_freq[i]` is rounded
/// to f32, then its cos and sin are evaluated in f64 and rounded to f32. The tables come from
/// the host because WGSL's sin and cos lose accuracy on large arguments.
pub fn tables(inv_freq: &[f32], positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for &f in inv_freq {
            let angle = (p as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}
