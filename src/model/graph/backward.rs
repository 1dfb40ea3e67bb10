//! Recording the training graph's backward: the fused classifier's gradient through the LM
//! head and the final norm, then each block's ops in reverse, from the last block down to
//! the first adapted linear layer (nothing below it is trainable).
//!
//! Frozen weights get no gradient; only the LoRA A and B do (accumulated, so that the
//! micro-batches of a step add up). The residual stream's gradient is one buffer: an `Add`
//! passes its output's gradient to both inputs unchanged, and a norm's backward adds into
//! it. Every other gradient lives in scratch shared by all blocks; an activation read by
//! several ops (q, k and v read one norm's output) gets the first gradient written and the
//! others added.

use std::collections::BTreeMap;

use super::forward::TrainRecorder;
use super::linear::adapter;
use super::plan::OpStats;
use crate::error::Result;
use crate::gpu::{Recording, Tensor};
use crate::kernels::cross_entropy as ce;
use crate::kernels::matmul::{matmul, MatmulOp};
use crate::kernels::{attention, elementwise, layernorm, rmsnorm, rope, swiglu};
use crate::model::block::{self, share_scratch, Act, BlockRecorder, BlockWeights, Op};
use crate::model::Transformer;

/// Record the backward of the last forward into `grads` (the flat LoRA gradients): returns
/// (the recording that zeroes them, the backward itself).
pub(super) fn record(
    r: &mut TrainRecorder,
    model: &Transformer,
    grads: &Tensor,
    rank: usize,
) -> Result<(Recording, Recording)> {
    let gpu = r.bl.gpu;
    let plan = r.plan;
    let def = &model.block;
    let cfg = &model.config;
    let (c, bt) = (cfg.hidden_size(), plan.rows());
    let (b, t, nh) = (plan.b, plan.t, r.shape.nh);
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
    // The LM head's gradient into the final norm's output: any width-C scratch (nothing else
    // is live).
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
    for (i, ((v0, rows, lg), shard)) in plan.shards.iter().zip(model.head_shards()).enumerate() {
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
    bwd.push(model.final_norm_backward(gpu, &dres, &dlnf, &plan.last, &plan.meanf, &plan.rstdf)?);

    let per_block = def.ops.len();
    // Whether the gradient of `act` of block `l` is needed: whether the op that wrote it sits
    // at or above the first adapted linear layer (a block's input was written by the block
    // below's last op).
    let needed = |l: usize, act: Act| {
        let producer = match def.producer(act) {
            Some(i) => (l * per_block + i) as isize,
            None => (l * per_block) as isize - 1,
        };
        producer >= plan.first as isize
    };
    for (l, weights) in model.blocks.iter().enumerate().rev() {
        // Gradient roots written so far in this block (the residual's always holds a value).
        let mut written = vec![false; def.acts.len()];
        written[residual] = true;
        let mut write = |a: Act| std::mem::replace(&mut written[def.grad_root(a)], true);
        for (i, op) in def.ops.iter().enumerate().rev() {
            let p = l * per_block + i;
            if p < plan.first {
                return Ok((clear_grads, bwd));
            }
            let x = |a: Act| r.act(l, a);
            let stats = &plan.blocks[l].stats[i];
            match *op {
                Op::Linear { out, inp, site } => {
                    let lora = adapter(r.adapted, l, site);
                    if lora.is_some() && def.recomputed(inp) {
                        let producer = def
                            .producer(inp)
                            .expect("a recomputed activation has a producer");
                        let eps = cfg.norm_eps();
                        block::record_op(gpu, &mut bwd, r, def, weights, l, producer, eps)?;
                    }
                    let dinp = needed(l, inp).then(|| (g(inp), write(inp)));
                    r.bl.linear_backward(
                        &mut bwd,
                        dinp.as_ref().map(|(d, acc)| (d, *acc)),
                        &du,
                        &g(out),
                        &r.act(l, inp),
                        weights.linear(site),
                        lora,
                        bt,
                        r.scale,
                    )?;
                }
                Op::LayerNorm { out, inp, norm } if needed(l, inp) => {
                    let Some(OpStats::Norm {
                        mean: Some(mean),
                        rstd,
                    }) = stats
                    else {
                        unreachable!("a LayerNorm saves its statistics");
                    };
                    if !write(inp) {
                        bwd.clear(&g(inp)); // the kernel adds
                    }
                    let w = weights.norm(norm);
                    let c = w.w.len();
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
                Op::RmsNorm {
                    out,
                    inp,
                    norm,
                    width,
                } if needed(l, inp) => {
                    let Some(OpStats::Norm { rstd, .. }) = stats else {
                        unreachable!("an RMSNorm saves its statistics");
                    };
                    let w = &weights.norm(norm).w;
                    let acc = write(inp);
                    bwd.push(rmsnorm::backward(
                        gpu,
                        &g(inp),
                        &g(out),
                        &x(inp),
                        w,
                        rstd,
                        width,
                        acc,
                    )?);
                }
                Op::Rope { out, q, k, v } => {
                    let [cos, sin, pos] = plan.rope.as_ref().expect("RoPE has its tables");
                    for a in [q, k, v] {
                        assert!(!write(a), "q, k and v each feed RoPE alone");
                    }
                    let s = r.rope_shape();
                    bwd.push(rope::backward(
                        gpu,
                        &g(q),
                        &g(k),
                        &g(v),
                        &g(out),
                        cos,
                        sin,
                        pos,
                        &s,
                    )?);
                }
                Op::Attention { out, qkv } => {
                    let Some(OpStats::Attention { lse }) = stats else {
                        unreachable!("attention saves its log-sum-exp");
                    };
                    write(qkv);
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
                    write(inp);
                    bwd.push(elementwise::gelu_backward(gpu, &g(inp), &g(out), &x(inp))?);
                }
                Op::SwiGlu { out, gate, up } => {
                    write(gate);
                    write(up);
                    bwd.push(swiglu::backward(
                        gpu,
                        &g(gate),
                        &g(up),
                        &g(out),
                        &x(gate),
                        &x(up),
                    )?);
                }
                Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::Add { .. } => {}
            }
            if p == plan.first {
                return Ok((clear_grads, bwd));
            }
        }
    }
    Ok((clear_grads, bwd))
}
