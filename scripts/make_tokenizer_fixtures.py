#!/usr/bin/env python3
"""Write the Llama-family tokenizer fixtures: two tokenizer.json files of the kinds Llama-family
checkpoints ship, and what transformers' PreTrainedTokenizerFast encodes and decodes with them.

    pip install transformers tokenizers tiktoken sentencepiece protobuf
    pip install --no-deps llama-models==0.3.0    # only for its llama3/tokenizer.model
    python scripts/make_tokenizer_fixtures.py     # writes tests/fixtures/tokenizers/

tests/fixtures/tokenizers/bytelevel/
  tokenizer.json  Llama 3's byte-level BPE (the tiktoken-format tokenizer.model that Meta's
                  llama-models package ships, 128,000 ranks), cut to its first BYTELEVEL_RANKS
                  (20,000) ranks so the file stays small (0.84 MB; the full one is ~9 MB). The cut
                  is consistent: a tiktoken rank list is a BPE merge order, every token's two halves
                  rank below it (asserted), so the first N ranks (which start with the 256 single
                  bytes) are a complete byte-level BPE of their own. transformers'
                  TikTokenConverter turns them into tokenizer.json (vocab + merges, Split
                  pre-tokenizer with Llama 3's regex, then ByteLevel without its own regex;
                  ByteLevel decoder; ignore_merges), and the 256 special tokens are added at their
                  real ids 128000..128255 (<|begin_of_text|> 128000, <|end_of_text|> 128001,
                  <|start_header_id|> 128006, <|end_header_id|> 128007, <|eot_id|> 128009, ...),
                  so the id space has a hole between 20,000 and 128,000. They are in "added_tokens"
                  and also in model.vocab at those ids: tokenizers renumbers an added token that
                  the model's vocabulary lacks to the next free id, whatever its "id" says. The
                  post-processor prepends <|begin_of_text|> as Llama 3's tokenizer.json does (only
                  with add_special_tokens=True; the cases are encoded without it). Merges are
                  spelled "a b" as in Llama 3's published file. Every case is checked against
                  tiktoken itself over the same cut ranks (10 of the 17 also equal the full
                  128k vocabulary's ids).
  NOTICE          the vocabulary's licence (Llama 3 Community License Agreement).
tests/fixtures/tokenizers/sentencepiece/
  tokenizer.json  a SentencePiece BPE as Llama 2 / TinyLlama ship it: trained here with the
                  sentencepiece package on TRAINING_TEXT (written below, so no licence question)
                  with Llama 2's trainer settings (model_type bpe, byte_fallback, split_digits,
                  identity normalisation, dummy prefix, extra whitespace kept, unk/bos/eos = 0/1/2,
                  vocabulary SPM_VOCAB = 1000), in the legacy form of Llama 2's and TinyLlama's
                  tokenizer.json: normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer,
                  BPE with byte_fallback, fuse_unk and unk_token <unk>, merges spelled "a b",
                  decoder Replace("▁", " ") + ByteFallback + Fuse + Strip(1 leading space),
                  post-processor prepending <s>. Vocabulary and merges are transformers' own
                  conversion (LlamaTokenizer.from_pretrained on a directory holding only
                  tokenizer.model); transformers 5 writes the Metaspace form below and its
                  LlamaConverter fails on BPE models, so the legacy normalizer is set here as
                  LlamaConverter's code describes it. Every case without <s>/</s> in its text
                  (sentencepiece does not split those out of text) is checked against
                  sentencepiece itself, ids and decoded text.
  tokenizer.model the trained sentencepiece model (for reference; 15 KB).
tests/fixtures/tokenizers/sentencepiece_metaspace/
  tokenizer.json  the same vocabulary and merges as transformers 5 writes them (legacy=False): no
                  normalizer, a Metaspace pre-tokenizer ("▁", prepend_scheme "first", split
                  false), merges as ["a", "b"] pairs. It differs from the legacy form after special
                  tokens ("<s>hi": legacy gives "▁hi", this gives "hi") and on leading spaces,
                  where it also differs from sentencepiece (Metaspace prepends no "▁" to text that
                  already starts with one: " one leading space" loses its space on decode).
tests/fixtures/tokenizers/generated_by.txt   the versions used.

Each directory's cases.json: [{"text", "ids", "decoded"}] with
ids = tokenizer.encode(text, add_special_tokens=False) and decoded = tokenizer.decode(ids), both by
PreTrainedTokenizerFast over that tokenizer.json, for ASCII, Unicode (café, 日本語, emoji 🙂; on
the sentencepiece side these fall back to bytes), digit runs (Llama 3 splits digits in groups of
3, Llama 2 into single digits), whitespace runs, special tokens inside text, leading spaces and
the empty string.

Deterministic: the cut and the conversion are pure functions of tokenizer.model; sentencepiece
trains on one thread without shuffling.
"""
import base64
import hashlib
import importlib.util
import io
import json
import pathlib
import shutil

