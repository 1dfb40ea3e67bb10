//! Recording the training graph's forward: embedding, every block from its definition, the
//! final LayerNorm, and the LM head fused with the cross-entropy's statistics and loss.

use super::linear::{adapter, Adapted, Builder};
use super::plan::{OpStats, Plan};
use crate::error::Result;
use crate::gpu::{Recording, Tensor};
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::cross_entropy as ce;
use crate::kernels::embedding;
use crate::kernels::layernorm;
use crate::lora::Linear;
use crate::model::block::{self, Act, BlockRecorder, Dense};
use crate::model::Gpt2;

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

    fn norm_stats(&self, layer: usize, op: usize) -> (Tensor, Tensor) {
        match &self.plan.blocks[layer].stats[op] {
            Some(OpStats::Norm { mean, rstd }) => (mean.clone(), rstd.clone()),
            _ => unreachable!("op {op} of the block is a LayerNorm with saved statistics"),
        }
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

/// Record the forward pass, from token ids to per-row losses.
pub(super) fn record(r: &mut TrainRecorder, model: &Gpt2) -> Result<Recording> {
    let gpu = r.bl.gpu;
    let plan = r.plan;
    let cfg = &model.config;
    let (c, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
    let mut fwd = Recording::new();
    let wte: Vec<&Tensor> = model.wte.iter().collect();
    let res0 = &plan.blocks[0].acts[model.block.input];
    for d in embedding::forward(gpu, res0, &plan.tokens, &wte, &model.wpe, plan.t, c)? {
        fwd.push(d);
    }
    for (l, weights) in model.blocks.iter().enumerate() {
        block::record_forward(gpu, &mut fwd, r, &model.block, weights, l, c, eps)?;
    }
    fwd.push(layernorm::forward(
        gpu,
        &plan.lnf,
        &plan.meanf,
        &plan.rstdf,
        &plan.last,
        &model.ln_f.w,
        &model.ln_f.b,
        c,
        eps,
    )?);
    for (i, (v0, _, lg)) in plan.shards.iter().enumerate() {
        fwd.push(plan.lm_head(gpu, model, i)?);
        fwd.push(ce::stats(gpu, &plan.st, lg, &plan.targets, *v0, i == 0)?);
    }
    fwd.push(ce::loss(gpu, &plan.loss_rows, &plan.st, &plan.targets)?);
    Ok(fwd)
}
