"""The OpenAI-compatible backend against real servers on 127.0.0.1, serving the real SmolLM2 GGUF.

Fast tests use `python -m llama_cpp.server` (llama-cpp-python's own server: one request at a
time, no usage in streams), because CI cannot afford to build llama-server. The llama-server
tests (its per-chunk token counts, usage, /slots and /metrics telemetry, /props chat template,
and the cross-check against the in-process engine) are marked slow and skip unless
`scripts/build_llama_tools.sh` has built it (or RLLM_LLAMA_SERVER names the binary); under CI
they fail instead (`.ci/run` builds it and runs them).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import llama_cpp
import pytest

from conftest import THREADS, llama_server_binary, require
from rllm_study.backends.base import (
    ANSWER,
    FINISH_ABORT,
    FINISH_ERROR,
    THINK,
    PrefillDone,
    Request,
    RequestAdmitted,
    RequestFinished,
    SamplingParams,
    TokenEvent,
)
from rllm_study.backends.openai_http.engine import OpenAIEngine, RequestState, split_base_url
from rllm_study.backends.openai_http.telemetry import load_from_metrics, load_from_slots, parse_prometheus
from rllm_study.backends.options import LlamaCppOptions, OpenAIOptions
from rllm_study.backends.phases import answer_text
from rllm_study.bench.server import free_port, serve
from rllm_study.errors import UserError


def chatml(question: str) -> str:
    """SmolLM2-Instruct's chat format (ChatML), so prompts go to /v1/completions as-is."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def llama_cpp_server(model: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(THREADS),
        "--n_ctx",
        "2048",
        "--interrupt_requests",
        "False",
    ]  # by default a new request cancels the running stream


@pytest.fixture(scope="module")
def server_url(smollm2_path, tmp_path_factory):
    port = free_port()
    with serve(llama_cpp_server(smollm2_path, port), port, tmp_path_factory.mktemp("srv") / "log", "/v1/models") as (
        _,
        url,
    ):
        yield url


@pytest.fixture
def engine(server_url):
    eng = OpenAIEngine("", OpenAIOptions(base_url=server_url, timeout_s=120))
    yield eng
    eng.close()


def drain(engine, on_event=None, deadline_s: float = 120) -> dict[str, list]:
    """Step until idle (bounded); each request's events in order."""
    out: dict[str, list] = {}
    deadline = time.monotonic() + deadline_s
    while engine.has_work():
        assert time.monotonic() < deadline, "engine did not finish in time"
        for ev in engine.step():
            out.setdefault(ev.request_id, []).append(ev)
            if on_event:
                on_event(ev)
    return out


def finish_of(events: list) -> RequestFinished:
    assert isinstance(events[-1], RequestFinished)
    return events[-1]


def test_base_url_picks_root_and_api():
    assert split_base_url("http://h:8000") == ("http://h:8000", "completions")
    assert split_base_url("http://h:8000/v1/") == ("http://h:8000", "completions")
    assert split_base_url("https://h/x/v1/chat/completions") == ("https://h/x", "chat")
    with pytest.raises(UserError, match="base_url"):
        split_base_url("127.0.0.1:8000")
    with pytest.raises(UserError, match="--base-url"):
        OpenAIEngine("m", OpenAIOptions())


def test_streams_chunks_with_arrival_times(engine):
    requests = [
        Request(f"r{i}", chatml(q), SamplingParams(max_tokens=12))
        for i, q in enumerate(["What is 2+2?", "Name a color."])
    ]
    for r in requests:
        engine.submit(r)
    out = drain(engine)
    assert set(out) == {"r0", "r1"}
    for events in out.values():
        kinds = [type(e) for e in events]
        assert kinds[:2] == [RequestAdmitted, PrefillDone] and kinds[-1] is RequestFinished
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        assert len(tokens) == len(events) - 3 and tokens
        times = [e.t_ns for e in events]
        assert times == sorted(times)
        assert events[1].t_ns == tokens[0].t_ns  # prefill is seen with the first output chunk
        fin = finish_of(events)
        assert fin.reason in ("stop", "length") and fin.error is None
        assert fin.output_text == "".join(t.text for t in tokens)
        # llama_cpp.server streams no usage: the counts are its chunks, one token each
        assert all(t.token_id == -1 and t.n_tokens == 1 for t in tokens)
        assert fin.output_tokens == len(tokens) == fin.answer_tokens <= 12
    assert engine.stats().running == 0 and not engine.has_work()


