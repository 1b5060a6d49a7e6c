"""A Llama-architecture model and its tokenizer as one GGUF file: what llama.cpp and Ollama run.

The inverse of transformers' GGUF loader (`from_pretrained(..., gguf_file=)`, which
`localdpo.models.loading.load_gguf_model` uses), written as llama.cpp's `convert_hf_to_gguf.py` writes a Llama model:

- tensor names from gguf's own `TensorNameMap` (`model.layers.0.self_attn.q_proj.weight` ->
  `blk.0.attn_q.weight`); no `output.weight` when the head is tied to the embedding (the loader reads its
  absence as `tie_word_embeddings`);
- the rows of the query and key projections permuted (`llama_permute`), because llama.cpp rotates
  interleaved pairs where transformers rotates halves; transformers' `_reverse_permute_weights` undoes it;
- the hyperparameters under `llama.*`, and the tokenizer under `tokenizer.ggml.*` (vocabulary, token types,
  merges, special token ids) with the chat template as `tokenizer.chat_template`;
- `f32`, `f16` or `q8_0` (`OutType`): vectors (the norms) stay F32 as llama.cpp keeps them.

Supported: `model_type` llama with default RoPE, SiLU and no biases (SmolLM2 and its family), with SmolLM2's
byte-level BPE vocabulary, whose llama.cpp pre-tokenizer is `smollm`. Anything else is an `ExportError`
naming what is supported (export `--format hf`, then convert with llama.cpp's own converter).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch

SMOLLM_PRE_TOKENIZER = "smollm"
"""llama.cpp's name for SmolLM2's pre-tokenizer (digits split one by one, then GPT-2's byte-level rules)."""
Q8_0_BLOCK = 32
"""Values per Q8_0 block (one fp16 scale + 32 int8): a row whose length it does not divide is written F16."""


class ExportError(ValueError):
    """A model, tokenizer or output `localdpo export` cannot write; one line naming what it supports."""


class OutType(str, Enum):
    """Tensor type of the matrices in a written GGUF file (vectors are always F32)."""

    F32 = "f32"
    F16 = "f16"
    Q8_0 = "q8_0"

    @property
    def file_type(self) -> int:
        """`general.file_type`: llama.cpp's `LlamaFileType` of the file."""
        import gguf

        return {
            OutType.F32: gguf.LlamaFileType.ALL_F32,
            OutType.F16: gguf.LlamaFileType.MOSTLY_F16,
            OutType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
        }[self]


def llama_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """The rows of a query or key projection in llama.cpp's order (its converter's `LlamaModel.permute`).

    Transformers' RoPE rotates the two halves of each head, (x_i, x_{i + d/2}); llama.cpp rotates adjacent
    pairs, (x_{2i}, x_{2i+1}). Within each head, row `h*d + j*(d/2) + i` moves to `h*d + 2i + j`, so the pair
    llama.cpp rotates holds the same two values. Example, one head of d = 4 (rows 0..3): [0, 2, 1, 3].
    `n_head` is the head count of this projection (`num_key_value_heads` for the key).

    Shape: weight (n_head * d, hidden) -> (n_head * d, hidden).
    """
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])  # (H, 2, d/2, hidden)
        .transpose(1, 2)  # (H, d/2, 2, hidden)
        .reshape(weight.shape)  # (H * d, hidden)
    )


def _rope_parameters(config) -> dict:
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def check_llama(config) -> None:
    """Nothing when `config` is a Llama model this module writes; `ExportError` naming what is not."""
    supported = "GGUF export writes Llama-architecture models (model_type 'llama': SmolLM2 and its family)"
    hint = "export --format hf and convert that with llama.cpp's convert_hf_to_gguf.py"
    if config.model_type != "llama":
        raise ExportError(f"{supported}, not model_type {config.model_type!r}; {hint}")
    rope_type = _rope_parameters(config).get("rope_type", "default")
    unsupported = [
        f"rope_type {rope_type!r}" if rope_type != "default" else None,
        "attention_bias" if getattr(config, "attention_bias", False) else None,
        "mlp_bias" if getattr(config, "mlp_bias", False) else None,
        f"hidden_act {config.hidden_act!r}" if config.hidden_act != "silu" else None,
    ]
    unsupported = [u for u in unsupported if u]
    if unsupported:
        raise ExportError(
            f"{supported} with default RoPE, SiLU and no biases; this one has {', '.join(unsupported)}; {hint}"
        )


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _tensor_type(outtype: OutType, array: np.ndarray):
    """`(array to write, raw GGML type or None)`: F32 vectors; matrices in `outtype` (Q8_0 packed here)."""
    import gguf

    if array.ndim == 1 or outtype is OutType.F32:
        return array.astype(np.float32), None
    if outtype is OutType.Q8_0 and array.shape[-1] % Q8_0_BLOCK == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(array.astype(np.float32), qtype), qtype  # (rows, bytes per row) uint8
    return array.astype(np.float16), None