import sentencepiece as spm
import tiktoken
import tokenizers
import transformers
from tokenizers import Tokenizer, normalizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tokenizers"
BYTELEVEL_RANKS = 20000
SPM_VOCAB = 1000
LLAMA3_MODEL_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
GENERATED_BY = (f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
                f"tiktoken {tiktoken.__version__}, sentencepiece {spm.__version__}")

# Llama 3's pre-tokenizer regex and special tokens (llama_models/llama3/tokenizer.py).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
]
LLAMA3_SPECIALS += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_SPECIALS))]
LLAMA3_BASE = 128000

COMMON_TEXTS = [
    "Hello world",
    "LoRA fine-tunes Llama on any GPU, through wgpu.",
    "The quick brown fox jumps over the lazy dog's back; it's 3.14 o'clock, isn't it?",
    "Numbers: 1234567 and 42 and 1000000 and 3.14159",
    "Unicode: café, naïve, Ærøskøbing, 日本語, emoji 🙂 and 👍🏽",
    "a  b   c\n\n\t x",
    "   leading spaces",
    " one leading space",
    "trailing spaces   ",
    "line one\nline two\r\nline three\n",
    "tabs\tand\t\tmore tabs",
    "MixedCASE words, SHOUTING and camelCaseIdentifiers_with_underscores",
    "def f(x):\n    return x ** 2  # squares\n",
    "",
]
BYTELEVEL_TEXTS = COMMON_TEXTS + [
    "<|begin_of_text|>Hi<|eot_id|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
    "text then <|end_of_text|> more text",
]
SPM_TEXTS = COMMON_TEXTS + [
    "<s>hi</s>",
    "<s> hi </s>",
    "before <s>inside</s> after",
]

# SentencePiece training text, written for these fixtures.
TRAINING_TEXT = """\
The model reads a sentence, one token at a time, and guesses the next one.
A tokenizer turns text into numbers and numbers back into text.
Low-rank adapters train two small matrices instead of one large one.
The graphics card runs the same small program on thousands of numbers at once.
When the loss goes down, the model has learned something about the data.
Every layer normalises its input, attends to the earlier tokens, and mixes the channels.
Rotary position embeddings turn each pair of channels by an angle that grows with the position.
Grouped-query attention shares one key and value head between several query heads.
She walked to the market in the morning and bought bread, cheese, apples and a bottle of milk.
He said that the weather would be better tomorrow, but nobody believed him.
The river runs through the old town, under seven bridges, and into the sea.
Children were playing in the park while their parents talked on the benches.
It was a quiet evening; the lights of the city came on one by one.
Please write the answer in one short sentence, and then explain your reasoning.
What is the capital of France? The capital of France is Paris.
How many legs does a spider have? A spider has eight legs.
The train leaves at 7:45 in the morning and arrives at 10:30.
In 2024 the team shipped 3 releases, fixed 128 bugs and wrote 56 new tests.
The recipe needs 250 grams of flour, 2 eggs, 100 millilitres of milk and a pinch of salt.
Learning rate, weight decay, warm-up steps and gradient clipping are the usual settings.
The optimizer keeps two running averages for every parameter it updates.
Tests compare the output of the new program with the output of a trusted reference.
If the numbers differ by more than the tolerance, the test fails and prints both values.
Small models are fast to train, easy to check, and good for finding mistakes.
Large models know more, but they need more memory, more time and more care.
The cat sat on the mat, and the dog slept in front of the warm fire.
Once upon a time there was a little house at the edge of a great forest.
The forest was dark and deep, and the wind sang in the tall trees at night.
They built a boat from old wood and sailed across the lake to the island.
On the island they found a garden full of flowers, birds and strange green fruit.
Reading, writing and arithmetic are taught in every school of the country.
The library opens at nine and closes at six, except on Sundays.
Music, painting and poetry give people a way to say what words alone cannot.
Science asks questions, makes guesses, and tests them against the world.
The experiment was repeated three times, and each time the result was the same.
Good software is simple, clear, tested, and easy to change.
Bad software is clever, hidden, untested, and hard to change.
The function takes a list of numbers and returns their sum and their mean.
Write the file, close it, then read it back and compare the contents.
Errors should say what went wrong, where it went wrong, and what to do next.
"""


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def save(tok, path, string_merges):
    """tok as tokenizer.json; string_merges: merges spelled "a b" as in Llama 2's and Llama 3's
    published files, instead of the ["a", "b"] pairs tokenizers writes now (no piece of either
    vocabulary has a space, so both spellings say the same)."""
    j = json.loads(tok.to_str())
    if string_merges:
        assert not any(" " in a or " " in b for a, b in j["model"]["merges"])
        j["model"]["merges"] = [f"{a} {b}" for a, b in j["model"]["merges"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(j, ensure_ascii=False, separators=(",", ":")))


def cases_for(tokenizer_json, texts):
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json))
    cases = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False)
        cases.append({"text": t, "ids": ids, "decoded": tok.decode(ids)})
    return tok, cases


