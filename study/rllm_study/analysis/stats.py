"""Intervals that decide claims: Wilson for proportions (`metrics.wilson_interval`), Newcombe for
their difference, MOVER for other differences, Student t over matched cell pairs, a two-stage
cluster bootstrap (cells, then requests within them) and a seeded bootstrap over requests.

Cells are the unit of evidence for anything the machine or the batch shapes (latency,
throughput, KV use, stragglers, tails): requests of one cell share its batches and its moment on
the machine, so they are not independent draws, and two cells run at different moments do not run
on the same machine. Such intervals come from the variation between independent cells (t over
matched cell pairs, or `cluster_bootstrap`), and carry `min_n` = MIN_CELLS: a condition resting on
fewer independent cells (or pairs) per side than that is inconclusive whatever its request count,
and what would settle it is counted in cells. Token counts and accuracy are properties of the
items, not of the machine: their intervals stay over requests (accuracy paired by item where the
items match).

Every interval is two-sided at 95% and returned as an `Interval` (estimate, lo, hi, the sample
size it rests on and that size's unit, and what the units hold, e.g. "540 requests in 24
batches"). `settle` says whether an interval lies wholly on one side of a rule's threshold (True /
False) or spans it (None), and, when it spans it, roughly how large a sample would settle it if the
estimate held:

    n_needed = ceil(n x (h / d)^2)

h = the distance from the estimate to the interval's end on the threshold's side, d = the distance
from the estimate to the threshold (both on a log scale for ratios): an interval's half-width
shrinks as 1/sqrt(n), so scaling n by (h/d)^2 brings the end to the threshold. No size when d = 0.

Why two runs of one preset cannot settle opposite verdicts, except rarely: a verdict is settled
only when a 95% interval excludes the threshold, so a run settles on the wrong side of the true
value with probability at most 2.5% per condition, and two runs settle on opposite sides with at
most about 2 x 2.5% (a claim of m conditions: m times that).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from rllm_study.analysis.metrics import Z95, define, wilson_interval

N_BOOT = 2000  # bootstrap replicates
UNDEFINED = "the statistic is undefined in most resamples"  # why a bootstrap gives no interval
MIN_CELLS = 3  # independent cells (or matched cell pairs) per side a cell-level condition needs
SEED = 0  # bootstrap seed: the same files give the same report
MIN_BOOT_N = 5  # a bootstrap needs this many requests in every resampled cell
# Student t 97.5% quantiles, df = 1..30 (beyond: the Cornish-Fisher expansion below)
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Interval:
    """A 95% interval for `estimate`; lo/hi None when the data cannot give one (then `why` says why).
    `n` is the sample size it rests on (the smallest per resampled cell for a bootstrap), in `unit`;
    `scope` what those units hold (e.g. "540 requests in 24 batches"); `min_n` the fewest units that
    may settle a condition on it (MIN_CELLS for cell-level intervals, 0: no minimum)."""

    estimate: float | None
    lo: float | None
    hi: float | None
    n: int
    unit: str = "requests per cell"
    why: str = ""
    scope: str = ""
    min_n: int = 0

    @property
    def known(self) -> bool:
        return self.estimate is not None and self.lo is not None and self.hi is not None


def proportion(k: int, n: int) -> Interval:
    """k / n with its Wilson interval (`metrics.wilson_interval`)."""
    w = wilson_interval(k, n)
    return Interval(k / n if n else None, *(w or (None, None)), n, "requests", "" if n else "no requests")


@define(
    "mover_ci95",
    "as its terms",
    "d = A - B; [d - sqrt((A - A_lo)^2 + (B_hi - B)^2), d + sqrt((A_hi - A)^2 + (B - B_lo)^2)]",
)
def mover(a: Interval, b: Interval, scale_a: float = 1.0, unit: str | None = None) -> Interval:
    """scale_a x a - b for independent estimates a and b, by the MOVER method (Zou & Donner 2008):
    lo = d - sqrt((A - A_lo)^2 + (B_hi - B)^2), hi = d + sqrt((A_hi - A)^2 + (B - B_lo)^2),
    A = scale_a x a (its interval scaled too, scale_a > 0). With two Wilson intervals of proportions
    and scale_a = 1 this is Newcombe's hybrid score interval for a difference of proportions."""
    if not (a.known and b.known):
        return Interval(None, None, None, min(a.n, b.n), unit or a.unit, a.why or b.why)
    A, A_lo, A_hi = scale_a * a.estimate, scale_a * a.lo, scale_a * a.hi
    d = A - b.estimate
    return Interval(
        d,
        d - math.hypot(A - A_lo, b.hi - b.estimate),
        d + math.hypot(A_hi - A, b.estimate - b.lo),
        min(a.n, b.n),
        unit or a.unit,
    )


