"""OpenAI-compatible HTTP backend: llama-server, vLLM, SGLang, mlx_lm.server, llama_cpp.server.

`base_url` picks the server and the API:
- `http://HOST:PORT`, `.../v1` or `.../v1/completions`: completions mode (the default). The
  request's prompt is already chat-templated text, so it goes as-is to `POST /v1/completions`
  and the server sees exactly the text the in-process engines see.
- `.../v1/chat/completions`: chat mode, `POST /v1/chat/completions`; the server applies its own
  chat template (and reasoning parser). Use it for servers that must template themselves: no raw
  completions endpoint, no exposed template (`apply_chat_template` needs llama-server's
  `/props`), or to measure the server's own templating. Here `apply_chat_template` returns the
  messages as JSON and `submit` sends them; a plain-text prompt goes as one user message.
The API key is read from the environment variable `api_key_env` (sent as a Bearer token when
set); `timeout_s` bounds each request from sending to its last byte.

Timing: the runner drives `submit()`/`step()` from one thread; requests stream on an asyncio
loop in a background thread (httpx). Each network read is stamped with `perf_counter_ns()` when
it arrives, and every server-sent event in that read carries that stamp: one `TokenEvent` per
chunk (token_id -1), with `n_tokens` = the tokens the chunk holds where the server says so
(llama-server: the rise of `timings.predicted_n`, requested with `timings_per_token`; vLLM and
SGLang: the rise of `usage.completion_tokens`, requested with `continuous_usage_stats`), else 1
per chunk with text. No per-token times are invented. RequestAdmitted is the moment the request is
sent (the server's own queue is invisible to a client: that wait lands in TTFT); PrefillDone is
the first chunk carrying output.

Token counts come from the server, never from re-tokenised text: output = usage
`completion_tokens` (requested with `stream_options.include_usage`), think = usage
`completion_tokens_details.reasoning_tokens` when the server reports it (> 0), answer = output -
think; prompt and cached tokens from usage (`prompt_tokens_details.cached_tokens`) or
llama-server's timings (`prompt_n + cache_n`, `cache_n`); draft counts from its timings. Where
usage is missing (llama_cpp.server sends none when streaming), the chunk counts stand, and a
difference between usage and the chunk counts goes to the phase the stream ended in.

Phases: `reasoning_content` (vLLM, SGLang, llama-server) or `reasoning` (mlx_lm, newer vLLM)
deltas are think (an empty one too: vLLM streams a token it decodes to no text, e.g. a special
token it skips, as `"reasoning": ""`); `content`/`text` deltas go through `PhaseTracker`, so `<think>` text in them
splits too, and so do gpt-oss (harmony) channels passed through as text: from
`<|channel|>analysis<|message|>` think, from `<|channel|>final<|message|>` answer (output_text
writes them as `<think>` / `</think>` for grading). When the server splits reasoning off, output_text is rebuilt as
`<think>REASONING</think>CONTENT` (without the opening tag when the prompt already opened it).

Failures (server unreachable, HTTP error status, an error event, a data line that is not JSON, an
HTTP 200 that is not a stream, a stream cut mid-way, timeout) finish the request with reason
"error" and the cause in `error`; events already delivered stay.

Load tests: `ignore_eos` sends the server's `ignore_eos: true` (llama-server, vLLM, SGLang; other
kinds are reported in info().unsupported_options), so every request runs to max_tokens;
`extra_body` (a JSON object) is merged into every request body last, so its fields override ours.

Sampling: temperature, top_p, seed, max_tokens, stop. llama.cpp servers also get top_k (0 = off),
min_p=0 and repeat_penalty=1 (their default extra samplers off, so sampling matches the
in-process engine) and `samplers` in the request's order (llama-server honours it;
llama-cpp-python's server ignores it and applies top-p before temperature), unless
`server_default_samplers` is set (then the server's own defaults apply, e.g. llama-server's
top_k 40, min_p 0.05; info().extra_samplers says which); `server_backend_sampling` sends
llama-server's `backend_sampling` (the draw inside its decode graph); other servers apply their own order
(vLLM and SGLang: temperature first), `cache_prompt` = options.prefix_cache (llama-server), and GBNF `grammar`.
Think budget (sampling.think_budget), by the server kind the probe found:
- llama-server, chat mode: `reasoning_budget_tokens` (it forces its own end tag, with its
  `--reasoning-budget-message` before it, when the model's chat template has thinking tags);
- vLLM: `thinking_token_budget` (applied when the server runs with a reasoning parser / reasoning
  config; it forces the end tokens);
- SGLang: `custom_params.thinking_budget` (enforced with `--enable-strict-thinking` or its
  thinking-budget logit processor) and, in chat mode, `chat_template_kwargs.thinking_budget`
  (a hint to templates that define it, e.g. Qwen3's).
The request's answer_cue is not sent: no server has a field for text after the tag. Other
servers (and llama-server's completions mode) take no budget: `capabilities().think_budget` is
False there. A server does not say whether it cut the thinking, so think_forced is None; whether
the budget held is checked per request from the think tokens (metric think_budget_held_share,
with `info().think_budget_tolerance` = THINK_BUDGET_TOLERANCE for the server's end sequence),
since servers have taken the field and not applied it (vLLM #54906, SGLang #25536).
A leaked `</think>` (llama.cpp #28182: a budget cut the reasoning parser missed, so the literal
tag comes in the content): a `</think>` in the answer phase with no `<think>` before it marks the
request `think_close_leaked`; the chunk holding it and every token counted as answer before it
are think, the answer starts after it, and output_text keeps the tag once.
Telemetry: see `telemetry`; polled in the background at most every `telemetry_period_s` (default
0.1 s; 0 = never, so the server does no work for us beyond the requests) while requests are in
flight (and once after). Gaps in the server's figures are filled from this
client: running = in-flight requests that have streamed output, waiting = in-flight requests
that have not. With no KV figure from the server, kv_used = kv_capacity = 0 (unknown).
rss_bytes is this client process; a server's memory is not visible over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import httpx
import psutil

from rllm_study.backends.base import (
    ANSWER,
    FINISH_ABORT,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    THINK,
    Capabilities,
    EngineInfo,
    EngineStats,
    Event,
    PrefillDone,
    Request,
    RequestAdmitted,
    RequestFinished,
    StatsExtra,
    TokenEvent,
)
from rllm_study.backends.chat_template import message_list, render_chat
from rllm_study.backends.openai_http.telemetry import ServerLoad, load_from_metrics, load_from_slots, parse_prometheus
from rllm_study.backends.options import OpenAIOptions, parse_json_object
from rllm_study.backends.phases import THINK_CLOSE, THINK_OPEN, PhaseTracker
from rllm_study.backends.sampling import TEMPERATURE_FIRST
from rllm_study.errors import UserError

COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"
STEP_WAIT_S = 0.005  # step() waits this long for an event before returning none
PROBE_TIMEOUT_S = 10.0
# `owned_by` in GET /v1/models -> server kind
SERVER_KINDS = {"llamacpp": "llama-server", "me": "llama_cpp.server", "vllm": "vllm", "sglang": "sglang"}
LLAMA_CPP_KINDS = ("llama-server", "llama_cpp.server")
IGNORE_EOS_KINDS = ("llama-server", "vllm", "sglang")  # servers whose request body takes `ignore_eos`
# Think tokens a server may write past the budget when it closes the thinking itself (its end
# sequence, and llama-server's --reasoning-budget-message): the allowance of the budget-held check.
THINK_BUDGET_TOLERANCE = {"llama-server": 16, "vllm": 4, "sglang": 4}
# gpt-oss (harmony) channels, where a server passes them through as text instead of parsing them
# into reasoning deltas: analysis is think, final is the answer.
CHANNEL_THINK = "<|channel|>analysis<|message|>"
CHANNEL_ANSWER = "<|channel|>final<|message|>"
TAIL_CHARS = max(len(CHANNEL_THINK), len(CHANNEL_ANSWER), len(THINK_CLOSE))
FINISH_REASONS = {
    "stop": FINISH_STOP,
    "eos": FINISH_STOP,
    "tool_calls": FINISH_STOP,
    "length": FINISH_LENGTH,
    "abort": FINISH_ABORT,
}


def split_base_url(url: str) -> tuple[str, str]:
    """`base_url` -> (server root, "completions" | "chat"); see the module docstring."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"base_url {url!r}: give the server's http(s) URL, e.g. http://127.0.0.1:8080")
    path = parts.path.rstrip("/")
    api = "completions"
    for suffix, mode in ((CHAT_PATH, "chat"), (COMPLETIONS_PATH, "completions"), ("/v1", "completions")):
        if path.endswith(suffix):
            path, api = path[: -len(suffix)], mode
            break
    return f"{parts.scheme}://{parts.netloc}{path}", api


