#!/usr/bin/env python3
"""Write the chat-template renderings that tests/chat.rs compares lora-wgpu's renderer against.

    pip install jinja2
    python scripts/make_chat_fixtures.py       # writes tests/fixtures/chat/renderings.json

Renders the templates in tests/fixtures/chat/*.jinja (the `chat_template` strings of SmolLM2,
Qwen2.5, Qwen3 and Llama 3.2's tokenizer_config.json) with Jinja2 set up as transformers'
`apply_chat_template` does: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
with loop controls, `raise_exception`, `strftime_now`, a `tojson` filter that is
`json.dumps(ensure_ascii=False)`, and the variables `messages`, `bos_token`, `eos_token`,
`add_generation_prompt` and `tools` (None). `strftime_now` reads a fixed time so that the output
does not depend on the day it is made.
"""
import datetime
import json
import pathlib

import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "chat"

# 2024-07-26 12:34:56 UTC; tests/chat.rs gives ChatTemplate::with_time the same.
NOW = 1_721_997_296

# (bos_token, eos_token) of each model's tokenizer_config.json.
MODELS = {
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "qwen2.5": (None, "<|im_end|>"),
    "qwen3": (None, "<|im_end|>"),
    "llama3.2": ("<|begin_of_text|>", "<|eot_id|>"),
}


def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "single": [m("user", "Hello!"), m("assistant", "Hi there.")],
    "multi": [
        m("system", "You are terse."),
        m("user", "What is 2+2?"),
        m("assistant", "4"),
        m("user", "And 3+3?"),
        m("assistant", "6"),
    ],
    "tool": [
        m("user", "Weather in Paris?"),
        m("assistant", "Let me check."),
        m("tool", '{"temp": 20}'),
        m("tool", "sunny"),
        m("assistant", "20 degrees and sunny."),
    ],
    "spaces": [
        m("system", "  Be kind. "),
        m("user", " héllo\n\n"),
        m("assistant", " ünïcode  answer \n"),
    ],
    "think": [
        m("user", "q1"),
        m("assistant", "<think>\nr1\n</think>\n\na1"),
        m("user", "q2"),
        m("assistant", "<think>\nr2\n</think>\n\na2"),
    ],
}


class TemplateError(Exception):
    pass


def raise_exception(message):
    raise TemplateError(message)


def strftime_now(fmt):
    return datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).strftime(fmt)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def environment():
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    env = environment()
    cases = []
    for name, (bos, eos) in MODELS.items():
        template = env.from_string((DIR / f"{name}.jinja").read_text())
        tokens = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
        for conv_name, conv in CONVERSATIONS.items():
            # Every prefix with the generation prompt, and the whole conversation without it:
            # the renderings that finding the assistant turns relies on.
            for k in range(1, len(conv) + 1):
                for gen in (True, False):
                    if not gen and k < len(conv) and conv[k - 1]["role"] != "assistant":
                        continue
                    text = template.render(
                        messages=conv[:k], add_generation_prompt=gen, tools=None, **tokens
                    )
                    cases.append(
                        {
                            "template": name,
                            "conversation": conv_name,
                            "messages": conv[:k],
                            "add_generation_prompt": gen,
                            "text": text,
                        }
                    )
    out = DIR / "renderings.json"
    out.write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(cases)} renderings -> {out}")


if __name__ == "__main__":
    main()
