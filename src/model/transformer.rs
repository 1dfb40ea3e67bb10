//! `Transformer`: a model's frozen weights on the GPU, for any supported family.
//!
//! Weights keep their checkpoint's names. Linear weights are stored `[in, out]` on the GPU
//! (y = x·W + b) whatever the checkpoint's layout: GPT-2's Conv1D already is, `nn.Linear`
//! weights (`[out, in]`, the Llama family) are transposed once at upload.

use std::collections::BTreeMap;
use std::path::Path;

use super::block::{BlockDef, BlockWeights, Dense};
use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Dtype, Gpu, Tensor};
use crate::kernels::{layernorm, qmatmul, rmsnorm, rope};
use crate::lora::{AdaptableModel, Linear};
use crate::quant::GgmlType;

/// Host weights by checkpoint name, f32.
pub type HostWeights = BTreeMap<String, Vec<f32>>;

/// Weights already in ggml blocks, by checkpoint name: (type, bytes) with the blocks along each
/// row: linear weights `[out, in]`, and a Llama-family model's embedding and untied head
/// `[vocab, hidden]` (a GGUF file's quantized weights, see [`super::gguf`]).
pub type QuantWeights = BTreeMap<String, (GgmlType, Vec<u8>)>;

/// Most vocabulary rows per embedding / LM-head shard (and per logits chunk of the fused
/// classifier).
const MAX_SHARD_ROWS: usize = 4096;

/// One block's weights: its norms in the order the block definition numbers them, and its
/// linear layers.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    pub(crate) norms: Vec<Dense>,
    pub(crate) linears: Vec<(Linear, Dense)>,
}

impl BlockWeights for Block {
    fn norm(&self, i: usize) -> &Dense {
        &self.norms[i]
    }

    fn linear(&self, site: Linear) -> &Dense {
        &self
            .linears
            .iter()
            .find(|(l, _)| *l == site)
            .expect("the block definition names only the model's linear layers")
            .1
    }
}

/// How the frozen weights of the blocks' linear layers (most of a model's parameters) are
/// stored on the GPU. Embeddings, biases and norm weights stay f32; all arithmetic is f32
/// either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightStorage {
    /// 32-bit floats, exactly as loaded.
    #[default]
    F32,
    /// Half precision (rounded once at upload): half the memory of those weights. Needs an
    /// adapter with `SHADER_F16`.
    F16,
    /// Quantized once at upload into one of ggml's block formats that the GPU kernels read
    /// ([`qmatmul::FORMATS`]): Q8_0 about a quarter of f32's memory, Q4_0 and Q4_K about an
    /// eighth. The blocks run along each layer's input, which must be a multiple of the block
    /// (32, or 256 for Q4_K).
    Quant(GgmlType),
}

/// A model's frozen weights on the GPU. Clones share the buffers.
#[derive(Clone, Debug)]
pub struct Transformer {
    /// The model's shape.
    pub config: ModelConfig,
    /// Token embedding in shards of consecutive vocab rows (also the LM head when tied).
    pub(crate) embed: Vec<Tensor>,
    /// Learned position embedding (GPT-2).
    pub(crate) wpe: Option<Tensor>,
    pub(crate) blocks: Vec<Block>,
    /// The norm after the last block.
    pub(crate) norm_f: Dense,
    /// An untied LM head, in shards like `embed`.
    pub(crate) head: Option<Vec<Tensor>>,
    /// The ops of one block, shared by every layer.
    pub(crate) block: BlockDef,
}

impl Transformer {
    /// Upload host weights (as [`crate::model::gpt2::weights`] or
    /// [`crate::model::llama::weights`] return them), f32.
    pub fn upload(gpu: &Gpu, config: &impl ToConfig, w: &HostWeights) -> Result<Self> {
        Self::upload_with(gpu, config, w, WeightStorage::F32)
    }

    /// [`Transformer::upload`] with the linear layers' weights stored as `storage` says.
    pub fn upload_with(
        gpu: &Gpu,
        config: &impl ToConfig,
        w: &HostWeights,
        storage: WeightStorage,
    ) -> Result<Self> {
        Self::upload_quant(gpu, config, w, &QuantWeights::new(), storage)
    }

