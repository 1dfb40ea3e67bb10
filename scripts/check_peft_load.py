#!/usr/bin/env python3
"""Load an adapter saved by lora-wgpu with PEFT and compare PyTorch's loss with ours.

    cargo run --release --example finetune
    python scripts/check_peft_load.py target/finetune-adapter

Uses the adapter's base_model_name_or_path (a local Hugging Face GPT-2 directory) and the batch
the example wrote next to the adapter (batch.json).
"""
import json
import pathlib
import sys

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import GPT2LMHeadModel

adapter = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/finetune-adapter")
cfg = json.loads((adapter / "adapter_config.json").read_text())
batch = json.loads((adapter / "batch.json").read_text())
base = GPT2LMHeadModel.from_pretrained(cfg["base_model_name_or_path"]).float().eval()
model = PeftModel.from_pretrained(base, str(adapter)).eval()
b, t = batch["batch"], batch["seq_len"]
inputs = torch.tensor(batch["inputs"]).view(b, t)
targets = torch.tensor(batch["targets"]).view(b, t)
with torch.no_grad():
    logits = model(input_ids=inputs).logits
loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()
ours = batch["loss"]
print(f"PEFT loss {loss:.6f}, lora-wgpu loss {ours:.6f}, |diff| {abs(loss - ours):.2e}")
sys.exit(0 if abs(loss - ours) <= 1e-4 else 1)
