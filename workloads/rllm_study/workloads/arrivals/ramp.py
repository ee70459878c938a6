"""Ramp-up arrivals: an open-loop rate rising (or falling) linearly over the run, from r0 to r1.

A non-homogeneous Poisson process (a Gamma renewal process when CV != 1) with linear intensity
    lambda(t) = r0 + (r1 - r0) t / T   on [0, T],   T = 2 (n-1) / (r0 + r1)   seconds,
so the intensity integrates to n-1 over the run: Lambda(t) = r0 t + (r1 - r0) t^2 / (2T).
Drawn by time change: n-1 unit-mean gaps in operational time, u_i ~ Gamma(shape 1/CV^2, scale
CV^2) (exponential for CV 1), rescaled (`rescaled_gaps` at rate 1) so their sum is n-1 exactly;
s_k = u_1 + ... + u_k; then t_k = Lambda^-1(s_k) = 2 s_k / (r0 + sqrt(r0^2 + 2 a s_k)), a = (r1 - r0) / T.
The first request arrives at 0, the last at T exactly, so the realised mean rate
(n-1) / (last - first) is (r0 + r1) / 2; the local rate near time t is lambda(t): r0 at the
start, r1 at the end. (vLLM's `--ramp-up-strategy linear` raises the rate with the request
index instead; here it rises with time.)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from rllm_study.workloads.arrivals.base import CV, ArrivalProcess, OpenLoop, Param, rescaled_gaps, rng

RATE_START = Param("rate_start", "rate", "Arrival rate at the start of a ramp, requests/s (r0).")
RATE_END = Param("rate_end", "rate", "Arrival rate at the end of a ramp, requests/s (r1).")


class Ramp(ArrivalProcess):
    NAME = "ramp"
    SUMMARY = "rate rising linearly in time from rate_start to rate_end (Poisson, or Gamma gaps with cv)"
    PARAMS = (RATE_START, RATE_END, replace(CV, default=1.0))

    @classmethod
    def build(cls, n: int, seed: int, params: dict) -> OpenLoop:
        r0, r1, cv = params["rate_start"], params["rate_end"], params["cv"]
        span = 2 * (n - 1) / (r0 + r1)
        a = (r1 - r0) / span
        u = rescaled_gaps(rng(seed).gamma(1 / cv**2, cv**2, n - 1), 1.0)
        s = np.concatenate(([0.0], np.cumsum(u)))
        times = 2 * s / (r0 + np.sqrt(r0**2 + 2 * a * s))
        return OpenLoop(tuple(float(t) for t in times), cls.NAME)

    @classmethod
    def cell_name(cls, params: dict) -> str:
        cv = f"-cv{params['cv']}" if params.get("cv") is not None else ""
        return f"ramp-r{params.get('rate_start')}-{params.get('rate_end')}{cv}"
