"""AIPerf's per-request export, `profile_export.jsonl` (aiperf 0.13; `MetricRecordInfo` in its
`aiperf/common/models/record_models.py`, described in docs/tutorials/working-with-profile-exports.md).

One JSON object a line: `metadata` (request_start_ns, request_end_ns: wall clock ns;
benchmark_phase "warmup" | "profiling"; was_cancelled), `metrics` (tag -> {"value", "unit"}, in
the display unit: ms for times, tokens for counts) and `error` ({code, type, message} or null).
Read: time_to_first_token, time_to_first_output_token (first non-reasoning token),
request_latency (start to the last response), input_sequence_length, output_sequence_length
(output + reasoning tokens), reasoning_token_count, inter_chunk_latency (the gaps between
content chunks, a list). Warmup records are left out (AIPerf leaves them out of its statistics).
The run's settings come from `profile_export_aiperf.json` beside the file, where it is there.
"""

from __future__ import annotations

import json
from pathlib import Path

from rllm_study.errors import UserError
from rllm_study.peers.common import Imported, PeerRequest, as_seconds


def _count(metrics: dict, tag: str) -> int | None:
    m = metrics.get(tag)
    return None if m is None or m.get("value") is None else int(m["value"])


def read(path: Path) -> Imported:
    requests, warmup = [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            meta, metrics = row["metadata"], row.get("metrics") or {}
            start_ns = int(meta["request_start_ns"])
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(
                f"{path}:{number}: not an AIPerf profile_export.jsonl record ({type(err).__name__}: {err}); "
                "give the profile_export.jsonl of an aiperf run"
            ) from None
        if meta.get("benchmark_phase") == "warmup":
            warmup += 1
            continue
        error = row.get("error")
        e2el = as_seconds(metrics.get("request_latency"))
        if e2el is None and meta.get("request_end_ns"):
            e2el = (int(meta["request_end_ns"]) - start_ns) / 1e9
        requests.append(
            PeerRequest(
                id=str(meta.get("x_request_id") or f"aiperf-{meta.get('session_num', number)}"),
                start_s=start_ns / 1e9,
                ttft_s=as_seconds(metrics.get("time_to_first_token")),
                ttfot_s=as_seconds(metrics.get("time_to_first_output_token")),
                e2el_s=e2el,
                prompt_tokens=_count(metrics, "input_sequence_length") or _count(metrics, "error_isl"),
                output_tokens=_count(metrics, "output_sequence_length"),
                think_tokens=_count(metrics, "reasoning_token_count"),
                chunk_gaps_s=as_seconds(metrics.get("inter_chunk_latency")),
                error=None
                if not error
                else f"{error.get('type')}: {error.get('message')} (code {error.get('code')})"
                if isinstance(error, dict)
                else str(error),
            )
        )
    facts, model, workload = {}, "", None
    summary = path.with_name("profile_export_aiperf.json")
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
        config = data.get("input_config") or {}
        model = ", ".join(str(m.get("name")) for m in (config.get("models") or {}).get("items") or [])
        facts = {
            "version": data.get("aiperf_version"),
            "endpoint": config.get("endpoint"),
            "phases": config.get("phases"),
            "datasets": config.get("datasets"),
        }
        profiling = [p for p in config.get("phases") or [] if p.get("kind") == "profiling"]
        if len(profiling) == 1 and profiling[0].get("type") == "concurrency" and profiling[0].get("concurrency"):
            workload = {"arrival": "closed", "concurrency": int(profiling[0]["concurrency"])}
    notes = [f"{warmup} warmup records left out"] if warmup else []
    if all(r.think_tokens is None for r in requests):
        notes.append("think tokens not reported by this export (counted as answer tokens)")
    return Imported("aiperf", requests, model=model, facts=facts, notes=notes, workload=workload)
