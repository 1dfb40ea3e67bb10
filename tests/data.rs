//! Data loading, packing, splitting and batch order (`lora_wgpu::data`). No GPU needed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use lora_wgpu::data::{
    epoch_order, read_tokens, DataOptions, Dataset, Sampler, SamplerState, TokenStream,
    BUNDLED_CORPUS, EOT, IGNORE,
};
use lora_wgpu::tokenizer::Tokenizer;

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::gpt2().unwrap())
}

fn stream(ids: &[u32], prompt: &[bool]) -> TokenStream {
    TokenStream {
        ids: ids.to_vec(),
        is_prompt: prompt.to_vec(),
        documents: 1,
    }
}

/// ids 0..n, no prompt.
fn plain(n: u32) -> TokenStream {
    let ids: Vec<u32> = (0..n).collect();
    stream(&ids, &vec![false; n as usize])
}

/// Reading options with the prompt mask forced on or off.
fn mask(on: bool) -> DataOptions<'static> {
    DataOptions {
        mask_prompt: Some(on),
        ..DataOptions::default()
    }
}

fn err_text<T: std::fmt::Debug>(r: lora_wgpu::Result<T>) -> String {
    r.unwrap_err().to_string()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn packing_cuts_blocks_and_places_ignore_last() {
    // 23 tokens, N = 5: four blocks, the last 3 tokens dropped.
    let d = Dataset::from_tokens(&plain(23), Path::new("x"), 5, false).unwrap();
    assert_eq!(d.len(), 4);
    assert_eq!(d.block_size(), 5);
    for k in 0..4u32 {
        let (x, y) = d.block(k as usize).unwrap();
        let base = 5 * k;
        assert_eq!(x, &[base, base + 1, base + 2, base + 3, base + 4]);
        assert_eq!(y, &[base + 1, base + 2, base + 3, base + 4, IGNORE]);
    }
    assert!(d.block(4).is_none());
    let s = d.stats();
    assert_eq!(s.source_tokens, 23);
    assert_eq!(s.blocks, 4);
    assert_eq!(s.tokens, 20);
    assert_eq!(s.predicted, 16, "N - 1 predictions per block");
    assert_eq!(s.dropped_tokens, 3);
    assert_eq!(
        s.to_string(),
        "4 blocks (20 tokens, 16 predicted) from 1 document(s) of 23 tokens; 3 tokens dropped"
    );
    // Exactly one block: nothing dropped.
    let one = Dataset::from_tokens(&plain(5), Path::new("x"), 5, false).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one.stats().dropped_tokens, 0);
}

#[test]
fn mask_prompt_ignores_targets_that_are_prompt_tokens() {
    // Two examples: prompt [10 11 12] completion [20 21] EOT, prompt [13 14] completion [22] EOT.
    let ids = [10, 11, 12, 20, 21, EOT, 13, 14, 22, EOT];
    let p = [
        true, true, true, false, false, false, true, true, false, false,
    ];
    let masked = Dataset::from_tokens(&stream(&ids, &p), Path::new("x"), 5, true).unwrap();
    assert_eq!(masked.len(), 2);
    let (x0, y0) = masked.block(0).unwrap();
    assert_eq!(x0, &[10, 11, 12, 20, 21]);
    // Target of position i is token i+1: 11 and 12 are prompt (ignored), 20 and 21 are not.
    assert_eq!(y0, &[IGNORE, IGNORE, 20, 21, IGNORE]);
    let (x1, y1) = masked.block(1).unwrap();
    assert_eq!(x1, &[EOT, 13, 14, 22, EOT]);
    // 13 and 14 are prompt; 22 and EOT carry loss.
    assert_eq!(y1, &[IGNORE, IGNORE, 22, EOT, IGNORE]);
    assert_eq!(masked.stats().predicted, 4);

    let unmasked = Dataset::from_tokens(&stream(&ids, &p), Path::new("x"), 5, false).unwrap();
    assert_eq!(unmasked.block(0).unwrap().1, &[11, 12, 20, 21, IGNORE]);
    assert_eq!(unmasked.stats().predicted, 8);
}

