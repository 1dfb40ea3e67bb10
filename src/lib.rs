//! # lora_wgpu
//!
//! LoRA fine-tuning on any GPU through [wgpu](https://wgpu.rs): Vulkan, Metal, DX12, OpenGL,
//! and software Vulkan (lavapipe) where no GPU exists. The math runs in WGSL compute shaders
//! (`shaders/`); Rust records the dispatches once and replays them.
//!
//! Layers, each using only those above it:
//! - [`gpu`]: adapter, device, [`Tensor`]s, the pipeline cache, recordings, readback;
//! - [`kernels`]: each kernel's definition beside its launcher, and the variant choices;
//!   [`cpu`]: their plain-loop references;
//! - [`lora`]: LoRA's configuration, parameter layout and PEFT adapter files, for any model
//!   that says what linear layers its blocks have;
//! - [`model`]: model families (GPT-2), the block definition, the training graph, generation;
//! - [`data`], [`train`], [`merge`]: datasets, the trainer and its run folder, merged models.
//!
//! ```
//! use lora_wgpu::{gpu::{Gpu, GpuOptions}, kernels::matmul::{matmul, MatmulOp}};
//!
//! # fn main() -> lora_wgpu::Result<()> {
//! let gpu = Gpu::new(&GpuOptions::from_env())?;
//! let a = gpu.upload("a", &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
//! let b = gpu.upload("b", &[1.0, 0.0, 0.0, 1.0], &[2, 2])?;
//! let c = gpu.zeros("c", &[2, 2])?;
//! let mm = matmul(&gpu, &c, &a, &b, None, &MatmulOp::new(2, 2, 2))?;
//! gpu.run(&[&mm])?;
//! assert_eq!(gpu.download(&c)?, vec![1.0, 2.0, 3.0, 4.0]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
// Kernels take outputs, inputs and shapes as separate arguments (llm.c style), which is
// clearer at the call site than bundling them into one-off structs.
#![allow(clippy::too_many_arguments)]

pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod error;
mod fsio;
/// GGUF files (llama.cpp's format): reading with strict validation, and writing.
pub mod gguf;
pub mod gpu;
pub mod kernels;
pub mod lora;
pub mod merge;
pub mod model;
/// ggml's tensor types: block quantizations (Q8_0, Q4_0, Q4_K, ...) and their (de)quantization.
pub mod quant;
mod tensor_file;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

/// The README's Rust examples, compiled and run as doctests so the README stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use gpu::{Gpu, GpuOptions, Tensor};
