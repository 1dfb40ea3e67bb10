#!/usr/bin/env python3
"""Write the GGUF fixtures tests/gguf.rs compares against, with the `gguf` package (llama.cpp's
gguf-py: its GGUFWriter and gguf.quants) and numpy.

    pip install numpy gguf          # written with gguf 0.19.0, numpy 2.4
    python scripts/make_gguf_fixtures.py

Writes (about 40 KB in all):

  tests/fixtures/gguf/quants.gguf   the block formats, as one GGUF file (written by GGUFWriter):
      <type>.blocks   for each of f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k: a few
                      blocks of random bytes, stored as that type (the f16 scale fields set to
                      random finite f16 bit patterns, subnormals included, and the float types
                      to random finite bit patterns), shape (2, 4 blocks) or (4, 16) for floats
      <type>.dequant  gguf.quants.dequantize of those bytes (f32, same shape)
      <type>.input    for f16 bf16 q8_0 q4_0: f32 rows to quantize: random normal blocks, an
                      all-zero block (its first value -0.0), exact ties (0.5 steps of the scale),
                      equal magnitudes of opposite sign, tiny values whose scale underflows f16,
                      and for the float types overflow, subnormal, tie-to-even and (bf16) NaN
      <type>.quant    gguf.quants.quantize of those rows, stored as that type
  tests/fixtures/gguf/meta.gguf     metadata of every GGUF value type (nested and string
                                    arrays included), general.alignment 64, and tensors of
                                    f32, f16, bf16, q8_0 and q4_k
  tests/fixtures/gguf/meta.json     what meta.gguf holds: version, alignment, data_offset (from
                                    gguf.GGUFReader), every key with its type and value (floats
                                    as their bits), every tensor's name, shape (numpy order),
                                    type, offset and data as hex
  fuzz/corpus/gguf/                 two tiny seed files for the fuzz target
"""

import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V
from gguf.quants import dequantize, quantize

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
FUZZ = os.path.join(ROOT, "fuzz", "corpus", "gguf")

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
# Byte offsets of each block type's f16 fields (d, m / dmin).
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def finite_bits(rng, n, bits, exp_bits):
    """n random bit patterns of a float type of `bits` bits whose exponent is not all ones."""
    dtype = {16: np.uint16, 32: np.uint32}[bits]
    x = rng.integers(0, 1 << bits, size=n, dtype=np.uint64).astype(dtype)
    mant_bits = bits - 1 - exp_bits
    exp = (x >> dtype(mant_bits)) & dtype((1 << exp_bits) - 1)
    # An all-ones exponent (inf / NaN) loses its top exponent bit.
    return np.where(exp == (1 << exp_bits) - 1, x & ~dtype(1 << (bits - 2)), x)


