"""Engine options: one frozen dataclass per backend, the shared fields in `CommonOptions`.

Every field is declared once with `option(...)`: its default, help text, spec key under
[engine] (default: the field name), CLI flag (default: `--` + the key with `-` for `_`), a
check, and any deprecated names. Everything else is derived from these declarations:
  - construction checks each field's type and rule (`__post_init__`), so a bad value is
    refused the same way from a spec, a flag or code, by one check per rule;
  - `study/rllm_study/running/spec.py` takes the [engine] keys from `engine_keys()` and builds a cell's options
    with `build_options`;
  - `study/rllm_study/commands/options.py` turns the fields into the flags of `generate`, `run`, `bench`.
Options are frozen (hashable): the runner keeps one engine per (backend, model, options).

A backend's options class adds only its own fields. A value set for a field of another
backend is kept in `ignored` and reported (`unsupported_options`), never silently dropped.

Techniques: speculative decoding is `speculative` ("ngram" or "draft:MODEL": a method of the
registry in `backends/rllm_study/backends/speculative.py`, parsed only by its `parse_speculative`) with `speculative_tokens` drafted per step; prefix caching is
`prefix_cache` with an LRU budget of `prefix_cache_tokens`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rllm_study.backends.speculative import Speculative, parse_speculative
from rllm_study.backends.speculative import forms as speculative_forms
from rllm_study.errors import UserError

# -- checks: each returns None when the value is fine, else what is wrong ("must be ...") ----


def at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v >= low else f"must be >= {low}"


def above(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v > low else f"must be > {low:g}"


def one_of(*allowed) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v in allowed else f"must be one of {', '.join(map(str, allowed))}"


# -- speculative decoding: parsed by the method registry (backends/rllm_study/backends/speculative.py)


def _check_speculative(value) -> str | None:
    try:
        parse_speculative(value)
    except UserError:
        return f"must be {speculative_forms()}"
    return None


def parse_json_object(text: str | None) -> dict | None:
    """`extra_body` text -> dict (None when unset); anything but a JSON object is a UserError."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UserError(f"extra_body {text!r}: not JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"extra_body {text!r}: not a JSON object")
    return value


def _check_json_object(value) -> str | None:
    try:
        parse_json_object(value)
    except UserError:
        return "must be a JSON object, e.g. '{\"key\": 1}'"
    return None


# -- declarations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    """What `option()` attaches to a field (see the module docstring)."""

    help: str
    key: str
    flag: str
    short: str | None = None
    check: Callable[[Any], str | None] | None = None
    deprecated_key: str | None = None  # an old spec key (and its flag, --old-key) that still works
    default: Any = None
    type: str = "str"  # the field's annotation, e.g. "int | None"


def option(
    default,
    help: str,
    *,
    key: str | None = None,
    flag: str | None = None,
    short: str | None = None,
    check=None,
    deprecated_key: str | None = None,
):
    """A dataclass field with its Meta; key/flag are filled in from the field name by `_meta`."""
    meta = {"help": help, "key": key, "flag": flag, "short": short, "check": check, "deprecated_key": deprecated_key}
    return field(default=default, metadata={"option": meta})


def _meta(f: dataclasses.Field) -> Meta:
    m = dict(f.metadata["option"])
    m["key"] = m["key"] or f.name
    m["flag"] = m["flag"] or "--" + m["key"].replace("_", "-")
    return Meta(**m, default=f.default, type=f.type)


_PLAIN = {"int": int, "float": float, "bool": bool, "str": str}


def _type_problem(value, annotation: str) -> str | None:
    """None when value fits the field's annotation (int, float, bool, str, optionally `| None`)."""
    parts = [p.strip() for p in annotation.split("|")]
    if value is None:
        return None if "None" in parts else "must be set"
    want = _PLAIN[parts[0]]
    if want is bool or isinstance(value, bool):  # true/false is no number, a number no true/false
        ok = want is bool and isinstance(value, bool)
    else:
        ok = isinstance(value, want) or (want is float and isinstance(value, int))
    if ok:
        return None
    return {
        int: "must be a whole number",
        float: "must be a number",
        bool: "must be true or false",
        str: "must be text",
    }[want]


class OptionError(UserError):
    """A bad option value: `name` is the field, `reason` what is wrong; callers that know how the
    user spelled it (spec key, flag) re-word it with `message_for`."""

    def __init__(self, name: str, value, reason: str):
        self.name, self.value, self.reason = name, value, reason
        super().__init__(self.message_for(name))

    def message_for(self, spelled: str) -> str:
        return f"{spelled} {self.value!r}: {self.reason}"


