"""What every arrival process is: its parameters, their one validator, and the timing protocol.

A process is a registered class (see `rllm_study.workloads.arrivals.ARRIVALS`) that owns
  PARAMS         the workload keys it takes (spec `[workload]` keys and `rllm-study schedule` flags)
  build          a timing object for n requests and a seed, from validated parameters
  cell_name      its fragment of a cell's folder name
and whose timing object answers the runner's two questions:
  due(now_s, sent, in_flight)   which requests to send now: one `Due` each, in order, given the
                                clock (seconds since the session started), how many of the
                                session's requests were sent and how many of them are unfinished
                                (a finish shows up as a smaller `in_flight` at the next call); the
                                runner sends the first of them while requests remain
  next_due_s(sent)              when the next request is due by the clock alone (None: it waits
                                for finishes), so an idle runner knows how long it may sleep
and prints its own `schedule` preview (`preview`). The runner never asks which kind it has.

Open-loop processes precompute their times as an `OpenLoop` schedule: seconds from the session
start, the first request at 0. A random open-loop schedule is rescaled (`rescaled_gaps`) so its
realised mean rate is its target rate exactly; random draws come from numpy's
Generator(PCG64(seed)), so a seed fixes the schedule.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from rllm_study.errors import UserError

PARAM_KINDS = {  # a Param's kind -> the values it takes (checked by `_check_value`)
    "rate": "number > 0",
    "seconds": "number >= 0",
    "count": "integer >= 1",
    "file": "text (path)",
    "switch": "true or false",
}


@dataclass(frozen=True)
class Param:
    """One parameter of an arrival process: its workload key, its kind (one of PARAM_KINDS) and a
    default (None: required)."""

    key: str
    kind: str
    help: str
    default: object = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


RATE = Param("rate", "rate", "Mean arrival rate, requests/s.")
CV = Param("cv", "rate", "Coefficient of variation of the gaps (shape = 1/CV^2).")


@dataclass(frozen=True)
class Naming:
    """How an error message names a parameter and the process: CLI flags or spec keys."""

    key: Callable[[str], str]
    arrival: Callable[[str], str]


CLI = Naming(lambda key: "--" + key.replace("_", "-"), lambda kind: f"--arrival {kind}")
SPEC = Naming(lambda key: f"workload.{key}", lambda kind: f"workload.arrival = {kind!r}")


def _check_value(param: Param, value, naming: Naming):
    name = naming.key(param.key)
    if param.kind == "file":
        if not isinstance(value, (str, Path)) or not str(value):
            raise UserError(f"{name} must be a file path, got {value!r}")
        return Path(value)
    if param.kind == "switch":
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number, got {value!r}")
    if param.kind == "count":
        if value != int(value) or value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
        return int(value)
    if param.kind == "seconds":
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{name} must be a number of seconds >= 0, got {value}")
        return float(value)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be > 0, got {value}")
    return float(value)


@dataclass(frozen=True)
class Due:
    """One request to send now: its arrival time (seconds from the session start; the scheduled
    time for open loop, the clock's now otherwise) and its synchronous batch (None outside batches)."""

    at_s: float
    batch: int | None = None


class Timing(ABC):
    """What the runner drives (see the module docstring)."""

    @abstractmethod
    def due(self, now_s: float, sent: int, in_flight: int) -> list[Due]: ...

    def next_due_s(self, sent: int) -> float | None:
        return None

    @abstractmethod
    def preview(self, n: int, as_json: bool) -> list[str]:
        """The lines `rllm-study schedule` prints for n requests (JSON lines with as_json)."""


class ArrivalProcess(ABC):
    """A registered arrival process (see the module docstring); subclasses set NAME, SUMMARY, PARAMS."""

    NAME: ClassVar[str]
    SUMMARY: ClassVar[str]  # one line: what it sends when, with its formula
    PARAMS: ClassVar[tuple[Param, ...]]

    @classmethod
    def check(cls, params: dict, naming: Naming = CLI) -> dict:
        """The one validator: `params` (None values count as not given) -> every PARAMS key with its
        value checked and converted, defaults filled. UserError names the parameter as `naming` does."""
        given = {k: v for k, v in params.items() if v is not None}
        keys = {p.key for p in cls.PARAMS}
        extra = sorted(set(given) - keys)
        if extra:
            uses = ", ".join(naming.key(k) for k in sorted(keys))
            raise UserError(f"{naming.key(extra[0])} does not apply to {naming.arrival(cls.NAME)} (it uses {uses})")
        out = {}
        for p in cls.PARAMS:
            if p.key not in given and p.default is None:
                raise UserError(f"{naming.arrival(cls.NAME)} needs {naming.key(p.key)}")
            out[p.key] = _check_value(p, given[p.key], naming) if p.key in given else p.default
        return out

    @classmethod
    @abstractmethod
    def build(cls, n: int, seed: int, params: dict) -> Timing:
        """The timing of n >= 1 requests; `params` as `check` returns them."""

    @classmethod
    @abstractmethod
    def cell_name(cls, params: dict) -> str:
        """This process's part of a cell name, from a workload table as given (defaults not filled)."""


@dataclass(frozen=True)
class OpenLoop(Timing):
    """Arrival times in seconds from the start, sorted; `kind` names the process. A request is due
    once the clock reaches its time, whatever is in flight."""

    times: tuple[float, ...]
    kind: str

    def due(self, now_s: float, sent: int, in_flight: int) -> list[Due]:
        out = []
        while sent + len(out) < len(self.times) and self.times[sent + len(out)] <= now_s:
            out.append(Due(self.times[sent + len(out)]))
        return out

    def next_due_s(self, sent: int) -> float | None:
        return self.times[sent] if sent < len(self.times) else None

    def preview(self, n: int, as_json: bool) -> list[str]:
        if as_json:
            return [json.dumps(t) for t in self.times]
        rate, cv = gap_stats(self.times)
        lines = [
            f"measured: rate {_g(rate)} req/s = (n-1) / (last - first); CV of gaps {_g(cv)} = std / mean",
            f"{'#':>6}  {'arrival_s':>12}  {'gap_s':>10}",
        ]
        previous = None
        for i, t in enumerate(self.times):
            lines.append(f"{i:>6}  {t:>12.4f}  {'-' if previous is None else f'{t - previous:.4f}':>10}")
            previous = t
        return lines

    @classmethod
    def from_gaps(cls, kind: str, gaps: np.ndarray) -> OpenLoop:
        """The schedule whose first request is at 0 and whose n-1 gaps are `gaps`."""
        times = np.concatenate(([0.0], np.cumsum(gaps)))
        return cls(tuple(float(t) for t in times), kind)


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def rescaled_gaps(gaps: np.ndarray, rate: float) -> np.ndarray:
    """Gaps multiplied by one factor, (n-1) / (rate * sum(gaps)), so the realised mean rate
    (n-1) / (last - first) of the schedule is `rate` exactly. The relative sizes of the gaps (so
    their CV and the schedule's shape) are unchanged: at one target rate, schedules of any CV
    offer the same load over the same span. An empty or all-zero `gaps` is returned as it is."""
    total = float(np.sum(gaps))
    return gaps if total == 0 else gaps * (len(gaps) / (rate * total))


def gap_stats(*schedules) -> tuple[float | None, float | None]:
    """(rate, cv) realised by one or more schedules (each a sequence of arrival times in seconds,
    e.g. the sessions of a cell): rate = sum(n_i - 1) / sum(last_i - first_i) in requests/s;
    cv = std / mean of all gaps between consecutive arrivals of a schedule, pooled (population std).
    None where there is no gap or the gaps sum to 0."""
    gaps = np.concatenate([np.diff(np.sort(np.asarray(s, dtype=float))) for s in schedules] or [np.empty(0)])
    if gaps.size == 0 or gaps.sum() == 0:
        return None, None
    return float(gaps.size / gaps.sum()), float(gaps.std() / gaps.mean())
