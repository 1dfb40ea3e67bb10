//! Chat data: conversations rendered through the model's Jinja chat template, with the loss on
//! the assistant turns only.
//!
//! A conversation is a list of [`Message`]s (`{"role", "content"}`, roles `system`, `user`,
//! `assistant`, `tool`), the format TRL and mlx-lm read. [`ChatTemplate`] renders it with the
//! `chat_template` of the model's `tokenizer_config.json` the way transformers'
//! `apply_chat_template` does: Jinja with `trim_blocks` and `lstrip_blocks`, loop controls,
//! Python string methods (`.strip()`, `.startswith()`, `.split()`, ...), `raise_exception(msg)`,
//! `strftime_now(fmt)`, a `tojson` filter that writes JSON as Python's `json.dumps` does, and
//! the variables `messages`, `bos_token`, `eos_token`, `add_generation_prompt` and `tools`
//! (none).
//!
//! [`tokenize_chat`] tokenises the whole rendering at once (the ids are those of the text; no
//! BOS or other special token is added, so a template that writes `bos_token` gets exactly one)
//! and flags every token that is not part of an assistant turn as prompt. An assistant turn is
//! found by rendering prefixes: the text that `messages[..=i]` adds to `messages[..i]` rendered
//! with `add_generation_prompt`, that is the assistant's content and the template's end-of-turn
//! marker (`<|im_end|>`, `<|eot_id|>`), which the model must learn to emit; whitespace after the
//! marker (ChatML's `\n`) stays prompt. A token is an assistant token when its bytes overlap
//! that text.
//!
//! This needs each prefix's rendering to begin the next one ("prefix-stable"). Templates that
//! rewrite earlier turns are not: Qwen3's drops the `<think>` block of assistant turns before
//! the last user message but writes one for the last turn. For such a conversation
//! [`tokenize_chat`] is an error and [`tokenize_chat_examples`] makes one sequence per assistant
//! turn instead: the conversation up to and including that turn, rendered as the model sees it
//! when it writes that turn, with only that turn's tokens unmasked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::{chat_template, Tokenizer};

/// The roles a [`Message`] may have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The role whose turns carry the loss.
const ASSISTANT: &str = "assistant";

/// The name the template is stored under (no extension, so no auto-escaping) and that errors
/// show.
const NAME: &str = "chat_template";

/// The start of the error detail `raise_exception` returns, to tell it from engine errors.
const RAISED: &str = "raise_exception: ";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool` (see [`ROLES`]).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

fn chat_err(detail: impl Into<String>) -> Error {
    Error::Format {
        path: "<chat_template>".into(),
        detail: detail.into(),
    }
}

/// A model's Jinja chat template, parsed once, with its special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Unix seconds that `strftime_now` formats.
    now: Arc<AtomicI64>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Parse `template` (the `chat_template` string of `tokenizer_config.json`); `bos_token` and
    /// `eos_token` are the texts the template sees as `bos_token` / `eos_token` (undefined, so
    /// printing nothing, when None). `strftime_now` reads the clock as of this call (UTC), so
    /// every rendering of one dataset shows the same date; [`ChatTemplate::with_time`] fixes it.
    /// Errors when the template does not parse, with the line and the parser's message.
    pub fn new(
        template: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let now = Arc::new(AtomicI64::new(now));
        let mut env = Environment::new();
        // transformers' settings: `ImmutableSandboxedEnvironment(trim_blocks=True,
        // lstrip_blocks=True, extensions=[loopcontrols])`.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| chat_err(describe(&e)))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{RAISED}{msg}"),
                ))
            },
        );
        let clock = Arc::clone(&now);
        env.add_function("strftime_now", move |fmt: String| {
            strftime(&fmt, clock.load(Ordering::Relaxed))
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, template.to_string())
            .map_err(|e| {
                chat_err(format!(
                    "the chat template does not parse: {}",
                    describe(&e)
                ))
            })?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            now,
        })
    }

    /// The same template with `strftime_now` reading `unix_seconds` (UTC) instead of the time
    /// it was made, for reproducible renderings.
    pub fn with_time(self, unix_seconds: i64) -> Self {
        self.now.store(unix_seconds, Ordering::Relaxed);
        self
    }

    /// Render a conversation. `add_generation_prompt` appends the header of an assistant turn
    /// (what a model is given before it answers); training renders without it. Errors when the
    /// template raises (`raise_exception`, e.g. roles that do not alternate) or fails, with its
    /// message and line.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| chat_err(describe(&e)))?;
        let map = |pairs: Vec<(&str, Value)>| {
            Value::from(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<BTreeMap<String, Value>>(),
            )
        };
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                map(vec![
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut ctx = vec![
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
        ];
        // An unset special token is left undefined (so it prints nothing), as transformers
        // passes only the tokens a tokenizer has.
        for (name, t) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ] {
            if let Some(t) = t {
                ctx.push((name, Value::from(t.as_str())));
            }
        }
        let ctx = map(ctx);
        tmpl.render(ctx).map_err(|e| {
            if e.kind() == ErrorKind::InvalidOperation {
                if let Some(msg) = e.detail().and_then(|d| d.strip_prefix(RAISED)) {
                    let at = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
                    return chat_err(format!("the chat template raised an exception{at}: {msg}"));
                }
            }
            chat_err(format!(
                "rendering the chat template failed: {}",
                describe(&e)
            ))
        })
    }
}

