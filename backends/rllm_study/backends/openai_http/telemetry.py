"""Load telemetry read from an OpenAI-compatible server: KV-cache use, running and waiting requests.

Sources, by server:
- llama-server `GET /slots` (on by default): one entry per slot. KV cells used = sum over slots
  of `n_prompt_tokens` (the tokens a slot holds in the cache: prompt and output so far, idle slots
  included, since their cache stays for reuse); capacity = sum of the slots' `n_ctx`; running =
  slots with `is_processing`. With a unified KV cache (`--kv-unified`, and llama-server's default
  when `-np` is not given) every slot reports the whole pool as its `n_ctx`, so this capacity
  overstates the pool by the slot count: start llama-server with `-np N` for per-slot accounting.
- llama-server `GET /metrics` (with `--metrics`): `llamacpp:requests_processing` (running) and
  `llamacpp:requests_deferred` (waiting).
- vLLM `GET /metrics`: `vllm:kv_cache_usage_perc` (older: `vllm:gpu_cache_usage_perc`), a
  fraction in [0, 1] despite its name; `vllm:num_requests_running`, `vllm:num_requests_waiting`.
- SGLang `GET /metrics` (with `--enable-metrics`): `sglang:token_usage` (fraction of KV tokens in
  use), `sglang:num_running_reqs`, `sglang:num_queue_reqs`.
A usage fraction f becomes kv_used = 100 f with kv_capacity = 100 in unit "percent". Values of
one metric name are summed over its label sets (several models or engines behind one server).
"""

from __future__ import annotations

from dataclasses import dataclass

KV_FRACTION_METRICS = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
RUNNING_METRICS = ("vllm:num_requests_running", "sglang:num_running_reqs", "llamacpp:requests_processing")
WAITING_METRICS = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "llamacpp:requests_deferred")


@dataclass(frozen=True)
class ServerLoad:
    """What one telemetry read told; None where the source says nothing."""

    kv_used: float | None = None
    kv_capacity: float | None = None
    kv_unit: str = "cells"
    running: int | None = None
    waiting: int | None = None
    source: str = ""

    def over(self, other: ServerLoad) -> ServerLoad:
        """This reading, with gaps filled from `other`."""
        has_kv = self.kv_used is not None
        return ServerLoad(
            kv_used=self.kv_used if has_kv else other.kv_used,
            kv_capacity=self.kv_capacity if has_kv else other.kv_capacity,
            kv_unit=self.kv_unit if has_kv else other.kv_unit,
            running=self.running if self.running is not None else other.running,
            waiting=self.waiting if self.waiting is not None else other.waiting,
            source="+".join(s for s in (self.source, other.source) if s),
        )


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {metric name: sum of its samples' values}."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        if brace >= 0:
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        totals[name.strip()] = totals.get(name.strip(), 0.0) + value
    return totals


def _first(metrics: dict[str, float], names: tuple[str, ...]) -> float | None:
    return next((metrics[n] for n in names if n in metrics), None)


def load_from_metrics(metrics: dict[str, float]) -> ServerLoad:
    """KV use and request counts from parsed `/metrics` (vLLM, SGLang, llama-server)."""
    fraction = _first(metrics, KV_FRACTION_METRICS)
    running = _first(metrics, RUNNING_METRICS)
    waiting = _first(metrics, WAITING_METRICS)
    return ServerLoad(
        kv_used=None if fraction is None else 100.0 * fraction,
        kv_capacity=None if fraction is None else 100.0,
        kv_unit="percent",
        running=None if running is None else int(running),
        waiting=None if waiting is None else int(waiting),
        source="metrics" if (fraction, running, waiting) != (None, None, None) else "",
    )


def load_from_slots(slots: list[dict]) -> ServerLoad:
    """KV cells and running requests from llama-server's `/slots` (see the module docstring)."""
    return ServerLoad(
        kv_used=float(sum(s.get("n_prompt_tokens", 0) for s in slots)),
        kv_capacity=float(sum(s.get("n_ctx", 0) for s in slots)),
        kv_unit="cells",
        running=sum(1 for s in slots if s.get("is_processing")),
        source="slots",
    )
