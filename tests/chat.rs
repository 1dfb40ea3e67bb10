//! Chat data (`lora_wgpu::data::chat`): rendering real chat templates as transformers does, the
//! loss mask on assistant turns, and chat jsonl through the data loader. No GPU, no network: a
//! tiny byte-level BPE tokenizer with the models' special tokens stands in for theirs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lora_wgpu::data::chat::{tokenize_chat, tokenize_chat_examples, ChatTemplate, Message};
use lora_wgpu::data::{read_tokens, DataOptions, Dataset, IGNORE};
use lora_wgpu::tokenizer::Tokenizer;

/// The `chat_template` strings of the models' tokenizer_config.json; the renderings that
/// Jinja2 makes of them (scripts/make_chat_fixtures.py) are in renderings.json.
const SMOLLM2: &str = include_str!("fixtures/chat/smollm2.jinja");
const QWEN25: &str = include_str!("fixtures/chat/qwen2.5.jinja");
const QWEN3: &str = include_str!("fixtures/chat/qwen3.jinja");
const LLAMA32: &str = include_str!("fixtures/chat/llama3.2.jinja");
const RENDERINGS: &str = include_str!("fixtures/chat/renderings.json");

/// 2024-07-26 12:34:56 UTC, the time the fixtures' `strftime_now` reads.
const NOW: i64 = 1_721_997_296;

const SPECIALS: [&str; 7] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

/// (template, bos, eos) of a model.
fn model(name: &str) -> (&'static str, Option<&'static str>, Option<&'static str>) {
    match name {
        "smollm2" => (SMOLLM2, Some("<|im_start|>"), Some("<|im_end|>")),
        "qwen2.5" => (QWEN25, None, Some("<|im_end|>")),
        "qwen3" => (QWEN3, None, Some("<|im_end|>")),
        "llama3.2" => (LLAMA32, Some("<|begin_of_text|>"), Some("<|eot_id|>")),
        _ => panic!("no model {name}"),
    }
}

fn template(name: &str) -> ChatTemplate {
    let (src, bos, eos) = model(name);
    ChatTemplate::new(src, bos.map(String::from), eos.map(String::from))
        .unwrap()
        .with_time(NOW)
}

/// A byte-level BPE tokenizer (GPT-2's pre-tokenizer, offsets trimmed as GPT-2's are) over the
/// 256 byte symbols, a few merges, and [`SPECIALS`] as added special tokens.
fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let mut symbols: Vec<String> = ByteLevel::alphabet()
            .into_iter()
            .map(String::from)
            .collect();
        symbols.sort();
        let merges: Vec<(String, String)> =
            [("H", "i"), ("Ġ", "t"), ("Ġt", "h"), ("Ċ", "Ċ"), ("a", "n")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        symbols.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        let vocab: tokenizers::models::bpe::Vocab = symbols
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .unwrap();
        let mut t = tokenizers::Tokenizer::new(bpe);
        t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        t.with_post_processor(Some(ByteLevel::new(false, true, true)));
        t.with_decoder(Some(ByteLevel::default()));
        let specials: Vec<_> = SPECIALS
            .iter()
            .map(|s| tokenizers::AddedToken::from(*s, true))
            .collect();
        t.add_special_tokens(&specials);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        t.save(&path, false).unwrap();
        Tokenizer::from_file(&path).unwrap()
    })
}

