#!/usr/bin/env python3
"""Write the DoRA fixtures tests/dora.rs compares against, with PyTorch, transformers and PEFT
(`use_dora=True`).

    pip install torch transformers peft safetensors
    python scripts/make_dora_fixtures.py      # writes tests/fixtures/dora/<case>/

Two cases on the existing tiny base models (not copied: the Rust test loads them from there):

  gpt2   tests/fixtures/tiny_gpt2/model: Conv1D weights ([in, out], fan_in_fan_out = true), biases;
         DoRA r=4, alpha=8 on c_attn and c_proj (attn.c_proj and mlp.c_proj).
  qwen2  tests/fixtures/tiny_llama/qwen2/model: nn.Linear ([out, in]), q/k/v biases, grouped heads,
         tied head; DoRA r=4, alpha=8 on q_proj, v_proj, o_proj and down_proj.

Each adapter has A and B set to 0.1·randn (so B·A ≠ 0) and its magnitude vector scaled by
1 + 0.1·randn (so m ≠ ‖W + s·B·A‖ and every term of DoRA's output shows). Each
tests/fixtures/dora/<case>/ holds:
  adapter/        PEFT's save_pretrained (adapter_config.json with use_dora, adapter_model.safetensors
                  with the lora_magnitude_vector tensors); README.md removed, target_modules sorted,
                  base_model_name_or_path null
  expected.json   generated_by, batch, seq_len, vocab_size, inputs, targets (row 0's first 3 are -1:
                  ignored), logits, loss, grads (the gradients of every lora_A, lora_B and
                  lora_magnitude_vector, keyed by PEFT's parameter name minus ".default" and
                  ".weight" of the magnitude), init_magnitude (what PEFT initialises m to on a fresh
                  DoRA adapter with B = 0: ‖W‖ per output feature, keyed like the grads), adamw and
                  losses (10 AdamW steps with grad-norm clipping, as make_fixtures.py),
                  merged_logits (merge_and_unload on the same inputs), generate (greedy ids of
                  model.generate with the adapter from a fixed prompt), trainable_params and
                  all_params (PEFT's get_nb_trainable_parameters)

Deterministic: fixed seeds, CPU, one thread, deterministic algorithms, eager attention.
"""
import json
import pathlib

import peft
import safetensors
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
B, T = 2, 16
STEPS, LR, WD, MAX_NORM = 10, 1e-2, 0.01, 1.0
PROMPT, NEW_TOKENS = [5, 17, 42, 8, 91], 12
GENERATED_BY = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                f"peft {peft.__version__}, safetensors {safetensors.__version__}; "
                "scripts/make_dora_fixtures.py")
CASES = {
    "gpt2": ("tiny_gpt2/model", dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
    "qwen2": ("tiny_llama/qwen2/model", dict(target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])),
}

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def load_base(model_dir):
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m.eval()


def name_of(n):
    return n.replace(".default", "").removesuffix(".lora_magnitude_vector.weight").removesuffix(
        ".lora_magnitude_vector") + (".lora_magnitude_vector" if "lora_magnitude_vector" in n else "")


def make_case(seed, name, base_dir, targets_kw):
    torch.manual_seed(seed)
    out = ROOT / "dora" / name
    out.mkdir(parents=True, exist_ok=True)
    base = load_base(ROOT / base_dir)
    V = base.config.vocab_size
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True, bias="none",
                      task_type="CAUSAL_LM", **targets_kw)
    peft_model = get_peft_model(base, lora)
    trainable, all_params = peft_model.get_nb_trainable_parameters()
    init_magnitude = {name_of(n): p.detach().flatten().tolist()
                      for n, p in peft_model.named_parameters() if "lora_magnitude_vector" in n}
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in pname:
                p.mul_(1 + 0.1 * torch.randn_like(p))
            elif "lora_" in pname:
                p.copy_(0.1 * torch.randn_like(p))
    peft_model.save_pretrained(out / "adapter")
    (out / "adapter" / "README.md").unlink(missing_ok=True)
    acfg_path = out / "adapter" / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text())
    if isinstance(acfg["target_modules"], list):
        acfg["target_modules"] = sorted(acfg["target_modules"])
    acfg["base_model_name_or_path"] = None  # this machine's path otherwise
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True))
    peft_model.eval()

    tokens = torch.randint(0, V, (B, T + 1))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    targets[0, :3] = -100
    params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in params)

    def loss_of(logits):
        return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)

    logits = peft_model(input_ids=inputs).logits
    loss = loss_of(logits)
    loss.backward()
    grads = {name_of(n): p.grad.detach().flatten().tolist() for n, p in params.items()}
    assert any("magnitude" in k for k in grads)

    with torch.no_grad():
        from_disk = PeftModel.from_pretrained(load_base(ROOT / base_dir), out / "adapter").eval()
        assert torch.equal(from_disk(input_ids=inputs).logits, logits.detach()), f"{name}: saved adapter differs"
        gen = from_disk.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=NEW_TOKENS,
                                 attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long))
        gen = gen[0, len(PROMPT):].tolist()
        merged = from_disk.merge_and_unload()
        merged_logits = merged(input_ids=inputs).logits
        d = (merged_logits - logits).abs().max().item()
        assert d < 1e-4, f"{name}: merged logits differ by {d}"
        plain = load_base(ROOT / base_dir)(input_ids=inputs).logits
        assert (plain - logits).abs().max().item() > 1e-2, f"{name}: the adapter changes nothing"

    opt = torch.optim.AdamW(list(params.values()), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        step_loss = loss_of(peft_model(input_ids=inputs).logits)
        losses.append(step_loss.item())
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_NORM)
        opt.step()

    fixture = {
        "generated_by": GENERATED_BY,
        "base_model": base_dir,
        "batch": B, "seq_len": T, "vocab_size": V,
        "inputs": inputs.flatten().tolist(),
        "targets": [t if t >= 0 else -1 for t in targets.flatten().tolist()],
        "logits": logits.detach().flatten().tolist(),
        "loss": loss.item(),
        "grads": grads,
        "init_magnitude": init_magnitude,
        "adamw": {"lr": LR, "weight_decay": WD, "max_grad_norm": MAX_NORM, "betas": [0.9, 0.999], "eps": 1e-8},
        "losses": losses,
        "merged_logits": merged_logits.flatten().tolist(),
        "generate": {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS, "expected": gen},
        "trainable_params": trainable,
        "all_params": all_params,
    }
    (out / "expected.json").write_text(json.dumps(fixture))
    print(f"{name}: loss {loss.item():.6f}, losses {losses[0]:.4f} -> {losses[-1]:.4f}, merged |diff| {d:.1e}, "
          f"{len(grads)} grads, e.g. {sorted(grads)[:3]}; generate {gen}")


if __name__ == "__main__":
    for i, (name, (base_dir, kw)) in enumerate(CASES.items()):
        make_case(100 + i, name, base_dir, kw)
