//! GGUF bytes through `GgufFile::from_bytes` and, when they parse, the dequantization of every
//! tensor. Never panics; a hostile header (huge counts, lengths, dims or offsets) is refused
//! before anything is allocated. Seeds in fuzz/corpus/gguf/ were written by the `gguf` Python
//! package (scripts/make_gguf_fixtures.py).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lora_wgpu::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) {
        for t in file.tensors() {
            let values = file.dequantize(&t.name).expect("a parsed tensor dequantizes");
            assert_eq!(values.len(), t.n_elements());
        }
    }
});
