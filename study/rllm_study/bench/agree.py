"""`rllm-study bench agree`: rllm-study's OpenAI backend against AIPerf and GuideLLM on one server.

One fixed workload: `requests` prompts of `prompt_tokens` tokens each (ours: built and counted
with the server's own /tokenize; the peers': their synthetic prompts of that length, counted
with the same tokenizer exported by `models convert --to tokenizer`), exactly `output_tokens`
output tokens (ignore_eos; GuideLLM sends it with fixed output lengths, AIPerf gets it as an
extra input), a closed loop of `concurrency`, greedy decoding (the server is started with
--temp 0 and every client leaves sampling to it), completions API, streaming. The tools run
in turns, A B C A B C ... for `rounds` rounds, so a drift of the machine hits every tool.

Every figure is computed by our metric registry from each tool's own per-request timestamps
(its export imported by `rllm_study.peers`), so the formulas are the same and a difference is
the measurement's: TTFT p50, TPOT p50 ((E2EL - TTFT) / (output tokens - 1) per request: AIPerf's
"inter_token_latency", GuideLLM's "inter_token_latency_ms", vLLM's "TPOT"), ITL p50 (pooled
chunk gaps: vLLM's "ITL"; GuideLLM records none), E2EL p50, output tok/s (all output tokens /
(last finish - first arrival)). Per metric: each tool's value in each round, and the ratio
peer / rllm-study over the rounds (geometric mean, t interval of the logs, n = rounds). A peer
agrees when that interval lies within 1 -+ tolerance, differs when it lies wholly outside,
else the comparison is inconclusive: more rounds settle it, unless rllm-study's own value varied
between rounds by more than the tolerance (the machine's speed changed between runs; the verdict
says so). Each client's CPU seconds (its
process tree: user + system) are reported, with the server's, per run.

The server's own timing is the reference column: llama-server logs per request `eval time = X ms
/ N tokens`, where X runs from the moment it sampled the first token to the last (N - 1 gaps: its
own "ms per token", X / N, is (N - 1) / N of TPOT, 3.1% low at N = 32); "server TPOT p50 ms" is
the median of X / (N - 1) over the requests it logged during a tool's run (read from the log
between the run's start and end offsets, n beside it; a request of one token has no gap). Each
tool's TPOT / the server's in the same run gets an interval over rounds and a verdict like the
peers' ratios. A client whose TPOT matches the server's measured the server right; a server TPOT
that grows under one client means that client made the server slower.

CPU pinning (`server_cpus`, `client_cpus`; default none): on a machine where client and server
share cores, a client's CPU use takes CPU from the server it measures, so the tools are compared
on different servers. AIPerf 0.13's closed loop busy-polls (36.9 CPU s per run of 12 requests
against our 0.2 s and GuideLLM's 7.8 s on 2 cores, 2026-12-07, docs/peers.md), which made the
server 2-4x slower under AIPerf than under the others. With pinning, the server is started on
the server CPUs and every client run (ours in process, the peers' process trees) on the client
CPUs (`rllm_study.bench.cpus.pinned`), so a client slows the server only through what CPUs
share (last-level cache, memory bandwidth, the kernel's loopback work; on a VM, also however the
host places the virtual CPUs).
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

from rllm_study.analysis.metrics import cell_metrics, distribution
from rllm_study.analysis.stats import ratio_interval
from rllm_study.backends.base import Request, SamplingParams
from rllm_study.backends.openai_http.engine import OpenAIEngine
from rllm_study.backends.options import OpenAIOptions
from rllm_study.bench.cpus import format_cpus, pinned
from rllm_study.errors import UserError
from rllm_study.peers import import_export
from rllm_study.running.recorder import Recorder
from rllm_study.running.results import CellWriter, read_cell

TOOLS = ("rllm-study", "aiperf", "guidellm")
# llama-server's own flags for the agreement run: greedy by default, and no prompt cache. Our
# OpenAI backend sends `cache_prompt` false (engine option prefix_cache off) while the peers send
# nothing, so with the server's default (cache on, kept in RAM across slots) a peer that sends the
# same prompts every round (GuideLLM's seeded synthetic text) skipped prefill from its second
# round: TTFT 44-54 ms against 690 ms cold (2026-12-07, docs/peers.md). Every tool runs cold.
SERVER_ARGS = ("--temp", "0", "--no-cache-prompt")
METRICS = (  # (label, section, key, statistic) in cell_metrics
    ("TTFT p50 ms", "latency", "ttft_s", "p50"),
    ("TPOT p50 ms", "latency", "tpot_s", "p50"),
    ("ITL p50 ms", "latency", "itl_s", "p50"),
    ("E2EL p50 ms", "latency", "e2el_s", "p50"),
    ("out tok/s", "throughput", "output_tok_s", None),
)
WHY = {  # what explains a difference, per metric (docs/peers.md has the full mapping)
    "TTFT p50 ms": "all three stamp the first content chunk on arrival; AIPerf's client busy-polls and can delay it",
    "TPOT p50 ms": "same formula from each tool's own first and last chunk times",
    "ITL p50 ms": "pooled chunk gaps; one token a chunk on llama-server, so gaps are token gaps (GuideLLM records none)",
    "E2EL p50 ms": "to the last token: ours and GuideLLM's last token, AIPerf's request end (after [DONE])",
    "out tok/s": "all output tokens over the span from first send to last finish; tools differ in warm-up and ramp",
}


@dataclass(frozen=True)
class AgreeSpec:
    model: str
    prompt_tokens: int = 128
    output_tokens: int = 32
    requests: int = 12
    concurrency: int = 4
    rounds: int = 2
    threads: int = 2
    tolerance: float = 0.05
    server_cpus: tuple[int, ...] | None = None  # None: not pinned
    client_cpus: tuple[int, ...] | None = None


def _tree_cpu_s(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def fixed_prompts(url: str, n: int, tokens: int) -> list[str]:
    """n distinct prompts of exactly `tokens` tokens by the server's tokenizer (llama-server /tokenize)."""
    words = " ".join(f"item {i} of the list is a word" for i in range(tokens))
    base = httpx.post(url + "/tokenize", json={"content": words}, timeout=30).json()["tokens"]
    out = []
    for i in range(n):
        head = httpx.post(url + "/tokenize", json={"content": f"Request {i}:"}, timeout=30).json()["tokens"]
        ids = (head + base)[:tokens]
        text = httpx.post(url + "/detokenize", json={"tokens": ids}, timeout=30).json()["content"]
        count = len(
            httpx.post(url + "/tokenize", json={"content": text, "add_special": True}, timeout=30).json()["tokens"]
        )
        if abs(count - tokens) > 1:
            raise UserError(f"{url}: could not build a prompt of {tokens} tokens (got {count})")
        out.append(text)
    return out


