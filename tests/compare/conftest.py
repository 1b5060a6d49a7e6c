"""Shared records of the comparison report and plot tests."""

import numpy as np
import pytest

from localdpo.compare.report import RunRecord


def records():
    rng = np.random.default_rng(0)
    out = [RunRecord("base", 0, {"task_accuracy": np.zeros(40), "drift_kl": np.zeros(40)})]
    for seed in range(3):
        out.append(
            RunRecord(
                "sft",
                seed,
                {"task_accuracy": (rng.random(40) < 0.3).astype(float), "drift_kl": rng.random(40) * 0.1},
                history=[{"step": 0, "task_accuracy": 0.0}, {"step": 10, "task_accuracy": 0.3}],
            )
        )
        out.append(
            RunRecord(
                "ldpo",
                seed,
                {"task_accuracy": np.ones(40), "drift_kl": rng.random(40) * 0.1 + 1.0},
                history=[{"step": 0, "task_accuracy": 0.0}, {"step": 10, "task_accuracy": 1.0}],
            )
        )
    return out


@pytest.fixture
def fresh_task_registry(monkeypatch):
    """Tasks of one's own loaded by a test stay in this test: the registry of loaded tasks starts empty and
    is put back after it (a `spell` left registered would change other tests' lists of known tasks)."""
    from localdpo.tasks import registry

    monkeypatch.setattr(registry, "_LOADED", {})
    monkeypatch.setattr(registry, "_BY_NAME", {})
