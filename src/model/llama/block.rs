//! The Llama family's block (llama, qwen2, qwen3, mistral) as the ops it records.

use super::config::LlamaConfig;
use crate::lora::{AdaptableModel, Linear};
use crate::model::block::{ActDef, BlockDef, Op};

/// Norm indices of [`block_def`]: what [`BlockWeights::norm`](crate::model::block::BlockWeights::norm)
/// is asked for.
pub(crate) const INPUT_NORM: usize = 0;
/// The norm before the MLP.
pub(crate) const POST_ATTENTION_NORM: usize = 1;
/// Qwen3's per-head norm of the queries.
pub(crate) const Q_NORM: usize = 2;
/// Qwen3's per-head norm of the keys.
pub(crate) const K_NORM: usize = 3;

/// A pre-RMSNorm block: grouped-query attention with rotary positions, then a SwiGLU MLP, each
/// added to the residual stream. Qwen3 normalises each head of q and k before the rotation.
///
/// ```text
/// n1 = rms1(x); q = n1·Wq; k = n1·Wk; v = n1·Wv     (+ biases where the config has them)
/// [q = q_norm(q); k = k_norm(k)]                     (Qwen3, per head)
/// qkv = [rope(q) | rope(k) | v]; y = attn(qkv); xmid = x + y·Wo
/// n2 = rms2(xmid); h = silu(n2·Wgate) · (n2·Wup); out = xmid + h·Wdown
/// ```
pub(crate) fn block_def(cfg: &LlamaConfig) -> BlockDef {
    let c = cfg.hidden_size;
    let hs = cfg.head_dim();
    let (q_w, kv_w) = (cfg.num_attention_heads * hs, cfg.num_key_value_heads * hs);
    let inter = cfg.intermediate_size;
    let mut acts: Vec<ActDef> = Vec::new();
    let mut act = |name: &'static str, width: usize| {
        acts.push(ActDef { name, width });
        acts.len() - 1
    };
    let input = act("residual", c);
    let n1 = act("input_layernorm", c);
    let q = act("q_proj out", q_w);
    let k = act("k_proj out", kv_w);
    let v = act("v_proj out", kv_w);
    let (qn, kn) = if cfg.qk_norm() {
        (act("q_norm", q_w), act("k_norm", kv_w))
    } else {
        (q, k)
    };
    let qkv = act("qkv", q_w + 2 * kv_w);
    let atty = act("attn_y", q_w);
    let attn_out = act("o_proj out", c);
    let xmid = act("residual mid", c);
    let n2 = act("post_attention_layernorm", c);
    let gate = act("gate_proj out", inter);
    let up = act("up_proj out", inter);
    let h = act("mlp.act out", inter);
    let mlp_out = act("down_proj out", c);
    let output = act("residual out", c);

    let linear = |out, inp, site| Op::Linear { out, inp, site };
    let mut ops = vec![
        Op::RmsNorm {
            out: n1,
            inp: input,
            norm: INPUT_NORM,
            width: c,
        },
        linear(q, n1, Linear::QProj),
        linear(k, n1, Linear::KProj),
        linear(v, n1, Linear::VProj),
    ];
    if cfg.qk_norm() {
        ops.push(Op::RmsNorm {
            out: qn,
            inp: q,
            norm: Q_NORM,
            width: hs,
        });
        ops.push(Op::RmsNorm {
            out: kn,
            inp: k,
            norm: K_NORM,
            width: hs,
        });
    }
    ops.extend([
        Op::Rope {
            out: qkv,
            q: qn,
            k: kn,
            v,
        },
        Op::Attention { out: atty, qkv },
        linear(attn_out, atty, Linear::OProj),
        Op::Add {
            out: xmid,
            a: input,
            b: attn_out,
        },
        Op::RmsNorm {
            out: n2,
            inp: xmid,
            norm: POST_ATTENTION_NORM,
            width: c,
        },
        linear(gate, n2, Linear::GateProj),
        linear(up, n2, Linear::UpProj),
        Op::SwiGlu { out: h, gate, up },
        linear(mlp_out, h, Linear::DownProj),
        Op::Add {
            out: output,
            a: xmid,
            b: mlp_out,
        },
    ]);
    BlockDef {
        acts,
        input,
        output,
        ops,
    }
}

/// LoRA's view of a Llama-family model: its blocks' linear layers, read from the block
/// definition, named as transformers names them.
impl AdaptableModel for LlamaConfig {
    fn num_layers(&self) -> usize {
        self.num_hidden_layers
    }

    fn linear_layers(&self) -> Vec<(Linear, usize, usize)> {
        block_def(self).linears()
    }

    fn base_parameters(&self) -> usize {
        self.num_parameters()
    }

    fn module_path(&self, layer: usize, linear: Linear) -> String {
        format!("model.layers.{layer}.{}", linear.suffix())
    }

    fn peft_prefix(&self) -> &'static str {
        "base_model.model."
    }

    fn fan_in_fan_out(&self) -> bool {
        false
    }

    fn linear_bias(&self, linear: Linear) -> bool {
        match linear {
            Linear::QProj | Linear::KProj | Linear::VProj => self.qkv_bias(),
            Linear::OProj => self.o_bias(),
            _ => self.mlp_has_bias(),
        }
    }
}
