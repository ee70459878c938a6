"""Poisson arrivals: exponential gaps at a mean rate (CV of the gaps 1), rescaled to the rate exactly."""

from __future__ import annotations

from rllm_study.workloads.arrivals.base import RATE, ArrivalProcess, OpenLoop, rescaled_gaps, rng


class Poisson(ArrivalProcess):
    """gaps ~ Exponential(mean 1/rate), n-1 of them, then `rescaled_gaps` to the rate."""

    NAME = "poisson"
    SUMMARY = "gaps ~ Exponential(mean 1/rate), rescaled so the realised rate is the rate (CV of gaps 1)"
    PARAMS = (RATE,)

    @classmethod
    def build(cls, n: int, seed: int, params: dict) -> OpenLoop:
        rate = params["rate"]
        return OpenLoop.from_gaps(cls.NAME, rescaled_gaps(rng(seed).exponential(1 / rate, n - 1), rate))

    @classmethod
    def cell_name(cls, params: dict) -> str:
        return f"poisson-r{params.get('rate')}"