# ---------------------------------------------------------------- byte-level BPE (Llama 3)

def llama3_tokenizer_model():
    spec = importlib.util.find_spec("llama_models")
    if spec is None:
        raise SystemExit("pip install --no-deps llama-models==0.3.0 (for llama_models/llama3/tokenizer.model)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "llama3" / "tokenizer.model"
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == LLAMA3_MODEL_SHA256, f"{path}: not the expected file"
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    assert sorted(ranks.values()) == list(range(len(ranks))) == list(range(LLAMA3_BASE))
    return ranks


class CutTikTokenConverter(TikTokenConverter):
    """TikTokenConverter over an in-memory rank table (no tiktoken file cache involved)."""

    def __init__(self, ranks, **kw):
        super().__init__(vocab_file="<in memory>", **kw)
        self.ranks = ranks

    def load_tiktoken_bpe(self, _):
        return self.ranks


def make_bytelevel():
    out = OUT / "bytelevel"
    full = llama3_tokenizer_model()
    ranks = {t: r for t, r in full.items() if r < BYTELEVEL_RANKS}
    assert all(len(t) == 1 for t, r in ranks.items() if r < 256) and len({t for t in ranks if len(t) == 1}) == 256
    # Consistency of the cut: every kept multi-byte token splits into two kept tokens ranked below it.
    for t, r in ranks.items():
        assert len(t) == 1 or any(ranks.get(t[:i], r) < r and ranks.get(t[i:], r) < r for i in range(1, len(t))), t

    tok = CutTikTokenConverter(ranks, pattern=LLAMA3_PATTERN).converted()  # no specials: added below
    j = json.loads(tok.to_str())
    assert j["model"]["type"] == "BPE" and len(j["model"]["vocab"]) == BYTELEVEL_RANKS
    assert j["model"]["ignore_merges"] and not j["model"]["byte_fallback"]
    # tokenizers gives an added token that is not in the model's vocabulary the next free id
    # (vocabulary size + i), whatever "id" says: so the specials also go into the BPE vocabulary at
    # their real ids (no merge can make them: the regex never leaves "<|...|>" in one piece).
    j["model"]["vocab"].update({s: LLAMA3_BASE + i for i, s in enumerate(LLAMA3_SPECIALS)})
    j["added_tokens"] = [
        {"id": LLAMA3_BASE + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, s in enumerate(LLAMA3_SPECIALS)
    ]
    bos = "<|begin_of_text|>"
    tok = Tokenizer.from_str(json.dumps(j))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, LLAMA3_BASE)]),
    ])
    save(tok, out / "tokenizer.json", string_merges=True)

    hf, cases = cases_for(out / "tokenizer.json", BYTELEVEL_TEXTS)
    specials = {s: LLAMA3_BASE + i for i, s in enumerate(LLAMA3_SPECIALS)}
    assert hf.convert_tokens_to_ids("<|eot_id|>") == 128009 and hf.convert_tokens_to_ids("<|start_header_id|>") == 128006
    assert hf.encode("Hi") == [LLAMA3_BASE] + hf.encode("Hi", add_special_tokens=False)
    ref = tiktoken.Encoding(name="llama3_cut", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    full_enc = tiktoken.Encoding(name="llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=full, special_tokens=specials)
    same_as_full = 0
    for c in cases:
        want = ref.encode(c["text"], allowed_special="all")
        assert c["ids"] == want, f"bytelevel {c['text']!r}: transformers {c['ids']} vs tiktoken {want}"
        assert c["decoded"] == c["text"] == ref.decode(want), c
        same_as_full += c["ids"] == full_enc.encode(c["text"], allowed_special="all")
    assert hf.encode("1234567", add_special_tokens=False) == ref.encode("1234567")
    assert [hf.decode([i]) for i in hf.encode("1234567", add_special_tokens=False)] == ["123", "456", "7"]
    write(out / "cases.json", cases)
    (out / "NOTICE").write_text(BYTELEVEL_NOTICE)
    size = (out / "tokenizer.json").stat().st_size
    print(f"wrote {out}: {BYTELEVEL_RANKS} ranks + {len(LLAMA3_SPECIALS)} specials, "
          f"{len(j['model']['merges'])} merges, {size / 1e6:.2f} MB; {len(cases)} cases match tiktoken "
          f"({same_as_full} also match the full 128k vocabulary)")


BYTELEVEL_NOTICE = f"""\
tokenizer.json here is derived from the Llama 3 tokenizer (llama_models/llama3/tokenizer.model in
Meta's llama-models 0.3.0 package, sha256 {LLAMA3_MODEL_SHA256}):
its first {BYTELEVEL_RANKS} BPE ranks and its 256 special tokens, converted to the tokenizer.json
format by scripts/make_tokenizer_fixtures.py. It is a test fixture: no model weights are included.

Llama 3 is licensed under the Llama 3 Community License, Copyright © Meta Platforms, Inc. All
Rights Reserved. The vocabulary is used and redistributed under the terms of the Llama 3 Community
License Agreement (the LICENSE file of models/llama3 in Meta's llama-models repository) and its
Acceptable Use Policy (USE_POLICY.md beside it), which anyone redistributing this file must follow.

Built with Meta Llama 3.
"""


# ---------------------------------------------------------------- SentencePiece BPE (Llama 2)

def train_spm():
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT.splitlines()), model_writer=model,
        model_type="bpe", vocab_size=SPM_VOCAB, byte_fallback=True, split_digits=True,
        character_coverage=0.99995, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, max_sentencepiece_length=16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def make_sentencepiece():
    blob = train_spm()
    sp = spm.SentencePieceProcessor(model_proto=blob)
    out = OUT / "sentencepiece"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(blob)
    # transformers 5 converts a tokenizer.model when a directory has no tokenizer.json; it writes
    # the Metaspace form. (LlamaConverter's BPE path fails in this version; its legacy normalizer
    # is rebuilt below exactly as its code describes it.)
    native = transformers.LlamaTokenizer.from_pretrained(out, legacy=False).backend_tokenizer
    j = json.loads(native.to_str())
    assert j["normalizer"] is None and j["pre_tokenizer"] == {
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}, j["pre_tokenizer"]
    assert j["model"]["type"] == "BPE" and j["model"]["byte_fallback"] and len(j["model"]["vocab"]) == sp.get_piece_size()
    # tokenizers writes no unk_token for this BPE; Llama 2's names <unk> (byte fallback leaves it unused).
    j["model"]["unk_token"] = "<unk>"
    native = Tokenizer.from_str(json.dumps(j))
    legacy = Tokenizer.from_str(native.to_str())
    legacy.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    legacy.pre_tokenizer = None

    bos, eos = "<s>", "</s>"
    for name, tok, string_merges in [("sentencepiece", legacy, True), ("sentencepiece_metaspace", native, False)]:
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, 1)])
        save(tok, d / "tokenizer.json", string_merges)
        hf, cases = cases_for(d / "tokenizer.json", SPM_TEXTS)
        assert [hf.convert_tokens_to_ids(t) for t in ("<unk>", bos, eos)] == [0, 1, 2]
        assert hf.encode("hi") == [1] + hf.encode("hi", add_special_tokens=False)
        differ = []
        for c in cases:
            if bos in c["text"] or eos in c["text"]:
                continue  # sentencepiece does not split control tokens out of text
            want = sp.encode(c["text"])
            if c["ids"] != want or c["decoded"] != sp.decode(want):
                differ.append(c["text"])
        write(d / "cases.json", cases)
        if name == "sentencepiece":
            assert not differ, f"{name}: transformers and sentencepiece differ on {differ}"
        print(f"wrote {d}: vocabulary {sp.get_piece_size()}, {len(cases)} cases"
              + (f"; differs from sentencepiece (leading spaces) on {differ}" if differ else
                 "; all match sentencepiece"))


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    make_bytelevel()
    make_sentencepiece()
    (OUT / "generated_by.txt").write_text(GENERATED_BY + "; scripts/make_tokenizer_fixtures.py\n")