def test_think_and_answer_split(engine):
    """The model, held to a grammar, thinks then answers; `</think>` in the text splits the phases."""
    grammar = 'root ::= "Two and two make four." " </think>" " The answer is 4."'
    engine.submit(
        Request("t", chatml("What is 2+2?"), SamplingParams(max_tokens=40), starts_in_think=True, grammar=grammar)
    )
    events = drain(engine)["t"]
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    phases = [t.phase for t in tokens]
    close = next(i for i, t in enumerate(tokens) if "</think>" in "".join(x.text for x in tokens[: i + 1]))
    assert phases == [THINK] * (close + 1) + [ANSWER] * (len(tokens) - close - 1)
    fin = finish_of(events)
    assert answer_text(fin.output_text, True) == " The answer is 4."
    assert fin.think_tokens == close + 1 and fin.answer_tokens == len(tokens) - close - 1 > 0


def test_chat_mode_lets_the_server_template(server_url):
    raw = OpenAIEngine("", OpenAIOptions(base_url=server_url))
    with pytest.raises(UserError, match="chat mode"):
        raw.apply_chat_template([{"role": "user", "content": "Hi"}])
    raw.close()
    chat = OpenAIEngine("", OpenAIOptions(base_url=server_url + "/v1/chat/completions"))
    prompt = chat.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    chat.submit(Request("c", prompt, SamplingParams(max_tokens=8)))
    events = drain(chat)["c"]
    chat.close()
    fin = finish_of(events)
    assert fin.error is None and fin.output_tokens == sum(isinstance(e, TokenEvent) for e in events) > 0
    assert fin.output_text.strip()


def test_count_tokens_uses_the_server_tokenizer(engine, smollm2_path):
    text = chatml("How many tokens is this?")
    vocab = llama_cpp.Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
    assert engine.count_tokens(text) == len(vocab.tokenize(text.encode(), add_bos=True, special=True))
    assert engine.info().server_kind == "llama_cpp.server"


def test_unreachable_server_is_an_error_finish():
    eng = OpenAIEngine("m", OpenAIOptions(base_url=f"http://127.0.0.1:{free_port()}"))
    assert "ConnectError" in eng.info().server_error
    eng.submit(Request("u", "hello"))
    fin = finish_of(drain(eng)["u"])
    eng.close()
    assert fin.reason == FINISH_ERROR and "ConnectError" in fin.error and fin.output_tokens == 0


def test_http_error_status_is_an_error_finish(server_url):
    eng = OpenAIEngine("", OpenAIOptions(base_url=server_url + "/no/such/prefix"))
    eng.submit(Request("h", chatml("Hi")))
    fin = finish_of(drain(eng)["h"])
    eng.close()
    assert fin.reason == FINISH_ERROR and "HTTP 404" in fin.error


def test_timeout_is_an_error_finish(server_url):
    eng = OpenAIEngine("", OpenAIOptions(base_url=server_url, timeout_s=0.5))
    eng.submit(Request("slow", chatml("Write a long story about the sea."), SamplingParams(max_tokens=400)))
    fin = finish_of(drain(eng)["slow"])
    eng.close()
    assert fin.reason == FINISH_ERROR and fin.error.startswith("timeout")


def test_abort_mid_stream(engine):
    engine.submit(Request("a", chatml("Write a long story about the sea."), SamplingParams(max_tokens=300)))
    events = drain(engine, on_event=lambda ev: isinstance(ev, TokenEvent) and engine.abort("a"))["a"]
    fin = finish_of(events)
    assert fin.reason == FINISH_ABORT and 0 < fin.output_tokens < 300


def test_server_killed_mid_stream(smollm2_path, tmp_path):
    port = free_port()
    with serve(llama_cpp_server(smollm2_path, port), port, tmp_path / "log", "/v1/models") as (proc, url):
        eng = OpenAIEngine("", OpenAIOptions(base_url=url))
        eng.submit(Request("k", chatml("Write a long story about the sea."), SamplingParams(max_tokens=400)))
        events = drain(eng, on_event=lambda ev: isinstance(ev, TokenEvent) and proc.poll() is None and proc.kill())["k"]
        eng.close()
    fin = finish_of(events)
    assert fin.reason == FINISH_ERROR and fin.error
    streamed = [e for e in events if isinstance(e, TokenEvent)]
    assert streamed and fin.output_tokens == len(streamed) and fin.output_text == "".join(e.text for e in streamed)


