"""Reference files for tests/gguf_export.rs: PEFT adapters as GGUF LoRA files the way llama.cpp's
convert_lora_to_gguf.py writes them, PEFT's merged logits, and a check of merged GGUF files that
lora-wgpu wrote.

    pip install torch transformers peft gguf safetensors numpy
    python scripts/make_gguf_export_fixtures.py            # writes tests/fixtures/gguf_export/
    python scripts/make_gguf_export_fixtures.py --check FILE.gguf [--tol 1e-4]

Default mode, from the PEFT fixtures tests/fixtures/tiny_llama/llama_gqa/{model,adapter} (r = 4 on
every linear layer) and tests/fixtures/tiny_gpt2/{model,adapter} (r = 4 on c_attn, c_proj):

  llama-lora.gguf, gpt2-lora.gguf  the adapter as a GGUF LoRA, written here independently of
      lora-wgpu with the `gguf` package, following the converter: GGUFWriter(arch) (so
      general.architecture first), general.type "adapter", adapter.type "lora",
      adapter.lora.alpha (f32: lora_alpha; for an rsLoRA adapter lora_alpha * sqrt(r), so that
      llama.cpp's alpha / r is PEFT's alpha / sqrt(r) -- the converter itself writes lora_alpha
      unchanged), general.quantization_version 2; then per module, in the order of the
      adapter's sorted tensor names, `<gguf name>.lora_a` = A [r, in] and `.lora_b` = B [out, r],
      F32 (the converter's default --outtype f32), the GGUF name from gguf-py's TensorNameMap
      (what the converter uses). llama: B's rows permuted as the converter's LlamaModel.permute
      does for q (n_head) and k (n_head_kv); A unchanged. GPT-2: A and B unchanged: llama.cpp
      applies B (A x) against the GGUF weight [out, in], and PEFT's A [r, in], B [out, r] already
      fit it. (The converter transposes GPT-2's LoRA as if it were a Conv1D weight [in, out],
      which swaps and transposes A and B; llama.cpp then refuses attn_qkv for its shape.)
  expected.json  inputs (2 x 8 token ids, seed 0) and, per model, the logits of PEFT's
      merge_and_unload() on them (f32, CPU).

--check FILE: load a merged GGUF that `lora-wgpu merge --format gguf` wrote with transformers'
own GGUF loader (AutoModelForCausalLM.from_pretrained(dir, gguf_file=name): it reads the
metadata, dequantizes, un-permutes llama's q/k rows) and compare its logits on expected.json's
inputs with PEFT's merged logits of the model named by general.architecture (max abs difference
<= --tol; default 1e-4; q8_0 weights move this tiny model's logits by about 0.16, so use
0.3). Llama only: transformers' GGUF GPT-2 takes n_positions 1024 whatever the file says, so a
tiny GPT-2 does not load.

The committed merged files (llama-merged-f32.gguf, llama-merged-q8_0.gguf) were made by the CLI:

    lora-wgpu merge --model tests/fixtures/tiny_llama/llama_gqa/model \\
        --adapter tests/fixtures/tiny_llama/llama_gqa/adapter --format gguf [--quantize q8_0] \\
        --out tests/fixtures/gguf_export/llama-merged-{f32,q8_0}.gguf
    python scripts/make_gguf_export_fixtures.py --check tests/fixtures/gguf_export/llama-merged-f32.gguf
    python scripts/make_gguf_export_fixtures.py --check tests/fixtures/gguf_export/llama-merged-q8_0.gguf --tol 0.3

and tests/gguf_export.rs checks that the CLI still writes them byte for byte. When the merged
format changes on purpose, regenerate both with the commands above, run --check on each again,
and commit them together with the change.
"""
import argparse
import json
import pathlib
import sys

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "gguf_export"
CASES = {
    "llama": (FIX / "tiny_llama" / "llama_gqa" / "model", FIX / "tiny_llama" / "llama_gqa" / "adapter"),
    "gpt2": (FIX / "tiny_gpt2" / "model", FIX / "tiny_gpt2" / "adapter"),
}
ARCHS = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA, "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
         "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2, "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3,
         "GPT2LMHeadModel": gguf.MODEL_ARCH.GPT2}
B, T = 2, 8
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def permute(w, n_head):
    """The converter's LlamaModel.permute on the rows of w (numpy)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_lora(model_dir, adapter_dir, path):
    cfg = json.loads((model_dir / "config.json").read_text())
    acfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert not acfg.get("use_dora"), "llama.cpp's GGUF LoRA has no DoRA"
    arch = ARCHS[cfg["architectures"][0]]
    n_layer = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    names = gguf.get_tensor_name_map(arch, n_layer)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    r = acfg["r"]
    alpha = float(acfg["lora_alpha"]) * (np.sqrt(r) if acfg.get("use_rslora") else 1.0)

    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    pairs = {}
    for key in sorted(tensors):  # the order safetensors' load_file gives the converter
        base = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight").replace(".lora_B.weight", ".weight")
        pairs.setdefault(base, {})["A" if ".lora_A." in key else "B"] = tensors[key].astype(np.float32)
    for base, ab in pairs.items():
        hf = base.removeprefix("transformer.")
        name = names.get_name(hf, try_suffixes=(".weight",))
        assert name is not None, hf
        a, b = ab["A"], ab["B"]
        if arch == gguf.MODEL_ARCH.LLAMA and hf.endswith("q_proj.weight"):
            b = permute(b, cfg["num_attention_heads"])
        elif arch == gguf.MODEL_ARCH.LLAMA and hf.endswith("k_proj.weight"):
            b = permute(b, cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
        w.add_tensor(name + ".lora_a", np.ascontiguousarray(a))
        w.add_tensor(name + ".lora_b", np.ascontiguousarray(b))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 99, (B, T), generator=g)


def peft_merged_logits(model_dir, adapter_dir, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()
    with torch.no_grad():
        return merged(ids).logits.float().numpy()


def make():
    OUT.mkdir(parents=True, exist_ok=True)
    ids = inputs()
    import peft
    import transformers
    expected = {"generated_by": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                                f"peft {peft.__version__}; scripts/make_gguf_export_fixtures.py",
                "batch": B, "seq_len": T, "inputs": ids.flatten().tolist(), "models": {}}
    for name, (model_dir, adapter_dir) in CASES.items():
        write_lora(model_dir, adapter_dir, OUT / f"{name}-lora.gguf")
        logits = peft_merged_logits(model_dir, adapter_dir, ids)
        expected["models"][name] = {"logits": [float(x) for x in logits.flatten()]}
    (OUT / "expected.json").write_text(json.dumps(expected) + "\n")
    print("wrote", OUT)


def check(path, tol):
    from transformers import AutoModelForCausalLM
    path = pathlib.Path(path).resolve()
    arch = gguf.GGUFReader(str(path)).fields["general.architecture"]
    arch = bytes(arch.parts[arch.data[0]]).decode()
    expected = json.loads((OUT / "expected.json").read_text())
    want = np.array(expected["models"][arch]["logits"], dtype=np.float32)
    ids = torch.tensor(expected["inputs"]).reshape(expected["batch"], expected["seq_len"])
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        got = model(ids).logits.float().numpy().flatten()
    diff = float(np.abs(got - want).max())
    print(f"{path.name}: transformers' GGUF loader vs PEFT merge_and_unload: max |diff| = {diff:.3g} "
          f"(logits up to {float(np.abs(want).max()):.3g}; tolerance {tol})")
    if not diff <= tol:
        sys.exit(1)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--check", metavar="FILE")
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    check(a.check, a.tol) if a.check else make()
