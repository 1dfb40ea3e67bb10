//! The trainer: exact resume, gradient accumulation, learning-rate schedules, checkpoints.

mod common;

use std::path::Path;

use common::gpu;
use lora_wgpu::data::{Dataset, TokenStream};
use lora_wgpu::lora::LoraConfig;
use lora_wgpu::model::{Model, ModelSource, Transformer};
use lora_wgpu::tokenizer::Tokenizer;
use lora_wgpu::train::{learning_rate, Duration, Event, Schedule, TrainConfig, Trainer};
use rand::{rngs::StdRng, Rng, SeedableRng};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tiny_gpt2/model"
);

/// The fixture model (2 layers, C=48, vocab 99). Its vocabulary is not GPT-2's, so the data
/// are random token ids rather than text.
fn fixture_model() -> Model {
    let dir = Path::new(FIXTURE);
    let transformer = Transformer::load(gpu(), dir).unwrap();
    Model {
        source: ModelSource::Dir(dir.to_path_buf()),
        config: transformer.config.clone(),
        transformer,
        tokenizer: Tokenizer::gpt2().unwrap(),
        special: Default::default(),
    }
}

fn random_data(tokens: usize, block: usize, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let stream = TokenStream {
        ids: (0..tokens).map(|_| rng.random_range(0..99)).collect(),
        is_prompt: vec![false; tokens],
        documents: 1,
    };
    Dataset::from_tokens(&stream, Path::new("random"), block, false).unwrap()
}

fn config() -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            ..LoraConfig::default()
        },
        lr: 1e-2,
        warmup_steps: Some(3),
        schedule: Schedule::Linear,
        duration: Duration::Steps(20),
        batch_size: 2,
        grad_accum: 2,
        block_size: 16,
        seed: 7,
        log_every: 1,
        eval_every: 5,
        save_every: 10,
        ..TrainConfig::default()
    }
}

/// (step, loss) pairs.
type Losses = Vec<(u64, f32)>;

/// Per-step training losses and val losses reported by a run.
fn run(trainer: Trainer) -> (Losses, Losses) {
    let losses = std::cell::RefCell::new((Vec::new(), Vec::new()));
    let mut t = trainer.on_event(|e| match e {
        Event::Log(r) => losses.borrow_mut().0.push((r.step, r.loss)),
        Event::Eval { step, loss, .. } => losses.borrow_mut().1.push((*step, *loss)),
        _ => {}
    });
    t.run().unwrap();
    drop(t);
    losses.into_inner()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn ten_steps_resume_ten_steps_equals_twenty_bit_for_bit() {
    let g = gpu();
    let model = fixture_model();
    let (train, valid) = (random_data(1200, 16, 1), random_data(200, 16, 2));
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));

    let straight = Trainer::new(g, &model, config(), train.clone())
        .unwrap()
        .with_validation(valid.clone())
        .with_output(&a);
    let (loss_a, val_a) = run(straight);
    assert_eq!(loss_a.len(), 20);
    assert!(loss_a.iter().all(|(_, l)| l.is_finite()));

    let first = Trainer::new(g, &model, config(), train.clone())
        .unwrap()
        .with_validation(valid.clone())
        .with_output(&b)
        .stop_after(10);
    let (loss_b1, _) = run(first);
    assert_eq!(loss_b1.len(), 10);
    assert!(b
        .join("checkpoints/step-000010/optimizer.safetensors")
        .is_file());
    assert!(
        !b.join("adapter_model.safetensors").exists(),
        "paused, not finished"
    );

    let mut second = Trainer::new(g, &model, config(), train)
        .unwrap()
        .with_validation(valid)
        .with_output(&b);
    assert_eq!(second.resume(&b).unwrap(), 10);
    let (loss_b2, val_b2) = run(second);

    let resumed: Vec<_> = loss_b1.into_iter().chain(loss_b2).collect();
    // Bit for bit: compare the f32 bit patterns, not within a tolerance.
    let bits = |v: &[(u64, f32)]| v.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(
        bits(&resumed),
        bits(&loss_a),
        "train losses differ after resume"
    );
    let tail: Vec<_> = val_a.into_iter().filter(|(s, _)| *s > 10).collect();
    assert_eq!(bits(&val_b2), bits(&tail), "val losses differ after resume");
    assert_eq!(
        read(&a.join("adapter_model.safetensors")),
        read(&b.join("adapter_model.safetensors")),
        "final adapters differ"
    );
    // metrics.jsonl of the resumed run has each step once.
    let metrics = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 20, "{metrics}");
    assert!(b.join("loss_curve.svg").is_file() && b.join("best/adapter_config.json").is_file());
}

