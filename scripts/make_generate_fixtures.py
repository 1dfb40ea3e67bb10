#!/usr/bin/env python3
"""Write what transformers' greedy generation gives on the tiny fixture GPT-2, for tests/generate.rs.

    pip install torch transformers peft safetensors
    python scripts/make_generate_fixtures.py   # needs tests/fixtures/tiny_gpt2 from make_fixtures.py

Writes tests/fixtures/tiny_gpt2/generate.json and a second PEFT adapter,
tests/fixtures/tiny_gpt2/adapter_mlp (r=2, rsLoRA, on mlp.c_fc and attn.c_proj of layer 1 only),
then for a few prompts the token ids of `model.generate(do_sample=False, max_new_tokens=N)` for:
  base          the base model
  adapter       + the fixture's PEFT adapter (tests/fixtures/tiny_gpt2/adapter) at scale 1
  adapter_half  + the same adapter at scale 0.5 (PEFT's LoraLayer.set_scale; checked against
                halving lora_B by hand)
  two_adapters  + adapter at scale 1 and adapter_mlp at scale -0.7, both active at once (PEFT's
                multi-adapter forward sums them)
The last prompt is given max_new_tokens = n_positions - len(prompt), so the sequence fills the
context exactly.

The random tiny model alone repeats one token whatever the context (its ln_f bias dominates the
logits), which would make a weak test; so every case is also run on a "sharp" variant: the same
checkpoint with every matrix (wte, wpe and the four linear weights of each block; not the
LayerNorms or biases) multiplied by SHARP = 8, which tests/generate.rs applies the same way.
Its greedy continuations depend on the context.

Greedy decoding is only comparable across float32 implementations when no step is a near-tie:
prompts are drawn from seeds 0, 1, 2, ... until every step of every case has a gap of at least
MIN_MARGIN between the two largest logits (the seed and the smallest gap are recorded).
Deterministic: fixed seeds, CPU, deterministic algorithms.
"""
import json
import pathlib

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import GPT2LMHeadModel

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_gpt2"
PROMPT_LENS = [1, 6, 13]
NEW_TOKENS = [12, 12, None]  # None: fill the context
MIN_MARGIN = 1e-4
SHARP = 8.0
SCALES = {"adapter_half": 0.5, "mlp": -0.7}

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def base_model(sharp=False):
    m = GPT2LMHeadModel.from_pretrained(ROOT / "model", dtype=torch.float32)
    if sharp:
        with torch.no_grad():
            for p in m.parameters():  # wte is tied to lm_head: scaled once
                if p.dim() == 2:
                    p.mul_(SHARP)
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m.eval()


# The second adapter: made once (deterministically) and saved beside the first.
MLP_DIR = ROOT / "adapter_mlp"
torch.manual_seed(4321)
mlp_cfg = LoraConfig(r=2, lora_alpha=3, lora_dropout=0.0, target_modules=["c_fc", "attn.c_proj"],
                     layers_to_transform=[1], use_rslora=True, fan_in_fan_out=True, bias="none",
                     task_type="CAUSAL_LM")
tmp = get_peft_model(base_model(), mlp_cfg)
with torch.no_grad():
    for name, p in tmp.named_parameters():
        if "lora_" in name:
            p.copy_(0.2 * torch.randn_like(p))
tmp.save_pretrained(MLP_DIR)
(MLP_DIR / "README.md").unlink(missing_ok=True)


def set_scale(model, adapter, scale):
    for m in model.modules():
        if isinstance(m, LoraLayer) and adapter in m.lora_A:
            m.set_scale(adapter, scale)


def models(sharp):
    """Each case: a model whose forward is the configuration to reproduce."""
    out = {"base": base_model(sharp)}
    out["adapter"] = PeftModel.from_pretrained(base_model(sharp), ROOT / "adapter").eval()
    half = PeftModel.from_pretrained(base_model(sharp), ROOT / "adapter").eval()
    set_scale(half, "default", SCALES["adapter_half"])
    out["adapter_half"] = half
    two = PeftModel.from_pretrained(base_model(sharp), ROOT / "adapter").eval()
    two.load_adapter(MLP_DIR, adapter_name="mlp")
    two.base_model.set_adapter(["default", "mlp"])
    set_scale(two, "mlp", SCALES["mlp"])
    out["two_adapters"] = two.eval()
    return out


VARIANTS = {"plain": models(False), "sharp": models(True)}
MODELS = VARIANTS["plain"]
N_POS = MODELS["base"].config.n_positions
V = MODELS["base"].config.vocab_size

# set_scale(0.5) is what halving lora_B by hand gives.
with torch.no_grad():
    by_hand = PeftModel.from_pretrained(base_model(), ROOT / "adapter").eval()
    for name, p in by_hand.named_parameters():
        if "lora_B" in name:
            p.mul_(0.5)
    probe = torch.arange(10).unsqueeze(0) % V
    d = (by_hand(probe).logits - MODELS["adapter_half"](probe).logits).abs().max().item()
    assert d < 1e-6, f"set_scale(0.5) differs from halving lora_B by {d}"
    # The second adapter is active: the two-adapter model differs from the one-adapter model.
    d = (MODELS["two_adapters"](probe).logits - MODELS["adapter"](probe).logits).abs().max().item()
    assert d > 1e-3, "the second adapter changed nothing"


@torch.no_grad()
def greedy(model, prompt, n):
    """Full-sequence greedy loop; returns the new ids and the smallest top-2 logit gap."""
    ids = list(prompt)
    margin = float("inf")
    for _ in range(n):
        logits = model(torch.tensor([ids])).logits[0, -1]
        top = torch.topk(logits, 2)
        margin = min(margin, (top.values[0] - top.values[1]).item())
        ids.append(int(top.indices[0]))
    return ids[len(prompt):], margin


for seed in range(1000):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in PROMPT_LENS]
    cases, smallest = [], float("inf")
    for prompt, n in zip(prompts, NEW_TOKENS):
        n = n if n is not None else N_POS - len(prompt)
        case = {"prompt": prompt, "max_new_tokens": n, "expected": {}}
        for variant, ms in VARIANTS.items():
            case["expected"][variant] = {}
            for name, model in ms.items():
                with torch.no_grad():
                    hf = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n,
                                        attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
                hf = hf[0, len(prompt):].tolist()
                mine, margin = greedy(model, prompt, n)
                assert hf == mine, f"{variant} {name}: generate() {hf} vs the full-sequence loop {mine}"
                smallest = min(smallest, margin)
                case["expected"][variant][name] = hf
        cases.append(case)
    if smallest >= MIN_MARGIN:
        break
else:
    raise SystemExit("no seed below 1000 gives prompts without near-ties")

fixture = {
    "generated_by": f"torch {torch.__version__}, transformers, peft; scripts/make_generate_fixtures.py",
    "prompt_seed": seed,
    "min_top2_margin": smallest,
    "scales": SCALES,
    "sharp": SHARP,
    "n_positions": N_POS,
    "cases": cases,
}
(ROOT / "generate.json").write_text(json.dumps(fixture, indent=1))
print(f"wrote {ROOT / 'generate.json'} (prompt seed {seed}, smallest top-2 gap {smallest:.2e})")
for c in cases:
    for variant, e in c["expected"].items():
        print(variant, c["prompt"], {k: v[:10] for k, v in e.items()})