#[test]
fn blocks_with_nothing_to_predict_are_dropped() {
    // Block 0 is all prompt (nothing to predict with the mask), block 1 has a completion.
    let ids = [1, 2, 3, 4, 5, 6, 7, 8];
    let p = [true, true, true, true, true, true, false, false];
    let d = Dataset::from_tokens(&stream(&ids, &p), Path::new("x"), 4, true).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d.block(0).unwrap(),
        (&[5, 6, 7, 8][..], &[IGNORE, 7, 8, IGNORE][..])
    );
    assert_eq!(d.stats().dropped_tokens, 4);
    // Only prompt: an error that says what to do.
    let all = [true; 8];
    let e = err_text(Dataset::from_tokens(
        &stream(&ids, &all),
        Path::new("p.jsonl"),
        4,
        true,
    ));
    assert!(e.contains("p.jsonl") && e.contains("--mask-prompt"), "{e}");
}

#[test]
fn bad_block_sizes_are_errors() {
    for n in [0, 1] {
        let e = err_text(Dataset::from_tokens(&plain(10), Path::new("x"), n, false));
        assert!(e.contains("block size") && e.contains("at least 2"), "{e}");
    }
    let e = err_text(Dataset::from_text("hello", "t", tok(), 0));
    assert!(e.contains("block size"), "{e}");
}

#[test]
fn too_short_data_says_how_many_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "short.txt", b"Hello world");
    let e = err_text(Dataset::from_path(&f, tok(), 64, &mask(false)));
    assert!(
        e.contains("short.txt") && e.contains("2 tokens") && e.contains("64"),
        "{e}"
    );
}

#[test]
fn text_file_tokenizes_without_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let text = "The quick brown fox jumps over the lazy dog.\nIt was the best of times.";
    let f = write(dir.path(), "a.txt", text.as_bytes());
    let s = read_tokens(&f, tok(), &DataOptions::default()).unwrap();
    assert_eq!(s.ids, tok().encode(text).unwrap());
    assert!(!s.ids.contains(&EOT));
    assert_eq!(s.documents, 1);
    assert!(s.is_prompt.iter().all(|&p| !p));
    // A UTF-8 byte-order mark is not part of the text.
    let bom = write(
        dir.path(),
        "bom.txt",
        &[b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat(),
    );
    assert_eq!(
        read_tokens(&bom, tok(), &DataOptions::default())
            .unwrap()
            .ids,
        s.ids
    );
}

#[test]
fn directory_is_read_in_name_order_joined_by_eot() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.txt", b"second document");
    write(dir.path(), "a.txt", b"first document");
    write(dir.path(), "10.txt", b"zeroth by byte order");
    write(dir.path(), "notes.md", b"not training data");
    write(dir.path(), "empty.txt", b"");
    std::fs::create_dir(dir.path().join("sub.txt")).unwrap(); // a directory, not a file
    let s = read_tokens(dir.path(), tok(), &DataOptions::default()).unwrap();
    let enc = |t: &str| tok().encode(t).unwrap();
    let mut want = enc("zeroth by byte order");
    want.push(EOT);
    want.extend(enc("first document"));
    want.push(EOT);
    want.extend(enc("second document"));
    assert_eq!(s.ids, want);
    assert_eq!(s.documents, 3);
}

#[test]
fn directory_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = err_text(read_tokens(dir.path(), tok(), &DataOptions::default()));
    assert!(e.contains("empty"), "{e}");
    write(dir.path(), "readme.md", b"x");
    let e = err_text(read_tokens(dir.path(), tok(), &DataOptions::default()));
    assert!(
        e.contains("no .txt files") && e.contains("readme.md"),
        "{e}"
    );
    write(dir.path(), "blank.txt", b"");
    let e = err_text(read_tokens(dir.path(), tok(), &DataOptions::default()));
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn missing_and_empty_paths_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.txt");
    let e = err_text(read_tokens(&missing, tok(), &DataOptions::default()));
    assert!(e.contains("nope.txt") && e.contains("not found"), "{e}");
    let empty = write(dir.path(), "empty.txt", b"");
    let e = err_text(read_tokens(&empty, tok(), &DataOptions::default()));
    assert!(e.contains("empty.txt") && e.contains("empty"), "{e}");
}

#[test]
fn non_utf8_text_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "latin1.txt", b"hello\nna\xefve caf\xe9\n");
    let e = err_text(read_tokens(&f, tok(), &DataOptions::default()));
    assert!(
        e.contains("latin1.txt")
            && e.contains("UTF-8")
            && e.contains("line 2")
            && e.contains("byte offset 8"),
        "{e}"
    );
    // In a directory, the message names the file.
    let sub = dir.path().join("docs");
    std::fs::create_dir(&sub).unwrap();
    write(&sub, "ok.txt", b"fine");
    write(&sub, "bad.txt", b"\xff");
    let e = err_text(read_tokens(&sub, tok(), &DataOptions::default()));
    assert!(e.contains("bad.txt") && e.contains("line 1"), "{e}");
}

