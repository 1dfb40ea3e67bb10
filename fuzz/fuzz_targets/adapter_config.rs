//! `adapter_config.json` bytes -> `LoraConfig` -> validated against a small model -> layout:
//! never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lora_wgpu::lora::{peft, LoraLayout};
use lora_wgpu::model::Gpt2Config;

fuzz_target!(|data: &[u8]| {
    let Ok(lora) = peft::parse_config(Path::new("adapter_config.json"), data) else {
        return;
    };
    let model = Gpt2Config {
        n_embd: 48,
        n_layer: 2,
        n_head: 4,
        n_positions: 32,
        vocab_size: 99,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new".into(),
    };
    if let Ok(layout) = LoraLayout::new(&model, &lora) {
        let _ = layout.num_parameters();
        let _ = lora.scale();
    }
});