def run_ours(url: str, spec: AgreeSpec, prompts: list[str], out: Path) -> float:
    """A closed loop of spec.concurrency through OpenAIEngine, recorded as a cell; our CPU seconds."""
    proc = psutil.Process()
    cpu0 = _tree_cpu_s(proc)
    engine = OpenAIEngine(
        spec.model,
        OpenAIOptions(base_url=url, ignore_eos=True, telemetry_period_s=0, server_default_samplers=True, timeout_s=900),
    )
    writer = CellWriter(out)
    writer.write_manifest(
        {
            "cell": {
                "name": out.name,
                "model": spec.model,
                "backend": "openai",
                "dataset": "agree",
                "workload": {"arrival": "closed", "concurrency": spec.concurrency},
            },
            "engine": engine.info().as_dict(),
        }
    )
    recorder = Recorder(time.perf_counter_ns())
    todo = list(enumerate(prompts))
    in_flight = 0
    while todo or engine.has_work():
        while todo and in_flight < spec.concurrency:
            i, prompt = todo.pop(0)
            recorder.arrived(f"r{i}", time.perf_counter_ns())
            engine.submit(Request(f"r{i}", prompt, SamplingParams(max_tokens=spec.output_tokens, temperature=0.0)))
            in_flight += 1
        for record, tokens in recorder.feed(engine.step()):
            in_flight -= 1
            writer.write_request(
                {**record, "dataset": "agree", "session": 0, "correct": None}, {**tokens, "session": 0}
            )
    engine.close()
    writer.close()
    return _tree_cpu_s(proc) - cpu0


