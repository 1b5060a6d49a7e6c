"""Content fingerprints of models and tokenizers: what a cached reference log-prob depends on.

A model fingerprint hashes every byte of every weight and buffer (names, dtypes and shapes included)
plus the model class and its config, so a single changed element changes it. The bytes go through
xxHash3-128 (measured 13.5 to 34 GB/s on one core of the project's CPU machine, SHA-256 there 2 GB/s), and
the per-tensor digests are combined with SHA-256 over sorted JSON. xxHash3 is not cryptographic: this
guards against stale values, not against someone forging weights.

For a peft model the fingerprint is that of its base weights (adapter tensors skipped, peft's wrapper
names `base_layer` / `original_module` removed), equal to the fingerprint of the same base model
without an adapter: the reference of a LoRA run is the base model with the adapter disabled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import torch
import xxhash

FINGERPRINT_VERSION = 1
"""Bumped whenever what goes into a fingerprint changes (old caches then miss, never serve)."""

# Config entries that never change the log-probs (bookkeeping and output switches).
_IGNORED_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "architectures",
        "use_cache",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "_commit_hash",
    }
)
_CHUNK_BYTES = 256 * 1024 * 1024
"""Tensors on an accelerator are copied to the CPU (and hashed) this many bytes at a time."""


def content_hash(value) -> str:
    """sha256 hex digest of `value` as sorted, compact JSON (values must be JSON-serialisable)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """xxHash3-128 hex digest of a tensor's raw bytes (row-major), any dtype and device."""
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    hasher = xxhash.xxh3_128()
    if flat.numel() == 0:
        return hasher.hexdigest()
    raw = flat.view(torch.uint8)  # (N * element_size,)
    if raw.device.type == "cpu":
        hasher.update(raw.numpy())
    else:
        for start in range(0, raw.numel(), _CHUNK_BYTES):
            hasher.update(raw[start : start + _CHUNK_BYTES].cpu().numpy())
    return hasher.hexdigest()


def is_peft_model(model) -> bool:
    """Whether `model` is a peft `PeftModel` (the reference is then the base model, adapter disabled)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _adapter_names(model) -> set[str]:
    return set(getattr(model, "peft_config", {}) or {})


def reference_tensors(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight and buffer the reference forward reads, adapters excluded.

    Tied weights appear once. Names of a peft model are those of its base model.
    """
    adapters = _adapter_names(model)
    base = model.get_base_model() if is_peft_model(model) else model
    seen: set[int] = set()
    for kind, named in (("param", base.named_parameters()), ("buffer", base.named_buffers())):
        for name, tensor in named:
            parts = name.split(".")
            if any(part in adapters for part in parts):
                continue  # lora_A.default.weight, modules_to_save.default.weight, ...
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            clean = ".".join(part for part in parts if part not in ("base_layer", "original_module"))
            yield f"{kind}:{clean}", tensor


def _config_dict(model) -> dict:
    base = model.get_base_model() if is_peft_model(model) else model
    config = getattr(base, "config", None)
    if config is None:
        return {}
    values = {k: v for k, v in config.to_dict().items() if k not in _IGNORED_CONFIG_KEYS}
    values["_attn_implementation"] = getattr(config, "_attn_implementation", None)
    return values


def model_fingerprint(model) -> str:
    """sha256 hex over the class, config and full content of every reference weight of `model`.

    Cost: one pass over all weight bytes (see the module docstring).
    """
    base = model.get_base_model() if is_peft_model(model) else model
    tensors = {
        name: [str(tensor.dtype).removeprefix("torch."), list(tensor.shape), tensor_digest(tensor)]
        for name, tensor in reference_tensors(model)
    }
    return content_hash(
        {
            "version": FINGERPRINT_VERSION,
            "class": f"{type(base).__module__}.{type(base).__qualname__}",
            "config": _config_dict(model),
            "tensors": tensors,
        }
    )



def model_label(name: str, model) -> str:
    """`<name>@<first 12 hex digits of model_fingerprint>`: the model that wrote a steer's rejected side
    (`Steer.rejected_by`). A LoRA adapter's own weights are not in the fingerprint: label a tuned model by a
    name that says which adapter, or merge the adapter first (as a round of `compare` does)."""
    return f"{name}@{model_fingerprint(model)[:12]}"

def weights_stamp(model) -> tuple[tuple[str, int, int, int], ...]:
    """Cheap snapshot (name, object id, data pointer, in-place version counter) of every reference tensor.

    It changes when a weight is replaced, moved or modified in place through autograd-visible ops
    (optimizer steps, `copy_`, `load_state_dict`). Writes through `.data` bypass the version counter:
    after those, recompute `model_fingerprint`.
    """
    return tuple(
        (name, id(tensor), tensor.data_ptr(), tensor._version) for name, tensor in reference_tensors(model)
    )


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 hex over the tokenizer's class, full vocabulary and rules, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = tokenizer.get_vocab()
    state = {
        "version": FINGERPRINT_VERSION,
        "class": type(tokenizer).__qualname__,
        "backend": hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()
        if backend is not None
        else None,
        "vocab": hashlib.sha256(json.dumps(sorted(vocab.items())).encode("utf-8")).hexdigest(),
        "special": {
            name: getattr(tokenizer, name, None)
            for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
        },
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return content_hash(state)
