//! Models: configuration, checkpoint loading, the block definition every pass records, the
//! training graph and generation.
//!
//! A model family is its config, its checkpoint's names and its block definition
//! (`model::block`): GPT-2 (`gpt2`) and the Llama family (`llama`: llama, qwen2, qwen3,
//! mistral). [`ModelConfig`] holds either; [`Transformer`] is any of them on the GPU. The
//! training graph and the KV-cache generator record any block definition, so a block is
//! written once.

pub(crate) mod block;
pub mod config;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod graph;
pub mod llama;
pub mod source;
pub mod transformer;

pub use config::ModelConfig;
pub use generate::{Generator, SamplingConfig, ScaledAdapter, StopReason};
pub use gpt2::Gpt2Config;
pub use graph::{MicroBatch, OptimizerState, StepStats, TrainGraph};
pub use llama::LlamaConfig;
pub use source::{Model, ModelSource};
pub use transformer::{HostWeights, QuantWeights, ToConfig, Transformer, WeightStorage};