def _run_child(cmd: list[str], log: Path) -> float:
    """Run a peer tool; the CPU seconds of its process tree (waited-for children, as getrusage counts them)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise UserError(f"{cmd[0]} failed (exit {done.returncode}); see {log}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_aiperf(bin_dir: Path, url: str, spec: AgreeSpec, tokenizer: Path, out: Path) -> tuple[Path, float]:
    cmd = [
        str(bin_dir / "aiperf"),
        "profile",
        "--model",
        spec.model,
        "--url",
        url,
        "--endpoint-type",
        "completions",
        "--streaming",
        "--tokenizer",
        str(tokenizer),
        "--isl",
        str(spec.prompt_tokens),
        "--osl",
        str(spec.output_tokens),
        "--extra-inputs",
        "ignore_eos:true",
        "--concurrency",
        str(spec.concurrency),
        "--request-count",
        str(spec.requests),
        "--artifact-dir",
        str(out),
        "--ui-type",
        "none",
    ]
    cpu = _run_child(cmd, out.with_suffix(".log"))
    return out / "profile_export.jsonl", cpu


def run_guidellm(bin_dir: Path, url: str, spec: AgreeSpec, tokenizer: Path, out: Path) -> tuple[Path, float]:
    path = out / "benchmarks.json"
    cmd = [
        str(bin_dir / "guidellm"),
        "run",
        "--backend",
        f"kind=openai_http,target={url},model={spec.model},validate_backend=false,request_format=/v1/completions",
        "--profile",
        f"kind=concurrent,streams={spec.concurrency}",
        "--constraint",
        f"kind=max_requests,count={spec.requests}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={spec.prompt_tokens},output_tokens={spec.output_tokens}",
        "--tokenizer",
        f"kind=huggingface_auto,model={tokenizer}",
        "--output",
        f"kind=json,path={path}",
        "--disable-console-interactive",
    ]
    cpu = _run_child(cmd, out.with_suffix(".log"))
    return path, cpu


# llama-server's per-request decode timing (not "prompt eval time"): "... | eval time = X ms / N tokens (..."
EVAL_TIME = re.compile(rb"\|\s+eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
SERVER_TPOT = "server TPOT p50 ms"
LOG_WAIT_S = 5.0  # the server logs a request's timing from its own logging thread: wait that long for it


def server_tpot(log: Path, start: int, n: int) -> dict:
    """llama-server's TPOT p50 in ms (median of X / (N - 1) over `eval time = X ms / N tokens` lines) over
    what `log` gained after byte offset `start`, with the number of requests it covers; waits up
    to LOG_WAIT_S for `n` lines to appear."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        with open(log, "rb") as f:
            f.seek(start)
            per_token = [float(ms) / (int(k) - 1) for ms, k in EVAL_TIME.findall(f.read()) if int(k) > 1]
        if len(per_token) >= n or time.monotonic() > deadline:
            return {SERVER_TPOT: distribution(per_token, (50,))["p50"], "server_n": len(per_token)}
        time.sleep(0.1)


def figures(cell_dir: Path) -> dict:
    m = cell_metrics(read_cell(cell_dir))
    out = {"n": m["n_requests"]}
    for label, section, key, stat in METRICS:
        v = m[section][key]
        if stat is not None:
            v = v.get(stat) if v and v.get("count") else None
            v = None if v is None else v * 1e3
        out[label] = v
    return out