def random_blocks(rng, name):
    """(raw bytes as a (2, row_bytes) or (4, 16·size) uint8 array) of random finite blocks."""
    qtype = T[name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if name == "F32":
        return finite_bits(rng, 64, 32, 8).view(np.uint8).reshape(4, 64)
    if name == "F16":
        return finite_bits(rng, 64, 16, 5).view(np.uint8).reshape(4, 32)
    if name == "BF16":
        return finite_bits(rng, 64, 16, 8).view(np.uint8).reshape(4, 32)
    blocks = rng.integers(0, 256, size=(8, size), dtype=np.uint8)
    for off in F16_FIELDS[name]:
        blocks[:, off:off + 2] = finite_bits(rng, 8, 16, 5).view(np.uint8).reshape(8, 2)
    return blocks.reshape(2, 4 * size)


def quant_rows(rng, name):
    """f32 rows (shape (r, 64)) that exercise quantize's rounding for type `name`."""
    normal = rng.standard_normal((4, 32)).astype(np.float32)
    zero = np.zeros(32, np.float32)
    zero[0] = -0.0
    if name == "Q8_0":
        # amax 127: scale 1, so x + 0.5 steps are exact ties (rounded away from zero).
        ties = np.arange(-16, 16, dtype=np.float32) + np.float32(0.5)
        ties[0] = -127.0
    else:
        # max -8: d = 1, so x + 8.5 is an exact integer; and max +8: d = -1.
        ties = np.arange(-16, 16, dtype=np.float32) / 2
        ties[5] = -8.0
    flipped = -ties
    opposite = rng.standard_normal(32).astype(np.float32)
    opposite[3], opposite[9] = 3.0, -3.0
    tiny = rng.standard_normal(32).astype(np.float32) * np.float32(1e-9)
    rows = [*normal, zero, ties, flipped, opposite, tiny, rng.uniform(-1000, 1000, 32).astype(np.float32)]
    if name in ("F16", "BF16"):
        special = np.array(
            [70000.0, -70000.0, 65504.0, 65520.0, 1e-8, -6e-8, 3e-5, 1.0 + 2.0**-11,
             1.0 + 3 * 2.0**-11, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, np.inf, -np.inf, 0.0, -0.0, 1e38]
            + [0.0] * 16, np.float32)
        if name == "BF16":
            special[16:20] = np.array([0x7F800001, 0xFFC00001, 0x3F808000, 0x3F818000],
                                      np.uint32).view(np.float32)
        rows.append(special)
    if len(rows) % 2:
        rows.append(rng.standard_normal(32).astype(np.float32))
    return np.stack(rows).reshape(-1, 64)


def quants_file(rng):
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "quants")
    for name in TYPES:
        raw = random_blocks(rng, name)
        w.add_tensor(f"{name.lower()}.blocks", raw, raw_dtype=T[name])
        w.add_tensor(f"{name.lower()}.dequant", dequantize(raw, T[name]).astype(np.float32))
    for name in ("F16", "BF16", "Q8_0", "Q4_0"):
        rows = quant_rows(rng, name)
        w.add_tensor(f"{name.lower()}.input", rows)
        q = quantize(rows, T[name])
        w.add_tensor(f"{name.lower()}.quant", q.view(np.uint8), raw_dtype=T[name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# (key, GGUF value type, value, array element type) for meta.gguf, in file order.
def meta_entries():
    return [
        ("test.u8", V.UINT8, 200, None),
        ("test.i8", V.INT8, -100, None),
        ("test.u16", V.UINT16, 60000, None),
        ("test.i16", V.INT16, -30000, None),
        ("test.u32", V.UINT32, 4000000000, None),
        ("test.i32", V.INT32, -2000000000, None),
        ("test.u64", V.UINT64, 18000000000000000000, None),
        ("test.i64", V.INT64, -9000000000000000000, None),
        ("test.f32", V.FLOAT32, 0.1, None),
        ("test.f64", V.FLOAT64, -1e300, None),
        ("test.bool_true", V.BOOL, True, None),
        ("test.bool_false", V.BOOL, False, None),
        ("test.string", V.STRING, "héllo, wörld ✓", None),
        ("test.empty_string", V.STRING, "", None),
        ("test.strings", V.ARRAY, ["a", "", "ünïcode", "<|endoftext|>"], V.STRING),
        ("test.u8s", V.ARRAY, [0, 1, 255], V.UINT8),
        ("test.i32s", V.ARRAY, [1, -2, 3], V.INT32),
        ("test.f32s", V.ARRAY, [0.5, -1.25, 3.0e-20], V.FLOAT32),
        ("test.bools", V.ARRAY, [True, False, True], V.BOOL),
        ("test.nested", V.ARRAY, [[1, 2, 3], ["x", "y"], [0.5]], None),
        ("tokenizer.ggml.scores", V.ARRAY, [-1.0, -2.5, 0.0], V.FLOAT32),
    ]


TYPE_NAMES = {V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32",
              V.INT32: "i32", V.UINT64: "u64", V.INT64: "i64", V.FLOAT32: "f32", V.FLOAT64: "f64",
              V.BOOL: "bool", V.STRING: "string", V.ARRAY: "array"}


def typed(vtype, value, sub=None):
    """A value as JSON: {"type", "value"} (floats: {"type", "bits"}), arrays element by element."""
    if vtype == V.ARRAY:
        items = [typed(sub if sub is not None else V.get_type(v), v) for v in value]
        return {"type": "array", "value": items}
    if vtype == V.FLOAT32:
        return {"type": "f32", "bits": int(np.float32(value).view(np.uint32))}
    if vtype == V.FLOAT64:
        return {"type": "f64", "bits": int(np.float64(value).view(np.uint64))}
    return {"type": TYPE_NAMES[vtype], "value": value}


def meta_tensors(rng):
    q8_in = rng.standard_normal((2, 64)).astype(np.float32)
    return [
        ("t.f32", np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, None),
        ("t.f16", rng.standard_normal(5).astype(np.float16), None),
        ("t.bf16", quantize(rng.standard_normal((3, 2)).astype(np.float32), T.BF16), T.BF16),
        ("t.q8_0", quantize(q8_in, T.Q8_0), T.Q8_0),
        ("t.q4_k", random_blocks(rng, "Q4_K")[:1, :144 * 2].reshape(2, 144), T.Q4_K),
    ]


def meta_file(rng):
    path = os.path.join(OUT, "meta.gguf")
    w = gguf.GGUFWriter(path, "tiny")
    w.add_custom_alignment(64)
    entries = meta_entries()
    for key, vtype, value, sub in entries:
        w.add_key_value(key, value, vtype, sub_type=sub)
    tensors = meta_tensors(rng)
    for name, data, raw in tensors:
        w.add_tensor(name, data.view(np.uint8) if raw is not None else data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    expected = {
        "version": 3,
        "alignment": 64,
        "data_offset": int(reader.data_offset),
        # GGUFWriter writes general.architecture and general.alignment first.
        "metadata": [{"key": "general.architecture", **typed(V.STRING, "tiny")},
                     {"key": "general.alignment", **typed(V.UINT32, 64)}]
        + [{"key": k, **typed(t, v, s)} for k, t, v, s in entries],
        "tensors": [
            {
                "name": name,
                "shape": [int(d) for d in reversed(by_name[name].shape)],
                "type": (raw or T[by_name[name].tensor_type.name]).name.lower(),
                "offset": int(by_name[name].data_offset - reader.data_offset),
                "data_hex": data.tobytes().hex(),
            }
            for name, data, raw in tensors
        ],
    }
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


def fuzz_seeds(rng):
    os.makedirs(FUZZ, exist_ok=True)
    w = gguf.GGUFWriter(os.path.join(FUZZ, "metadata.gguf"), "seed")
    w.add_array("tokenizer.ggml.tokens", ["a", "b"])
    w.add_key_value("test.nested", [[1], ["x"]], V.ARRAY)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    w = gguf.GGUFWriter(os.path.join(FUZZ, "tensors.gguf"), "seed")
    w.add_tensor("a", rng.standard_normal((2, 3)).astype(np.float16))
    w.add_tensor("b", quantize(rng.standard_normal(32).astype(np.float32), T.Q4_0), raw_dtype=T.Q4_0)
    w.add_tensor("c", random_blocks(rng, "Q6_K")[:1, :210], raw_dtype=T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240611)
    quants_file(rng)
    meta_file(rng)
    fuzz_seeds(rng)
    for d in (OUT, FUZZ):
        for f in sorted(os.listdir(d)):
            print(os.path.join(os.path.relpath(d, ROOT), f), os.path.getsize(os.path.join(d, f)))


if __name__ == "__main__":
    main()
