//! Training and evaluation data for a causal language model: reading text, tokenising, packing
//! into blocks, the validation split and a reproducible, resumable batch order.
//!
//! Sources ([`read_tokens`]):
//! - a text file (any extension but `.jsonl`): one document;
//! - a directory: its `.txt` files (not recursive), sorted by file name, one document each;
//! - a `.jsonl` file: one example per line, `{"text": ...}` or `{"prompt": ..., "completion": ...}`
//!   (blank lines are skipped).
//!
//! Documents of a directory are joined with `<|endoftext|>` ([`EOT`]) between them; every jsonl
//! example is its prompt ids ++ completion ids (or its text ids) ++ [`EOT`]. No other special
//! token is added.
//!
//! Packing ([`Dataset`]): all tokens are concatenated and cut into non-overlapping blocks of
//! `block_size` (N) tokens; the trailing partial block is dropped. A block's inputs are its N
//! tokens, `targets[i] = block[i + 1]` for i < N - 1 and `targets[N - 1] = `[`IGNORE`], so a
//! block predicts N - 1 positions (as Hugging Face's `labels = input_ids` does). With
//! `mask_prompt`, `targets[i] = IGNORE` wherever token i + 1 is a prompt token. A block whose
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

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::kernels::cross_entropy::IGNORE;
use crate::tokenizer::Tokenizer;
pub use crate::tokenizer::EOT;

/// The corpus `lora-wgpu train` uses when no `--data` is given: the text of *Alice's Adventures
/// in Wonderland* (Lewis Carroll, 1865; public domain), about 148 KB. Source and changes are in
/// `data/README.md`.
pub const BUNDLED_CORPUS: &str = include_str!("../data/corpus.txt");

/// A short name of [`BUNDLED_CORPUS`] for logs.
pub const BUNDLED_CORPUS_NAME: &str =
    "Alice's Adventures in Wonderland (Lewis Carroll, 1865; public domain)";

/// The tokens of a data source, in order, with which of them belong to a prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenStream {
    /// Token ids.   (T,)
    pub ids: Vec<u32>,
    /// Whether each token is part of a jsonl `prompt` (masked from the loss with
    /// `mask_prompt`).   (T,)
    pub is_prompt: Vec<bool>,
    /// Documents (text files) or examples (jsonl lines) read.
    pub documents: usize,
}

impl TokenStream {
    fn push(&mut self, ids: &[u32], prompt: bool) {
        self.ids.extend_from_slice(ids);
        self.is_prompt
            .extend(std::iter::repeat_n(prompt, ids.len()));
    }

    /// Tokens in the stream.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the stream has no token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

fn format_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `bytes` as UTF-8 (a leading byte-order mark dropped), or an error that says where the first
/// invalid byte is.
fn utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let before = &bytes[..at];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at - before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
        format_err(
            path,
            format!(
                "not valid UTF-8: invalid byte 0x{:02X} at byte offset {at} (line {line}, column {column}). \
                 Convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`",
                bytes[at]
            ),
        )
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_err(path, e))
}

fn tokenize(tok: &Tokenizer, path: &Path, text: &str) -> Result<Vec<u32>> {
    tok.encode(text)
        .map_err(|e| format_err(path, e.to_string()))
}

/// Read and tokenise a data source: a text file, a directory of `.txt` files or a `.jsonl` file
/// (see the [module docs](self) for the rules). Errors name the path and say what to change:
/// a missing path, an empty file or directory, a directory without `.txt` files, text that is
/// not UTF-8 (with the byte offset and line), or a jsonl line that is not JSON or lacks the
/// fields (with its 1-based line number).
pub fn read_tokens(path: &Path, tok: &Tokenizer) -> Result<TokenStream> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            io_err(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "data not found: give a .txt file, a directory of .txt files, or a .jsonl file",
                ),
            )
        } else {
            io_err(path, e)
        }
    })?;
    if meta.is_dir() {
        read_dir(path, tok)
    } else if path.extension().is_some_and(|e| e == "jsonl") {
        read_jsonl(path, tok)
    } else {
        let bytes = read_file(path)?;
        if bytes.is_empty() {
            return Err(format_err(
                path,
                "the file is empty: give a file with some text",
            ));
        }
        let text = utf8(path, &bytes)?;
        let mut out = TokenStream {
            documents: 1,
            ..TokenStream::default()
        };
        out.push(&tokenize(tok, path, text)?, false);
        Ok(out)
    }
}