def _drift(runs: dict[str, list[dict]], label: str, tolerance: float) -> str:
    """Why an interval is wide: rllm-study's own value varying between rounds by more than the
    tolerance (max / min over rounds) means the machine's speed changed between runs, which
    more rounds only average down (as 1/sqrt(rounds)); else more rounds settle it."""
    ours = [o[label] for o in runs["rllm-study"] if o.get(label)]
    spread = max(ours) / min(ours) if ours else 1.0
    if spread > 1 + tolerance:
        return (
            f"rllm-study's own value varied {spread:.2g}x between rounds: the machine's speed changed "
            "between runs; a machine of stable speed settles it"
        )
    return "more rounds settle it"


def _row(label: str, tool: str, versus: str, ratios: list[float], tolerance: float, why: str, wide: str) -> dict:
    """One comparison: the ratios' interval over rounds and its verdict (module docstring); `why`
    explains a difference, `wide` an interval too wide to decide."""
    iv = ratio_interval(ratios, "rounds")
    if not ratios:
        verdict = "not measured"
    elif not iv.known:
        verdict = f"inconclusive ({iv.why})"
    elif 1 - tolerance <= iv.lo and iv.hi <= 1 + tolerance:
        verdict = "agrees"
    elif iv.hi < 1 - tolerance or iv.lo > 1 + tolerance:
        verdict = "differs: " + why
    else:
        verdict = f"inconclusive (interval straddles 1 -+ {tolerance:g}; {wide})"
    return {
        "metric": label,
        "tool": tool,
        "versus": versus,
        "ratio": iv.estimate,
        "lo": iv.lo,
        "hi": iv.hi,
        "n": iv.n,
        "verdict": verdict,
    }


def compare(runs: dict[str, list[dict]], tolerance: float) -> list[dict]:
    """Per metric and peer: ratio peer / ours over matched rounds, with its interval and verdict.
    Where the server's log was read, also per tool: its TPOT p50 / the server's own in the same run
    (a ratio within one run, so the server's speed changing between runs cancels)."""
    rows = [
        _row(
            label,
            tool,
            "rllm-study",
            [p[label] / o[label] for o, p in zip(runs["rllm-study"], runs[tool]) if o.get(label) and p.get(label)],
            tolerance,
            WHY[label],
            _drift(runs, label, tolerance),
        )
        for label, *_ in METRICS
        for tool in TOOLS[1:]
    ]
    if any(r.get(SERVER_TPOT) for rows_of_tool in runs.values() for r in rows_of_tool):
        rows += [
            _row(
                "TPOT p50 ms",
                tool,
                "server",
                [r["TPOT p50 ms"] / r[SERVER_TPOT] for r in runs[tool] if r.get("TPOT p50 ms") and r.get(SERVER_TPOT)],
                tolerance,
                "the client's first and last token times are not the server's: a client slow to read its stream",
                "more rounds settle it",
            )
            for tool in TOOLS
        ]
    return rows


def check_peers_bin(peers_bin: Path) -> None:
    """UserError unless `peers_bin` holds both peers' executables."""
    for tool in ("aiperf", "guidellm"):
        if not (peers_bin / tool).is_file():
            raise UserError(
                f"--peers-bin {peers_bin}: no {tool} there; pip install 'rllm-study[peers]' into a venv "
                "and give its bin folder"
            )


