//! Training and evaluation data for a causal language model: reading text, tokenising, packing
//! into blocks, the validation split and a reproducible, resumable batch order.
//!
//! Sources ([`read_tokens`]):
//! - a text file (any extension but `.jsonl`): one document;
//! - a directory: its `.txt` files (not recursive), sorted by file name, one document each;
//! - a `.jsonl` file: one example per line, `{"text": ...}`, `{"prompt": ..., "completion": ...}`
//!   or a conversation `{"messages": [{"role": ..., "content": ...}, ...]}` ([`chat`]), one
//!   format per file (blank lines are skipped).
//!
//! Documents of a directory are joined with a separator token between them, and every jsonl
//! example is followed by it: [`DataOptions::separator`], the model's end-of-sequence id
//! (GPT-2's `<|endoftext|>`, [`EOT`], by default). A text or prompt/completion example is its
//! prompt ids ++ completion ids (or its text ids) ++ separator; no other special token is
//! added. A conversation is its rendering through the model's chat template
//! ([`DataOptions::chat_template`]) tokenised at once, with only the assistant turns not
//! flagged as prompt, then the separator (flagged as prompt: the template's end-of-turn marker
//! is what the model learns to stop with).
//!
//! Packing ([`Dataset`]): all tokens are concatenated and cut into non-overlapping blocks of
//! `block_size` (N) tokens; the trailing partial block is dropped. A block's inputs are its N
//! tokens, `targets[i] = block[i + 1]` for i < N - 1 and `targets[N - 1] = `[`IGNORE`], so a
//! block predicts N - 1 positions (as Hugging Face's `labels = input_ids` does). With
//! `mask_prompt`, `targets[i] = IGNORE` wherever token i + 1 is a prompt token (by default on
//! for chat data and off for prompt/completion: [`DataOptions::mask_prompt`]). A block whose
//! targets are all `IGNORE` is dropped. Evaluation uses the same packing: the mean loss is over
//! all predicted positions.
//!
//! Order ([`Sampler`]): each epoch visits every block once, in an order shuffled from
//! (seed, epoch) alone. The blocks are one endless stream, epoch after epoch: a batch that the
//! end of an epoch leaves short is filled from the start of the next epoch's order (nothing is
//! dropped, and a dataset smaller than one batch still trains). The position in that stream,
//! [`SamplerState`] `{epoch, index}`, is all a resumed run needs to continue with exactly the
//! same batches.
//!
//! ```
//! use lora_wgpu::data::{Dataset, Sampler};
//! use lora_wgpu::tokenizer::Tokenizer;
//!
//! # fn main() -> lora_wgpu::Result<()> {
//! let tok = Tokenizer::gpt2()?;
//! let data = Dataset::from_text(lora_wgpu::data::BUNDLED_CORPUS, "corpus", &tok, 64)?;
//! let (train, valid) = data.split_validation(0.1, 7)?;
//! let mut sampler = Sampler::new(train.len(), 4, 7)?;
//! let batch = sampler.next_batch(&train)?;
//! assert_eq!(batch.inputs.len(), 4 * 64);
//! let resumed = Sampler::resume(train.len(), 4, 7, sampler.state())?;
//! assert_eq!(resumed.state(), sampler.state());
//! # let _ = valid;
//! # Ok(())
//! # }
//! ```

pub mod chat;
mod sampler;
mod source;

use std::path::Path;

use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use sampler::{mix, SPLIT_STREAM};
use source::{format_err, tokenize};

pub use chat::{ChatTemplate, Message};
pub use sampler::{epoch_order, Batch, Sampler, SamplerState};
pub use source::{read_tokens, TokenStream};

use crate::error::{Error, Result};
pub use crate::kernels::cross_entropy::IGNORE;
use crate::tokenizer::Tokenizer;
pub use crate::tokenizer::EOT;

