"""Load sweeps: the trade-off between per-user speed and machine throughput, its Pareto front and knee.

A sweep is a series of cells that differ only in their offered load: the concurrency of a closed
loop, synchronous batches or sessions, or the rate of an open-loop process (`load_of`). Each cell
is one point (`SweepPoint`): its load, machine throughput (`output_tok_s`), goodput
(`goodput_req_s`, with the cell's SLOs), per-user output speed (`user_tok_s` p50) and TPOT p50,
each with the count of completed requests it rests on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from rllm_study.analysis.metrics import define

CONCURRENCY_KEYS = ("concurrency", "batch_size")  # closed loop, sessions; synchronous batches
RATE_KEYS = ("rate", "session_rate")  # open loop


def load_of(workload: dict) -> tuple[str, float] | None:
    """(what is swept, its value) of a cell's workload: ("rate", r) for open loop, ("concurrency", c)
    for closed loop, batches and sessions; None for a workload without one (a trace replay)."""
    for key in RATE_KEYS:
        if workload.get(key):
            return "rate", float(workload[key])
    for key in CONCURRENCY_KEYS:
        if workload.get(key):
            return "concurrency", float(workload[key])
    return None


@dataclass(frozen=True)
class SweepPoint:
    load: float
    throughput: float | None  # output tokens/s of the cell
    user_speed: float | None  # p50 over completed requests of user_tok_s
    tpot: float | None  # p50 TPOT, s
    goodput: float | None  # requests/s meeting every SLO (None without SLOs)
    n: int  # completed requests the percentiles rest on
    label: str = ""


T = TypeVar("T")


def non_dominated(points: list[T], x: Callable[[T], float], y: Callable[[T], float]) -> list[T]:
    """The points no other point beats on both x and y (at least as large on both, larger on one),
    in order of x; larger is better on both axes."""
    front = [
        p for p in points if not any(x(q) >= x(p) and y(q) >= y(p) and (x(q) > x(p) or y(q) > y(p)) for q in points)
    ]
    return sorted(front, key=x)


@define(
    "pareto_front",
    "points",
    "points p with no other point q having q.throughput >= p.throughput and "
    "q.user_speed >= p.user_speed, one of them strictly larger",
)
def pareto_front(points: list[SweepPoint]) -> list[SweepPoint]:
    """The sweep points no other point beats on both machine throughput and per-user speed (points
    missing either are left out), in order of throughput."""
    known = [p for p in points if p.throughput is not None and p.user_speed is not None]
    return non_dominated(known, lambda p: p.throughput, lambda p: p.user_speed)


@define(
    "sweep_knee",
    "point",
    "the first point i (in order of load) with tpot[i+1] / tpot[i] > throughput[i+1] / "
    "throughput[i]; the last point when there is none",
)
def knee(points: list[SweepPoint]) -> SweepPoint | None:
    """The last point before latency grows faster than throughput: going up in load, the first
    step whose TPOT p50 grows by a larger factor than its output throughput marks the point it
    started from. Points missing TPOT or throughput are skipped; None with fewer than two points."""
    known = sorted((p for p in points if p.tpot and p.throughput), key=lambda p: p.load)
    if len(known) < 2:
        return None
    for a, b in zip(known, known[1:]):
        if b.tpot / a.tpot > b.throughput / a.throughput:
            return a
    return known[-1]
