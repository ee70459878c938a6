"""Closed loop: keep C requests in flight; a new one goes as soon as one finishes."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rllm_study.workloads.arrivals.base import ArrivalProcess, Due, Param, Timing

CONCURRENCY = Param("concurrency", "count", "Requests kept in flight.", default=8)


@dataclass(frozen=True)
class ClosedLoop(ArrivalProcess, Timing):
    """C - in_flight requests are due at every call (none while C are in flight), arriving now."""

    NAME = "closed"
    SUMMARY = "keep C requests in flight; send the next as one finishes"
    PARAMS = (CONCURRENCY,)

    concurrency: int

    @classmethod
    def build(cls, n: int, seed: int, params: dict) -> ClosedLoop:
        return cls(params["concurrency"])

    @classmethod
    def cell_name(cls, params: dict) -> str:
        return f"closed{params.get('concurrency', CONCURRENCY.default)}"

    def due(self, now_s: float, sent: int, in_flight: int) -> list[Due]:
        return [Due(now_s)] * max(0, self.concurrency - in_flight)

    def preview(self, n: int, as_json: bool) -> list[str]:
        if as_json:
            return [json.dumps({"arrival": self.NAME, "n": n, "concurrency": self.concurrency})]
        return [
            f"keep {self.concurrency} requests in flight; send the next as one finishes; "
            "times depend on completions, so none are precomputed"
        ]
