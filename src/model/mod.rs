//! Models: configuration, checkpoint loading, the block definition every pass records, the
//! training graph and generation.
//!
//! A model family is its config, its weights ([`Gpt2`]: names as Hugging Face writes them) and
//! its block definition (`model::block`); the training graph and the KV-cache generator record any
//! block definition, so a block is written once.

pub(crate) mod block;
pub mod generate;
pub mod gpt2;
pub mod graph;
pub mod llama;
pub mod source;

pub use generate::{Generator, SamplingConfig, ScaledAdapter, StopReason};
pub use gpt2::{weights, Gpt2, Gpt2Config, WeightStorage};
pub use graph::{MicroBatch, OptimizerState, StepStats, TrainGraph};
pub use source::{Model, ModelSource};
