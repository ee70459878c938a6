"""The scripted engine the fast tests drive (tests/scripted_engine.py) keeps the Engine protocol's
rules: admission up to the concurrency, events in order, phases, the token budget, the think
budget's forced close, aborts and KV accounting."""

from __future__ import annotations

from conftest import drain
from rllm_study.backends import options_for
from rllm_study.backends.base import PrefillDone, Request, RequestAdmitted, RequestFinished, SamplingParams, TokenEvent
from scripted_engine import ScriptedEngine


def _engine(max_seqs: int = 2) -> ScriptedEngine:
    return ScriptedEngine("scripted", options_for("llama_cpp", max_seqs=max_seqs, ctx_per_seq=256))


def test_admits_up_to_the_concurrency_and_reports_each_request_in_order():
    engine = _engine(max_seqs=2)
    for i in range(3):
        engine.submit(Request(f"r{i}", "<|user|> q", SamplingParams(max_tokens=64), starts_in_think=True))
    first = engine.step()
    assert [type(e) for e in first if e.request_id == "r0"] == [RequestAdmitted, PrefillDone, TokenEvent]
    assert engine.stats().running == 2 and engine.stats().waiting == 1
    out = drain(engine)
    assert set(out) == {"r0", "r1", "r2"}
    for rid, rec in out.items():
        fin = rec["finish"]
        assert fin.reason == "stop" and fin.output_text.endswith("\\boxed{42}.")
        events = [e for e in first if e.request_id == rid] + rec["events"]
        phases = "".join("t" if e.phase == "think" else "a" for e in events if isinstance(e, TokenEvent))
        assert phases == "t" * fin.think_tokens + "a" * fin.answer_tokens and fin.think_tokens >= 5
    assert engine.stats().kv_used == 0 and not engine.has_work()


def test_budget_think_budget_and_abort():
    engine = _engine()
    engine.submit(Request("short", "q", SamplingParams(max_tokens=3), starts_in_think=True))
    engine.submit(
        Request(
            "capped",
            "q",
            SamplingParams(max_tokens=64, think_budget=2),
            starts_in_think=True,
            answer_cue=" The final answer is \\boxed{",
        )
    )
    out = drain(engine)
    assert (out["short"]["finish"].reason, out["short"]["finish"].output_tokens) == ("length", 3)
    capped = out["capped"]["finish"]
    assert capped.think_forced and capped.think_tokens == 2 and capped.forced_tokens > 0
    assert capped.output_text.endswith("</think> The final answer is \\boxed{ 42}.")
    engine.submit(Request("gone", "q", SamplingParams(max_tokens=64)))
    engine.step()
    engine.abort("gone")
    (finished,) = [e for e in engine.step() if isinstance(e, RequestFinished)]
    assert finished.reason == "abort" and not engine.has_work()
