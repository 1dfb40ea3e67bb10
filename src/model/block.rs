//! A transformer block as data: the ops it applies, in order, over named activations.
//!
//! A model family writes its block once, as a [`BlockDef`]. The training graph records it
//! forward (for training and evaluation) and walks it in reverse for the backward; the
//! KV-cache generator records the same ops with a cache behind its attention. What differs
//! between those places (where activations live, how a linear layer adds its LoRA terms, what
//! attention attends to) is a [`BlockRecorder`]; the order of the ops and which weights they
//! read is the definition's alone.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::gpu::{Dtype, Gpu, Recording, Tensor};
use crate::kernels::matmul::MatmulOp;
use crate::kernels::{elementwise, layernorm, rmsnorm, swiglu};
use crate::lora::Linear;

/// An activation of a block: an index into [`BlockDef::acts`].
pub(crate) type Act = usize;

/// One activation: its name (for buffer labels) and its width per row.
#[derive(Clone, Debug)]
pub(crate) struct ActDef {
    pub(crate) name: &'static str,
    pub(crate) width: usize,
}

/// One op of a block. Activations are rows of the batch (or of the decoded positions).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Op {
    /// out = LayerNorm(inp) with the block's norm weights `norm`.
    LayerNorm { out: Act, inp: Act, norm: usize },
    /// out = RMSNorm(inp) with the block's norm weights `norm`, over groups of `width`
    /// values: the whole row, or each head (Qwen3's q_norm and k_norm).
    RmsNorm {
        out: Act,
        inp: Act,
        norm: usize,
        width: usize,
    },
    /// Rotary position embedding of q and k, written with v as the fused q, k, v rows that
    /// attention reads.
    Rope { out: Act, q: Act, k: Act, v: Act },
    /// out = inp · W + b (+ the LoRA terms) for the linear layer `site`.
    Linear { out: Act, inp: Act, site: Linear },
    /// Causal multi-head self-attention of the fused q, k, v rows.
    Attention { out: Act, qkv: Act },
    /// out = gelu_new(inp).
    Gelu { out: Act, inp: Act },
    /// out = silu(gate) · up (Llama's MLP).
    SwiGlu { out: Act, gate: Act, up: Act },
    /// out = a + b (the residual connections).
    Add { out: Act, a: Act, b: Act },
}

impl Op {
    /// The activation the op writes.
    pub(crate) fn out(&self) -> Act {
        match *self {
            Op::LayerNorm { out, .. }
            | Op::RmsNorm { out, .. }
            | Op::Rope { out, .. }
            | Op::Linear { out, .. }
            | Op::Attention { out, .. }
            | Op::Gelu { out, .. }
            | Op::SwiGlu { out, .. }
            | Op::Add { out, .. } => out,
        }
    }

    /// The activations the op reads.
    pub(crate) fn inputs(&self) -> Vec<Act> {
        match *self {
            Op::LayerNorm { inp, .. }
            | Op::RmsNorm { inp, .. }
            | Op::Linear { inp, .. }
            | Op::Gelu { inp, .. } => vec![inp],
            Op::Rope { q, k, v, .. } => vec![q, k, v],
            Op::Attention { qkv, .. } => vec![qkv],
            Op::SwiGlu { gate, up, .. } => vec![gate, up],
            Op::Add { a, b, .. } => vec![a, b],
        }
    }
}

/// A block: its activations and its ops in forward order. `input` is the residual stream
/// coming in, `output` the one going out; every other activation is written by exactly one op.
#[derive(Clone, Debug)]
pub(crate) struct BlockDef {
    pub(crate) acts: Vec<ActDef>,
    pub(crate) input: Act,
    pub(crate) output: Act,
    pub(crate) ops: Vec<Op>,
}

/// Where an activation of a block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// The residual stream in or out (the model's residual buffers).
    Residual,
    /// A buffer of this block's own: the backward reads it.
    Own,
    /// Scratch buffer `index` among those of this width, shared by every layer and reused
    /// within the block once its previous value is dead.
    Scratch { width: usize, index: usize },
}

