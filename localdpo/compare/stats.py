"""Intervals for comparisons over seeds and held-out items.

Every metric of a run is a vector over the same held-out items (prompts, steers, drift prompts), so two
methods trained with the same seed are compared item by item. Intervals come from a two-level (seeds, then
items) percentile bootstrap (Davison & Hinkley 1997, sec. 3.8): they include both the training noise seen
across seeds and the sampling noise of a finite held-out set. With one seed only the item level is left,
and the interval says nothing about training noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def excludes(self, value: float = 0.0) -> bool:
        return not (self.low <= value <= self.high)

    def format(self, digits: int = 3, scale: float = 1.0) -> str:
        return (
            f"{self.mean * scale:.{digits}f} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"
        )


def _as_matrix(values) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"expected a non-empty (seeds, items) array, got shape {matrix.shape}")
    if np.isnan(matrix).any():
        raise ValueError("values contain NaN: a run produced no value for some item")
    return matrix


def bootstrap_means(values, *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Means of `n_boot` two-level bootstrap resamples (seeds with replacement, then items).

    Shape: values (S, N) -> (n_boot,).
    """
    matrix = _as_matrix(values)
    seeds, items = matrix.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, seeds, size=(n_boot, seeds))  # (n_boot, S)
    item_draws = rng.integers(0, items, size=(n_boot, items))  # (n_boot, N)
    rows = matrix[seed_draws]  # (n_boot, S, N)
    picked = np.take_along_axis(rows, item_draws[:, None, :].repeat(seeds, axis=1), axis=2)  # (n_boot, S, N)
    return picked.mean(axis=(1, 2))


def interval(values, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Mean over seeds and items with its percentile bootstrap interval."""
    matrix = _as_matrix(values)
    means = bootstrap_means(matrix, n_boot=n_boot, seed=seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(matrix.mean()), float(low), float(high))


def paired_difference(
    values, baseline, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Interval:
    """Interval of mean(values - baseline), paired by seed and item (same resamples for both).

    A one-row side (e.g. the untrained model, the same for every seed) is paired by item only.
    """
    a, b = _as_matrix(values), _as_matrix(baseline)
    if a.shape[1] == b.shape[1] and 1 in (a.shape[0], b.shape[0]):
        rows = max(a.shape[0], b.shape[0])
        a, b = np.repeat(a, rows // a.shape[0], axis=0), np.repeat(b, rows // b.shape[0], axis=0)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs equal shapes, got {a.shape} and {b.shape}")
    return interval(a - b, confidence=confidence, n_boot=n_boot, seed=seed)
