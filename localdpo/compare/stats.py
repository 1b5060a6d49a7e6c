"""Intervals and tests for comparisons over seeds and held-out items.

Every metric of a run is a vector over the same held-out items (prompts, steers, drift prompts), so two
methods trained with the same seed are compared item by item. Two intervals are given for a paired difference,
because training seeds and the finite held-out sample are separate sources of variance (Bouthillier et al.
2021, "Accounting for variance in machine learning benchmarks", MLSys 2021) and neither interval alone is
trustworthy with a handful of seeds:

- a two-level (seeds, then items) percentile bootstrap (Davison & Hinkley 1997, sec. 3.8): both sources at
  once, but with S seeds it only ever sees C(2S-1, S) distinct seed draws (10 for 3 seeds), so it
  understates the seed-to-seed spread;
- a seed-level Student t interval: the mean over items of the paired difference, per seed, then a t interval
  with S - 1 degrees of freedom over those S means. It treats each seed as one observation, so a few seeds give
  it a wide interval (t_{0.975,2} = 4.303), and it is undefined with one seed.

A difference counts as separated only where both intervals exclude 0. When several variants are compared with
one baseline, the seed-level p-values are corrected with Holm's step-down procedure (Holm 1979).
"""

from __future__ import annotations

import math
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
        return f"{self.mean * scale:.{digits}f} {self.format_bounds(digits, scale)}"

    def format_bounds(self, digits: int = 3, scale: float = 1.0) -> str:
        return f"[{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


@dataclass(frozen=True)
class SeedTest:
    """Student t over per-seed means: the interval of their mean and the two-sided p-value of mean = 0."""

    interval: Interval
    p_value: float
    n_seeds: int
    """S: the interval has S - 1 degrees of freedom."""


def _as_matrix(values) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"expected a non-empty (seeds, items) array, got shape {matrix.shape}")
    if np.isnan(matrix).any():
        raise ValueError("values contain NaN: a run produced no value for some item")
    return matrix


def paired_matrix(values, baseline) -> np.ndarray:
    """values - baseline, paired by seed and item; a one-row side (e.g. the untrained model, the same for every
    seed) is paired by item only, against every row of the other.

    Shape: values (S, N) or (1, N), baseline (S, N) or (1, N) -> (S, N).
    """
    a, b = _as_matrix(values), _as_matrix(baseline)
    if a.shape[1] == b.shape[1] and 1 in (a.shape[0], b.shape[0]):
        rows = max(a.shape[0], b.shape[0])
        a, b = np.repeat(a, rows // a.shape[0], axis=0), np.repeat(b, rows // b.shape[0], axis=0)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs equal shapes, got {a.shape} and {b.shape}")
    return a - b


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
    """Bootstrap interval of mean(values - baseline), paired as in `paired_matrix` (same resamples for both)."""
    return interval(paired_matrix(values, baseline), confidence=confidence, n_boot=n_boot, seed=seed)


def t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with integer `df` degrees of freedom, in closed form (Abramowitz & Stegun
    26.7.3). With theta = atan(|t| / sqrt(df)) and c = cos(theta):
    df even: sin(theta) (1 + c^2/2 + (1*3)/(2*4) c^4 + ... + (1*3*..*(df-3))/(2*4*..*(df-2)) c^(df-2));
    df odd:  (2/pi) (theta + sin(theta) (c + (2/3) c^3 + ... + (2*4*..*(df-3))/(1*3*..*(df-2)) c^(df-2))),
    which is 2 theta / pi for df = 1.
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df)) if math.isfinite(t) else math.pi / 2
    c, s = math.cos(theta), math.sin(theta)
    if df % 2 == 0:
        term = total = 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c * c
            total += term
        return min(1.0, s * total)
    term = total = c if df > 1 else 0.0
    for k in range(1, (df - 1) // 2):
        term *= (2 * k) / (2 * k + 1) * c * c
        total += term
    return min(1.0, 2 / math.pi * (theta + s * total))


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's T with integer `df`, e.g. t_quantile(0.975, 2) = 4.303: `t_central_mass`
    inverted by bisection on theta = atan(t / sqrt(df)), where the mass rises monotonically from 0 to 1."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    target, low, high = 2 * p - 1, 0.0, math.pi / 2
    for _ in range(100):  # the bracket halves each time: far below float resolution after 60
        mid = (low + high) / 2
        if t_central_mass(math.sqrt(df) * math.tan(mid), df) < target:
            low = mid
        else:
            high = mid
    return math.sqrt(df) * math.tan((low + high) / 2)


def seed_t_test(per_seed, *, confidence: float = 0.95) -> SeedTest | None:
    """Student t interval of the mean of `per_seed` values (one per seed: mean +- t_{(1+c)/2, S-1} sd / sqrt(S))
    and the two-sided p-value of mean = 0; None where it is undefined: fewer than two seeds, or seeds that
    agree exactly on a non-zero value (zero spread is no evidence of a small one: with per-seed accuracies on a
    few hundred items, three equal means happen). Seeds all exactly 0 give the point interval [0, 0], p 1.

    Shape: per_seed (S,).
    """
    x = np.asarray(per_seed, dtype=np.float64).ravel()
    n = len(x)
    if n < 2:
        return None
    if np.isnan(x).any():
        raise ValueError("per-seed values contain NaN")
    mean, se = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        return SeedTest(Interval(mean, mean, mean), 1.0, n) if mean == 0.0 else None
    half = t_quantile((1 + confidence) / 2, n - 1) * se
    p_value = 1.0 - t_central_mass(mean / se, n - 1)
    return SeedTest(Interval(mean, mean - half, mean + half), max(p_value, 0.0), n)


def paired_seed_test(values, baseline, *, confidence: float = 0.95) -> SeedTest | None:
    """Seed-level paired t test of mean(values - baseline): per seed, the mean over items of the paired
    difference (`paired_matrix`), then `seed_t_test` over those S means (S - 1 df); None with one seed."""
    return seed_t_test(paired_matrix(values, baseline).mean(axis=1), confidence=confidence)


def holm_adjusted(p_values) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input's order: with the m p-values sorted ascending,
    p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j)). Rejecting where p_adj <= alpha is Holm's procedure at
    family-wise level alpha: p(1) against alpha/m, then p(2) against alpha/(m-1), ..., stopping at the first
    that fails.

    Shape: p_values (m,) -> (m,).
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m,) in ascending order of p
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted
