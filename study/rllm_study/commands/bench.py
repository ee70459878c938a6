"""`rllm-study bench ...`: performance benchmarks that print ratios measured in the same run."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import psutil
import typer
from rich.console import Console
from rich.table import Table

from rllm_study.backends.options import LlamaCppOptions, OptionError
from rllm_study.backends.sampling import DEFAULT_ORDER
from rllm_study.bench.engine import STEP_PARTS, bench_engine
from rllm_study.bench.server import bench_server, server_url, table, workload_spec
from rllm_study.commands import options as opt
from rllm_study.errors import UserError

bench_app = typer.Typer(
    help="Benchmarks: our engine against llama.cpp's own tools, techniques against baselines.", no_args_is_help=True
)


def _seqs(text: str) -> list[int]:
    try:
        seqs = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--seqs {text!r}: give whole numbers separated by commas, e.g. 1,2,4,8") from None
    if not seqs or seqs[0] < 1:
        raise UserError(f"--seqs {text!r}: every value must be >= 1")
    return seqs


OVERLAP_VALUES = {"default": None, "on": True, "off": False}  # bench engine --overlap -> overlap_decode


@bench_app.command("engine")
def engine_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference (see `models list`).")] = "smollm2-135m",
    threads: opt.flag("n_threads") = None,
    seqs: Annotated[str, typer.Option("--seqs", help="Concurrent sequences to measure.")] = "1,8,32,64",
    n_prompt: Annotated[int, typer.Option("--n-prompt", help="Prompt tokens per sequence.")] = 128,
    n_gen: Annotated[int, typer.Option("--n-gen", help="Generated tokens per sequence.")] = 128,
    flash_attn: opt.flag(
        "flash_attn", help="Flash attention; the same setting is passed to the reference tools."
    ) = False,
    reps: Annotated[int, typer.Option("--reps", help="Repetitions per point (mean reported).")] = 3,
    reference_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--reference-dir", help="Folder with llama-bench and llama-batched-bench (scripts/build_llama_tools.sh)."
        ),
    ] = None,
    sampled: Annotated[
        bool, typer.Option("--sampled/--greedy-only", help="Also measure the study's sampling (per-request seeds).")
    ] = True,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Sampled mode: temperature (the presets' 0.6).")
    ] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", help="Sampled mode: top-p (the presets' 0.95).")] = 0.95,
    order: Annotated[
        str, typer.Option("--order", help="Sampled mode: temperature_first or top_p_first.")
    ] = DEFAULT_ORDER,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write the result as JSON to this file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    n_gpu_layers: opt.flag("n_gpu_layers") = 0,
    sample_on: Annotated[
        str,
        typer.Option(
            "--sample-on",
            help="Where tokens are drawn (host, device); a comma list measures each, e.g. host,device on a GPU.",
        ),
    ] = "host",
    overlap: Annotated[
        str,
        typer.Option(
            "--overlap",
            help="Engine option overlap_decode: default, on or off; a comma list measures each, e.g. on,off on a GPU.",
        ),
    ] = "default",
) -> None:
    """Decode tokens/s at each number of concurrent sequences, greedy and with the study's sampling;
    with --reference-dir, llama.cpp's figures and the ratios (the metric decode_vs_reference)."""
    from rllm_study.backends.base import Request, SamplingParams
    from rllm_study.backends.output import check_sampling

    if reference_dir is not None and not (reference_dir / "llama-batched-bench").exists():
        raise UserError(
            f"{reference_dir}: no llama-batched-bench here; build the tools with `bash scripts/build_llama_tools.sh`"
        )
    if reps < 1 or n_gen < 8 or n_prompt < 1:
        raise UserError("--reps >= 1, --n-gen >= 8 and --n-prompt >= 1 are required")
    sampling = SamplingParams(temperature=temperature, top_p=top_p, order=order) if sampled else None
    if sampling is not None:
        check_sampling(Request("--temperature/--top-p/--order", "", sampling))
    threads = threads or psutil.cpu_count(logical=False) or 1
    wheres = tuple(w.strip() for w in sample_on.split(","))
    for where in wheres:
        try:
            LlamaCppOptions(sample_on=where)  # the option's own check names the values
        except OptionError as err:
            raise UserError(err.message_for("--sample-on")) from None
    overlaps = []
    for value in (v.strip() for v in overlap.split(",")):
        if value not in OVERLAP_VALUES:
            raise UserError(f"--overlap {value!r}: must be default, on or off (or a comma list of them)")
        overlaps.append(OVERLAP_VALUES[value])
    result = bench_engine(
        model,
        threads,
        _seqs(seqs),
        n_prompt,
        n_gen,
        flash_attn,
        reps,
        reference_dir,
        n_gpu_layers,
        sampling,
        wheres,
        tuple(overlaps),
    )
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    ref = result.get("reference", {})
    table = Table(
        title=f"decode tokens/s (decode_tok_s): {result['model']}, {threads} threads, n_gpu_layers={n_gpu_layers}, "
        f"tokens drawn on: {', '.join(result['sample_on'])}, "
        f"pp{n_prompt} tg{n_gen}, flash_attn={flash_attn}, n = {reps} runs per cell"
    )
    for col in ("sequences", "mode", "ours (mean ± sd)", "reference", "ratio"):
        table.add_column(col, justify="right")
    for mode, by_n in result["ours"].items():
        for n, r in by_n.items():
            theirs = (ref.get("llama_bench_tg") if n == 1 else None) or ref.get("batched_bench_s_tg", {}).get(n)
            name = "llama-bench tg" if n == 1 and "llama_bench_tg" in ref else "batched-bench S_TG"
            table.add_row(
                str(n),
                mode,
                f"{r['mean']:.1f} ± {r['stdev']:.1f}",
                "-" if theirs is None else f"{theirs:.1f} ({name})",
                "-" if theirs is None else f"{r['mean'] / theirs:.3f}",
            )
    Console().print(table)
    steps = Table(
        title="where a decode step's time goes (ms per step, share of the step; steps with no prompt token, "
        "summed over the measured runs): decode = llama_decode, wait = the device and its logits, "
        "draw = taking the tokens, other = the rest of the step"
    )
    for col in ("sequences", "mode", "steps", *STEP_PARTS, "step ms"):
        steps.add_column(col, justify="right")
    for mode, by_n in result["ours"].items():
        for n, r in by_n.items():
            b = r["steps"]
            steps.add_row(
                str(n),
                mode,
                str(b["steps"]),
                *(f"{b['ms_per_step'][p]:.2f} ({100 * b['share'][p]:.0f}%)" for p in STEP_PARTS),
                f"{sum(b['ms_per_step'].values()):.2f}",
            )
    Console().print(steps)
    for mode, by_n in result["ours"].items():
        if 1 in by_n and ref.get("batched_bench_s_tg", {}).get(1):
            print(
                f"({mode}, single stream vs batched-bench S_TG at 1: {by_n[1]['mean'] / ref['batched_bench_s_tg'][1]:.3f})"
            )