# The server-sent events llama-server (built from this llama-cpp-python's sources) streamed for a
# /v1/completions request with timings_per_token and include_usage on SmolLM2, fields trimmed:
# one chunk per token, the EOS chunk has no text, the final chunk carries usage.
LLAMA_SERVER_TEXTS = ["The", " answer", " is", ":", " ", "4", ""]
LLAMA_SERVER_CHUNKS = [
    {
        "choices": [{"text": text, "index": 0, "finish_reason": None}],
        "timings": {"cache_n": 0, "prompt_n": 16, "predicted_n": i + 1},
    }
    for i, text in enumerate(LLAMA_SERVER_TEXTS)
] + [
    {
        "choices": [{"text": "", "index": 0, "finish_reason": "stop"}],
        "usage": {
            "completion_tokens": 7,
            "prompt_tokens": 16,
            "total_tokens": 23,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        "timings": {"cache_n": 0, "prompt_n": 16, "predicted_n": 7},
    },
]


def test_llama_server_chunks_count_tokens_exactly():
    state = RequestState(Request("s", "p"))
    events = [ev for i, c in enumerate(LLAMA_SERVER_CHUNKS) for ev in state.on_chunk(c, 100 + i, chat=False)]
    assert isinstance(events[0], PrefillDone) and events[0].prompt_tokens == 16
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [(t.text, t.n_tokens, t.t_ns) for t in tokens] == [(x, 1, 100 + i) for i, x in enumerate(LLAMA_SERVER_TEXTS)]
    fin = state.finished(200, "stop")
    assert (fin.output_tokens, fin.answer_tokens, fin.prompt_tokens, fin.output_text) == (7, 7, 16, "The answer is: 4")


def test_chunk_holding_several_tokens():
    """A chunk whose count rises by 3 (text held back, then released) is one event of 3 tokens."""
    state = RequestState(Request("m", "p"))
    state.on_chunk(LLAMA_SERVER_CHUNKS[0], 0, chat=False)
    events = state.on_chunk(
        {"choices": [{"text": " answer is:", "index": 0}], "timings": {"predicted_n": 4}}, 1, chat=False
    )
    assert [(e.text, e.n_tokens) for e in events] == [(" answer is:", 3)]


def test_reasoning_field_and_usage_reconcile():
    """vLLM-style chat chunks: `reasoning_content` is think, several tokens per chunk, usage at the end
    with reasoning_tokens; without per-chunk counts the usage total wins."""
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "2 and 2"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": " is 4."}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "4"}, "finish_reason": "stop"}]},
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 8,
                "total_tokens": 17,
                "completion_tokens_details": {"reasoning_tokens": 6},
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        },
    ]
    state = RequestState(Request("v", "p", starts_in_think=True))
    events = [ev for i, c in enumerate(chunks) for ev in state.on_chunk(c, i, chat=True)]
    assert [(e.phase, e.text) for e in events if isinstance(e, TokenEvent)] == [
        (THINK, "2 and 2"),
        (THINK, " is 4."),
        (ANSWER, "4"),
    ]
    fin = state.finished(9, "stop")
    assert (fin.output_tokens, fin.think_tokens, fin.answer_tokens, fin.cached_tokens) == (8, 6, 2, 4)
    assert fin.output_text == "2 and 2 is 4.</think>4" and answer_text(fin.output_text, True) == "4"


def test_error_event_in_stream_raises():
    state = RequestState(Request("e", "p"))
    with pytest.raises(Exception, match="out of memory"):
        state.on_chunk({"error": {"code": 500, "message": "out of memory", "type": "server_error"}}, 0, chat=False)


def test_prometheus_telemetry():
    text = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/QwQ-32B"} 3.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/QwQ-32B"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/QwQ-32B"} 0.25
