//! Recording the generator's passes: the embedding at the cached position, every block from
//! the model's block definition with attention over the KV cache, and the LM head on the last
//! row only.

use super::Generator;
use crate::error::Result;
use crate::gpu::{Gpu, Recording, Tensor};
use crate::kernels::decode::{self, DecodeShape};
use crate::kernels::dropout::Dropout;
use crate::kernels::layernorm;
use crate::kernels::lora::{self as lk, LoraShape};
use crate::kernels::matmul::{matmul, MatmulOp};
use crate::lora::Linear;
use crate::model::block::{self, Act, BlockRecorder, Dense, Place};

impl Generator {
    /// Record the forward pass of n new rows at the position in `acts.pos`, ending with the
    /// logits of the last row.
    pub(super) fn record(&self, gpu: &Gpu, n: usize) -> Result<Recording> {
        let cfg = &self.config;
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let a = &self.acts;
        let rows = |t: &Tensor, width: usize| t.view(t.name(), 0, &[n, width]);
        let tokens = a.tokens.view("tokens", 0, &[n])?;
        let res = [rows(&a.res[0], c)?, rows(&a.res[1], c)?];
        let mut r = DecodeRecorder {
            g: self,
            gpu,
            n,
            res: res.clone(),
            acts: self
                .places
                .iter()
                .map(|p| match *p {
                    Place::Scratch { width, index } => {
                        rows(&a.scratch[&(width, index)], width).map(Some)
                    }
                    _ => Ok(None),
                })
                .collect::<Result<Vec<_>>>()?,
            mean: a.mean.view("ln mean", 0, &[n])?,
            rstd: a.rstd.view("ln rstd", 0, &[n])?,
        };

        let mut rec = Recording::new();
        let wte: Vec<&Tensor> = self.wte.iter().collect();
        for d in decode::embedding(gpu, &res[0], &a.pos, &tokens, &wte, &self.wpe, c)? {
            rec.push(d);
        }
        for (l, weights) in self.blocks.iter().enumerate() {
            block::record_forward(gpu, &mut rec, &mut r, &self.def, weights, l, c, eps)?;
        }
        // The LM head on the last position only.
        let last = &res[self.blocks.len() % 2];
        rec.push(decode::copy_row(gpu, &a.last, last, n - 1, c)?);
        rec.push(layernorm::forward(
            gpu,
            &a.lnf,
            &a.lnf_mean,
            &a.lnf_rstd,
            &a.last,
            &self.ln_f.w,
            &self.ln_f.b,
            c,
            eps,
        )?);
        for (shard, (shard_rows, out)) in self.wte.iter().zip(&a.logit_views) {
            if c.is_multiple_of(4) {
                rec.push(decode::gemv_rows(gpu, out, &a.lnf, shard, c, *shard_rows)?);
            } else {
                rec.push(matmul(
                    gpu,
                    out,
                    &a.lnf,
                    shard,
                    None,
                    &MatmulOp::new(1, *shard_rows, c).trans_b().frozen_b(),
                )?);
            }
        }
        Ok(rec)
    }
}

/// Records blocks for n new rows: activations in the generator's scratch, attention over the
/// KV cache, and every adapter's low-rank term on its linear layers.
struct DecodeRecorder<'a> {
    g: &'a Generator,
    gpu: &'a Gpu,
    n: usize,
    /// The residual stream's two buffers, n rows each.
    res: [Tensor; 2],
    /// Views of n rows of each scratch activation.
    acts: Vec<Option<Tensor>>,
    mean: Tensor,
    rstd: Tensor,
}

impl BlockRecorder for DecodeRecorder<'_> {
    fn act(&self, layer: usize, act: Act) -> Tensor {
        let def = &self.g.def;
        if act == def.input {
            self.res[layer % 2].clone()
        } else if act == def.output {
            self.res[(layer + 1) % 2].clone()
        } else {
            self.acts[act]
                .clone()
                .expect("every activation but the residual is scratch")
        }
    }

    fn norm_stats(&self, _layer: usize, _op: usize) -> (Tensor, Tensor) {
        (self.mean.clone(), self.rstd.clone())
    }

    /// out = inp · W + b (+ every adapter's low-rank term), for n rows.
    fn linear(
        &mut self,
        rec: &mut Recording,
        layer: usize,
        site: Linear,
        out: &Tensor,
        inp: &Tensor,
        w: &Dense,
    ) -> Result<()> {
        let (gpu, n) = (self.gpu, self.n);
        let (d_in, d_out) = (w.w.shape()[0], w.w.shape()[1]);
        if n <= decode::GEMV_MAX_ROWS && d_in.is_multiple_of(4) && d_out.is_multiple_of(4) {
            rec.push(decode::gemv_cols(
                gpu,
                out,
                inp,
                &w.w,
                Some(&w.b),
                n,
                d_in,
                d_out,
            )?);
        } else {
            rec.push(matmul(
                gpu,
                out,
                inp,
                &w.w,
                Some(&w.b),
                &MatmulOp::new(n, d_out, d_in).frozen_b(),
            )?);
        }
        for ad in &self.g.adapters {
            for (_, _, a, b) in ad.modules.iter().filter(|m| m.0 == layer && m.1 == site) {
                let u = self.g.acts.u.view("lora u", 0, &[n, ad.r])?;
                let s = LoraShape {
                    m: n,
                    k: d_in,
                    n: d_out,
                    r: ad.r,
                };
                rec.push(lk::forward(
                    gpu,
                    out,
                    &u,
                    inp,
                    a,
                    b,
                    &s,
                    ad.scale,
                    &Dropout::NONE,
                )?);
            }
        }
        Ok(())
    }

    fn attention(
        &mut self,
        rec: &mut Recording,
        layer: usize,
        _op: usize,
        out: &Tensor,
        qkv: &Tensor,
    ) -> Result<()> {
        let (gpu, g) = (self.gpu, self.g);
        let cfg = &g.config;
        let shape = DecodeShape::mha(self.n, cfg.n_embd, cfg.n_head, g.ctx);
        let att = g
            .acts
            .att
            .view("attention probabilities", 0, &[self.n, cfg.n_head, g.ctx])?;
        let (k_cache, v_cache) = &g.caches[layer];
        rec.push(decode::kv_store(
            gpu,
            k_cache,
            v_cache,
            &g.acts.pos,
            qkv,
            &shape,
        )?);
        rec.push(decode::attention(
            gpu,
            out,
            &att,
            &g.acts.pos,
            qkv,
            k_cache,
            v_cache,
            &shape,
        )?);
        Ok(())
    }
}
