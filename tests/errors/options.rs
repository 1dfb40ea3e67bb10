//! Bad options: hyperparameters out of range, unusable training data, --out problems.

use crate::support::{fails, run, train_args, words, Scratch};

/// LoRA and training hyperparameters outside their ranges. LoRA values are checked by `info`
/// (no GPU); the others by `train`, which must not create --out.
#[test]
fn bad_hyperparameters_are_clear_errors() {
    let s = Scratch::new();
    let model = s.s("model");
    // The fixture has n_embd 48, so min(d_in, d_out) = 48 for every linear layer.
    for (flag, value, expect) in [
        ("--rank", "0", &["invalid rank = 0", "1..=48"][..]),
        ("--rank", "49", &["invalid rank = 49", "min(d_in, d_out)"]),
        ("--alpha", "0", &["invalid alpha = 0", "> 0"]),
        ("--alpha", "-2", &["invalid alpha = -2", "> 0"]),
        ("--alpha", "NaN", &["alpha", "> 0"]),
        ("--dropout", "1", &["invalid dropout = 1", "[0, 1)"]),
        ("--dropout", "-0.1", &["invalid dropout = -0.1", "[0, 1)"]),
        ("--targets", "q_proj", &["q_proj", "matches no module"]),
    ] {
        // `--flag=value`: a negative value would otherwise look like a flag to clap.
        let arg = format!("{flag}={value}");
        fails(&["info", "--model", &model, &arg], expect, &[]);
    }
    let text = s.s("text.txt");
    let out = s.path("run");
    let outs = out.to_str().unwrap();
    for (flag, value, expect) in [
        ("--rank", "0", &["invalid rank = 0"][..]),
        ("--alpha", "0", &["invalid alpha = 0"]),
        ("--dropout", "1", &["invalid dropout = 1"]),
        ("--lr", "0", &["invalid learning rate = 0", "> 0"]),
        ("--lr", "-0.001", &["invalid learning rate = -0.001", "> 0"]),
        (
            "--batch-size",
            "0",
            &["invalid batch size = 0", "at least 1"],
        ),
        (
            "--block-size",
            "33",
            &["invalid block size = 33", "2..=32", "n_positions"],
        ),
        (
            "--grad-accum",
            "0",
            &["gradient accumulation", "at least 1"],
        ),
        (
            "--val-split",
            "1.5",
            &["validation fraction = 1.5", "(0, 1)"],
        ),
        (
            "--lr-scheduler",
            "step",
            &["lr scheduler", "linear, cosine or constant"],
        ),
        (
            "--loraplus-lr-ratio",
            "0",
            &["--loraplus-lr-ratio) = 0", "finite number > 0", "16"],
        ),
        (
            "--loraplus-lr-ratio",
            "-1",
            &["--loraplus-lr-ratio) = -1", "finite number > 0"],
        ),
        (
            "--loraplus-lr-ratio",
            "inf",
            &["--loraplus-lr-ratio) = inf"],
        ),
    ] {
        let mut args = train_args(&model, &text, outs);
        // A second --rank/--batch-size/--block-size would be a clap error: drop the value
        // train_args set for the flag under test.
        if let Some(i) = args.iter().position(|a| *a == flag) {
            args.drain(i..i + 2);
        }
        let arg = format!("{flag}={value}");
        args.push(&arg);
        fails(&args, expect, &[&out]);
    }
    // A negative ratio after a space reaches the check too (not clap's "unexpected argument").
    let mut args = train_args(&model, &text, outs);
    args.extend(["--loraplus-lr-ratio", "-1"]);
    fails(&args, &["--loraplus-lr-ratio) = -1"], &[&out]);
    // eval checks its window and batch too.
    fails(
        &[
            "eval",
            "--model",
            &model,
            "--data",
            &text,
            "--block-size",
            "64",
        ],
        &["invalid block size = 64", "n_positions"],
        &[],
    );
    fails(
        &[
            "eval",
            "--model",
            &model,
            "--data",
            &text,
            "--batch-size",
            "0",
        ],
        &["batch size = 0"],
        &[],
    );
}

