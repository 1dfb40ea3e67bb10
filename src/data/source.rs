//! Reading a data source into tokens: a text file, a directory of `.txt` files, or a `.jsonl`
//! file of `{"text"}` or `{"prompt", "completion"}` examples.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::EOT;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

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
    pub(super) fn push(&mut self, ids: &[u32], prompt: bool) {
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

pub(super) fn format_err(path: &Path, detail: impl Into<String>) -> Error {
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

pub(super) fn tokenize(tok: &Tokenizer, path: &Path, text: &str) -> Result<Vec<u32>> {
    tok.encode(text)
        .map_err(|e| format_err(path, e.to_string()))
}

/// Read and tokenise a data source: a text file, a directory of `.txt` files or a `.jsonl` file
/// (see the [module docs](super) for the rules). Errors name the path and say what to change:
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