#[test]
fn resume_with_other_settings_is_refused() {
    let g = gpu();
    let model = fixture_model();
    let train = random_data(600, 16, 3);
    let tmp = tempfile::tempdir().unwrap();
    let first = Trainer::new(g, &model, config(), train.clone())
        .unwrap()
        .with_output(tmp.path())
        .stop_after(2);
    run(first);
    let other = TrainConfig {
        lora: LoraConfig {
            r: 8,
            ..config().lora
        },
        ..config()
    };
    let mut t = Trainer::new(g, &model, other, train).unwrap();
    let err = t.resume(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("--rank was 4, now 8"), "{err}");
}

/// Two micro-batches of one sequence accumulate to the same step as one batch of two.
#[test]
fn gradient_accumulation_matches_a_bigger_batch() {
    let g = gpu();
    let model = fixture_model();
    let train = random_data(16 * 8, 16, 4);
    let one = TrainConfig {
        lora: LoraConfig {
            dropout: 0.0,
            ..config().lora
        },
        batch_size: 2,
        grad_accum: 1,
        duration: Duration::Steps(3),
        eval_every: 0,
        save_every: 0,
        ..config()
    };
    let two = TrainConfig {
        batch_size: 1,
        grad_accum: 2,
        ..one.clone()
    };
    let (la, _) = run(Trainer::new(g, &model, one, train.clone()).unwrap());
    let (lb, _) = run(Trainer::new(g, &model, two, train).unwrap());
    for ((s, a), (_, b)) in la.iter().zip(&lb) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "step {s}: {a} vs {b}");
    }
}

#[test]
fn schedules_follow_hugging_face() {
    let cfg = |schedule, warmup| TrainConfig {
        lr: 1.0,
        schedule,
        warmup_steps: Some(warmup),
        ..TrainConfig::default()
    };
    // Step s uses the schedule at s - 1 (the scheduler steps after the optimizer).
    let lin = cfg(Schedule::Linear, 2);
    let got: Vec<f32> = (1..=6).map(|s| learning_rate(&lin, s, 6)).collect();
    assert_eq!(got, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
    let cos = cfg(Schedule::Cosine, 0);
    assert!((learning_rate(&cos, 3, 4) - 0.5).abs() < 1e-6);
    assert_eq!(learning_rate(&cfg(Schedule::Constant, 0), 5, 5), 1.0);
    let ratio = TrainConfig {
        warmup_steps: None,
        warmup_ratio: 0.1,
        ..lin
    };
    assert_eq!(learning_rate(&ratio, 1, 100), 0.0);
    assert_eq!(learning_rate(&ratio, 11, 100), 1.0);
}

#[test]
fn bad_hyperparameters_are_named() {
    let model = fixture_model();
    for (cfg, want) in [
        (
            TrainConfig {
                lr: 0.0,
                ..config()
            },
            "learning rate",
        ),
        (
            TrainConfig {
                batch_size: 0,
                ..config()
            },
            "batch size",
        ),
        (
            TrainConfig {
                block_size: 33,
                ..config()
            },
            "block size",
        ),
        (
            TrainConfig {
                lora: LoraConfig {
                    r: 0,
                    ..config().lora
                },
                ..config()
            },
            "rank",
        ),
        (
            TrainConfig {
                lora: LoraConfig {
                    alpha: -1.0,
                    ..config().lora
                },
                ..config()
            },
            "alpha",
        ),
        (
            TrainConfig {
                lora: LoraConfig {
                    dropout: 1.0,
                    ..config().lora
                },
                ..config()
            },
            "dropout",
        ),
    ] {
        let err = cfg.validate(&model.config).unwrap_err().to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}
