//! GGUF files and ggml's block formats against the `gguf` Python package
//! (tests/fixtures/gguf/, written by scripts/make_gguf_fixtures.py): dequantization and
//! quantization bit for bit, the Q4_K quantizer's error, reading every metadata type and tensor
//! info, the writer's bytes, and every validation of the parser on damaged files.

use std::path::{Path, PathBuf};

use lora_wgpu::gguf::{GgufFile, GgufWriter, TensorInfo, Value};
use lora_wgpu::quant::{dequantize, quantize, GgmlType, ALL_TYPES};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Standard normal values (Box-Muller), reproducible from `seed`.
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

fn rms(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    (s / a.len() as f64).sqrt()
}

#[test]
fn dequantize_equals_gguf_bit_for_bit_for_every_type() {
    let f = GgufFile::open(&fixture("quants.gguf")).unwrap();
    for ty in ALL_TYPES {
        let blocks = f.tensor(&format!("{ty}.blocks")).unwrap();
        let want = f.tensor(&format!("{ty}.dequant")).unwrap();
        assert_eq!(blocks.ty, ty);
        assert_eq!(want.ty, GgmlType::F32);
        assert_eq!(blocks.shape, want.shape, "{ty}");
        let expected = f.dequantize(&want.name).unwrap();
        let ours = dequantize(ty, f.data(blocks), blocks.n_elements()).unwrap();
        assert_eq!(bits(&ours), bits(&expected), "{ty}");
        assert_eq!(bits(&f.dequantize(&blocks.name).unwrap()), bits(&expected));

        // Large enough to take the parallel path: the same blocks repeated.
        let reps = (1 << 18) / blocks.n_elements() + 1;
        let many = f.data(blocks).repeat(reps);
        let ours = dequantize(ty, &many, blocks.n_elements() * reps).unwrap();
        assert_eq!(bits(&ours), bits(&expected.repeat(reps)), "{ty} (parallel)");
    }
}

#[test]
fn quantize_equals_gguf_bit_for_bit() {
    let f = GgufFile::open(&fixture("quants.gguf")).unwrap();
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
    ] {
        let input = f.dequantize(&format!("{ty}.input")).unwrap();
        let want = f.tensor(&format!("{ty}.quant")).unwrap();
        assert_eq!(want.ty, ty);
        let ours = quantize(ty, &input).unwrap();
        let expected = f.data(want);
        for (b, (o, e)) in ours
            .chunks(ty.block_bytes())
            .zip(expected.chunks(ty.block_bytes()))
            .enumerate()
        {
            assert_eq!(
                o,
                e,
                "{ty} block {b}: input {:?}",
                &input[b * ty.block_len()..][..ty.block_len()]
            );
        }
        assert_eq!(ours.len(), expected.len());
    }
    let input: Vec<f32> = (0..64).map(|i| i as f32 - 31.5).collect();
    assert_eq!(
        bits(&dequantize(GgmlType::F32, &quantize(GgmlType::F32, &input).unwrap(), 64).unwrap()),
        bits(&input)
    );
}

