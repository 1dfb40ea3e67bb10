//! The Llama family: llama, qwen2, qwen3 and mistral checkpoints.

mod block;
pub mod config;
pub mod weights;

pub(crate) use block::block_def;
pub use config::LlamaConfig;