/// The `.txt` files of a directory, sorted by file name.
fn txt_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut txt = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let p = entry.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "txt") {
            txt.push(p);
        } else {
            others.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if txt.is_empty() {
        others.sort();
        let detail = if others.is_empty() {
            "the directory is empty: put the training text in .txt files there".to_string()
        } else {
            let shown: Vec<_> = others.iter().take(5).cloned().collect();
            let more = if others.len() > 5 { ", ..." } else { "" };
            format!(
                "no .txt files in the directory (found {}{more}): the text must be in files named *.txt, or give a .jsonl file",
                shown.join(", ")
            )
        };
        return Err(format_err(dir, detail));
    }
    txt.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(txt)
}

fn read_dir(dir: &Path, tok: &Tokenizer) -> Result<TokenStream> {
    let mut out = TokenStream::default();
    for file in txt_files(dir)? {
        let bytes = read_file(&file)?;
        let text = utf8(&file, &bytes)?;
        if text.is_empty() {
            continue; // An empty document adds nothing, not even a separator.
        }
        if out.documents > 0 {
            out.push(&[EOT], false);
        }
        out.push(&tokenize(tok, &file, text)?, false);
        out.documents += 1;
    }
    if out.documents == 0 {
        return Err(format_err(
            dir,
            "every .txt file in the directory is empty: give some text",
        ));
    }
    Ok(out)
}

/// One jsonl example.
#[derive(Deserialize)]
struct Example {
    text: Option<String>,
    prompt: Option<String>,
    completion: Option<String>,
}

fn read_jsonl(path: &Path, tok: &Tokenizer) -> Result<TokenStream> {
    let bytes = read_file(path)?;
    let text = utf8(path, &bytes)?;
    let mut out = TokenStream::default();
    const SHAPE: &str = r#"each line must be a JSON object {"text": "..."} or {"prompt": "...", "completion": "..."}"#;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let ex: Example = serde_json::from_str(line).map_err(|e| {
            // serde_json's own " at line 1 column C" would contradict our line number.
            let msg = e.to_string();
            let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m);
            format_err(
                path,
                format!(
                    "line {n}, column {}: not valid JSON or a field is not a string ({msg}); {SHAPE}",
                    e.column()
                ),
            )
        })?;
        match ex {
            Example {
                text: None,
                prompt: Some(p),
                completion: Some(c),
            } => {
                out.push(&tokenize(tok, path, &p)?, true);
                out.push(&tokenize(tok, path, &c)?, false);
            }
            Example {
                text: Some(t),
                prompt: None,
                completion: None,
            } => out.push(&tokenize(tok, path, &t)?, false),
            Example { text: Some(_), .. } => {
                return Err(format_err(
                    path,
                    format!("line {n}: has both \"text\" and \"prompt\"/\"completion\"; {SHAPE}"),
                ))
            }
            Example {
                prompt, completion, ..
            } => {
                let missing = match (prompt, completion) {
                    (Some(_), None) => "\"completion\"",
                    (None, Some(_)) => "\"prompt\"",
                    _ => "\"text\" (or \"prompt\" and \"completion\")",
                };
                return Err(format_err(
                    path,
                    format!("line {n}: missing field {missing}; {SHAPE}"),
                ));
            }
        }
        out.push(&[EOT], false);
        out.documents += 1;
    }
    if out.documents == 0 {
        return Err(format_err(
            path,
            format!("the file has no examples: {SHAPE}, one per line"),
        ));
    }
    Ok(out)
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
    /// ([`Dataset::from_tokens`]). With `mask_prompt`, jsonl prompt tokens carry no loss.
    pub fn from_path(
        path: &Path,
        tok: &Tokenizer,
        block_size: usize,
        mask_prompt: bool,
    ) -> Result<Self> {
        check_block_size(block_size)?;
        let stream = read_tokens(path, tok)?;
        Self::from_tokens(&stream, path, block_size, mask_prompt)
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
                    "no block of {n} tokens has a target to predict: every token after the first of each block is a masked prompt token. Use a larger --block-size, or drop --mask-prompt"
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

/// One batch: B blocks' inputs and targets, flattened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Input token ids.   (B, N)
    pub inputs: Vec<u32>,
    /// Target ids, [`IGNORE`] where nothing is predicted.   (B, N)
    pub targets: Vec<u32>,
    /// The dataset blocks in the batch (without any padding blocks).
    pub blocks: Vec<usize>,
    /// Targets that are not [`IGNORE`].
    pub predicted: usize,
}

/// Stream tags, so the split and the epoch orders draw from unrelated generators.
const SPLIT_STREAM: u64 = 0x0053_504c_4954; // "SPLIT"
const EPOCH_STREAM: u64 = 0x0045_504f_4348; // "EPOCH"

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for `StdRng` from the user's seed and a second value (a stream tag or an epoch).
fn mix(seed: u64, other: u64) -> u64 {
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