def chat_messages(prompt: str) -> list[dict]:
    """Chat mode: the JSON message list `apply_chat_template` wrote, or plain text as one user message."""
    return message_list(prompt) or [{"role": "user", "content": prompt}]


class ServerError(Exception):
    """The server answered with an error (HTTP status or an error event in the stream)."""


def _error_message(body: bytes) -> str:
    """The message of an OpenAI-style error body, else its first 300 characters."""
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:300].strip()
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:300]
    return str(err)[:300]


class SSEReader:
    """Server-sent event lines to chunks (https://html.spec.whatwg.org/multipage/server-sent-events.html):
    each `data:` line is one JSON object; `data: [DONE]` ends the stream (yielded as None); blank
    separators, comment lines (`: ping`) and other fields are skipped; `event: error` makes the
    next data line the server's error. A data line that is not a JSON object, or an error event,
    raises ServerError naming what arrived, so the request alone finishes with reason "error"."""

    __slots__ = ("event", "seen_data", "first_line")

    def __init__(self):
        self.event = b""  # the `event:` field of the event being read
        self.seen_data = False  # a `data:` line arrived (else the body was not a stream)
        self.first_line = ""  # the body's first non-blank line, for the error of a non-stream answer

    def chunks(self, lines: list[bytes]):
        for line in lines:
            line = line.strip()
            if line and not self.first_line:
                self.first_line = line.decode("utf-8", "replace")
            if not line:
                self.event = b""  # a blank line ends an event
                continue
            if line.startswith(b"event:"):
                self.event = line[6:].strip()
                continue
            if not line.startswith(b"data:"):
                continue  # comments (pings: lines starting ':'), id:, retry:
            self.seen_data = True
            payload = line[5:].strip()
            if self.event == b"error":
                raise ServerError(f"error event in the stream: {_error_message(payload)}")
            if payload == b"[DONE]":
                yield None
                return
            try:
                chunk = json.loads(payload)
            except ValueError:
                chunk = None
            if not isinstance(chunk, dict):
                text = payload.decode("utf-8", "replace")
                raise ServerError(
                    f"the server sent a data line that is not a JSON object: {text[:120]!r}"
                    f"{' (cut)' if len(text) > 120 else ''}"
                )
            yield chunk


