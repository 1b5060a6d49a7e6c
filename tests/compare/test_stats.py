import numpy as np
import pytest

from localdpo.compare.stats import interval, paired_difference


def test_constant_values_give_a_point_interval():
    out = interval(np.full((3, 10), 0.25))
    assert (out.mean, out.low, out.high) == (0.25, 0.25, 0.25)


def test_one_seed_proportion_matches_the_normal_approximation():
    """400 items, half correct: 95% interval ≈ 0.5 ± 1.96 · sqrt(0.25 / 400) = 0.5 ± 0.049."""
    values = np.array([1.0, 0.0] * 200)
    out = interval(values, n_boot=4000)
    assert out.mean == 0.5
    assert out.low == pytest.approx(0.451, abs=0.01)
    assert out.high == pytest.approx(0.549, abs=0.01)


def test_seed_noise_widens_the_interval():
    items = np.tile([1.0, 0.0], 100)  # (200,)
    same_seeds = np.stack([items, items, items])
    noisy_seeds = np.stack([items * 0.4, items, np.full_like(items, 0.9)])
    narrow, wide = interval(same_seeds), interval(noisy_seeds)
    assert (wide.high - wide.low) > (narrow.high - narrow.low)


def test_paired_difference_sees_a_small_consistent_gain():
    rng = np.random.default_rng(0)
    base = (rng.random((3, 300)) < 0.5).astype(float)
    better = base.copy()
    better[:, :30] = 1.0  # 30 items flipped to correct in every seed
    gain = paired_difference(better, base)
    assert gain.excludes(0.0) and gain.low > 0
    assert not paired_difference(base, base).excludes(0.0)


def test_bad_shapes_and_nan_are_errors():
    with pytest.raises(ValueError, match="equal shapes"):
        paired_difference(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        interval([[0.0, float("nan")]])
