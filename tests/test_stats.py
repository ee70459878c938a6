"""Intervals that decide claims: published values, coverage by simulation, seeded bootstrap,
and the rule that a tiny sample stays inconclusive while a large one settles."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from rllm_study.analysis.metrics import wilson_interval as wilson
from rllm_study.analysis.stats import (
    MIN_BOOT_N,
    Interval,
    Condition,
    bootstrap,
    mean_interval,
    mover,
    newcombe,
    proportion,
    ratio_interval,
    settle,
    t_quantile,
)


def test_wilson_published_values():
    # Newcombe (1998), Table I: 0/10 -> (0, 0.2775); 15/148 -> (0.0624, 0.1605); 81/263 -> (0.2553, 0.3662)
    assert wilson(0, 10) == [0.0, pytest.approx(0.2775, abs=1e-4)]
    assert wilson(15, 148) == [pytest.approx(0.0624, abs=1e-4), pytest.approx(0.1605, abs=1e-4)]
    assert wilson(81, 263) == [pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4)]
    assert wilson(5, 10) == [pytest.approx(1 - 0.7634, abs=1e-4), pytest.approx(0.7634, abs=1e-4)]
    assert wilson(0, 0) is None


def test_newcombe_published_value():
    # Newcombe (1998b), method 10, example (a): 56/70 - 48/80 = 0.2000, 95% CI (0.0524, 0.3339)
    d = newcombe(56, 70, 48, 80)
    assert (d.estimate, d.lo, d.hi) == (pytest.approx(0.2), pytest.approx(0.0524, abs=1e-4), pytest.approx(0.3339, abs=1e-4))
    # MOVER with scale 1 over two Wilson intervals is the same interval
    same = mover(proportion(56, 70), proportion(48, 80))
    assert (same.lo, same.hi) == (pytest.approx(d.lo), pytest.approx(d.hi))


def test_wilson_and_newcombe_cover_the_true_value():
    rng = np.random.default_rng(1)
    n, p, q, trials = 40, 0.3, 0.2, 2000
    ks, ls = rng.binomial(n, p, trials), rng.binomial(n, q, trials)
    cover = np.mean([lo <= p <= hi for lo, hi in (wilson(int(k), n) for k in ks)])
    cover_d = np.mean([(iv := newcombe(int(k), n, int(j), n)).lo <= p - q <= iv.hi for k, j in zip(ks, ls)])
    assert 0.93 <= cover <= 0.98 and 0.93 <= cover_d <= 0.99, (cover, cover_d)


def test_t_interval():
    assert t_quantile(1) == 12.706 and t_quantile(40) == pytest.approx(2.0211, abs=2e-4)
    iv = mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(2) = 4.303
    assert (iv.lo, iv.hi) == (pytest.approx(2 - 4.303 / 3**0.5), pytest.approx(2 + 4.303 / 3**0.5))
    assert not mean_interval([5.0]).known and "needs two" in mean_interval([5.0]).why
    r = ratio_interval([2.0, 2.0, 2.0])
    assert (r.estimate, r.lo, r.hi) == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))


def _ratio_of_means(samples):
    a, b = samples
    return statistics.fmean(b) / statistics.fmean(a)


def test_bootstrap_is_seeded_and_covers():
    rng = np.random.default_rng(2)
    a, b = list(rng.exponential(1.0, 60)), list(rng.exponential(2.0, 60))
    first, again = bootstrap([a, b], _ratio_of_means), bootstrap([a, b], _ratio_of_means)
    assert first == again, "the same data must give the same interval"
    assert first.estimate == pytest.approx(_ratio_of_means([a, b])) and first.lo < first.estimate < first.hi
    # coverage of the true ratio 2 over independent samples (percentile bootstrap, 60 per cell): these
    # seeds give 143/150 (95.3%) at 95%; a 90% interval would give about 135 (90%)
    hits = 0
    for seed in range(150):
        r = np.random.default_rng(100 + seed)
        iv = bootstrap([list(r.exponential(1.0, 60)), list(r.exponential(2.0, 60))], _ratio_of_means, n_boot=400)
        hits += iv.lo <= 2.0 <= iv.hi
    assert 0.93 <= hits / 150 <= 0.99, hits


def test_bootstrap_needs_enough_requests():
    iv = bootstrap([[1.0] * (MIN_BOOT_N - 1), [2.0] * 20], _ratio_of_means)
    assert not iv.known and iv.estimate == pytest.approx(2.0) and f"at least {MIN_BOOT_N}" in iv.why
    assert Condition("x", iv, 1.0).outcome is None


def test_needed_sample_size_arithmetic():
    # estimate 1.2, interval end 0.9 on the threshold's side (h = 0.3), threshold 1.0 (d = 0.2): n x 2.25
    t = Condition("x", Interval(1.2, 0.9, 1.5, 10), 1.0)
    assert t.outcome is None and t.needed == 23
    # on a log scale: estimate 2, lo 1/2 (h = log 4), threshold 1 (d = log 2): n x 4
    assert Condition("r", Interval(2.0, 0.5, 8.0, 5), 1.0, log=True).needed == 20
    assert Condition("s", Interval(1.0, 0.5, 1.5, 5), 1.0).needed is None  # estimate on the threshold


def test_tiny_samples_are_inconclusive_large_ones_settle():
    # a difference of proportions: 3/4 vs 1/4 spans 0; 75/100 vs 25/100 settles for, 25/100 vs 75/100 against
    assert Condition("d", newcombe(3, 4, 1, 4), 0.0).outcome is None
    assert Condition("d", newcombe(75, 100, 25, 100), 0.0).outcome is True
    assert Condition("d", newcombe(25, 100, 75, 100), 0.0).outcome is False
    # a bootstrap ratio: the same effect (B twice A, noisy) with 6 and with 200 requests a cell
    rng = np.random.default_rng(3)
    small = bootstrap([list(rng.exponential(1.0, 6)), list(rng.exponential(2.0, 6))], _ratio_of_means)
    large = bootstrap([list(rng.exponential(1.0, 200)), list(rng.exponential(2.0, 200))], _ratio_of_means)
    assert Condition("r", small, 1.0, log=True).outcome is None and Condition("r", small, 1.0, log=True).needed > 6
    assert Condition("r", large, 1.0, log=True).outcome is True


def test_settle_combines_conditions():
    yes, no, open_ = (Condition("y", Interval(2, 1.5, 2.5, 9), 1.0), Condition("n", Interval(0.5, 0.2, 0.8, 9), 1.0),
                      Condition("o", Interval(1.1, 0.8, 1.4, 9), 1.0))
    assert settle([yes, yes]) is True
    assert settle([yes, open_]) is None
    assert settle([open_, no]) is False
    assert settle([]) is None
    # `above=False`: the finding lies below the threshold
    assert Condition("below", Interval(0.5, 0.2, 0.8, 9), 1.0, above=False).outcome is True
