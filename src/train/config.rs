//! What defines a training run ([`TrainConfig`]) and its learning-rate schedule
//! ([`learning_rate`]), with Hugging Face's names and defaults.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::adamw::AdamW;
use crate::lora::{LoraConfig, LoraInit};

/// Learning-rate schedule after warmup (Hugging Face's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear decay to 0 at the last step.
    #[default]
    Linear,
    /// Half a cosine from the peak to 0 at the last step.
    Cosine,
    /// The peak rate throughout.
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            "constant" | "constant_with_warmup" => Ok(Schedule::Constant),
            other => Err(Error::invalid(
                "lr scheduler",
                other,
                "expected linear, cosine or constant",
            )),
        }
    }
}

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Duration {
    /// Whole passes over the training blocks.
    Epochs(u64),
    /// Optimizer steps.
    Steps(u64),
}

/// Everything that defines a training run, with Hugging Face's defaults where it has them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// LoRA rank, alpha, dropout, targets, layers, rsLoRA.
    #[serde(skip, default)]
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub lr: f32,
    /// AdamW's decoupled weight decay (every LoRA parameter decays; under LoRA+ this is PEFT's
    /// `loraplus_weight_decay`).
    pub weight_decay: f32,
    /// LoRA+ (PEFT's `create_loraplus_optimizer`): B's learning rate is this many times A's, in
    /// the step and in the weight decay. None (or 1) trains A and B at `lr`. PEFT's separate
    /// embedding-layer rate (`loraplus_lr_embedding`) has nothing to apply to: only linear
    /// layers are adapted.
    #[serde(default)]
    pub loraplus_lr_ratio: Option<f32>,
    /// Warmup steps (wins over `warmup_ratio` when set).
    pub warmup_steps: Option<u64>,
    /// Warmup as a fraction of the total steps.
    pub warmup_ratio: f32,
    /// Schedule after warmup.
    pub schedule: Schedule,
    /// Training length.
    pub duration: Duration,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f32,
    /// Tokens per sequence.
    pub block_size: usize,
    /// Seed of the LoRA init, the data order and the dropout masks.
    pub seed: u64,
    /// Log every this many steps.
    pub log_every: u64,
    /// Evaluate every this many steps (0: only at epoch ends and at the end).
    pub eval_every: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub save_every: u64,
    /// Checkpoints kept (oldest deleted first; 0 keeps all).
    pub save_total_limit: usize,
    /// Stop after this many non-finite steps in a row (each one is skipped).
    pub max_bad_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lora: LoraConfig::default(),
            lr: 2e-4,
            weight_decay: 0.0,
            loraplus_lr_ratio: None,
            warmup_steps: None,
            warmup_ratio: 0.0,
            schedule: Schedule::Linear,
            duration: Duration::Epochs(1),
            batch_size: 4,
            grad_accum: 1,
            max_grad_norm: 1.0,
            block_size: 128,
            seed: 42,
            log_every: 10,
            eval_every: 0,
            save_every: 0,
            save_total_limit: 2,
            max_bad_steps: 5,
        }
    }
}

