import os

# One intra-op thread per process: tests use toy-sized ops, and on a 2-core machine with any other busy
# process, OpenMP's barrier waits make a 64x128 matmul 400x slower with 2 threads than with 1 (measured).
# Set before torch starts its pool; inherited by the subprocesses some tests start (torchrun, kills).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: never try it
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL pings the hub on trainer init otherwise


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "embedded" in item.keywords:  # loading the real model is slow: every such test is in `-m slow`
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's real byte-level BPE tokenizer (from the embedded GGUF, cached as tokenizer.json)."""
    from localdpo.models.embedded import embedded_tokenizer

    return embedded_tokenizer()


@pytest.fixture
def library_warnings():
    """`library_warnings()` -> every warning raised so far in the test: `warnings.warn` (all categories,
    repeats included) and transformers' logged warnings (its deprecation notices go either way)."""
    import logging
    import warnings

    logged: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(f"transformers log: {record.getMessage()}")

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield (
            lambda: logged + [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
        )
    logger.removeHandler(handler)