/// Training data: empty, shorter than one block, not UTF-8, a jsonl line that is not JSON.
#[test]
fn bad_data_is_a_clear_error() {
    let s = Scratch::new();
    let model = s.s("model");
    let out = s.path("run");
    let outs = out.to_str().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(s.path(name), bytes).unwrap();
        s.s(name)
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            write("empty.txt", b""),
            vec!["empty.txt", "the file is empty"],
        ),
        (
            write("short.txt", words(10).as_bytes()),
            vec!["10 tokens", "shorter than one block of 16", "--block-size"],
        ),
        (
            write("latin1.txt", b"w1 w2 caf\xe9 w3"),
            vec![
                "latin1.txt",
                "not valid UTF-8",
                "0xE9",
                "byte offset 9",
                "line 1",
                "iconv",
            ],
        ),
        (
            write(
                "bad.jsonl",
                format!(
                    "{{\"text\": \"{}\"}}\n\n{{\"text\": \"w1 w2\"\n{{\"text\": \"w3\"}}\n",
                    words(40)
                )
                .as_bytes(),
            ),
            vec!["bad.jsonl", "line 3", "not valid JSON"],
        ),
        (
            write("fields.jsonl", b"{\"prompt\": \"w1\"}\n"),
            vec!["line 1", "missing field \"completion\""],
        ),
        (s.s("no-such.txt"), vec!["no-such.txt", "data not found"]),
    ];
    for (data, expect) in cases {
        fails(&train_args(&model, &data, outs), &expect, &[&out]);
    }
    fails(
        &["eval", "--model", &model, "--data", &s.s("empty.txt")],
        &["the file is empty"],
        &[],
    );
}

/// --out: a directory that holds a run is refused without --overwrite or --resume (and left
/// untouched); a path that cannot be written fails before any training, with a hint.
#[test]
fn output_dir_problems_are_clear_errors() {
    let s = Scratch::new();
    let model = s.s("model");
    let text = s.s("text.txt");

    // A real (1-step) run, then the same --out again. Its validation set (2 or 3 blocks) is
    // smaller than a batch of 4, so evaluation pads the batch: the padding must be a token of
    // this 99-token vocabulary (it once was GPT-2's <|endoftext|>, 50256).
    let out = s.s("run");
    let mut first = train_args(&model, &text, &out);
    let i = first.iter().position(|a| *a == "--batch-size").unwrap();
    first[i + 1] = "4";
    first.extend(["--val-split", "0.1"]);
    let (code, stdout, stderr) = run(&first);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let state = std::fs::read(s.path("run/trainer_state.json")).unwrap();
    fails(
        &train_args(&model, &text, &out),
        &["already holds a training run", "--resume", "--overwrite"],
        &[],
    );
    assert_eq!(
        std::fs::read(s.path("run/trainer_state.json")).unwrap(),
        state,
        "the refused run changed the old one"
    );
    // --overwrite replaces it; --resume of a finished run is a no-op that succeeds.
    let mut again = train_args(&model, &text, &out);
    again.push("--overwrite");
    let (code, _, stderr) = run(&again);
    assert_eq!(code, Some(0), "--overwrite: {stderr}");
    let mut resume = train_args(&model, &text, &out);
    resume.push("--resume");
    let (code, stdout, stderr) = run(&resume);
    assert_eq!(code, Some(0), "--resume: {stderr}");
    assert!(stdout.contains("resume   from step 1"), "{stdout}");
    // --resume with nothing to resume from.
    let fresh = s.s("fresh");
    let mut resume = train_args(&model, &text, &fresh);
    resume.push("--resume");
    fails(&resume, &["no checkpoint"], &[]);

    // Unwritable outputs (tests may run as root, where chmod does not stop writes): a path
    // under a regular file, and a path in /proc.
    std::fs::write(s.path("a-file"), b"x").unwrap();
    let under_file = s.path("a-file/sub");
    fails(
        &train_args(&model, &text, under_file.to_str().unwrap()),
        &["a-file/sub", "writable --out"],
        &[],
    );
    fails(
        &train_args(&model, &text, &s.s("a-file")),
        &["a-file", "not a directory"],
        &[],
    );
    assert_eq!(std::fs::read(s.path("a-file")).unwrap(), b"x");
    fails(
        &train_args(&model, &text, "/proc/lora-wgpu-test/out"),
        &["/proc/lora-wgpu-test/out", "writable --out"],
        &[],
    );
    fails(
        &[
            "merge",
            "--model",
            &model,
            "--adapter",
            &s.s("adapter"),
            "--out",
            under_file.to_str().unwrap(),
        ],
        &["a-file", "not a directory"],
        &[],
    );
    // No temporary directory of the failed merges is left next to the target.
    let leftovers: Vec<_> = std::fs::read_dir(&s.root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
