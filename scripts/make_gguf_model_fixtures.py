#!/usr/bin/env python3
"""Write the GGUF model fixtures tests/gguf_model.rs compares against: tiny random models written
as llama.cpp's converter (convert_hf_to_gguf.py) writes them, with the `gguf` package, and
transformers' logits and loss on each file as transformers' own GGUF loader reads it
(`from_pretrained(dir, gguf_file=...)`: it dequantizes, un-permutes llama's q/k rows and
transposes GPT-2's linear weights back).

    pip install torch transformers gguf tokenizers numpy
    python scripts/make_gguf_model_fixtures.py   # writes tests/fixtures/gguf_model/

Files (each model random, drawn from its own seed; RMSNorm / LayerNorm weights 1 + 0.3·randn,
biases 0.1·randn, matrices std 0.1, so a mistake in any tensor shows in the logits):

  llama-q8_0.gguf  general.architecture llama: hidden 64, intermediate 128, 2 layers, 4 heads over
                   2 KV heads, untied output; every 2-D tensor Q8_0, norms F32. q and k rows
                   permuted as the converter's LlamaModel does (permute(w, n_head) for q,
                   permute(w, n_head_kv) for k).
  llama-q4_0.gguf  the same shape with a tied head (no output.weight); 2-D tensors Q4_0 except
                   ffn_down at Q5_0 (mixed types per tensor, as llama-quantize's Q4_K_M mixes).
  llama-f16.gguf   untied, 1 layer; 2-D tensors F16.
  qwen3-q8_0.gguf  general.architecture qwen3: per-head q/k RMSNorm (attn_q_norm, attn_k_norm),
                   2 heads over 1 KV head with head_dim 128 (Qwen3Config's default:
                   transformers' GGUF loader reads no head_dim for qwen3), untied; Q8_0; no
                   permutation (the converter's Qwen2/Qwen3 models do none).
  gpt2-q8_0.gguf   general.architecture gpt2: n_embd 32, 2 layers, 4 heads, context 1024
                   (transformers' GPT-2 takes n_positions = 1024 whatever the file says), Conv1D
                   weights transposed to [out, in] and output.weight a copy of token_embd, as
                   the converter's GPT2Model writes them; 2-D tensors Q8_0.
  gpt2-f16.gguf    the same shape, 2-D tensors F16.

Tokenizers: a byte-level BPE trained with the `tokenizers` package on a paragraph of English
(vocabulary 320 with the special tokens), written into each file as tokenizer.ggml.* (model
"gpt2", tokens, token_type, merges, bos/eos ids) the way the converter's _set_vocab_gpt2 does,
and beside them as the tokenizer.json it came from:
  llama-tokenizer.json  Llama 3's pre-tokenizer (Split on its regex + ByteLevel) and ignore_merges,
                        pre "llama-bpe", <|begin_of_text|> added at the start of a prompt
  qwen3-tokenizer.json  Qwen2's regex (digits one by one), pre "qwen2"
  gpt2-tokenizer.json   GPT-2's ByteLevel pre-tokenizer, pre "gpt-2"

expected.json: generated_by; inputs (batch 1 x seq_len 8 ids) and targets (the first 2 are -1:
ignored); per file: logits (rounded to 6 significant digits) and loss from transformers;
per tokenizer: a few strings with the ids its tokenizer.json gives (encode without special
tokens) and with them (encode_prompt).

Checks: the F16 files read back by transformers equal the models written, to f16's precision
(so the permutation and transposition are the converter's and transformers undoes them).

Deterministic: fixed seeds, CPU, one thread, eager attention.
"""
import json
import pathlib

