#!/usr/bin/env python3
"""Write the QLoRA fixtures tests/qlora.rs compares against: PEFT on a base model whose linear
layers are quantized and dequantized by the `gguf` package (llama.cpp's block formats), which is
the function our `--quantize` base computes.

    pip install torch transformers peft safetensors gguf
    python scripts/make_qlora_fixtures.py      # writes tests/fixtures/qlora/<case>.json

Cases reuse the tiny Llama-family bases and PEFT adapters of make_llama_fixtures.py (r=4 on every
linear layer, A and B non-zero) and the batch of their expected.json:

  llama_gqa_q8_0   tests/fixtures/tiny_llama/llama_gqa: q/k/v/o, gate/up/down as Q8_0
  qwen2_q4_0       tests/fixtures/tiny_llama/qwen2:     the same as Q4_0 (q/k/v biases stay f32)

What `--quantize` quantizes for the Llama family is quantized: the blocks' linear weights, the token
embedding and an untied LM head; norms and biases stay f32. Each <case>.json holds generated_by, case (the tiny_llama folder),
quant (the ggml type's name), logits, loss, grads (the gradients of every lora_A and lora_B,
keyed like make_llama_fixtures.py), adamw and losses (5 AdamW steps, as make_fixtures.py), and
unquantized_loss (the same adapter on the f32 base, to show the quantization matters).

Deterministic: CPU, one thread, deterministic algorithms, eager attention.
"""
import importlib.metadata
import json
import pathlib

import gguf
import numpy as np
import peft
import torch
import torch.nn.functional as F
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
STEPS = 5
GENERATED_BY = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                f"peft {peft.__version__}, gguf {importlib.metadata.version('gguf')}; "
                "scripts/make_qlora_fixtures.py")
CASES = {
    "llama_gqa_q8_0": ("llama_gqa", gguf.GGMLQuantizationType.Q8_0),
    "qwen2_q4_0": ("qwen2", gguf.GGMLQuantizationType.Q4_0),
}

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def load_base(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def quantize_weights(model, qtype):
    """Replace each linear weight (out, in) of the blocks, the token embedding (vocab, hidden) and
    an untied LM head by their ggml round trip, blocks along the rows."""
    def round_trip(weight):
        w = weight.detach().numpy().astype(np.float32)
        q = gguf.quants.quantize(w, qtype)
        weight.copy_(torch.from_numpy(gguf.quants.dequantize(q, qtype).reshape(w.shape)))

    n = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                round_trip(mod.weight)
                n += 1
        round_trip(model.get_input_embeddings().weight)
        if not model.config.tie_word_embeddings:
            round_trip(model.get_output_embeddings().weight)
    assert n > 0
    return model


def name_of(n):
    return n.replace(".default", "")


def run(case_dir, base, inputs, targets, adamw):
    model = PeftModel.from_pretrained(base, case_dir / "adapter", is_trainable=True)
    V = model.config.vocab_size
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert params and all("lora_" in n for n in params)

    def loss_of(logits):
        return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)

    logits = model(input_ids=inputs).logits
    loss = loss_of(logits)
    loss.backward()
    grads = {name_of(n): p.grad.detach().flatten().tolist() for n, p in params.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=adamw["lr"], betas=tuple(adamw["betas"]),
                            eps=adamw["eps"], weight_decay=adamw["weight_decay"])
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        step_loss = loss_of(model(input_ids=inputs).logits)
        losses.append(step_loss.item())
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), adamw["max_grad_norm"])
        opt.step()
    return logits.detach(), loss.item(), grads, losses


def make_case(name, folder, qtype):
    case_dir = ROOT / "tiny_llama" / folder
    ref = json.loads((case_dir / "expected.json").read_text())
    B, T = ref["batch"], ref["seq_len"]
    inputs = torch.tensor(ref["inputs"]).reshape(B, T)
    targets = torch.tensor([t if t >= 0 else -100 for t in ref["targets"]]).reshape(B, T)
    base = quantize_weights(load_base(case_dir / "model"), qtype)
    logits, loss, grads, losses = run(case_dir, base, inputs, targets, ref["adamw"])
    _, unquantized, _, _ = run(case_dir, load_base(case_dir / "model"), inputs, targets, ref["adamw"])
    assert abs(loss - unquantized) > 1e-5, f"{name}: quantizing changes nothing"
    fixture = {
        "generated_by": GENERATED_BY,
        "case": folder,
        "quant": qtype.name.lower(),
        "logits": logits.flatten().tolist(),
        "loss": loss,
        "grads": grads,
        "adamw": ref["adamw"],
        "losses": losses,
        "unquantized_loss": unquantized,
    }
    out = ROOT / "qlora"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(fixture))
    print(f"{name}: loss {loss:.6f} (f32 base {unquantized:.6f}), losses {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    for name, (folder, qtype) in CASES.items():
        make_case(name, folder, qtype)
