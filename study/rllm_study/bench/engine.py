"""Engine benchmark: our decode throughput against llama.cpp's own tools, same run, same settings.

Ours: N requests with an n_prompt-token prompt each, generating n_gen tokens, submitted at
once to the llama.cpp engine with N sequences, recorded as the study records a cell
(`rllm_study.running.recorder.record_batch`); the figure is the metric decode_tok_s (aggregate decode
tokens/s while all N decode: `rllm-study metrics --explain`). Each N is measured in two modes on
the same engine, in alternating repetitions: greedy, and sampled with the presets' settings
(temperature, top-p, order; request i gets seed i), the study's own path.
N = 1 gives the single-stream decode rate, comparable to llama-bench's tg<n_gen>.
Each N's figures come with where its decode steps went (the engine's StepTimes over the
measured runs: llama_decode, waiting for the device and its logits, drawing the tokens, the
rest of the step), so a gap to the reference is explained in the run that measures it.
Reference: llama-bench (-p 0 -n n_gen: tg tokens/s) and llama-batched-bench (-npp n_prompt
-ntg n_gen -npl N: S_TG), built from the llama.cpp sources vendored in the installed
llama-cpp-python (scripts/build_llama_tools.sh). Ratios: the metric decode_vs_reference.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from dataclasses import replace
from pathlib import Path

from rllm_study.analysis.metrics import cell_metrics, decode_vs_reference
from rllm_study.backends.base import Request, SamplingParams
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.errors import UserError
from rllm_study.running.recorder import record_batch

COUNTING = ", ".join(str(i) for i in range(1, 2000))
GREEDY = SamplingParams(temperature=0.0)
STUDY_SAMPLING = SamplingParams(temperature=0.6, top_p=0.95)  # the presets' [sampling] (default order)


def _prompt_of(engine, n_prompt: int) -> str:
    """Raw counting text cut to n_prompt tokens (a continuation that rarely stops early)."""
    tokens = engine.model.tokenize(COUNTING)[:n_prompt]
    return engine.model.detokenize(tokens)


def _batch(engine, n_seqs: int, n_prompt: int, n_gen: int, sampling: SamplingParams):
    """The recorded cell of n_seqs concurrent requests (request i: seed sampling.seed + i)."""
    prompt = _prompt_of(engine, n_prompt)
    return record_batch(
        engine,
        [Request(f"b{i}", prompt, replace(sampling, max_tokens=n_gen, seed=sampling.seed + i)) for i in range(n_seqs)],
        name="bench",
    )


def decode_rate(engine, n_seqs: int, n_prompt: int, n_gen: int, sampling: SamplingParams = GREEDY) -> float:
    """One measurement of the metric decode_tok_s with n_seqs concurrent requests (request i: seed sampling.seed + i)."""
    rate = cell_metrics(_batch(engine, n_seqs, n_prompt, n_gen, sampling))["throughput"]["decode_tok_s"]
    if rate is None:
        raise RuntimeError("no decode window: a request stopped right after its prompt")
    return rate


STEP_PARTS = ("decode", "wait", "draw", "other")


def step_breakdown(times) -> dict:
    """A StepTimes as {"steps", "sequences_per_step", "ms_per_step": {part: ms}, "share": {part:
    fraction of the step}} (parts: STEP_PARTS, see LlamaCppEngine's StepTimes)."""
    steps = max(times.steps, 1)
    ms = {part: 1e3 * getattr(times, f"{part}_s") / steps for part in STEP_PARTS}
    total = sum(ms.values()) or 1.0
    return {
        "steps": times.steps,
        "sequences_per_step": times.sequences / steps,
        "ms_per_step": ms,
        "share": {part: value / total for part, value in ms.items()},
    }


def measure_ours(
    model: str,
    threads: int,
    seqs: list[int],
    n_prompt: int,
    n_gen: int,
    flash_attn: bool,
    reps: int,
    n_gpu_layers: int = 0,
    modes: dict[str, SamplingParams] | None = None,
    sample_on: tuple[str, ...] = ("host",),
    overlap: tuple[bool | None, ...] = (None,),
) -> dict:
    """{mode: {N: {"mean": tok/s, "stdev": ..., "runs": [...], "steps": step_breakdown}}} for each
    concurrency N, after one warm-up; the modes (default greedy only) alternate within each
    repetition; "steps" sums the decode steps of the measured runs. Each mode is measured on one
    engine per variant: every `sample_on` value (e.g. "host" and "device" on a GPU) and every
    `overlap` value (the engine option overlap_decode: None = its default), named
    "MODE/WHERE/overlap|no-overlap", each part only where several values are measured."""
    from rllm_study.backends.llama_cpp.engine import LlamaCppEngine, StepTimes

    modes = modes or {"greedy": GREEDY}
    variants = [(where, ov) for where in sample_on for ov in overlap]

    def label(mode: str, where: str, ov: bool | None) -> str:
        parts = (
            [mode]
            + [where] * (len(sample_on) > 1)
            + [{True: "overlap", False: "no-overlap", None: "default"}[ov]] * (len(overlap) > 1)
        )
        return "/".join(parts)

    named = {(mode, v): label(mode, *v) for v in variants for mode in modes}
    results: dict[str, dict] = {name: {} for name in named.values()}
    for n in seqs:
        engines = {}
        runs: dict[str, list[float]] = {name: [] for name in named.values()}
        steps = {name: StepTimes() for name in named.values()}
        try:
            for where, ov in variants:
                options = LlamaCppOptions(
                    max_seqs=n,
                    ctx_per_seq=n_prompt + n_gen + 64,
                    n_threads=threads,
                    flash_attn=flash_attn,
                    n_gpu_layers=n_gpu_layers,
                    sample_on=where,
                    overlap_decode=ov,
                )
                engines[where, ov] = LlamaCppEngine(model, options)
                for sampling in modes.values():
                    _batch(engines[where, ov], n, n_prompt, 16, sampling)  # warm-up: too short to need a decode window
            for _ in range(reps):
                for (mode, variant), name in named.items():
                    engines[variant].step_times = steps[name]  # accumulates over this mode's runs
                    runs[name].append(decode_rate(engines[variant], n, n_prompt, n_gen, modes[mode]))
        finally:
            for engine in engines.values():
                engine.close()
        for name, values in runs.items():
            results[name][n] = {
                "mean": statistics.fmean(values),
                "stdev": statistics.pstdev(values),
                "runs": values,
                "steps": step_breakdown(steps[name]),
            }
    return results


def _tool_ngl(n_gpu_layers: int) -> int:
    """The tools' -ngl for our n_gpu_layers: they take a layer count, so "all" (-1) becomes 99."""
    return 99 if n_gpu_layers < 0 else n_gpu_layers


def _run_tool(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise UserError(
            f"{cmd[0]} not found; build it with `bash scripts/build_llama_tools.sh` and pass its bin folder"
        ) from None
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({out.returncode}): {' | '.join(tail)}")
    return out.stdout


def measure_llama_bench(
    bin_dir: Path, model_path: Path, threads: int, n_gen: int, flash_attn: bool, reps: int, n_gpu_layers: int = 0
) -> float:
    """llama-bench tg<n_gen> tokens/s (its mean over `reps` repetitions)."""
    out = _run_tool(
        [
            str(bin_dir / "llama-bench"),
            "-m",
            str(model_path),
            "-t",
            str(threads),
            "-p",
            "0",
            "-n",
            str(n_gen),
            "-fa",
            "1" if flash_attn else "0",
            "-r",
            str(reps),
            "-ngl",
            str(_tool_ngl(n_gpu_layers)),
            "-o",
            "json",
        ]
    )
    rows = json.loads(out)
    return float(next(r["avg_ts"] for r in rows if r["n_gen"] == n_gen))


def measure_batched_bench(
    bin_dir: Path,
    model_path: Path,
    threads: int,
    seqs: list[int],
    n_prompt: int,
    n_gen: int,
    flash_attn: bool,
    n_gpu_layers: int = 0,
) -> dict[int, float]:
    """llama-batched-bench S_TG (tokens/s) per number of parallel sequences."""
    ctx = max(seqs) * (n_prompt + n_gen + 64)
    out = _run_tool(
        [
            str(bin_dir / "llama-batched-bench"),
            "-m",
            str(model_path),
            "-t",
            str(threads),
            "-c",
            str(ctx),
            "-b",
            "2048",
            "-ub",
            "512",
            "-npp",
            str(n_prompt),
            "-ntg",
            str(n_gen),
            "-npl",
            ",".join(map(str, seqs)),
            "-fa",
            "on" if flash_attn else "off",
            "-ngl",
            str(_tool_ngl(n_gpu_layers)),
            "--output-format",
            "jsonl",
        ]
    )
    rates = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            row = json.loads(line)
            rates[int(row["pl"])] = float(row["speed_tg"])
    return rates


def bench_engine(
    model: str,
    threads: int,
    seqs: list[int],
    n_prompt: int = 128,
    n_gen: int = 128,
    flash_attn: bool = False,
    reps: int = 3,
    reference_dir: Path | None = None,
    n_gpu_layers: int = 0,
    sampled: SamplingParams | None = None,
    sample_on: tuple[str, ...] = ("host",),
    overlap: tuple[bool | None, ...] = (None,),
) -> dict:
    """Our figures per mode (greedy, and with `sampled` the study's sampling; each under every
    `sample_on` and `overlap` value, see measure_ours), where each mode's tokens were drawn, and
    with reference_dir the reference tools' figures and, per mode, the ratios (ours / theirs)."""
    from rllm_study.models import resolve_model

    ref = resolve_model(model)
    modes = {"greedy": GREEDY, **({"sampled": sampled} if sampled is not None else {})}
    ours = measure_ours(
        model, threads, seqs, n_prompt, n_gen, flash_attn, reps, n_gpu_layers, modes, sample_on, overlap
    )
    result = {
        "model": ref.name,
        "threads": threads,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "flash_attn": flash_attn,
        "n_gpu_layers": n_gpu_layers,
        "seqs": seqs,
        "sampling": {
            mode: {
                "temperature": s.temperature,
                "top_p": s.top_p,
                "top_k": s.top_k,
                "order": s.order,
                "seeds": "request i: seed i",
            }
            for mode, s in modes.items()
        },
        "sample_on": list(sample_on),
        "overlap_decode": list(overlap),
        "ours": ours,
    }
    if reference_dir is not None:
        bench_tg = measure_llama_bench(reference_dir, ref.path, threads, n_gen, flash_attn, reps, n_gpu_layers)
        batched = measure_batched_bench(
            reference_dir, ref.path, threads, seqs, n_prompt, n_gen, flash_attn, n_gpu_layers
        )
        result["reference"] = {"llama_bench_tg": bench_tg, "batched_bench_s_tg": batched}
        result["ratios"] = {
            mode: {
                "single_vs_llama_bench_tg": decode_vs_reference(by_n[1]["mean"], bench_tg) if 1 in by_n else None,
                **{
                    f"{n}_seqs_vs_batched_bench": decode_vs_reference(by_n[n]["mean"], batched[n])
                    for n in seqs
                    if n in batched
                },
            }
            for mode, by_n in ours.items()
        }
    return result
