#!/usr/bin/env python3
"""Check a model merged by lora-wgpu against the base model + adapter in PEFT.

    cargo test --release --test merge      # writes target/merged-tiny-gpt2 from the fixture
    python scripts/check_merge.py           # fixture base + adapter vs that merged dir
    python scripts/check_merge.py BASE_DIR ADAPTER_DIR MERGED_DIR

Loads MERGED_DIR with transformers' GPT2LMHeadModel.from_pretrained, BASE_DIR + ADAPTER_DIR with
PEFT's PeftModel.from_pretrained (unmerged: the LoRA path runs beside the frozen weights), runs
both on the same random batch and prints the max |logit diff|, and PASS (<= 1e-4) or FAIL.
It also checks that the merged directory's tokenizer loads with AutoTokenizer and encodes like
its tokenizer.json, and, for reference, how far PEFT's own merge_and_unload is from the
unmerged model.
"""
import pathlib
import sys

import torch
from peft import PeftModel
from transformers import AutoTokenizer, GPT2LMHeadModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_gpt2"
base_dir, adapter_dir, merged_dir = (
    [pathlib.Path(a) for a in sys.argv[1:4]]
    if len(sys.argv) >= 4
    else [FIXTURE / "model", FIXTURE / "adapter", ROOT / "target" / "merged-tiny-gpt2"]
)
TOL = 1e-4

torch.manual_seed(0)
merged = GPT2LMHeadModel.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
base = GPT2LMHeadModel.from_pretrained(str(base_dir), dtype=torch.float32).eval()
peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()

cfg = merged.config
batch, seq = 2, min(cfg.n_positions, 32)
inputs = torch.randint(0, cfg.vocab_size, (batch, seq))
with torch.no_grad():
    want = peft_model(input_ids=inputs).logits
    got = merged(input_ids=inputs).logits
    plain = peft_model.get_base_model()
    with peft_model.disable_adapter():
        base_logits = plain(input_ids=inputs).logits
diff = (got - want).abs().max().item()
adapter_effect = (base_logits - want).abs().max().item()

peft_merged = PeftModel.from_pretrained(
    GPT2LMHeadModel.from_pretrained(str(base_dir), dtype=torch.float32), str(adapter_dir)
).merge_and_unload().eval()
with torch.no_grad():
    peft_diff = (peft_merged(input_ids=inputs).logits - want).abs().max().item()

tok = AutoTokenizer.from_pretrained(str(merged_dir))
text = "Hello world, merged <|endoftext|> café"
from tokenizers import Tokenizer  # noqa: E402

raw = Tokenizer.from_file(str(merged_dir / "tokenizer.json")).encode(text).ids
tok_ok = tok.encode(text) == raw

print(f"merged dir:  {merged_dir}")
print(f"base + adapter (PEFT, unmerged) vs lora-wgpu merged: max |logit diff| {diff:.3e}")
print(f"  (PEFT's own merge_and_unload vs unmerged: {peft_diff:.3e}; adapter's effect on the logits: {adapter_effect:.3e})")
print(f"tokenizer: AutoTokenizer {type(tok).__name__} encodes like tokenizer.json: {tok_ok}")
ok = diff <= TOL and tok_ok and adapter_effect > 10 * TOL
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
