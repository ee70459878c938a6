"""`rllm-study generate`: send a few prompts concurrently and see each one's timing by hand."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from rllm_study.analysis.metrics import cell_metrics, request_metrics
from rllm_study.backends import engine_class
from rllm_study.backends.base import Request, SamplingParams, engine_unsupported
from rllm_study.commands import options as opt
from rllm_study.errors import UserError
from rllm_study.running.recorder import record_batch
from rllm_study.running.results import Cell
from rllm_study.workloads.prompts import ends_in_think, has_think_token, load_templates, open_thinking


def _read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """Prompts from --prompt and from a file (one per line, or a JSON list of strings)."""
    out = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise UserError(f"{prompts_file}: --prompts-file not found")
        text = prompts_file.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{prompts_file}: not valid JSON ({err.msg} at line {err.lineno}); use a JSON list of strings or one prompt per line"
                ) from None
            if not all(isinstance(i, str) for i in items):
                raise UserError(f"{prompts_file}: the JSON list must hold only strings")
            out += items
        else:
            out += [line for line in text.splitlines() if line.strip()]
    if not out:
        raise UserError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return out


def _has_think_token(engine) -> bool:
    """`has_think_token`, False where the engine cannot count tokens (a server without a tokenizer
    endpoint, e.g. mlx_lm.server: its own chat template decides whether the prompt opens thinking)."""
    try:
        return has_think_token(engine)
    except UserError:
        return False


def run_prompts(engine, texts: list[str], sampling: SamplingParams, raw: bool) -> Cell:
    """Submit all prompts at t=0 (seed + i for the i-th), step the engine until done; the results as an
    in-memory cell. Templated prompts open the thinking as the native prompt mode does (`open_thinking`)."""
    think_token = not raw and _has_think_token(engine)
    prompts = [
        (t, ends_in_think(t))
        if raw
        else open_thinking(engine.apply_chat_template([{"role": "user", "content": t}]), think_token)
        for t in texts
    ]
    cue = load_templates()["native"].get("answer_cue", "")
    cell = record_batch(
        engine,
        [
            Request(f"p{i}", p, replace(sampling, seed=sampling.seed + i), thinking, answer_cue=cue)
            for i, (p, thinking) in enumerate(prompts)
        ],
        name="generate",
    )
    for r, text in zip(cell.requests, texts):
        r["prompt"] = text
    return cell


@opt.engine_flags(defaults={"ctx_per_seq": 2048})
def generate(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Model: embedded name, .gguf path, hf:OWNER/REPO/FILE.gguf, with optional :QUANT."
        ),
    ] = "smollm2-135m",
    prompt: Annotated[Optional[List[str]], typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompts_file: Annotated[
        Optional[Path], typer.Option("--prompts-file", help="One prompt per line, or a JSON list.")
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Token budget per request.")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling, in (0, 1].")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (request i uses seed + i).")] = 0,
    think_budget: Annotated[
        Optional[int],
        typer.Option(
            "--think-budget",
            help="Think tokens before the engine closes the thinking (with the native prompt mode's answer cue); also closes it when the model ends while thinking.",
        ),
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the text as is, without the chat template.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per request.")] = False,
    backend: opt.Backend = "llama_cpp",
    engine_values: dict = None,
) -> None:
    """Generate for several prompts at once and print each request's tokens and latencies."""
    texts = _read_prompts(prompt or [], prompts_file)
    if temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {max_tokens}")
    if think_budget is not None and think_budget < 1:
        raise UserError(f"--think-budget must be >= 1, got {think_budget}")
    options = opt.options_from_flags(backend, engine_values)
    engine = engine_class(backend)(model, options)
    err = Console(stderr=True)
    for problem in engine_unsupported(engine, options):
        err.print(f"[yellow]warning:[/] {problem}; ignored")
    if think_budget is not None and not engine.capabilities().think_budget:
        err.print(f"[yellow]warning:[/] {backend}: --think-budget is not supported here; ignored")
    try:
        sampling = SamplingParams(max_tokens, temperature, top_p, seed, think_budget=think_budget)
        cell = run_prompts(engine, texts, sampling, raw)
    finally:
        engine.close()
    per_request = {m["id"]: m for m in request_metrics(cell)}
    rows = []
    for r in cell.requests:
        m = per_request[r["id"]]
        rows.append(
            {
                "id": r["id"],
                "prompt": r["prompt"],
                "output_text": r["output_text"],
                "output_tokens": r["output_tokens"],
                "think_tokens": r["think_tokens"],
                "answer_tokens": r["answer_tokens"],
                "ttft_s": m["ttft_s"],
                "ttfvt_s": m["ttfvt_s"],
                "tpot_s": m["tpot_s"],
                "e2el_s": m["e2el_s"],
                "finish_reason": r["finish_reason"],
                "error": r["error"],
                "think_forced": r["think_forced"],
            }
        )
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    _print_table(rows, cell_metrics(cell)["throughput"]["output_tok_s"])


def _print_table(rows: list[dict], output_tok_s: float | None) -> None:
    def ms(v):
        return "-" if v is None else f"{v * 1000:,.0f}"

    table = Table(title="rllm-study generate", show_lines=True)
    for col in ("id", "output", "tokens (think/answer)", "TTFT ms", "TTFVT ms", "TPOT ms", "E2EL ms", "finish"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["id"],
            r["output_text"].strip()[:300],
            f"{r['output_tokens']} ({r['think_tokens']}/{r['answer_tokens']})",
            ms(r["ttft_s"]),
            ms(r["ttfvt_s"]),
            ms(r["tpot_s"]),
            ms(r["e2el_s"]),
            r["error"] or r["finish_reason"],
        )
    console = Console()
    console.print(table)
    rate = "-" if output_tok_s is None else f"{output_tok_s:,.1f}"
    console.print(f"aggregate output throughput: {rate} tokens/s (all output tokens / (last finish - first arrival))")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