vllm:prompt_tokens_total{engine="0",model_name="Qwen/QwQ-32B"} 1234.0
"""
    load = load_from_metrics(parse_prometheus(text))
    assert (load.kv_used, load.kv_capacity, load.kv_unit, load.running, load.waiting) == (25.0, 100.0, "percent", 3, 2)
    slots = [
        {"id": 0, "n_ctx": 2048, "is_processing": True, "n_prompt_tokens": 300},
        {"id": 1, "n_ctx": 2048, "is_processing": False, "n_prompt_tokens": 100},
        {"id": 2, "n_ctx": 2048, "is_processing": False},
    ]
    load = load_from_slots(slots)
    assert (load.kv_used, load.kv_capacity, load.kv_unit, load.running) == (400.0, 6144.0, "cells", 1)
    assert load_from_metrics(parse_prometheus("llamacpp:requests_deferred 1\n")).over(load).waiting == 1


# -- llama-server (slow: needs scripts/build_llama_tools.sh) ----------------------------------------


@pytest.fixture(scope="module")
def llama_server(smollm2_path, tmp_path_factory):
    binary = llama_server_binary()
    require(binary is not None, "llama-server is not built: run scripts/build_llama_tools.sh")
    port = free_port()
    cmd = [
        str(binary),
        "-m",
        str(smollm2_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-t",
        str(THREADS),
        "-np",
        "2",
        "-c",
        "4096",
        "--metrics",
        "--no-webui",
    ]
    with serve(cmd, port, tmp_path_factory.mktemp("llama-server") / "log") as (_, url):
        yield url


@pytest.mark.slow
def test_llama_server_counts_telemetry_and_template(llama_server, smollm2_path):
    from rllm_study.backends.llama_cpp.engine import LlamaModel

    eng = OpenAIEngine("", OpenAIOptions(base_url=llama_server, prefix_cache=True))
    assert eng.info().server_kind == "llama-server"
    local = LlamaModel(smollm2_path)
    messages = [{"role": "user", "content": "Name three rivers."}]
    prompt = eng.apply_chat_template(messages)
    assert prompt == local.apply_chat_template(messages)
    assert eng.count_tokens(prompt) == len(local.tokenize(prompt))
    for i in range(3):
        eng.submit(Request(f"l{i}", prompt, SamplingParams(max_tokens=48)))
    samples = []
    out = drain(eng, on_event=lambda ev: samples.append(eng.stats()))
    for events in out.values():
        fin = finish_of(events)
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        assert fin.error is None and fin.prompt_tokens == len(local.tokenize(prompt))
        assert fin.output_tokens == sum(t.n_tokens for t in tokens)  # per-chunk counts match usage exactly
    assert max(finish_of(e).cached_tokens for e in out.values()) > 0  # the shared prompt was reused
    busy = [s for s in samples if s.extra.telemetry.startswith("metrics")]
    assert busy and all(s.kv_unit == "cells" and s.kv_capacity == 4096 for s in busy)
    assert max(s.kv_used for s in busy) > 0 and max(s.running for s in busy) <= 2
    local.close()
    eng.close()


@pytest.mark.slow
def test_cross_check_in_process_engine_and_llama_server(llama_server, smollm2_path):
    """Same greedy workload through LlamaCppEngine and llama-server: same token counts; prints the ratio."""
    from rllm_study.backends.llama_cpp.engine import LlamaCppEngine
    from rllm_study.bench.crosscheck import cross_check

    questions = [
        "What is the capital of France?",
        "Name three prime numbers.",
        "Describe the sea in one sentence.",
        "What does a CPU do?",
    ]
    requests = [Request(f"x{i}", chatml(q), SamplingParams(max_tokens=64)) for i, q in enumerate(questions)]
    local = LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=2, ctx_per_seq=2048, n_threads=THREADS))
    server = OpenAIEngine("", OpenAIOptions(base_url=llama_server))
    check = cross_check(local, server, requests, rounds=int(os.environ.get("RLLM_CROSSCHECK_ROUNDS", "2")))
    local.close()
    server.close()
    print("\ncross-check:", check.summary("in-process", "llama-server"))
    assert check.mismatches == []


@pytest.mark.slow
def test_llama_server_samplers_off_or_its_defaults(llama_server):
    """Per request top_k 0 (extra samplers off) unless server_default_samplers: read back from the
    slots' params, against the default top_k the server reports in /props."""
    default_top_k = httpx.get(llama_server + "/props", timeout=10).json()["default_generation_settings"]["params"][
        "top_k"
    ]
    assert default_top_k > 0
    for server_defaults, expected in ((False, 0), (True, default_top_k)):
        eng = OpenAIEngine("", OpenAIOptions(base_url=llama_server, server_default_samplers=server_defaults))
        for i in range(2):  # two at once: both slots (-np 2) take one
            eng.submit(
                Request(
                    f"s{i}",
                    chatml("Name three rivers."),
                    SamplingParams(max_tokens=24, temperature=0.6, top_p=0.95, seed=i),
                )
            )
        assert all(finish_of(ev).error is None for ev in drain(eng).values())
        assert eng.info().extra_samplers == (
            "server defaults" if server_defaults else "off (top_k 0, min_p 0, repeat_penalty 1)"
        )
        eng.close()
        slots = httpx.get(llama_server + "/slots", timeout=10).json()
        assert [s["params"]["top_k"] for s in slots] == [expected, expected]