class RequestState:
    """One request's stream so far: texts, token counts per phase, server usage and timings."""

    __slots__ = (
        "request",
        "phases",
        "reasoning",
        "text",
        "counted",
        "usage",
        "timings",
        "finish_reason",
        "prefilled",
        "task",
        "aborted",
        "leaked",
        "answer_before_leak",
        "_tail",
    )

    def __init__(self, request: Request):
        self.request = request
        self.phases = PhaseTracker(request.starts_in_think)
        self.reasoning = ""  # text the server split off as reasoning
        self.text = ""  # completion text or chat content
        self.counted = {THINK: 0, ANSWER: 0}
        self.usage: dict = {}
        self.timings: dict = {}
        self.finish_reason: str | None = None
        self.prefilled = False
        self.task: asyncio.Task | None = None  # set when its coroutine starts on the loop
        self.aborted = False
        self.leaked = False  # a literal `</think>` came while in the answer phase
        self.answer_before_leak = 0  # answer-counted tokens before it (think tokens in truth)
        self._tail = ""  # the end of the content so far, for a tag cut between chunks

    def on_chunk(self, chunk: dict, t_ns: int, chat: bool) -> list[Event]:
        """Events for one server-sent event of this stream (module docstring: counts and phases)."""
        if "error" in chunk or chunk.get("object") == "error":
            raise ServerError(_error_message(json.dumps(chunk.get("error", chunk)).encode()))
        self.usage = chunk.get("usage") or self.usage
        timings = chunk.get("timings") or {}
        self.timings = timings or self.timings
        reasoning = content = ""
        reasoning_delta = False  # the delta names a reasoning field, even with empty text
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            if chat:
                delta = choice.get("delta") or {}
                reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
                content = delta.get("content") or ""
                reasoning_delta = isinstance(delta.get("reasoning_content", delta.get("reasoning")), str)
            else:
                content = choice.get("text") or ""
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        so_far = timings.get("predicted_n")
        if so_far is None and chunk.get("choices") and chunk.get("usage"):
            so_far = chunk["usage"].get("completion_tokens")  # vLLM/SGLang continuous usage stats
        if so_far is not None:
            n = max(int(so_far) - self.counted[THINK] - self.counted[ANSWER], 0)
        else:
            n = bool(reasoning) + bool(content)
        if not (n or reasoning or content):
            return []
        rid = self.request.id
        events: list[Event] = []
        if not self.prefilled:
            self.prefilled = True
            events.append(PrefillDone(rid, t_ns, self.prompt_tokens(), self.cached_tokens()))
        pieces = []
        if reasoning or (reasoning_delta and not content):  # "": a token the server decodes to no text
            self.reasoning += reasoning
            self.phases.phase = ANSWER  # the server splits reasoning off: content after it is the answer
            pieces.append((THINK, reasoning))
        if content:
            self.text += content
            pieces.append((self._content_phase(content), content))
        if not pieces:
            pieces.append((self.phases.phase, ""))  # tokens without text: EOS, text held back by a stop string
        for i, (phase, text) in enumerate(pieces):
            n_tokens = max(n - (len(pieces) - 1), 1) if i == 0 else 1
            self.counted[phase] += n_tokens
            events.append(TokenEvent(rid, t_ns, -1, text, phase, n_tokens=n_tokens))
        return events

    def _content_phase(self, content: str) -> str:
        """The phase of a content piece; a `</think>` arriving in the answer phase with no `<think>`
        before it is a leaked close (see the module docstring): the piece is think, and so is
        everything counted as answer before it."""
        seen, new_from = self._tail + content, len(self._tail)
        self._tail = seen[-TAIL_CHARS:]
        channels = [
            (seen.find(mark, max(0, new_from - len(mark) + 1)), phase)
            for mark, phase in ((CHANNEL_THINK, THINK), (CHANNEL_ANSWER, ANSWER))
        ]
        channels = sorted((at, phase) for at, phase in channels if at >= 0)
        if channels:  # the piece holding a channel marker is think (the markers are the model's overhead)
            self.phases.phase = channels[-1][1]
            return THINK
        answering = self.phases.phase == ANSWER
        phase = self.phases.feed(-1, content)
        close_at = seen.find(THINK_CLOSE, max(0, new_from - len(THINK_CLOSE) + 1))  # a tag this piece completes
        if answering and not self.leaked and close_at >= 0 and THINK_OPEN not in seen[:close_at]:
            self.leaked, self.answer_before_leak = True, self.counted[ANSWER]
            return THINK
        return phase

    def output_text(self) -> str:
        if CHANNEL_THINK in self.text or CHANNEL_ANSWER in self.text:  # harmony channels as think tags
            return self.text.replace(CHANNEL_THINK, THINK_OPEN).replace(CHANNEL_ANSWER, THINK_CLOSE)
        opening = "" if self.request.starts_in_think else THINK_OPEN
        if self.leaked:  # the text already holds its `</think>`
            return f"{opening}{self.reasoning}{self.text}" if self.reasoning or opening else self.text
        if not self.reasoning:
            return self.text
        return f"{opening}{self.reasoning}{THINK_CLOSE}{self.text}"

    def prompt_tokens(self) -> int:
        if "prompt_tokens" in self.usage:
            return int(self.usage["prompt_tokens"])
        return int(self.timings.get("prompt_n", 0)) + int(self.timings.get("cache_n", 0))

    def cached_tokens(self) -> int:
        details = self.usage.get("prompt_tokens_details") or {}
        return int(details.get("cached_tokens") or self.timings.get("cache_n") or 0)

    def finished(self, t_ns: int, reason: str, error: str | None = None) -> RequestFinished:
        """The finish event, token counts reconciled with the server's usage (module docstring)."""
        counted = self.counted[THINK] + self.counted[ANSWER]
        output = int(self.usage.get("completion_tokens", counted))
        reasoning_tokens = (self.usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        if self.leaked:  # the server's reasoning count ends before the leaked text: ours splits at the tag
            think = (
                self.counted[THINK] + self.answer_before_leak + (output - counted if self.phases.phase == THINK else 0)
            )
        elif reasoning_tokens:
            think = int(reasoning_tokens)
        else:
            think = self.counted[THINK] + (output - counted if self.phases.phase == THINK else 0)
        think = min(max(think, 0), output)
        return RequestFinished(
            request_id=self.request.id,
            t_ns=t_ns,
            reason=reason,
            output_text=self.output_text(),
            prompt_tokens=self.prompt_tokens(),
            output_tokens=output,
            think_tokens=think,
            answer_tokens=output - think,
            cached_tokens=self.cached_tokens(),
            draft_proposed=int(self.timings.get("draft_n", 0)),
            draft_accepted=int(self.timings.get("draft_n_accepted", 0)),
            error=error,
            think_close_leaked=self.leaked,
        )


@dataclass(frozen=True, kw_only=True)
class OpenAIInfo(EngineInfo):
    """info() of the OpenAI-compatible backend: where the server is, what it said it is, and its
    llama-server properties when it is one."""

    base_url: str
    api: str
    server_kind: str
    server_models: list
    server_error: str | None
    llama_server: dict | None
    timeout_s: float
    extra_samplers: str | None  # llama.cpp servers: "off (top_k 0, ...)" or "server defaults"
    think_budget_tolerance: int = 0  # THINK_BUDGET_TOLERANCE of this server kind


@dataclass(frozen=True)
class OpenAIStats(StatsExtra):
    """stats().extra of the OpenAI-compatible backend: where the load figures came from, requests in flight."""

    telemetry: str
    in_flight: int


class OpenAIEngine:
    """Drives an OpenAI-compatible server through the `Engine` protocol (module docstring)."""

    def __init__(self, model: str, options: OpenAIOptions = OpenAIOptions()):
        if not options.base_url:
            raise UserError("backend openai needs the server's URL: pass --base-url http://HOST:PORT")
        self.root, self.api = split_base_url(options.base_url)
        self.model = model
        self.options = options
        key = os.environ.get(options.api_key_env) if options.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._open: set[str] = set()  # runner thread: submitted, finish not yet returned
        self._streams: dict[str, RequestState] = {}  # requests in flight (added by submit, removed by the loop)
        self._server: dict | None = None  # what the probe learnt: kind, models, props, adds_bos
        self._probe_error = ""
        self._load = ServerLoad()
        self._no_endpoint: set[str] = set()  # telemetry endpoints that answered with an error status
        self._poller: asyncio.Task | None = None
        self._extra_body = parse_json_object(options.extra_body) or {}
        self._proc = psutil.Process()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-http", daemon=True)
        self._thread.start()
        self._client: httpx.AsyncClient = self._call(self._make_client())
        self._call(self._probe())

    # -- protocol -----------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        stream = RequestState(request)
        self._open.add(request.id)
        self._streams[request.id] = stream
        asyncio.run_coroutine_threadsafe(self._run(stream), self._loop)

    def step(self) -> list[Event]:
        if not self._open:
            return []
        events = self._drain()
        if not events:
            try:
                events.append(self._events.get(timeout=STEP_WAIT_S))
            except queue.Empty:
                return []
            events += self._drain()
        for event in events:
            if isinstance(event, RequestFinished):
                self._open.discard(event.request_id)
        return events

    def abort(self, request_id: str) -> None:
        self._loop.call_soon_threadsafe(self._cancel, request_id)

    def has_work(self) -> bool:
        return bool(self._open)

    def stats(self) -> EngineStats:
        streams = list(self._streams.values())
        streaming = sum(1 for s in streams if s.prefilled)
        load = self._load.over(ServerLoad(running=streaming, waiting=len(streams) - streaming, source="client"))
        if self._load.running is not None and self._load.waiting is None:  # server running + our in-flight count
            load = replace(load, waiting=max(0, len(streams) - load.running))
        return EngineStats(
            kv_used=load.kv_used or 0.0,
            kv_capacity=load.kv_capacity or 0.0,
            kv_unit=load.kv_unit,
            running=load.running,
            waiting=load.waiting,
            rss_bytes=self._proc.memory_info().rss,
            extra=OpenAIStats(telemetry=load.source, in_flight=len(streams)),
        )

    def capabilities(self) -> Capabilities:
        kind = self._ensure_server()
        return Capabilities(
            backend="openai",
            prefix_cache=kind == "llama-server",
            grammar=kind in LLAMA_CPP_KINDS,
            per_token_times=False,
            local_model=False,
            think_budget=(kind == "llama-server" and self.api == "chat") or kind in ("vllm", "sglang"),
        )

    def info(self) -> OpenAIInfo:
        self._ensure_server()
        server = self._server or {}
        props = server.get("props") or {}
        generation = props.get("default_generation_settings") or {}
        return OpenAIInfo(
            backend="openai",
            build=str(self.kind),
            base_url=self.root,
            api=self.api,
            model=self.model,
            server_kind=self.kind,
            server_models=server.get("models", []),
            server_error=self._probe_error or None,
            llama_server={
                "build_info": props.get("build_info"),
                "model_path": props.get("model_path"),
                "total_slots": props.get("total_slots"),
                "n_ctx_slot": generation.get("n_ctx"),
            }
            if props
            else None,
            timeout_s=self.options.timeout_s,
            extra_samplers=None
            if self.kind not in LLAMA_CPP_KINDS
            else "server defaults"
            if self.options.server_default_samplers
            else "off (top_k 0, min_p 0, repeat_penalty 1)",
            unsupported_options=tuple(self._unsupported()),
            think_budget_tolerance=THINK_BUDGET_TOLERANCE.get(self.kind, 0),
        )

    def _unsupported(self) -> list[str]:
        """Options this server kind cannot honour, one line each (info().unsupported_options)."""
        problems = []
        if self.options.ignore_eos and self.kind not in IGNORE_EOS_KINDS and "ignore_eos" not in self._extra_body:
            problems.append(
                f"openai: ignore_eos is not sent to server kind {self.kind!r} (only {', '.join(IGNORE_EOS_KINDS)} "
                f"take it); output lengths follow the model"
            )
        return problems

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.api == "chat":
            if not add_generation_prompt:
                raise UserError("chat mode: the server always adds the generation prompt; use completions mode")
            return json.dumps(messages, ensure_ascii=False)
        self._ensure_server()
        props = (self._server or {}).get("props") or {}
        if not props.get("chat_template"):
            raise UserError(
                f"{self.root}: the server does not expose its chat template (llama-server's GET /props does); "
                f"use chat mode so the server applies it: --base-url {self.root}{CHAT_PATH}"
            )
        return render_chat(
            props["chat_template"],
            messages,
            bos_token=props.get("bos_token") or "",
            eos_token=props.get("eos_token") or "",
            add_generation_prompt=add_generation_prompt,
            tokenizer_adds_bos=self._server.get("adds_bos", True),
        )

    def count_tokens(self, text: str) -> int:
        kind = self._ensure_server()
        if kind == "llama-server":
            body = self._call(
                self._post_json("/tokenize", {"content": text, "add_special": True}), self.options.timeout_s
            )
            return len(body["tokens"])
        if kind == "llama_cpp.server":
            body = self._call(self._post_json("/extras/tokenize/count", {"input": text}), self.options.timeout_s)
            return int(body["count"])
        if kind == "vllm":
            body = self._call(
                self._post_json("/tokenize", {"model": self.model, "prompt": text}), self.options.timeout_s
            )
            return int(body["count"])
        raise UserError(
            f"{self.root}: no tokenizer endpoint known for server kind {kind!r} (llama-server, vLLM have one)"
        )

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._shutdown(), 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- the loop thread ------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return (self._server or {}).get("kind", "unknown")

    def _ensure_server(self) -> str:
        """The server kind, probing again if the server did not answer before."""
        if self._server is None:
            self._call(self._probe())
        return self.kind

    def _call(self, coro, timeout: float | None = None):
        """Run a coroutine on the loop thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _drain(self) -> list[Event]:
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    async def _make_client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)  # the server queues, not us
        return httpx.AsyncClient(timeout=httpx.Timeout(self.options.timeout_s), limits=limits, headers=self._headers)

    async def _get_json(self, path: str):
        resp = await self._client.get(self.root + path, timeout=PROBE_TIMEOUT_S)
        resp.raise_for_status()
        return resp.json()

    async def _post_json(self, path: str, body: dict):
        try:
            resp = await self._client.post(self.root + path, json=body)
        except httpx.HTTPError as err:
            raise UserError(f"{self.root}{path}: {type(err).__name__}: {err} (is the server running?)") from None
        if resp.status_code != 200:
            raise UserError(f"{self.root}{path}: HTTP {resp.status_code}: {_error_message(resp.content)}")
        return resp.json()

    async def _probe(self) -> None:
        """Learn the server kind, its models and (llama-server) its props; failures are kept, not raised."""
        try:
            data = (await self._get_json("/v1/models")).get("data") or []
            kind = SERVER_KINDS.get(data[0].get("owned_by", "") if data else "", "openai-compatible")
            server = {"kind": kind, "models": [m.get("id") for m in data], "props": {}}
            if kind == "llama-server":
                server["props"] = await self._get_json("/props")
                empty = await self._client.post(self.root + "/tokenize", json={"content": "", "add_special": True})
                server["adds_bos"] = bool(empty.json().get("tokens")) if empty.status_code == 200 else True
            if not self.model and server["models"]:
                self.model = server["models"][0]
            self._server, self._probe_error = server, ""
        except (httpx.HTTPError, ValueError, AttributeError) as err:
            self._probe_error = f"{type(err).__name__}: {err}"

    def _body(self, request: Request) -> dict:
        s = request.sampling
        body = {
            "model": self.model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if self.api == "chat":
            body["messages"] = chat_messages(request.prompt)
        else:
            body["prompt"] = request.prompt
        if self.kind in LLAMA_CPP_KINDS:
            if not self.options.server_default_samplers:
                body.update(
                    top_k=s.top_k,
                    min_p=0.0,
                    repeat_penalty=1.0,  # and sampling.order's chain:
                    samplers=["top_k", "temperature", "top_p"]
                    if s.order == TEMPERATURE_FIRST
                    else ["top_k", "top_p", "temperature"],
                )
            if request.grammar:
                body["grammar"] = request.grammar
        if self.kind == "llama-server":
            body.update(timings_per_token=True, cache_prompt=self.options.prefix_cache)
            if self.options.server_backend_sampling:
                body["backend_sampling"] = True
            if self.api == "chat" and s.think_budget is not None:
                body["reasoning_budget_tokens"] = s.think_budget
        if s.think_budget is not None and self.kind == "vllm":
            body["thinking_token_budget"] = s.think_budget
        if s.think_budget is not None and self.kind == "sglang":
            body["custom_params"] = {"thinking_budget": s.think_budget}
            if self.api == "chat":
                body["chat_template_kwargs"] = {"thinking_budget": s.think_budget}
        if self.kind in ("vllm", "sglang"):
            body["stream_options"]["continuous_usage_stats"] = True
        if self.options.ignore_eos and self.kind in IGNORE_EOS_KINDS:
            body["ignore_eos"] = True
        body.update(self._extra_body)
        return body

    async def _run(self, stream: RequestState) -> None:
        request = stream.request
        stream.task = asyncio.current_task()
        self._start_poller()
        try:
            if stream.aborted:
                raise asyncio.CancelledError
            if self._server is None:
                await self._probe()
            if request.grammar and self.kind not in LLAMA_CPP_KINDS:
                raise ServerError(f"server kind {self.kind!r} takes no GBNF grammar (llama.cpp servers do)")
            self._events.put(RequestAdmitted(request.id, time.perf_counter_ns()))
            await asyncio.wait_for(self._stream(stream), self.options.timeout_s)
            if stream.finish_reason is None:
                raise ServerError("the stream ended without a finish_reason")
            reason = FINISH_REASONS.get(stream.finish_reason, FINISH_STOP)
            self._events.put(stream.finished(time.perf_counter_ns(), reason))
        except asyncio.CancelledError:
            self._events.put(stream.finished(time.perf_counter_ns(), FINISH_ABORT))
        except TimeoutError:
            self._events.put(
                stream.finished(
                    time.perf_counter_ns(),
                    FINISH_ERROR,
                    f"timeout: no complete answer within {self.options.timeout_s:g} s",
                )
            )
        except Exception as err:  # any failure of this request is recorded; the run goes on
            cause = str(err) or "no details"
            self._events.put(stream.finished(time.perf_counter_ns(), FINISH_ERROR, f"{type(err).__name__}: {cause}"))
        finally:
            del self._streams[request.id]

    async def _stream(self, stream: RequestState) -> None:
        url = self.root + (CHAT_PATH if self.api == "chat" else COMPLETIONS_PATH)
        async with self._client.stream("POST", url, json=self._body(stream.request)) as resp:
            if resp.status_code != 200:
                raise ServerError(f"HTTP {resp.status_code}: {_error_message(await resp.aread())}")
            pending, reader = b"", SSEReader()
            async with aclosing(resp.aiter_bytes()) as reads:
                async for data in reads:
                    t_ns = time.perf_counter_ns()
                    *lines, pending = (pending + data).split(b"\n")
                    for chunk in reader.chunks(lines):
                        if chunk is None:
                            return
                        for event in stream.on_chunk(chunk, t_ns, self.api == "chat"):
                            self._events.put(event)
            for chunk in reader.chunks([pending]):  # the last line may come without its newline
                if chunk is None:
                    return
                for event in stream.on_chunk(chunk, time.perf_counter_ns(), self.api == "chat"):
                    self._events.put(event)
            if not reader.seen_data:
                raise ServerError(
                    f"HTTP 200 but no server-sent event stream (content-type "
                    f"{resp.headers.get('content-type', 'none')!r}, body starts {reader.first_line[:80]!r}): "
                    f"the server ignored stream=true; use an OpenAI-compatible server that streams"
                )

    def _cancel(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream:
            stream.aborted = True  # seen by _run if its coroutine has not started yet
            if stream.task:
                stream.task.cancel()

    def _start_poller(self) -> None:
        if self.options.telemetry_period_s == 0:
            return
        if self._poller is None or self._poller.done():
            self._poller = self._loop.create_task(self._poll_telemetry())

    async def _poll_telemetry(self) -> None:
        """Read server telemetry every `telemetry_period_s` while requests are in flight, then once more."""
        while True:
            busy = bool(self._streams)
            t0 = time.perf_counter()
            self._load = await self._read_load()
            if not busy:
                return
            await asyncio.sleep(max(self.options.telemetry_period_s - (time.perf_counter() - t0), 0.0))

    async def _read_load(self) -> ServerLoad:
        load = ServerLoad()
        if "/slots" not in self._no_endpoint and self.kind == "llama-server":
            slots = await self._telemetry("/slots")
            if isinstance(slots, list):
                load = load_from_slots(slots)
        if "/metrics" not in self._no_endpoint:
            text = await self._telemetry("/metrics")
            if text is not None:
                load = load_from_metrics(parse_prometheus(text)).over(load)
        return load

    async def _telemetry(self, path: str):
        """GET a telemetry endpoint: JSON or text, None when it fails (an error status disables it)."""
        try:
            resp = await self._client.get(self.root + path, timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            self._no_endpoint.add(path)
            return None
        return resp.json() if path == "/slots" else resp.text

    async def _shutdown(self) -> None:
        tasks = [s.task for s in self._streams.values() if s.task] + ([self._poller] if self._poller else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()
