//! GPT-2: configuration, checkpoint loading and the forward/backward graph.

mod config;
pub mod graph;
pub mod source;
pub mod weights;

pub use config::Gpt2Config;
pub use graph::{Gpt2, OptimizerState, StepStats, TrainGraph};
pub use source::{Model, ModelSource};
