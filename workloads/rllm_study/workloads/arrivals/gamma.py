"""Gamma arrivals: bursty open loop at a mean rate and a CV of the gaps (the paper's real-world workload)."""

from __future__ import annotations

from rllm_study.workloads.arrivals.base import CV, RATE, ArrivalProcess, OpenLoop, rescaled_gaps, rng


class Gamma(ArrivalProcess):
    """gaps ~ Gamma(shape k = 1/CV^2, scale = 1/(rate*k)) (mean 1/rate), n-1 of them, then
    `rescaled_gaps` to the rate: CV 1 is Poisson, a larger CV clusters arrivals into bursts."""

    NAME = "gamma"
    SUMMARY = "gaps ~ Gamma(shape 1/CV^2, mean 1/rate), rescaled so the realised rate is the rate"
    PARAMS = (RATE, CV)

    @classmethod
    def build(cls, n: int, seed: int, params: dict) -> OpenLoop:
        rate, shape = params["rate"], 1.0 / params["cv"] ** 2
        gaps = rng(seed).gamma(shape, 1 / (rate * shape), n - 1)
        return OpenLoop.from_gaps(cls.NAME, rescaled_gaps(gaps, rate))

    @classmethod
    def cell_name(cls, params: dict) -> str:
        return f"gamma-r{params.get('rate')}-cv{params.get('cv')}"