/// The corpus `lora-wgpu train` uses when no `--data` is given: the text of *Alice's Adventures
/// in Wonderland* (Lewis Carroll, 1865; public domain), about 148 KB. Source and changes are in
/// `data/README.md`.
pub const BUNDLED_CORPUS: &str = include_str!("../../data/corpus.txt");

/// A short name of [`BUNDLED_CORPUS`] for logs.
pub const BUNDLED_CORPUS_NAME: &str =
    "Alice's Adventures in Wonderland (Lewis Carroll, 1865; public domain)";

/// How to read a data source ([`read_tokens`], [`Dataset::from_path`]).
///
/// ```
/// use lora_wgpu::data::DataOptions;
/// // GPT-2: `<|endoftext|>` between documents, no chat template, the formats' own masking.
/// let gpt2 = DataOptions::default();
/// // A chat model: its template and EOS id, and the loss on every token of the conversations.
/// # let (template, eos_id) = (None, 2);
/// let chat = DataOptions { chat_template: template, separator: eos_id, mask_prompt: Some(false) };
/// # let _ = (gpt2, chat);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct DataOptions<'a> {
    /// The model's chat template, which `{"messages": ...}` jsonl data needs (reading such a
    /// file without one is an error that says so).
    pub chat_template: Option<&'a ChatTemplate>,
    /// The token between documents and after every jsonl example: the model's end-of-sequence
    /// id. Default: GPT-2's `<|endoftext|>` ([`EOT`]).
    pub separator: u32,
    /// Whether prompt tokens carry no loss: `Some(true)` masks them, `Some(false)` trains on
    /// every token. None takes the format's default: masked for chat data (the loss is on the
    /// assistant turns only), not masked for `{"prompt", "completion"}`. With `Some(false)` a
    /// conversation is its whole rendering once, even when the template is not prefix-stable
    /// ([`chat`]).
    pub mask_prompt: Option<bool>,
}

impl Default for DataOptions<'_> {
    fn default() -> Self {
        DataOptions {
            chat_template: None,
            separator: EOT,
            mask_prompt: None,
        }
    }
}

/// Counts of a [`Dataset`], for logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStats {
    /// Documents or examples read (0 when built from a token stream that did not count them).
    pub documents: usize,
    /// Tokens in the source, before packing.
    pub source_tokens: usize,
    /// Blocks kept.
    pub blocks: usize,
    /// Tokens in the kept blocks (blocks × block size).
    pub tokens: usize,
    /// Targets that are not [`IGNORE`]: the positions the loss is averaged over.
    pub predicted: usize,
    /// Tokens of the trailing partial block, and of blocks with nothing to predict, left out.
    pub dropped_tokens: usize,
}

impl std::fmt::Display for DataStats {
    /// One line for logs, e.g. `166 blocks (42496 tokens, 42330 predicted) from 1 document(s) of 42576 tokens; 80 tokens dropped`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} blocks ({} tokens, {} predicted) from {} document(s) of {} tokens; {} tokens dropped",
            self.blocks,
            self.tokens,
            self.predicted,
            self.documents,
            self.source_tokens,
            self.dropped_tokens
        )
    }
}

/// Token blocks ready for training or evaluation: every block's inputs and targets, flat.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    block_size: usize,
    /// Inputs of all blocks.   (blocks, N)
    inputs: Vec<u32>,
    /// Targets of all blocks, [`IGNORE`] where there is nothing to predict.   (blocks, N)
    targets: Vec<u32>,
    stats: DataStats,
}

impl Dataset {
    /// Read `path` ([`read_tokens`]) and pack it into blocks of `block_size` tokens
    /// ([`Dataset::from_tokens`]). Prompt tokens carry no loss as `opts.mask_prompt` says
    /// (by default: masked in chat data, not in prompt/completion data).
    pub fn from_path(
        path: &Path,
        tok: &Tokenizer,
        block_size: usize,
        opts: &DataOptions,
    ) -> Result<Self> {
        check_block_size(block_size)?;
        let (stream, chat) = source::read(path, tok, opts)?;
        Self::from_tokens(&stream, path, block_size, opts.mask_prompt.unwrap_or(chat))
    }

