"""Turns engine events into result records (the `requests.jsonl` / `tokens.jsonl` rows).

Times become seconds since the recorder's `t0_ns` (the session start). Both `generate` and
the study runner use this, so a request is described the same way everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rllm_study.backends.base import (
    ANSWER,
    Event,
    PrefillDone,
    Request,
    RequestAdmitted,
    RequestFinished,
    TokenEvent,
)
from rllm_study.running.results import Cell


@dataclass
class _Open:
    arrival_s: float
    sent_s: float
    admitted_s: float | None = None
    prefill_done_s: float | None = None
    times: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)


class Recorder:
    """Feed it arrivals and events; `finished` returns (request record, token row) pairs."""

    def __init__(self, t0_ns: int):
        self.t0_ns = t0_ns
        self._open: dict[str, _Open] = {}

    def seconds(self, t_ns: int) -> float:
        return round((t_ns - self.t0_ns) / 1e9, 6)

    def arrived(self, request_id: str, t_ns: int, sent_ns: int | None = None) -> None:
        """A request's arrival (`t_ns`: its scheduled time under open loop, else when it became due)
        and the moment it was actually handed to the engine (`sent_ns`, default the arrival)."""
        self._open[request_id] = _Open(
            arrival_s=self.seconds(t_ns), sent_s=self.seconds(t_ns if sent_ns is None else sent_ns)
        )

    def feed(self, events: list[Event]) -> list[tuple[dict, dict]]:
        """Consume events; return (record, token row) for each request that finished."""
        done = []
        for ev in events:
            rec = self._open.get(ev.request_id)
            if rec is None:
                continue
            if isinstance(ev, TokenEvent):
                rec.times.append(self.seconds(ev.t_ns))
                rec.token_ids.append(ev.token_id)
                rec.phases.append("a" if ev.phase == ANSWER else "t")
                rec.drafts.append("1" if ev.draft else "0")
                rec.n_tokens.append(ev.n_tokens)
            elif isinstance(ev, RequestAdmitted):
                rec.admitted_s = self.seconds(ev.t_ns)
            elif isinstance(ev, PrefillDone):
                rec.prefill_done_s = self.seconds(ev.t_ns)
            elif isinstance(ev, RequestFinished):
                del self._open[ev.request_id]
                done.append(self._close(ev, rec))
        return done

    def _close(self, ev: RequestFinished, rec: _Open) -> tuple[dict, dict]:
        first_answer = next((t for t, p in zip(rec.times, rec.phases) if p == "a"), None)
        record = {
            "id": ev.request_id,
            "arrival_s": rec.arrival_s,
            "sent_s": rec.sent_s,
            "admitted_s": rec.admitted_s,
            "prefill_done_s": rec.prefill_done_s,
            "first_token_s": rec.times[0] if rec.times else None,
            "first_answer_token_s": first_answer,
            "finish_s": self.seconds(ev.t_ns),
            "prompt_tokens": ev.prompt_tokens,
            "cached_tokens": ev.cached_tokens,
            "output_tokens": ev.output_tokens,
            "think_tokens": ev.think_tokens,
            "answer_tokens": ev.answer_tokens,
            "finish_reason": ev.reason,
            "draft_proposed": ev.draft_proposed,
            "draft_accepted": ev.draft_accepted,
            "error": ev.error,
            "think_forced": ev.think_forced,
            "forced_tokens": ev.forced_tokens,
            "think_close_leaked": ev.think_close_leaked,
            "output_text": ev.output_text,
        }
        tokens = {
            "id": ev.request_id,
            "t_s": rec.times,
            "token_ids": rec.token_ids,
            "phase": "".join(rec.phases),
            "draft": "".join(rec.drafts),
        }
        if any(n != 1 for n in rec.n_tokens):
            tokens["n_tokens"] = rec.n_tokens
        return record, tokens


def record_batch(engine, requests: list[Request], name: str = "batch") -> Cell:
    """Submit every request at once (all arrive at t = 0), step the engine until idle, and return
    what the study would have recorded, as an in-memory cell (records in submission order), so
    its figures come from `rllm_study.analysis.metrics` like any cell's."""
    recorder = Recorder(time.perf_counter_ns())
    for request in requests:
        recorder.arrived(request.id, recorder.t0_ns)
        engine.submit(request)
    records, tokens = {}, {}
    while engine.has_work():
        for record, token_row in recorder.feed(engine.step()):
            records[record["id"]] = record
            tokens[record["id"]] = token_row
    ordered = [records[r.id] for r in requests if r.id in records]
    return Cell(Path("."), {"cell": {"name": name}}, ordered, tokens)
