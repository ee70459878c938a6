"""Technique benchmarks on the llama.cpp engine: each returns a plain dict of measured figures
and the ratios between configurations measured in the same run.

All configurations of one benchmark are loaded side by side and measured in alternating rounds
(round r measures every configuration once), so slow drift of a shared machine hits them alike;
each figure is the mean over rounds, with the rounds' values kept.

  prefix_ttft       TTFT of requests sharing a ~prefix_tokens prompt prefix, prefix cache off vs
                    on (the cache warmed by one earlier request), the first token drawn as the
                    presets draw (`STUDY_SAMPLING`, request i seed i). TTFT = first token - submit,
                    one request at a time. gain: the metric prefix_ttft_gain.
  speculative       end-to-end time of N reasoning prompts (GSM8K) submitted together, sampled as
                    the presets sample (`bench.engine.STUDY_SAMPLING`, request i seed i; greedy
                    drafts are accepted more often, so a greedy speedup overstates the study's), for
                    no speculation and every registered speculative method (`rllm_study.backends.speculative`;
                    a method that takes a model drafts with `draft`), at each N. Output throughput =
                    the metric output_tok_s of the recorded batch (`rllm_study.bench.crosscheck.BatchRun`);
                    speedup: the metric speculative_speedup (see "Batch invariance" in
                    backends/rllm_study/backends/llama_cpp/engine.py for why outputs may differ in length).
  kv_quantization   KV bytes per token and for the whole context per cache type; memory saved =
                    1 - bytes / f16 bytes; aggregate decode tokens/s of N sequences sampled as the
                    presets sample (`STUDY_SAMPLING`; the metric decode_tok_s,
                    `rllm_study.bench.engine.decode_rate`); speed ratio: the metric kv_speed_ratio.
Every result records the sampling it measured under (`sampling`).
  Acceptance is the metric draft_acceptance_rate pooled over rounds (sum draft_accepted / sum
  draft_proposed); saved_prefill_s is the metric prefix_saved_prefill_s of the engine's counters.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from rllm_study.analysis.metrics import kv_speed_ratio, prefix_saved_prefill, prefix_ttft_gain, speculative_speedup
from rllm_study.backends.base import Request, SamplingParams
from rllm_study.backends.llama_cpp.engine import LlamaCppEngine
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.backends.speculative import REGISTRY as SPECULATIVE_METHODS
from rllm_study.bench.crosscheck import run_batch
from rllm_study.bench.engine import STUDY_SAMPLING, decode_rate

COUNTING = ", ".join(str(i) for i in range(1, 3000))


def _mean(runs: list[float]) -> dict:
    return {"mean": statistics.fmean(runs), "runs": runs}


def _rounds(engines: dict, measure, reps: int) -> dict[str, list]:
    """measure(name, engine) for every engine, `reps` alternating rounds; name -> values."""
    values: dict[str, list] = {name: [] for name in engines}
    for _ in range(reps):
        for name, engine in engines.items():
            values[name].append(measure(name, engine))
    return values


def _close(engines: dict) -> None:
    for engine in engines.values():
        engine.close()


def _sampling(s: SamplingParams) -> dict:
    return {"temperature": s.temperature, "top_p": s.top_p, "order": s.order, "seeds": "request i: seed i"}


def prefix_ttft(
    model: str = "qwen2.5-coder-0.5b",
    threads: int = 2,
    prefix_tokens: int = 1000,
    reps: int = 3,
    sampling: SamplingParams = STUDY_SAMPLING,
) -> dict:
    """TTFT with a shared prefix, prefix cache off vs on (see the module docstring)."""
    options = LlamaCppOptions(max_seqs=1, ctx_per_seq=prefix_tokens + 256, n_threads=threads, flash_attn=True)
    engines = {"off": LlamaCppEngine(model, options), "on": LlamaCppEngine(model, replace(options, prefix_cache=True))}
    try:
        probe = engines["off"].model
        prefix = probe.detokenize(probe.tokenize(COUNTING, add_special=False)[:prefix_tokens])
        first = replace(sampling, max_tokens=1, seed=0)
        run_batch(engines["on"], [Request("warm", prefix + "\nQuestion 0: what comes next?", first)])
        n = iter(range(1, 10_000))

        def measure(name, engine):
            i = next(n)
            question = Request("q", prefix + f"\nQuestion {i}: what comes next?", replace(first, seed=i))
            return run_batch(engine, [question]).first_token_s

        ttft = _rounds(engines, measure, reps)
        extra = engines["on"].stats().extra.as_dict()
    finally:
        _close(engines)
    off, on = _mean(ttft["off"]), _mean(ttft["on"])
    return {
        "model": model,
        "threads": threads,
        "prefix_tokens": prefix_tokens,
        "sampling": _sampling(sampling),
        "ttft_off_s": off,
        "ttft_on_s": on,
        "ttft_gain": prefix_ttft_gain(off["mean"], on["mean"]),
        "reused_tokens_per_request": extra["prefix_tokens_reused"] / max(extra["prefix_hits"], 1),
        "restore_s_per_hit": extra["prefix_restore_s"] / max(extra["prefix_hits"], 1),
        "saved_prefill_s": prefix_saved_prefill(extra),
    }


def _gsm8k_prompts(engine, n: int) -> list[str]:
    from rllm_study.workloads.datasets import load_dataset
    from rllm_study.workloads.prompts import build_prompt

    prompts = []
    for item in load_dataset("gsm8k", limit=n):
        p = build_prompt(item, "reasoning")
        prompts.append(engine.apply_chat_template(p.messages) + p.assistant_prefix)
    return prompts


def speculative(
    target: str = "qwen2.5-coder-1.5b",
    draft: str = "qwen2.5-coder-0.5b",
    threads: int = 2,
    concurrency: tuple[int, ...] = (1, 8),
    max_tokens: int = 128,
    spec_tokens: int = 4,
    reps: int = 2,
    sampling: SamplingParams = STUDY_SAMPLING,
) -> dict:
    """End-to-end speedup of each registered speculative method at each concurrency (see the module docstring)."""
    methods = {"none": None, **{m.name: m.spelling(draft) for m in SPECULATIVE_METHODS.values()}}
    out = {
        "target": target,
        "draft": draft,
        "threads": threads,
        "max_tokens": max_tokens,
        "spec_tokens": spec_tokens,
        "sampling": _sampling(sampling),
        "by_concurrency": {},
    }
    for n in concurrency:
        engines = {
            name: LlamaCppEngine(
                target,
                LlamaCppOptions(
                    max_seqs=n,
                    ctx_per_seq=1024,
                    n_threads=threads,
                    flash_attn=True,
                    speculative=spec,
                    speculative_tokens=spec_tokens,
                ),
            )
            for name, spec in methods.items()
        }
        try:
            prompts = _gsm8k_prompts(engines["none"], n)

            def measure(name, engine, prompts=prompts):
                reqs = [
                    Request(f"r{i}", p, replace(sampling, max_tokens=max_tokens, seed=i)) for i, p in enumerate(prompts)
                ]
                run = run_batch(engine, reqs)
                techniques = run.metrics["techniques"]
                return {
                    "tok_s": run.throughput,
                    "proposed": techniques["draft_proposed"],
                    "accepted": techniques["draft_accepted"],
                }

            runs = _rounds(engines, measure, reps)
        finally:
            _close(engines)
        base = statistics.fmean(r["tok_s"] for r in runs["none"])
        out["by_concurrency"][n] = {
            name: {
                "output_tok_s": _mean([r["tok_s"] for r in rs]),
                "speedup": speculative_speedup(statistics.fmean(r["tok_s"] for r in rs), base),
                "acceptance": (sum(r["accepted"] for r in rs) / p) if (p := sum(r["proposed"] for r in rs)) else None,
            }
            for name, rs in runs.items()
        }
    return out


def kv_quantization(
    model: str = "qwen2.5-coder-0.5b",
    threads: int = 2,
    types: tuple[str, ...] = ("f16", "q8_0", "q4_0"),
    n_seqs: int = 8,
    n_prompt: int = 128,
    n_gen: int = 64,
    reps: int = 2,
    sampling: SamplingParams = STUDY_SAMPLING,
) -> dict:
    """KV memory saved and decode speed change per cache type, against f16 (see the module docstring)."""
    ctx_per_seq = n_prompt + n_gen + 64
    engines = {
        t: LlamaCppEngine(
            model,
            LlamaCppOptions(
                max_seqs=n_seqs, ctx_per_seq=ctx_per_seq, n_threads=threads, flash_attn=True, type_k=t, type_v=t
            ),
        )
        for t in types
    }
    try:
        per_token = {t: e.info().kv_bytes_per_token for t, e in engines.items()}
        n_ctx = {t: e.n_ctx for t, e in engines.items()}
        rates = _rounds(engines, lambda t, e: decode_rate(e, n_seqs, n_prompt, n_gen, sampling), reps)
    finally:
        _close(engines)
    ref = types[0]
    return {
        "model": model,
        "threads": threads,
        "n_seqs": n_seqs,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "sampling": _sampling(sampling),
        "reference": ref,
        "by_type": {
            t: {
                "kv_bytes_per_token": per_token[t],
                "kv_bytes_context": per_token[t] * n_ctx[t],
                "memory_saved": 1 - per_token[t] / per_token[ref],
                "decode_tok_s": _mean(rates[t]),
                "speed_ratio": kv_speed_ratio(statistics.fmean(rates[t]), statistics.fmean(rates[ref])),
            }
            for t in types
        },
    }
