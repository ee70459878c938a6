"""CPU lists and pinning for benchmarks that run a client and the server it measures on one machine.

A CPU list is Linux's notation (as `taskset -c` and /proc's Cpus_allowed_list write it):
comma-separated CPU numbers and inclusive ranges, e.g. "1" or "0,2-3". `parse_cpus` checks it
against the CPUs this process may run on (os.sched_getaffinity), so a CPU the machine lacks is
a user error naming the flag, not a failure half-way through a run.

`pinned(cpus)` sets the affinity of every thread of this process to `cpus` and restores each
thread's previous set on exit. Threads started inside inherit it, and so does every child process
started inside (a child inherits the affinity of the thread that forks it), which is how a
subprocess is pinned here: no `preexec_fn`, which is unsafe in a process with threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from rllm_study.errors import UserError


def format_cpus(cpus) -> str:
    """A sorted CPU set in the list notation, ranges joined: {0, 2, 3} -> "0,2-3"."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def parse_cpus(text: str, flag: str) -> tuple[int, ...]:
    """The sorted CPUs of list `text`; UserError naming `flag` for a malformed list or a CPU this
    process cannot run on."""
    if not hasattr(os, "sched_setaffinity"):
        raise UserError(f"{flag}: CPU pinning needs Linux (os.sched_setaffinity); leave {flag} out here")
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if dash else int(lo)
            if first < 0 or last < first:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise UserError(f"{flag} {text!r}: not a CPU list; write CPU numbers and ranges like 1 or 0,2-3") from None
    available = os.sched_getaffinity(0)
    missing = cpus - available
    if missing:
        raise UserError(
            f"{flag} {text!r}: no CPU {format_cpus(missing)} here; this process may run on CPUs {format_cpus(available)}"
        )
    return tuple(sorted(cpus))


def _threads() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task")]


@contextlib.contextmanager
def pinned(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Every thread of this process (and so every thread and child started inside) on `cpus`;
    each thread's own set back on exit. None: nothing changes."""
    if cpus is None:
        yield
        return
    before: dict[int, set[int]] = {}
    for tid in _threads():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
    try:
        yield
    finally:
        default = before[threading.get_native_id()]
        for tid in _threads():  # threads started inside get the calling thread's set back
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, before.get(tid, default))
