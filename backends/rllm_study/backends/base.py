"""The engine protocol and the plain data that crosses it.

Every backend turns `Request`s into a stream of events:
  RequestAdmitted  the request got a sequence slot (queue wait ends here)
  PrefillDone      its prompt is in the KV cache (cached_tokens of it were reused)
  TokenEvent       one generated token (or, for a network stream, one chunk of n_tokens)
  RequestFinished  the request ended: reason stop | length | abort | error
Times are `time.perf_counter_ns()` readings taken by the engine the moment the event happened.
Step-driven engines (llama.cpp, MLX) produce events from `step()`; the runner's loop calls it
in one thread.

Inside an engine, a request in flight is held by that backend's own `RequestState` class, in
its engine package (llama.cpp: `llama_cpp/request.py`; MLX: `mlx/engine.py`; OpenAI HTTP:
`openai_http/engine.py`): one name for the same concept, each with the fields its backend needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

THINK = "think"
ANSWER = "answer"

FINISH_STOP = "stop"  # EOS or a stop string
FINISH_LENGTH = "length"  # token budget (or context) exhausted
FINISH_ABORT = "abort"  # aborted by the caller
FINISH_ERROR = "error"  # the engine or server failed this request


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 means greedy; top_p in (0, 1]; top_k 0 = off; order
    "temperature_first" or "top_p_first" (the distributions: backends/rllm_study/backends/sampling.py).

    think_budget: None = thinking is never cut; N >= 0 = the engine closes the think block when
    N think tokens have been generated, or when the model ends while still thinking (see
    backends/rllm_study/backends/output.py "Think budget").
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    top_k: int = 0
    order: str = "temperature_first"
    think_budget: int | None = None


@dataclass
class Request:
    """One generation request.

    `prompt` is the exact text the model sees (chat template already applied by the caller);
    `starts_in_think` says the prompt leaves the model inside a `<think>` block (reasoning
    templates and R1-style chat templates end the prompt with `<think>`), so output is in the
    think phase until `</think>`. `grammar` is optional GBNF text. `answer_cue` is the text the
    engine writes after `</think>` when it closes the thinking itself (sampling.think_budget).
    """

    id: str
    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    starts_in_think: bool = False
    grammar: str | None = None
    answer_cue: str = ""


@dataclass(frozen=True)
class RequestAdmitted:
    request_id: str
    t_ns: int


@dataclass(frozen=True)
class PrefillDone:
    request_id: str
    t_ns: int
    prompt_tokens: int
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache, not recomputed


@dataclass(frozen=True)
class TokenEvent:
    """A generated token. `n_tokens` > 1 only for a network chunk carrying several tokens
    (then token_id is -1); `draft` marks a token proposed by a speculative drafter and accepted."""

    request_id: str
    t_ns: int
    token_id: int
    text: str
    phase: str
    draft: bool = False
    n_tokens: int = 1


@dataclass(frozen=True)
class RequestFinished:
    request_id: str
    t_ns: int
    reason: str
    output_text: str
    prompt_tokens: int
    output_tokens: int
    think_tokens: int
    answer_tokens: int
    cached_tokens: int = 0
    draft_proposed: int = 0
    draft_accepted: int = 0
    error: str | None = None
    think_forced: bool | None = None  # the engine closed the thinking (None: not known, e.g. a server)
    forced_tokens: int = 0  # tokens the engine fed for that close (not in output_tokens)
    think_close_leaked: bool | None = (
        None  # a server split the reasoning off, yet a literal `</think>` came in the answer text
    )


Event = RequestAdmitted | PrefillDone | TokenEvent | RequestFinished


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of engine state for the timeline.

    kv_used / kv_capacity are in `kv_unit` ("cells": KV slots, one per token per sequence;
    "bytes"; or "percent" with capacity 100 when a server reports only a usage fraction).
    KV usage fraction = kv_used / kv_capacity. rss_bytes is this process's resident set;
    device_bytes is accelerator memory in use where there is a device (else None).
    """

    kv_used: float
    kv_capacity: float
    running: int
    waiting: int
    rss_bytes: int
    kv_unit: str = "cells"
    device_bytes: int | None = None
    device_peak_bytes: int | None = None
    extra: StatsExtra | None = None


@dataclass(frozen=True)
class StatsExtra:
    """A backend's own stats (EngineStats.extra), one dataclass per backend; `as_dict()` is what the
    timeline records under "extra" (a group that does not apply, e.g. prefix-cache counters with
    the cache off, is left out)."""

    def as_dict(self) -> dict:
        out = {}
        for name, value in asdict(self).items():
            if isinstance(value, dict):
                out.update(value)
            elif value is not None:
                out[name] = value
        return out


@dataclass(frozen=True, kw_only=True)
class EngineInfo:
    """What `info()` returns: the facts every backend has; each backend's dataclass adds its own.
    `as_dict()` is what the manifest records under "engine". build: the engine's version (of
    llama-cpp-python, of mlx-lm) or the server's kind; model: the backend's own account of the model;
    unsupported_options: the backend's notes on options it cannot honour, one line each."""

    backend: str
    build: str
    model: dict | str | None = None
    unsupported_options: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can honour; options it cannot are reported, never silently ignored."""

    backend: str
    continuous_batching: bool = True
    kv_cache_types: tuple[str, ...] = ()
    prefix_cache: bool = False
    speculative: tuple[str, ...] = ()
    grammar: bool = False
    per_token_times: bool = True
    batch_invariant: bool = False
    local_model: bool = True  # the model is a file this process loads (not a server's)
    think_budget: bool = False


def unsupported_options(options, caps: Capabilities) -> list[str]:
    """Options (backends/rllm_study/backends/options.py) set for another backend, or set away from their defaults
    where this backend cannot honour them, one line each."""
    problems = [f"{caps.backend}: {name}={value!r} is not an option of this backend" for name, value in options.ignored]
    if options.prefix_cache and not caps.prefix_cache:
        problems.append(f"{caps.backend}: prefix caching is not supported")
    spec = options.speculative_method
    if spec and spec.method not in caps.speculative:
        problems.append(f"{caps.backend}: speculative decoding {options.speculative!r} is not supported")
    if options.batch_invariant and not caps.batch_invariant:
        problems.append(f"{caps.backend}: batch_invariant is not supported")
    return problems


def engine_unsupported(engine, options) -> list[str]:
    """Everything `engine` cannot honour of `options`: the generic checks above plus the
    engine's own notes in info().unsupported_options, one line each."""
    found = unsupported_options(options, engine.capabilities())
    return found + [p for p in engine.info().unsupported_options if p not in found]


class Engine(Protocol):
    """What the runner needs from a backend. Constructed as `EngineClass(model, options)`
    where model is a model reference string (name, path or hub ref) and options the backend's
    options dataclass (backends/rllm_study/backends/options.py, registered in backends/rllm_study/backends/__init__.py)."""

    def submit(self, request: Request) -> None:
        """Queue a request; it is admitted when the engine has room."""

    def step(self) -> list[Event]:
        """Advance by one scheduling step (one batched decode); return what happened."""

    def abort(self, request_id: str) -> None:
        """Stop a queued or running request; it finishes with reason `abort`."""

    def has_work(self) -> bool:
        """True while any request is queued or running."""

    def stats(self) -> EngineStats: ...

    def capabilities(self) -> Capabilities: ...

    def info(self) -> EngineInfo:
        """Facts for the manifest: model path/size, engine build, options in force."""

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The model's own chat template applied to messages."""

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...
