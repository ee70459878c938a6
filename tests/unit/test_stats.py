"""Intervals that decide claims: published values, coverage by simulation, seeded bootstrap,
and the rule that a tiny sample stays inconclusive while a large one settles."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from rllm_study.analysis.metrics import wilson_interval as wilson
from rllm_study.analysis.stats import (
    MIN_BOOT_N,
    MIN_CELLS,
    Condition,
    Interval,
    bootstrap,
    cluster_bootstrap,
    mean_interval,
    mover,
    newcombe,
    pair_interval,
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
    assert (d.estimate, d.lo, d.hi) == (
        pytest.approx(0.2),
        pytest.approx(0.0524, abs=1e-4),
        pytest.approx(0.3339, abs=1e-4),
    )
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
    yes, no, open_ = (
        Condition("y", Interval(2, 1.5, 2.5, 9), 1.0),
        Condition("n", Interval(0.5, 0.2, 0.8, 9), 1.0),
        Condition("o", Interval(1.1, 0.8, 1.4, 9), 1.0),
    )
    assert settle([yes, yes]) is True
    assert settle([yes, open_]) is None
    assert settle([open_, no]) is False
    assert settle([]) is None
    # `above=False`: the finding lies below the threshold
    assert Condition("below", Interval(0.5, 0.2, 0.8, 9), 1.0, above=False).outcome is True


# ---- cells as the unit of evidence ----------------------------------------------------------------


def _pooled_means(conds):
    a, b = ([r for cluster in cond for cell in cluster for r in cell] for cond in conds)
    return statistics.fmean(b) / statistics.fmean(a)


def test_cluster_bootstrap_carries_the_variation_between_cells():
    # each condition: 4 cells of 50 requests; the cells' own levels differ a lot (a busy machine, another batch),
    # the requests within a cell little. Resampling requests alone gives a narrow interval; the two-stage
    # bootstrap (cells, then requests) a much wider one that still covers the true ratio 1.
    rng = np.random.default_rng(4)
    levels = {"a": [1.0, 2.0, 3.0, 1.5], "b": [3.0, 1.0, 1.2, 2.8]}
    cells = {k: [list(rng.normal(level, 0.05, 50)) for level in v] for k, v in levels.items()}
    two_stage = cluster_bootstrap([[[c] for c in cells["a"]], [[c] for c in cells["b"]]], _pooled_means)
    within = bootstrap(
        cells["a"] + cells["b"],
        lambda s: statistics.fmean([x for c in s[4:] for x in c]) / statistics.fmean([x for c in s[:4] for x in c]),
    )
    assert two_stage.estimate == pytest.approx(within.estimate)
    assert (two_stage.hi - two_stage.lo) > 5 * (within.hi - within.lo), (two_stage, within)
    assert two_stage.lo < 1.0 < two_stage.hi and two_stage.unit == "cells per side" and two_stage.n == 4
    assert two_stage.min_n == MIN_CELLS and Condition("r", two_stage, 1.0, log=True).outcome is None
    assert (
        cluster_bootstrap([[[c] for c in cells["a"]], [[c] for c in cells["b"]]], _pooled_means) == two_stage
    )  # seeded


def test_cluster_bootstrap_is_the_95_percent_interval_over_cells():
    # requests alike within each cell: the two-stage bootstrap is then a bootstrap over cells alone, so its interval
    # matches the one-stage percentile bootstrap of the cells' levels (Monte Carlo noise a few percent); a 90% interval
    # would be about 16% narrower (1.645 / 1.96)
    rng = np.random.default_rng(5)
    levels = {k: list(rng.normal(centre, 0.3, 12)) for k, centre in (("a", 2.0), ("b", 3.0))}
    two_stage = cluster_bootstrap([[[[x] * 10] for x in levels[k]] for k in "ab"], _pooled_means)
    over_cells = bootstrap([levels["a"], levels["b"]], _ratio_of_means)
    assert two_stage.hi - two_stage.lo == pytest.approx(over_cells.hi - over_cells.lo, rel=0.08), (
        two_stage,
        over_cells,
    )


def test_cluster_bootstrap_needs_two_cells_and_enough_requests():
    one = cluster_bootstrap([[[[1.0] * 20]], [[[2.0] * 20], [[2.1] * 20]]], _pooled_means)
    assert not one.known and one.n == 1 and "an interval needs two" in one.why
    few = cluster_bootstrap([[[[1.0] * 3], [[1.1] * 3]], [[[2.0] * 20], [[2.1] * 20]]], _pooled_means)
    assert not few.known and f"at least {MIN_BOOT_N}" in few.why


def test_too_few_cells_stay_inconclusive_whatever_their_requests():
    # two pairs agreeing exactly clear the threshold on their own, but two independent pairs are below MIN_CELLS = 3:
    # inconclusive, and what would settle it counts pairs (at least MIN_CELLS)
    two = pair_interval([2.0, 2.1], log=True, scope="2000 requests in 40 batches")
    cond = Condition("r", two, 1.0, log=True)
    assert two.known and two.lo > 1.0 and cond.side is True and cond.too_few
    assert cond.outcome is None and cond.needed == MIN_CELLS and two.unit == "cell pairs"
    # the same with three pairs: settled
    three = Condition("r", pair_interval([2.0, 2.1, 1.9], log=True), 1.0, log=True)
    assert not three.too_few and three.outcome is True and three.needed is None
    # a single pair has no interval at all, and still MIN_CELLS pairs would settle it
    single = Condition("r", pair_interval([2.0], log=True), 1.0, log=True)
    assert not single.interval.known and single.outcome is None and single.needed == MIN_CELLS
    # enough pairs but spanning the threshold: the usual n x (h / d)^2, in pairs
    wide = Condition("d", pair_interval([0.1, -0.05, 0.2, 0.0]), 0.0)
    assert wide.outcome is None and wide.needed > 4
    # undefined pair figures (None) are dropped, not counted
    assert pair_interval([0.1, None, 0.2]).n == 2


def test_paired_newcombe_uses_the_items_correlation():
    from rllm_study.analysis.stats import paired_newcombe

    # no correlation (ad = bc): exactly the unpaired Newcombe interval of the two proportions over n items each
    free = paired_newcombe(20, 20, 20, 20)
    unpaired = newcombe(40, 80, 40, 80)
    assert (free.estimate, free.lo, free.hi) == (0.0, pytest.approx(unpaired.lo), pytest.approx(unpaired.hi))
    # the same two accuracies (60% vs 50%) on items mostly right or wrong alike: a much narrower interval, which
    # settles a 10-point gain the unpaired one cannot
    alike = paired_newcombe(40, 8, 0, 32)
    apart = newcombe(48, 80, 40, 80)
    assert alike.estimate == pytest.approx(0.1) == apart.estimate
    assert alike.hi - alike.lo < 0.5 * (apart.hi - apart.lo) and alike.lo > 0 > apart.lo
    assert alike.unit == "matched items" and alike.n == 80
    # coverage over simulated correlated pairs: item difficulty shared by both conditions
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(1000):
        easy = rng.random(60) < 0.5
        x = rng.random(60) < np.where(easy, 0.9, 0.3)  # first condition: 0.6 on average
        y = rng.random(60) < np.where(easy, 0.8, 0.2)  # second: 0.5
        iv = paired_newcombe(int((x & y).sum()), int((x & ~y).sum()), int((~x & y).sum()), int((~x & ~y).sum()))
        hits += iv.lo <= 0.1 <= iv.hi
    assert 0.93 <= hits / 1000 <= 0.99, hits