@dataclass(frozen=True)
class CommonOptions:
    """Options every backend takes (each honours what its Capabilities say; see `unsupported_options`)."""

    max_seqs: int = option(
        4, "Concurrent sequences (parallel slots) in the engine.", key="concurrency", short="-c", check=at_least(1)
    )
    ctx_per_seq: int = option(
        4096, "KV cells (tokens) per sequence; the cache holds concurrency x this.", check=at_least(16)
    )
    n_ctx: int = option(0, "Total KV cells for all sequences (0 = concurrency x ctx_per_seq).", check=at_least(0))
    n_batch: int = option(512, "Tokens per decode call (the chunked-prefill size).", check=at_least(1))
    prefix_cache: bool = option(False, "Reuse the KV of cached prompt prefixes.")
    prefix_cache_tokens: int = option(16384, "LRU budget of cached prefix tokens.", check=at_least(1))
    speculative: str | None = option(
        None,
        f"Speculative decoding: {speculative_forms(quoted=False)}.",
        check=_check_speculative,
        deprecated_key="spec",
    )
    speculative_tokens: int = option(4, "Draft tokens per step.", check=at_least(1), deprecated_key="spec_tokens")
    batch_invariant: bool = option(
        False, "The same logits for a token whatever else is batched (llama.cpp; slower, turns flash attention on)."
    )
    ignore_eos: bool = option(
        False,
        "Generate max_tokens tokens whatever the model says: end-of-generation tokens do not "
        "stop a request (a load test's fixed output length; servers: their ignore_eos field).",
    )
    ignored: tuple = field(default=(), metadata={})  # ((field, value), ...) set for another backend

    def __post_init__(self):
        """Every field's type and rule, checked here once for specs, flags and code alike."""
        for name, meta in option_meta(type(self)).items():
            value = getattr(self, name)
            reason = _type_problem(value, meta.type) or (meta.check(value) if meta.check else None)
            if reason:
                raise OptionError(name, value, reason)

    @property
    def speculative_method(self) -> Speculative | None:
        return parse_speculative(self.speculative)


@dataclass(frozen=True)
class LlamaCppOptions(CommonOptions):
    """llama.cpp in process: threads, GPU offload, KV-cache types, flash attention, unified KV."""

    n_threads: int | None = option(
        None, "CPU threads (default: physical cores).", key="threads", short="-t", check=at_least(1)
    )
    n_gpu_layers: int = option(0, "Layers offloaded to CUDA/Metal (-1 = all).")
    type_k: str = option("f16", "K-cache type: f16, q8_0, q4_0, ...", flag="--kv-type-k")
    type_v: str = option(
        "f16", "V-cache type: f16, q8_0, q4_0, ... (quantized V turns flash attention on).", flag="--kv-type-v"
    )
    flash_attn: bool | None = option(None, "Flash attention (default: llama.cpp's auto).")
    kv_unified: bool = option(
        False, "One KV pool shared by all sequences (admission by free cells, preemption when full)."
    )
    kv_budget_mib: float = option(
        0.0,
        "Size the KV cache in MiB instead of cells: n_ctx = budget / KV bytes per token "
        "of type_k and type_v (0 = off; with kv_unified the requests share it).",
        check=at_least(0),
    )
    sample_on: str = option(
        "host",
        "Where tokens are drawn: host (numpy, from the logits) or device (llama.cpp's sampler "
        "chain inside the decode graph; slower on an H200, see docs/engines.md).",
        check=one_of("host", "device"),
    )
    overlap_decode: bool | None = option(
        None,
        "Do a step's host work (events, detokenising, stop strings) while the device runs the next "
        "decode (default: on when layers are offloaded to a GPU; never with speculative decoding or kv_unified).",
    )


MLX_KV_BITS = (2, 3, 4, 5, 6, 8)  # the bit widths mlx.core.quantize takes


@dataclass(frozen=True)
class MlxOptions(CommonOptions):
    """MLX (mlx-lm) in process: quantized KV cache."""

    kv_bits: int | None = option(
        None, f"MLX: quantized KV-cache bits ({', '.join(map(str, MLX_KV_BITS))}).", check=one_of(*MLX_KV_BITS)
    )


@dataclass(frozen=True)
class OpenAIOptions(CommonOptions):
    """An OpenAI-compatible server: where it is and how long to wait."""

    base_url: str | None = option(None, "OpenAI-compatible server URL (backend openai).")
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the server's API key.")
    timeout_s: float = option(600.0, "Seconds to wait for a request's complete answer.", check=above(0))
    server_default_samplers: bool = option(
        False,
        "llama.cpp servers: keep their own default extra samplers (top_k 40, "
        "min_p 0.05 ...) instead of top_k 0, min_p 0, repeat_penalty 1 per request.",
    )
    server_backend_sampling: bool = option(
        False,
        "llama-server: draw tokens inside its decode graph (its per-request "
        "backend_sampling), as sample_on 'device' does in process.",
    )
    extra_body: str | None = option(
        None,
        "A JSON object whose fields are added to every request body (they override "
        'ours), e.g. \'{"chat_template_kwargs": {"enable_thinking": true}}\'.',
        check=_check_json_object,
    )
    telemetry_period_s: float = option(
        0.1,
        "Seconds between reads of the server's /slots and /metrics while requests "
        "run (0 = never read them: no server KV or queue figures).",
        check=at_least(0),
    )


def option_fields(cls) -> list[dataclasses.Field]:
    """The declared option fields of an options class (not `ignored`)."""
    return [f for f in dataclasses.fields(cls) if "option" in f.metadata]


def option_meta(cls) -> dict[str, Meta]:
    """Field name -> Meta for an options class."""
    return dict(_option_meta(cls))


@functools.cache
def _option_meta(cls) -> dict[str, Meta]:
    """option_meta, made once per class (a 10,000-cell spec asks for it for every cell)."""
    return {f.name: _meta(f) for f in option_fields(cls)}


def deprecated(message: str) -> None:
    """One line on stderr for a deprecated spelling that still works."""
    print(f"warning: {message}", file=sys.stderr)
