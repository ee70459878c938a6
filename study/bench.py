"""Engine benchmark: our decode throughput against llama.cpp's own tools, same run, same settings.

Ours: N requests with an n_prompt-token prompt each, generating n_gen tokens, submitted at
once to the llama.cpp engine with N sequences. Aggregate decode tokens/s (S_TG) =
tokens generated while all N decode / that window's length, where the window runs from the
last request's prefill-done event to the first finish (pure decode, no prompt work in it).
N = 1 gives the single-stream decode rate, comparable to llama-bench's tg<n_gen>.
Reference: llama-bench (-p 0 -n n_gen: tg tokens/s) and llama-batched-bench (-npp n_prompt
-ntg n_gen -npl N: S_TG), built from the llama.cpp sources vendored in the installed
llama-cpp-python (scripts/build_llama_tools.sh). Ratio = ours / reference.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

from rllm_study.backends.base import PrefillDone, Request, RequestFinished, SamplingParams, TokenEvent
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.errors import UserError

COUNTING = ", ".join(str(i) for i in range(1, 2000))


def _prompt_of(engine, n_prompt: int) -> str:
    """Raw counting text cut to n_prompt tokens (a continuation that rarely stops early)."""
    tokens = engine.model.tokenize(COUNTING)[:n_prompt]
    return engine.model.detokenize(tokens)


def decode_rate(engine, n_seqs: int, n_prompt: int, n_gen: int) -> float:
    """One measurement of aggregate decode tokens/s with n_seqs concurrent requests (see module doc)."""
    prompt = _prompt_of(engine, n_prompt)
    for i in range(n_seqs):
        engine.submit(Request(f"b{i}", prompt, SamplingParams(max_tokens=n_gen)))
    prefill_done, finishes, token_times = [], [], []
    while engine.has_work():
        for ev in engine.step():
            if isinstance(ev, TokenEvent):
                token_times.append(ev.t_ns)
            elif isinstance(ev, PrefillDone):
                prefill_done.append(ev.t_ns)
            elif isinstance(ev, RequestFinished):
                finishes.append(ev.t_ns)
    start, end = max(prefill_done), min(finishes)
    n = sum(1 for t in token_times if start < t <= end)
    if end <= start or n == 0:
        raise RuntimeError("no decode window: a request stopped right after its prompt")
    return n / ((end - start) / 1e9)


def measure_ours(model: str, threads: int, seqs: list[int], n_prompt: int, n_gen: int, flash_attn: bool, reps: int,
                 n_gpu_layers: int = 0) -> dict:
    """{N: {"mean": tok/s, "stdev": ..., "runs": [...]}} for each concurrency N, after one warm-up."""
    from rllm_study.backends.llama_cpp import LlamaCppEngine

    results = {}
    for n in seqs:
        options = LlamaCppOptions(max_seqs=n, ctx_per_seq=n_prompt + n_gen + 64, n_threads=threads, flash_attn=flash_attn,
                                n_gpu_layers=n_gpu_layers)
        engine = LlamaCppEngine(model, options)
        try:
            decode_rate(engine, n, n_prompt, 16)  # warm-up
            runs = [decode_rate(engine, n, n_prompt, n_gen) for _ in range(reps)]
        finally:
            engine.close()
        results[n] = {"mean": statistics.fmean(runs), "stdev": statistics.pstdev(runs), "runs": runs}
    return results


def _tool_ngl(n_gpu_layers: int) -> int:
    """The tools' -ngl for our n_gpu_layers: they take a layer count, so "all" (-1) becomes 99."""
    return 99 if n_gpu_layers < 0 else n_gpu_layers


def _run_tool(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found; build it with `bash scripts/build_llama_tools.sh` and pass its bin folder") from None
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({out.returncode}): {' | '.join(tail)}")
    return out.stdout


def measure_llama_bench(bin_dir: Path, model_path: Path, threads: int, n_gen: int, flash_attn: bool, reps: int,
                        n_gpu_layers: int = 0) -> float:
    """llama-bench tg<n_gen> tokens/s (its mean over `reps` repetitions)."""
    out = _run_tool([str(bin_dir / "llama-bench"), "-m", str(model_path), "-t", str(threads), "-p", "0", "-n", str(n_gen),
                     "-fa", "1" if flash_attn else "0", "-r", str(reps), "-ngl", str(_tool_ngl(n_gpu_layers)), "-o", "json"])
    rows = json.loads(out)
    return float(next(r["avg_ts"] for r in rows if r["n_gen"] == n_gen))


def measure_batched_bench(bin_dir: Path, model_path: Path, threads: int, seqs: list[int], n_prompt: int, n_gen: int,
                          flash_attn: bool, n_gpu_layers: int = 0) -> dict[int, float]:
    """llama-batched-bench S_TG (tokens/s) per number of parallel sequences."""
    ctx = max(seqs) * (n_prompt + n_gen + 64)
    out = _run_tool([str(bin_dir / "llama-batched-bench"), "-m", str(model_path), "-t", str(threads), "-c", str(ctx),
                     "-b", "2048", "-ub", "512", "-npp", str(n_prompt), "-ntg", str(n_gen),
                     "-npl", ",".join(map(str, seqs)), "-fa", "on" if flash_attn else "off", "-ngl", str(_tool_ngl(n_gpu_layers)),
                     "--output-format", "jsonl"])
    rates = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            row = json.loads(line)
            rates[int(row["pl"])] = float(row["speed_tg"])
    return rates


def bench_engine(model: str, threads: int, seqs: list[int], n_prompt: int = 128, n_gen: int = 128,
                 flash_attn: bool = False, reps: int = 3, reference_dir: Path | None = None, n_gpu_layers: int = 0) -> dict:
    """Our figures, and with reference_dir the reference tools' figures and ratios (ours / theirs)."""
    from rllm_study.models import resolve_model

    ref = resolve_model(model)
    ours = measure_ours(model, threads, seqs, n_prompt, n_gen, flash_attn, reps, n_gpu_layers)
    result = {"model": ref.name, "threads": threads, "n_prompt": n_prompt, "n_gen": n_gen, "flash_attn": flash_attn,
              "n_gpu_layers": n_gpu_layers, "ours": ours}
    if reference_dir is not None:
        bench_tg = measure_llama_bench(reference_dir, ref.path, threads, n_gen, flash_attn, reps, n_gpu_layers)
        batched = measure_batched_bench(reference_dir, ref.path, threads, seqs, n_prompt, n_gen, flash_attn, n_gpu_layers)
        result["reference"] = {"llama_bench_tg": bench_tg, "batched_bench_s_tg": batched}
        result["ratios"] = {
            "single_vs_llama_bench_tg": ours[1]["mean"] / bench_tg if 1 in ours else None,
            **{f"{n}_seqs_vs_batched_bench": ours[n]["mean"] / batched[n] for n in seqs if n in batched},
        }
    return result
