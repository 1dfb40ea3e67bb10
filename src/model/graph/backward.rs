//! Recording the training graph's backward: the fused classifier's gradient through the LM
//! head and the final LayerNorm, then each block's ops in reverse, from the last block down to
//! the first adapted linear layer (nothing below it is trainable).
//!
//! Frozen weights get no gradient; only the LoRA A and B do (accumulated, so that the
//! micro-batches of a step add up). The residual stream's gradient is one buffer: an `Add`
//! passes its output's gradient to both inputs unchanged, and LayerNorm's backward adds into
//! it. Every other gradient lives in scratch shared by all blocks.

use std::collections::BTreeMap;

use super::forward::TrainRecorder;
use super::linear::adapter;
use super::plan::OpStats;
use crate::error::Result;
use crate::gpu::{Recording, Tensor};
use crate::kernels::cross_entropy as ce;
use crate::kernels::matmul::{matmul, MatmulOp};
use crate::kernels::{attention, elementwise, layernorm};
use crate::model::block::{self, share_scratch, Act, BlockRecorder, BlockWeights, Op};
use crate::model::Gpt2;

/// Record the backward of the last forward into `grads` (the flat LoRA gradients): returns
/// (the recording that zeroes them, the backward itself).
pub(super) fn record(
    r: &mut TrainRecorder,
    model: &Gpt2,
    grads: &Tensor,
    rank: usize,
) -> Result<(Recording, Recording)> {
    let gpu = r.bl.gpu;
    let plan = r.plan;
    let def = &model.block;
    let cfg = &model.config;
    let (b, t, c, nh, bt) = (plan.b, plan.t, cfg.n_embd, cfg.n_head, plan.rows());
    let mut clear_grads = Recording::new();
    clear_grads.clear(grads);

    // Gradient buffers: the residual stream's, and scratch by liveness over the reversed ops.
    let residual = def.grad_root(def.output);
    let dres = r.bl.zeros("d residual", &[bt, c])?;
    let steps = def.grad_steps();
    let eligible: Vec<bool> = (0..def.acts.len()).map(|a| a != residual).collect();
    let slots = share_scratch(&steps, &def.widths(), &eligible);
    let mut pool: BTreeMap<(usize, usize), Tensor> = BTreeMap::new();
    let mut grad = Vec::with_capacity(def.acts.len());
    for a in 0..def.acts.len() {
        let root = def.grad_root(a);
        grad.push(match slots[root] {
            Some(key) if root != residual => Some(r.bl.pooled(&mut pool, "d scratch", key, bt)?),
            _ if root == residual => Some(dres.clone()),
            _ => None,
        });
    }
    // The LM head's gradient into ln_f's output: any width-C scratch (nothing else is live).
    let dlnf = r.bl.pooled(&mut pool, "d scratch", (c, 0), bt)?;
    let du = r.bl.zeros("d u", &[bt, rank])?;
    let dstat = r.bl.zeros("attn rowsum(dout ⊙ out)", &[b, nh, t])?;
    let shape = r.shape;
    let g = |a: Act| {
        grad[a]
            .clone()
            .expect("every input of an op has a gradient buffer")
    };

    let mut bwd = Recording::new();
    bwd.clear(&dres);
    for (i, ((v0, rows, lg), shard)) in plan.shards.iter().zip(&model.wte).enumerate() {
        if !plan.store_logits {
            bwd.push(plan.lm_head(gpu, model, i)?);
        }
        bwd.push(ce::grad(
            gpu,
            lg,
            &plan.st,
            &plan.targets,
            &plan.dloss,
            *v0,
        )?);
        let mut op = MatmulOp::new(bt, c, *rows).frozen_b();
        op.accumulate = i > 0;
        bwd.push(matmul(gpu, &dlnf, lg, shard, None, &op)?);
    }
    bwd.push(layernorm::backward(
        gpu,
        &dres,
        &dlnf,
        &plan.last,
        &model.ln_f.w,
        &plan.meanf,
        &plan.rstdf,
        c,
    )?);

    let per_block = def.ops.len();
    for (l, weights) in model.blocks.iter().enumerate().rev() {
        for (i, op) in def.ops.iter().enumerate().rev() {
            let p = l * per_block + i;
            if p < plan.first {
                return Ok((clear_grads, bwd));
            }
            let x = |a: Act| r.act(l, a);
            match *op {
                Op::Linear { out, inp, site } => {
                    let lora = adapter(r.adapted, l, site);
                    if lora.is_some() && def.recomputed(inp) {
                        let producer = def
                            .producer(inp)
                            .expect("a recomputed activation has a producer");
                        let eps = cfg.layer_norm_epsilon;
                        block::record_op(gpu, &mut bwd, r, def, weights, l, producer, c, eps)?;
                    }
                    let dinp = (plan.first < p).then(|| g(inp));
                    r.bl.linear_backward(
                        &mut bwd,
                        dinp.as_ref(),
                        &du,
                        &g(out),
                        &r.act(l, inp),
                        weights.linear(site),
                        lora,
                        bt,
                        r.scale,
                    )?;
                }
                Op::LayerNorm { out, inp, norm } => {
                    let Some(OpStats::Norm { mean, rstd }) = &plan.blocks[l].stats[i] else {
                        unreachable!("a LayerNorm saves its statistics");
                    };
                    let w = weights.norm(norm);
                    bwd.push(layernorm::backward(
                        gpu,
                        &g(inp),
                        &g(out),
                        &x(inp),
                        &w.w,
                        mean,
                        rstd,
                        c,
                    )?);
                }
                Op::Attention { out, qkv } => {
                    let Some(OpStats::Attention { lse }) = &plan.blocks[l].stats[i] else {
                        unreachable!("attention saves its log-sum-exp");
                    };
                    for d in attention::backward(
                        gpu,
                        &g(qkv),
                        &dstat,
                        &g(out),
                        &x(qkv),
                        &x(out),
                        lse,
                        &shape,
                    )? {
                        bwd.push(d);
                    }
                }
                Op::Gelu { out, inp } => {
                    bwd.push(elementwise::gelu_backward(gpu, &g(inp), &g(out), &x(inp))?);
                }
                Op::Add { .. } => {}
            }
            if p == plan.first {
                return Ok((clear_grads, bwd));
            }
        }
    }
    Ok((clear_grads, bwd))
}
