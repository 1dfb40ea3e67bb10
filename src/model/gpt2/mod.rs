//! GPT-2: its config, its weights (host and GPU) and its block, as the ops it records.
//!
//! Weights follow the checkpoint's names (`h.{i}.attn.c_attn`, ...); linear weights are stored
//! as GPT-2's Conv1D stores them, `[in, out]` (y = x·W + b).

use std::path::Path;

pub mod config;
pub mod weights;

use super::block::{Act, ActDef, BlockDef, BlockWeights, Dense, Op};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::lora::{AdaptableModel, Linear};
pub use config::Gpt2Config;
use weights::HostWeights;

/// Most vocabulary rows per wte shard (and per logits chunk of the fused classifier).
const MAX_SHARD_ROWS: usize = 4096;

/// One GPT-2 block's weights.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    pub(crate) ln_1: Dense,
    pub(crate) c_attn: Dense,
    pub(crate) attn_c_proj: Dense,
    pub(crate) ln_2: Dense,
    pub(crate) c_fc: Dense,
    pub(crate) mlp_c_proj: Dense,
}

impl BlockWeights for Block {
    /// Norm 0 is ln_1, norm 1 ln_2 (see [`block_def`]).
    fn norm(&self, i: usize) -> &Dense {
        match i {
            0 => &self.ln_1,
            _ => &self.ln_2,
        }
    }

    fn linear(&self, site: Linear) -> &Dense {
        match site {
            Linear::CAttn => &self.c_attn,
            Linear::AttnCProj => &self.attn_c_proj,
            Linear::CFc => &self.c_fc,
            Linear::MlpCProj => &self.mlp_c_proj,
        }
    }
}

impl Block {
    fn all(&self) -> [&Dense; 6] {
        [
            &self.ln_1,
            &self.c_attn,
            &self.attn_c_proj,
            &self.ln_2,
            &self.c_fc,
            &self.mlp_c_proj,
        ]
    }
}

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
}

/// GPT-2's frozen weights on the GPU.
#[derive(Debug)]
pub struct Gpt2 {
    /// The model's shape.
    pub config: Gpt2Config,
    /// Token embedding (also the tied LM head) in shards of consecutive vocab rows.
    pub(crate) wte: Vec<Tensor>,
    pub(crate) wpe: Tensor,
    pub(crate) blocks: Vec<Block>,
    pub(crate) ln_f: Dense,
    /// The ops of one block, shared by every layer.
    pub(crate) block: BlockDef,
}

/// How the frozen weights of the linear layers (attn.c_attn, attn.c_proj, mlp.c_fc,
/// mlp.c_proj: 85 M of GPT-2 124M's parameters) are stored on the GPU. Embeddings, biases and
/// LayerNorm weights stay f32; all arithmetic is f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightStorage {
    /// 32-bit floats, exactly as loaded.
    #[default]
    F32,
    /// Half precision (rounded once at upload): half the memory of those weights. Needs an
    /// adapter with `SHADER_F16`.
    F16,
}

impl Gpt2 {
    /// Upload host weights (as [`weights::load`] or [`weights::random`] return them), f32.
    pub fn upload(gpu: &Gpu, config: &Gpt2Config, w: &HostWeights) -> Result<Self> {
        Self::upload_with(gpu, config, w, WeightStorage::F32)
    }

    /// Bytes of GPU memory the weights take.
    pub fn allocated_bytes(&self) -> u64 {
        let dense = |d: &Dense| d.w.bytes() + d.b.bytes();
        let blocks: u64 = self.blocks.iter().flat_map(Block::all).map(dense).sum();
        let wte: u64 = self.wte.iter().map(Tensor::bytes).sum();
        wte + self.wpe.bytes() + blocks + dense(&self.ln_f)
    }

    /// [`Gpt2::upload`] with the linear layers' weights stored as `storage` says.
    pub fn upload_with(
        gpu: &Gpu,
        config: &Gpt2Config,
        w: &HostWeights,
        storage: WeightStorage,
    ) -> Result<Self> {
        config.validate()?;
        let c = config.n_embd;
        let host = |name: &str| {
            w.get(name)
                .ok_or_else(|| Error::shape("Gpt2::upload", format!("missing tensor {name}")))
        };
        let get = |name: &str, shape: &[usize]| gpu.upload(name, host(name)?, shape);
        let dense = |w_name: String, b_name: String, d_in: usize, d_out: usize| -> Result<Dense> {
            let weight = if d_in == 0 {
                get(&w_name, &[d_out])? // LayerNorm
            } else if storage == WeightStorage::F16 {
                gpu.upload_f16(&w_name, host(&w_name)?, &[d_in, d_out])?
            } else {
                get(&w_name, &[d_in, d_out])?
            };
            Ok(Dense {
                w: weight,
                b: get(&b_name, &[d_out])?,
            })
        };
        let rows_fit = (gpu.limits().max_storage_buffer_binding_size as usize / (4 * c)).max(1);
        let shard_rows = MAX_SHARD_ROWS.min(rows_fit).min(config.vocab_size);
        let wte_all = host("wte.weight")?;
        let mut wte = Vec::new();
        for (i, rows) in wte_all.chunks(shard_rows * c).enumerate() {
            wte.push(gpu.upload(
                &format!("wte.weight[shard {i}]"),
                rows,
                &[rows.len() / c, c],
            )?);
        }
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let h = |s: &str| format!("h.{i}.{s}");
            let pair = |s: &str, d_in, d_out| {
                dense(
                    h(&format!("{s}.weight")),
                    h(&format!("{s}.bias")),
                    d_in,
                    d_out,
                )
            };
            blocks.push(Block {
                ln_1: pair("ln_1", 0, c)?,
                c_attn: pair("attn.c_attn", c, 3 * c)?,
                attn_c_proj: pair("attn.c_proj", c, c)?,
                ln_2: pair("ln_2", 0, c)?,
                c_fc: pair("mlp.c_fc", c, 4 * c)?,
                mlp_c_proj: pair("mlp.c_proj", 4 * c, c)?,
            });
        }
        Ok(Gpt2 {
            config: config.clone(),
            wte,
            wpe: get("wpe.weight", &[config.n_positions, c])?,
            blocks,
            ln_f: dense("ln_f.weight".into(), "ln_f.bias".into(), 0, c)?,
            block: block_def(c),
        })
    }

    /// Load a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`).
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model directory not found (expected config.json and model.safetensors inside)",
                ),
            });
        }
        let config = Gpt2Config::from_file(&dir.join("config.json"))?;
        let w = weights::load(&dir.join("model.safetensors"), &config)?;
        Self::upload(gpu, &config, &w)
    }

    /// Vocabulary rows of each wte shard: (first row, rows).
    pub(crate) fn shard_ranges(&self) -> Vec<(usize, usize)> {
        let c = self.config.n_embd;
        let mut v0 = 0;
        self.wte
            .iter()
            .map(|s| {
                let r = (v0, s.len() / c);
                v0 += r.1;
                r
            })
            .collect()
    }
}