#[test]
fn jsonl_examples_are_prompt_completion_eot() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "train.jsonl",
        br#"{"prompt": "Q: 2+2?", "completion": " A: 4"}

{"text": "plain text line", "id": 7}
{"prompt": "Hi", "completion": " there"}
"#,
    );
    let s = read_tokens(&f, tok(), &DataOptions::default()).unwrap();
    let enc = |t: &str| tok().encode(t).unwrap();
    let mut ids = Vec::new();
    let mut prompt = Vec::new();
    for (p, c) in [
        (Some("Q: 2+2?"), " A: 4"),
        (None, "plain text line"),
        (Some("Hi"), " there"),
    ] {
        if let Some(p) = p {
            ids.extend(enc(p));
            prompt.resize(ids.len(), true);
        }
        ids.extend(enc(c));
        ids.push(EOT);
        prompt.resize(ids.len(), false);
    }
    assert_eq!(s.ids, ids);
    assert_eq!(s.is_prompt, prompt);
    assert_eq!(s.documents, 3);

    // Through the dataset, with the mask: no target is a prompt token.
    let n = ids.len();
    let d = Dataset::from_path(&f, tok(), n, &mask(true)).unwrap();
    let (x, y) = d.block(0).unwrap();
    assert_eq!(x, &ids[..]);
    for i in 0..n - 1 {
        let want = if prompt[i + 1] { IGNORE } else { ids[i + 1] };
        assert_eq!(y[i], want, "target {i}");
    }
    assert_eq!(y[n - 1], IGNORE);
}

#[test]
fn jsonl_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[u8], &str, &[&str]); 5] = [
        (
            b"{\"text\": \"ok\"}\n\n{\"text\": \"unterminated}\n",
            "line 3",
            &["JSON"],
        ),
        (
            b"{\"text\": \"ok\"}\n{\"prompt\": \"p\"}\n",
            "line 2",
            &["completion"],
        ),
        (b"{\"body\": \"x\"}\n", "line 1", &["text"]),
        (b"{\"text\": 5}\n", "line 1", &["string"]),
        (
            b"{\"text\": \"a\"}\n{\"text\": \"b\", \"prompt\": \"c\", \"completion\": \"d\"}\n",
            "line 2",
            &["both"],
        ),
    ];
    for (i, (body, line, words)) in cases.iter().enumerate() {
        let f = write(dir.path(), &format!("bad{i}.jsonl"), body);
        let e = err_text(read_tokens(&f, tok(), &DataOptions::default()));
        assert!(
            e.contains(&format!("bad{i}.jsonl")) && e.contains(line),
            "case {i}: {e}"
        );
        assert!(
            !e.contains("at line"),
            "case {i}: serde's own line number: {e}"
        );
        for w in *words {
            assert!(e.contains(w), "case {i}: {e}");
        }
    }
    let empty = write(dir.path(), "blank.jsonl", b"\n\n");
    let e = err_text(read_tokens(&empty, tok(), &DataOptions::default()));
    assert!(e.contains("no examples"), "{e}");
}

/// A dataset of `n` blocks of 4 whose block k starts with token 100·k, so blocks are told
/// apart by content.
fn numbered(n: u32) -> Dataset {
    let ids: Vec<u32> = (0..n).flat_map(|k| [100 * k, 1, 2, 3]).collect();
    let len = ids.len();
    Dataset::from_tokens(&stream(&ids, &vec![false; len]), Path::new("x"), 4, false).unwrap()
}

fn first_tokens(d: &Dataset) -> Vec<u32> {
    (0..d.len()).map(|i| d.block(i).unwrap().0[0]).collect()
}

