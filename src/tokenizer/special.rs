//! A model directory's special tokens (beginning, end, padding) and its chat template, from the
//! files Hugging Face ships beside the weights.

use std::path::Path;

use serde_json::Value;

use super::Tokenizer;
use crate::error::{Error, Result};

/// The special token ids of a model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence, if the model has one.
    pub bos: Option<u32>,
    /// End of sequence: generation stops at any of these (instruction-tuned models often list
    /// several, e.g. end-of-turn and end-of-text).
    pub eos: Vec<u32>,
    /// Padding, if the model names one.
    pub pad: Option<u32>,
}

/// A token id (or list of them) of a config file: non-negative integers below 2^32. Negative
/// ids (some files write -1 for "none") read as absent.
pub(crate) fn token_ids(name: &'static str, v: Option<&Value>) -> Result<Vec<u32>> {
    let one = |v: &Value| -> Result<Option<u32>> {
        if v.as_i64().is_some_and(|i| i < 0) {
            return Ok(None);
        }
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::invalid(
                    name,
                    v,
                    "must be a token id (an integer), a list of them, or null",
                )
            })
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                if let Some(id) = one(item)? {
                    out.push(id);
                }
            }
            Ok(out)
        }
        Some(v) => Ok(one(v)?.into_iter().collect()),
    }
}

/// One optional token id of a config file (a list is refused).
pub(crate) fn token_id(name: &'static str, v: Option<&Value>) -> Result<Option<u32>> {
    if let Some(Value::Array(_)) = v {
        return Err(Error::invalid(
            name,
            v.unwrap(),
            "must be one token id or null",
        ));
    }
    Ok(token_ids(name, v)?.first().copied())
}

/// Largest JSON file read here (tokenizer_config.json with a long chat template is tens of KiB).
const MAX_JSON_BYTES: u64 = 16 << 20;

/// The JSON object of `dir/name`, or `None` when the file does not exist.
fn read_json(dir: &Path, name: &str) -> Result<Option<serde_json::Map<String, Value>>> {
    let path = dir.join(name);
    if !path.is_file() {
        return Ok(None);
    }
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let len = std::fs::metadata(&path).map_err(io)?.len();
    if len > MAX_JSON_BYTES {
        return Err(Error::Format {
            path: path.clone(),
            detail: format!("{len} bytes is too large for {name} (at most {MAX_JSON_BYTES})"),
        });
    }
    let bytes = std::fs::read(&path).map_err(io)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(Error::Format {
            path,
            detail: "must be a JSON object".into(),
        }),
        Err(e) => Err(Error::Format {
            path,
            detail: format!("not valid JSON ({e})"),
        }),
    }
}

/// Re-label a config-value error with the file it came from.
fn in_file(dir: &Path, name: &str) -> impl Fn(Error) -> Error {
    let path = dir.join(name);
    move |e| Error::Format {
        path: path.clone(),
        detail: e.to_string(),
    }
}

/// The text of a special token in tokenizer_config.json: a string, or an `AddedToken` object
/// `{"content": ..., "lstrip": ..., ...}`; `None` for null or absent.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(m) => m.get("content")?.as_str(),
        _ => None,
    }
}

