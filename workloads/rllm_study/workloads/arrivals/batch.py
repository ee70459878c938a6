"""Synchronous batches (the paper's): send B requests together, wait until all have finished, send the next B."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rllm_study.workloads.arrivals.base import ArrivalProcess, Due, Param, Timing

BATCH_SIZE = Param("batch_size", "count", "Requests per synchronous batch.", default=8)


@dataclass(frozen=True)
class SyncBatches(ArrivalProcess, Timing):
    """Batch k (from 0) holds requests kB .. kB+B-1 of the session (the last may be short); it is
    due when nothing is in flight, and every request of it arrives at that moment."""

    NAME = "batch"
    SUMMARY = "send B requests at once, wait until all finish, send the next B (the paper's)"
    PARAMS = (BATCH_SIZE,)

    batch_size: int

    @classmethod
    def build(cls, n: int, seed: int, params: dict) -> SyncBatches:
        return cls(params["batch_size"])

    @classmethod
    def cell_name(cls, params: dict) -> str:
        return f"batch{params.get('batch_size', BATCH_SIZE.default)}"

    def due(self, now_s: float, sent: int, in_flight: int) -> list[Due]:
        if in_flight:
            return []
        return [Due(now_s, sent // self.batch_size)] * self.batch_size

    def preview(self, n: int, as_json: bool) -> list[str]:
        if as_json:
            return [json.dumps({"arrival": self.NAME, "n": n, "batch_size": self.batch_size})]
        return [
            f"send {self.batch_size} at once, wait until all finish, then the next {self.batch_size}; "
            "times depend on completions, so none are precomputed"
        ]
