//! Recording the training graph's linear layers: the frozen product and, where a LoRA adapter
//! sits, its low-rank terms (forward) and gradients (backward).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Recording, Tensor};
use crate::kernels::dora::{self, DoraNorm, DoraShape};
use crate::kernels::dropout::Dropout;
use crate::kernels::lora::{self as lk, LoraGrads, LoraShape};
use crate::kernels::matmul::matmul;
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
    /// DoRA's state, when the adapter uses it.
    pub(super) dora: Option<DoraState>,
}

/// One DoRA module's buffers.
pub(super) struct DoraState {
    /// Magnitude (d_out,) and its gradient: views of the flat parameters and gradients.
    pub(super) m: Tensor,
    pub(super) dm: Tensor,
    /// [c | wn] (2 · d_out,), computed at the start of every forward by `plan`.
    pub(super) norm: Tensor,
    pub(super) plan: DoraNorm,
    /// The layer's output before DoRA's rescaling, (rows, d_out), saved for dm (training
    /// graphs only).
    pub(super) u: Option<Tensor>,
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

    /// The shape of this module's DoRA kernels over `rows` rows.
    pub(super) fn dora_shape(&self, rows: usize) -> DoraShape {
        DoraShape {
            k: self.entry.d_in,
            n: self.entry.d_out,
            r: self.a.shape()[0],
            rows,
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
    /// DoRA's gradient at u, (rows, width) by width, shared by every module of that width.
    dora_du: BTreeMap<usize, Tensor>,
}

impl<'a> Builder<'a> {
    pub(super) fn new(gpu: &'a Gpu) -> Self {
        Builder {
            gpu,
            allocated: 0,
            reseed: Vec::new(),
            dora_du: BTreeMap::new(),
        }
    }

    /// A module's [`DoraNorm`] (its ‖W‖² computed now), counted in the graph's memory.
    pub(super) fn dora_norm(
        &mut self,
        name: &str,
        w: &Tensor,
        e: &LoraEntry,
        r: usize,
    ) -> Result<DoraNorm> {
        let s = DoraShape {
            k: e.d_in,
            n: e.d_out,
            r,
            rows: 0,
        };
        let plan = DoraNorm::new(self.gpu, name, w, &s)?;
        self.allocated += plan.bytes();
        Ok(plan)
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
        let dora = lora.and_then(|l| l.dora.as_ref());
        // With DoRA the bias comes after the rescaling.
        let bias = if dora.is_some() { None } else { d.b.as_ref() };
        rec.push(matmul(self.gpu, out, inp, &d.w, bias, &d.forward_op(m))?);
        if let Some(l) = lora {
            let s = l.shape(m);
            let dropout = if train { l.dropout } else { Dropout::NONE };
            let dsp = lk::forward(self.gpu, out, &l.u, inp, &l.a, &l.b, &s, scale, &dropout)?;
            if train {
                self.push_lora(rec, dsp, l, s, scale, false);
            } else {
                rec.push(dsp);
            }
            if let Some(st) = &l.dora {
                let save = if train { st.u.as_ref() } else { None };
                let s = l.dora_shape(m);
                rec.push(dora::scale(
                    self.gpu,
                    out,
                    &st.norm,
                    d.b.as_ref(),
                    save,
                    &s,
                )?);
            }
        }
        Ok(())
    }

    /// DoRA's weight norms and scales of every DoRA module, from the current parameters:
    /// recorded at the start of each forward (`weight(layer, site)` is the module's frozen
    /// weight).
    pub(super) fn dora_norms<'w>(
        &self,
        rec: &mut Recording,
        adapted: &[Adapted],
        weight: impl Fn(usize, Linear) -> &'w Tensor,
        scale: f32,
    ) -> Result<()> {
        for l in adapted {
            if let Some(st) = &l.dora {
                let w = weight(l.entry.layer, l.entry.linear);
                for d in st
                    .plan
                    .record(self.gpu, &st.norm, &st.m, w, &l.a, &l.b, scale)?
                {
                    rec.push(d);
                }
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
        let d_out = d.dims().1;
        // DoRA: the magnitude's gradient, and the gradient at u = c ∘ dout, which the rest of
        // the backward takes in place of dout.
        let du_dora;
        let dout = match lora.and_then(|l| l.dora.as_ref().map(|st| (l, st))) {
            Some((l, st)) => {
                du_dora = match self.dora_du.get(&d_out) {
                    Some(t) => t.clone(),
                    None => {
                        let t = self.zeros(&format!("dora du (B·T, {d_out})"), &[m, d_out])?;
                        self.dora_du.insert(d_out, t.clone());
                        t
                    }
                };
                let u = st.u.as_ref().expect("a training graph saves DoRA's u");
                let s = l.dora_shape(m);
                rec.push(dora::backward(
                    self.gpu, &st.dm, &du_dora, dout, u, &st.norm, &s, true,
                )?);
                &du_dora
            }
            None => dout,
        };
        if let Some((dinp, accumulate)) = dinp {
            let mut op = d.input_grad_op(m);
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
