"""Constant-rate arrivals: equal gaps of 1/rate."""

from __future__ import annotations

import numpy as np

from rllm_study.workloads.arrivals.base import RATE, ArrivalProcess, OpenLoop


class Constant(ArrivalProcess):
    """gaps = 1/rate, n-1 of them (CV 0)."""

    NAME = "constant"
    SUMMARY = "gaps = 1/rate"
    PARAMS = (RATE,)

    @classmethod
    def build(cls, n: int, seed: int, params: dict) -> OpenLoop:
        return OpenLoop.from_gaps(cls.NAME, np.full(n - 1, 1.0 / params["rate"]))

    @classmethod
    def cell_name(cls, params: dict) -> str:
        return f"constant-r{params.get('rate')}"