fn msg(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

/// The texts of the runs of consecutive non-prompt tokens.
fn unmasked(ids: &[u32], prompt: &[bool]) -> Vec<String> {
    assert_eq!(ids.len(), prompt.len());
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for (&id, &p) in ids.iter().zip(prompt) {
        if p {
            if !cur.is_empty() {
                runs.push(tok().decode(&cur).unwrap());
                cur.clear();
            }
        } else {
            cur.push(id);
        }
    }
    if !cur.is_empty() {
        runs.push(tok().decode(&cur).unwrap());
    }
    runs
}

fn multi() -> Vec<Message> {
    vec![
        msg("system", "You are terse."),
        msg("user", "What is 2+2?"),
        msg("assistant", "4"),
        msg("user", "And 3+3?"),
        msg("assistant", "6"),
    ]
}

#[test]
fn renderings_match_jinja2() {
    let cases: Vec<serde_json::Value> = serde_json::from_str(RENDERINGS).unwrap();
    assert!(cases.len() > 50);
    for case in &cases {
        let name = case["template"].as_str().unwrap();
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| msg(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = template(name).render(&messages, gen).unwrap();
        assert_eq!(
            got,
            case["text"].as_str().unwrap(),
            "{name} / {} ({} messages, add_generation_prompt = {gen})",
            case["conversation"],
            messages.len()
        );
    }
}

#[test]
fn chatml_renders_as_written() {
    let conv = [msg("user", "Hello!"), msg("assistant", "Hi there.")];
    assert_eq!(
        template("smollm2").render(&conv, false).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi there.<|im_end|>\n"
    );
    assert_eq!(
        template("qwen2.5").render(&conv[..1], true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        template("qwen2.5").render(&multi()[..3], false).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n"
    );
}

#[test]
fn llama32_renders_as_written() {
    assert_eq!(
        template("llama3.2").render(&multi()[..3], false).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
         You are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
         What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
    );
    // Without a system message the header is still written, with an empty system text; the
    // generation prompt is the assistant header.
    assert_eq!(
        template("llama3.2")
            .render(&[msg("user", " Hi ")], true)
            .unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn template_helpers_work() {
    let render = |src: &str| {
        ChatTemplate::new(src, None, None)
            .unwrap()
            .with_time(NOW)
            .render(&[], false)
            .unwrap()
    };
    assert_eq!(render("{{ strftime_now('%d %b %Y') }}"), "26 Jul 2024");
    assert_eq!(
        render("{{ ' a b\\n'.strip() }}|{{ 'x</think>\\n\\ny'.split('</think>')[-1].lstrip('\\n') }}|{{ 'abc'.rstrip('c') }}"),
        "a b|y|ab"
    );
    assert_eq!(
        render("{% if '<tool_response>x'.startswith('<tool_response>') and 'ab'.endswith('b') %}yes{% endif %}"),
        "yes"
    );
    assert_eq!(
        render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
        "02"
    );
    assert_eq!(
        render(r#"{{ {"name": "f", "arguments": {"x": "<a & b>"}} | tojson }}"#),
        r#"{"name": "f", "arguments": {"x": "<a & b>"}}"#
    );
    // Undefined special tokens print nothing; tools is none.
    assert_eq!(
        render("[{{ bos_token }}]{% if tools is none %}none{% endif %}"),
        "[]none"
    );
}

#[test]
fn template_errors_are_clear() {
    let e = ChatTemplate::new("{% if %}oops", None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not parse"), "{e}");

    let mistral_like = "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}\
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
        {% endif %}{{ m['content'] }}{% endfor %}";
    let tpl = ChatTemplate::new(mistral_like, None, None).unwrap();
    let e = tpl
        .render(&[msg("user", "a"), msg("user", "b")], false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("raised an exception")
            && e.contains("Conversation roles must alternate user/assistant/user/assistant/..."),
        "{e}"
    );
    let e = tokenize_chat(&tpl, tok(), &[msg("assistant", "a")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("Conversation roles must alternate"), "{e}");

    let e = tokenize_chat(&template("smollm2"), tok(), &[msg("robot", "x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"robot\"") && e.contains("message 1"), "{e}");
}

#[test]
fn chatml_mask_covers_assistant_content_and_im_end() {
    for name in ["smollm2", "qwen2.5"] {
        let tpl = template(name);
        let (ids, prompt) = tokenize_chat(&tpl, tok(), &multi()).unwrap();
        let text = tpl.render(&multi(), false).unwrap();
        assert_eq!(
            ids,
            tok().encode(&text).unwrap(),
            "{name}: one tokenization"
        );
        assert_eq!(
            unmasked(&ids, &prompt),
            ["4<|im_end|>", "6<|im_end|>"],
            "{name}"
        );
        // Special tokens are single ids, and no BOS is added (ChatML templates write none).
        let im_start = tok().token_to_id("<|im_start|>").unwrap();
        assert_eq!(ids[0], im_start, "{name}");
        assert_eq!(ids.iter().filter(|&&t| t == im_start).count(), 5, "{name}");
        // The newline after <|im_end|> is not learned: the turn ends at the marker.
        let last = ids.len() - 1;
        assert_eq!(tok().decode(&ids[last..]).unwrap(), "\n");
        assert!(prompt[last]);
    }
}

#[test]
fn llama32_mask_covers_assistant_content_and_eot_id() {
    let tpl = template("llama3.2");
    let (ids, prompt) = tokenize_chat(&tpl, tok(), &multi()).unwrap();
    assert_eq!(
        ids,
        tok().encode(&tpl.render(&multi(), false).unwrap()).unwrap()
    );
    assert_eq!(unmasked(&ids, &prompt), ["4<|eot_id|>", "6<|eot_id|>"]);
    // The template writes <|begin_of_text|>; it is there exactly once.
    let bos = tok().token_to_id("<|begin_of_text|>").unwrap();
    assert_eq!(ids[0], bos);
    assert_eq!(ids.iter().filter(|&&t| t == bos).count(), 1);
    assert!(prompt[0]);
}

#[test]
fn mask_keeps_spaces_and_unicode_of_the_content() {
    let conv = [
        msg("system", "  Be kind. "),
        msg("user", " héllo\n\n"),
        msg("assistant", " ünïcode  answer \n"),
    ];
    let (ids, prompt) = tokenize_chat(&template("smollm2"), tok(), &conv).unwrap();
    assert_eq!(unmasked(&ids, &prompt), [" ünïcode  answer \n<|im_end|>"]);
    // Llama 3's template trims the content.
    let (ids, prompt) = tokenize_chat(&template("llama3.2"), tok(), &conv).unwrap();
    assert_eq!(unmasked(&ids, &prompt), ["ünïcode  answer<|eot_id|>"]);
}

#[test]
fn tool_turns_are_prompt() {
    let conv = [
        msg("user", "Weather in Paris?"),
        msg("assistant", "Let me check."),
        msg("tool", "{\"temp\": 20}"),
        msg("tool", "sunny"),
        msg("assistant", "20 degrees and sunny."),
    ];
    let (ids, prompt) = tokenize_chat(&template("qwen2.5"), tok(), &conv).unwrap();
    assert_eq!(
        unmasked(&ids, &prompt),
        ["Let me check.<|im_end|>", "20 degrees and sunny.<|im_end|>"]
    );
}

#[test]
fn qwen3_is_not_prefix_stable_and_falls_back_to_one_sequence_per_turn() {
    let tpl = template("qwen3");
    // One turn: stable; the empty think block the template writes is part of what is learned.
    let one = [msg("user", "Hello!"), msg("assistant", "Hi there.")];
    let (ids, prompt) = tokenize_chat(&tpl, tok(), &one).unwrap();
    assert_eq!(
        unmasked(&ids, &prompt),
        ["<think>\n\n</think>\n\nHi there.<|im_end|>"]
    );
    assert_eq!(
        tokenize_chat_examples(&tpl, tok(), &one).unwrap(),
        [(ids, prompt)]
    );

    // Two turns: the first turn's think block is dropped once a later user message follows.
    let conv = [
        msg("user", "q1"),
        msg("assistant", "<think>\nr1\n</think>\n\na1"),
        msg("user", "q2"),
        msg("assistant", "<think>\nr2\n</think>\n\na2"),
    ];
    let e = tokenize_chat(&tpl, tok(), &conv).unwrap_err().to_string();
    assert!(
        e.contains("tokenize_chat_examples") && e.contains("1..=2"),
        "{e}"
    );
    let seqs = tokenize_chat_examples(&tpl, tok(), &conv).unwrap();
    assert_eq!(seqs.len(), 2);
    for (k, (ids, _)) in seqs.iter().enumerate() {
        let text = tpl.render(&conv[..2 * k + 2], false).unwrap();
        assert_eq!(ids, &tok().encode(&text).unwrap(), "sequence {k}");
    }
    assert_eq!(
        unmasked(&seqs[0].0, &seqs[0].1),
        ["<think>\nr1\n</think>\n\na1<|im_end|>"]
    );
    assert_eq!(
        unmasked(&seqs[1].0, &seqs[1].1),
        ["<think>\nr2\n</think>\n\na2<|im_end|>"]
    );
    // The first turn is in the second sequence as the model sees it later, without its
    // reasoning, and masked.
    let second = tok().decode(&seqs[1].0).unwrap();
    assert!(
        second.contains("<|im_start|>assistant\na1<|im_end|>"),
        "{second}"
    );

    // Other templates give the same single sequence either way.
    let smol = template("smollm2");
    assert_eq!(
        tokenize_chat_examples(&smol, tok(), &conv).unwrap(),
        [tokenize_chat(&smol, tok(), &conv).unwrap()]
    );
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn chat_opts(tpl: &ChatTemplate, mask_prompt: Option<bool>) -> DataOptions<'_> {
    DataOptions {
        chat_template: Some(tpl),
        separator: tok().token_to_id("<|endoftext|>").unwrap(),
        mask_prompt,
    }
}

const CHAT_JSONL: &str = r#"{"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}

{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye"}], "id": 3}
"#;

#[test]
fn chat_jsonl_is_rendered_tokenized_and_separated() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "chat.jsonl", CHAT_JSONL);
    let tpl = template("smollm2");
    let opts = chat_opts(&tpl, None);
    let s = read_tokens(&f, tok(), &opts).unwrap();
    let convs = [
        vec![msg("user", "What is 2+2?"), msg("assistant", "4")],
        vec![
            msg("system", "Be brief."),
            msg("user", "Hi"),
            msg("assistant", "Hello"),
            msg("user", "Bye"),
            msg("assistant", "Bye"),
        ],
    ];
    let mut ids = Vec::new();
    let mut prompt = Vec::new();
    for c in &convs {
        let (i, p) = tokenize_chat(&tpl, tok(), c).unwrap();
        ids.extend(i);
        prompt.extend(p);
        ids.push(opts.separator);
        prompt.push(true);
    }
    assert_eq!(s.ids, ids);
    assert_eq!(s.is_prompt, prompt);
    assert_eq!(s.documents, 2);
    assert_eq!(
        unmasked(&s.ids, &s.is_prompt),
        ["4<|im_end|>", "Hello<|im_end|>", "Bye<|im_end|>"]
    );

    // Chat data is masked by default: the targets are the assistant tokens only.
    let n = ids.len();
    let d = Dataset::from_path(&f, tok(), n, &opts).unwrap();
    let (x, y) = d.block(0).unwrap();
    assert_eq!(x, &ids[..]);
    let want: Vec<u32> = (0..n)
        .map(|i| match prompt.get(i + 1) {
            Some(false) => ids[i + 1],
            _ => IGNORE,
        })
        .collect();
    assert_eq!(y, &want[..]);
    assert_eq!(d.stats().predicted, prompt.iter().filter(|&&p| !p).count());

    // mask_prompt = Some(false): every token of the same rendering is a target.
    let all = chat_opts(&tpl, Some(false));
    let s = read_tokens(&f, tok(), &all).unwrap();
    assert_eq!(s.ids, ids);
    let d = Dataset::from_path(&f, tok(), n, &all).unwrap();
    assert_eq!(d.stats().predicted, n - 1);
}

#[test]
fn chat_jsonl_with_an_unstable_template_has_one_sequence_per_turn() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "chat.jsonl", CHAT_JSONL);
    let tpl = template("qwen3");
    let s = read_tokens(&f, tok(), &chat_opts(&tpl, None)).unwrap();
    assert_eq!(s.documents, 2);
    // 1 sequence for the first conversation, 2 for the second, each followed by the separator.
    let sep = tok().token_to_id("<|endoftext|>").unwrap();
    assert_eq!(s.ids.iter().filter(|&&t| t == sep).count(), 3);
    assert_eq!(
        unmasked(&s.ids, &s.is_prompt),
        [
            "<think>\n\n</think>\n\n4<|im_end|>",
            "<think>\n\n</think>\n\nHello<|im_end|>",
            "<think>\n\n</think>\n\nBye<|im_end|>"
        ]
    );
    // Without the mask, each conversation is rendered once.
    let s = read_tokens(&f, tok(), &chat_opts(&tpl, Some(false))).unwrap();
    let text = tok().decode(&s.ids).unwrap();
    assert_eq!(text.matches("Be brief.").count(), 1, "{text}");
}

#[test]
fn chat_jsonl_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let tpl = template("smollm2");
    let f = write(dir.path(), "chat.jsonl", CHAT_JSONL);
    let e = read_tokens(&f, tok(), &DataOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("chat.jsonl")
            && e.contains("is chat data (messages) but the model has no chat_template in tokenizer_config.json; use a model with a chat template or convert the data to {\"prompt\",\"completion\"}"),
        "{e}"
    );

    let cases: [(&str, &[&str]); 7] = [
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n{\"messages\": [{\"role\": \"bot\", \"content\": \"b\"}]}\n",
            &["line 2", "\"bot\"", "unknown role", "system, user, assistant, tool"],
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\"}]}\n",
            &["line 1", "message 2", "no \"content\""],
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n{\"text\": \"b\"}\n",
            &["line 2", "line 1 is chat data", "one format"],
        ),
        (
            "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n",
            &["line 3 is chat data", "line 1 is text or prompt/completion"],
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}\n",
            &["line 1", "message 1", "\"content\"", "not a string"],
        ),
        ("{\"messages\": []}\n", &["line 1", "empty"]),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"text\": \"b\"}\n",
            &["line 1", "\"messages\" and also"],
        ),
    ];
    for (i, (body, words)) in cases.iter().enumerate() {
        let f = write(dir.path(), &format!("bad{i}.jsonl"), body);
        let e = read_tokens(&f, tok(), &chat_opts(&tpl, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("bad{i}.jsonl")), "case {i}: {e}");
        for w in *words {
            assert!(e.contains(w), "case {i}: missing {w:?} in {e}");
        }
    }

    // An exception the template raises names the line.
    let strict = ChatTemplate::new(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}",
        None,
        None,
    )
    .unwrap();
    let f = write(
        dir.path(),
        "sys.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}]}\n",
    );
    let e = read_tokens(&f, tok(), &chat_opts(&strict, None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sys.jsonl") && e.contains("line 2") && e.contains("System role not supported"),
        "{e}"
    );
}
