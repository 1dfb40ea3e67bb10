//! STUB
#![allow(missing_docs, unused)]
use std::path::Path;
use crate::error::Result;
use super::LlamaConfig;
use crate::model::HostWeights;
pub fn load(dir: &Path, cfg: &LlamaConfig) -> Result<HostWeights> { todo!() }
pub fn random(cfg: &LlamaConfig, seed: u64) -> HostWeights { todo!() }
pub fn tensor_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> { todo!() }
