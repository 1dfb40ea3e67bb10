#!/usr/bin/env python3
"""Write the LoRA+ parity fixtures: 10 steps of PEFT's LoRA+ optimizer, with PyTorch, transformers
and PEFT.

    pip install torch transformers peft safetensors
    python scripts/make_fixtures.py && python scripts/make_llama_fixtures.py   # the inputs
    python scripts/make_loraplus_fixtures.py   # writes tests/fixtures/loraplus/<case>.json

Each case reuses an existing fixture: its model, its PEFT adapter (non-zero A and B) and the batch
in its expected.json. PEFT's `create_loraplus_optimizer` builds torch.optim.AdamW with B's learning
rate `loraplus_lr_ratio` times A's, and the script records the losses of 10 steps with grad-norm
clipping (dropout 0), like the plain AdamW fixtures. The ratio is 16, so a wrong split between the
groups changes the losses by far more than the tolerance.

Weight decay: every group PEFT builds sets its own `weight_decay` to `loraplus_weight_decay` (0 when
not given; 0 always for group B's 1-D or bias parameters), so the optimizer's own `weight_decay`
keyword reaches no parameter. The crate's `--weight-decay` is therefore PEFT's
`loraplus_weight_decay`, and that is what this script passes.
"""
import json
import pathlib

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.optimizers import create_loraplus_optimizer
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
OUT = ROOT / "loraplus"
CASES = {"tiny_gpt2": ROOT / "tiny_gpt2", "qwen2": ROOT / "tiny_llama" / "qwen2"}
STEPS, LR, RATIO, WD, MAX_NORM = 10, 2e-3, 16.0, 0.01, 1.0

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def make_case(name, src):
    expected = json.loads((src / "expected.json").read_text())
    b, t, v = expected["batch"], expected["seq_len"], expected["vocab_size"]
    inputs = torch.tensor(expected["inputs"]).reshape(b, t)
    targets = torch.tensor(expected["targets"]).reshape(b, t)
    targets[targets < 0] = -100

    base = AutoModelForCausalLM.from_pretrained(src / "model", dtype=torch.float32,
                                                attn_implementation="eager")
    model = PeftModel.from_pretrained(base, src / "adapter", is_trainable=True).eval()

    def loss_of(logits):
        return F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), ignore_index=-100)

    with torch.no_grad():
        first = loss_of(model(input_ids=inputs).logits).item()
    assert abs(first - expected["loss"]) < 1e-5, f"{name}: {first} vs the fixture's {expected['loss']}"

    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
                                    loraplus_weight_decay=WD, betas=(0.9, 0.999), eps=1e-8)
    # The groups as PEFT made them: A at lr, B at lr * ratio, both decayed; nothing else.
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(g["lr"], g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in opt.param_groups]
    assert groups[0][:2] == (LR, WD) and all("lora_A" in n for n in groups[0][2]), groups[0]
    assert groups[1][2] == [], f"{name}: embedding group {groups[1][2]}"
    assert groups[2][:2] == (LR * RATIO, WD) and all("lora_B" in n for n in groups[2][2]), groups[2]
    assert groups[3][2] == [], f"{name}: group B without decay {groups[3][2]}"
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(groups[0][2]) + len(groups[2][2]) == len(params)

    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        step_loss = loss_of(model(input_ids=inputs).logits)
        losses.append(step_loss.item())
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()

    fixture = {
        "generated_by": f"torch {torch.__version__}, peft's create_loraplus_optimizer; "
                        "scripts/make_loraplus_fixtures.py",
        "source": str(src.relative_to(ROOT)),
        "adamw": {"lr": LR, "loraplus_lr_ratio": RATIO, "weight_decay": WD, "max_grad_norm": MAX_NORM,
                  "betas": [0.9, 0.999], "eps": 1e-8},
        "losses": losses,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"{name}: 10 LoRA+ losses {losses[0]:.4f} -> {losses[-1]:.4f} "
          f"(plain AdamW at lr {expected['adamw']['lr']}: {expected['losses'][-1]:.4f})")


for case, src in CASES.items():
    make_case(case, src)