    /// [`Transformer::upload_with`] where the linear weights in `quant` (of types
    /// [`qmatmul::supported`]) are uploaded in their blocks as they are, whatever `storage`
    /// says, and need not be in `w`: a GGUF file's quantized weights are never expanded to f32
    /// and quantized again.
    pub fn upload_quant(
        gpu: &Gpu,
        config: &impl ToConfig,
        w: &HostWeights,
        quant: &QuantWeights,
        storage: WeightStorage,
    ) -> Result<Self> {
        let config = config.to_config();
        config.validate()?;
        let c = config.hidden_size();
        let host = |name: &str| {
            w.get(name).ok_or_else(|| {
                Error::shape("Transformer::upload", format!("missing tensor {name}"))
            })
        };
        let get = |name: &str, shape: &[usize]| gpu.upload(name, host(name)?, shape);
        let norm = |name: &str, bias: bool, width: usize| -> Result<Dense> {
            let w_name = format!("{name}.weight");
            let b_name = format!("{name}.bias");
            Ok(Dense {
                w: get(&w_name, &[width])?,
                b: bias.then(|| get(&b_name, &[width])).transpose()?,
            })
        };
        let linear = |layer: usize, site: Linear, d_in: usize, d_out: usize| -> Result<Dense> {
            let path = config.module_path(layer, site);
            let w_name = format!("{path}.weight");
            let weight = match quant.get(&w_name) {
                Some((ty, bytes)) => qmatmul::upload(gpu, &w_name, *ty, bytes, [d_out, d_in])?,
                None => {
                    let values = host(&w_name)?;
                    upload_linear(gpu, &config, &w_name, values, d_in, d_out, storage)?
                }
            };
            let bias = config
                .linear_bias(site)
                .then(|| get(&format!("{path}.bias"), &[d_out]))
                .transpose()?;
            Ok(Dense { w: weight, b: bias })
        };
        let names = config.stem_names();
        // The embedding (and LM head) are quantized with the linear layers where the table's
        // rows are whole blocks and no learned position table is added to them (the Llama
        // family): they are a fifth of a 1B model's weights.
        let quant_embed = match storage {
            WeightStorage::Quant(ty)
                if names.positions.is_none() && c.is_multiple_of(ty.block_len()) =>
            {
                Some(ty)
            }
            _ => None,
        };
        let shards = |name: &str| -> Result<Vec<Tensor>> {
            let rows_fit = (gpu.limits().max_storage_buffer_binding_size as usize / (4 * c)).max(1);
            let shard_rows = MAX_SHARD_ROWS.min(rows_fit).min(config.vocab_size());
            if let Some((ty, bytes)) = quant.get(name).filter(|_| names.positions.is_none()) {
                let row = ty.bytes_for(c).unwrap_or(0);
                if row == 0 || bytes.len() != config.vocab_size() * row {
                    return Err(Error::shape(
                        "Transformer::upload",
                        format!(
                            "{name} has {} bytes of {ty}, expected {} rows of {c}",
                            bytes.len(),
                            config.vocab_size()
                        ),
                    ));
                }
                return bytes
                    .chunks(shard_rows * row)
                    .enumerate()
                    .map(|(i, rows)| {
                        let shard = format!("{name}[shard {i}]");
                        qmatmul::upload(gpu, &shard, *ty, rows, [rows.len() / row, c])
                    })
                    .collect();
            }
            let all = host(name)?;
            if all.len() != config.vocab_size() * c {
                return Err(Error::shape(
                    "Transformer::upload",
                    format!(
                        "{name} has {} values, expected {} x {c}",
                        all.len(),
                        config.vocab_size()
                    ),
                ));
            }
            all.chunks(shard_rows * c)
                .enumerate()
                .map(|(i, rows)| {
                    let shard = format!("{name}[shard {i}]");
                    let shape = [rows.len() / c, c];
                    match quant_embed {
                        Some(ty) => qmatmul::quantize_upload(gpu, &shard, ty, rows, shape),
                        None => gpu.upload(&shard, rows, &shape),
                    }
                })
                .collect()
        };
        let block = config.block_def();
        let rms = config.rms_norm();
        let mut blocks = Vec::with_capacity(config.num_layers());
        for l in 0..config.num_layers() {
            let widths = norm_widths(&block);
            let norms = config
                .norm_names(l)
                .iter()
                .zip(widths)
                .map(|((name, bias), width)| norm(name, *bias, width))
                .collect::<Result<Vec<_>>>()?;
            let linears = block
                .linears()
                .into_iter()
                .map(|(site, d_in, d_out)| Ok((site, linear(l, site, d_in, d_out)?)))
                .collect::<Result<Vec<_>>>()?;
            blocks.push(Block { norms, linears });
        }
        Ok(Transformer {
            embed: shards(names.embed)?,
            wpe: names
                .positions
                .map(|n| get(n, &[config.max_positions(), c]))
                .transpose()?,
            blocks,
            norm_f: norm(names.norm, !rms, c)?,
            head: names.head.map(shards).transpose()?,
            block,
            config,
        })
    }

