#!/usr/bin/env python3
"""Write the fixtures the Rust parity tests compare against, with PyTorch, transformers and PEFT.

    pip install torch transformers peft safetensors
    python scripts/make_fixtures.py            # writes tests/fixtures/tiny_gpt2/

A tiny random GPT-2 (2 layers, 48 channels, 4 heads, vocabulary 99: small files, and a vocabulary
that is not a multiple of 4 so the odd-shape kernel paths run), a PEFT LoRA adapter on
c_attn,c_proj with non-zero A and B, one batch, and what PyTorch computes for it: the logits, the
loss, every LoRA gradient, and the losses of 10 AdamW steps with grad-norm clipping (dropout 0).
"""
import json
import pathlib

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_gpt2"
B, T, V = 2, 16, 99
STEPS, LR, WD, MAX_NORM = 10, 1e-2, 0.01, 1.0

torch.manual_seed(1234)
config = GPT2Config(
    vocab_size=V, n_positions=32, n_embd=48, n_layer=2, n_head=4,
    activation_function="gelu_new", layer_norm_epsilon=1e-5,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
)
model = GPT2LMHeadModel(config).float()
# Non-trivial LayerNorm and bias values, so a wrong one shows.
with torch.no_grad():
    for name, p in model.named_parameters():
        if "ln_" in name or name.endswith("bias"):
            p.add_(0.1 * torch.randn_like(p))
model.eval()
model.save_pretrained(OUT / "model", safe_serialization=True)
(OUT / "model" / "generation_config.json").unlink(missing_ok=True)

lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_proj"],
                  fan_in_fan_out=True, bias="none", task_type="CAUSAL_LM")
peft_model = get_peft_model(model, lora)
with torch.no_grad():
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            p.copy_(0.1 * torch.randn_like(p))
peft_model.save_pretrained(OUT / "adapter")
(OUT / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub
peft_model.eval()

tokens = torch.randint(0, V, (B, T + 1))
inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
targets[0, :3] = -100  # ignored positions (a masked prompt)

lora_params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}


def loss_of(logits):
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)


logits = peft_model(input_ids=inputs).logits
loss = loss_of(logits)
loss.backward()
grads = {n.replace(".default", ""): p.grad.detach().flatten().tolist() for n, p in lora_params.items()}

opt = torch.optim.AdamW(list(lora_params.values()), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
losses = []
for _ in range(STEPS):
    opt.zero_grad()
    step_loss = loss_of(peft_model(input_ids=inputs).logits)
    losses.append(step_loss.item())
    step_loss.backward()
    torch.nn.utils.clip_grad_norm_(list(lora_params.values()), MAX_NORM)
    opt.step()

fixture = {
    "generated_by": f"torch {torch.__version__}, transformers, peft; scripts/make_fixtures.py",
    "batch": B, "seq_len": T, "vocab_size": V,
    "inputs": inputs.flatten().tolist(),
    "targets": [t if t >= 0 else -1 for t in targets.flatten().tolist()],
    "logits": logits.detach().flatten().tolist(),
    "loss": loss.item(),
    "grads": grads,
    "adamw": {"lr": LR, "weight_decay": WD, "max_grad_norm": MAX_NORM, "betas": [0.9, 0.999], "eps": 1e-8},
    "losses": losses,
}
(OUT / "expected.json").write_text(json.dumps(fixture))
print(f"wrote {OUT}: loss {loss.item():.6f}, 10-step losses {losses[0]:.4f} -> {losses[-1]:.4f}")

# GPT-2 tokenizer: transformers' implementation over the vocabulary the crate bundles.
from transformers import GPT2TokenizerFast  # noqa: E402

SRC = pathlib.Path(__file__).resolve().parent.parent / "src" / "tokenizer" / "gpt2"
tok = GPT2TokenizerFast(vocab=str(SRC / "encoder.json"), merges=str(SRC / "vocab.bpe"))
assert tok.encode("Hello world") == [15496, 995], "vocabulary did not load"
texts = [
    "Hello world",
    " Hello world!",
    "LoRA fine-tunes GPT-2 on any GPU, through wgpu.",
    "Numbers 1234567 and  double  spaces\nnew lines\t tabs",
    "Unicode: café, naïve, 日本語, emoji 🙂",
    "<|endoftext|>The end.<|endoftext|>",
    "",
]
cases = [{"text": t, "ids": tok.encode(t)} for t in texts]
(OUT.parent / "gpt2_tokenizer.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1))
print(f"wrote {OUT.parent / 'gpt2_tokenizer.json'}")