    /// Tokenise one text (no special token added) and pack it; `name` stands for the path in
    /// errors.
    pub fn from_text(text: &str, name: &str, tok: &Tokenizer, block_size: usize) -> Result<Self> {
        check_block_size(block_size)?;
        let path = Path::new(name);
        let mut stream = TokenStream {
            documents: 1,
            ..TokenStream::default()
        };
        stream.push(&tokenize(tok, path, text)?, false);
        Self::from_tokens(&stream, path, block_size, false)
    }

    /// Pack a token stream into blocks of `block_size` tokens (see the [module docs](self));
    /// `source` names the data in errors. Errors when `block_size` < 2 or when no block with
    /// something to predict results (saying how many tokens there are).
    pub fn from_tokens(
        stream: &TokenStream,
        source: &Path,
        block_size: usize,
        mask_prompt: bool,
    ) -> Result<Self> {
        check_block_size(block_size)?;
        if stream.ids.len() != stream.is_prompt.len() {
            return Err(Error::shape(
                "Dataset::from_tokens",
                format!(
                    "{} ids but {} prompt flags",
                    stream.ids.len(),
                    stream.is_prompt.len()
                ),
            ));
        }
        let n = block_size;
        let total = stream.ids.len();
        if total < n {
            return Err(format_err(
                source,
                format!(
                    "the data has {total} tokens, shorter than one block of {n} tokens: use a smaller --block-size or more data"
                ),
            ));
        }
        let mut inputs = Vec::with_capacity(total / n * n);
        let mut targets = Vec::with_capacity(total / n * n);
        let mut predicted = 0usize;
        for (ids, prompt) in stream
            .ids
            .chunks_exact(n)
            .zip(stream.is_prompt.chunks_exact(n))
        {
            let t: Vec<u32> = (0..n)
                .map(|i| {
                    if i + 1 < n && !(mask_prompt && prompt[i + 1]) {
                        ids[i + 1]
                    } else {
                        IGNORE
                    }
                })
                .collect();
            let p = t.iter().filter(|&&x| x != IGNORE).count();
            if p == 0 {
                continue;
            }
            predicted += p;
            inputs.extend_from_slice(ids);
            targets.extend(t);
        }
        if inputs.is_empty() {
            return Err(format_err(
                source,
                format!(
                    "no block of {n} tokens has a target to predict: every token after the first of each block is a masked prompt token. Use a larger --block-size, or drop --mask-prompt (chat data has the loss on its assistant turns only: check that the conversations have some)"
                ),
            ));
        }
        let blocks = inputs.len() / n;
        Ok(Dataset {
            block_size: n,
            stats: DataStats {
                documents: stream.documents,
                source_tokens: total,
                blocks,
                tokens: inputs.len(),
                predicted,
                dropped_tokens: total - inputs.len(),
            },
            inputs,
            targets,
        })
    }

