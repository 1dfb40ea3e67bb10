//! Shared test helpers: one GPU for the whole test binary, seeded random data, tolerances.
#![allow(dead_code)]

use std::sync::OnceLock;

use lora_wgpu::{Gpu, GpuOptions};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The adapter the library would choose. Without one the test fails (never skips) with the
/// library's message, which says how to install a driver.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(&GpuOptions::from_env()) {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    })
}

/// `n` values uniform in [-1, 1), reproducible from `seed`.
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Assert |got - want| <= atol + rtol * |want| element-wise, naming the worst element.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        let excess = if excess.is_nan() {
            f32::INFINITY
        } else {
            excess
        };
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let (i, excess) = worst;
    assert!(
        excess <= 0.0,
        "{what}: element {i}: gpu {} vs cpu {} (|diff| = {}, allowed {})",
        got[i],
        want[i],
        (got[i] - want[i]).abs(),
        atol + rtol * want[i].abs()
    );
}

/// The kernels' tolerance from the issue: 1e-4 absolute + 1e-4 relative.
pub const ATOL: f32 = 1e-4;
/// See [`ATOL`].
pub const RTOL: f32 = 1e-4;

/// Run the `lora-wgpu` binary with `env` set (and without the caller's adapter choice):
/// (success, stdout, stderr).
pub fn cli_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lora-wgpu"))
        .args(args)
        .env_remove("WGPU_ADAPTER_NAME")
        .envs(env.iter().copied())
        .output()
        .expect("failed to start lora-wgpu");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`cli_env`] with no extra environment.
pub fn cli(args: &[&str]) -> (bool, String, String) {
    cli_env(args, &[])
}

/// Readers of the JSON fixtures the scripts in `scripts/` write.
pub mod fixture {
    use lora_wgpu::kernels::adamw::AdamW;
    use lora_wgpu::kernels::cross_entropy::IGNORE;
    use serde_json::Value;

    /// A JSON array of numbers as f32.
    pub fn floats(v: &Value) -> Vec<f32> {
        v.as_array()
            .expect("a JSON array")
            .iter()
            .map(|x| x.as_f64().expect("a number") as f32)
            .collect()
    }

    /// A JSON array of token ids.
    pub fn ids(v: &Value) -> Vec<u32> {
        v.as_array()
            .expect("a JSON array")
            .iter()
            .map(|x| x.as_u64().expect("a token id") as u32)
            .collect()
    }

    /// Targets with PyTorch's ignored positions (negative) as [`IGNORE`].
    pub fn targets(v: &Value) -> Vec<u32> {
        v.as_array()
            .expect("a JSON array")
            .iter()
            .map(|v| match v.as_i64().expect("a target id") {
                t if t < 0 => IGNORE,
                t => t as u32,
            })
            .collect()
    }

    /// The AdamW settings of a fixture's "adamw" object.
    pub fn adamw(a: &Value) -> AdamW {
        let f = |k: &str| a[k].as_f64().expect("an AdamW setting") as f32;
        AdamW {
            lr: f("lr"),
            weight_decay: f("weight_decay"),
            max_grad_norm: f("max_grad_norm"),
            ..AdamW::default()
        }
    }

    /// Every tensor of `layout` (A, B and DoRA's magnitudes) in the flat `grads` against the
    /// fixture's gradient of the same PEFT name, within 1e-3 relative; the fixture has no
    /// others.
    #[track_caller]
    pub fn assert_grads_match(
        layout: &lora_wgpu::lora::LoraLayout,
        grads: &[f32],
        want: &serde_json::Map<String, Value>,
        what: &str,
    ) {
        use lora_wgpu::lora::peft;
        let mut count = 0;
        for e in &layout.entries {
            for (which, offset, shape) in peft::tensors(layout, e) {
                let key = peft::key(layout, e, which);
                let reference = floats(
                    want.get(&key)
                        .unwrap_or_else(|| panic!("{what}: the reference has no gradient {key}")),
                );
                let len: usize = shape.iter().product();
                let got = &grads[offset..offset + len];
                assert_rel(got, &reference, 1e-3, 0.0, &format!("{what} {key}"));
                count += 1;
            }
        }
        assert_eq!(
            want.len(),
            count,
            "{what}: adapted modules differ from the reference's"
        );
    }

    /// Max |got - want| within `abs` or `rel` · max |want|, naming the worst element.
    #[track_caller]
    pub fn assert_rel(got: &[f32], want: &[f32], rel: f32, abs: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (i, err) = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold(
                (0, 0.0f32),
                |m, (i, e)| if e > m.1 || e.is_nan() { (i, e) } else { m },
            );
        assert!(
            err <= abs || err <= rel * scale,
            "{what}: element {i}: {} vs PyTorch {} (|diff| {err}, max |ref| {scale})",
            got[i],
            want[i]
        );
    }
}

/// The tiny GPT-2 of tests/fixtures/tiny_gpt2 as a [`Model`](lora_wgpu::model::Model) (GPT-2's
/// tokenizer), for tests that run the trainer.
pub fn tiny_gpt2_model() -> lora_wgpu::model::Model {
    use lora_wgpu::model::{Model, ModelSource, Transformer};
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_gpt2/model");
    let transformer = Transformer::load(gpu(), &dir).unwrap();
    Model {
        source: ModelSource::Dir(dir),
        config: transformer.config.clone(),
        transformer,
        tokenizer: lora_wgpu::tokenizer::Tokenizer::gpt2().unwrap(),
        special: Default::default(),
    }
}

/// A dataset of `tokens` random ids below 99 (the tiny fixtures' vocabulary) in blocks of
/// `block`, reproducible from `seed`.
pub fn random_dataset(tokens: usize, block: usize, seed: u64) -> lora_wgpu::data::Dataset {
    use lora_wgpu::data::{Dataset, TokenStream};
    let mut rng = StdRng::seed_from_u64(seed);
    let stream = TokenStream {
        ids: (0..tokens).map(|_| rng.random_range(0..99)).collect(),
        is_prompt: vec![false; tokens],
        documents: 1,
    };
    Dataset::from_tokens(&stream, std::path::Path::new("random"), block, false).unwrap()
}

/// Train `cfg` on `model` into `straight` in one go, and into `resumed` stopped after `stop`
/// steps and resumed from its checkpoint (`cfg` must checkpoint at `stop`): the two runs a
/// resume-exactness test compares.
pub fn straight_and_resumed(
    model: &lora_wgpu::model::Model,
    cfg: &lora_wgpu::train::TrainConfig,
    train: &lora_wgpu::data::Dataset,
    straight: &std::path::Path,
    resumed: &std::path::Path,
    stop: u64,
) {
    use lora_wgpu::train::Trainer;
    let g = gpu();
    let trainer = |out| {
        Trainer::new(g, model, cfg.clone(), train.clone())
            .unwrap()
            .with_output(out)
    };
    trainer(straight).run().unwrap();
    trainer(resumed).stop_after(stop).run().unwrap();
    let mut second = trainer(resumed);
    assert_eq!(second.resume(resumed).unwrap(), stop);
    second.run().unwrap();
}
