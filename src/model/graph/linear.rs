//! Recording the training graph's linear layers: the frozen product and, where a LoRA adapter
//! sits, its low-rank terms (forward) and gradients (backward).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Recording, Tensor};
use crate::kernels::dropout::Dropout;
use crate::kernels::lora::{self as lk, LoraGrads, LoraShape};
use crate::kernels::matmul::{matmul, MatmulOp};
use crate::lora::{Linear, LoraEntry};
use crate::model::block::Dense;

/// One adapted module: its parameter and gradient views and its saved u = x·Aᵀ.
pub(super) struct Adapted {
    pub(super) index: usize,
    pub(super) entry: LoraEntry,
    pub(super) a: Tensor,
    pub(super) b: Tensor,
    pub(super) da: Tensor,
    pub(super) db: Tensor,
    pub(super) u: Tensor,
    pub(super) dropout: Dropout,
}

impl Adapted {
    /// The shape of this module's low-rank path over `m` rows.
    fn shape(&self, m: usize) -> LoraShape {
        LoraShape {
            m,
            k: self.entry.d_in,
            n: self.entry.d_out,
            r: self.a.shape()[0],
        }
    }
}

/// The adapter on linear layer `site` of block `layer`, if any.
pub(super) fn adapter(adapted: &[Adapted], layer: usize, site: Linear) -> Option<&Adapted> {
    adapted
        .iter()
        .find(|a| a.entry.layer == layer && a.entry.linear == site)
}

/// Allocates the graph's buffers (counting their bytes) and records its linear layers.
pub(super) struct Builder<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) allocated: u64,
    /// LoRA dispatches whose dropout mask moves every step, with their module index.
    pub(super) reseed: Vec<(usize, lk::Reseed)>,
}

impl<'a> Builder<'a> {
    pub(super) fn new(gpu: &'a Gpu) -> Self {
        Builder {
            gpu,
            allocated: 0,
            reseed: Vec::new(),
        }
    }

    /// A zero-filled tensor, counted in the graph's memory.
    pub(super) fn zeros(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.gpu.zeros(name, shape)?;
        self.allocated += t.bytes();
        Ok(t)
    }

    /// Scratch buffer `key` = (width, index) of `pool`, `rows` x width, made on first use and
    /// shared after that (`what` names it: "scratch" or "d scratch").
    pub(super) fn pooled(
        &mut self,
        pool: &mut BTreeMap<(usize, usize), Tensor>,
        what: &str,
        key: (usize, usize),
        rows: usize,
    ) -> Result<Tensor> {
        if let Some(t) = pool.get(&key) {
            return Ok(t.clone());
        }
        let (width, index) = key;
        let t = self.zeros(&format!("{what} {index} (B·T, {width})"), &[rows, width])?;
        pool.insert(key, t.clone());
        Ok(t)
    }

    /// Append a dispatch of a LoRA module; with dropout on, keep a handle to move the mask of
    /// those that read it every step.
    fn push_lora(
        &mut self,
        rec: &mut Recording,
        d: Dispatch,
        l: &Adapted,
        s: LoraShape,
        scale: f32,
        accumulate: bool,
    ) {
        if l.dropout.p > 0.0 && lk::reads_dropout_mask(d.kernel()) {
            let d = Arc::new(d);
            rec.push_shared(d.clone());
            self.reseed
                .extend(lk::Reseed::new(d, s, scale, l.dropout, accumulate).map(|r| (l.index, r)));
        } else {
            rec.push(d);
        }
    }

    /// out = inp · W + b, then out += scale · lora(inp) when the module is adapted (with the
    /// module's dropout when `train`, without it otherwise). inp: (m, in), out: (m, out).
    pub(super) fn linear(
        &mut self,
        rec: &mut Recording,
        out: &Tensor,
        inp: &Tensor,
        d: &Dense,
        lora: Option<&Adapted>,
        m: usize,
        scale: f32,
        train: bool,
    ) -> Result<()> {
        let (d_in, d_out) = (d.w.shape()[0], d.w.shape()[1]);
        rec.push(matmul(
            self.gpu,
            out,
            inp,
            &d.w,
            d.b.as_ref(),
            &MatmulOp::new(m, d_out, d_in).frozen_b(),
        )?);
        if let Some(l) = lora {
            let s = l.shape(m);
            let dropout = if train { l.dropout } else { Dropout::NONE };
            let d = lk::forward(self.gpu, out, &l.u, inp, &l.a, &l.b, &s, scale, &dropout)?;
            if train {
                self.push_lora(rec, d, l, s, scale, false);
            } else {
                rec.push(d);
            }
        }
        Ok(())
    }

    /// Backward of a linear layer: its LoRA gradients (if adapted, accumulated) and, when
    /// `dinp` = (buffer, accumulate) is given, the gradient at its input, dout · Wᵀ (+ the
    /// LoRA path's dx), written or, with accumulate, added.
    pub(super) fn linear_backward(
        &mut self,
        rec: &mut Recording,
        dinp: Option<(&Tensor, bool)>,
        du: &Tensor,
        dout: &Tensor,
        inp: &Tensor,
        d: &Dense,
        lora: Option<&Adapted>,
        m: usize,
        scale: f32,
    ) -> Result<()> {
        let (d_in, d_out) = (d.w.shape()[0], d.w.shape()[1]);
        if let Some((dinp, accumulate)) = dinp {
            let mut op = MatmulOp::new(m, d_in, d_out).trans_b().frozen_b();
            op.accumulate = accumulate;
            rec.push(matmul(self.gpu, dinp, dout, &d.w, None, &op)?);
        }
        if let Some(l) = lora {
            let s = l.shape(m);
            let g = LoraGrads {
                dx: dinp.map(|(d, _)| d),
                da: &l.da,
                db: &l.db,
                du,
            };
            let ds = lk::backward(
                self.gpu, g, dout, inp, &l.a, &l.b, &l.u, &s, scale, &l.dropout, true,
            )?;
            for d in ds {
                self.push_lora(rec, d, l, s, scale, true);
            }
        }
        Ok(())
    }
}