/// A minijinja error with its line and the errors behind it.
fn describe(e: &minijinja::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Check that every message has a known role.
fn check_roles(messages: &[Message]) -> Result<()> {
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(chat_err(format!(
                "message {} has role {:?}: roles are {}",
                i + 1,
                m.role,
                ROLES.join(", ")
            )));
        }
    }
    Ok(())
}

/// Where the assistant turns are in a conversation's rendering.
enum Spans {
    /// The rendering of the whole conversation, and the byte range of each assistant turn.
    Stable(String, Vec<std::ops::Range<usize>>),
    /// Rendering the conversation up to message `.0` (0-based, an assistant turn) does not
    /// begin the rendering of the whole conversation.
    Unstable(usize),
}

/// The assistant turn `i` of `messages`: the rendering of `messages[..=i]` and the byte range
/// of the turn in it (from the end of `messages[..i]` rendered with the generation prompt to
/// the end of the turn, trailing whitespace left out).
fn turn(
    tpl: &ChatTemplate,
    messages: &[Message],
    i: usize,
) -> Result<(String, std::ops::Range<usize>)> {
    let before = tpl.render(&messages[..i], true)?;
    let upto = tpl.render(&messages[..=i], false)?;
    if !upto.starts_with(&before) {
        let at = before
            .bytes()
            .zip(upto.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        return Err(chat_err(format!(
            "cannot find assistant message {} in the rendering: messages 1..{} with the generation prompt render as {:?}, but messages 1..={} render as {:?} (they differ at byte {at}); the chat template does not render an assistant turn after its generation prompt",
            i + 1,
            i,
            tail(&before, at),
            i + 1,
            tail(&upto, at),
        )));
    }
    let end = before.len() + upto[before.len()..].trim_end().len();
    Ok((upto, before.len()..end))
}

/// Up to 40 bytes of `s` around byte `at`, for error messages.
fn tail(s: &str, at: usize) -> String {
    let mut a = at.saturating_sub(20);
    while !s.is_char_boundary(a) {
        a -= 1;
    }
    let mut b = (at + 20).min(s.len());
    while !s.is_char_boundary(b) {
        b += 1;
    }
    format!("...{}...", &s[a..b])
}

fn spans(tpl: &ChatTemplate, messages: &[Message]) -> Result<Spans> {
    check_roles(messages)?;
    let full = tpl.render(messages, false)?;
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != ASSISTANT {
            continue;
        }
        let (upto, span) = turn(tpl, messages, i)?;
        if !full.starts_with(&upto) {
            return Ok(Spans::Unstable(i));
        }
        out.push(span);
    }
    Ok(Spans::Stable(full, out))
}

/// Tokenise `text` at once and flag as prompt every token that overlaps none of `spans`.
fn tokenize_spans(
    tok: &Tokenizer,
    text: &str,
    spans: &[std::ops::Range<usize>],
) -> Result<(Vec<u32>, Vec<bool>)> {
    let (ids, offsets) = tok.encode_with_offsets(text)?;
    Ok((ids, prompt_flags(&offsets, spans)))
}

/// Whether each token (by its byte range) lies outside every span. A token's extent reaches
/// back to the end of the token before it, so bytes that a byte-level tokenizer trims from the
/// offsets (spaces) still count; an empty extent counts as the point where it sits.
fn prompt_flags(offsets: &[(usize, usize)], spans: &[std::ops::Range<usize>]) -> Vec<bool> {
    let mut prev_end = 0;
    offsets
        .iter()
        .map(|&(s, e)| {
            let start = s.min(prev_end);
            let end = e.max(start);
            prev_end = prev_end.max(e);
            !spans.iter().any(|r| {
                if start == end {
                    r.start <= start && start < r.end
                } else {
                    start < r.end && end > r.start
                }
            })
        })
        .collect()
}

