//! The batch order: every epoch visits each block once in an order shuffled from (seed, epoch)
//! alone, and a position `{epoch, index}` in that endless stream is all a resumed run needs.

use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{check_batch_size, Dataset};
use crate::error::{Error, Result};

/// One batch: B blocks' inputs and targets, flattened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Input token ids.   (B, N)
    pub inputs: Vec<u32>,
    /// Target ids, [`IGNORE`](super::IGNORE) where nothing is predicted.   (B, N)
    pub targets: Vec<u32>,
    /// The dataset blocks in the batch (without any padding blocks).
    pub blocks: Vec<usize>,
    /// Targets that are not [`IGNORE`](super::IGNORE).
    pub predicted: usize,
}

/// Stream tags, so the split and the epoch orders draw from unrelated generators.
pub(super) const SPLIT_STREAM: u64 = 0x0053_504c_4954; // "SPLIT"
const EPOCH_STREAM: u64 = 0x0045_504f_4348; // "EPOCH"

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for `StdRng` from the user's seed and a second value (a stream tag or an epoch).
pub(super) fn mix(seed: u64, other: u64) -> u64 {
    splitmix(splitmix(seed) ^ other.rotate_left(17) ^ 0x6C6F_7261) // "lora"
}

/// Where a [`Sampler`] stands: the next block to hand out is `order(epoch)[index]`.
/// Save it with a checkpoint; [`Sampler::resume`] continues from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SamplerState {
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Position in the epoch's order of the next block.
    pub index: usize,
}

/// Batches of B blocks in a per-epoch shuffled order that depends only on (seed, epoch).
///
/// Batches never come up short: the last batch of an epoch is filled from the start of the next
/// epoch's order. So after k batches the sampler stands at block k·B of the endless stream of
/// epochs, and `epochs` full passes take [`Sampler::steps_for_epochs`] = ⌈epochs · n / B⌉
/// steps.
#[derive(Clone, Debug)]
pub struct Sampler {
    n_blocks: usize,
    batch_size: usize,
    seed: u64,
    state: SamplerState,
    /// The order of `state.epoch`.
    order: Vec<usize>,
}

impl Sampler {
    /// A sampler at the start of epoch 0 over `n_blocks` blocks.
    pub fn new(n_blocks: usize, batch_size: usize, seed: u64) -> Result<Self> {
        Self::resume(n_blocks, batch_size, seed, SamplerState::default())
    }

    /// A sampler that continues from `state` (as [`Sampler::state`] returned it for the same
    /// blocks, batch size and seed).
    pub fn resume(
        n_blocks: usize,
        batch_size: usize,
        seed: u64,
        state: SamplerState,
    ) -> Result<Self> {
        check_batch_size(batch_size)?;
        if n_blocks == 0 {
            return Err(Error::invalid(
                "number of blocks",
                0,
                "the dataset must have at least one block",
            ));
        }
        if state.index >= n_blocks {
            return Err(Error::invalid(
                "sampler position",
                format!("epoch {} index {}", state.epoch, state.index),
                format!(
                    "index must be below the dataset's {n_blocks} blocks: the checkpoint was made with other data or another block size"
                ),
            ));
        }
        Ok(Sampler {
            n_blocks,
            batch_size,
            seed,
            state,
            order: epoch_order(seed, state.epoch, n_blocks),
        })
    }

    /// The position to save for an exact resume.
    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// Blocks per batch (B).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Steps that consume `epochs` full passes from the start: ⌈epochs · n / B⌉.
    pub fn steps_for_epochs(&self, epochs: u64) -> u64 {
        (epochs as u128 * self.n_blocks as u128).div_ceil(self.batch_size as u128) as u64
    }

    /// Steps of one pass from the start, ⌈n / B⌉ (= `steps_for_epochs(1)`; later epochs start
    /// mid-batch, so E epochs take [`Sampler::steps_for_epochs`]`(E)`, which can be fewer than
    /// E times this).
    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_for_epochs(1)
    }

    /// The next batch's block indices (B of them), advancing the position.
    pub fn next_indices(&mut self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.batch_size);
        while out.len() < self.batch_size {
            out.push(self.order[self.state.index]);
            self.state.index += 1;
            if self.state.index == self.n_blocks {
                self.state = SamplerState {
                    epoch: self.state.epoch + 1,
                    index: 0,
                };
                self.order = epoch_order(self.seed, self.state.epoch, self.n_blocks);
            }
        }
        out
    }

    /// The next batch of `data`, advancing the position. Errors (without advancing) when `data`
    /// does not have the number of blocks the sampler was made for.
    pub fn next_batch(&mut self, data: &Dataset) -> Result<Batch> {
        if data.len() != self.n_blocks {
            return Err(Error::invalid(
                "dataset",
                format!("{} blocks", data.len()),
                format!("the sampler was made for {} blocks", self.n_blocks),
            ));
        }
        let idx = self.next_indices();
        data.batch(&idx)
    }
}

/// The order in which epoch `epoch` visits `n` blocks: a permutation of 0..n from
/// `StdRng::seed_from_u64` on a mix of (seed, epoch).
pub fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(mix(mix(seed, EPOCH_STREAM), epoch));
    order.shuffle(&mut rng);
    order
}