#[test]
fn validation_split_is_deterministic_and_disjoint() {
    let d = numbered(50);
    let (train, val) = d.split_validation(0.1, 42).unwrap();
    assert_eq!(val.len(), 5);
    assert_eq!(train.len(), 45);
    let (t, v) = (first_tokens(&train), first_tokens(&val));
    let ts: BTreeSet<_> = t.iter().copied().collect();
    let vs: BTreeSet<_> = v.iter().copied().collect();
    assert!(ts.is_disjoint(&vs), "a block is in both parts");
    let all: BTreeSet<_> = ts.union(&vs).copied().collect();
    assert_eq!(all, first_tokens(&d).into_iter().collect());
    // Original order kept within each part.
    assert!(t.windows(2).all(|w| w[0] < w[1]) && v.windows(2).all(|w| w[0] < w[1]));
    // Same seed, same split; another seed, another split.
    let (train2, val2) = d.split_validation(0.1, 42).unwrap();
    assert_eq!((train2, val2.clone()), (train.clone(), val.clone()));
    let (_, val3) = d.split_validation(0.1, 43).unwrap();
    assert_ne!(first_tokens(&val3), v);
    // The held-out blocks are not simply the last ones.
    assert_ne!(v, (45..50).map(|k| 100 * k).collect::<Vec<_>>());
    // Counts follow the parts.
    assert_eq!(train.stats().blocks, 45);
    assert_eq!(val.stats().predicted, 5 * 3);
}

#[test]
fn validation_split_errors() {
    let d = numbered(3);
    for f in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        let e = err_text(d.split_validation(f, 0));
        assert!(e.contains("(0, 1)"), "{f}: {e}");
    }
    let one = numbered(1);
    let e = err_text(one.split_validation(0.5, 0));
    assert!(e.contains("empty") && e.contains("1 block"), "{e}");
    // 0.9 of 3 blocks rounds up to all of them.
    let e = err_text(d.split_validation(0.9, 0));
    assert!(e.contains("training set empty"), "{e}");
    // Any positive fraction keeps at least one validation block.
    assert_eq!(d.split_validation(0.01, 0).unwrap().1.len(), 1);
}

fn take(s: &mut Sampler, d: &Dataset, k: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    (0..k)
        .map(|_| {
            let b = s.next_batch(d).unwrap();
            (b.inputs, b.targets)
        })
        .collect()
}

#[test]
fn sampler_is_reproducible_from_the_seed() {
    let d = numbered(13);
    let a = take(&mut Sampler::new(d.len(), 3, 7).unwrap(), &d, 20);
    let b = take(&mut Sampler::new(d.len(), 3, 7).unwrap(), &d, 20);
    assert_eq!(a, b);
    let c = take(&mut Sampler::new(d.len(), 3, 8).unwrap(), &d, 20);
    assert_ne!(a, c, "another seed, another order");
    for (x, y) in &a {
        assert_eq!(x.len(), 3 * 4);
        assert_eq!(y.len(), 3 * 4);
    }
    // Batches are the dataset's blocks.
    let mut s = Sampler::new(d.len(), 3, 7).unwrap();
    let batch = s.next_batch(&d).unwrap();
    for (j, &blk) in batch.blocks.iter().enumerate() {
        let (x, y) = d.block(blk).unwrap();
        assert_eq!(&batch.inputs[j * 4..(j + 1) * 4], x);
        assert_eq!(&batch.targets[j * 4..(j + 1) * 4], y);
    }
    assert_eq!(batch.predicted, 3 * 3);
    assert_eq!(&batch.blocks[..], &epoch_order(7, 0, 13)[..3]);
}

#[test]
fn resumed_sampler_continues_with_the_same_batches() {
    let d = numbered(11);
    for stop in [0, 1, 3, 4, 9] {
        let mut s = Sampler::new(d.len(), 4, 99).unwrap();
        take(&mut s, &d, stop);
        let saved = serde_json::to_string(&s.state()).unwrap();
        let cont = take(&mut s, &d, 12);
        let state: SamplerState = serde_json::from_str(&saved).unwrap();
        let mut r = Sampler::resume(d.len(), 4, 99, state).unwrap();
        assert_eq!(take(&mut r, &d, 12), cont, "resumed after {stop} steps");
        assert_eq!(r.state(), s.state());
    }
    // A position from other data is an error.
    let e = err_text(Sampler::resume(
        d.len(),
        4,
        99,
        SamplerState {
            epoch: 0,
            index: 11,
        },
    ));
    assert!(e.contains("11 blocks"), "{e}");
    // So is a dataset of another size.
    let mut s = Sampler::new(d.len(), 4, 99).unwrap();
    assert!(s.next_batch(&numbered(5)).is_err());
    assert_eq!(
        s.state(),
        SamplerState::default(),
        "a failed call does not advance"
    );
}

