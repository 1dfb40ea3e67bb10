//! GPT-2: its config, its weights (host and GPU) and its block, as the ops it records.
//!
//! Weights follow the checkpoint's names (`h.{i}.attn.c_attn`, ...); linear weights are stored
//! as GPT-2's Conv1D stores them, `[in, out]` (y = x·W + b).

pub mod config;
pub mod weights;

use super::block::{Act, ActDef, BlockDef, Op};
use crate::lora::{AdaptableModel, Linear};
pub use config::Gpt2Config;

// GPT-2's block activations, in the order the block computes them.
const IN: Act = 0;
const LN1: Act = 1;
const QKV: Act = 2;
const ATTY: Act = 3;
const ATTN_OUT: Act = 4;
const XMID: Act = 5;
const LN2: Act = 6;
const FC: Act = 7;
const GELU: Act = 8;
const MLP_OUT: Act = 9;
const OUT: Act = 10;

/// GPT-2's pre-LayerNorm block over C channels: attention then MLP, each added to the residual.
///
/// ```text
/// ln1 = LN1(x); qkv = ln1·Wqkv; y = attn(qkv); xmid = x + y·Wo
/// ln2 = LN2(xmid); fc = ln2·Wfc; h = gelu(fc); out = xmid + h·Wproj
/// ```
pub(crate) fn block_def(c: usize) -> BlockDef {
    let act = |name, width| ActDef { name, width };
    BlockDef {
        acts: vec![
            act("residual", c),
            act("ln_1", c),
            act("qkv", 3 * c),
            act("attn_y", c),
            act("attn.c_proj out", c),
            act("residual mid", c),
            act("ln_2", c),
            act("mlp.c_fc out", 4 * c),
            act("mlp.gelu out", 4 * c),
            act("mlp.c_proj out", c),
            act("residual out", c),
        ],
        input: IN,
        output: OUT,
        ops: vec![
            Op::LayerNorm {
                out: LN1,
                inp: IN,
                norm: 0,
            },
            Op::Linear {
                out: QKV,
                inp: LN1,
                site: Linear::CAttn,
            },
            Op::Attention {
                out: ATTY,
                qkv: QKV,
            },
            Op::Linear {
                out: ATTN_OUT,
                inp: ATTY,
                site: Linear::AttnCProj,
            },
            Op::Add {
                out: XMID,
                a: IN,
                b: ATTN_OUT,
            },
            Op::LayerNorm {
                out: LN2,
                inp: XMID,
                norm: 1,
            },
            Op::Linear {
                out: FC,
                inp: LN2,
                site: Linear::CFc,
            },
            Op::Gelu { out: GELU, inp: FC },
            Op::Linear {
                out: MLP_OUT,
                inp: GELU,
                site: Linear::MlpCProj,
            },
            Op::Add {
                out: OUT,
                a: XMID,
                b: MLP_OUT,
            },
        ],
    }
}

/// LoRA's view of GPT-2: its blocks' linear layers, read from the block definition.
impl AdaptableModel for Gpt2Config {
    fn num_layers(&self) -> usize {
        self.n_layer
    }

    fn linear_layers(&self) -> Vec<(Linear, usize, usize)> {
        block_def(self.n_embd).linears()
    }

    fn base_parameters(&self) -> usize {
        self.num_parameters()
    }

    fn module_path(&self, layer: usize, linear: Linear) -> String {
        format!("h.{layer}.{}", linear.suffix())
    }

    fn peft_prefix(&self) -> &'static str {
        "base_model.model.transformer."
    }

    fn fan_in_fan_out(&self) -> bool {
        true
    }

    fn linear_bias(&self, _linear: Linear) -> bool {
        true
    }
}
