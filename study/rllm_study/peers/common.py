"""A peer tool's per-request measurements as an rllm-study results folder.

Each reader (one module per tool) turns the tool's export into `PeerRequest`s; `write_imported`
writes them as one cell (`rllm_study.running.results` formats), so `summarize`, `report` and
`report --compare` read an imported run as they read ours. What a peer does not record stays
absent, never invented:
  - arrival_s = the request's start (the client sent it), admitted_s = arrival_s and
    prefill_done_s = first_token_s, as for our own OpenAI backend (a client sees no server queue:
    that wait is inside TTFT);
  - first_answer_token_s = the first non-reasoning token where the tool records it, the first
    token where it counted no reasoning tokens, else null (TTFVT unknown);
  - think_tokens = the tool's reasoning-token count, else 0 with "think tokens not reported"
    in the manifest's `imported.notes`;
  - tokens.jsonl holds a request's chunk arrival times only where the tool recorded every chunk
    and the chunks hold exactly its output tokens (one token a chunk, as llama-server streams);
    otherwise the request has no token line (pooled ITL and per-phase TPOT are then absent),
    and the manifest says how many requests have token times;
  - finish_reason is "stop" for a successful request unless the tool recorded it ("length"),
    and "error" with the tool's message for a failed one; nothing is graded (correct = null).
Times are seconds from the earliest request start in the file (one session).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rllm_study.errors import UserError
from rllm_study.running.results import CellWriter, make_folder

ANSWER = "a"


@dataclass
class PeerRequest:
    """One request as a peer measured it: times in seconds on the tool's clock (any epoch)."""

    id: str
    start_s: float
    ttft_s: float | None
    e2el_s: float | None
    prompt_tokens: int | None
    output_tokens: int | None
    think_tokens: int | None = None  # None: the tool does not count reasoning tokens
    ttfot_s: float | None = None  # time to first output (non-reasoning) token, where recorded
    chunk_gaps_s: list[float] | None = None  # gaps between consecutive content chunks after the first
    finish_reason: str | None = None  # the tool's own, where recorded
    error: str | None = None


@dataclass
class Imported:
    """What a reader found: the requests and facts about the run for the manifest."""

    tool: str
    requests: list[PeerRequest]
    model: str = ""
    facts: dict = field(default_factory=dict)  # the tool's version, load settings, ... as found
    workload: dict | None = None  # the load as the tool states it, as our [workload] table; None: not stated
    notes: list[str] = field(default_factory=list)


def _chunk_times(r: PeerRequest, first_s: float) -> list[float] | None:
    if r.chunk_gaps_s is None or r.output_tokens is None or len(r.chunk_gaps_s) + 1 != r.output_tokens:
        return None
    times = [first_s]
    for gap in r.chunk_gaps_s:
        times.append(times[-1] + gap)
    return times


def _max_in_flight(requests: list[PeerRequest]) -> int:
    """The most requests in flight at once (start to start + e2el) in the export."""
    edges = sorted(
        [(r.start_s, 1) for r in requests] + [(r.start_s + (r.e2el_s or 0.0), -1) for r in requests],
        key=lambda e: (e[0], e[1]),
    )
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return max(peak, 1)