impl BlockDef {
    /// The index of the op that writes `act`.
    pub(crate) fn producer(&self, act: Act) -> Option<usize> {
        self.ops.iter().position(|op| op.out() == act)
    }

    /// The index of the op that applies linear layer `site`.
    pub(crate) fn linear_op(&self, site: Linear) -> Option<usize> {
        self.ops
            .iter()
            .position(|op| matches!(op, Op::Linear { site: s, .. } if *s == site))
    }

    /// Whether the backward recomputes `act` (an elementwise op's output, cheap to redo from
    /// its kept input) rather than keeping it from the forward.
    pub(crate) fn recomputed(&self, act: Act) -> bool {
        self.producer(act)
            .is_some_and(|i| matches!(self.ops[i], Op::Gelu { .. } | Op::SwiGlu { .. }))
    }

    /// Which activations a backward through this block reads from the forward, given which of
    /// its linear layers are adapted: a norm's input, attention's q, k, v and output, an
    /// elementwise op's inputs, and an adapted linear layer's input (its LoRA A gradient reads
    /// it) unless that is recomputed. RoPE is linear and reads nothing. The residual stream in
    /// and out is not counted here.
    pub(crate) fn saved(&self, adapted: impl Fn(Linear) -> bool) -> Vec<bool> {
        let mut saved = vec![false; self.acts.len()];
        for op in &self.ops {
            match *op {
                Op::LayerNorm { inp, .. } | Op::RmsNorm { inp, .. } | Op::Gelu { inp, .. } => {
                    saved[inp] = true
                }
                Op::SwiGlu { gate, up, .. } => {
                    saved[gate] = true;
                    saved[up] = true;
                }
                Op::Attention { out, qkv } => {
                    saved[out] = true;
                    saved[qkv] = true;
                }
                Op::Linear { inp, site, .. } if adapted(site) && !self.recomputed(inp) => {
                    saved[inp] = true
                }
                Op::Linear { .. } | Op::Rope { .. } | Op::Add { .. } => {}
            }
        }
        saved[self.input] = false;
        saved[self.output] = false;
        saved
    }

    /// Where each activation lives when those marked in `own` get buffers of their own: the
    /// rest share scratch buffers of their width (see [`share_scratch`]).
    pub(crate) fn places(&self, own: &[bool]) -> Vec<Place> {
        let steps: Vec<(Vec<Act>, Vec<Act>)> = self
            .ops
            .iter()
            .map(|op| (vec![op.out()], op.inputs()))
            .collect();
        let residual = |a: Act| a == self.input || a == self.output;
        let eligible: Vec<bool> = (0..self.acts.len())
            .map(|a| !own[a] && !residual(a))
            .collect();
        let scratch = share_scratch(&steps, &self.widths(), &eligible);
        (0..self.acts.len())
            .map(|a| match scratch[a] {
                _ if residual(a) => Place::Residual,
                Some((width, index)) => Place::Scratch { width, index },
                None => Place::Own,
            })
            .collect()
    }

    /// The backward's gradient flow as scratch steps (see [`share_scratch`]): the ops in
    /// reverse, each writing the gradients of its inputs and reading that of its output, all
    /// named by their [`BlockDef::grad_root`].
    pub(crate) fn grad_steps(&self) -> Vec<(Vec<Act>, Vec<Act>)> {
        self.ops
            .iter()
            .rev()
            .map(|op| {
                let writes = op.inputs().into_iter().map(|a| self.grad_root(a)).collect();
                (writes, vec![self.grad_root(op.out())])
            })
            .collect()
    }

    /// The block's linear layers in the order it applies them, with their (in, out) features.
    pub(crate) fn linears(&self) -> Vec<(Linear, usize, usize)> {
        self.ops
            .iter()
            .filter_map(|op| match *op {
                Op::Linear { out, inp, site } => {
                    Some((site, self.acts[inp].width, self.acts[out].width))
                }
                _ => None,
            })
            .collect()
    }

