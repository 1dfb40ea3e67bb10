//! Choosing the next token from the logits: greedy, or sampled with temperature, top-k and
//! top-p from a seeded generator.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// How the next token is chosen from the logits.
///
/// Greedy when `temperature` is 0; otherwise the logits are divided by the temperature, cut
/// to the `top_k` most likely tokens (0: no cut), then to the smallest set of most likely
/// tokens whose probability reaches `top_p` (1: no cut), and a token is drawn from what is
/// left with a random generator seeded by `seed` (the same seed gives the same tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature, ≥ 0; 0 means greedy (argmax, lowest id on ties).
    pub temperature: f32,
    /// Keep only the k most likely tokens (ties broken by lower id); 0 turns the cut off.
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens until their probability reaches `top_p`,
    /// in (0, 1]; 1 turns the cut off.
    pub top_p: f32,
    /// Seed of the random generator (`StdRng::seed_from_u64`).
    pub seed: u64,
}

impl Default for SamplingConfig {
    /// Hugging Face's sampling defaults: temperature 1, top-k 50, top-p 1; seed 0.
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Whether this configuration picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Check that the values are possible: temperature finite and ≥ 0, top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(
                "temperature",
                self.temperature,
                "must be a finite number >= 0 (0 = greedy)",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(
                "top_p",
                self.top_p,
                "must be in (0, 1] (1 = no nucleus cut)",
            ));
        }
        Ok(())
    }
}

fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        return Err(Error::invalid("logits", "[]", "need at least one value"));
    }
    if let Some(i) = logits.iter().position(|v| v.is_nan()) {
        return Err(Error::invalid(
            "logits",
            format!("NaN at token {i}"),
            "must be numbers; the model produced NaN",
        ));
    }
    Ok(())
}

/// The most likely token: the largest logit, the lowest id among equal ones.
pub fn argmax(logits: &[f32]) -> Result<u32> {
    check_logits(logits)?;
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// The tokens sampling may pick and their probabilities after temperature, top-k and top-p,
/// most likely first (ties: lower id first), renormalised to sum to 1. Greedy (temperature 0)
/// gives the argmax alone with probability 1.
pub fn candidates(logits: &[f32], cfg: &SamplingConfig) -> Result<Vec<(u32, f32)>> {
    cfg.validate()?;
    check_logits(logits)?;
    if cfg.is_greedy() {
        return Ok(vec![(argmax(logits)?, 1.0)]);
    }
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut c: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    if cfg.top_k > 0 && cfg.top_k < c.len() {
        c.select_nth_unstable_by(cfg.top_k - 1, order);
        c.truncate(cfg.top_k);
    }
    c.sort_unstable_by(order);
    // Softmax of logit / temperature, in f64 so that tiny probabilities still add up.
    let t = cfg.temperature as f64;
    let max = c[0].1 as f64 / t;
    let weights: Vec<f64> = c.iter().map(|&(_, v)| (v as f64 / t - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut keep = weights.len();
    if cfg.top_p < 1.0 {
        let mut cum = 0.0;
        for (i, w) in weights.iter().enumerate() {
            cum += w / total;
            if cum >= cfg.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    Ok(c[..keep]
        .iter()
        .zip(&weights)
        .map(|(&(id, _), &w)| (id, (w / kept) as f32))
        .collect())
}

/// Draws tokens from logits according to a [`SamplingConfig`], with its own seeded generator.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose generator starts from `cfg.seed`.
    pub fn new(cfg: &SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Sampler {
            cfg: cfg.clone(),
            rng: StdRng::seed_from_u64(cfg.seed),
        })
    }

    /// The next token for these logits (one per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        let c = candidates(logits, &self.cfg)?;
        let total: f64 = c.iter().map(|&(_, p)| p as f64).sum();
        let mut x = self.rng.random::<f64>() * total;
        for &(id, p) in &c {
            x -= p as f64;
            if x < 0.0 {
                return Ok(id);
            }
        }
        Ok(c[c.len() - 1].0)
    }
}
