//! Safetensors bytes through our loaders: a GPT-2 `model.safetensors` (`weights::parse`) and a
//! PEFT `adapter_model.safetensors` (`peft::parse_weights`), both for the tiny shape the seed
//! corpus was written for (n_embd 4, 1 layer, 4 positions, vocab 5; LoRA r 2 on c_attn). Never
//! panics; a hostile header (huge shapes or offsets) is refused before anything is allocated.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lora_wgpu::lora::{peft, LoraConfig, LoraLayout};
use lora_wgpu::model::{gpt2::weights, Gpt2Config};

fuzz_target!(|data: &[u8]| {
    let cfg = Gpt2Config {
        n_embd: 4,
        n_layer: 1,
        n_head: 1,
        n_positions: 4,
        vocab_size: 5,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new".into(),
    };
    let _ = weights::parse(Path::new("model.safetensors"), data, &cfg);
    let lora = LoraConfig {
        r: 2,
        target_modules: vec!["c_attn".into()],
        ..LoraConfig::default()
    };
    let layout = LoraLayout::new(&cfg, &lora).expect("a valid LoRA config");
    let _ = peft::parse_weights(Path::new("adapter_model.safetensors"), data, &layout);
});