    /// Every activation's width.
    pub(crate) fn widths(&self) -> Vec<usize> {
        self.acts.iter().map(|a| a.width).collect()
    }

    /// The activation whose gradient buffer `act` shares: the two inputs of an `Add` pass the
    /// gradient of its output through unchanged, so the residual stream's activations all share
    /// the output's.
    pub(crate) fn grad_root(&self, act: Act) -> Act {
        let mut act = act;
        loop {
            let next = self.ops.iter().find_map(|op| match *op {
                Op::Add { out, a, b } if a == act || b == act => Some(out),
                _ => None,
            });
            match next {
                Some(out) if out != act => act = out,
                _ => return act,
            }
        }
    }
}

/// Scratch buffers for values that steps write and read: `steps[i]` is (written, read) at step
/// i. Each `eligible` value gets `(width, index)`, the index-th buffer of its width, from its
/// first write until its last use; a buffer is reused only after its value's last use and
/// never within one step. Values written twice (accumulated) keep the buffer of their first
/// write.
pub(crate) fn share_scratch(
    steps: &[(Vec<Act>, Vec<Act>)],
    widths: &[usize],
    eligible: &[bool],
) -> Vec<Option<(usize, usize)>> {
    let mut last_use = vec![0; widths.len()];
    for (i, (writes, reads)) in steps.iter().enumerate() {
        for &a in writes.iter().chain(reads) {
            last_use[a] = i;
        }
    }
    let mut slot: Vec<Option<(usize, usize)>> = vec![None; widths.len()];
    // Per width, per buffer: the last step that uses its current value.
    let mut busy_until: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, (writes, _)) in steps.iter().enumerate() {
        for &a in writes {
            if !eligible[a] || slot[a].is_some() {
                continue;
            }
            let width = widths[a];
            let list = busy_until.entry(width).or_default();
            let index = match (0..list.len()).find(|&k| list[k] < i) {
                Some(k) => k,
                None => {
                    list.push(0);
                    list.len() - 1
                }
            };
            list[index] = last_use[a];
            slot[a] = Some((width, index));
        }
    }
    slot
}

/// A frozen weight and its bias: a linear layer (`w` is `[in, out]`, or `[out, in]` when
/// quantized: ggml's blocks run along the input) or a norm (`w` is `[C]`).
#[derive(Clone, Debug)]
pub(crate) struct Dense {
    pub(crate) w: Tensor,
    pub(crate) b: Option<Tensor>,
}

impl Dense {
    /// Bytes of GPU memory the weight and bias take.
    pub(crate) fn bytes(&self) -> u64 {
        self.w.bytes() + self.b.as_ref().map_or(0, Tensor::bytes)
    }

    /// Whether the weight is stored `[out, in]` (quantized) rather than `[in, out]`.
    fn out_in(&self) -> bool {
        matches!(self.w.dtype(), Dtype::Quant(_))
    }

    /// A linear layer's (inputs, outputs).
    pub(crate) fn dims(&self) -> (usize, usize) {
        let s = self.w.shape();
        if self.out_in() {
            (s[1], s[0])
        } else {
            (s[0], s[1])
        }
    }

    /// The frozen product over `m` rows: out (m, outputs) = inp (m, inputs) · W.
    pub(crate) fn forward_op(&self, m: usize) -> MatmulOp {
        let (d_in, d_out) = self.dims();
        let op = MatmulOp::new(m, d_out, d_in).frozen_b();
        if self.out_in() {
            op.trans_b()
        } else {
            op
        }
    }

    /// The input gradient over `m` rows: dinp (m, inputs) = dout (m, outputs) · Wᵀ.
    pub(crate) fn input_grad_op(&self, m: usize) -> MatmulOp {
        let (d_in, d_out) = self.dims();
        let op = MatmulOp::new(m, d_in, d_out).frozen_b();
        if self.out_in() {
            op
        } else {
            op.trans_b()
        }
    }
}