/// The chat template of `model` (its directory's `chat_template.jinja` or tokenizer_config.json
/// `chat_template`), with its beginning and end tokens' text; `None` for a model without one
/// (built-in and random models have none).
pub fn model_template(model: &Model) -> Result<Option<ChatTemplate>> {
    let Some(dir) = model.source.local_dir()? else {
        return Ok(None);
    };
    let Some(text) = chat_template(&dir)? else {
        return Ok(None);
    };
    let tok = &model.tokenizer;
    let bos = model.special.bos.and_then(|id| tok.id_to_token(id));
    let eos = model
        .special
        .eos
        .first()
        .and_then(|&id| tok.id_to_token(id));
    ChatTemplate::new(&text, bos, eos).map(Some)
}

/// Token ids of a conversation rendered through `tpl` (no special token added beyond what the
/// template writes) and whether each is a prompt token: false only for the tokens of assistant
/// turns, their content and end-of-turn marker (see the [module docs](self)). The ids equal
/// tokenising the whole rendering at once. Errors on a role not in [`ROLES`], when the
/// template raises or fails, and when the template is not prefix-stable for this conversation
/// (use [`tokenize_chat_examples`] then).
///
/// ```
/// use lora_wgpu::data::chat::{tokenize_chat, ChatTemplate, Message};
/// use lora_wgpu::tokenizer::Tokenizer;
///
/// # fn main() -> lora_wgpu::Result<()> {
/// let tpl = ChatTemplate::new(
///     "{% for m in messages %}{{ m.role + ':\\n' + m.content + '<|endoftext|>' }}{% endfor %}\
///      {% if add_generation_prompt %}assistant:\n{% endif %}",
///     None,
///     None,
/// )?;
/// let chat = [Message::new("user", "Hi"), Message::new("assistant", "Hello!")];
/// assert_eq!(tpl.render(&chat, false)?, "user:\nHi<|endoftext|>assistant:\nHello!<|endoftext|>");
/// let tok = Tokenizer::gpt2()?;
/// let (ids, is_prompt) = tokenize_chat(&tpl, &tok, &chat)?;
/// let learned: Vec<u32> = ids.iter().zip(&is_prompt).filter(|(_, p)| !**p).map(|(t, _)| *t).collect();
/// assert_eq!(tok.decode(&learned)?, "Hello!<|endoftext|>");
/// # Ok(())
/// # }
/// ```
pub fn tokenize_chat(
    tpl: &ChatTemplate,
    tok: &Tokenizer,
    messages: &[Message],
) -> Result<(Vec<u32>, Vec<bool>)> {
    match spans(tpl, messages)? {
        Spans::Stable(text, spans) => tokenize_spans(tok, &text, &spans),
        Spans::Unstable(i) => Err(chat_err(format!(
            "the chat template renders messages 1..={} differently on their own than as the start of the whole conversation (it rewrites earlier turns, as Qwen3's drops old <think> blocks), so the turns cannot be found in one rendering; tokenize_chat_examples makes one sequence per assistant turn",
            i + 1
        ))),
    }
}

/// The training sequences of one conversation, each as ids and prompt flags: one sequence, as
/// [`tokenize_chat`], when the template is prefix-stable for it; otherwise one per assistant
/// turn, holding the conversation up to that turn as the template renders it when that turn is
/// the last, with only that turn unmasked (messages after the last assistant turn are then
/// left out: they carry no loss).
pub fn tokenize_chat_examples(
    tpl: &ChatTemplate,
    tok: &Tokenizer,
    messages: &[Message],
) -> Result<Vec<(Vec<u32>, Vec<bool>)>> {
    match spans(tpl, messages)? {
        Spans::Stable(text, spans) => Ok(vec![tokenize_spans(tok, &text, &spans)?]),
        Spans::Unstable(_) => messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == ASSISTANT)
            .map(|(i, _)| {
                let (text, span) = turn(tpl, messages, i)?;
                tokenize_spans(tok, &text, &[span])
            })
            .collect(),
    }
}

/// The `tojson` filter as transformers defines it: `json.dumps(value, ensure_ascii=False,
/// indent=indent)`, so `{"a": 1, "b": [1, 2]}` on one line, or `indent` spaces per level.
/// (minijinja's own escapes `<`, `>`, `&` and `'` for HTML, which a prompt must not get.)
fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let mut out = String::new();
    write_json(&mut out, value, indent, 0)?;
    Ok(Value::from(out))
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    let bad = |what: &str| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: cannot write {what} as JSON"),
        )
    };
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    // Python's separators: ", " and ": " on one line, "," and ": " with an indent.
    let comma = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).map_err(|_| bad("a number"))?;
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else {
                    out.push_str(&f.to_string());
                }
            }
        }
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            out.push_str(&serde_json::to_string(s).map_err(|_| bad("a string"))?);
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push_str(comma);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            out.push('{');
            for (k, key) in keys.iter().enumerate() {
                if k > 0 {
                    out.push_str(comma);
                }
                newline(out, depth + 1);
                let name = key.as_str().map_or_else(|| key.to_string(), str::to_string);
                out.push_str(&serde_json::to_string(&name).map_err(|_| bad("a key"))?);
                out.push_str(": ");
                write_json(out, &v.get_item(key)?, indent, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => return Err(bad(&format!("a value of kind {}", v.kind()))),
    }
    Ok(())
}