import gguf
import numpy as np
import tokenizers
import torch
import torch.nn.functional as F
import transformers
from gguf import GGMLQuantizationType as Q
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf_model"
B, T, V = 1, 8, 320
GENERATED_BY = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                f"gguf {gguf.__version__ if hasattr(gguf, '__version__') else '0.19'}, "
                f"tokenizers {tokenizers.__version__}; scripts/make_gguf_model_fixtures.py")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = """The quick brown fox jumps over the lazy dog. A language model reads text as tokens,
and a tokenizer learns which pieces of words are common. There are 1234 apples and 56 pears in
the store; the store opens at 9:30 and closes at 17:45. Fine-tuning with LoRA trains two small
matrices beside each frozen weight, so the base model stays as it was. It's what they've said,
and we'll see what we'd find. Quantized weights take less memory: eight bits, four bits.
""" * 4
SAMPLES = ["Hello world", "The quick brown fox", "It's 2024, isn't it?", "  two  spaces\nand 12345",
           "LoRA on GGUF: q8_0, q4_0!"]
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def train_tokenizer(kind):
    """A byte-level BPE of vocabulary V; the special tokens first (ids 0, 1)."""
    specials = ["<|endoftext|>"] if kind == "gpt2" else (
        ["<|begin_of_text|>", "<|end_of_text|>"] if kind == "llama" else ["<|endoftext|>", "<|im_end|>"])
    tok = tokenizers.Tokenizer(models.BPE())
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        pre = "gpt-2"
    else:
        regex = LLAMA3_REGEX if kind == "llama" else QWEN2_REGEX
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        pre = "llama-bpe" if kind == "llama" else "qwen2"
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=V, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    if kind == "llama":  # Llama 3's tokenizer.json takes a whole word in the vocabulary as it is
        spec = json.loads(tok.to_str())
        spec["model"]["ignore_merges"] = True
        tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", 0)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    assert tok.get_vocab_size() == V, tok.get_vocab_size()
    return tok, specials, pre


def write_vocab(w, tok, specials, pre):
    """tokenizer.ggml.* as the converter's _set_vocab_gpt2 writes them."""
    vocab = tok.get_vocab()
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1 if len(specials) > 1 else 0)
    if pre == "llama-bpe":
        w.add_add_bos_token(True)


