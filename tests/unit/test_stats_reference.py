"""The intervals against reference implementations: the seeded bootstrap against
`scipy.stats.bootstrap` (percentile method) and the normal-theory interval of a mean, which tell a
95% interval from a 90% one; `t_quantile` against `scipy.stats.t` on both sides of its switch from
the table to the Cornish-Fisher expansion at 30 degrees of freedom."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from conftest import require_module
from rllm_study.analysis.stats import bootstrap, mean_interval, t_quantile

require_module("scipy")
from scipy import stats as scipy_stats  # noqa: E402


def _mean(samples):
    return statistics.fmean(samples[0])


def _ratio_of_means(samples):
    return statistics.fmean(samples[1]) / statistics.fmean(samples[0])


def test_bootstrap_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(5)
    x = rng.normal(10, 2, 200)
    ours = bootstrap([list(x)], _mean)
    ref = scipy_stats.bootstrap(
        (x,), np.mean, confidence_level=0.95, method="percentile", n_resamples=4000, random_state=1
    ).confidence_interval
    se = statistics.stdev(x) / math.sqrt(len(x))
    # the same interval up to resampling noise (a tenth of a standard error); a 90% one is 16% narrower
    assert ours.lo == pytest.approx(ref.low, abs=0.1 * se) and ours.hi == pytest.approx(ref.high, abs=0.1 * se)
    assert (ours.hi - ours.lo) / (ref.high - ref.low) == pytest.approx(1.0, abs=0.05)
    # and the normal-theory interval of a mean: +-1.96 standard errors
    assert (ours.hi - ours.lo) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.05)


def test_two_sample_bootstrap_matches_scipy_on_a_ratio():
    rng = np.random.default_rng(6)
    a, b = rng.exponential(1.0, 80), rng.exponential(2.0, 80)
    ours = bootstrap([list(a), list(b)], _ratio_of_means)
    ref = scipy_stats.bootstrap(
        (a, b),
        lambda x, y: np.mean(y) / np.mean(x),
        confidence_level=0.95,
        method="percentile",
        n_resamples=4000,
        random_state=2,
        vectorized=False,
    ).confidence_interval
    width = ref.high - ref.low
    assert abs(ours.lo - ref.low) < 0.06 * width and abs(ours.hi - ref.high) < 0.06 * width, (ours, ref)


def test_t_quantile_matches_scipy_across_its_switch_at_30():
    for df in range(1, 201):
        assert t_quantile(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1.5e-3), df
    # up to 30 the table (three decimals), from 31 the expansion (closer than the table's rounding)
    assert (t_quantile(29), t_quantile(30)) == (2.045, 2.042)
    assert t_quantile(31) == pytest.approx(scipy_stats.t.ppf(0.975, 31), abs=1e-4) and t_quantile(31) != round(
        t_quantile(31), 3
    )
    assert t_quantile(29) > t_quantile(30) > t_quantile(31) > t_quantile(1000) > 1.96


def test_t_interval_matches_scipy():
    values = [1.0, 2.5, 2.0, 4.0, 3.5, 2.2]
    ours = mean_interval(values)
    lo, hi = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (ours.lo, ours.hi) == (pytest.approx(lo, abs=1e-3), pytest.approx(hi, abs=1e-3))