def _record(r: PeerRequest, t0: float, dataset: str) -> tuple[dict, dict | None]:
    arrival = r.start_s - t0
    first = None if r.ttft_s is None else arrival + r.ttft_s
    failed = r.error is not None
    think = r.think_tokens if r.think_tokens is not None else 0
    if r.ttfot_s is not None:
        first_answer = arrival + r.ttfot_s
    else:
        first_answer = first if think == 0 and (r.output_tokens or 0) > 0 else None
    output = r.output_tokens or 0
    record = {
        "id": r.id,
        "dataset": dataset,
        "domain": dataset,
        "item_id": r.id,
        "session": 0,
        "arrival_s": arrival,
        "admitted_s": arrival,
        "prefill_done_s": first,
        "first_token_s": first,
        "first_answer_token_s": first_answer,
        "finish_s": None if r.e2el_s is None else arrival + r.e2el_s,
        "prompt_tokens": r.prompt_tokens,
        "cached_tokens": 0,
        "output_tokens": output,
        "think_tokens": min(think, output),
        "answer_tokens": output - min(think, output),
        "finish_reason": "error" if failed else (r.finish_reason if r.finish_reason in ("stop", "length") else "stop"),
        "extracted_answer": None,
        "correct": None,
        "correct_lenient": None,
        "parse_status": None,
        "draft_proposed": 0,
        "draft_accepted": 0,
        "error": r.error,
        "reference_answer": "",
    }
    times = None if failed or first is None else _chunk_times(r, first)
    tokens = (
        None
        if times is None
        else {
            "id": r.id,
            "session": 0,
            "t_s": times,
            "token_ids": [-1] * len(times),
            "phase": ANSWER * len(times),
            "draft": "0" * len(times),
        }
    )
    return record, tokens


def write_imported(found: Imported, source: Path, out: Path, name: str | None = None) -> Path:
    """Write `found` as one cell folder OUT/NAME (default: TOOL-<file stem>); returns the folder."""
    if not found.requests:
        raise UserError(f"{source}: no requests found in this {found.tool} export")
    name = name or f"{found.tool}-{source.stem}"
    cell_dir = make_folder(out) / name
    if (cell_dir / "requests.jsonl").exists():
        raise UserError(f"{cell_dir}: already holds results; choose another --out or --name")
    t0 = min(r.start_s for r in found.requests)
    writer = CellWriter(cell_dir)
    dataset = f"{found.tool}-import"
    with_tokens = 0
    rows = [_record(r, t0, dataset) for r in found.requests]
    rows.sort(key=lambda row: row[0]["arrival_s"])
    for record, tokens in rows:
        with_tokens += tokens is not None
        writer.write_request(
            record, tokens or {"id": record["id"], "session": 0, "t_s": [], "token_ids": [], "phase": "", "draft": ""}
        )
    notes = list(found.notes)
    workload = found.workload
    if workload is None:
        workload = {"arrival": "closed", "concurrency": _max_in_flight(found.requests)}
        notes.append(
            f"the export does not state its load: recorded as a closed loop of {workload['concurrency']}, "
            f"the most requests it had in flight at once"
        )
    if with_tokens < len(rows):
        notes.append(
            f"token times: {with_tokens} of {len(rows)} requests (the others have no per-chunk times in the "
            f"export, or chunks that do not hold one token each): pooled ITL and per-phase TPOT cover those only"
        )
    notes.append("not graded: a peer export holds no reference answers")
    writer.write_manifest(
        {
            "cell": {
                "name": name,
                "study": f"imported from {found.tool}",
                "model": found.model or "unknown",
                "backend": f"imported:{found.tool}",
                "dataset": dataset,
                "prompt_mode": "imported",
                "workload": workload,
            },
            "model": {"name": found.model or "unknown", "source": f"{found.tool} export"},
            "engine": {"backend": f"imported:{found.tool}", "build": found.facts.get("version", "unknown")},
            "imported": {
                "tool": found.tool,
                "file": str(source.resolve()),
                "requests": len(rows),
                "with_token_times": with_tokens,
                "facts": found.facts,
                "notes": notes,
            },
        }
    )
    writer.close()
    return cell_dir


def as_seconds(metric: dict | float | int | None, default_unit: str = "ms") -> float | list | None:
    """A value (or list of values) with its unit (ns, us, ms, s) as seconds; None stays None."""
    if metric is None:
        return None
    value, unit = (
        (metric.get("value"), metric.get("unit", default_unit)) if isinstance(metric, dict) else (metric, default_unit)
    )
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0}.get(unit)
    if scale is None:
        raise UserError(f"unknown time unit {unit!r} in the export (expected ns, us, ms or s)")
    if value is None:
        return None
    return [v * scale for v in value] if isinstance(value, list) else value * scale