    /// Tokens per block (N).
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.inputs.len() / self.block_size
    }

    /// Whether there is no block (never true for a dataset this module built).
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Block `i`: its inputs and targets, N each (None when `i >= len()`).
    pub fn block(&self, i: usize) -> Option<(&[u32], &[u32])> {
        let r = i * self.block_size..(i + 1) * self.block_size;
        Some((self.inputs.get(r.clone())?, self.targets.get(r)?))
    }

    /// Counts for logs: documents, source tokens, blocks, tokens, predicted positions.
    pub fn stats(&self) -> DataStats {
        self.stats
    }

    /// Split off a validation set of ⌈fraction · blocks⌉ blocks, chosen by a shuffle seeded
    /// from `seed` alone (so the same data, fraction and seed give the same split). Both parts
    /// keep the blocks' original order. Errors when `fraction` is not in (0, 1) or when either
    /// part would be empty.
    pub fn split_validation(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::invalid(
                "validation fraction",
                fraction,
                "must be in (0, 1), e.g. 0.1 for 10% of the blocks",
            ));
        }
        let n = self.len();
        let n_val = ((fraction * n as f64).ceil() as usize).min(n);
        if n_val == 0 || n_val >= n {
            return Err(Error::invalid(
                "validation fraction",
                fraction,
                format!(
                    "leaves the training set empty: the data has only {n} block(s) of {} tokens. Use more data, a smaller --block-size, or --valid FILE",
                    self.block_size
                ),
            ));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(seed, SPLIT_STREAM)));
        let mut is_val = vec![false; n];
        for &i in &order[..n_val] {
            is_val[i] = true;
        }
        let part = |val: bool| {
            let idx: Vec<usize> = (0..n).filter(|&i| is_val[i] == val).collect();
            self.subset(&idx)
        };
        Ok((part(false), part(true)))
    }

    /// The dataset made of blocks `idx` (in that order). Source counts are kept; block counts
    /// are the subset's.
    fn subset(&self, idx: &[usize]) -> Dataset {
        let mut inputs = Vec::with_capacity(idx.len() * self.block_size);
        let mut targets = Vec::with_capacity(idx.len() * self.block_size);
        for &i in idx {
            if let Some((x, y)) = self.block(i) {
                inputs.extend_from_slice(x);
                targets.extend_from_slice(y);
            }
        }
        let predicted = targets.iter().filter(|&&t| t != IGNORE).count();
        Dataset {
            block_size: self.block_size,
            stats: DataStats {
                blocks: idx.len(),
                tokens: inputs.len(),
                predicted,
                ..self.stats
            },
            inputs,
            targets,
        }
    }

    /// A batch of the given blocks: their inputs and targets concatenated. Errors when an
    /// index is out of range.
    pub fn batch(&self, blocks: &[usize]) -> Result<Batch> {
        let mut inputs = Vec::with_capacity(blocks.len() * self.block_size);
        let mut targets = Vec::with_capacity(blocks.len() * self.block_size);
        for &i in blocks {
            let (x, y) = self.block(i).ok_or_else(|| {
                Error::invalid(
                    "block index",
                    i,
                    format!(
                        "the dataset has {} blocks: was the sampler made for other data?",
                        self.len()
                    ),
                )
            })?;
            inputs.extend_from_slice(x);
            targets.extend_from_slice(y);
        }
        let predicted = targets.iter().filter(|&&t| t != IGNORE).count();
        Ok(Batch {
            inputs,
            targets,
            blocks: blocks.to_vec(),
            predicted,
        })
    }

    /// Every block once, in order, in batches of `batch_size` blocks, for evaluation. The last
    /// batch is padded to full size with blocks of token-0 inputs (valid in every vocabulary,
    /// unlike [`EOT`]) and [`IGNORE`] targets (they add no loss), so every batch fits a graph built for `batch_size`. The mean loss over the
    /// dataset is Σ loss_b · predicted_b / Σ predicted_b over the batches.
    pub fn eval_batches(&self, batch_size: usize) -> Result<Vec<Batch>> {
        check_batch_size(batch_size)?;
        let n = self.block_size;
        let all: Vec<usize> = (0..self.len()).collect();
        all.chunks(batch_size)
            .map(|c| {
                let mut b = self.batch(c)?;
                let pad = (batch_size - c.len()) * n;
                b.inputs.extend(std::iter::repeat_n(0, pad));
                b.targets.extend(std::iter::repeat_n(IGNORE, pad));
                Ok(b)
            })
            .collect()
    }
}

fn check_block_size(n: usize) -> Result<()> {
    if n < 2 {
        return Err(Error::invalid(
            "block size",
            n,
            "must be at least 2 (a block of N tokens predicts N - 1 of them)",
        ));
    }
    Ok(())
}

fn check_batch_size(b: usize) -> Result<()> {
    if b == 0 {
        return Err(Error::invalid("batch size", b, "must be at least 1"));
    }
    Ok(())
}