@define(
    "newcombe_ci95", "fraction", "p1 - p2 with mover_ci95 over the two wilson_ci95 intervals (Newcombe's method 10)"
)
def newcombe(k1: int, n1: int, k2: int, n2: int) -> Interval:
    """p1 - p2 (p = k / n) with Newcombe's hybrid score interval (his method 10): MOVER over two Wilson intervals."""
    return mover(proportion(k1, n1), proportion(k2, n2))


@define(
    "paired_newcombe_ci95",
    "fraction",
    "p1 - p2 = (b - c) / n over n matched items (a both right, b only the first, c only the second, d neither); "
    "[d - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2), d + sqrt((p2 - l2)^2 - 2 phi (p2 - l2)(u1 - p1) + "
    "(u1 - p1)^2)], (l, u) the wilson_ci95 of p1 = (a + b) / n and p2 = (a + c) / n, phi = (ad - bc) / "
    "sqrt((a+b)(c+d)(a+c)(b+d)) (ad - bc less n/2, not below 0, where ad > bc; 0 where the root is 0)",
)
def paired_newcombe(a: int, b: int, c: int, d: int) -> Interval:
    """Difference of two proportions measured on the same items (the same problems answered twice),
    with Newcombe's method 10 for paired data (Stat Med 1998;17:2635): the Wilson intervals of both
    proportions combined with the items' correlation phi, so items both conditions get right or wrong
    alike narrow the interval. phi = 0 gives the unpaired Newcombe interval."""
    n = a + b + c + d
    if n == 0:
        return Interval(None, None, None, 0, "matched items", "no matched items")
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = wilson_interval(a + b, n), wilson_interval(a + c, n)
    root = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    num = a * d - b * c
    phi = 0.0 if root == 0 else (max(num - n / 2, 0.0) if num > 0 else num) / root
    lo = (p1 - p2) - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    hi = (p1 - p2) + math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    return Interval(p1 - p2, lo, hi, n, "matched items")


