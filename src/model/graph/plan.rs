//! The training graph's buffers: the residual stream, each block's activations (its own where
//! the backward reads them, shared scratch elsewhere), the LM head's logits and the loss rows.

use std::collections::BTreeMap;

use super::linear::{adapter, Adapted, Builder};
use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Tensor, VIEW_ALIGN};
use crate::kernels::cross_entropy::CeState;
use crate::kernels::matmul::{matmul, MatmulOp};
use crate::model::block::{Op, Place};
use crate::model::Transformer;

/// Logits up to this size (B·T·V·4 bytes) are kept from forward for backward, which saves one
/// of the three LM-head products per step (the biggest matmuls of a small model); larger ones
/// are recomputed chunk by chunk so memory stays O(B·T·chunk).
const STORED_LOGITS_BYTES: usize = 256 << 20;

/// Whether a training graph over `tokens` = B·T positions and a `vocab`-row LM head keeps its
/// logits from forward for backward (one LM-head product per step fewer) instead of
/// recomputing them chunk by chunk: when they take at most 256 MiB.
pub fn keeps_logits(tokens: usize, vocab: usize) -> bool {
    tokens * vocab * 4 <= STORED_LOGITS_BYTES
}

/// What an op of a block saves for its backward besides activations.
#[derive(Clone)]
pub(super) enum OpStats {
    /// A norm's per-row reciprocal standard deviation, and LayerNorm's mean.
    Norm { mean: Option<Tensor>, rstd: Tensor },
    /// Attention's per-row log-sum-exp of the scores (B, NH, T): all the backward keeps of
    /// the softmax.
    Attention { lse: Tensor },
}

/// One block's buffers: a tensor per activation of the block definition, and per op its
/// saved statistics.
#[derive(Clone)]
pub(super) struct BlockBuffers {
    pub(super) acts: Vec<Tensor>,
    pub(super) stats: Vec<Option<OpStats>>,
}

/// Every buffer of the forward, for batches of `b` sequences of `t` tokens.
pub(super) struct Plan {
    pub(super) b: usize,
    pub(super) t: usize,
    /// Forward position (layer · ops per block + op) of the first adapted linear layer:
    /// nothing trainable sits below it, so the backward stops there (`usize::MAX`: none).
    pub(super) first: usize,
    pub(super) blocks: Vec<BlockBuffers>,
    pub(super) tokens: Tensor,
    pub(super) targets: Tensor,
    /// 1 / (counted targets of the step): the loss gradient of each counted target.
    pub(super) dloss: Tensor,
    /// Rotary positions: the cos and sin tables of positions 0..T and the position offset
    /// (0), for models with RoPE.
    pub(super) rope: Option<[Tensor; 3]>,
    /// The residual stream into the final norm (the last block's output).
    pub(super) last: Tensor,
    pub(super) lnf: Tensor,
    pub(super) meanf: Tensor,
    pub(super) rstdf: Tensor,
    pub(super) st: CeState,
    /// Per-row losses, then (at `norm_at`) the squared gradient norm.
    pub(super) stats: Tensor,
    pub(super) norm_at: usize,
    pub(super) loss_rows: Tensor,
    pub(super) norm_sq: Tensor,
    /// (first vocab row, rows, logits) of each LM-head shard.
    pub(super) shards: Vec<(usize, usize, Tensor)>,
    pub(super) store_logits: bool,
}

