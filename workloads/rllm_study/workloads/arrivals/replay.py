"""Trace replay with lengths: the arrival times of a Mooncake-style or BurstGPT trace, whose rows
also give each request's prompt and output length (`rllm_study.workloads.traces`; the cell's
requests come from the same rows through the `trace` data set)."""

from __future__ import annotations

import math
from pathlib import Path

from rllm_study.workloads.arrivals.base import ArrivalProcess, OpenLoop, Param
from rllm_study.workloads.arrivals.trace import TRACE
from rllm_study.workloads.traces import DEFAULT_BLOCK_TOKENS, load_trace

TIME_SCALE = Param("time_scale", "rate", "Replayed gap = recorded gap x time_scale (0.5: twice as fast).", default=1.0)
WINDOW_START = Param(
    "window_start_s", "seconds", "Start of the replayed window, trace seconds after its first request.", default=0.0
)
WINDOW = Param(
    "window_s", "rate", "Length of the replayed window in trace seconds (default: to the end).", default=math.inf
)
BLOCK_TOKENS = Param(
    "block_tokens", "count", "Prompt tokens per trace hash id (Mooncake: 512).", default=DEFAULT_BLOCK_TOKENS
)


class Replay(ArrivalProcess):
    """The window's rows sorted by time, shifted so the first is at 0, gaps times time_scale;
    the first n are used (`traces.select`)."""

    NAME = "replay"
    SUMMARY = (
        "a Mooncake-style .jsonl or BurstGPT .csv trace's times, with its prompt and output lengths "
        "(data set `trace`), in a window, time-scaled"
    )
    PARAMS = (TRACE, TIME_SCALE, WINDOW_START, WINDOW, BLOCK_TOKENS)

    @classmethod
    def build(cls, n: int, seed: int, params: dict) -> OpenLoop:
        rows = load_trace(params["trace"], params["time_scale"], params["window_start_s"], params["window_s"], n)
        return OpenLoop(tuple(r.at_s for r in rows), cls.NAME)

    @classmethod
    def cell_name(cls, params: dict) -> str:
        scale = f"-x{params['time_scale']}" if params.get("time_scale") is not None else ""
        window = ""
        if params.get("window_start_s") is not None or params.get("window_s") is not None:
            window = f"-w{params.get('window_start_s', 0)}-{params.get('window_s', 'end')}"
        return f"replay-{Path(str(params.get('trace'))).stem}{scale}{window}"
