//! What the `lora-wgpu` binary does when something is wrong (issue 5): for every kind of bad
//! input it must exit with status 1 (not a panic's 101), print one `error:` that says what was
//! wrong and what to do, and leave no output file or directory behind.
//!
//! Each case runs the real binary. Model and adapter files come from the tiny fixture
//! (`tests/fixtures/tiny_gpt2`: 2 layers, 48 channels, 32 positions, vocab 99) copied into a
//! temporary directory together with a 99-word `tokenizer.json` written here, so text data can
//! be trained on it in a fraction of a second per step.
//!
//! The cases, by theme: `files` (model and adapter files), `options` (hyperparameters, data,
//! the output directory), `runs` (runs that fail midway, hostile bytes); the helpers that run
//! the binary and build the scratch directory are in `support`.

mod files;
mod options;
mod runs;
mod support;