impl TrainConfig {
    /// Check every hyperparameter, naming the bad one and its valid range.
    pub fn validate(&self, model: &crate::model::ModelConfig) -> Result<()> {
        self.lora.validate(model)?;
        if self.lora.use_dora && self.lora.dropout > 0.0 {
            return Err(Error::invalid(
                "lora dropout",
                self.lora.dropout,
                "must be 0 with DoRA (--dora): PEFT's DoRA with dropout recomputes the frozen \
                 product on the dropped-out input, which this trainer does not; leave --dropout \
                 out or set it to 0",
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid("learning rate", self.lr, "must be > 0"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid(
                "weight decay",
                self.weight_decay,
                "must be >= 0",
            ));
        }
        if let Some(ratio) = self.loraplus_lr_ratio {
            if !(ratio > 0.0 && ratio.is_finite()) {
                return Err(Error::invalid(
                    "loraplus_lr_ratio (--loraplus-lr-ratio)",
                    ratio,
                    "must be a finite number > 0; PEFT's paper suggests 16",
                ));
            }
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(Error::invalid(
                "warmup ratio",
                self.warmup_ratio,
                "must be in [0, 1)",
            ));
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return Err(Error::invalid(
                "max grad norm",
                self.max_grad_norm,
                "must be >= 0 (0 turns clipping off)",
            ));
        }
        for (name, v) in [
            ("batch size", self.batch_size as u64),
            ("gradient accumulation steps", self.grad_accum as u64),
            ("log every", self.log_every),
            ("max bad steps", self.max_bad_steps),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, v, "must be at least 1"));
            }
        }
        match self.duration {
            Duration::Epochs(0) => return Err(Error::invalid("epochs", 0, "must be at least 1")),
            Duration::Steps(0) => return Err(Error::invalid("max steps", 0, "must be at least 1")),
            _ => {}
        }
        if self.block_size < 2 || self.block_size > model.max_positions() {
            return Err(Error::invalid(
                "block size",
                self.block_size,
                format!(
                    "must be in 2..={} (the model's {})",
                    model.max_positions(),
                    model.max_positions_key()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn adamw(&self) -> AdamW {
        AdamW {
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            lr_ratio_b: self.loraplus_lr_ratio.unwrap_or(1.0),
            ..AdamW::default()
        }
    }

    /// The settings a resumed run must share with the original, as `name=value` pairs. A
    /// setting added after checkpoints existed appears only when set, so those still resume.
    pub(crate) fn fingerprint(&self) -> Vec<(String, String)> {
        let l = &self.lora;
        // Settings added later appear only when set, so older checkpoints still resume.
        let loraplus = self
            .loraplus_lr_ratio
            .map(|r| ("loraplus-lr-ratio", r.to_string()));
        let dora = l.use_dora.then(|| ("dora", "true".to_string()));
        [
            ("rank", l.r.to_string()),
            ("alpha", l.alpha.to_string()),
            ("dropout", l.dropout.to_string()),
            ("targets", l.target_modules.join(",")),
            ("layers", format!("{:?}", l.layers_to_transform)),
            ("rslora", l.use_rslora.to_string()),
            ("batch-size", self.batch_size.to_string()),
            ("grad-accum", self.grad_accum.to_string()),
            ("block-size", self.block_size.to_string()),
            ("seed", self.seed.to_string()),
        ]
        .into_iter()
        .chain(loraplus)
        .chain(dora)
        // The default init is left out, so checkpoints written before --init existed resume.
        .chain((l.init != LoraInit::Kaiming).then(|| ("init", l.init.to_string())))
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Where two [`TrainConfig::fingerprint`]s differ, as `--name was THEN, now NOW`, by name: a
/// setting one side lacks (one added later, and unset) reads `the default`.
pub(crate) fn fingerprint_diffs(
    now: &[(String, String)],
    then: &[(String, String)],
) -> Vec<String> {
    let get = |list: &[(String, String)], k: &str| {
        list.iter()
            .find(|(name, _)| name == k)
            .map_or_else(|| "the default".to_string(), |(_, v)| v.clone())
    };
    let mut seen = std::collections::HashSet::new();
    now.iter()
        .chain(then)
        .map(|(k, _)| k)
        .filter(|k| seen.insert(*k))
        .filter_map(|k| {
            let (n, t) = (get(now, k), get(then, k));
            (n != t).then(|| format!("--{k} was {t}, now {n}"))
        })
        .collect()
}

/// The learning rate of optimizer step `step` (1-based) out of `total`, Hugging Face's way:
/// step s uses the schedule's value at s − 1, so warmup starts from 0.
pub fn learning_rate(cfg: &TrainConfig, step: u64, total: u64) -> f32 {
    let warmup = warmup_steps(cfg, total);
    let s = step.saturating_sub(1);
    if s < warmup {
        return cfg.lr * s as f32 / warmup.max(1) as f32;
    }
    let progress = (s - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    let factor = match cfg.schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    cfg.lr * factor as f32
}

fn warmup_steps(cfg: &TrainConfig, total: u64) -> u64 {
    // Hugging Face computes ceil(total * ratio) in f64 from the decimal the user typed; going
    // through the f32's shortest decimal gives the same f64 (0.1f32 as f64 is 0.10000000149,
    // which made ceil(100 * 0.1) = 11).
    let ratio: f64 = cfg.warmup_ratio.to_string().parse().unwrap_or(0.0);
    cfg.warmup_steps
        .unwrap_or_else(|| (ratio * total as f64).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gpt2Config, ModelConfig};

    #[test]
    fn loraplus_ratio_is_checked_passed_to_adamw_and_fingerprinted() {
        let model = ModelConfig::from(Gpt2Config::named("tiny").unwrap());
        let plain = TrainConfig {
            block_size: 16,
            ..TrainConfig::default()
        };
        assert_eq!(plain.adamw().lr_ratio_b, 1.0);
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let cfg = TrainConfig {
                loraplus_lr_ratio: Some(bad),
                ..plain.clone()
            };
            let e = cfg.validate(&model).unwrap_err().to_string();
            assert!(
                e.contains("--loraplus-lr-ratio") && e.contains("finite number > 0"),
                "{e}"
            );
        }
        let plus = TrainConfig {
            loraplus_lr_ratio: Some(16.0),
            ..plain.clone()
        };
        plus.validate(&model).unwrap();
        assert_eq!(plus.adamw().lr_ratio_b, 16.0);
        // A checkpoint from before the setting existed resumes a run without it, not one with it.
        let (now, then) = (plus.fingerprint(), plain.fingerprint());
        assert!(fingerprint_diffs(&then, &then).is_empty());
        assert_eq!(
            fingerprint_diffs(&now, &then),
            ["--loraplus-lr-ratio was the default, now 16"]
        );
        let other = TrainConfig {
            loraplus_lr_ratio: Some(4.0),
            ..plain
        };
        assert_eq!(
            fingerprint_diffs(&other.fingerprint(), &now),
            ["--loraplus-lr-ratio was 16, now 4"]
        );
    }
}