@bench_app.command("server")
def server_cmd(
    base_url: Annotated[
        Optional[str],
        typer.Option(
            "--base-url", help="A running server, e.g. http://127.0.0.1:8080 (llama-server started on the same model)."
        ),
    ] = None,
    server_bin: Annotated[
        Optional[Path],
        typer.Option(
            "--server-bin", help="llama-server binary to start on 127.0.0.1 (and stop) instead of --base-url."
        ),
    ] = None,
    workload: Annotated[
        str,
        typer.Option(
            "--workload",
            help="realworld: the preset's Gamma arrivals and sampling, goodput/E2EL/tok/s side by side; greedy: a closed greedy batch, token counts must match.",
        ),
    ] = "realworld",
    model: Annotated[
        str, typer.Option("--model", "-m", help="The same model for the in-process engine.")
    ] = "smollm2-135m",
    threads: opt.flag("n_threads", note="In process and for a started server (its -t).") = None,
    concurrency: opt.flag("max_seqs", note="The server's -np.") = 2,
    requests: Annotated[int, typer.Option("--requests", "-n", help="Problems of the data set in the workload.")] = 4,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Token budget per request.")] = 64,
    rounds: Annotated[int, typer.Option("--rounds", help="greedy: rounds, alternating which engine goes first.")] = 3,
    dataset: Annotated[str, typer.Option("--dataset", help="realworld: the data set (greedy uses gsm8k).")] = "gsm8k",
    rate: Annotated[float, typer.Option("--rate", help="realworld: Gamma arrival rate, requests/s.")] = 2.0,
    cv: Annotated[float, typer.Option("--cv", help="realworld: Gamma CV of the gaps (1 = Poisson).")] = 2.0,
    slo: Annotated[
        Optional[str],
        typer.Option(
            "--slo", help="realworld: SLO limits for goodput instead of the preset's [slo], e.g. ttft_s=2,e2el_s=20."
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="realworld: results folder, one subfolder per side (default: a temporary one); re-running resumes.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="realworld: print JSON instead of the table.")] = False,
    n_gpu_layers: opt.flag("n_gpu_layers") = 0,
) -> None:
    """The in-process engine against an OpenAI-compatible server (llama-server) on the same model.
    realworld (default): one workload of the realworld preset through both, llama-server both with
    the same sampling and with its default samplers; goodput, E2EL p50/p90, output tok/s and the
    ratios in-process / llama-server. greedy: token counts must match; throughput ratio."""
    if workload not in ("realworld", "greedy"):
        raise UserError(f"--workload {workload!r}: choose realworld or greedy")
    if min(requests, max_tokens, rounds) < 1:
        raise UserError("--requests, --max-tokens and --rounds must be >= 1")
    threads = threads or psutil.cpu_count(logical=False) or 1
    if workload == "realworld":
        _server_workload(
            base_url,
            server_bin,
            model,
            threads,
            concurrency,
            requests,
            max_tokens,
            dataset,
            rate,
            cv,
            slo,
            out,
            as_json,
            n_gpu_layers,
        )
        return
    from rllm_study.backends.base import Request, SamplingParams
    from rllm_study.backends.llama_cpp.engine import LlamaCppEngine
    from rllm_study.backends.openai_http.engine import OpenAIEngine
    from rllm_study.bench.crosscheck import cross_check
    from rllm_study.workloads.datasets import load_dataset
    from rllm_study.workloads.prompts import build_prompt

    options = opt.options_from_flags(
        "llama_cpp",
        {"max_seqs": concurrency, "n_threads": threads, "ctx_per_seq": max_tokens + 1024, "n_gpu_layers": n_gpu_layers},
    )
    with (
        tempfile.TemporaryDirectory(prefix="rllm-bench-server-") as tmp,
        server_url(base_url, server_bin, model, options, Path(tmp) / "llama-server.log") as url,
    ):
        local = LlamaCppEngine(model, options)
        remote = OpenAIEngine("", opt.options_from_flags("openai", {"max_seqs": concurrency, "base_url": url}))
        try:
            work = [
                Request(
                    item.id,
                    local.apply_chat_template(build_prompt(item, "direct").messages),
                    SamplingParams(max_tokens),
                )
                for item in load_dataset("gsm8k", limit=requests)
            ]
            result = cross_check(local, remote, work, rounds)
        finally:
            local.close()
            remote.close()
    print(result.summary("in-process", "server"))
    for line in result.mismatches:
        print("mismatch:", line)


def _server_workload(
    base_url,
    server_bin,
    model,
    threads,
    concurrency,
    requests,
    max_tokens,
    dataset,
    rate,
    cv,
    slo,
    out,
    as_json,
    n_gpu_layers,
) -> None:
    from rllm_study.commands.metrics import parse_slo

    spec = workload_spec(
        model, dataset, requests, max_tokens, rate, cv, concurrency, threads, n_gpu_layers, parse_slo(slo)
    )
    console = Console(stderr=True, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="rllm-bench-server-") as tmp:
        result = {
            **bench_server(spec, out or Path(tmp), base_url, server_bin, console),
            "results_dir": out and str(out),
        }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        Console(width=max(Console().width, 150)).print(table(result))


@bench_app.command("techniques")
def techniques_cmd(
    which: Annotated[
        str, typer.Option("--which", help="Comma-separated: prefix, speculative, kv.")
    ] = "prefix,speculative,kv",
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model for the prefix and KV benchmarks.")
    ] = "qwen2.5-coder-0.5b",
    target: Annotated[str, typer.Option("--target", help="Speculative: the target model.")] = "qwen2.5-coder-1.5b",
    draft: Annotated[
        str, typer.Option("--draft", help="Speculative: the draft model (same vocabulary).")
    ] = "qwen2.5-coder-0.5b",
    threads: opt.flag("n_threads") = None,
) -> None:
    """Prefix caching's TTFT gain, speculative decoding's speedup at 1 and 8 sequences, KV-cache
    quantization's memory saved and speed change: ratios measured in the same run, printed as JSON."""
    from rllm_study.bench import techniques as bench_techniques

    chosen = [w.strip() for w in which.split(",") if w.strip()]
    unknown = sorted(set(chosen) - {"prefix", "speculative", "kv"})
    if unknown or not chosen:
        raise UserError(f"--which {which!r}: choose from prefix, speculative, kv")
    threads = threads or psutil.cpu_count(logical=False) or 1
    result = {}
    if "prefix" in chosen:
        result["prefix"] = bench_techniques.prefix_ttft(model, threads)
    if "speculative" in chosen:
        result["speculative"] = bench_techniques.speculative(target, draft, threads)
    if "kv" in chosen:
        result["kv"] = bench_techniques.kv_quantization(model, threads)
    print(json.dumps(result, indent=2))


@bench_app.command("agree")
def agree_cmd(
    peers_bin: Annotated[
        Path,
        typer.Option(
            "--peers-bin",
            help="The bin folder of a venv holding aiperf and guidellm (pip install 'rllm-study[peers]').",
        ),
    ],
    server_bin: Annotated[
        Path,
        typer.Option(
            "--server-bin", help="llama-server binary to start on 127.0.0.1 (scripts/build_llama_tools.sh builds it)."
        ),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="The model llama-server serves (a GGUF reference).")
    ] = "qwen2.5-coder-0.5b",
    threads: opt.flag("n_threads", note="The server's -t.") = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Closed-loop concurrency (and the server's -np).")
    ] = 4,
    requests: Annotated[int, typer.Option("--requests", "-n", help="Requests per run.")] = 12,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="Tokens in every prompt.")] = 128,
    output_tokens: Annotated[
        int, typer.Option("--output-tokens", help="Output tokens of every request (ignore_eos).")
    ] = 32,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds of A B C (rllm-study, AIPerf, GuideLLM).")] = 2,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Relative difference a peer may show and still agree.")
    ] = 0.05,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for every run, the imports, agree.json and agree.md.")
    ] = Path("runs/agree"),
    server_cpus: Annotated[
        Optional[str],
        typer.Option(
            "--server-cpus",
            help="CPUs to pin llama-server to, e.g. 1 or 0,2-3 (its -t defaults to their count). Default: not pinned.",
        ),
    ] = None,
    client_cpus: Annotated[
        Optional[str],
        typer.Option(
            "--client-cpus",
            help="CPUs to pin every client run to (ours and the peers' processes), e.g. 0. Default: not pinned.",
        ),
    ] = None,
) -> None:
    """One fixed workload against one llama-server through rllm-study, AIPerf and GuideLLM in turns:
    TTFT, TPOT, ITL, E2EL and output tok/s per tool from each tool's own timestamps, the ratio of
    each peer to rllm-study with its interval over rounds, a verdict per metric, and CPU seconds."""
    from rllm_study.backends.mlx.convert import export_tokenizer
    from rllm_study.bench.agree import SERVER_ARGS, AgreeSpec, bench_agree, check_peers_bin, markdown
    from rllm_study.bench.cpus import parse_cpus
    from rllm_study.bench.server import check_server_bin, free_port, llama_server_command, serve
    from rllm_study.models import resolve_model

    if min(concurrency, requests, prompt_tokens, output_tokens, rounds) < 1 or not 0 < tolerance < 1:
        raise UserError(
            "--concurrency, --requests, --prompt-tokens, --output-tokens and --rounds must be >= 1, "
            "--tolerance in (0, 1)"
        )
    server_set = None if server_cpus is None else parse_cpus(server_cpus, "--server-cpus")
    client_set = None if client_cpus is None else parse_cpus(client_cpus, "--client-cpus")
    check_peers_bin(peers_bin)  # all checked before the tokenizer is exported and the server started
    server_bin = check_server_bin(server_bin)
    threads = threads or (len(server_set) if server_set else psutil.cpu_count(logical=False) or 1)
    spec = AgreeSpec(
        model, prompt_tokens, output_tokens, requests, concurrency, rounds, threads, tolerance, server_set, client_set
    )
    console = Console(stderr=True, soft_wrap=True)
    path = resolve_model(model).path
    tokenizer = export_tokenizer(path, out / "tokenizer")
    options = opt.options_from_flags(
        "llama_cpp", {"max_seqs": concurrency, "n_threads": threads, "ctx_per_seq": prompt_tokens + output_tokens + 64}
    )
    port = free_port()
    cmd = [*llama_server_command(server_bin, path, options, port, model), *SERVER_ARGS]
    out.mkdir(parents=True, exist_ok=True)
    log = out / "llama-server.log"
    with serve(cmd, port, log, cpus=server_set) as (proc, url):
        result = bench_agree(spec, url, proc.pid, peers_bin, tokenizer, out, console, server_log=log)
    text = markdown(result)
    (out / "agree.md").write_text(text + "\n")
    print(text)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