def bench_agree(
    spec: AgreeSpec,
    url: str,
    server_pid: int | None,
    peers_bin: Path,
    tokenizer: Path,
    out: Path,
    console,
    server_log: Path | None = None,
) -> dict:
    """Run the rounds (module docstring); `server_log` (llama-server's output) adds the server's
    own TPOT per run. The result as written to OUT/agree.json."""
    check_peers_bin(peers_bin)
    out.mkdir(parents=True, exist_ok=True)
    prompts = fixed_prompts(url, spec.requests, spec.prompt_tokens)
    server = psutil.Process(server_pid) if server_pid else None
    runs: dict[str, list[dict]] = {t: [] for t in TOOLS}
    for r in range(spec.rounds):
        for tool in TOOLS:
            dest = out / f"{tool}-round{r}"
            shutil.rmtree(dest, ignore_errors=True)
            server_cpu0 = _tree_cpu_s(server) if server else 0.0
            log_at = server_log.stat().st_size if server_log else 0
            t0 = time.monotonic()
            console.print(f"round {r + 1}/{spec.rounds}: {tool} ...")
            with pinned(spec.client_cpus):
                if tool == "rllm-study":
                    client_cpu = run_ours(url, spec, prompts, dest)
                    cell = dest
                else:
                    export, client_cpu = (run_aiperf if tool == "aiperf" else run_guidellm)(
                        peers_bin, url, spec, tokenizer, dest
                    )
            if tool != "rllm-study":
                (cell,) = import_export(tool, export, out / "imported", name=f"{tool}-round{r}")
            row = figures(cell)
            if server_log:
                row.update(server_tpot(server_log, log_at, row["n"]))
            row.update(
                client_cpu_s=client_cpu,
                server_cpu_s=(_tree_cpu_s(server) - server_cpu0) if server else None,
                wall_s=time.monotonic() - t0,
            )
            runs[tool].append(row)
            console.print(f"  {tool}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
    result = {
        "spec": asdict(spec),
        # the CPUs the server may run on, read back from it (its main thread): the pinning as it took effect
        "server_affinity": sorted(server.cpu_affinity()) if server else None,
        "runs": runs,
        "comparison": compare(runs, spec.tolerance),
    }
    (out / "agree.json").write_text(json.dumps(result, indent=2))
    return result


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def markdown(result: dict) -> str:
    """The agreement table: per tool and metric the mean over rounds (n requests per round), then
    each peer's ratio to rllm-study with its 95% interval over rounds and the verdict."""
    spec, runs = result["spec"], result["runs"]
    server = any(r.get("server_n") for rows in runs.values() for r in rows)
    labels = [label for label, *_ in METRICS] + ([SERVER_TPOT] if server else [])

    def cpus(key: str) -> str:
        return format_cpus(spec[key]) if spec.get(key) else "not pinned"

    lines = [
        f"Workload: {spec['requests']} requests x {spec['prompt_tokens']} prompt tokens -> {spec['output_tokens']} "
        f"output tokens (ignore_eos), closed loop of {spec['concurrency']}, greedy, {spec['rounds']} rounds "
        f"A B C; tolerance {spec['tolerance']:.0%}. Server threads {spec['threads']}, server CPUs "
        f"{cpus('server_cpus')}, client CPUs {cpus('client_cpus')}.",
        "",
        "| tool | n/round | " + " | ".join(labels) + " | client CPU s | server CPU s |",
        "|---" * (len(labels) + 4) + "|",
    ]
    for tool in TOOLS:
        rows = runs[tool]
        mean = {
            k: (
                sum(r[k] for r in rows if r.get(k) is not None) / len([r for r in rows if r.get(k) is not None])
                if any(r.get(k) is not None for r in rows)
                else None
            )
            for k in [*labels, "client_cpu_s", "server_cpu_s"]
        }
        cells = [_fmt(mean[label]) for label in labels]
        if server:  # the server's requests per run beside its TPOT
            ns = sorted({r.get("server_n", 0) for r in rows})
            cells[-1] += f" (n {ns[0]})" if len(ns) == 1 else f" (n {ns[0]}-{ns[-1]})"
        lines.append(
            f"| {tool} | {rows[0]['n']} | "
            + " | ".join(cells)
            + f" | {_fmt(mean['client_cpu_s'], 3)} | {_fmt(mean['server_cpu_s'], 3)} |"
        )
    lines += [
        "",
        "| metric | tool | versus | ratio tool / versus | 95% interval | n rounds | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["comparison"]:
        lines.append(
            f"| {c['metric']} | {c['tool']} | {c.get('versus', 'rllm-study')} | {_fmt(c['ratio'])} | "
            f"{_fmt(c['lo'])} - {_fmt(c['hi'])} | {c['n']} | {c['verdict']} |"
        )
    return "\n".join(lines)
