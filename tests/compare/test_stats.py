import numpy as np
import pytest

from localdpo.compare.stats import (
    holm_adjusted,
    interval,
    paired_difference,
    paired_seed_test,
    seed_t_test,
    t_central_mass,
    t_quantile,
)


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


def test_t_quantiles_match_the_table():
    """Student t table (two-sided 95%): 12.706 (1 df), 4.303 (2 df), 2.776 (4 df), 2.228 (10 df); 95% one-sided
    with 5 df: 2.015."""
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=5e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=5e-4)
    assert t_quantile(0.975, 10) == pytest.approx(2.228, abs=5e-4)
    assert t_quantile(0.95, 5) == pytest.approx(2.015, abs=5e-4)
    assert t_quantile(0.025, 2) == pytest.approx(-4.303, abs=5e-4)
    # 1 df is the Cauchy distribution: P(|T| <= 1) = 2 atan(1) / pi = 1/2
    assert t_central_mass(1.0, 1) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError, match="positive integer"):
        t_central_mass(1.0, 0)


def test_seed_interval_of_the_issues_per_seed_differences():
    """Per-seed differences -12.5, -2.5, -9.2 (points of task accuracy): mean -8.067, sd 5.095, se 2.942;
    half-width 4.303 * 2.942 = 12.66: [-20.7, +4.6], which contains 0 (t = -2.742, p = 0.111)."""
    out = seed_t_test([-12.5, -2.5, -9.2])
    assert out.n_seeds == 3
    assert out.interval.mean == pytest.approx(-8.0667, abs=1e-4)
    assert out.interval.low == pytest.approx(-20.724, abs=1e-3)
    assert out.interval.high == pytest.approx(4.591, abs=1e-3)
    assert out.p_value == pytest.approx(0.1112, abs=1e-4)
    assert not out.interval.excludes(0.0)


def test_seed_test_is_undefined_with_one_seed_or_seeds_that_agree_on_a_nonzero_value():
    """Regression: three seeds each -1.7 points from the baseline (the dose comparison, addition) gave p 0 and
    survived Holm while the bootstrap interval [-4.2, 0.3] held 0; zero spread over three seeds is no test."""
    assert seed_t_test([0.3]) is None
    assert paired_seed_test(np.ones((1, 5)), np.zeros((1, 5))) is None
    assert seed_t_test([-1.7, -1.7, -1.7]) is None
    zero = seed_t_test([0.0, 0.0])
    assert (zero.interval.low, zero.interval.high) == (0.0, 0.0) and zero.p_value == 1.0


def test_paired_seed_test_averages_items_per_seed_then_over_seeds():
    """Seed means of the differences: (1 - 0) = 1, (0.5 - 0) = 0.5, (0.5 - 0.5) = 0: mean 0.5, sd 0.5."""
    values = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    baseline = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    out = paired_seed_test(values, baseline)
    half = 4.302653 * 0.5 / np.sqrt(3)
    assert out.interval.mean == pytest.approx(0.5)
    assert (out.interval.low, out.interval.high) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-5)
    # a one-row baseline (the starting model) is paired with every seed
    one = paired_seed_test(values, np.zeros((1, 2)))
    assert one.n_seeds == 3 and one.interval.mean == pytest.approx(2 / 3)


def test_holm_rejects_step_down_and_stops_at_the_first_failure():
    """p = 0.01, 0.04, 0.03, m = 3. Sorted: 0.01 <= 0.05/3 rejects; 0.03 > 0.05/2 fails, so the procedure stops
    and 0.04 (whose own threshold 0.05/1 it would pass) is not rejected either. Adjusted: 3 * 0.01 = 0.03,
    max(0.03, 2 * 0.03) = 0.06, max(0.06, 1 * 0.04) = 0.06."""
    adjusted = holm_adjusted([0.01, 0.04, 0.03])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])
    assert list(adjusted <= 0.05) == [True, False, False]
    # with 0.02 in place of 0.03 all three fall: 0.01 <= 0.0167, 0.02 <= 0.025, 0.04 <= 0.05
    assert list(holm_adjusted([0.01, 0.04, 0.02]) <= 0.05) == [True, True, True]
    # sorted 0.6, 0.9: 2 * 0.6 = 1.2 capped at 1, then max(1, 0.9) = 1
    assert holm_adjusted([0.9, 0.6]) == pytest.approx([1.0, 1.0])