/// The special tokens of the model directory `dir`, looked up in the order transformers'
/// `generate()` and tokenizer use them:
/// - `generation_config.json` (what `generate()` uses): its `bos_token_id`, `eos_token_id` (one
///   id or a list) and `pad_token_id` win where it sets them;
/// - `config.json`: the same keys, for what the generation config leaves unset;
/// - `tokenizer_config.json`: `bos_token`, `eos_token`, `pad_token` (a string or an
///   `AddedToken` object `{"content": ...}`), resolved to ids through `tok`, for what is still
///   unset.
///
/// Missing files are skipped; a file that is not valid JSON, an id that is not an integer, or a
/// token text the tokenizer does not know is an error naming the file.
pub fn special_tokens(dir: &Path, tok: &Tokenizer) -> Result<SpecialTokens> {
    let mut out = SpecialTokens::default();
    let mut have_eos = false;
    for file in ["generation_config.json", "config.json"] {
        let Some(obj) = read_json(dir, file)? else {
            continue;
        };
        let relabel = in_file(dir, file);
        if out.bos.is_none() {
            out.bos = token_id("bos_token_id", obj.get("bos_token_id")).map_err(&relabel)?;
        }
        if out.pad.is_none() {
            out.pad = token_id("pad_token_id", obj.get("pad_token_id")).map_err(&relabel)?;
        }
        if !have_eos {
            out.eos = token_ids("eos_token_id", obj.get("eos_token_id")).map_err(&relabel)?;
            have_eos = !out.eos.is_empty();
        }
    }
    if let Some(obj) = read_json(dir, "tokenizer_config.json")? {
        let resolve = |key: &str| -> Result<Option<u32>> {
            let Some(text) = token_text(obj.get(key)) else {
                return Ok(None);
            };
            tok.token_to_id(text)
                .map(Some)
                .ok_or_else(|| Error::Format {
                    path: dir.join("tokenizer_config.json"),
                    detail: format!(
                    "{key} {text:?} is not a token of the model's tokenizer; the tokenizer.json \
                     and tokenizer_config.json do not belong together"
                ),
                })
        };
        if out.bos.is_none() {
            out.bos = resolve("bos_token")?;
        }
        if out.eos.is_empty() {
            out.eos = resolve("eos_token")?.into_iter().collect();
        }
        if out.pad.is_none() {
            out.pad = resolve("pad_token")?;
        }
    }
    Ok(out)
}

/// The chat template of the model directory `dir`: the `chat_template.jinja` file when it
/// exists (transformers 4.43 and later save the template there), else tokenizer_config.json's
/// `chat_template`, which is a string or a list of `{"name": ..., "template": ...}` of which
/// the one named `default` is used. `None` when the model has none.
pub fn chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|source| Error::Io {
                path: jinja,
                source,
            });
    }
    let Some(obj) = read_json(dir, "tokenizer_config.json")? else {
        return Ok(None);
    };
    let bad = |detail: String| Error::Format {
        path: dir.join("tokenizer_config.json"),
        detail,
    };
    match obj.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(n), Some(_)) => names.push(n.to_string()),
                    _ => {
                        return Err(bad(
                            "chat_template list entries must be {\"name\": ..., \"template\": ...}"
                                .into(),
                        ))
                    }
                }
            }
            Err(bad(format!(
                "chat_template lists templates {names:?} but none named \"default\""
            )))
        }
        Some(other) => Err(bad(format!(
            "chat_template must be a string or a list of named templates, not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_reads_strings_and_added_tokens() {
        let v =
            serde_json::json!({"content": "<|im_end|>", "lstrip": false, "__type": "AddedToken"});
        assert_eq!(token_text(Some(&v)), Some("<|im_end|>"));
        assert_eq!(token_text(Some(&serde_json::json!("<s>"))), Some("<s>"));
        assert_eq!(token_text(Some(&Value::Null)), None);
        assert_eq!(token_text(None), None);
    }

    #[test]
    fn token_ids_accept_one_list_null_and_negative() {
        assert_eq!(
            token_ids("e", Some(&serde_json::json!(5))).unwrap(),
            vec![5]
        );
        assert_eq!(
            token_ids("e", Some(&serde_json::json!([5, 6]))).unwrap(),
            vec![5, 6]
        );
        assert!(token_ids("e", Some(&Value::Null)).unwrap().is_empty());
        assert!(token_ids("e", Some(&serde_json::json!(-1)))
            .unwrap()
            .is_empty());
        assert!(token_ids("e", Some(&serde_json::json!("x"))).is_err());
        assert!(token_id("p", Some(&serde_json::json!([1]))).is_err());
    }

    #[test]
    fn chat_template_forms() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(chat_template(dir.path()).unwrap(), None);
        let cfg = dir.path().join("tokenizer_config.json");
        std::fs::write(&cfg, r#"{"chat_template": "{{ messages }}"}"#).unwrap();
        assert_eq!(
            chat_template(dir.path()).unwrap().as_deref(),
            Some("{{ messages }}")
        );
        std::fs::write(
            &cfg,
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(chat_template(dir.path()).unwrap().as_deref(), Some("D"));
        std::fs::write(
            &cfg,
            r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#,
        )
        .unwrap();
        let err = chat_template(dir.path()).unwrap_err().to_string();
        assert!(err.contains("rag") && err.contains("default"), "{err}");
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        assert_eq!(chat_template(dir.path()).unwrap().as_deref(), Some("J"));
    }
}
