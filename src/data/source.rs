//! Reading a data source into tokens: a text file, a directory of `.txt` files, or a `.jsonl`
//! file of `{"text"}`, `{"prompt", "completion"}` or `{"messages"}` examples.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::chat::{self, Message, ROLES};
use super::DataOptions;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The tokens of a data source, in order, with which of them belong to a prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenStream {
    /// Token ids.   (T,)
    pub ids: Vec<u32>,
    /// Whether each token is part of a jsonl `prompt` or of a conversation's non-assistant
    /// text (masked from the loss with `mask_prompt`).   (T,)
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
/// (see the [module docs](super) for the rules), with `opts`' separator and chat template.
/// Errors name the path and say what to change: a missing path, an empty file or directory, a
/// directory without `.txt` files, text that is not UTF-8 (with the byte offset and line), a
/// jsonl line that is not JSON, lacks the fields, mixes formats or has a message with an
/// unknown role (with its 1-based line number), or chat data without a chat template.
pub fn read_tokens(path: &Path, tok: &Tokenizer, opts: &DataOptions) -> Result<TokenStream> {
    read(path, tok, opts).map(|(stream, _)| stream)
}

/// [`read_tokens`], and whether the source is chat data (whose prompt tokens are masked by
/// default).
pub(super) fn read(
    path: &Path,
    tok: &Tokenizer,
    opts: &DataOptions,
) -> Result<(TokenStream, bool)> {
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
        Ok((read_dir(path, tok, opts.separator)?, false))
    } else if path.extension().is_some_and(|e| e == "jsonl") {
        read_jsonl(path, tok, opts)
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
        Ok((out, false))
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

fn read_dir(dir: &Path, tok: &Tokenizer, separator: u32) -> Result<TokenStream> {
    let mut out = TokenStream::default();
    for file in txt_files(dir)? {
        let bytes = read_file(&file)?;
        let text = utf8(&file, &bytes)?;
        if text.is_empty() {
            continue; // An empty document adds nothing, not even a separator.
        }
        if out.documents > 0 {
            out.push(&[separator], false);
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
    messages: Option<serde_json::Value>,
}

const SHAPE: &str = r#"each line must be a JSON object {"text": "..."}, {"prompt": "...", "completion": "..."} or {"messages": [{"role": "...", "content": "..."}, ...]}, one format per file"#;

fn read_jsonl(path: &Path, tok: &Tokenizer, opts: &DataOptions) -> Result<(TokenStream, bool)> {
    let bytes = read_file(path)?;
    let text = utf8(path, &bytes)?;
    let mut out = TokenStream::default();
    // The line of the first example and whether it is a conversation: the file's format.
    let mut format: Option<(usize, bool)> = None;
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
        let is_chat = ex.messages.is_some();
        match format {
            None => format = Some((n, is_chat)),
            Some((first, chat)) if chat != is_chat => {
                let kind = |c: bool| {
                    if c {
                        "chat data (\"messages\")"
                    } else {
                        "text or prompt/completion data"
                    }
                };
                return Err(format_err(
                    path,
                    format!(
                        "line {n} is {} but line {first} is {}: one file holds one format; {SHAPE}",
                        kind(is_chat),
                        kind(chat)
                    ),
                ));
            }
            Some(_) => {}
        }
        match ex {
            Example {
                messages: Some(m),
                text: None,
                prompt: None,
                completion: None,
            } => {
                let Some(tpl) = opts.chat_template else {
                    return Err(format_err(
                        path,
                        "the file is chat data (messages) but the model has no chat_template in tokenizer_config.json; use a model with a chat template or convert the data to {\"prompt\",\"completion\"}",
                    ));
                };
                let messages = parse_messages(path, n, m)?;
                let line_err = |e: Error| match e {
                    Error::Format { detail, .. } => format_err(path, format!("line {n}: {detail}")),
                    other => other,
                };
                if opts.mask_prompt == Some(false) {
                    // Every token carries loss: the whole rendering, once.
                    let text = tpl.render(&messages, false).map_err(line_err)?;
                    out.push(&tokenize(tok, path, &text)?, false);
                    out.push(&[opts.separator], false);
                } else {
                    for (ids, prompt) in
                        chat::tokenize_chat_examples(tpl, tok, &messages).map_err(line_err)?
                    {
                        out.ids.extend_from_slice(&ids);
                        out.is_prompt.extend_from_slice(&prompt);
                        out.push(&[opts.separator], true);
                    }
                }
            }
            Example { messages: Some(_), .. } => {
                return Err(format_err(
                    path,
                    format!("line {n}: has \"messages\" and also \"text\", \"prompt\" or \"completion\"; {SHAPE}"),
                ))
            }
            Example {
                text: None,
                prompt: Some(p),
                completion: Some(c),
                ..
            } => {
                out.push(&tokenize(tok, path, &p)?, true);
                out.push(&tokenize(tok, path, &c)?, false);
                out.push(&[opts.separator], false);
            }
            Example {
                text: Some(t),
                prompt: None,
                completion: None,
                ..
            } => {
                out.push(&tokenize(tok, path, &t)?, false);
                out.push(&[opts.separator], false);
            }
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
                    _ => "\"text\" (or \"prompt\" and \"completion\", or \"messages\")",
                };
                return Err(format_err(
                    path,
                    format!("line {n}: missing field {missing}; {SHAPE}"),
                ));
            }
        }
        out.documents += 1;
    }
    let Some((_, chat)) = format else {
        return Err(format_err(
            path,
            format!("the file has no examples: {SHAPE}, one per line"),
        ));
    };
    Ok((out, chat))
}

/// The messages of line `n`'s `"messages"`: a list of objects with a string `"role"` (one of
/// [`ROLES`]) and a string `"content"`.
fn parse_messages(path: &Path, n: usize, value: serde_json::Value) -> Result<Vec<Message>> {
    let shape = r#""messages" must be a list of {"role": "...", "content": "..."}"#;
    let serde_json::Value::Array(items) = value else {
        return Err(format_err(path, format!("line {n}: {shape}")));
    };
    if items.is_empty() {
        return Err(format_err(
            path,
            format!("line {n}: \"messages\" is empty; {shape}"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(k, item)| {
            let k = k + 1;
            let serde_json::Value::Object(mut obj) = item else {
                return Err(format_err(
                    path,
                    format!("line {n}: message {k} is not an object; {shape}"),
                ));
            };
            let mut field = |name: &str| match obj.remove(name) {
                Some(serde_json::Value::String(s)) => Ok(s),
                Some(other) => Err(format_err(
                    path,
                    format!("line {n}: message {k} has a \"{name}\" that is not a string ({other}); {shape}"),
                )),
                None => Err(format_err(
                    path,
                    format!("line {n}: message {k} has no \"{name}\"; {shape}"),
                )),
            };
            let role = field("role")?;
            let content = field("content")?;
            if !ROLES.contains(&role.as_str()) {
                return Err(format_err(
                    path,
                    format!(
                        "line {n}: message {k} has the unknown role {role:?}; roles are {}",
                        ROLES.join(", ")
                    ),
                ));
            }
            Ok(Message { role, content })
        })
        .collect()
}
