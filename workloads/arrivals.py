"""When requests are sent: arrival processes, seeded and computed before the run.

  batch     SyncBatches(B): send B requests, wait until all finish, send the next B (the paper's)
  closed    ClosedLoop(C): keep C requests in flight; a new one goes when one finishes
  poisson   OpenLoop: gaps ~ Exponential(mean 1/rate)                      (CV of gaps = 1)
  gamma     OpenLoop: gaps ~ Gamma(shape k = 1/CV^2, scale = 1/(rate*k))   (mean 1/rate, CV as asked)
  constant  OpenLoop: gaps = 1/rate
  trace     OpenLoop: timestamps from a file (seconds, one a line; `#` starts a comment),
            sorted and shifted so the first is 0; the first n are used

Open-loop times are seconds from the start of the run: the first request at 0, then n-1 gaps.
Random draws come from numpy's Generator(PCG64(seed)), so a seed fixes the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rllm_study.errors import UserError

ARRIVALS = ("batch", "closed", "poisson", "gamma", "constant", "trace")


@dataclass(frozen=True)
class OpenLoop:
    """Arrival times in seconds from the start, sorted; `kind` names the process."""

    times: tuple[float, ...]
    kind: str


@dataclass(frozen=True)
class ClosedLoop:
    concurrency: int


@dataclass(frozen=True)
class SyncBatches:
    batch_size: int


_USES = {
    "batch": {"batch_size"},
    "closed": {"concurrency"},
    "poisson": {"rate"},
    "gamma": {"rate", "cv"},
    "constant": {"rate"},
    "trace": {"trace"},
}
_OPTION = {"rate": "--rate", "cv": "--cv", "concurrency": "--concurrency", "batch_size": "--batch-size", "trace": "--trace"}


def _positive(name: str, value: float | None, kind: str) -> float:
    if value is None:
        raise UserError(f"--arrival {kind} needs {_OPTION[name]}")
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{_OPTION[name]} must be > 0, got {value}")
    return float(value)


def _whole(name: str, value: int | None, kind: str) -> int:
    if value is None:
        raise UserError(f"--arrival {kind} needs {_OPTION[name]}")
    if value < 1:
        raise UserError(f"{_OPTION[name]} must be at least 1, got {value}")
    return int(value)


def read_trace(path: Path) -> list[float]:
    """Timestamps (seconds) from a file, one a line; blank lines and `#` comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read trace file {path}: {getattr(err, 'strerror', None) or err}") from None
    times = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            t = float(text)
        except ValueError:
            raise UserError(f"trace file {path} line {number}: {text!r} is not a number of seconds") from None
        if not math.isfinite(t) or t < 0:
            raise UserError(f"trace file {path} line {number}: timestamp {text} must be a finite number >= 0")
        times.append(t)
    if not times:
        raise UserError(f"trace file {path} holds no timestamps")
    return times


def _open_loop(kind: str, gaps: np.ndarray) -> OpenLoop:
    times = np.concatenate(([0.0], np.cumsum(gaps)))
    return OpenLoop(tuple(float(t) for t in times), kind)


def make_arrivals(kind: str, n: int, *, rate: float | None = None, cv: float | None = None,
                  concurrency: int | None = None, batch_size: int | None = None,
                  trace: Path | None = None, seed: int = 0) -> OpenLoop | ClosedLoop | SyncBatches:
    """The arrival process for `n` requests (see the module doc for each kind)."""
    if kind not in ARRIVALS:
        raise UserError(f"unknown arrival {kind!r}: choose one of {', '.join(ARRIVALS)}")
    if n < 1:
        raise UserError(f"the number of requests must be at least 1, got {n}")
    given = {k for k, v in {"rate": rate, "cv": cv, "concurrency": concurrency, "batch_size": batch_size, "trace": trace}.items() if v is not None}
    extra = sorted(given - _USES[kind])
    if extra:
        raise UserError(f"{_OPTION[extra[0]]} does not apply to --arrival {kind} (it uses {', '.join(_OPTION[u] for u in sorted(_USES[kind]))})")
    if kind == "batch":
        return SyncBatches(_whole("batch_size", batch_size, kind))
    if kind == "closed":
        return ClosedLoop(_whole("concurrency", concurrency, kind))
    if kind == "trace":
        if trace is None:
            raise UserError("--arrival trace needs --trace FILE")
        times = sorted(read_trace(trace))
        if len(times) < n:
            raise UserError(f"trace file {trace} has {len(times)} timestamps, fewer than the {n} requests asked")
        return OpenLoop(tuple(t - times[0] for t in times[:n]), kind)
    mean_gap = 1.0 / _positive("rate", rate, kind)
    rng = np.random.Generator(np.random.PCG64(seed))
    if kind == "constant":
        return _open_loop(kind, np.full(n - 1, mean_gap))
    if kind == "poisson":
        return _open_loop(kind, rng.exponential(mean_gap, n - 1))
    shape = 1.0 / _positive("cv", cv, kind) ** 2
    return _open_loop(kind, rng.gamma(shape, mean_gap / shape, n - 1))


def gap_stats(times: tuple[float, ...]) -> tuple[float, float]:
    """(rate, cv) measured from a schedule: rate = (n-1) / (last - first) in requests/s;
    cv = std / mean of the gaps (population std). NaN where there are too few arrivals."""
    gaps = np.diff(np.asarray(times, dtype=float))
    if gaps.size == 0 or gaps.sum() == 0:
        return math.nan, math.nan
    return float(gaps.size / gaps.sum()), float(gaps.std() / gaps.mean())