def perturb(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p)) if name.endswith("weight") else p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py's LlamaModel.permute: interleaved rotary halves for ggml's RoPE."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def add(w, name, array, ty):
    """One tensor: 1-D always F32 (the converter keeps norms and biases F32), 2-D at `ty`."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or ty == Q.F32:
        w.add_tensor(name, array)
    elif ty == Q.F16:
        w.add_tensor(name, array.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(array, ty), raw_dtype=ty)


def write_llama_family(path, arch, model, types, vocab):
    """A Llama / Qwen3 model as the converter writes it; `types(name)` is each 2-D tensor's type."""
    cfg = model.config
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny random {arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    else:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    write_vocab(w, *vocab)
    add(w, "token_embd.weight", sd["model.embed_tokens.weight"], types("token_embd"))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = permute(q, cfg.num_attention_heads, cfg.num_attention_heads), permute(
                k, cfg.num_attention_heads, cfg.num_key_value_heads)
        tensors = [("attn_norm", sd[p + "input_layernorm.weight"]), ("attn_q", q), ("attn_k", k),
                   ("attn_v", sd[p + "self_attn.v_proj.weight"]),
                   ("attn_output", sd[p + "self_attn.o_proj.weight"]),
                   ("ffn_norm", sd[p + "post_attention_layernorm.weight"]),
                   ("ffn_gate", sd[p + "mlp.gate_proj.weight"]), ("ffn_up", sd[p + "mlp.up_proj.weight"]),
                   ("ffn_down", sd[p + "mlp.down_proj.weight"])]
        if arch == "qwen3":
            tensors += [("attn_q_norm", sd[p + "self_attn.q_norm.weight"]),
                        ("attn_k_norm", sd[p + "self_attn.k_norm.weight"])]
        for name, array in tensors:
            add(w, f"blk.{i}.{name}.weight", array, types(name))
    add(w, "output_norm.weight", sd["model.norm.weight"], Q.F32)
    if not cfg.tie_word_embeddings:
        add(w, "output.weight", sd["lm_head.weight"], types("output"))
    finish(w)
    return model


def write_gpt2(path, model, ty, vocab):
    cfg = model.config
    sd = {k.removeprefix("transformer."): v.detach().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name("tiny random gpt2")
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.n_positions)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    write_vocab(w, *vocab)
    add(w, "token_embd.weight", sd["wte.weight"], ty)
    add(w, "position_embd.weight", sd["wpe.weight"], ty)
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        for gg, hf in [("attn_norm", "ln_1"), ("ffn_norm", "ln_2")]:
            add(w, f"blk.{i}.{gg}.weight", sd[h + hf + ".weight"], Q.F32)
            add(w, f"blk.{i}.{gg}.bias", sd[h + hf + ".bias"], Q.F32)
        for gg, hf in [("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"),
                       ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj")]:
            add(w, f"blk.{i}.{gg}.weight", sd[h + hf + ".weight"].T, ty)  # Conv1D [in, out] -> [out, in]
            add(w, f"blk.{i}.{gg}.bias", sd[h + hf + ".bias"], Q.F32)
    add(w, "output_norm.weight", sd["ln_f.weight"], Q.F32)
    add(w, "output_norm.bias", sd["ln_f.bias"], Q.F32)
    add(w, "output.weight", sd["wte.weight"], ty)  # the converter writes the tied head again
    finish(w)
    return model


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def round6(xs):
    return [float(f"{x:.6g}") for x in xs]


def main():
    ROOT.mkdir(parents=True, exist_ok=True)
    for old in ROOT.glob("*.gguf"):
        old.unlink()
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(2, V, (B, T + 1), generator=g)
    inputs, targets = tokens[:, :-1].clone(), tokens[:, 1:].clone()
    targets[0, :2] = -100  # ignored positions (a masked prompt)
    vocabs = {kind: train_tokenizer(kind) for kind in ("llama", "qwen3", "gpt2")}
    llama = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                 rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False, bos_token_id=0,
                 eos_token_id=1)
    fixed = lambda ty: (lambda name: ty)
    cases = {
        "llama-q8_0": lambda p: write_llama_family(
            p, "llama", perturb(LlamaForCausalLM(LlamaConfig(**llama, tie_word_embeddings=False)), 1),
            fixed(Q.Q8_0), vocabs["llama"]),
        "llama-q4_0": lambda p: write_llama_family(
            p, "llama", perturb(LlamaForCausalLM(LlamaConfig(**llama, tie_word_embeddings=True)), 2),
            lambda name: Q.Q5_0 if name == "ffn_down" else Q.Q4_0, vocabs["llama"]),
        "llama-f16": lambda p: write_llama_family(
            p, "llama", perturb(LlamaForCausalLM(LlamaConfig(
                **{**llama, "num_hidden_layers": 1}, tie_word_embeddings=False)), 3),
            fixed(Q.F16), vocabs["llama"]),
        "qwen3-q8_0": lambda p: write_llama_family(
            p, "qwen3", perturb(Qwen3ForCausalLM(Qwen3Config(
                vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=128, max_position_embeddings=64,
                rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=1000000.0,
                bos_token_id=0, eos_token_id=1)), 4),
            fixed(Q.Q8_0), vocabs["qwen3"]),
        "gpt2-q8_0": lambda p: write_gpt2(
            p, perturb(GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4,
                                                  bos_token_id=0, eos_token_id=0)), 5),
            Q.Q8_0, vocabs["gpt2"]),
        "gpt2-f16": lambda p: write_gpt2(
            p, perturb(GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4,
                                                  bos_token_id=0, eos_token_id=0)), 6),
            Q.F16, vocabs["gpt2"]),
    }
    expected = {"generated_by": GENERATED_BY, "batch": B, "seq_len": T, "vocab_size": V,
                "inputs": inputs.flatten().tolist(),
                "targets": [t if t >= 0 else -1 for t in targets.flatten().tolist()],
                "models": {}, "tokenizers": {}}
    for name, write in cases.items():
        path = ROOT / f"{name}.gguf"
        source = write(path)
        model = AutoModelForCausalLM.from_pretrained(ROOT, gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        if name.endswith("f16"):  # read back un-permuted / transposed, to f16's precision
            got = model.state_dict()
            for k, v in source.state_dict().items():
                if k in got and not k.endswith(".attn.bias"):
                    assert torch.allclose(got[k], v, rtol=1e-3, atol=1e-4), f"{name}: {k} read back differs"
        with torch.no_grad():
            logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
        expected["models"][name] = {"architecture": model.config.model_type,
                                    "loss": loss.item(), "logits": round6(logits.flatten().tolist())}
        print(f"{name}: {path.stat().st_size} bytes, {model.config.model_type}, "
              f"tied {model.config.tie_word_embeddings}, loss {loss.item():.6f}")
    for kind, (tok, _, pre) in vocabs.items():
        tok.save(str(ROOT / f"{kind}-tokenizer.json"))
        expected["tokenizers"][kind] = {
            "pre": pre, "cases": [{"text": s, "ids": tok.encode(s, add_special_tokens=False).ids,
                                   "prompt_ids": tok.encode(s).ids} for s in SAMPLES]}
    (ROOT / "expected.json").write_text(json.dumps(expected))
    total = sum(f.stat().st_size for f in ROOT.iterdir())
    print(f"{total} bytes in {ROOT}")


if __name__ == "__main__":
    main()
