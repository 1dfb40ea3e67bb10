//! The Llama family (Llama, Qwen2, Qwen3, Mistral): config and host-side weights.
//!
//! Weights follow the checkpoint's names (`model.layers.{i}.self_attn.q_proj`, ...); linear
//! weights stay in `nn.Linear`'s `[out, in]` layout (y = x·Wᵀ + b).

pub mod config;
pub mod weights;

pub use config::{LlamaArch, LlamaConfig, Rope, RopeKind};
