//! Recording the generator's passes: the embedding at the cached position, every block from
//! the model's block definition with attention over the KV cache, and the LM head on the last
//! row only.

use super::Generator;
use crate::error::Result;
use crate::gpu::{Dtype, Gpu, Recording, Tensor};
use crate::kernels::decode::{self, DecodeShape};
use crate::kernels::dora::{self, DoraShape};
use crate::kernels::dropout::Dropout;
use crate::kernels::lora::{self as lk, LoraShape};
use crate::kernels::matmul::{matmul, MatmulOp};
use crate::kernels::qmatmul;
use crate::kernels::rope::{self, RopeShape};
use crate::lora::Linear;
use crate::model::block::{self, Act, BlockRecorder, Dense, Op, Place};

impl Generator {
    /// Record the forward pass of n new rows at the position in `acts.pos`, ending with the
    /// logits of the last row.
    pub(super) fn record(&self, gpu: &Gpu, n: usize) -> Result<Recording> {
        let model = &self.model;
        let cfg = &model.config;
        let (c, eps) = (cfg.hidden_size(), cfg.norm_eps());
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
        };

        let mut rec = Recording::new();
        let wte: Vec<&Tensor> = model.embed.iter().collect();
        let wpe = model.wpe.as_ref();
        let embed = if model.embed_quantized() {
            qmatmul::embedding(gpu, &res[0], &tokens, &wte)?
        } else {
            decode::embedding(gpu, &res[0], &a.pos, &tokens, &wte, wpe, c)?
        };
        for d in embed {
            rec.push(d);
        }
        for (l, weights) in model.blocks.iter().enumerate() {
            block::record_forward(gpu, &mut rec, &mut r, &model.block, weights, l, eps)?;
        }
        // The LM head on the last position only.
        let last = &res[model.blocks.len() % 2];
        rec.push(decode::copy_row(gpu, &a.last, last, n - 1, c)?);
        rec.push(model.final_norm(gpu, &a.lnf, &a.lnf_mean, &a.lnf_rstd, &a.last)?);
        for (shard, (shard_rows, out)) in model.head_shards().iter().zip(&a.logit_views) {
            if c.is_multiple_of(4) && !matches!(shard.dtype(), Dtype::Quant(_)) {
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
}

impl BlockRecorder for DecodeRecorder<'_> {
    fn act(&self, layer: usize, act: Act) -> Tensor {
        let def = &self.g.model.block;
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

    fn norm_stats(&self, _layer: usize, op: usize) -> (Option<Tensor>, Tensor) {
        let def = &self.g.model.block;
        let rows = match def.ops[op] {
            Op::RmsNorm { inp, width, .. } => self.n * def.acts[inp].width / width,
            _ => self.n,
        };
        let a = &self.g.acts;
        let view = |t: &Tensor, what| t.view(what, 0, &[rows]).expect("rows fit the buffer");
        (Some(view(&a.mean, "norm mean")), view(&a.rstd, "norm rstd"))
    }

    fn rope(
        &mut self,
        rec: &mut Recording,
        _layer: usize,
        out: &Tensor,
        [q, k, v]: [&Tensor; 3],
    ) -> Result<()> {
        let g = self.g;
        let [cos, sin] = g
            .acts
            .rope
            .as_ref()
            .expect("a block with RoPE has its tables");
        let cfg = &g.model.config;
        let s = RopeShape {
            rows: self.n,
            t: self.n,
            nh: cfg.num_heads(),
            nkv: cfg.num_kv_heads(),
            hs: cfg.head_dim(),
        };
        rec.push(rope::forward(
            self.gpu,
            out,
            q,
            k,
            v,
            cos,
            sin,
            &g.acts.pos,
            &s,
        )?);
        Ok(())
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
        let (d_in, d_out) = w.dims();
        let modules: Vec<_> = self
            .g
            .adapters
            .iter()
            .flat_map(|ad| ad.modules.iter().map(move |m| (ad, m)))
            .filter(|(_, m)| m.layer == layer && m.linear == site)
            .collect();
        // With DoRA (then the only adapter) the bias comes after the rescaling.
        let dora = modules.iter().find_map(|(_, m)| m.dora.as_ref());
        let bias = if dora.is_some() { None } else { w.b.as_ref() };
        let quantized = matches!(w.w.dtype(), Dtype::Quant(_));
        if n <= decode::GEMV_MAX_ROWS
            && d_in.is_multiple_of(4)
            && d_out.is_multiple_of(4)
            && !quantized
        {
            rec.push(decode::gemv_cols(
                gpu, out, inp, &w.w, bias, n, d_in, d_out,
            )?);
        } else {
            rec.push(matmul(gpu, out, inp, &w.w, bias, &w.forward_op(n))?);
        }
        for (ad, m) in &modules {
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
                &m.a,
                &m.b,
                &s,
                ad.scale,
                &Dropout::NONE,
            )?);
        }
        if let (Some(norm), Some((ad, _))) = (dora, modules.first()) {
            let s = DoraShape {
                k: d_in,
                n: d_out,
                r: ad.r,
                rows: n,
            };
            rec.push(dora::scale(gpu, out, norm, w.b.as_ref(), None, &s)?);
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
        let cfg = &g.model.config;
        let shape = DecodeShape {
            n: self.n,
            nh: cfg.num_heads(),
            nkv: cfg.num_kv_heads(),
            hs: cfg.head_dim(),
            ctx: g.ctx,
        };
        let att = g
            .acts
            .att
            .view("attention probabilities", 0, &[self.n, shape.nh, g.ctx])?;
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
