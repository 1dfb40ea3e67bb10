//! The Llama family (Llama, Qwen2, Qwen3, Mistral): config, host-side weights and the block.
//!
//! Weights follow the checkpoint's names (`model.layers.{i}.self_attn.q_proj`, ...); linear
//! weights are `nn.Linear`'s `[out, in]` in the checkpoint and on the host (y = x·Wᵀ + b), and
//! are transposed once at upload.

mod block;
pub mod config;
pub mod weights;

pub(crate) use block::block_def;
pub use config::{LlamaArch, LlamaConfig, Rope, RopeKind};
