"""`rllm-study bench server`: one open-loop workload through the in-process engine and through
llama-server from the same llama.cpp build, side by side.

The workload is the realworld preset's (its prompt mode, sampling and [slo]) at one Gamma rate
and CV, on one data set, with N sequences in flight on both engines. It runs as three sides, each
a one-cell study run by `rllm_study.running.runner.run_study` (so requests are scheduled, timed and
recorded exactly as in a study) and measured by `rllm_study.analysis.metrics.cell_metrics`:

  in-process               backend llama_cpp, max_seqs N: the preset's temperature and top-p,
                           no top-k, a seed per request (the runner's)
  llama-server, same sampling
                           backend openai against llama-server -np N: the same requests, arrival
                           times and seeds, with its extra samplers switched off per request
                           (top_k 0, min_p 0, repeat_penalty 1)
  llama-server, its defaults
                           the same, but with the server's own default extra samplers
                           (`server_default_samplers`; llama-server's top_k 40, min_p 0.05 ...,
                           read back from its GET /props and printed)
  llama-server, same sampling, drawn in its graph
                           GPU runs only (n_gpu_layers != 0): as "same sampling", with llama-server's
                           per-request backend_sampling (`server_backend_sampling`), the counterpart
                           of the in-process engine's draw on the device

Each side's results are a study's cell folder, OUT/<side>/<cell>/ (`summarize`, `report` read them).
Figures per side (metrics' names): goodput_req_s with k of n (k = requests meeting every SLO =
goodput_req_s x duration_s, n = completed requests), e2el_s p50/p90 with its count, output_tok_s
with the number of requests and their output tokens (output_tok_s x duration_s), and the gap check
finish_gap_p90_ratio (token gaps that span another request's finish against the others, with
both counts; 1.0 when a finish costs the others nothing). Ratios in-process /
llama-server with their 95% bootstrap intervals: `bench_server_ratio`; the goodput ratio at the
same sampling is checked against TARGET (met / missed / inconclusive, as stats.Condition settles it).

The server: `--base-url URL`, or `--server-bin PATH`: PATH is started on 127.0.0.1 at a free
port (`llama_server_command` lists its flags: -np N, -c N x ctx_per_seq, the same threads, batch
and GPU layers as in process), used by both server sides, and stopped afterwards: SIGTERM, then
SIGKILL after STOP_TIMEOUT_S. Its log is `llama-server.log` in the results folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from rllm_study.analysis.metrics import bench_server_ratio, distribution, meets_slo, percentile_key
from rllm_study.bench.cpus import pinned
from rllm_study.errors import UserError

READY_TIMEOUT_S = 120.0  # a server that does not answer /health in this time is given up
STOP_TIMEOUT_S = 10.0  # SIGTERM -> SIGKILL
SIDES = (  # (key, label, backend, server_default_samplers, server_backend_sampling)
    ("in_process", "in-process", "llama_cpp", False, False),
    ("server_same", "llama-server, same sampling", "openai", False, False),
    ("server_defaults", "llama-server, its defaults", "openai", True, False),
    ("server_same_graph", "llama-server, same sampling, drawn in its graph", "openai", False, True),
)
GPU_ONLY_SIDES = ("server_same_graph",)  # llama-server's backend_sampling: for an output layer on a GPU (the in-process
# engine's counterpart is sample_on 'device'; see backends/rllm_study/backends/llama_cpp/engine.py)
DEFAULT_EXTRAS = ("top_k", "min_p", "repeat_penalty", "typical_p", "xtc_probability", "dry_multiplier", "top_n_sigma")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(
    cmd: list[str],
    port: int,
    log: Path,
    ready_path: str = "/health",
    ready_timeout_s: float = READY_TIMEOUT_S,
    cpus: tuple[int, ...] | None = None,
):
    """Start a server process (output to `log`; pinned to `cpus` if given, see bench.cpus), wait until GET 127.0.0.1:port/ready_path answers
    200, yield (process, URL); stop it on exit (SIGTERM, SIGKILL after STOP_TIMEOUT_S). A server
    that exits or is not ready in time is a UserError quoting the last line of its log."""
    with open(log, "wb") as out:
        try:
            with pinned(cpus):
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        except OSError as err:
            raise UserError(f"{cmd[0]}: cannot start it ({err.strerror})") from None
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise UserError(
                    f"{cmd[0]} exited with {proc.returncode} before answering: {_last_line(log)} (log: {log})"
                )
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise UserError(
                    f"{cmd[0]} did not answer {url}{ready_path} in {ready_timeout_s:.0f} s: {_last_line(log)} (log: {log})"
                )
            time.sleep(0.2)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _last_line(log: Path) -> str:
    lines = [x for x in log.read_text("utf-8", "replace").splitlines() if x.strip()]
    return lines[-1].strip() if lines else "(no output)"


def check_server_bin(path: Path) -> Path:
    """--server-bin must name an executable file."""
    if not path.is_file():
        raise UserError(
            f"--server-bin {path}: no such file; build llama-server with `bash scripts/build_llama_tools.sh`"
        )
    if not os.access(path, os.X_OK):
        raise UserError(f"--server-bin {path}: not executable (chmod +x it, or give the llama-server binary)")
    return path


def llama_server_command(binary: Path, model_path: Path, options, port: int, alias: str) -> list[str]:
    """llama-server flags matching the in-process engine's options (LlamaCppOptions): -np max_seqs slots of
    ctx_per_seq cells each (-c = their sum, no unified KV), -t/-tb n_threads, -b/-ub n_batch
    (ubatch capped at 512 as in process), -ngl n_gpu_layers; /metrics on, web UI off."""
    return [
        str(binary),
        "-m",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--alias",
        alias,
        "-np",
        str(options.max_seqs),
        "-c",
        str(options.max_seqs * options.ctx_per_seq),
        "-t",
        str(options.n_threads),
        "-tb",
        str(options.n_threads),
        "-b",
        str(options.n_batch),
        "-ub",
        str(min(options.n_batch, 512)),
        "-ngl",
        str(options.n_gpu_layers),
        "--metrics",
        "--no-webui",
    ]


@contextmanager
def server_url(base_url: str | None, server_bin: Path | None, model: str, options, log: Path):
    """The server to measure: `base_url` as given, or `server_bin` started for the model (see the
    module docstring) and stopped on exit. Exactly one of the two must be given."""
    if (base_url is None) == (server_bin is None):
        raise UserError("give either --base-url URL (a running server) or --server-bin PATH (llama-server to start)")
    if base_url is not None:
        try:  # any answer will do (even 404): checked before the in-process side runs its whole workload
            httpx.get(base_url, timeout=10)
        except (httpx.TransportError, httpx.InvalidURL) as err:
            raise UserError(
                f"--base-url {base_url}: no server answers ({type(err).__name__}: {err}); start it or fix the URL"
            ) from None
        yield base_url
        return
    from rllm_study.models import resolve_model

    binary = check_server_bin(server_bin)
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with serve(llama_server_command(binary, resolve_model(model).path, options, port, model), port, log) as (_, url):
        yield url


def server_defaults(url: str) -> dict:
    """llama-server's default extra samplers (GET /props default_generation_settings.params);
    {} for a server without /props."""
    try:
        params = httpx.get(url.rstrip("/") + "/props", timeout=10).json()["default_generation_settings"]["params"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return {}
    return {k: params[k] for k in DEFAULT_EXTRAS if k in params}


def workload_spec(
    model: str,
    dataset: str,
    requests: int,
    max_tokens: int,
    rate: float,
    cv: float,
    concurrency: int,
    threads: int,
    n_gpu_layers: int,
    slo: dict | None,
) -> dict:
    """The realworld preset reduced to one cell: its prompt modes, sampling and [slo] (or `slo`),
    Gamma arrivals at `rate` and `cv`, `requests` items of `dataset`, and no think budget: the
    server sides use llama-server's completions API (every side sends the same prompt text),
    which takes none, so a budget would close the thinking on the in-process side only."""
    from rllm_study.running.spec import load_spec

    spec, _ = load_spec(preset="realworld")
    spec.update(
        models=[model],
        datasets={dataset: requests},
        max_tokens=[max_tokens],
        repeats=1,
        workload={"arrival": "gamma", "rate": rate, "cv": cv},
        engine={"concurrency": concurrency, "threads": threads, "n_gpu_layers": n_gpu_layers},
    )
    spec["prompt_modes"] = spec.get("prompt_modes", ["reasoning"])[:1]
    spec.pop("think_budget", None)
    if slo:
        spec["slo"] = dict(slo)
    return spec


def side_spec(
    spec: dict, backend: str, url: str | None, default_samplers: bool, backend_sampling: bool = False
) -> dict:
    """The workload spec for one side (module docstring)."""
    out = {**spec, "backend": backend, "engine": dict(spec["engine"])}
    if backend == "openai":
        out["engine"].update(
            base_url=url,
            server_default_samplers=default_samplers,
            **({"server_backend_sampling": True} if backend_sampling else {}),
        )
    return out


def ratio_interval(ours: tuple[list[dict], float], theirs: tuple[list[dict], float], name: str, slo: dict | None):
    """The metric `bench_server_ratio` (defined in rllm_study.analysis.metrics) of figure `name`
    (RATIO_FIGURES); each side is (its request_metrics rows, its duration_s)."""
    from rllm_study.analysis.stats import bootstrap

    figure = RATIO_FIGURES[name]

    def stat(samples):
        return bench_server_ratio(*(figure(rows, dur, slo) for rows, dur in zip(samples, (ours[1], theirs[1]))))

    return bootstrap([ours[0], theirs[0]], stat)


def _e2el_pct(p: float):
    def figure(rows, dur, slo):
        return distribution((r["e2el_s"] for r in rows if r["completed"]), (p,))[percentile_key(p)]

    return figure


RATIO_FIGURES = {  # metrics' formulas on request_metrics rows: goodput_req_s, e2el_s p50/p90, output_tok_s
    "goodput_req_s": lambda rows, dur, slo: (
        sum(r["completed"] and meets_slo(r, slo) for r in rows) / dur if slo and dur else None
    ),
    "e2el_p50_s": _e2el_pct(50),
    "e2el_p90_s": _e2el_pct(90),
    "output_tok_s": lambda rows, dur, slo: sum(r["output_tokens"] or 0 for r in rows) / dur if dur else None,
}
TARGET = ("server_same", "goodput_req_s", 1.0)  # issue target: in-process goodput >= 1.0x llama-server's, same sampling


def target_verdict(iv) -> dict:
    """TARGET settled by the ratio's interval (stats.Condition, log scale): met, missed, or
    inconclusive with the rough number of requests per side that would settle it."""
    from rllm_study.analysis.stats import Condition

    rule = f"in-process goodput / llama-server goodput at the same sampling >= {TARGET[2]}"
    cond = Condition(rule, iv, TARGET[2], above=True, log=True)
    verdict = {True: "met", False: "missed", None: "inconclusive"}[cond.outcome]
    return {"rule": rule, "verdict": verdict, "needed_requests": cond.needed, "why": iv.why or None}


def figures(m: dict) -> dict:
    """The bench's figures from one cell's cell_metrics (each with its n)."""
    thr, e2el = m["throughput"], m["latency"]["e2el_s"]
    completed = sum(v for k, v in m["finish_reasons"].items() if k in ("stop", "length"))
    good = thr["goodput_req_s"]
    return {
        "n_requests": m["n_requests"],
        "completed": completed,
        "duration_s": thr["duration_s"],
        "goodput_req_s": good,
        "meeting_slo": None if good is None else round(good * thr["duration_s"]),
        "e2el_s": {"count": e2el["count"], "p50": e2el["p50"], "p90": e2el["p90"]},
        "output_tok_s": thr["output_tok_s"],
        "output_tokens": None if thr["output_tok_s"] is None else round(thr["output_tok_s"] * thr["duration_s"]),
        "arrival_rate": m["arrivals"]["rate"],
        "arrival_cv": m["arrivals"]["cv"],
    }


def bench_server(spec: dict, out_dir: Path, base_url: str | None, server_bin: Path | None, console) -> dict:
    """Run the three sides (module docstring) into out_dir/<side>/ and return the JSON result."""
    from rllm_study.analysis.metrics import cell_metrics, finish_gaps, request_metrics
    from rllm_study.running.results import read_cell
    from rllm_study.running.runner import run_study
    from rllm_study.running.spec import expand

    cells = expand(spec, "bench server workload")
    (cell,) = cells
    result: dict = {
        "workload": {
            "preset": "realworld",
            "model": cell.model,
            "dataset": cell.dataset,
            "requests": cell.samples,
            "prompt_mode": cell.prompt_mode,
            "max_tokens": cell.max_tokens,
            "workload": cell.workload,
            "concurrency": cell.engine.max_seqs,
            "threads": cell.engine.n_threads,
            "n_gpu_layers": cell.engine.n_gpu_layers,
            "temperature": cell.temperature,
            "top_p": cell.top_p,
            "seeds": "one per request, the runner's (same on every side)",
            "slo": cell.slo,
        },
        "sides": {},
    }
    rows: dict[str, tuple[list[dict], float]] = {}
    log = Path(out_dir) / "llama-server.log"
    with server_url(base_url, server_bin, cell.model, cell.engine, log) as url:
        result["server"] = {
            "base_url": url,
            "started": server_bin is not None,
            "binary": str(server_bin) if server_bin else None,
            "defaults": server_defaults(url),
        }
        sides = [s for s in SIDES if cell.engine.n_gpu_layers != 0 or s[0] not in GPU_ONLY_SIDES]
        for key, label, backend, default_samplers, backend_sampling in sides:
            console.print(f"bench server: {label}")
            side = side_spec(spec, backend, url, default_samplers, backend_sampling)
            (cell_dir,) = run_study(expand(side, f"bench server {key}"), side, Path(out_dir) / key, console)
            data = read_cell(cell_dir)
            rows[key] = (request_metrics(data), cell_metrics(data)["throughput"]["duration_s"])
            gaps = finish_gaps(data)
            engine = data.manifest.get("engine", {})
            result["sides"][key] = {
                "label": label,
                "backend": backend,
                "cell": cell_dir.name,
                "extra_samplers": engine.get("extra_samplers", "none: top-p, temperature"),
                "build": (engine.get("llama_server") or {}).get("build_info") or engine.get("llama_cpp_python"),
                **figures(cell_metrics(data, (50, 90), cell.slo or None)),
                "finish_gaps": {
                    "p90_ratio": gaps["ratio"],
                    "n_spanning": gaps["spanning"]["count"],
                    "n_other": gaps["other"]["count"],
                },
            }
    ours = rows["in_process"]
    result["ratios"] = {}
    for key, *_ in sides[1:]:
        result["ratios"][key] = {}
        for name in RATIO_FIGURES:
            iv = ratio_interval(ours, rows[key], name, cell.slo or None)
            result["ratios"][key][name] = {
                "ratio": iv.estimate,
                "ci95": [iv.lo, iv.hi] if iv.known else None,
                "n": iv.n,
                **({"why_no_interval": iv.why} if iv.why else {}),
            }
            if (key, name) == TARGET[:2]:
                result["target"] = target_verdict(iv)
    return result


def _num(x, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(result: dict):
    """The side-by-side as a rich Table: a row per side (its extra samplers named), then a row of
    ratios in-process / that side per llama-server side; a column per figure, each with its n."""
    from rich.table import Table

    w, sides = result["workload"], result["sides"]
    defaults = ", ".join(f"{k} {v:g}" for k, v in result["server"]["defaults"].items()) or "not reported by the server"
    t = Table(
        title=(
            f"bench server: {w['model']}, {w['dataset']} x{w['requests']} {w['prompt_mode']}, max_tokens "
            f"{w['max_tokens']}, gamma rate {w['workload']['rate']} req/s cv {w['workload']['cv']}, "
            f"{w['concurrency']} sequences, {w['threads']} threads; temperature {w['temperature']}, "
            f"top-p {w['top_p']}, a seed per request; SLO {w['slo'] or 'none'}; "
            f"llama-server's default samplers: {defaults}"
        ),
        title_justify="left",
    )
    for header in (
        "side (extra samplers)",
        "goodput req/s\n(k of n met SLO)",
        "E2EL p50 s\n(n)",
        "E2EL p90 s\n(n)",
        "output tok/s\n(tokens, n req)",
        "arrivals req/s, CV\n(realised)",
        "finish-gap p90 ratio\n(n spanning / other)",
    ):
        t.add_column(header, justify="left" if header.startswith("side") else "right")
    for side in sides.values():
        e2el = side["e2el_s"]
        t.add_row(
            f"{side['label']}\n({side['extra_samplers']})",
            f"{_num(side['goodput_req_s'], '{:.3f}')}\n({side['meeting_slo']} of {side['completed']})",
            f"{_num(e2el['p50'])}\n(n={e2el['count']})",
            f"{_num(e2el['p90'])}\n(n={e2el['count']})",
            f"{_num(side['output_tok_s'], '{:.1f}')}\n({side['output_tokens']}, n={side['n_requests']})",
            f"{_num(side['arrival_rate'])}, {_num(side['arrival_cv'])}",
            f"{_num(side['finish_gaps']['p90_ratio'], '{:.3f}')}\n({side['finish_gaps']['n_spanning']} / "
            f"{side['finish_gaps']['n_other']})",
        )
    for key, r in result["ratios"].items():
        t.add_row(
            f"ratio in-process / {sides[key]['label']}\n(95% interval, n per side)",
            *(_ratio_cell(r[name]) for name in RATIO_FIGURES),
            "",
            "",
            style="bold",
        )
    target = result.get("target")
    if target:
        more = (
            f", about {target['needed_requests']} requests per side would settle it"
            if target["needed_requests"]
            else ""
        )
        t.caption = f"target {target['rule']}: {target['verdict']}{more}{'; ' + target['why'] if target['why'] else ''}"
    return t


def _ratio_cell(r: dict) -> str:
    ci = r["ci95"]
    return f"{_num(r['ratio'], '{:.3f}')}\n({'no interval' if ci is None else f'{ci[0]:.2f}-{ci[1]:.2f}'}, n={r['n']})"