    /// A copy whose linear layers at `sites` (block, layer) take their weights from `w` (host
    /// weights by checkpoint name, checkpoint layout), stored as the current ones are; every
    /// other weight is shared with `self`. PiSSA / OLoRA train on such a residual base.
    pub fn with_linear_weights(
        &self,
        gpu: &Gpu,
        w: &HostWeights,
        sites: &[(usize, Linear)],
    ) -> Result<Self> {
        let mut out = self.clone();
        for &(layer, site) in sites {
            let (_, d_in, d_out) = self
                .block
                .linears()
                .into_iter()
                .find(|(l, ..)| *l == site)
                .ok_or_else(|| {
                    Error::shape(
                        "Transformer::with_linear_weights",
                        format!("the model has no {site:?} layer"),
                    )
                })?;
            let w_name = format!("{}.weight", self.config.module_path(layer, site));
            let values = w.get(&w_name).ok_or_else(|| {
                Error::shape(
                    "Transformer::with_linear_weights",
                    format!("missing tensor {w_name}"),
                )
            })?;
            let dense = out
                .blocks
                .get_mut(layer)
                .and_then(|b| b.linears.iter_mut().find(|(l, _)| *l == site))
                .ok_or_else(|| {
                    Error::shape(
                        "Transformer::with_linear_weights",
                        format!("the model has no block {layer}"),
                    )
                })?;
            let storage = match dense.1.w.dtype() {
                Dtype::F32 => WeightStorage::F32,
                Dtype::F16 => WeightStorage::F16,
                Dtype::Quant(ty) => WeightStorage::Quant(ty),
            };
            dense.1.w = upload_linear(gpu, &self.config, &w_name, values, d_in, d_out, storage)?;
        }
        Ok(out)
    }

    /// Load a Hugging Face model directory (`config.json` + `model.safetensors`, or its
    /// shards), f32.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let w = super::source::load_weights(dir, &config)?;
        Self::upload(gpu, &config, &w)
    }

    /// Bytes of GPU memory the weights take.
    pub fn allocated_bytes(&self) -> u64 {
        let blocks: u64 = self
            .blocks
            .iter()
            .map(|b| {
                b.norms.iter().map(Dense::bytes).sum::<u64>()
                    + b.linears.iter().map(|(_, d)| d.bytes()).sum::<u64>()
            })
            .sum();
        let shards = |s: &[Tensor]| s.iter().map(Tensor::bytes).sum::<u64>();
        shards(&self.embed)
            + self.head.as_deref().map_or(0, shards)
            + self.wpe.as_ref().map_or(0, Tensor::bytes)
            + blocks
            + self.norm_f.bytes()
    }

    /// How the frozen weights are stored, when any is not f32: the element types of the linear
    /// layers and the embedding, sorted and joined by `+` (`q4_0`, `f16`, `q4_k+q8_0`).
    pub fn storage(&self) -> Option<String> {
        let name = |d: Dtype| match d {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Quant(ty) => ty.name(),
        };
        let types: std::collections::BTreeSet<&str> = self
            .blocks
            .iter()
            .flat_map(|b| b.linears.iter().map(|(_, d)| name(d.w.dtype())))
            .chain(self.embed.iter().map(|t| name(t.dtype())))
            .collect();
        (types.len() > 1 || !types.contains("f32"))
            .then(|| types.into_iter().collect::<Vec<_>>().join("+"))
    }

    /// Whether the token embedding (and the LM head) is stored quantized.
    pub(crate) fn embed_quantized(&self) -> bool {
        matches!(self.embed[0].dtype(), Dtype::Quant(_))
    }

    /// The LM head's shards (the embedding's when tied).
    pub(crate) fn head_shards(&self) -> &[Tensor] {
        self.head.as_deref().unwrap_or(&self.embed)
    }

    /// Vocabulary rows of each LM-head shard: (first row, rows).
    pub(crate) fn shard_ranges(&self) -> Vec<(usize, usize)> {
        let c = self.config.hidden_size();
        let mut v0 = 0;
        self.head_shards()
            .iter()
            .map(|s| {
                let r = (v0, s.len() / c);
                v0 += r.1;
                r
            })
            .collect()
    }

    /// RoPE's cos and sin tables over positions `0..positions`, (positions, head_dim / 2) each,
    /// on the GPU; `None` for a model without rotary positions.
    pub(crate) fn rope_tables(&self, gpu: &Gpu, positions: usize) -> Result<Option<[Tensor; 2]>> {
        let Some(inv_freq) = self.config.rope_inv_freq() else {
            return Ok(None);
        };
        let (cos, sin) = rope::tables(&inv_freq, positions);
        let shape = [positions, inv_freq.len()];
        Ok(Some([
            gpu.upload("rope cos", &cos, &shape)?,
            gpu.upload("rope sin", &sin, &shape)?,
        ]))
    }

    /// The final norm of `inp` into `out`, saving its statistics (`mean` is LayerNorm's only).
    pub(crate) fn final_norm(
        &self,
        gpu: &Gpu,
        out: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        inp: &Tensor,
    ) -> Result<Dispatch> {
        let (c, eps) = (self.config.hidden_size(), self.config.norm_eps());
        let w = &self.norm_f;
        match &w.b {
            Some(b) => layernorm::forward(gpu, out, mean, rstd, inp, &w.w, b, c, eps),
            None => rmsnorm::forward(gpu, out, rstd, inp, &w.w, c, eps),
        }
    }

    /// The final norm's input gradient, added to `dinp`.
    pub(crate) fn final_norm_backward(
        &self,
        gpu: &Gpu,
        dinp: &Tensor,
        dout: &Tensor,
        inp: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
    ) -> Result<Dispatch> {
        let c = self.config.hidden_size();
        let w = &self.norm_f;
        match &w.b {
            Some(_) => layernorm::backward(gpu, dinp, dout, inp, &w.w, mean, rstd, c),
            None => rmsnorm::backward(gpu, dinp, dout, inp, &w.w, rstd, c, true),
        }
    }
}

