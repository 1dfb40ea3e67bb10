//! STUB
#![allow(missing_docs, unused)]
use std::path::Path;
use crate::error::Result;
#[derive(Clone, Debug, PartialEq)]
pub enum LlamaArch { Llama, Qwen2, Qwen3, Mistral }
impl LlamaArch { pub fn name(&self) -> &'static str { "llama" } }
#[derive(Clone, Debug, PartialEq)]
pub struct Rope { pub theta: f64 }
impl Rope { pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> { todo!() } }
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig { pub arch: LlamaArch, pub hidden_size: usize, pub intermediate_size: usize, pub num_hidden_layers: usize, pub num_attention_heads: usize, pub num_key_value_heads: usize, pub vocab_size: usize, pub max_position_embeddings: usize, pub rms_norm_eps: f32, pub tie_word_embeddings: bool, pub mlp_bias: bool, pub rope: Rope, pub bos_token_id: Option<u32>, pub raw: serde_json::Value }
impl LlamaConfig {
  pub fn named(n: &str) -> Result<Self> { todo!() }
  pub fn from_file(p: &Path) -> Result<Self> { todo!() }
  pub fn validate(&self) -> Result<()> { todo!() }
  pub fn head_dim(&self) -> usize { todo!() }
  pub fn qkv_bias(&self) -> bool { todo!() }
  pub fn o_bias(&self) -> bool { todo!() }
  pub fn qk_norm(&self) -> bool { todo!() }
  pub fn num_parameters(&self) -> usize { todo!() }
  pub fn eos_token_ids(&self) -> Vec<u32> { todo!() }
}
