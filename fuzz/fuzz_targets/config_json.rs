//! `config.json` bytes -> `Gpt2Config` and `LlamaConfig`: never panics; an accepted config's
//! derived sizes (parameter count, tensor list, RoPE frequencies) are computed without overflow
//! or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_wgpu::model::{gpt2, llama, Gpt2Config, LlamaConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = Gpt2Config::from_json_bytes(data) {
        let _ = cfg.num_parameters();
        let _ = cfg.head_size();
        // One entry per tensor: at most 2 + 12 * 4096 + 2 (validate caps n_layer).
        let shapes = gpt2::weights::tensor_shapes(&cfg);
        assert_eq!(shapes.len(), 4 + 12 * cfg.n_layer);
    }
    if let Ok(cfg) = LlamaConfig::from_json_bytes(data) {
        let _ = cfg.num_parameters();
        let inv_freq = cfg.rope.inv_freq(cfg.head_dim());
        assert_eq!(inv_freq.len(), cfg.head_dim() / 2);
        let shapes = llama::weights::tensor_shapes(&cfg);
        assert!(shapes.len() >= 2 + 9 * cfg.num_hidden_layers);
    }
});
