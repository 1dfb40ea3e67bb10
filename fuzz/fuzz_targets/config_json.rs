//! `config.json` bytes -> `Gpt2Config`: never panics; an accepted config's derived sizes
//! (parameter count, tensor list) are computed without overflow or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_wgpu::model::{weights, Gpt2Config};

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = Gpt2Config::from_json_bytes(data) {
        let _ = cfg.num_parameters();
        let _ = cfg.head_size();
        // One entry per tensor: at most 2 + 12 * 4096 + 2 (validate caps n_layer).
        let shapes = weights::tensor_shapes(&cfg);
        assert_eq!(shapes.len(), 4 + 12 * cfg.n_layer);
    }
});
