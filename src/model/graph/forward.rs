//! Recording the training graph's forward: embedding, every block from its definition, the
//! final norm, and the LM head fused with the cross-entropy's statistics and loss.

use super::linear::{adapter, Adapted, Builder};
use super::plan::{OpStats, Plan};
use crate::error::Result;
use crate::gpu::{Recording, Tensor};
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::cross_entropy as ce;
use crate::kernels::rope::{self, RopeShape};
use crate::kernels::{embedding, qmatmul};
use crate::lora::Linear;
use crate::model::block::{self, Act, BlockRecorder, BlockWeights, Dense};
use crate::model::Transformer;

/// Records blocks into a training graph's buffers: the plan's activations, LoRA with dropout
/// when `train`.
pub(super) struct TrainRecorder<'a, 'g> {
    pub(super) bl: &'a mut Builder<'g>,
    pub(super) plan: &'a Plan,
    pub(super) adapted: &'a [Adapted],
    pub(super) scale: f32,
    pub(super) train: bool,
    pub(super) shape: AttentionShape,
}

impl BlockRecorder for TrainRecorder<'_, '_> {
    fn act(&self, layer: usize, act: Act) -> Tensor {
        self.plan.blocks[layer].acts[act].clone()
    }

    fn norm_stats(&self, layer: usize, op: usize) -> (Option<Tensor>, Tensor) {
        match &self.plan.blocks[layer].stats[op] {
            Some(OpStats::Norm { mean, rstd }) => (mean.clone(), rstd.clone()),
            _ => unreachable!("op {op} of the block is a norm with saved statistics"),
        }
    }

    fn rope(
        &mut self,
        rec: &mut Recording,
        _layer: usize,
        out: &Tensor,
        [q, k, v]: [&Tensor; 3],
    ) -> Result<()> {
        let [cos, sin, pos] = self
            .plan
            .rope
            .as_ref()
            .expect("a block with RoPE has its tables");
        let s = self.rope_shape();
        rec.push(rope::forward(self.bl.gpu, out, q, k, v, cos, sin, pos, &s)?);
        Ok(())
    }

    fn linear(
        &mut self,
        rec: &mut Recording,
        layer: usize,
        site: Linear,
        out: &Tensor,
        inp: &Tensor,
        w: &Dense,
    ) -> Result<()> {
        let lora = adapter(self.adapted, layer, site);
        let m = self.plan.rows();
        self.bl
            .linear(rec, out, inp, w, lora, m, self.scale, self.train)
    }

    fn attention(
        &mut self,
        rec: &mut Recording,
        layer: usize,
        op: usize,
        out: &Tensor,
        qkv: &Tensor,
    ) -> Result<()> {
        let Some(OpStats::Attention { lse }) = &self.plan.blocks[layer].stats[op] else {
            unreachable!("op {op} of the block is attention with a saved log-sum-exp");
        };
        rec.push(attention::forward(self.bl.gpu, out, lse, qkv, &self.shape)?);
        Ok(())
    }
}

impl TrainRecorder<'_, '_> {
    /// The rotary embedding's shape over the graph's rows.
    pub(super) fn rope_shape(&self) -> RopeShape {
        let s = &self.shape;
        RopeShape {
            rows: self.plan.rows(),
            t: self.plan.t,
            nh: s.nh,
            nkv: s.nkv,
            hs: s.hs,
        }
    }
}

/// Record the forward pass, from token ids to per-row losses.
pub(super) fn record(r: &mut TrainRecorder, model: &Transformer) -> Result<Recording> {
    let gpu = r.bl.gpu;
    let plan = r.plan;
    let cfg = &model.config;
    let (c, eps) = (cfg.hidden_size(), cfg.norm_eps());
    let mut fwd = Recording::new();
    let weight = |l: usize, s| &model.blocks[l].linear(s).w;
    r.bl.dora_norms(&mut fwd, r.adapted, weight, r.scale)?;
    let wte: Vec<&Tensor> = model.embed.iter().collect();
    let res0 = &plan.blocks[0].acts[model.block.input];
    let wpe = model.wpe.as_ref();
    let embed = if model.embed_quantized() {
        qmatmul::embedding(gpu, res0, &plan.tokens, &wte)?
    } else {
        embedding::forward(gpu, res0, &plan.tokens, &wte, wpe, plan.t, c)?
    };
    for d in embed {
        fwd.push(d);
    }
    for (l, weights) in model.blocks.iter().enumerate() {
        block::record_forward(gpu, &mut fwd, r, &model.block, weights, l, eps)?;
    }
    fwd.push(model.final_norm(gpu, &plan.lnf, &plan.meanf, &plan.rstdf, &plan.last)?);
    for (i, (v0, _, lg)) in plan.shards.iter().enumerate() {
        fwd.push(plan.lm_head(gpu, model, i)?);
        fwd.push(ce::stats(gpu, &plan.st, lg, &plan.targets, *v0, i == 0)?);
    }
    fwd.push(ce::loss(gpu, &plan.loss_rows, &plan.st, &plan.targets)?);
    Ok(fwd)
}
