//! GPT-2: configuration, checkpoint loading and the forward/backward graph.

mod config;
pub mod generate;
pub mod graph;
pub mod weights;

pub use config::Gpt2Config;
pub use generate::{Generator, SamplingConfig, ScaledAdapter, StopReason};
pub use graph::{Gpt2, TrainGraph};
