"""`vllm bench serve --save-result --save-detailed` JSON (vLLM's `vllm/benchmarks/serve.py`).

One JSON object: run settings (`backend`, `model_id`, `tokenizer_id`, `request_rate`,
`burstiness`, `max_concurrency`, `date`, ...) and, with --save-detailed, per-request lists of
equal length: `start_times` (time.perf_counter() seconds at send; older vLLMs lack it),
`input_lens`, `output_lens`, `ttfts` (s), `itls` (s: the gaps between a request's content
chunks after the first), `generated_texts`, `errors` ("" when the request succeeded). E2EL =
ttft + sum(itls), as vLLM's own latency. Without start_times the requests cannot be placed in
time: that is an error (rerun with a vLLM that records them). No reasoning-token count.
"""

from __future__ import annotations

import json
from pathlib import Path

from rllm_study.errors import UserError
from rllm_study.peers.common import Imported, PeerRequest

LISTS = ("input_lens", "output_lens", "ttfts", "itls", "errors")


def read(path: Path) -> Imported:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(
            f"{path}: not JSON ({err}); give the file `vllm bench serve --save-result --save-detailed` wrote"
        ) from None
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in LISTS):
        raise UserError(
            f"{path}: no per-request lists ({', '.join(LISTS)}): run `vllm bench serve` with "
            "--save-result --save-detailed"
        )
    starts = data.get("start_times")
    if not isinstance(starts, list):
        raise UserError(
            f"{path}: no start_times: this vLLM does not record when each request was sent, so the "
            "requests cannot be placed in time; use a vLLM whose --save-detailed writes start_times"
        )
    n = len(data["ttfts"])
    if any(len(data[k]) != n for k in (*LISTS, "start_times")):
        raise UserError(f"{path}: the per-request lists differ in length; the file is damaged")
    reasons = data.get("finish_reasons") if isinstance(data.get("finish_reasons"), list) else [None] * n
    requests = []
    try:
        for i in range(n):
            itls = [float(g) for g in data["itls"][i] or []]
            ttft = data["ttfts"][i]
            failed = bool(data["errors"][i]) or not ttft
            requests.append(
                PeerRequest(
                    id=f"vllm-bench-{i:05d}",
                    start_s=float(starts[i]),
                    ttft_s=float(ttft) if ttft else None,
                    e2el_s=float(ttft) + sum(itls) if ttft else None,
                    prompt_tokens=int(data["input_lens"][i]),
                    output_tokens=int(data["output_lens"][i] or 0),
                    chunk_gaps_s=itls,
                    finish_reason=reasons[i] if i < len(reasons) else None,
                    error=(str(data["errors"][i]) or "failed") if failed else None,
                )
            )
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: request {i}: {type(err).__name__}: {err}; the file is damaged") from None
    facts = {
        k: data[k]
        for k in (
            "backend",
            "endpoint_type",
            "label",
            "date",
            "request_rate",
            "burstiness",
            "max_concurrency",
            "num_prompts",
            "tokenizer_id",
        )
        if k in data
    }
    workload = None
    if data.get("request_rate") in ("inf", float("inf"), None) and data.get("max_concurrency"):
        workload = {"arrival": "closed", "concurrency": int(data["max_concurrency"])}
    elif isinstance(data.get("request_rate"), (int, float)) and data.get("max_concurrency") is None:
        cv = 1 / float(data.get("burstiness") or 1.0) ** 0.5  # vLLM's gamma: shape = burstiness, CV = 1/sqrt(shape)
        workload = (
            {"arrival": "poisson", "rate": float(data["request_rate"])}
            if cv == 1
            else {"arrival": "gamma", "rate": float(data["request_rate"]), "cv": cv}
        )
    return Imported(
        "vllm-bench",
        requests,
        model=str(data.get("model_id") or ""),
        facts=facts,
        workload=workload,
        notes=["think tokens not reported by vllm bench serve (counted as answer tokens)"],
    )
