"""The engine protocol and the plain data that crosses it.

Every backend turns `Request`s into a stream of events:
  RequestAdmitted  the request got a sequence slot (queue wait ends here)
  PrefillDone      its prompt is in the KV cache (cached_tokens of it were reused)
  TokenEvent       one generated token (or, for a network stream, one chunk of n_tokens)
  RequestFinished  the request ended: reason stop | length | abort | error
Times are `time.perf_counter_ns()` readings taken by the engine the moment the event happened.
Step-driven engines (llama.cpp, MLX) produce events from `step()`; the runner's loop calls it
in one thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Union

THINK = "think"
ANSWER = "answer"

FINISH_STOP = "stop"      # EOS or a stop string
FINISH_LENGTH = "length"  # token budget (or context) exhausted
FINISH_ABORT = "abort"    # aborted by the caller
FINISH_ERROR = "error"    # the engine or server failed this request


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 means greedy; top_p in (0, 1]."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class Request:
    """One generation request.

    `prompt` is the exact text the model sees (chat template already applied by the caller);
    `starts_in_think` says the prompt leaves the model inside a `<think>` block (reasoning
    templates and R1-style chat templates end the prompt with `<think>`), so output is in the
    think phase until `</think>`. `grammar` is optional GBNF text.
    """

    id: str
    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    starts_in_think: bool = False
    grammar: str | None = None


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


Event = Union[RequestAdmitted, PrefillDone, TokenEvent, RequestFinished]


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
    extra: dict = field(default_factory=dict)


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


@dataclass(frozen=True)
class EngineOptions:
    """Engine settings shared by all backends (each backend honours what its Capabilities say).

    max_seqs: concurrent sequences (parallel slots). n_ctx: total KV cells for all sequences
    (0 = max_seqs * ctx_per_seq). n_batch: tokens per decode call (chunked prefill size).
    type_k/type_v: KV-cache element types (f16, q8_0, q4_0, ...). kv_bits: MLX quantized KV.
    prefix_cache_tokens: LRU budget of cached prefix tokens. spec: None, "ngram" or
    "draft:MODEL"; spec_tokens: draft length. batch_invariant: the same logits for a token
    whatever else is in its batch, at some speed (llama.cpp: see "Batch invariance" in
    backends/llama_cpp.py). base_url/api_key_env/timeout_s: network backends.
    """

    max_seqs: int = 4
    n_ctx: int = 0
    ctx_per_seq: int = 4096
    n_batch: int = 512
    n_threads: int | None = None
    n_gpu_layers: int = 0
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool | None = None
    kv_unified: bool = False
    kv_bits: int | None = None
    prefix_cache: bool = False
    prefix_cache_tokens: int = 16384
    spec: str | None = None
    spec_tokens: int = 4
    batch_invariant: bool = False
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 600.0


def unsupported_options(options: EngineOptions, caps: Capabilities) -> list[str]:
    """Options set away from their defaults that this backend cannot honour, one line each."""
    problems = []
    if (options.type_k, options.type_v) != ("f16", "f16") and not caps.kv_cache_types:
        problems.append(f"{caps.backend}: KV-cache types type_k/type_v are not supported")
    if options.prefix_cache and not caps.prefix_cache:
        problems.append(f"{caps.backend}: prefix caching is not supported")
    if options.spec and options.spec.split(":")[0] not in caps.speculative:
        problems.append(f"{caps.backend}: speculative decoding {options.spec!r} is not supported")
    if options.batch_invariant and not caps.batch_invariant:
        problems.append(f"{caps.backend}: batch_invariant is not supported")
    return problems


def engine_unsupported(engine, options: EngineOptions) -> list[str]:
    """Everything `engine` cannot honour of `options`: the generic checks above plus the
    engine's own notes in info()["unsupported_options"], one line each."""
    found = unsupported_options(options, engine.capabilities())
    return found + [p for p in engine.info().get("unsupported_options", []) if p not in found]


class Engine(Protocol):
    """What the runner needs from a backend. Constructed as `EngineClass(model, options)`
    where model is a model reference string (name, path or hub ref) and options EngineOptions."""

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

    def info(self) -> dict:
        """Facts for the manifest: model path/size, engine build, options in force."""

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The model's own chat template applied to messages."""

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...