#[test]
fn q4_k_round_trip_error_is_within_the_format_and_below_q4_0() {
    let x = normal(256 * 64, 7);
    let q = quantize(GgmlType::Q4_K, &x).unwrap();
    assert_eq!(q.len(), 144 * 64);
    let back = dequantize(GgmlType::Q4_K, &q, x.len()).unwrap();
    let q4k = rms(&x, &back);
    let q4_0 = rms(
        &x,
        &dequantize(
            GgmlType::Q4_0,
            &quantize(GgmlType::Q4_0, &x).unwrap(),
            x.len(),
        )
        .unwrap(),
    );
    let q8_0 = rms(
        &x,
        &dequantize(
            GgmlType::Q8_0,
            &quantize(GgmlType::Q8_0, &x).unwrap(),
            x.len(),
        )
        .unwrap(),
    );
    eprintln!("RMS error on N(0, 1): q4_k {q4k:.5}, q4_0 {q4_0:.5}, q8_0 {q8_0:.5}");
    assert!(q4k < 0.085, "q4_k rms {q4k}");
    assert!(q4k < 0.9 * q4_0, "q4_k {q4k} vs q4_0 {q4_0}");
    assert!(q8_0 < 0.01);

    // Every value is stored as the nearest of the 16 levels its sub-block's stored scale and
    // min allow (the levels found by dequantizing the block's header with every nibble = q).
    for (blk, ((xb, bb), qb)) in x
        .chunks(256)
        .zip(back.chunks(256))
        .zip(q.chunks(144))
        .enumerate()
    {
        let levels: Vec<Vec<f32>> = (0..16u8)
            .map(|l| {
                let mut b = qb.to_vec();
                b[16..].fill(l | (l << 4));
                dequantize(GgmlType::Q4_K, &b, 256).unwrap()
            })
            .collect();
        for i in 0..256 {
            let nearest = levels
                .iter()
                .map(|lv| (xb[i] - lv[i]).abs())
                .fold(f32::INFINITY, f32::min);
            let err = (xb[i] - bb[i]).abs();
            assert!(
                err <= nearest + 1e-5 * xb[i].abs() + 1e-6,
                "block {blk} element {i}: {} stored as {}, a level {nearest} away exists",
                xb[i],
                bb[i]
            );
        }
    }

    // Special blocks: zeros, a constant, all positive, one outlier, tiny values.
    let mut special = vec![0f32; 256];
    special.extend(std::iter::repeat_n(0.75f32, 256));
    special.extend((0..256).map(|i| 1.0 + i as f32 / 256.0));
    special.extend((0..256).map(|i| if i == 100 { 50.0 } else { (i % 7) as f32 * 0.1 }));
    special.extend(normal(256, 3).iter().map(|v| v * 1e-3));
    let back = dequantize(
        GgmlType::Q4_K,
        &quantize(GgmlType::Q4_K, &special).unwrap(),
        special.len(),
    )
    .unwrap();
    assert!(back[..256].iter().all(|&v| v == 0.0));
    for (b, (xs, ys)) in special.chunks(256).zip(back.chunks(256)).enumerate() {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = xs
            .iter()
            .zip(ys)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= amax / 15.0 + 1e-6,
            "special block {b}: max error {err}, amax {amax}"
        );
    }
}