def t_quantile(df: int) -> float:
    """Student t 97.5% quantile: a table for df <= 30, else z + (z^3 + z)/4df + (5z^5 + 16z^3 + 3z)/96df^2."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df * df)


@define(
    "t_ci95",
    "as its values",
    "mean -+ t(n-1, 97.5%) x sd / sqrt(n) over matched pairs; ratios: over their logs, exponentiated",
)
def mean_interval(values: Sequence[float], unit: str = "pairs", *, scope: str = "", min_n: int = 0) -> Interval:
    """Mean with the t interval mean -+ t(n-1) x sd / sqrt(n); no interval with fewer than two values."""
    n = len(values)
    if n < 2:
        return Interval(
            values[0] if n else None, None, None, n, unit, f"{n} {unit}; an interval needs two", scope, min_n
        )
    mean, half = statistics.fmean(values), t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, unit, "", scope, min_n)


def ratio_interval(ratios: Sequence[float], unit: str = "pairs", *, scope: str = "", min_n: int = 0) -> Interval:
    """Geometric mean of positive ratios with the t interval of their logs, exponentiated."""
    logs = mean_interval([math.log(r) for r in ratios if r and r > 0], unit, scope=scope, min_n=min_n)

    def exp(v):
        return None if v is None else math.exp(v)

    return Interval(exp(logs.estimate), exp(logs.lo), exp(logs.hi), logs.n, unit, logs.why, scope, min_n)


def pair_interval(
    values: Sequence[float | None], *, log: bool = False, scope: str = "", min_n: int = MIN_CELLS
) -> Interval:
    """The t interval over matched cell pairs of one value per pair (None values, a pair whose figure
    is undefined, dropped): the mean of differences, or with log=True the geometric mean of ratios.
    Unit "cell pairs"; settles only with at least `min_n` pairs (MIN_CELLS)."""
    kept = [v for v in values if v is not None and (not log or v > 0)]
    return (ratio_interval if log else mean_interval)(kept, "cell pairs", scope=scope, min_n=min_n)


@define(
    "bootstrap_ci95",
    "as its statistic",
    "2.5th and 97.5th percentiles of the statistic over 2000 seeded resamples of "
    "every cell's requests (with replacement, within each cell); none under 5 requests in a cell",
)
def bootstrap(
    samples: Sequence[Sequence[T]],
    stat: Callable[[list[list[T]]], float | None],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    min_n: int = MIN_BOOT_N,
) -> Interval:
    """Percentile bootstrap of stat(samples): each replicate resamples every sample (a cell's
    requests) with replacement, to its own size, independently of the others; the interval is the
    2.5th and 97.5th percentiles of stat over the replicates where it is defined. No interval when a
    sample has fewer than `min_n` members (a resample of 1-4 requests varies too little to mean
    anything) or stat is undefined in over half the replicates. Seeded: the same data give the same interval."""
    samples = [list(s) for s in samples]
    n = min((len(s) for s in samples), default=0)
    estimate = stat(samples) if n else None
    if n < min_n:
        return Interval(estimate, None, None, n, why=f"{n} requests in a cell; the bootstrap needs at least {min_n}")
    bounds = _percentiles(
        estimate, lambda rng: stat([[s[i] for i in rng.integers(0, len(s), len(s))] for s in samples]), n_boot, seed
    )
    if bounds is None:
        return Interval(estimate, None, None, n, why=UNDEFINED)
    return Interval(estimate, *bounds, n)


def _percentiles(estimate, replicate: Callable, n_boot: int, seed: int) -> tuple[float, float] | None:
    """The 2.5th and 97.5th percentiles of replicate(rng) over n_boot replicates drawn from one
    seeded generator, those where it is defined (not None, finite); None when the estimate is
    undefined or the replicate is in over half of them. The one loop of both bootstraps."""
    rng = np.random.default_rng(seed)
    values = [v for v in (replicate(rng) for _ in range(n_boot)) if v is not None and math.isfinite(v)]
    if estimate is None or len(values) < n_boot / 2:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


@define(
    "cluster_bootstrap_ci95",
    "as its statistic",
    "2.5th and 97.5th percentiles of the statistic over 2000 seeded two-stage resamples: in every condition its "
    "clusters (cells, or matched cell pairs) drawn with replacement, then each drawn cell's requests with "
    "replacement; none with fewer than 2 clusters in a condition or under 5 requests in a cell",
)
def cluster_bootstrap(
    conditions: Sequence[Sequence[Sequence[Sequence[T]]]],
    stat: Callable[[list[list[list[list[T]]]]], float | None],
    *,
    unit: str = "cells per side",
    scope: str = "",
    n_boot: int = N_BOOT,
    seed: int = SEED,
    min_n: int = MIN_BOOT_N,
    min_clusters: int = MIN_CELLS,
) -> Interval:
    """Two-stage percentile bootstrap of stat(conditions). conditions[c][k][j] is cell j (a list of
    requests) of cluster k (one cell, or a matched pair of cells) of condition c. Each replicate draws,
    in every condition, as many clusters as it has, with replacement, then resamples every drawn
    cell's requests with replacement to its own size: the spread between cells enters as well as the
    spread within them. n = the fewest clusters in a condition, in `unit`; the interval settles a
    condition only with at least `min_clusters` of them. No interval with fewer than two clusters in a
    condition (one cell says nothing of how cells vary), fewer than `min_n` requests in a cell, or a
    statistic undefined in over half the replicates. Seeded: the same data give the same interval."""
    conds = [[[list(cell) for cell in cluster] for cluster in cond] for cond in conditions]
    n = min((len(c) for c in conds), default=0)
    smallest = min((len(cell) for c in conds for cluster in c for cell in cluster), default=0)
    estimate = stat(conds) if n and smallest else None
    common = dict(scope=scope, min_n=min_clusters)
    if n < 2:
        return Interval(estimate, None, None, n, unit, f"{n} {unit}; an interval needs two", **common)
    if smallest < min_n:
        return Interval(
            estimate,
            None,
            None,
            n,
            unit,
            f"{smallest} requests in a cell; the bootstrap needs at least {min_n}",
            **common,
        )
    bounds = _percentiles(
        estimate,
        lambda rng: stat(
            [
                [
                    [[cell[i] for i in rng.integers(0, len(cell), len(cell))] for cell in c[k]]
                    for k in rng.integers(0, len(c), len(c))
                ]
                for c in conds
            ]
        ),
        n_boot,
        seed,
    )
    if bounds is None:
        return Interval(estimate, None, None, n, unit, UNDEFINED, **common)
    return Interval(estimate, *bounds, n, unit, "", **common)


@dataclass(frozen=True)
class Condition:
    """One condition of a claim's rule: `interval` against `threshold`; `above` says which side the
    paper's finding lies on (estimate > threshold when True); `log` compares on a log scale (ratios).
    `outcome` is True (the interval lies on the finding's side), False (on the other side) or None (it
    spans the threshold, or there is no interval, or it rests on fewer units than its `min_n`);
    `needed` the sample size that would settle it (at least `min_n` units)."""

    what: str
    interval: Interval
    threshold: float
    above: bool = True
    log: bool = False

    def _scale(self, v: float) -> float:
        return math.log(v) if self.log else v

    @property
    def side(self) -> bool | None:
        """Where the interval alone lies (the outcome without the `min_n` rule)."""
        iv = self.interval
        if not iv.known or (self.log and iv.lo <= 0):
            return None
        if iv.lo > self.threshold:
            return self.above
        if iv.hi < self.threshold:
            return not self.above
        return None

    @property
    def too_few(self) -> bool:
        """Rests on fewer independent units than its interval's `min_n`."""
        return self.interval.n < self.interval.min_n

    @property
    def outcome(self) -> bool | None:
        return None if self.too_few else self.side

    @property
    def needed(self) -> int | None:
        iv = self.interval
        if self.outcome is not None:
            return None
        size = None
        if iv.known and self.side is None and not (self.log and (iv.lo <= 0 or iv.estimate <= 0)):
            est, thr = self._scale(iv.estimate), self._scale(self.threshold)
            size = needed_size(iv.n, abs(est - self._scale(iv.lo if thr < est else iv.hi)), abs(est - thr))
        return max(iv.min_n, size or 0) if self.too_few else size


@define(
    "needed_n",
    "the interval's unit (requests, cells or cell pairs)",
    "ceil(n x (h / d)^2), at least min_n (MIN_CELLS for cell-level intervals); h = estimate to interval end on the threshold's side, "
    "d = estimate to threshold (log scale for ratios)",
)
def needed_size(n: int, h: float, d: float) -> int | None:
    """Roughly the sample size that would settle an inconclusive condition if its estimate held: a
    95% interval's half-width shrinks as 1/sqrt(n). None when the estimate sits on the threshold."""
    return math.ceil(n * (h / d) ** 2) if d > 0 else None


def settle(tests: Sequence[Condition]) -> bool | None:
    """All conditions settled for the finding: True; any settled against it: False; else None."""
    outcomes = [t.outcome for t in tests]
    if outcomes and all(o is True for o in outcomes):
        return True
    if any(o is False for o in outcomes):
        return False
    return None
