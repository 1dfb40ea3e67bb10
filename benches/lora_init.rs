//! Start-up cost of the PiSSA / OLoRA initialisations (src/lora/init.rs): the SVD or QR of every
//! adapted weight and the residual W − s·B0·A0, on the CPU, for GPT-2 124M and Llama 3.2 1B
//! shapes with random weights. Prints the median seconds of each.
//!
//!     cargo bench --bench lora_init                  # every case
//!     cargo bench --bench lora_init -- gpt2          # cases whose name contains "gpt2"
//!     LORA_INIT_REPEATS=1 cargo bench --bench lora_init
//!
//! No GPU: this is the CPU work that `Trainer::new` does before uploading the residual.

use std::time::Instant;

use lora_wgpu::lora::{init, LoraConfig, LoraInit, LoraLayout};
use lora_wgpu::model::{Gpt2Config, HostWeights, LlamaConfig, ModelConfig};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Random weights (uniform ±0.05) for the adapted modules only: all `principal` reads.
fn adapted_weights(layout: &LoraLayout) -> HostWeights {
    let mut rng = StdRng::seed_from_u64(0);
    layout
        .entries
        .iter()
        .map(|e| {
            let w = (0..e.d_in * e.d_out)
                .map(|_| rng.random_range(-0.05f32..0.05))
                .collect();
            (format!("{}.weight", e.path), w)
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let repeats: usize = std::env::var("LORA_INIT_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let gpt2 = ModelConfig::from(Gpt2Config::named("gpt2").unwrap());
    let llama = ModelConfig::from(LlamaConfig::named("llama-3.2-1b").unwrap());
    let shapes: [(&str, &ModelConfig, Vec<&str>); 3] = [
        ("gpt2-124m c_attn,c_proj", &gpt2, vec!["c_attn", "c_proj"]),
        (
            "llama-3.2-1b q_proj,v_proj",
            &llama,
            vec!["q_proj", "v_proj"],
        ),
        ("llama-3.2-1b all-linear", &llama, vec!["all-linear"]),
    ];
    let inits = [LoraInit::Pissa, LoraInit::PissaNiter(4), LoraInit::Olora];
    println!(
        "lora_init: r = 16, f32 on the CPU ({} threads), median of {repeats}",
        rayon::current_num_threads()
    );
    for (shape, config, targets) in &shapes {
        for init in inits {
            let name = format!("{shape} {init}");
            if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
                continue;
            }
            let lora = LoraConfig {
                r: 16,
                alpha: 32.0,
                target_modules: targets.iter().map(|t| t.to_string()).collect(),
                init,
                ..LoraConfig::default()
            };
            let layout = LoraLayout::new(*config, &lora).unwrap();
            let host = adapted_weights(&layout);
            let times: Vec<f64> = (0..repeats)
                .map(|_| {
                    let mut host = host.clone();
                    let start = Instant::now();
                    let a0b0 = init::principal(init, &host, &layout, lora.scale(), 0).unwrap();
                    init::subtract_principal(&mut host, &layout, lora.scale(), &a0b0).unwrap();
                    start.elapsed().as_secs_f64()
                })
                .collect();
            println!(
                "{name:<40} {:>3} modules  {:>9.3} s",
                layout.entries.len(),
                median(times)
            );
        }
    }
}