/// A metadata value as meta.json writes it: {"type", "value"}, floats as {"type", "bits"}.
fn typed(v: &Value) -> serde_json::Value {
    match v {
        Value::U8(x) => json!({"type": "u8", "value": x}),
        Value::I8(x) => json!({"type": "i8", "value": x}),
        Value::U16(x) => json!({"type": "u16", "value": x}),
        Value::I16(x) => json!({"type": "i16", "value": x}),
        Value::U32(x) => json!({"type": "u32", "value": x}),
        Value::I32(x) => json!({"type": "i32", "value": x}),
        Value::U64(x) => json!({"type": "u64", "value": x}),
        Value::I64(x) => json!({"type": "i64", "value": x}),
        Value::F32(x) => json!({"type": "f32", "bits": x.to_bits()}),
        Value::F64(x) => json!({"type": "f64", "bits": x.to_bits()}),
        Value::Bool(x) => json!({"type": "bool", "value": x}),
        Value::String(x) => json!({"type": "string", "value": x}),
        Value::Array(items) => {
            json!({"type": "array", "value": items.iter().map(typed).collect::<Vec<_>>()})
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn reads_every_key_type_value_and_tensor_of_the_fixture() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("meta.json")).unwrap()).unwrap();
    let f = GgufFile::open(&fixture("meta.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    assert_eq!(
        f.data_start() as u64,
        expected["data_offset"].as_u64().unwrap()
    );

    let ours: Vec<_> = f
        .metadata()
        .iter()
        .map(|(k, v)| {
            let mut t = typed(v);
            t["key"] = json!(k);
            t
        })
        .collect();
    assert_eq!(json!(ours), expected["metadata"]);

    let ours: Vec<_> = f
        .tensors()
        .iter()
        .map(|t| json!({"name": t.name, "shape": t.shape, "type": t.ty.name(), "offset": t.offset, "data_hex": hex(f.data(t))}))
        .collect();
    assert_eq!(json!(ours), expected["tensors"]);

    // The typed getters.
    assert_eq!(f.get_str("general.architecture").unwrap(), Some("tiny"));
    assert_eq!(f.get_str("test.string").unwrap(), Some("héllo, wörld ✓"));
    assert_eq!(f.get_str("no.such.key").unwrap(), None);
    assert_eq!(
        f.get_usize("test.u64").unwrap(),
        Some(18_000_000_000_000_000_000)
    );
    assert_eq!(f.get_usize("test.u8").unwrap(), Some(200));
    assert_eq!(f.get_usize("general.alignment").unwrap(), Some(64));
    assert_eq!(f.get_f32("test.f32").unwrap(), Some(0.1));
    assert_eq!(f.get_f32("test.f64").unwrap(), Some(f32::NEG_INFINITY));
    assert_eq!(
        f.get_strings("test.strings").unwrap(),
        Some(vec!["a", "", "ünïcode", "<|endoftext|>"])
    );
    assert_eq!(f.get("test.bool_true"), Some(&Value::Bool(true)));
    for (key, call, want) in [
        (
            "test.u8",
            f.get_str("test.u8").map(|_| ()),
            "is a u8, expected a string",
        ),
        (
            "test.i8",
            f.get_usize("test.i8").map(|_| ()),
            "is a i8, expected a non-negative integer (found I8(-100))",
        ),
        (
            "test.string",
            f.get_f32("test.string").map(|_| ()),
            "is a string, expected an f32 or f64",
        ),
        (
            "test.i32s",
            f.get_strings("test.i32s").map(|_| ()),
            "is a array of i32, expected an array of strings",
        ),
        (
            "test.nested",
            f.get_strings("test.nested").map(|_| ()),
            "is a array of array",
        ),
    ] {
        let e = call.unwrap_err().to_string();
        assert!(
            e.contains("meta.gguf") && e.contains(&format!("`{key}`")) && e.contains(want),
            "{e}"
        );
    }

    assert_eq!(
        f.dequantize("t.f32").unwrap(),
        [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]
    );
    let e = f.dequantize("t.nope").unwrap_err().to_string();
    assert!(
        e.contains("meta.gguf") && e.contains("no tensor named `t.nope`"),
        "{e}"
    );
    for t in f.tensors() {
        assert_eq!(f.dequantize(&t.name).unwrap().len(), t.n_elements());
    }
}

/// A writer holding `f`'s metadata and tensors.
fn rewrite(f: &GgufFile) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add(k, v.clone());
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.shape, t.ty, f.data(t).to_vec())
            .unwrap();
    }
    w
}

fn same_contents(a: &GgufFile, b: &GgufFile) {
    assert_eq!(a.metadata(), b.metadata());
    assert_eq!(a.tensors(), b.tensors());
    for t in a.tensors() {
        assert_eq!(a.data(t), b.data(t), "{}", t.name);
    }
}