/// The weights one block's ops read.
pub(crate) trait BlockWeights {
    /// The weights of norm `i` (the `norm` of [`Op::LayerNorm`] and [`Op::RmsNorm`]).
    fn norm(&self, i: usize) -> &Dense;
    /// The weights of a linear layer.
    fn linear(&self, site: Linear) -> &Dense;
}

/// What differs between the places a block is recorded.
pub(crate) trait BlockRecorder {
    /// The tensor that holds `act` of block `layer` (cheap clones of shared buffers).
    fn act(&self, layer: usize, act: Act) -> Tensor;
    /// The (mean, rstd) rows that norm op `op` of block `layer` writes (an RMSNorm has no
    /// mean).
    fn norm_stats(&self, layer: usize, op: usize) -> (Option<Tensor>, Tensor);
    /// out = inp · W + b, plus whatever LoRA terms apply to `site` of block `layer`.
    fn linear(
        &mut self,
        rec: &mut Recording,
        layer: usize,
        site: Linear,
        out: &Tensor,
        inp: &Tensor,
        w: &Dense,
    ) -> Result<()>;
    /// Rotary position embedding of block `layer`: the fused q, k, v rows `out` from q, k, v,
    /// at the positions of the rows recorded.
    fn rope(
        &mut self,
        rec: &mut Recording,
        layer: usize,
        out: &Tensor,
        qkv: [&Tensor; 3],
    ) -> Result<()>;
    /// Causal self-attention op `op` of block `layer`: out from the fused q, k, v rows.
    fn attention(
        &mut self,
        rec: &mut Recording,
        layer: usize,
        op: usize,
        out: &Tensor,
        qkv: &Tensor,
    ) -> Result<()>;
}

/// Record the forward of block `layer`: every op of `def`, in order, reading `weights`.
/// `eps` is the model's norm epsilon.
pub(crate) fn record_forward(
    gpu: &Gpu,
    rec: &mut Recording,
    r: &mut impl BlockRecorder,
    def: &BlockDef,
    weights: &impl BlockWeights,
    layer: usize,
    eps: f32,
) -> Result<()> {
    for i in 0..def.ops.len() {
        record_op(gpu, rec, r, def, weights, layer, i, eps)?;
    }
    Ok(())
}

