import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: never try it
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL pings the hub on trainer init otherwise


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's real byte-level BPE tokenizer (from the embedded GGUF, cached as tokenizer.json)."""
    from localdpo.embedded import embedded_tokenizer

    return embedded_tokenizer()