impl Plan {
    /// Allocate the forward's buffers. With `train`, blocks the backward reaches (those at or
    /// above the first adapted linear layer) keep what it reads; blocks below it, and every
    /// block in evaluation, share one set of scratch buffers, their residuals alternating
    /// between two.
    pub(super) fn new(
        bl: &mut Builder,
        model: &Transformer,
        adapted: &[Adapted],
        train: bool,
        b: usize,
        t: usize,
    ) -> Result<Self> {
        let cfg = &model.config;
        let def = &model.block;
        let (c, nh, bt) = (cfg.hidden_size(), cfg.num_heads(), b * t);
        let n_layer = model.blocks.len();
        let first = adapted
            .iter()
            .filter_map(|a| {
                let op = def.linear_op(a.entry.linear)?;
                Some(a.entry.layer * def.ops.len() + op)
            })
            .min()
            .unwrap_or(usize::MAX);
        let reached = |layer: usize| train && first != usize::MAX && layer >= first / def.ops.len();

        let tokens = bl.zeros("tokens", &[bt])?;
        let targets = bl.zeros("targets", &[bt])?;
        let dloss = bl.zeros("dloss", &[1])?;
        // Residual l is block l's input (the last one ln_f's): that of a block the backward
        // reaches stays for it; otherwise residual l + 2 reuses its buffer.
        let mut res: Vec<Tensor> = Vec::new();
        for l in 0..=n_layer {
            res.push(match res.get(l.wrapping_sub(2)) {
                Some(r) if !reached(l - 2) => r.clone(),
                _ => bl.zeros(&format!("residual {l}"), &[bt, c])?,
            });
        }
        let mut scratch: BTreeMap<(usize, usize), Tensor> = BTreeMap::new();
        let mut blocks: Vec<BlockBuffers> = Vec::new();
        let mut shared: Option<BlockBuffers> = None;
        for l in 0..n_layer {
            if let (false, Some(s)) = (reached(l), &shared) {
                let mut s = s.clone();
                s.acts[def.input] = res[l].clone();
                s.acts[def.output] = res[l + 1].clone();
                blocks.push(s);
                continue;
            }
            let own = if reached(l) {
                def.saved(|site| adapter(adapted, l, site).is_some())
            } else {
                vec![false; def.acts.len()]
            };
            let mut acts = Vec::with_capacity(def.acts.len());
            for (a, place) in def.places(&own).into_iter().enumerate() {
                let name = def.acts[a].name;
                acts.push(match place {
                    Place::Residual if a == def.input => res[l].clone(),
                    Place::Residual => res[l + 1].clone(),
                    Place::Own => bl.zeros(&format!("h.{l}.{name}"), &[bt, def.acts[a].width])?,
                    Place::Scratch { width, index } => {
                        bl.pooled(&mut scratch, "scratch", (width, index), bt)?
                    }
                });
            }
            let mut stats = Vec::with_capacity(def.ops.len());
            for op in &def.ops {
                let name = def.acts[op.out()].name;
                stats.push(match *op {
                    Op::LayerNorm { .. } => Some(OpStats::Norm {
                        mean: Some(bl.zeros(&format!("h.{l}.{name}.mean"), &[bt])?),
                        rstd: bl.zeros(&format!("h.{l}.{name}.rstd"), &[bt])?,
                    }),
                    Op::RmsNorm { inp, width, .. } => {
                        let rows = bt * def.acts[inp].width / width;
                        Some(OpStats::Norm {
                            mean: None,
                            rstd: bl.zeros(&format!("h.{l}.{name}.rstd"), &[rows])?,
                        })
                    }
                    Op::Attention { .. } => Some(OpStats::Attention {
                        lse: bl.zeros(&format!("h.{l}.attn log-sum-exp"), &[b, nh, t])?,
                    }),
                    _ => None,
                });
            }
            let buffers = BlockBuffers { acts, stats };
            if !reached(l) {
                shared = Some(buffers.clone());
            }
            blocks.push(buffers);
        }

        let rope = match model.rope_tables(bl.gpu, t)? {
            Some([cos, sin]) => {
                bl.allocated += cos.bytes() + sin.bytes();
                Some([cos, sin, bl.zeros("rope position offset", &[1])?])
            }
            None => None,
        };
        let lnf = bl.zeros("final norm", &[bt, c])?;
        let meanf = bl.zeros("final norm mean", &[bt])?;
        let rstdf = bl.zeros("final norm rstd", &[bt])?;
        let ranges = model.shard_ranges();
        let max_rows = ranges.iter().map(|r| r.1).max().unwrap_or(1);
        let vocab: usize = ranges.iter().map(|r| r.1).sum();
        let store_logits = keeps_logits(bt, vocab);
        let st = CeState::new(bl.gpu, bt)?;
        bl.allocated += 3 * 4 * bt as u64;
        // Per-row losses and the squared grad norm share one buffer, read back together.
        let norm_at = bt.next_multiple_of(VIEW_ALIGN as usize / 4);
        let stats = bl.zeros("step stats", &[norm_at + 1])?;
        let loss_rows = stats.view("loss per row", 0, &[bt])?;
        let norm_sq = stats.view("grad norm²", norm_at, &[1])?;
        let shards = if store_logits {
            let mut shards = Vec::new();
            for (i, &(v0, rows)) in ranges.iter().enumerate() {
                shards.push((
                    v0,
                    rows,
                    bl.zeros(&format!("logits shard {i}"), &[bt, rows])?,
                ));
            }
            shards
        } else {
            let chunk = bl.zeros("logits chunk", &[bt, max_rows])?;
            ranges
                .iter()
                .map(|&(v0, rows)| Ok((v0, rows, chunk.view("logits", 0, &[bt, rows])?)))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Plan {
            b,
            t,
            first,
            blocks,
            tokens,
            targets,
            dloss,
            rope,
            last: res[n_layer].clone(),
            lnf,
            meanf,
            rstdf,
            st,
            stats,
            norm_at,
            loss_rows,
            norm_sq,
            shards,
            store_logits,
        })
    }

    /// The logits of LM-head shard `i`: lnf · shardᵀ into that shard's logits, (B·T, rows).
    pub(super) fn lm_head(&self, gpu: &Gpu, model: &Transformer, i: usize) -> Result<Dispatch> {
        let (_, rows, logits) = &self.shards[i];
        let op = MatmulOp::new(self.rows(), *rows, model.config.hidden_size())
            .trans_b()
            .frozen_b();
        let shard = &model.head_shards()[i];
        matmul(gpu, logits, &self.lnf, shard, None, &op)
    }

    /// Rows per activation: B·T.
    pub(super) fn rows(&self) -> usize {
        self.b * self.t
    }
}
