"""Cross-check two engines on one greedy workload (e.g. the in-process llama.cpp engine against
llama-server on the same model): per request the output token counts must be equal, and the
throughput ratio says how fast one serves the workload relative to the other.

  throughput = the metric output_tok_s of the recorded batch (all output tokens / (last finish -
               first submit); `rllm_study.analysis.metrics`, `rllm-study metrics --explain`)
  ratio      = median throughput(a) / median throughput(b) over the rounds
`run_batch` is also the closed-batch measurement of `rllm_study.bench.techniques`.
Each engine gets all requests at once (a closed batch), then is stepped until idle. Rounds
alternate the order (a b, b a, a b, ...) so that load from other processes on a shared machine
falls on both engines alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import cached_property

from rllm_study.analysis.metrics import cell_metrics
from rllm_study.backends.base import FINISH_ERROR, Engine, Request
from rllm_study.running.recorder import record_batch
from rllm_study.running.results import Cell


@dataclass(frozen=True)
class BatchRun:
    """One closed batch as the study records it (`rllm_study.running.recorder.record_batch`); its figures
    are the study's metrics of that cell."""

    cell: Cell

    @cached_property
    def metrics(self) -> dict:
        return cell_metrics(self.cell)

    @property
    def finishes(self) -> dict[str, dict]:
        """request id -> its requests.jsonl record."""
        return {r["id"]: r for r in self.cell.requests}

    @property
    def output_tokens(self) -> int:
        return sum(r["output_tokens"] for r in self.cell.requests)

    @property
    def throughput(self) -> float:
        """The metric output_tok_s."""
        return self.metrics["throughput"]["output_tok_s"] or 0.0

    @property
    def first_token_s(self) -> float | None:
        """The smallest ttft_s (the TTFT of a batch of one)."""
        return self.metrics["latency"]["ttft_s"]["min"]


def run_batch(engine: Engine, requests: list[Request]) -> BatchRun:
    """Submit every request, step until idle (see BatchRun)."""
    return BatchRun(record_batch(engine, requests))


def _mismatches(run_a: BatchRun, run_b: BatchRun, requests: list[Request]) -> list[str]:
    """One line per request that failed or whose prompt or output token counts differ."""
    lines = []
    for request in requests:
        fa, fb = run_a.finishes.get(request.id), run_b.finishes.get(request.id)
        if fa is None or fb is None or FINISH_ERROR in (fa["finish_reason"], fb["finish_reason"]):
            lines.append(f"{request.id}: failed ({fa and fa['error']} / {fb and fb['error']})")
        elif (fa["prompt_tokens"], fa["output_tokens"]) != (fb["prompt_tokens"], fb["output_tokens"]):
            lines.append(
                f"{request.id}: prompt {fa['prompt_tokens']} vs {fb['prompt_tokens']}, "
                f"output {fa['output_tokens']} vs {fb['output_tokens']}"
            )
    return lines


@dataclass(frozen=True)
class CrossCheck:
    a: list[BatchRun]  # one per round
    b: list[BatchRun]
    mismatches: list[str]  # from every round, prefixed with its number

    @staticmethod
    def median_throughput(runs: list[BatchRun]) -> float:
        return statistics.median(r.throughput for r in runs)

    @property
    def ratio(self) -> float:
        """median throughput(a) / median throughput(b)."""
        tb = self.median_throughput(self.b)
        return self.median_throughput(self.a) / tb if tb else float("inf")

    def summary(self, name_a: str = "a", name_b: str = "b") -> str:
        def side(name: str, runs: list[BatchRun]) -> str:
            each = ", ".join(f"{r.throughput:.1f}" for r in runs)
            return f"{name}: {runs[0].output_tokens} tokens, {self.median_throughput(runs):.1f} tok/s median ({each})"

        return (
            f"{len(self.a[0].finishes)} requests x {len(self.a)} rounds, {len(self.mismatches)} count mismatches; "
            f"{side(name_a, self.a)}; {side(name_b, self.b)}; ratio {name_a}/{name_b} = {self.ratio:.3f}"
        )


def cross_check(a: Engine, b: Engine, requests: list[Request], rounds: int = 1) -> CrossCheck:
    """Run the requests through both engines `rounds` times (alternating order); compare token counts."""
    runs_a, runs_b, mismatches = [], [], []
    for i in range(rounds):
        if i % 2 == 0:
            run_a, run_b = run_batch(a, requests), run_batch(b, requests)
        else:
            run_b, run_a = run_batch(b, requests), run_batch(a, requests)
        runs_a.append(run_a)
        runs_b.append(run_b)
        mismatches += [f"round {i + 1}: {line}" for line in _mismatches(run_a, run_b, requests)]
    return CrossCheck(runs_a, runs_b, mismatches)
