"""An Ollama `Modelfile` for an exported GGUF: the chat template as Ollama's Go template, the default system
prompt and the stop tokens.

A Jinja chat template cannot be translated into a Go template in general, so the template is recognised by
what it renders, not by its text: `chatml_default_system` renders probe conversations with the tokenizer and
accepts the template when every one comes out as ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n` per
message, then `<|im_start|>assistant\\n`), possibly with a default system turn when the conversation has
none (SmolLM2's "You are a helpful AI assistant named SmolLM, trained by Hugging Face"). That template is
`CHATML_TEMPLATE` plus a `SYSTEM` line: Ollama puts the Modelfile's `SYSTEM` first in a conversation that has
no system message, so both render the same text. Any other template gives a Modelfile without `TEMPLATE`
and a note saying so (Ollama then falls back to its own detection from the GGUF's `tokenizer.chat_template`).
"""

from __future__ import annotations

from dataclasses import dataclass

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
"""Ollama's Go template for ChatML: every message as `<|im_start|>role\\ncontent<|im_end|>\\n`, then the
assistant's turn opened."""
_PROBES = (
    [{"role": "user", "content": "First question?"}],
    [
        {"role": "system", "content": "A system rule."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": " An answer\nin two lines. "},
        {"role": "user", "content": "Second question?"},
    ],
)
"""Conversations `chatml_default_system` renders: mixed case, inner and outer spaces and a line break, so a
template that changes the content (trims it, changes case) is not taken for ChatML."""


def chatml(messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """`messages` in ChatML, as `CHATML_TEMPLATE` renders them."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


class NotChatML(ValueError):
    """The tokenizer's chat template does not render ChatML; the message says where it differs."""


def chatml_default_system(tokenizer) -> str | None:
    """The default system prompt of a ChatML chat template (None when it adds none); `NotChatML` when the
    template renders anything but ChatML on the probe conversations (module docstring)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise NotChatML("the tokenizer has no chat template")
    default_system: str | None = None
    for messages in _PROBES:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        expected = chatml(messages)
        if rendered == expected:
            continue
        head = f"{IM_START}system\n"
        if (
            messages[0]["role"] == "system"
            or not rendered.startswith(head)
            or not rendered.endswith(expected)
        ):
            raise NotChatML(f"it renders {rendered[:60]!r}..., not ChatML ({expected[:40]!r}...)")
        system_turn = rendered[: -len(expected)]
        system = system_turn[len(head) :].removesuffix(f"{IM_END}\n")
        if system_turn != f"{head}{system}{IM_END}\n":
            raise NotChatML(f"its default system turn {system_turn[:60]!r} is not one ChatML message")
        default_system = system
    return default_system


@dataclass(frozen=True)
class Modelfile:
    """An Ollama Modelfile's text and what it could not say."""

    text: str
    note: str | None = None
    """Why there is no TEMPLATE (a chat template that is not ChatML), else None."""


def _quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise ValueError(f'{what} contains """, which an Ollama Modelfile cannot quote')
    return f'"""{value}"""'


def modelfile(tokenizer, gguf_name: str = "model.gguf") -> Modelfile:
    """The Modelfile for `./gguf_name` beside it: `FROM`, `TEMPLATE` and `SYSTEM` (ChatML templates) and a
    `PARAMETER stop` for the end-of-turn token (and `<|im_start|>`, so a ChatML answer stops before a new
    turn)."""
    lines = [
        "# Ollama: ollama create NAME -f Modelfile, then ollama run NAME",
        f"FROM ./{gguf_name}",
    ]
    note = None
    try:
        system = chatml_default_system(tokenizer)
    except NotChatML as error:
        note = f"no TEMPLATE written: the chat template is not ChatML ({error}); Ollama guesses one"
        stops = [tokenizer.eos_token]
    else:
        lines.append(f"TEMPLATE {_quoted(CHATML_TEMPLATE, 'the template')}")
        if system is not None:
            lines.append(f"SYSTEM {_quoted(system, 'the default system prompt')}")
        stops = [tokenizer.eos_token, IM_START]
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {_quoted_stop(stop)}")
    return Modelfile(text="\n".join(lines) + "\n", note=note)


def _quoted_stop(token: str) -> str:
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'