def test_llama_cpp_servers_get_the_sampling_order_and_top_k(engine):
    engine._ensure_server()
    first = engine._body(Request("o", "hi", SamplingParams(temperature=0.6, top_p=0.9, top_k=7)))
    assert first["samplers"] == ["top_k", "temperature", "top_p"] and first["top_k"] == 7
    later = engine._body(Request("o", "hi", SamplingParams(temperature=0.6, top_p=0.9, order="top_p_first")))
    assert later["samplers"] == ["top_k", "top_p", "temperature"] and later["top_k"] == 0


@pytest.mark.parametrize(
    "kind,url_tail,sent",
    [
        ("llama-server", "/v1/chat/completions", True),
        ("llama-server", "", False),
        ("vllm", "/v1/chat/completions", False),
    ],
)
def test_think_budget_goes_to_llama_server_chat_only(kind, url_tail, sent):
    """reasoning_budget_tokens (the field llama-server's tools/server reads) is sent where the
    server applies it, and capabilities say so; elsewhere the budget is reported unsupported."""
    eng = OpenAIEngine("m", OpenAIOptions(base_url=f"http://127.0.0.1:{free_port()}{url_tail}"))
    eng._server = {"kind": kind, "models": ["m"], "props": {}}  # what the probe would have learnt
    body = eng._body(Request("t", "hi", SamplingParams(64, think_budget=16)))
    eng.close()
    assert body.get("reasoning_budget_tokens") == (16 if sent else None)
    assert eng.capabilities().think_budget is (
        sent or kind == "vllm"
    )  # vLLM takes its own field (test_reasoning_streams)


OPENAI_SPEC = """
name = "served"
backend = "openai"
models = ["smollm2"]
prompt_modes = ["direct", "native"]  # reasoning mode's assistant prefix is a user error in chat mode
max_tokens = [8]
datasets = {{ gsm8k = 2 }}
[engine]
base_url = "{url}/v1/chat/completions"
[workload]
arrival = "batch"
batch_size = 2
"""


def test_every_command_on_the_openai_backends_cells(server_url, tmp_path):
    """A served model's manifest records only its name (a string, not the facts of a file): report
    crashed on it ('str' object has no attribute 'get'), and a resumed cell's input check must read it."""
    from conftest import run_cli
    from rllm_study.running.results import find_cells, read_jsonl

    (tmp_path / "s.toml").write_text(OPENAI_SPEC.format(url=server_url))
    out = tmp_path / "out"
    run = run_cli("run", tmp_path / "s.toml", "--out", out)
    assert run.returncode == 0, run.stderr
    cell = find_cells([out])[0] / "requests.jsonl"
    lines = cell.read_text().splitlines(keepends=True)
    cell.write_text("".join(lines[:-1]))  # the run stopped before its last request: resumed on the same server
    resumed = run_cli("run", tmp_path / "s.toml", "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_jsonl(cell)) == 2
    for args in (
        ("summarize", out),
        ("report", out, "--out", tmp_path / "report"),
        ("regrade", out),
        ("pack", out),
        ("report", out, out, "--compare", "--out", tmp_path / "cmp"),
        ("run", "--like", out, "--dry-run", "--out", tmp_path / "again"),
    ):
        done = run_cli(*args)
        assert done.returncode == 0, (args, done.stderr)
    assert "smollm2 (served; reasoning training unknown)" in (tmp_path / "report" / "report.md").read_text()