/// The width of each norm the block definition numbers, by norm index.
fn norm_widths(def: &BlockDef) -> Vec<usize> {
    use super::block::Op;
    let mut widths = Vec::new();
    for op in &def.ops {
        let (norm, width) = match *op {
            Op::LayerNorm { inp, norm, .. } => (norm, def.acts[inp].width),
            Op::RmsNorm { norm, width, .. } => (norm, width),
            _ => continue,
        };
        if widths.len() <= norm {
            widths.resize(norm + 1, 0);
        }
        widths[norm] = width;
    }
    widths
}

/// Upload one linear layer's weight `values` (checkpoint layout, d_in x d_out values) as
/// `[in, out]`, stored as `storage` says (quantized: `[out, in]`, blocks along the input).
fn upload_linear(
    gpu: &Gpu,
    config: &ModelConfig,
    name: &str,
    values: &[f32],
    d_in: usize,
    d_out: usize,
    storage: WeightStorage,
) -> Result<Tensor> {
    if values.len() != d_in * d_out {
        return Err(Error::shape(
            "Transformer::upload",
            format!(
                "{name} has {} values, expected {d_in} x {d_out}",
                values.len()
            ),
        ));
    }
    if let WeightStorage::Quant(ty) = storage {
        let out_in = if config.fan_in_fan_out() {
            std::borrow::Cow::Owned(transpose(values, d_in, d_out))
        } else {
            std::borrow::Cow::Borrowed(values)
        };
        return qmatmul::quantize_upload(gpu, name, ty, &out_in, [d_out, d_in]);
    }
    let in_out = if config.fan_in_fan_out() {
        std::borrow::Cow::Borrowed(values)
    } else {
        std::borrow::Cow::Owned(transpose(values, d_out, d_in))
    };
    match storage {
        WeightStorage::F16 => gpu.upload_f16(name, &in_out, &[d_in, d_out]),
        _ => gpu.upload(name, &in_out, &[d_in, d_out]),
    }
}

/// `[rows, cols]` row-major into `[cols, rows]`.
pub(crate) fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for r in 0..rows {
        for (c, &v) in w[r * cols..(r + 1) * cols].iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// A model config of any family, or one of a family ([`Gpt2Config`](super::Gpt2Config),
/// [`LlamaConfig`](super::LlamaConfig)): what [`Transformer::upload`] takes.
pub trait ToConfig {
    /// The config as a [`ModelConfig`].
    fn to_config(&self) -> ModelConfig;
}

impl<T: Clone + Into<ModelConfig>> ToConfig for T {
    fn to_config(&self) -> ModelConfig {
        self.clone().into()
    }
}
