//! GPT-2: configuration, checkpoint loading, the training graph and generation.

mod config;
pub mod generate;
pub mod graph;
pub mod source;
pub mod weights;

pub use config::Gpt2Config;
pub use generate::{Generator, SamplingConfig, ScaledAdapter, StopReason};
pub use graph::{Gpt2, OptimizerState, StepStats, TrainGraph, WeightStorage};
pub use source::{Model, ModelSource};