def gguf_tensors(model, outtype: OutType) -> Iterator[tuple[str, np.ndarray, object]]:
    """`(GGUF name, array, raw GGML type or None)` of every weight of the Llama `model`, as llama.cpp names,
    permutes and stores them; the tied head is left out."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"no GGUF name for tensor {name!r} of this Llama model; export --format hf")
        weight = tensor.detach().to(torch.float32).cpu()
        if name.endswith("self_attn.q_proj.weight"):
            weight = llama_permute(weight, config.num_attention_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            weight = llama_permute(weight, config.num_key_value_heads)
        array, raw_type = _tensor_type(outtype, weight.numpy())
        yield gguf_name, array, raw_type


@dataclass(frozen=True)
class GgufVocab:
    """A tokenizer as llama.cpp's `tokenizer.ggml.*` keys hold it."""

    tokens: list[str]
    """Every id's token, in the byte-level spelling of `tokenizer.json` (`Ġthe`); `[PAD<id>]` for ids past the
    tokenizer's vocabulary (a model whose embedding has spare rows)."""
    token_types: list[int]
    """gguf `TokenType` per id: NORMAL, CONTROL (special added tokens), USER_DEFINED, UNUSED (padding)."""
    merges: list[str]
    """BPE merges as `"left right"`, in rank order."""
    special_ids: dict[str, int]
    """`bos`, `eos`, `unk`, `pad` -> token id (those the tokenizer has)."""
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def _vocab_and_merges(tokenizer) -> tuple[dict[str, int], list[str]]:
    """The BPE vocabulary and merges (`"left right"`) of a fast tokenizer's `tokenizer.json` model."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ExportError(
            f"GGUF export writes byte-level BPE tokenizers (SmolLM2's); this one is {model.get('type')!r}"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def check_smollm_vocab(tokenizer) -> None:
    """Nothing when `tokenizer` has SmolLM2's vocabulary and merges, which llama.cpp pre-tokenizes as
    `smollm`; `ExportError` otherwise (another vocabulary needs its own pre-tokenizer name)."""
    from localdpo.models.embedded import embedded_tokenizer

    if _vocab_and_merges(tokenizer) != _vocab_and_merges(embedded_tokenizer()):
        raise ExportError(
            "GGUF export writes SmolLM2's tokenizer (byte-level BPE, llama.cpp pre-tokenizer "
            f"'{SMOLLM_PRE_TOKENIZER}'); this model's vocabulary or merges differ: export --format hf and "
            "convert that with llama.cpp's convert_hf_to_gguf.py"
        )


def _adds_token(tokenizer, token_id: int | None, *, first: bool) -> bool:
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0 if first else -1] == token_id


def gguf_vocab(tokenizer, vocab_size: int) -> GgufVocab:
    """`tokenizer` as llama.cpp stores it (its converter's `get_vocab_base`), for a model of `vocab_size` ids."""
    import gguf

    check_smollm_vocab(tokenizer)
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    if max(by_id) >= vocab_size:
        raise ExportError(f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} rows")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.NORMAL))
    special = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    template = getattr(tokenizer, "chat_template", None)
    return GgufVocab(
        tokens=tokens,
        token_types=types,
        merges=_vocab_and_merges(tokenizer)[1],
        special_ids={k: v for k, v in special.items() if v is not None},
        add_bos=_adds_token(tokenizer, tokenizer.bos_token_id, first=True),
        add_eos=_adds_token(tokenizer, tokenizer.eos_token_id, first=False),
        chat_template=template if isinstance(template, str) else None,
    )


def write_gguf(
    model, tokenizer, path: str | os.PathLike, outtype: OutType | str = OutType.F16, *, name: str = "model"
) -> Path:
    """Write the Llama `model` and its `tokenizer` as the GGUF file `path` (replaced if present); returns it.

    The caller makes the write atomic (`localdpo.export.exporter` writes into a temporary directory it renames).
    """
    import gguf

    outtype = OutType(outtype)
    config = model.config
    check_llama(config)
    vocab = gguf_vocab(tokenizer, config.vocab_size)  # before any byte is written
    rope_theta = _rope_parameters(config).get("rope_theta", getattr(config, "rope_theta", 10000.0))
    head_dim = _head_dim(config)

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(outtype.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(SMOLLM_PRE_TOKENIZER)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)

    for tensor_name, array, raw_type in gguf_tensors(model, outtype):
        writer.add_tensor(tensor_name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


ROUND_TRIP_PROMPT = "What is the capital of France?"
"""The fixed user turn `read_back` compares the exported file with the model on."""
ROUND_TRIP_TOKENS = 24
"""Greedy tokens `read_back` compares."""
RELATIVE_TOLERANCE = {OutType.F32: 0.0, OutType.F16: 0.01, OutType.Q8_0: 0.1}
"""Largest |logit difference| `read_back` accepts, as a fraction of the model's largest |logit| on the prompt
(f32: none beyond `F32_TOLERANCE`). Measured on 2 CPU cores, max |Δlogit| / max |logit|: f32 exactly 0
everywhere; f16 0.0015 and q8_0 0.040 on the embedded SmolLM2-135M after 3 training steps (0.057 and 1.54
of 38.3; 0.0011 and 0.035 untrained), 0.00025 and 0.0064 on the tiny model; the greedy answer the same in
every case. A writing mistake (no query/key permutation) gives differences of the order of the logits."""
F32_TOLERANCE = 1e-5
"""Absolute |logit difference| accepted for f32: the file holds the same numbers, only reordered."""


@dataclass(frozen=True)
class RoundTrip:
    """An exported GGUF read back by transformers' loader, against the model it was written from."""

    outtype: OutType
    prompt: str
    max_abs_logit_diff: float
    """max |logit(file) - logit(model)| over the rendered prompt's positions and the vocabulary."""
    logit_scale: float
    """max |logit(model)| there: what the relative tolerance is a fraction of."""
    tokens_match: bool
    """The file's tokenizer gives the same ids for the rendered prompt."""
    template_match: bool
    """The file's chat template is the tokenizer's."""
    model_answer: list[int]
    file_answer: list[int]
    """Greedy continuations (`ROUND_TRIP_TOKENS` at most, EOS excluded) of the model and of the file."""

    @property
    def tolerance(self) -> float:
        return F32_TOLERANCE + RELATIVE_TOLERANCE[self.outtype] * self.logit_scale

    @property
    def greedy_match(self) -> bool:
        return self.model_answer == self.file_answer

    def problems(self) -> list[str]:
        """What differs beyond what `outtype` allows (a different greedy answer is allowed for f16 and q8_0,
        whose rounding may flip a near tie: see `greedy_match`)."""
        found = []
        if not self.tokens_match:
            found.append("its tokenizer splits the prompt differently")
        if not self.template_match:
            found.append("its chat template differs")
        if not self.max_abs_logit_diff <= self.tolerance:
            found.append(f"max |logit difference| {self.max_abs_logit_diff:.3g} > {self.tolerance:.3g}")
        if self.outtype is OutType.F32 and not self.greedy_match:
            found.append("its greedy answer differs")
        return found


@torch.no_grad()
def read_back(
    model,
    tokenizer,
    gguf_path: str | os.PathLike,
    outtype: OutType | str,
    *,
    prompt: str = ROUND_TRIP_PROMPT,
    max_new_tokens: int = ROUND_TRIP_TOKENS,
) -> RoundTrip:
    """`gguf_path` loaded back (`localdpo.models.loading.load_gguf_model`, transformers' `gguf_file=` loader, and its
    tokenizer) and compared with `model` on `prompt` rendered with the chat template: logits at every prompt
    position, and the greedy answer (`localdpo.generation.greedy_token_continuations`)."""
    from transformers import AutoTokenizer

    from localdpo.generation import eos_token_ids, greedy_token_continuations, pad_token_id, render_chat
    from localdpo.models.loading import load_gguf_model

    path = Path(gguf_path)
    file_model = load_gguf_model(path)
    file_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = render_chat(tokenizer, prompt)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    file_ids = file_tokenizer(text, add_special_tokens=False)["input_ids"]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        logits = model(torch.tensor([ids], device=device)).logits.float().cpu()  # (1, T, V)
        file_logits = file_model(torch.tensor([ids])).logits.float()  # (1, T, V)
        answers = [
            greedy_token_continuations(
                m,
                [ids],
                max_new_tokens=max_new_tokens,
                eos_ids=eos_token_ids(m, tokenizer),
                pad_id=pad_token_id(tokenizer),
            )[0][0]
            for m in (model, file_model)
        ]
    finally:
        model.train(was_training)
    return RoundTrip(
        outtype=OutType(outtype),
        prompt=prompt,
        max_abs_logit_diff=(file_logits - logits).abs().max().item(),
        logit_scale=logits.abs().max().item(),
        tokens_match=file_ids == ids,
        template_match=file_tokenizer.chat_template == getattr(tokenizer, "chat_template", None),
        model_answer=answers[0],
        file_answer=answers[1],
    )