#[test]
fn every_epoch_visits_every_block_once_and_batches_wrap() {
    let (n, b) = (10usize, 3usize);
    let d = numbered(n as u32);
    let mut s = Sampler::new(n, b, 5).unwrap();
    assert_eq!(s.steps_per_epoch(), 4);
    assert_eq!(s.steps_for_epochs(3), 10);
    let stream: Vec<usize> = (0..10).flat_map(|_| s.next_indices()).collect();
    assert_eq!(stream.len(), 30);
    assert_eq!(s.state(), SamplerState { epoch: 3, index: 0 });
    let mut orders = Vec::new();
    for e in 0..3 {
        let epoch = &stream[e * n..(e + 1) * n];
        let mut sorted = epoch.to_vec();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..n).collect::<Vec<_>>(),
            "epoch {e} is a permutation"
        );
        assert_eq!(epoch, &epoch_order(5, e as u64, n)[..]);
        orders.push(epoch.to_vec());
    }
    assert!(
        orders[0] != orders[1] || orders[1] != orders[2],
        "epochs reshuffle"
    );
    // The 4th batch straddles epochs 0 and 1: one block from the end of epoch 0, two from
    // the start of epoch 1.
    let mut s = Sampler::new(n, b, 5).unwrap();
    for _ in 0..3 {
        s.next_indices();
    }
    assert_eq!(s.state(), SamplerState { epoch: 0, index: 9 });
    let straddle = s.next_indices();
    assert_eq!(straddle[0], epoch_order(5, 0, n)[9]);
    assert_eq!(&straddle[1..], &epoch_order(5, 1, n)[..2]);
    assert_eq!(s.state(), SamplerState { epoch: 1, index: 2 });
    // A dataset smaller than a batch still fills it.
    let mut tiny = Sampler::new(2, 5, 0).unwrap();
    let batch = tiny.next_batch(&numbered(2)).unwrap();
    assert_eq!(batch.blocks.len(), 5);
    assert_eq!(batch.inputs.len(), 5 * 4);
    assert!(Sampler::new(0, 2, 0).is_err());
    assert!(Sampler::new(3, 0, 0).is_err());
    let _ = d;
}

#[test]
fn eval_batches_cover_every_block_once_with_padding() {
    let d = numbered(7);
    let batches = d.eval_batches(3).unwrap();
    assert_eq!(batches.len(), 3);
    let blocks: Vec<usize> = batches.iter().flat_map(|b| b.blocks.clone()).collect();
    assert_eq!(blocks, (0..7).collect::<Vec<_>>());
    let last = &batches[2];
    assert_eq!(last.inputs.len(), 3 * 4);
    assert!(
        last.targets[4..].iter().all(|&t| t == IGNORE),
        "padding predicts nothing"
    );
    let predicted: usize = batches.iter().map(|b| b.predicted).sum();
    assert_eq!(predicted, d.stats().predicted);
    assert!(d.eval_batches(0).is_err());
}

#[test]
fn bundled_corpus_is_real_english_text() {
    assert!(BUNDLED_CORPUS.len() > 100_000);
    assert!(BUNDLED_CORPUS.contains("Alice was beginning to get very tired"));
    let d = Dataset::from_text(BUNDLED_CORPUS, "corpus", tok(), 128).unwrap();
    let s = d.stats();
    assert!(s.source_tokens > 30_000, "{s:?}");
    assert_eq!(s.blocks, s.source_tokens / 128);
    assert_eq!(s.predicted, s.blocks * 127);
}

#[test]
fn separator_is_the_callers_end_of_sequence_id() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    write(&docs, "a.txt", b"one");
    write(&docs, "b.txt", b"two");
    let jsonl = write(
        dir.path(),
        "t.jsonl",
        b"{\"text\": \"one\"}\n{\"prompt\": \"p\", \"completion\": \"c\"}\n",
    );
    let opts = DataOptions {
        separator: 7,
        ..DataOptions::default()
    };
    let enc = |t: &str| tok().encode(t).unwrap();
    let s = read_tokens(&docs, tok(), &opts).unwrap();
    assert_eq!(s.ids, [enc("one"), vec![7], enc("two")].concat());
    let s = read_tokens(&jsonl, tok(), &opts).unwrap();
    assert_eq!(
        s.ids,
        [enc("one"), vec![7], enc("p"), enc("c"), vec![7]].concat()
    );
    assert!(!s.ids.contains(&EOT));
    // The default is GPT-2's <|endoftext|>.
    let s = read_tokens(&jsonl, tok(), &DataOptions::default()).unwrap();
    assert_eq!(s.ids.iter().filter(|&&t| t == EOT).count(), 2);
}