/// Python's `datetime.strftime` for the common directives, at `unix_seconds` UTC.
fn strftime(fmt: &str, unix_seconds: i64) -> std::result::Result<String, String> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d2) = chars.next() else {
            return Err("strftime_now: the format ends with a lone %".into());
        };
        let month = MONTHS[(m - 1) as usize];
        match d2 {
            'Y' => out.push_str(&y.to_string()),
            'y' => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            'm' => out.push_str(&format!("{m:02}")),
            'd' => out.push_str(&format!("{d:02}")),
            'e' => out.push_str(&format!("{d:2}")),
            'j' => out.push_str(&format!("{yday:03}")),
            'b' | 'h' => out.push_str(&month[..3]),
            'B' => out.push_str(month),
            'a' => out.push_str(&DAYS[weekday][..3]),
            'A' => out.push_str(DAYS[weekday]),
            'w' => out.push_str(&weekday.to_string()),
            'H' => out.push_str(&format!("{hh:02}")),
            'I' => out.push_str(&format!("{:02}", (hh + 11) % 12 + 1)),
            'p' => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            'M' => out.push_str(&format!("{mm:02}")),
            'S' => out.push_str(&format!("{ss:02}")),
            'F' => out.push_str(&format!("{y}-{m:02}-{d:02}")),
            'T' => out.push_str(&format!("{hh:02}:{mm:02}:{ss:02}")),
            '%' => out.push('%'),
            other => {
                return Err(format!(
                    "strftime_now: the directive %{other} is not supported (supported: %Y %y %m %d %e %j %b %h %B %a %A %w %H %I %p %M %S %F %T %%)"
                ))
            }
        }
    }
    Ok(out)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-07-26 12:34:56 UTC, a Friday.
    const JUL_26_2024: i64 = 1_721_997_296;

    #[test]
    fn strftime_formats_python_directives() {
        assert_eq!(strftime("%d %b %Y", JUL_26_2024).unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e, %y %H:%M:%S %p %j %%", JUL_26_2024).unwrap(),
            "Friday July 26, 24 12:34:56 PM 208 %"
        );
        assert_eq!(strftime("%F %T %a", 0).unwrap(), "1970-01-01 00:00:00 Thu");
        assert_eq!(strftime("%F", 951_782_400).unwrap(), "2000-02-29");
        assert_eq!(strftime("%F %j", -86_400).unwrap(), "1969-12-31 365");
        assert!(strftime("%Q", 0).unwrap_err().contains("%Q"));
        for days in [-800_000, -1, 0, 59, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    fn json(src: &str) -> String {
        let tpl = ChatTemplate::new(src, None, None).unwrap();
        tpl.render(&[], false).unwrap()
    }

    #[test]
    fn tojson_writes_python_json() {
        assert_eq!(
            json(r#"{{ {"a": 1, "b": [1, 2.5, true, none], "c": "<é\n>"} | tojson }}"#),
            r#"{"a": 1, "b": [1, 2.5, true, null], "c": "<é\n>"}"#
        );
        assert_eq!(
            json(r#"{{ {"a": [1, {}], "b": []} | tojson(indent=2) }}"#),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
        assert_eq!(json(r#"{{ "x" | tojson(4) }}"#), r#""x""#);
    }

    #[test]
    fn prompt_flags_use_overlap_and_trimmed_spaces() {
        // "ab" "Ġc" trimmed to (3, 4) after (0, 2), then a space-only token trimmed to empty.
        let offsets = [(0, 2), (3, 4), (5, 5), (5, 7)];
        let one = |r: std::ops::Range<usize>| vec![r];
        assert_eq!(
            prompt_flags(&offsets, &one(2..4)),
            [true, false, true, true]
        );
        assert_eq!(
            prompt_flags(&offsets, &one(4..6)),
            [true, true, false, false]
        );
        assert_eq!(prompt_flags(&offsets, &[]), [true; 4]);
        // Tokens sharing one character's range (byte fallback) get the same flag.
        assert_eq!(
            prompt_flags(&[(0, 3), (0, 3), (3, 4)], &one(0..3)),
            [false, false, true]
        );
    }

    #[test]
    fn unknown_roles_are_named() {
        let tpl = ChatTemplate::new("{{ messages | length }}", None, None).unwrap();
        let e = spans(&tpl, &[Message::new("user", "a"), Message::new("bot", "b")])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("message 2") && e.contains("\"bot\""), "{e}");
    }
}
