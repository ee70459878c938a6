"""Trace replay: arrival timestamps from a file."""

from __future__ import annotations

import math
from pathlib import Path

from rllm_study.errors import UserError
from rllm_study.workloads.arrivals.base import ArrivalProcess, OpenLoop, Param

TRACE = Param("trace", "file", "File of arrival timestamps in seconds, one a line.")


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


class Trace(ArrivalProcess):
    """The file's timestamps sorted and shifted so the first is 0; the first n are used (not rescaled)."""

    NAME = "trace"
    SUMMARY = "timestamps from a file (seconds, one a line; `#` starts a comment), sorted, shifted to start at 0"
    PARAMS = (TRACE,)

    @classmethod
    def build(cls, n: int, seed: int, params: dict) -> OpenLoop:
        trace = params["trace"]
        times = sorted(read_trace(trace))
        if len(times) < n:
            raise UserError(f"trace file {trace} has {len(times)} timestamps, fewer than the {n} requests asked")
        return OpenLoop(tuple(t - times[0] for t in times[:n]), cls.NAME)

    @classmethod
    def cell_name(cls, params: dict) -> str:
        return f"trace-{Path(str(params.get('trace'))).stem}"
