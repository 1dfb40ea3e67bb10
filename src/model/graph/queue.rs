//! The queue of submitted steps: each submission copies its per-row losses and the gradient
//! norm into a staging ring, and results are read back when they arrive, without stalling the
//! GPU.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, ReadbackRing, Recording, Tensor};

/// Staging buffers for per-step losses in flight.
const LOSS_SLOTS: usize = 4;

/// What one training step reports, read back without stalling the GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the step's counted targets (all micro-batches).
    pub loss: f32,
    /// Global L2 norm of the LoRA gradients before clipping.
    pub grad_norm: f32,
    /// Targets that counted towards the loss.
    pub targets: usize,
}

impl StepStats {
    /// Whether AdamW skipped this step because the gradients held a NaN or an infinity.
    pub fn skipped(&self) -> bool {
        !self.grad_norm.is_finite()
    }
}

/// Submissions in flight and the step results read back so far.
pub(super) struct StepQueue {
    /// Per-row losses (the first `rows`), then at `norm_at` the squared gradient norm.
    stats: Tensor,
    rows: usize,
    norm_at: usize,
    ring: ReadbackRing,
    /// Submissions so far (the ring's tags).
    submissions: u64,
    /// Per submission in flight: (step, counted targets, whether it ends the step).
    in_flight: BTreeMap<u64, (u64, usize, bool)>,
    /// Loss sums and target counts of steps whose micro-batches are still arriving.
    partial: BTreeMap<u64, (f64, usize)>,
    /// Results read back, by step.
    finished: BTreeMap<u64, StepStats>,
}

impl StepQueue {
    /// A queue reading back `stats` (`rows` losses, the squared norm at `norm_at`).
    pub(super) fn new(gpu: &Gpu, stats: &Tensor, rows: usize, norm_at: usize) -> Self {
        StepQueue {
            stats: stats.clone(),
            rows,
            norm_at,
            ring: ReadbackRing::new(gpu, norm_at + 1, LOSS_SLOTS),
            submissions: 0,
            in_flight: BTreeMap::new(),
            partial: BTreeMap::new(),
            finished: BTreeMap::new(),
        }
    }

    /// Bytes of the staging ring.
    pub(super) fn staging_bytes(&self) -> u64 {
        4 * ((self.norm_at + 1) * LOSS_SLOTS) as u64
    }

    /// Submit `recordings` as one command buffer, then copy the step's statistics into the
    /// ring: micro-batch of step `step` counting `counted` targets, `last` of its step. Waits
    /// only when the ring is full of unread results.
    pub(super) fn submit(
        &mut self,
        gpu: &Gpu,
        recordings: &[&Recording],
        step: u64,
        counted: usize,
        last: bool,
    ) -> Result<()> {
        let mut evicted = Vec::new();
        let slot = self.ring.reserve(gpu, &mut evicted)?;
        Recording::run_all_then_copy(gpu, recordings, Some((&self.stats, slot)))?;
        self.submissions += 1;
        self.ring.submitted(self.submissions);
        self.in_flight
            .insert(self.submissions, (step, counted, last));
        self.collect(evicted);
        Ok(())
    }

    fn collect(&mut self, results: Vec<(u64, Vec<f32>)>) {
        for (tag, values) in results {
            let Some((step, counted, last)) = self.in_flight.remove(&tag) else {
                continue;
            };
            let sum: f64 = values[..self.rows].iter().map(|&l| l as f64).sum();
            let entry = self.partial.entry(step).or_insert((0.0, 0));
            entry.0 += sum;
            entry.1 += counted;
            if last {
                let (sum, counted) = self.partial.remove(&step).unwrap_or_default();
                self.finished.insert(
                    step,
                    StepStats {
                        loss: (sum / counted.max(1) as f64) as f32,
                        grad_norm: values[self.norm_at].sqrt(),
                        targets: counted,
                    },
                );
            }
        }
    }

    /// Results of the steps that have arrived, oldest first, without waiting.
    pub(super) fn ready(&mut self, gpu: &Gpu) -> Result<Vec<(u64, StepStats)>> {
        let r = self.ring.ready(gpu)?;
        self.collect(r);
        Ok(std::mem::take(&mut self.finished).into_iter().collect())
    }

    /// Results of every submitted step, oldest first, waiting for the GPU.
    pub(super) fn drain(&mut self, gpu: &Gpu) -> Result<Vec<(u64, StepStats)>> {
        let r = self.ring.drain(gpu)?;
        self.collect(r);
        Ok(std::mem::take(&mut self.finished).into_iter().collect())
    }

    /// The result of step `step` (waits for it if it is still running).
    pub(super) fn step(&mut self, gpu: &Gpu, step: u64) -> Result<StepStats> {
        if !self.finished.contains_key(&step) {
            let r = self.ring.drain(gpu)?;
            self.collect(r);
        }
        self.finished.remove(&step).ok_or_else(|| {
            Error::invalid(
                "step",
                step,
                "no result for this step: it was not run, or its result was already taken",
            )
        })
    }
}
