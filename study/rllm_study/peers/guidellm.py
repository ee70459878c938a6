"""GuideLLM's report, `benchmarks.json` (guidellm 0.8; `GenerativeBenchmarksReport` in its
`guidellm/benchmark/schemas/report.py`, requests as `GenerativeRequestStats` in
`guidellm/schemas/base/request_stats.py`).

`benchmarks`: one entry per strategy run (synchronous, concurrent@N, constant@R, ...), each with
`requests` = {"successful": [...], "errored": [...], "incomplete": [...]} (GuideLLM keeps a sample
of them where --sample-requests says so). A request: `request_id`, `info.timings` (Unix
seconds: request_start, first_token_iteration, first_output_token_iteration (first non-reasoning
token), last_token_iteration, request_end, token_iterations), `prompt_tokens` and
`output_tokens` (the server's usage where it sent one, else GuideLLM counts one token per
iteration), `info.error`. The run's settings are in the top-level `config.spec` (backend, with
its target and model; profile; data) and each benchmark's `config.strategy`. GuideLLM records no per-chunk times, so an imported request has no
token line. E2EL here = last_token_iteration - request_start (our definition: to the last
token), falling back to request_end. Incomplete requests (cut by the run's end) count as errors.
Each benchmark becomes its own cell: NAME, or NAME-K for the K-th of several.
"""

from __future__ import annotations

import json
from pathlib import Path

from rllm_study.errors import UserError
from rllm_study.peers.common import Imported, PeerRequest


def _since(t: float | None, start: float | None) -> float | None:
    return None if t is None or start is None else t - start


def _request(row: dict, status: str) -> PeerRequest:
    info = row.get("info") or {}
    timings = info.get("timings") or {}
    start = timings.get("request_start") or timings.get("resolve_start")
    if start is None:
        raise KeyError("info.timings.request_start")
    last = timings.get("last_token_iteration") or timings.get("request_end") or timings.get("resolve_end")
    error = info.get("error") or (None if status == "successful" else status)
    return PeerRequest(
        id=str(row.get("request_id")),
        start_s=float(start),
        ttft_s=_since(timings.get("first_token_iteration"), start),
        ttfot_s=_since(timings.get("first_output_token_iteration"), start),
        e2el_s=_since(last, start),
        prompt_tokens=row.get("prompt_tokens"),
        output_tokens=row.get("output_tokens"),
        error=None if status == "successful" else str(error),
    )


def read(path: Path) -> list[Imported]:
    """One Imported per benchmark in the report."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        benchmarks = data["benchmarks"]
        if not isinstance(benchmarks, list) or not all(isinstance(b, dict) for b in benchmarks):
            raise TypeError("benchmarks is not a list of objects")
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{path}: not a GuideLLM benchmarks.json ({type(err).__name__}: {err}); give the JSON report "
            "`guidellm benchmark run --outputs json` wrote"
        ) from None
    found = []
    for k, bench in enumerate(benchmarks):
        requests = []
        for status in ("successful", "errored", "incomplete"):
            for row in (bench.get("requests") or {}).get(status) or []:
                try:
                    requests.append(_request(row, status))
                except (KeyError, TypeError, ValueError) as err:
                    raise UserError(f"{path}: benchmarks[{k}].requests.{status}: a request without {err}") from None
        strategy = (bench.get("config") or {}).get("strategy") or {}
        facts = {"version": (data.get("metadata") or {}).get("guidellm_version"), "benchmark": k, "strategy": strategy}
        backend = ((data.get("config") or {}).get("spec") or {}).get("backend") or {}
        model = str(backend.get("model") or "") if isinstance(backend, dict) else ""
        workload = None
        if strategy.get("type_") in ("concurrent", "synchronous"):
            workload = {"arrival": "closed", "concurrency": int(strategy.get("streams") or 1)}
        elif strategy.get("type_") in ("constant", "poisson") and strategy.get("rate"):
            workload = {"arrival": strategy["type_"], "rate": float(strategy["rate"])}
        found.append(
            Imported(
                "guidellm",
                requests,
                model=model,
                facts=facts,
                workload=workload,
                notes=[
                    "GuideLLM records no per-chunk times: no token times, so no pooled ITL",
                    "think tokens not reported by this export (counted as answer tokens)",
                ],
            )
        )
    return found