#[test]
fn writer_round_trips_and_writes_the_bytes_gguf_py_writes() {
    let path = fixture("meta.gguf");
    let f = GgufFile::open(&path).unwrap();
    let bytes = rewrite(&f).to_bytes();
    assert_eq!(
        bytes,
        std::fs::read(&path).unwrap(),
        "our writer's layout differs from GGUFWriter's"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    rewrite(&f).write(&out).unwrap();
    same_contents(&f, &GgufFile::open(&out).unwrap());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["out.gguf"], "a temporary file was left");

    // general.alignment honoured: the default 32, or what is set.
    for align in [None, Some(1u32), Some(128), Some(4096)] {
        let mut w = GgufWriter::new();
        w.add("general.architecture", Value::String("x".into()));
        if let Some(a) = align {
            w.add("general.alignment", Value::U32(a));
        }
        w.add_tensor("a", &[3], GgmlType::F32, vec![1; 12]).unwrap();
        w.add_tensor("b", &[1, 32], GgmlType::Q4_0, vec![2; 18])
            .unwrap();
        w.add_tensor("c", &[5], GgmlType::F16, vec![3; 10]).unwrap();
        let g = GgufFile::from_bytes(Path::new("x.gguf"), w.to_bytes()).unwrap();
        let a = align.unwrap_or(32) as usize;
        assert_eq!(g.alignment(), a);
        assert_eq!(g.data_start() % a, 0);
        for t in g.tensors() {
            assert_eq!(t.offset as usize % a, 0);
            assert_eq!(g.data(t)[0], t.name.as_bytes()[0] - b'a' + 1);
        }
        same_contents(
            &g,
            &GgufFile::from_bytes(Path::new("y.gguf"), rewrite(&g).to_bytes()).unwrap(),
        );
    }

    // What GGUF cannot store is refused.
    let mut w = GgufWriter::new();
    w.add("mixed", Value::Array(vec![Value::U8(1), Value::I8(1)]));
    w.add("general.alignment", Value::U32(48));
    assert_eq!(
        GgufFile::from_bytes(Path::new("x"), w.to_bytes())
            .unwrap()
            .metadata(),
        []
    );
    let e = w
        .write(&dir.path().join("bad.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`mixed`: an array mixes u8 and i8")
            && e.contains("`general.alignment`: U32(48) is not a power of two"),
        "{e}"
    );
    assert!(!dir.path().join("bad.gguf").exists());
    for (name, shape, ty, len, want) in [
        (
            "a",
            &[2, 33][..],
            GgmlType::Q8_0,
            68,
            "innermost dim 33 is not a multiple of q8_0's block of 32",
        ),
        (
            "a",
            &[2, 32],
            GgmlType::Q8_0,
            67,
            "67 bytes given, but shape [2, 32] of q8_0 takes 68",
        ),
        ("a", &[], GgmlType::F32, 4, "has 0 dims"),
        ("a", &[1, 1, 1, 1, 1], GgmlType::F32, 4, "has 5 dims"),
        (
            "a",
            &[usize::MAX, 2],
            GgmlType::F32,
            4,
            "more than can be addressed",
        ),
        ("z", &[3], GgmlType::F32, 12, "already added"),
    ] {
        let mut w = GgufWriter::new();
        w.add_tensor("z", &[3], GgmlType::F32, vec![0; 12]).unwrap();
        let e = w
            .add_tensor(name, shape, ty, vec![0; len])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{name}`")) && e.contains(want), "{e}");
    }
}

// ---- Damaged files -------------------------------------------------------------------------

/// The error message of parsing `bytes`, which must fail.
fn error_of(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(Path::new("bad.gguf"), bytes) {
        Ok(f) => panic!("parsed: {f:?}"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("bad.gguf: "), "{e}");
            e
        }
    }
}

fn assert_error(bytes: Vec<u8>, wants: &[&str]) {
    let e = error_of(bytes);
    for w in wants {
        assert!(e.contains(w), "{w:?} not in: {e}");
    }
}

/// The position of `needle` in `hay` (the first).
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A small valid file: keys `k.one` (u32 7), `k.two` (array of three u32), `k.flag` (bool);
/// tensors `ta` (2×32 q8_0) and `tb` (8 f32). Returned with the byte positions of `tb`'s info
/// fields: (name, n_dims, first dim, type, offset).
fn small() -> (Vec<u8>, [usize; 5]) {
    let mut w = GgufWriter::new();
    w.add("k.one", Value::U32(7));
    w.add(
        "k.two",
        Value::Array(vec![Value::U32(1), Value::U32(2), Value::U32(3)]),
    );
    w.add("k.flag", Value::Bool(true));
    w.add_tensor("ta", &[2, 32], GgmlType::Q8_0, vec![0; 68])
        .unwrap();
    w.add_tensor("tb", &[8], GgmlType::F32, vec![0; 32])
        .unwrap();
    let b = w.to_bytes();
    let name = find(&b, b"tb");
    (b, [name, name + 2, name + 6, name + 14, name + 18])
}

#[test]
fn small_file_is_valid() {
    let (b, [_, _, _, ty, off]) = small();
    let f = GgufFile::from_bytes(Path::new("ok.gguf"), b.clone()).unwrap();
    assert_eq!(
        f.tensor("tb").unwrap(),
        &TensorInfo {
            name: "tb".into(),
            shape: vec![8],
            ty: GgmlType::F32,
            offset: 96
        }
    );
    assert_eq!(u32::from_le_bytes(b[ty..ty + 4].try_into().unwrap()), 0);
    assert_eq!(u64::from_le_bytes(b[off..off + 8].try_into().unwrap()), 96);
}

#[test]
fn bad_magic_and_versions_are_refused() {
    let (b, _) = small();
    let mut m = b.clone();
    m[..4].copy_from_slice(b"GGML");
    assert_error(m, &["not a GGUF file", "starts with \"GGML\""]);
    assert_error(b"{\"a\":1}".to_vec(), &["not a GGUF file"]);
    assert_error(vec![], &["not a GGUF file", "0-byte"]);
    for (v, want) in [
        (1u32, "version 1 is not supported"),
        (4, "unsupported GGUF version 4"),
        (0, "unsupported GGUF version 0"),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        let mut m = b.clone();
        put_u32(&mut m, 4, v);
        assert_error(m, &[want]);
    }
    let mut m = b.clone();
    put_u32(&mut m, 4, 2);
    assert_eq!(
        GgufFile::from_bytes(Path::new("v2"), m).unwrap().version(),
        2
    );
}

#[test]
fn truncation_anywhere_is_refused() {
    let (b, _) = small();
    let start = GgufFile::from_bytes(Path::new("x"), b.clone())
        .unwrap()
        .data_start();
    let data_end = start + 96 + 32; // tb's bytes end there; the rest is padding
    for cut in 4..data_end {
        assert_error(b[..cut].to_vec(), &["truncated"]);
    }
    assert!(GgufFile::from_bytes(Path::new("x"), b[..data_end].to_vec()).is_ok());
    // The fixture (strings, nested arrays, five tensors), cut at every byte before its last
    // tensor's end.
    let meta = std::fs::read(fixture("meta.gguf")).unwrap();
    let f = GgufFile::from_bytes(Path::new("m"), meta.clone()).unwrap();
    let end = f
        .tensors()
        .iter()
        .map(|t| f.data_start() + t.offset as usize + t.n_bytes())
        .max()
        .unwrap();
    for cut in 4..end {
        assert_error(meta[..cut].to_vec(), &["truncated"]);
    }
    // Which part, named.
    assert_error(b[..20].to_vec(), &["the header's metadata count"]);
    let key2 = find(&b, b"k.two");
    let flag = find(&b, b"k.flag");
    assert_error(b[..flag + 3].to_vec(), &["the name of metadata entry 2"]);
    assert_error(
        b[..key2 + 5 + 4 + 4 + 8 + 6].to_vec(),
        &["the value of metadata key `k.two` claims 3 elements, but only 6 bytes"],
    );
    let (_, [name, .., off]) = small();
    assert_error(b[..off + 3].to_vec(), &["the data offset of tensor `tb`"]);
    assert_error(
        b[..name + 1].to_vec(),
        &["the header claims 2 tensors, but only 51 bytes are left after the metadata"],
    );
    assert_error(
        b[..start + 100].to_vec(),
        &["tensor `tb` (f32, shape [8]: 32 bytes at data offset 96) runs past the end"],
    );
}

#[test]
fn unknown_tensor_types_are_named() {
    let (b, [_, _, _, ty, _]) = small();
    for (id, want) in [
        (10u32, "type id 10 (ggml's q2_k)"),
        (23, "type id 23 (ggml's iq4_xs)"),
        (35, "(ggml's tq2_0)"),
        (99, "type id 99 (an unknown type)"),
    ] {
        let mut m = b.clone();
        put_u32(&mut m, ty, id);
        assert_error(
            m,
            &[
                "tensor `tb`",
                want,
                "supported types: f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, bf16",
            ],
        );
    }
    // A valid but different type whose size disagrees with the data: f32 → q8_0 needs blocks.
    let mut m = b.clone();
    put_u32(&mut m, ty, 8);
    assert_error(
        m,
        &[
            "tensor `tb` (q8_0, shape [8])",
            "innermost dim 8 is not a multiple of q8_0's block of 32",
        ],
    );
}

#[test]
fn bad_dims_and_offsets_are_refused() {
    let (b, [_, n_dims, dim, _, off]) = small();
    for (n, want) in [
        (0u32, "tensor `tb` has 0 dimensions"),
        (5, "tensor `tb` has 5 dimensions"),
        (u32::MAX, "4294967295 dimensions"),
    ] {
        let mut m = b.clone();
        put_u32(&mut m, n_dims, n);
        assert_error(m, &[want, "1 to 4"]);
    }
    // ta's dims: ne = [32, 2]; patch its outer dim.
    let ta_dims = find(&b, b"ta") + 6;
    let mut m = b.clone();
    put_u64(&mut m, ta_dims + 8, 5);
    assert_error(
        m,
        &[
            "tensor `ta` (q8_0, shape [5, 32]: 170 bytes at data offset 0) runs past the end",
            "disagrees with its shape and type",
        ],
    );
    let mut m = b.clone();
    put_u64(&mut m, ta_dims, 31);
    assert_error(
        m,
        &["innermost dim 31 is not a multiple of q8_0's block of 32"],
    );
    let mut m = b.clone();
    put_u64(&mut m, ta_dims + 8, 1 << 62);
    assert_error(m, &["tensor `ta`", "more"]);
    let mut m = b.clone();
    put_u64(&mut m, dim, u64::MAX);
    assert_error(m, &["tensor `tb`'s dim 0 is too large"]);
    let mut m = b.clone();
    put_u64(&mut m, dim, 1 << 40);
    assert_error(m, &["tensor `tb`", "runs past the end"]);

    for (o, want) in [
        (
            100u64,
            "data offset 100 is not a multiple of the file's alignment 32",
        ),
        (1 << 60, "runs past the end"),
        (u64::MAX - 31, "runs past the end"),
        (128, "runs past the end"),
    ] {
        let mut m = b.clone();
        put_u64(&mut m, off, o);
        assert_error(m, &["tensor `tb`", want]);
    }
    let mut m = b.clone();
    put_u64(&mut m, off, 64);
    assert_error(
        m,
        &["tensors `ta` (data bytes 0..68) and `tb` (from 64) overlap"],
    );
    let mut m = b.clone();
    put_u64(&mut m, off, 0);
    assert_error(m, &["overlap"]);
}

#[test]
fn duplicates_are_refused() {
    let (b, [name, ..]) = small();
    let mut m = b.clone();
    m[name + 1] = b'a';
    assert_error(m, &["tensor `ta` appears twice (tensors 0 and 1)"]);
    let mut m = b.clone();
    let two = find(&b, b"k.two");
    m[two + 2..two + 5].copy_from_slice(b"one");
    assert_error(m, &["metadata key `k.one` appears twice (entries 0 and 1)"]);
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    let (b, [name, ..]) = small();
    for (at, v, want) in [
        (
            16,
            u64::MAX,
            "the header's metadata count claims 18446744073709551615 metadata entries",
        ),
        (16, 1 << 40, "metadata entries, but only"),
        (8, 1 << 40, "the header claims 1099511627776 tensors"),
        (8, u64::MAX, "tensors, but only"),
        (
            24,
            1 << 60,
            "the length of the name of metadata entry 0 claims",
        ),
        (
            name - 8,
            u64::MAX,
            "the length of the name of tensor 1 claims",
        ),
    ] {
        let mut m = b.clone();
        put_u64(&mut m, at, v);
        assert_error(m, &[want, "truncated or damaged"]);
    }
    // The array's count.
    let count = find(&b, b"k.two") + 5 + 4 + 4;
    for v in [1 << 61, u64::MAX] {
        let mut m = b.clone();
        put_u64(&mut m, count, v);
        let e = error_of(m);
        assert!(e.contains("metadata key `k.two`"), "{e}");
    }
    let mut m = b.clone();
    put_u64(&mut m, count, 1 << 61);
    assert_error(
        m,
        &["the value of metadata key `k.two` claims 2305843009213693952 elements"],
    );
}

#[test]
fn bad_values_are_refused() {
    let (b, _) = small();
    let one = find(&b, b"k.one");
    let mut m = b.clone();
    m[one] = 0xFF;
    assert_error(m, &["the name of metadata entry 0", "not valid UTF-8"]);
    let mut m = b.clone();
    put_u32(&mut m, one + 5, 13);
    assert_error(
        m,
        &["the value of metadata key `k.one` has unknown value type 13"],
    );
    let two = find(&b, b"k.two");
    let mut m = b.clone();
    put_u32(&mut m, two + 5 + 4, 99);
    assert_error(
        m,
        &["metadata key `k.two` is an array of unknown value type 99"],
    );
    let flag = find(&b, b"k.flag");
    let mut m = b.clone();
    m[flag + 6 + 4] = 2;
    assert_error(
        m,
        &["metadata key `k.flag` is a bool stored as 2, not 0 or 1"],
    );
    let mut m = b.clone();
    m[find(&b, b"tb")] = 0xC3;
    assert_error(m, &["the name of tensor 1", "not valid UTF-8"]);

    // Nesting deeper than 16 arrays.
    let mut v = Value::U8(1);
    for _ in 0..20 {
        v = Value::Array(vec![v]);
    }
    let mut w = GgufWriter::new();
    w.add("deep", v);
    assert_error(w.to_bytes(), &["nests arrays more than 16 deep", "`deep`"]);
}

#[test]
fn alignment_must_be_a_power_of_two() {
    let mut w = GgufWriter::new();
    w.add("general.alignment", Value::U32(32));
    w.add_tensor("t", &[8], GgmlType::F32, vec![0; 32]).unwrap();
    let b = w.to_bytes();
    let at = find(&b, b"general.alignment") + 17 + 4;
    for (v, want) in [(0u32, "U32(0)"), (3, "U32(3)"), (96, "U32(96)")] {
        let mut m = b.clone();
        put_u32(&mut m, at, v);
        assert_error(
            m,
            &[&format!(
                "metadata key `general.alignment` is {want}; it must be a power of two"
            )],
        );
    }
    let mut m = b.clone();
    put_u32(&mut m, at - 4, 6); // the same 4 bytes as an f32
    assert_error(m, &["`general.alignment` is F32"]);
    let mut m = b.clone();
    put_u32(&mut m, at, 16); // the data section moves to the 16-aligned end of the infos
    assert_eq!(
        GgufFile::from_bytes(Path::new("x"), m).unwrap().alignment(),
        16
    );
}

#[test]
fn random_damage_never_panics() {
    let base = std::fs::read(fixture("meta.gguf")).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let mut parsed = 0;
    for _ in 0..3000 {
        let mut m = base.clone();
        for _ in 0..rng.random_range(1..6) {
            let i = rng.random_range(0..m.len());
            m[i] = rng.random();
        }
        if rng.random_bool(0.2) {
            m.truncate(rng.random_range(0..m.len()));
        }
        if let Ok(f) = GgufFile::from_bytes(Path::new("fuzz.gguf"), m) {
            parsed += 1;
            for t in f.tensors() {
                assert_eq!(f.dequantize(&t.name).unwrap().len(), t.n_elements());
            }
        }
    }
    assert!(parsed > 100, "{parsed}");
}
