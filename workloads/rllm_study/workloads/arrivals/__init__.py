"""When requests are sent: arrival processes, one module each, registered in ARRIVALS.

Each module's class states its rule and formula (SUMMARY, shown by `rllm-study schedule --help`);
what a process is and how the runner drives it is in `base`. Open-loop times are seconds from
the start of the run: the first request at 0, then n-1 gaps. Poisson and Gamma gaps are rescaled
by one factor so the realised mean rate (n-1)/(last - first) is the target rate exactly
(`base.rescaled_gaps`): cells that compare CVs at one rate offer the same load over the same span.
Adding a process: one module with an `ArrivalProcess` subclass, and its entry in ARRIVALS.
"""

from __future__ import annotations

from rllm_study.errors import UserError
from rllm_study.workloads.arrivals.base import CLI, SPEC, ArrivalProcess, Naming, OpenLoop, Param, Timing, gap_stats
from rllm_study.workloads.arrivals.batch import SyncBatches
from rllm_study.workloads.arrivals.closed import ClosedLoop
from rllm_study.workloads.arrivals.constant import Constant
from rllm_study.workloads.arrivals.gamma import Gamma
from rllm_study.workloads.arrivals.poisson import Poisson
from rllm_study.workloads.arrivals.ramp import Ramp
from rllm_study.workloads.arrivals.replay import Replay
from rllm_study.workloads.arrivals.sessions import Sessions, SessionTiming
from rllm_study.workloads.arrivals.trace import Trace, read_trace

ARRIVALS: dict[str, type[ArrivalProcess]] = {
    p.NAME: p for p in (SyncBatches, ClosedLoop, Poisson, Gamma, Constant, Trace, Ramp, Replay, Sessions)
}

__all__ = [
    "ARRIVALS",
    "ArrivalProcess",
    "ClosedLoop",
    "OpenLoop",
    "SessionTiming",
    "SyncBatches",
    "Timing",
    "arrival_class",
    "arrival_params",
    "gap_stats",
    "make_arrivals",
    "read_trace",
    "timing_of_workload",
    "workload_arrival_keys",
    "workload_arrival_name",
    "check_workload",
]


def arrival_class(kind: str, naming: Naming = CLI) -> type[ArrivalProcess]:
    if kind not in ARRIVALS:
        raise UserError(f"unknown arrival {kind!r} ({naming.key('arrival')}): choose one of {', '.join(ARRIVALS)}")
    return ARRIVALS[kind]


def arrival_params() -> dict[str, list[tuple[str, Param]]]:
    """Every parameter key of the registered processes -> (process name, its Param) for each process taking it."""
    out: dict[str, list[tuple[str, Param]]] = {}
    for name, process in ARRIVALS.items():
        for p in process.PARAMS:
            out.setdefault(p.key, []).append((name, p))
    return out


def workload_arrival_keys() -> set[str]:
    """The `[workload]` keys the arrival processes own: `arrival` and every parameter key."""
    return {"arrival", *arrival_params()}


def make_arrivals(kind: str, n: int, *, seed: int = 0, naming: Naming = CLI, **params) -> Timing:
    """The timing of `n` requests under process `kind` with `params` (None = not given), checked
    by the process's validator; UserError names what is wrong as `naming` does (CLI flags by default)."""
    process = arrival_class(kind, naming)
    if n < 1:
        raise UserError(f"the number of requests must be at least 1, got {n}")
    return process.build(n, seed, process.check(params, naming))


def _arrival_part(wl: dict) -> dict:
    keys = workload_arrival_keys() - {"arrival"}
    return {k: v for k, v in wl.items() if k in keys}


def check_workload(wl: dict) -> dict:
    """A spec's workload table (after axes are expanded): its arrival parameters checked as spec
    keys (`workload.rate`); returns them, defaults filled. Other keys (shared_prefix) are the caller's."""
    return arrival_class(wl["arrival"], SPEC).check(_arrival_part(wl), SPEC)


def timing_of_workload(wl: dict, n: int, seed: int) -> Timing:
    """The timing a cell's workload gives its n requests (a resumed session: the n left)."""
    return make_arrivals(wl["arrival"], n, seed=seed, naming=SPEC, **_arrival_part(wl))


def workload_arrival_name(wl: dict) -> str:
    """The arrival process's part of a cell name (wl as recorded; its defaults are not filled)."""
    return arrival_class(wl["arrival"], SPEC).cell_name(wl)