/// Record op `i` of block `layer` (see [`record_forward`]).
pub(crate) fn record_op(
    gpu: &Gpu,
    rec: &mut Recording,
    r: &mut impl BlockRecorder,
    def: &BlockDef,
    weights: &impl BlockWeights,
    layer: usize,
    i: usize,
    eps: f32,
) -> Result<()> {
    match def.ops[i] {
        Op::LayerNorm { out, inp, norm } => {
            let (mean, rstd) = r.norm_stats(layer, i);
            let mean = mean.expect("a LayerNorm saves its mean");
            let w = weights.norm(norm);
            let b = w.b.as_ref().expect("a LayerNorm has a bias");
            let (out, inp) = (r.act(layer, out), r.act(layer, inp));
            let c = w.w.len();
            rec.push(layernorm::forward(
                gpu, &out, &mean, &rstd, &inp, &w.w, b, c, eps,
            )?);
        }
        Op::RmsNorm {
            out,
            inp,
            norm,
            width,
        } => {
            let (_, rstd) = r.norm_stats(layer, i);
            let w = weights.norm(norm);
            let (out, inp) = (r.act(layer, out), r.act(layer, inp));
            rec.push(rmsnorm::forward(gpu, &out, &rstd, &inp, &w.w, width, eps)?);
        }
        Op::Rope { out, q, k, v } => {
            let out = r.act(layer, out);
            let (q, k, v) = (r.act(layer, q), r.act(layer, k), r.act(layer, v));
            r.rope(rec, layer, &out, [&q, &k, &v])?;
        }
        Op::SwiGlu { out, gate, up } => {
            let (out, gate, up) = (r.act(layer, out), r.act(layer, gate), r.act(layer, up));
            rec.push(swiglu::forward(gpu, &out, &gate, &up)?);
        }
        Op::Linear { out, inp, site } => {
            let (out, inp) = (r.act(layer, out), r.act(layer, inp));
            r.linear(rec, layer, site, &out, &inp, weights.linear(site))?;
        }
        Op::Attention { out, qkv } => {
            let (out, qkv) = (r.act(layer, out), r.act(layer, qkv));
            r.attention(rec, layer, i, &out, &qkv)?;
        }
        Op::Gelu { out, inp } => {
            let (out, inp) = (r.act(layer, out), r.act(layer, inp));
            rec.push(elementwise::gelu_forward(gpu, &out, &inp)?);
        }
        Op::Add { out, a, b } => {
            let (out, a, b) = (r.act(layer, out), r.act(layer, a), r.act(layer, b));
            rec.push(elementwise::add(gpu, &out, &a, &b)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Scratch sharing against a simulation: run the ops on symbolic buffers and check that
    //! every read finds the value it wants.

    use super::*;
    use crate::model::gpt2::block_def;
    use std::collections::HashMap;

    /// Replay `steps` over `slots` and panic if a step reads a value that was overwritten or
    /// writes a buffer it reads.
    fn check_no_clobber(steps: &[(Vec<Act>, Vec<Act>)], slots: &[Option<(usize, usize)>]) {
        let mut holds: HashMap<(usize, usize), Act> = HashMap::new();
        for (i, (writes, reads)) in steps.iter().enumerate() {
            for &a in reads {
                if let Some(s) = slots[a] {
                    assert_eq!(holds.get(&s), Some(&a), "step {i} reads {a} from {s:?}");
                }
            }
            for &a in writes {
                if let Some(s) = slots[a] {
                    let read_here = reads.iter().any(|&r| r != a && slots[r] == Some(s));
                    assert!(!read_here, "step {i} writes {a} over an input in {s:?}");
                    holds.insert(s, a);
                }
            }
        }
    }

    fn forward_steps(def: &BlockDef) -> Vec<(Vec<Act>, Vec<Act>)> {
        def.ops
            .iter()
            .map(|op| (vec![op.out()], op.inputs()))
            .collect()
    }

    /// GPT-2's block and the Llama family's (plain, and Qwen3's with q/k norms).
    fn defs() -> Vec<BlockDef> {
        use crate::model::llama::{self, LlamaConfig};
        let qwen3 = LlamaConfig::named("qwen3-0.6b").unwrap();
        let llama = LlamaConfig::named("smollm2-135m").unwrap();
        assert!(qwen3.qk_norm() && !llama.qk_norm());
        vec![
            block_def(8),
            llama::block_def(&llama),
            llama::block_def(&qwen3),
        ]
    }

    #[test]
    fn llama_blocks_never_clobber_a_live_value_or_gradient() {
        for def in defs() {
            for own in [vec![false; def.acts.len()], def.saved(|_| true)] {
                let slots: Vec<_> = def
                    .places(&own)
                    .iter()
                    .map(|p| match *p {
                        Place::Scratch { width, index } => Some((width, index)),
                        _ => None,
                    })
                    .collect();
                check_no_clobber(&forward_steps(&def), &slots);
            }
            let residual = def.grad_root(def.output);
            let eligible: Vec<bool> = (0..def.acts.len()).map(|a| a != residual).collect();
            let steps = def.grad_steps();
            check_no_clobber(&steps, &share_scratch(&steps, &def.widths(), &eligible));
        }
    }

    #[test]
    fn the_backward_keeps_what_it_reads() {
        for def in defs() {
            let saved = def.saved(|_| true);
            for op in &def.ops {
                let keeps = |a: Act| saved[a] || a == def.input || a == def.output;
                match *op {
                    Op::RmsNorm { inp, .. } | Op::LayerNorm { inp, .. } => assert!(keeps(inp)),
                    Op::SwiGlu { gate, up, .. } => assert!(keeps(gate) && keeps(up)),
                    Op::Attention { out, qkv } => assert!(keeps(out) && keeps(qkv)),
                    // RoPE is linear: its backward reads nothing of the forward.
                    Op::Rope { q, .. } => {
                        let normed = |o: &Op| matches!(*o, Op::RmsNorm { inp, .. } if inp == q);
                        assert!(!saved[q] || def.ops.iter().any(normed));
                    }
                    _ => {}
                }
            }
            // SwiGLU's output is recomputed for down_proj's LoRA gradient, never kept.
            for (a, act) in def.acts.iter().enumerate() {
                if act.name == "mlp.act out" {
                    assert!(def.recomputed(a) && !saved[a]);
                }
            }
        }
    }

    #[test]
    fn gpt2_scratch_never_clobbers_a_live_value() {
        let def = block_def(8);
        for own in [
            vec![false; def.acts.len()],
            def.saved(|_| true),
            def.saved(|_| false),
        ] {
            let places = def.places(&own);
            let slots: Vec<_> = places
                .iter()
                .map(|p| match *p {
                    Place::Scratch { width, index } => Some((width, index)),
                    _ => None,
                })
                .collect();
            check_no_clobber(&forward_steps(&def), &slots);
            // Nothing the backward reads is in scratch.
            for (a, saved) in def.saved(|_| true).iter().enumerate() {
                if *saved && own[a] {
                    assert_eq!(places[a], Place::Own, "{}", def.acts[a].name);
                }
            }
        }
    }

    #[test]
    fn gpt2_gradient_scratch_never_clobbers_a_live_gradient() {
        let def = block_def(8);
        let residual = def.grad_root(def.output);
        let eligible: Vec<bool> = (0..def.acts.len()).map(|a| a != residual).collect();
        let steps = def.grad_steps();
        let slots = share_scratch(&steps, &def.widths(), &eligible);
        check_no_clobber(&steps, &slots);
        // d ln_1 and d attn_y share a buffer; the two 4C gradients cannot.
        let used: std::collections::BTreeSet<_> = slots.iter().flatten().collect();
        assert_eq!(used.len(), 4, "{used:?}");
    }

    #[test]
    fn scratch_is_reused_once_dead() {
        let def = block_def(8);
        let places = def.places(&vec![false; def.acts.len()]);
        let count = |w: usize| {
            places
                .iter()
                .filter_map(|p| match *p {
                    Place::Scratch { width, index } if width == w => Some(index),
                    _ => None,
                })
                .max()
                .map_or(0, |m| m + 1)
        };
        // Six C-wide values, at most two alive at once; one 3C and two 4C values.
        assert_eq!((count(8), count(24), count(32)), (2, 1, 2));
    }

    #[test]
    fn accumulated_values_keep_their_buffer_and_inputs_stay_apart() {
        // 0 = 1 + 2 accumulated twice; 3 written from 0; 4 from 3 and 0.
        let steps = vec![
            (vec![1], vec![]),
            (vec![2], vec![1]),
            (vec![0], vec![1, 2]),
            (vec![0], vec![2]),
            (vec![3], vec![0]),
            (vec![4], vec![3, 0]),
        ];
        let slots = share_scratch(&steps, &[4; 5], &[true; 5]);
        check_no_clobber(&steps, &slots);
        assert!(slots.iter().all(Option::is_some));
    }

    #[test]
    fn residual_gradients_share_one_root() {
        let def = block_def(8);
        let root = def.grad_root(def.output);
        assert_eq!(def.grad_root(def.input), root);
        for op in &def.ops {
            if let Op::Add { out, a, b } = *op {
                assert_eq!(
                    (def.grad_root(a), def.grad_root(b)),
                    (def.grad_root(out), root)
                );
            }
        }
        let ln1 = def.ops[0].out();
        assert_eq!(def.grad_root(ln1), ln1);
    }
}
