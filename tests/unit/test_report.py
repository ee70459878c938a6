"""Reports: made from small runs on the scripted engine (the pilot, realworld and a KV-cache variant
study; the report of a real model's run is tested in test_runner.py), checked for every section,
self-contained HTML, a real headless browser, --compare, and the claim rules on result files built
by hand."""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import subprocess
import tomllib
from pathlib import Path

import pytest
from scipy.stats import t as scipy_t

from conftest import require, run_cli
from rllm_study.analysis.metrics import METRICS
from rllm_study.report import REPORT_HTML, REPORT_MD, plots, write_report
from rllm_study.report.cells import load_cells
from rllm_study.report.claims import (
    LOAD_CLAIMS,
    PILOT_CLAIMS,
    TECHNIQUE_CLAIMS,
    WORKLOAD_CLAIMS,
    adaptive_time,
    bursty_load,
    check_claims,
    domain_preference,
    memory,
    stragglers,
)
from rllm_study.report.document import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED
from rllm_study.report.plots import _log_ticks
from rllm_study.running.results import CellWriter
from rllm_study.workloads.datasets import load_dataset
from scripted_engine import Script, run_scripted

SECTIONS = [
    "Setup",
    "Claims",
    "Memory use and fluctuation",
    "Stragglers",
    "Adaptive running time",
    "Domain preference",
    "Latency distributions",
    "Techniques",
    "Bursty arrivals",
    "Load sweeps",
    "Multi-turn sessions",
    "Dispatch lag",
    "Think budget",
    "All cells",
    "Appendix: metrics",
]
CLAIM_TITLES = [
    "Memory use and fluctuation",
    "Stragglers",
    "Adaptive running time",
    "Domain preference",
    "Weight quantization",
    "KV-cache quantization",
    "Prefix caching",
    "Speculative decoding",
    "Bursty arrivals",
    "Multi-turn prefix caching",
    "KV capacity at a fixed memory budget",
    "Combined techniques",
]
KV_SPEC = """
name = "kv-cache-small"
models = ["smollm2-135m"]
prompt_modes = ["reasoning"]
max_tokens = [48]
[datasets]
gsm8k = 10
[workload]
arrival = "batch"
batch_size = 2
[[variants]]
name = "f16"
engine = { type_k = "f16", type_v = "f16" }
[[variants]]
name = "q8_0"
engine = { type_k = "q8_0", type_v = "q8_0", flash_attn = true }
"""


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three small runs on the scripted engine, in process (a few seconds), and the report made from
    them; the same report on a real model's run: tests/e2e/test_runner.py::test_report_of_the_real_pilot."""
    root = tmp_path_factory.mktemp("runs")
    fast = ("max_tokens=[24]", "sample_period_s=0.005")  # 2 ms a decode step: a KV timeline of several samples a batch
    run_scripted(
        root / "pilot",
        preset="pilot",
        step_s=0.002,
        overrides=(*fast, "datasets={gsm8k=2, math500=2, gpqa-diamond=2}", "workload.batch_size=2"),
    )
    run_scripted(
        root / "realworld",
        preset="realworld",
        step_s=0.002,
        overrides=(*fast, "datasets={gsm8k=3}", "workload.rate=2.0"),
    )
    # the KV study answers every item right with either cache (short thinking, the reference answer), so the
    # claim is decided: no collapse at 10 items (its other outcomes: test_claim_thresholds.py, built inputs)
    answers = {item.problem: item.answer for item in load_dataset("gsm8k", limit=10)}
    right = Script(think_words=lambda r: 2, answer=lambda r: next(a for q, a in answers.items() if q in r.prompt))
    run_scripted(root / "kv", tomllib.loads(KV_SPEC), overrides=fast[1:], step_s=0.002, script=right)
    write_report([root / "pilot", root / "realworld", root / "kv"], root / "report")
    return {"pilot": root / "pilot", "realworld": root / "realworld", "kv": root / "kv", "report": root / "report"}


def _claims_md(md: str) -> dict[str, str]:
    """Claim title -> status, from the claims summary table of report.md."""
    return {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(
            r"^\| ([^|]+) \| (reproduced|not reproduced|inconclusive|not tested) \| ([^|]*) \|", md, re.M
        )
    }


def test_report_from_real_runs_has_every_section(runs):
    md = (runs["report"] / REPORT_MD).read_text()
    assert re.findall(r"^## (.+)$", md, re.M) == SECTIONS
    claims = _claims_md(md)
    assert list(claims) == CLAIM_TITLES
    status = {title: st for title, (st, _) in claims.items()}
    # the runs hold what these need: reasoning/direct pairs, two math tiers, two CVs at one rate. KV use and
    # accuracy are settled or not by what the model did (their verdicts are tested on built inputs below) ...
    for tested in ("Memory use and fluctuation", "Domain preference"):
        assert status[tested] != NOT_TESTED, tested
    # ... but 2 requests a cell are too few to resample, and a batch of 2 cannot have a straggler (neither E2EL
    # exceeds twice their mean): these cannot settle
    for small in ("Stragglers", "Adaptive running time"):
        assert status[small] == INCONCLUSIVE, claims[small]
    assert "the bootstrap needs at least 5" in claims["Adaptive running time"][1]
    # bursty arrivals: both schedules realise 2.0 req/s (the same load, so compared), but one pair of cells cannot settle
    assert status["Bursty arrivals"] == INCONCLUSIVE, claims["Bursty arrivals"]
    assert (
        "about 3 cell pairs (it rests on " in claims["Bursty arrivals"][1]
    )  # 1, or 0 where the machine speed differed
    # the KV-cache study: both caches answered all 10 right, so no collapse (0.5 x f16 accuracy stays below)
    assert status["KV-cache quantization"] == NOT_REPRODUCED, claims["KV-cache quantization"]
    for absent in ("Weight quantization", "Prefix caching", "Speculative decoding"):
        assert status[absent] == NOT_TESTED, absent
    # every figure it references is a PNG written next to it
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(figures) >= 9
    for f in figures:
        assert (runs["report"] / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    for kind in (
        "memory-",
        "stragglers-",
        "difficulty-",
        "accuracy-",
        "latency-pilot",
        "latency-realworld",
        "technique-kv-cache-small",
        "load-realworld-",
    ):
        assert any(kind in f for f in figures), kind
    # the variant table, every metric in the appendix (the model's honest label: test_runner.py, on a real model)
    assert "| gsm8k | q8_0 | type_k q8_0, type_v q8_0, flash_attn True" in md
    appendix = md.split("## Appendix: metrics", 1)[1]
    for name in METRICS:
        assert f"`{name}`" in appendix, name


def test_load_table_prints_realised_rate_and_cv(runs):
    # realworld quick at rate 2.0, 3 arrivals per cell at CV 1 and 3: both schedules are rescaled
    # to 2 requests/s, so both cells print n 3 and arrival rate 2.00; their CVs differ
    md = (runs["report"] / REPORT_MD).read_text()
    load = re.split(r"^## Bursty arrivals$", md, flags=re.M)[1].split("\n## ", 1)[0]
    assert "| workload | n | arrival rate req/s | arrival CV | req/s |" in load
    rows = re.findall(r"^\| (gamma-r2.0-cv[13].0) \| (\d+) \| ([^|]+) \| ([^|]+) \|", load, re.M)
    assert [(name, n, rate) for name, n, rate, _ in rows] == [
        ("gamma-r2.0-cv1.0", "3", "2.00"),
        ("gamma-r2.0-cv3.0", "3", "2.00"),
    ]


def test_memory_figure_draws_kv_and_requests_from_events(runs):
    """The memory figure's KV use and running / waiting counts are the event step functions the metrics
    use, not the sampled engine counters: wiping those counters from every sample leaves the figure
    byte-identical (RSS, which only the sampler gives, stays sampled)."""
    cells = [c for c in load_cells([runs["pilot"]]) if c.dataset == "gsm8k"]
    columns = [(c.mode, c) for c in cells]
    samples = [s for c in cells for s in c.cell.timeline]
    assert any(s.get("kv_used") for s in samples) and any(s.get("running") for s in samples)
    drawn = plots.timeline(columns)
    for s in samples:
        s["kv_used"] = s["running"] = s["waiting"] = 0
    assert plots.timeline(columns) == drawn


def test_sampled_memory_lines_break_where_a_sample_has_no_reading():
    """A timeline sample without a counter is drawn as a gap (NaN), not as a reading of 0."""
    series = plots.sampled_series([{"kv_used": 5}, {"t_s": 1.0}, {"kv_used": 0}, {"kv_used": None}], "kv_used")
    assert series[0] == 5 and math.isnan(series[1]) and series[2] == 0 and math.isnan(series[3])
    assert plots.sampled_series([{"rss_bytes": 3 * 2**20}], "rss_bytes", 2**20) == [3.0]


def test_every_finding_without_its_cells_is_not_tested_and_says_what_it_needs():
    """Each finding is declared once (`Finding`: key, title, paper, rule, needs, judge); over no cells
    the scaffold leaves every one not tested, with its own `needs` line as the reason."""
    findings = (*PILOT_CLAIMS, *TECHNIQUE_CLAIMS, *LOAD_CLAIMS, *WORKLOAD_CLAIMS)
    claims = check_claims([])
    assert [c.title for c in claims] == CLAIM_TITLES == [f.title for f in findings]
    assert len({f.key for f in findings}) == len(findings)
    for claim, finding in zip(claims, findings):
        assert (claim.key, claim.rule, claim.status) == (finding.key, finding.rule, NOT_TESTED)
        assert claim.reason == finding.needs and claim.reason.startswith("needs "), claim.key


def test_html_is_self_contained(runs):
    html = (runs["report"] / REPORT_HTML).read_text()
    md = (runs["report"] / REPORT_MD).read_text()
    assert html.count('src="data:image/png;base64,') == len(re.findall(r"!\[", md))
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html), "a reference leaves the page"
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html


CHECKER = """<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<script>
window.__problems = [];
window.addEventListener("error", e => __problems.push("error: " + e.message));
document.addEventListener("securitypolicyviolation", e => __problems.push("blocked: " + e.blockedURI));
const consoleError = console.error;
console.error = (...args) => { __problems.push("console: " + args.join(" ")); consoleError(...args); };
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "report-check";
  out.textContent = JSON.stringify({
    problems: __problems,
    images: document.images.length,
    undecoded: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    claims: document.querySelectorAll("#claims .claim").length,
  });
  document.body.appendChild(out);
});
</script>"""
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",
    "--dump-dom",
]


def test_report_opens_in_headless_chromium(runs, tmp_path):
    """The page loads with no console errors or blocked requests (a strict content security policy
    allows only data: images and inline styles), every image decodes, and the claims are there."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    require(browser is not None, "chromium is not installed (apt-get install chromium; scripts/setup.sh installs it)")
    page = tmp_path / "checked.html"
    page.write_text((runs["report"] / REPORT_HTML).read_text().replace("<head>", "<head>" + CHECKER, 1))
    proc = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="report-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page did not finish loading: {proc.stderr[-2000:]}"
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    console_errors = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line and "report-check" not in line]
    assert check["problems"] == [] and console_errors == [], (check["problems"], console_errors)
    assert check["images"] >= 9 and check["undecoded"] == []
    assert check["claims"] == len(CLAIM_TITLES)


def test_compare_lists_ratios_and_what_differed(runs, tmp_path):
    """The pilot again with one engine setting changed (a spec difference) on an engine 3x slower a
    step (a measured difference, the same tokens): the setting is listed, hardware is not, and the
    ratios are the second run's over the first's, per cell and as a geometric mean."""
    other = tmp_path / "other"
    run_scripted(
        other,
        preset="pilot",
        step_s=0.006,
        overrides=(
            "max_tokens=[24]",
            "sample_period_s=0.005",
            "datasets={gsm8k=2, math500=2, gpqa-diamond=2}",
            "workload.batch_size=2",
            "engine.threads=7",
        ),
    )
    for manifest in other.rglob("manifest.json"):
        m = json.loads(manifest.read_text())
        m["hardware"]["cpu"] = "Another CPU"  # hardware: shown in the fingerprints, not a difference
        manifest.write_text(json.dumps(m))
    _ok(run_cli("report", runs["pilot"], other, "--compare", "--out", tmp_path / "cmp"))
    md = (tmp_path / "cmp" / REPORT_MD).read_text()
    assert re.findall(r"^## (.+)$", md, re.M) == [
        "Runs",
        "What differed besides hardware",
        "Claims",
        "Summary",
        "Cells side by side",
        "Appendix: metrics",
    ]
    assert "Another CPU" in md.split("## Runs", 1)[1].split("## What differed", 1)[0]
    differed = md.split("## What differed besides hardware", 1)[1].split("## Claims", 1)[0]
    n_cells = len(list(runs["pilot"].iterdir()))
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", differed, re.M)
    assert rows == [
        ("cell.engine.n_threads", f"null | 7 | {n_cells} of {n_cells}"),
        ("spec.engine.threads", f"(absent) | 7 | {n_cells} of {n_cells}"),
    ], differed
    assert "`hardware." not in differed and "step_s" not in differed  # the engine's speed is not a setting
    verdicts = re.findall(
        r"^\| ([^|]+) \| ([a-z ]+) \| ([a-z ]+) \| ([a-z ,]+) \|$",
        md.split("## Claims", 1)[1].split("## Summary", 1)[0],
        re.M,
    )
    assert [v[0] for v in verdicts] == CLAIM_TITLES, verdicts
    # the ratios, recomputed from the result files: other / pilot, geometric mean over matched cells
    ref = {c.name: c.metrics for c in load_cells([runs["pilot"]])}
    new = {c.name: c.metrics for c in load_cells([other])}
    assert set(ref) == set(new) and len(ref) == n_cells

    def geomean(path: tuple[str, ...]) -> tuple[float, float, float]:
        """Geometric mean of new / ref over the cells with the t interval of the log ratios (scipy's t)."""

        def at(m):
            for k in path:
                m = m[k]
            return m

        logs = [math.log(at(new[n]) / at(ref[n])) for n in ref]
        mean = sum(logs) / len(logs)
        half = scipy_t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        return math.exp(mean), math.exp(mean - half), math.exp(mean + half)

    summary = md.split("## Summary", 1)[1].split("## Cells side by side", 1)[0]
    found = re.findall(
        r"^\| ([^|]+?) \| ([\d.]+)x(?: \[([\d.]+)x, ([\d.]+)x\])? \(n=(\d+) cell pairs\) \|$", summary, re.M
    )
    printed = {label: est for label, est, *_ in found}
    bounds = {label: (lo, hi, int(n)) for label, _, lo, hi, n in found}
    tok_s, tok_lo, tok_hi = geomean(("throughput", "output_tok_s"))
    e2el, _, _ = geomean(("latency", "e2el_s", "p50"))
    assert printed["out tok/s"] == f"{tok_s:.2f}" and printed["E2EL p50 s"] == f"{e2el:.2f}", summary
    assert bounds["out tok/s"] == (f"{tok_lo:.2f}", f"{tok_hi:.2f}", n_cells), summary  # n beside the figure
    assert tok_s < 0.75 and e2el > 1.4, (tok_s, e2el)  # 3x the step time: slower, not faster (new / ref)
    assert 1.5 < float(printed["TPOT p50 ms"]) < 4  # 6 ms a step over 2 ms (sleeps overshoot under load)
    # the same script: the same answers and tokens
    assert printed["accuracy strict"] == printed["output tok mean"] == "1.00", summary
    cells = md.split("## Cells side by side", 1)[1]
    assert len(re.findall(r"^### ", cells, re.M)) == n_cells
    name = sorted(ref)[0]
    row = re.search(r"^\| out tok/s \| [^|]+ \| [^|]+ \| ([\d.]+)x \|$", cells.split(f"### {name}", 1)[1], re.M)
    ratio = new[name]["throughput"]["output_tok_s"] / ref[name]["throughput"]["output_tok_s"]
    assert row and row.group(1) == f"{ratio:.2f}", cells[:2000]


def test_user_mistakes_are_one_line(runs, tmp_path):
    for args, needle in (
        ((tmp_path / "missing", "--out", tmp_path / "o"), "does not exist"),
        ((tmp_path, "--out", tmp_path / "o"), "no cells"),
        ((runs["pilot"], "--compare", "--out", tmp_path / "o"), "at least two run folders"),
        ((runs["pilot"], runs["realworld"], "--compare", "--out", tmp_path / "o"), "no cell of"),
    ):
        proc = run_cli("report", *args)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


# ---- claim rules on hand-built result files ------------------------------------------------------

DOMAINS = {"gpqa-diamond": "science-knowledge"}


def _cell(
    root: Path,
    mode: str,
    dataset: str,
    kv: list[int],
    e2el: list[float],
    think: list[int],
    *,
    study="pilot",
    variant="",
    engine=None,
    model=None,
    correct=False,
    batch: int | None = None,
    workload=None,
    arrivals: list[float] | None = None,
    queue: list[float] | None = None,
    lenient: bool | None = None,
    repeat: int = 0,
    speed: float | tuple[float, float] | None = 20.0,
    kv_every: float = 1.0,
) -> None:
    """A cell of one synchronous batch (or, with `workload` and `arrivals`, an open-loop cell):
    request i arrives at arrivals[i] (default 0), is admitted after queue[i] (default 0) and finishes
    e2el[i] after arriving; `correct` is one grade for all or one per request (`lenient`, when given,
    the lenient grade of all: then every answer was found in the thinking). KV samples every
    second (`kv_every` s) out of a capacity of 100 percent, one request running (an engine counting KV in
    percent: the report reads the sampled timeline, as for engines whose KV events cannot be counted in cells). `repeat` > 0 names a repeat of the cell;
    `speed` the machine speed its calibrations measured before and after it (tok/s; one value: both)."""
    n = len(e2el)
    workload = workload or {"arrival": "batch", "batch_size": batch or n}
    name = "-".join(
        p
        for p in (
            dataset,
            mode,
            variant,
            workload.get("arrival"),
            str(workload.get("batch_size") or workload.get("cv")),
            repeat and f"r{repeat}",
        )
        if p
    )
    grades = correct if isinstance(correct, list) else [correct] * n
    w = CellWriter(root / name)
    w.write_manifest(
        {
            "cell": {
                "name": name,
                "study": study,
                "model": "m",
                "variant": variant,
                "dataset": dataset,
                "prompt_mode": mode,
                "max_tokens": 64,
                "repeat": repeat,
                "workload": workload,
                "engine": engine or {},
            },
            "model": model,
            "spec": {"variants": [{"name": "base"}, {"name": "new"}]},
        }
    )
    for i, (t, k, ok) in enumerate(zip(e2el, think, grades)):
        rid, at, wait = f"{dataset}/{i}", (arrivals or [0.0] * n)[i], (queue or [0.0] * n)[i]
        w.write_request(
            {
                "id": rid,
                "dataset": dataset,
                "domain": DOMAINS.get(dataset, "math"),
                "batch": 0 if workload["arrival"] == "batch" else None,
                "arrival_s": at,
                "admitted_s": at + wait,
                "first_token_s": at + wait + 0.1,
                "first_answer_token_s": None,
                "finish_s": at + t,
                "output_tokens": k,
                "think_tokens": k,
                "answer_tokens": 0,
                "finish_reason": "stop",
                "correct": ok,
                "parse_status": "ok" if lenient is None else "answer_in_think",
                **({} if lenient is None else {"correct_lenient": lenient}),
            },
            {"id": rid, "t_s": [at + wait + 0.1], "token_ids": [1], "phase": "t", "draft": "0"},
        )
    for s, used in enumerate(kv):
        w.write_timeline(
            {
                "t_s": s * kv_every,
                "kv_used": used,
                "kv_capacity": 100,
                "kv_unit": "percent",
                "running": 1,
                "waiting": 0,
                "rss_bytes": 1,
            }
        )
    if speed is not None:
        for when, tok_s in zip(("before", "after"), speed if isinstance(speed, tuple) else (speed, speed)):
            w.write_calibration({"when": when, "tokens": 32, "seconds": 31 / tok_s, "tok_s": tok_s})
    w.close()


def _spread(centre: float, n: int, step: float = 0.01) -> list[float]:
    """n values around `centre`, `step` apart: a recorded sample with a little noise."""
    return [centre + step * (i - (n - 1) / 2) for i in range(n)]


MATH = ("gsm8k", "math500", "aime24")


def test_memory_rule(tmp_path):
    # three pairs: reasoning peaks at 60-70% and swings (CV about 0.8); direct stays near 3% (CV about 0.15): reproduced
    for dataset, top in zip(MATH, (70, 66, 60)):
        _cell(tmp_path / "a", "reasoning", dataset, [3, 40, top, 10, 3], [1, 2], [5, 9])
        _cell(tmp_path / "a", "direct", dataset, [2, 3, 3, 3, 3], [1, 1], [0, 0])
    claim = memory(load_cells([tmp_path / "a"]))
    assert claim.status == REPRODUCED, claim
    peak = dict(claim.numbers)["peak KV ratio reasoning / direct"]
    assert peak.startswith("21.73x [")  # (70/3 x 66/3 x 60/3)^(1/3)
    assert "(n=3 cell pairs; 12 requests in 6 batches); needs > 2.00x: settled: holds" in peak, peak
    # the same peaks but the direct runs swing more: the CV condition settles against the finding
    for dataset, top in zip(MATH, (70, 66, 60)):
        _cell(tmp_path / "b", "reasoning", dataset, [top - 10, top, top - 5, top, top - 10], [1, 2], [5, 9])
        _cell(tmp_path / "b", "direct", dataset, [0, 3, 0, 3, 0], [1, 1], [0, 0])
    assert memory(load_cells([tmp_path / "b"])).status == NOT_REPRODUCED
    # the same, but the reasoning cells' sampler starved (samples 1.5 s apart, over the 1 s a claim accepts): the memory
    # claim does not rest on a timeline with holes
    for dataset, top in zip(MATH, (70, 66, 60)):
        _cell(tmp_path / "gaps", "reasoning", dataset, [3, 40, top, 10, 3], [1, 2], [5, 9], kv_every=1.5)
        _cell(tmp_path / "gaps", "direct", dataset, [2, 3, 3, 3, 3], [1, 1], [0, 0])
    gaps = memory(load_cells([tmp_path / "gaps"]))
    assert gaps.status == NOT_TESTED and "gaps over 1 s" in gaps.reason, gaps
    # one pair: no interval over pairs, so it cannot settle
    one = memory(load_cells([tmp_path / "a" / "gsm8k-reasoning-batch-2", tmp_path / "a" / "gsm8k-direct-batch-2"]))
    assert one.status == INCONCLUSIVE and "an interval needs two" in one.reason, one
    # only one prompt mode: nothing to compare
    assert memory(load_cells([tmp_path / "a" / "gsm8k-reasoning-batch-2"])).status == NOT_TESTED


def _ladder(
    root: Path, e2el: dict, think: dict, n: int, batch: int | None = None, repeats: int = 3, speed: dict | None = None
) -> None:
    """Reasoning cells of each data set, `repeats` of each, the repeats' E2EL 2% apart; `speed` the machine
    speed per data set (tok/s, 20 where not given)."""
    for dataset in e2el:
        for r in range(repeats):
            _cell(
                root,
                "reasoning",
                dataset,
                [1, 2],
                _spread(e2el[dataset] * (1 + 0.02 * r), n),
                [think[dataset] + (-1) ** i for i in range(n)],
                batch=batch,
                repeat=r,
                speed=(speed or {}).get(dataset, 20.0),
            )


def test_adaptive_time_rule(tmp_path):
    # think tokens and E2EL rise from GSM8K (easy) to MATH-500 (medium) to AIME (hard), 3 cells of 8 requests a tier: reproduced
    _ladder(
        tmp_path / "up", {"gsm8k": 1.5, "math500": 3.5, "aime24": 7.0}, {"gsm8k": 15, "math500": 35, "aime24": 55}, 8
    )
    claim = adaptive_time(load_cells([tmp_path / "up"]))
    assert claim.status == REPRODUCED, claim
    assert claim.numbers[0] == (
        "batch 8, easy: think tokens mean / E2EL mean / hit budget (n=24)",
        "15.0 tok / 1.53 s / 0.0%",
    )
    assert "(n=3 cells per tier; 48 requests in 6 batches)" in dict(claim.numbers)["batch 8: mean E2EL medium / easy"]
    # the same ladder from one cell a tier, however many requests: E2EL rests on one cell a tier (one moment on the
    # machine), fewer than 3: inconclusive, and what is missing is counted in cells (repeats)
    _ladder(tmp_path / "once", {"gsm8k": 1.5, "aime24": 7.0}, {"gsm8k": 15, "aime24": 55}, 40, repeats=1)
    once = adaptive_time(load_cells([tmp_path / "once"]))
    assert once.status == INCONCLUSIVE, once
    assert "about 3 cells per tier (it rests on 1, fewer than the 3 independent ones" in once.reason, once.reason
    assert "settled: holds" in dict(once.numbers)["batch 40: mean think tokens hard / easy"]
    # AIME thinks less and runs shorter than MATH-500: the ladder breaks, settled
    _ladder(tmp_path / "down", {"math500": 3.5, "aime24": 2.0}, {"math500": 35, "aime24": 20}, 8)
    assert adaptive_time(load_cells([tmp_path / "down"])).status == NOT_REPRODUCED
    # the rising ladder with 2 requests a cell: too few to resample, inconclusive with the reason
    _ladder(tmp_path / "few", {"gsm8k": 1.5, "math500": 3.5}, {"gsm8k": 15, "math500": 35}, 2)
    few = adaptive_time(load_cells([tmp_path / "few"]))
    assert few.status == INCONCLUSIVE and "the bootstrap needs at least 5" in few.reason, few
    # the machine ran the GSM8K cells at 33 tok/s and the AIME cells at 11 (another process took the CPU): the seconds
    # measure the machine as much as the problems, so the seconds condition keeps only cells of one speed (here too
    # few) and says why; in the cells' own one-sequence steps AIME still runs longer (7 s x 11 = 77 against 1.5 x 33 = 50)
    _ladder(
        tmp_path / "busy",
        {"gsm8k": 1.5, "aime24": 7.0},
        {"gsm8k": 15, "aime24": 55},
        8,
        speed={"gsm8k": 33.0, "aime24": 11.0},
    )
    busy = adaptive_time(load_cells([tmp_path / "busy"]))
    seconds = dict(busy.numbers)["batch 8: mean E2EL hard / easy"]
    assert "too few to settle (0 cells per tier; needs 3)" in seconds, seconds
    assert "machine speed: 3 of 6 cells left out" in busy.reason and busy.status == INCONCLUSIVE, busy.reason
    assert "settled: holds" in dict(busy.numbers)["batch 8: mean E2EL in one-sequence steps hard / easy"]
    # the same with speeds within the 20% tolerance (30 and 33 tok/s): settled on seconds and steps alike
    _ladder(
        tmp_path / "near",
        {"gsm8k": 1.5, "aime24": 7.0},
        {"gsm8k": 15, "aime24": 55},
        8,
        speed={"gsm8k": 33.0, "aime24": 30.0},
    )
    assert adaptive_time(load_cells([tmp_path / "near"])).status == REPRODUCED
    # a cell whose own calibrations disagree (the machine changed speed while it ran) is left out of the seconds
    _ladder(
        tmp_path / "unsteady",
        {"gsm8k": 1.5, "aime24": 7.0},
        {"gsm8k": 15, "aime24": 55},
        8,
        speed={"gsm8k": 30.0, "aime24": (30.0, 12.0)},
    )
    unsteady = adaptive_time(load_cells([tmp_path / "unsteady"]))
    assert unsteady.status == INCONCLUSIVE and "machine speed changed during" in unsteady.reason, unsteady.reason
    # the technique and load claims need cells these runs do not have
    statuses = {c.key: c.status for c in check_claims(load_cells([tmp_path / "up"]))}
    assert {statuses[k] for k in ("quantization", "kv-cache", "prefix-cache", "speculative", "bursty", "memory")} == {
        NOT_TESTED
    }


def test_adaptive_time_compares_within_one_batch_size(tmp_path):
    # batch 8 rises from GSM8K to AIME; batch 32 runs GSM8K slowly (a bigger batch) and AIME at batch-8 speed.
    # Pooled, batch 32's slow GSM8K would hide the ladder; compared per batch size, batch 32 alone breaks it.
    _ladder(tmp_path, {"gsm8k": 1.5, "aime24": 4.0}, {"gsm8k": 15, "aime24": 55}, 8, batch=8)
    _ladder(tmp_path, {"gsm8k": 6.0, "aime24": 4.0}, {"gsm8k": 15, "aime24": 55}, 8, batch=32)
    claim = adaptive_time(load_cells([tmp_path]))
    numbers = dict(claim.numbers)
    assert "settled: holds" in numbers["batch 8: mean E2EL hard / easy"]
    assert "settled: fails" in numbers["batch 32: mean E2EL hard / easy"]
    assert claim.status == NOT_REPRODUCED and "batch size 8 and 32 (each compared on its own)" in claim.reason, claim


def test_straggler_rule(tmp_path):
    # three pairs of 10: reasoning batches have 3 stragglers (5 s against a 1 s median) and a long tail; direct
    # batches are uniform: reproduced, with the tail share settled by the bootstrap over requests
    for dataset in MATH:
        _cell(tmp_path, "reasoning", dataset, [1], _spread(1.0, 7) + [5.0, 5.1, 5.2], [9] * 10)
        _cell(tmp_path, "direct", dataset, [1], _spread(1.0, 10), [0] * 10)
    claim = stragglers(load_cells([tmp_path]))
    assert claim.status == REPRODUCED, claim
    numbers = dict(claim.numbers)
    assert numbers["batch 10: straggler share, reasoning - direct"].startswith("+30.0 pt [")
    assert "settled: holds" in numbers["batch 10: tail share of batch time, reasoning - direct"]
    # the direct cells straggle and the reasoning ones do not: settled against the finding
    for dataset in MATH:
        _cell(tmp_path / "rev", "reasoning", dataset, [1], _spread(1.0, 10), [9] * 10)
        _cell(tmp_path / "rev", "direct", dataset, [1], _spread(1.0, 7) + [5.0, 5.1, 5.2], [0] * 10)
    assert stragglers(load_cells([tmp_path / "rev"])).status == NOT_REPRODUCED


def test_domain_rule(tmp_path):
    # 100 requests a cell: reasoning answers all of GSM8K and direct none; on GPQA both answer none: reproduced
    for mode, ok in (("reasoning", True), ("direct", False)):
        _cell(tmp_path / "yes", mode, "gsm8k", [1], [1.0] * 100, [1] * 100, correct=ok)
        _cell(tmp_path / "yes", mode, "gpqa-diamond", [1], [1.0] * 100, [1] * 100, correct=False)
    claim = domain_preference(load_cells([tmp_path / "yes"]))
    assert claim.status == REPRODUCED, claim
    assert (
        "math: accuracy lenient, reasoning / direct",
        "100.0% (100/100) [96.3-100.0%] / 0.0% (0/100) [0.0-3.7%]",
    ) in claim.numbers
    # the gains pair each item with its twin in the other mode, domain by domain (GPQA items are not math items)
    assert "(n=100 matched items)" in dict(claim.numbers)["math: reasoning - direct"]
    # no math gain at all (0/100 both): the interval of the gain lies below 5 points, settled against it
    for mode in ("reasoning", "direct"):
        _cell(tmp_path / "no", mode, "gsm8k", [1], [1.0] * 100, [1] * 100, correct=False)
        _cell(tmp_path / "no", mode, "gpqa-diamond", [1], [1.0] * 100, [1] * 100, correct=False)
    assert domain_preference(load_cells([tmp_path / "no"])).status == NOT_REPRODUCED
    # reasoning answers every GSM8K item but never closes its thinking: wrong strictly, right leniently. The claim
    # counts the lenient grade (the answer was given), so it reproduces, and shows the strict 0/100 beside it
    for mode, ok in (("reasoning", True), ("direct", False)):
        _cell(tmp_path / "think", mode, "gsm8k", [1], [1.0] * 100, [1] * 100, correct=False, lenient=ok)
        _cell(tmp_path / "think", mode, "gpqa-diamond", [1], [1.0] * 100, [1] * 100, correct=False)
    lenient = domain_preference(load_cells([tmp_path / "think"]))
    assert lenient.status == REPRODUCED, lenient
    assert dict(lenient.numbers)["math: accuracy strict (not deciding), reasoning / direct"].startswith("0.0% (0/100)")
    # the same all-or-nothing math gain with 4 requests a cell: settled too (the gain's interval clears 5 points) ...
    # ... but a 1-in-4 gain is not
    for mode, grades in (("reasoning", [True, False, False, False]), ("direct", False)):
        _cell(tmp_path / "few", mode, "gsm8k", [1], [1.0] * 4, [1] * 4, correct=grades)
        _cell(tmp_path / "few", mode, "gpqa-diamond", [1], [1.0] * 4, [1] * 4, correct=False)
    assert domain_preference(load_cells([tmp_path / "few"])).status == INCONCLUSIVE


def _spec_pair(root: Path, base_s: float, new_s: float, n: int, model: dict, *, correct=False, repeat=0) -> None:
    """A matched pair of aime24 cells of the `spec` study: `base` without speculation, `new` with n-gram
    drafts; n requests each, E2EL spread around base_s and new_s seconds."""
    for variant, centre, spec in (("base", base_s, None), ("new", new_s, "ngram")):
        _cell(
            root,
            "reasoning",
            "aime24",
            [1],
            _spread(centre, n),
            [9] * n,
            study="spec",
            variant=variant,
            model=model,
            engine={"spec": spec},
            correct=correct,
            repeat=repeat,
        )


def test_technique_rules(tmp_path):
    small = {"quant": "Q8_0", "gguf": {"bits_per_weight": 8.5, "n_params": 5e8}}
    n = 50  # 3 repeats: 150 requests; a 0-point accuracy difference settles "within 3 points" from about 125
    for r in range(3):  # three repeats of every pair: three independent matched cell pairs
        # weight quantization: 4.5 bpw keeps accuracy (both all correct) and is faster (E2EL 1 s vs 2 s)
        _cell(
            tmp_path,
            "reasoning",
            "gsm8k",
            [1],
            _spread(2, n),
            [9] * n,
            study="quantization",
            variant="base",
            model=small,
            correct=True,
            repeat=r,
        )
        _cell(
            tmp_path,
            "reasoning",
            "gsm8k",
            [1],
            _spread(1, n),
            [9] * n,
            study="quantization",
            variant="new",
            correct=True,
            model={"quant": "Q4_0", "gguf": {"bits_per_weight": 4.5, "n_params": 5e8}},
            repeat=r,
        )
        # prefix caching on a small model, single-turn: on is slower (E2EL 3 s vs 2 s), as the paper found for 7B
        _cell(
            tmp_path,
            "reasoning",
            "math500",
            [1],
            _spread(2, 8),
            [9] * 8,
            study="prefix",
            variant="base",
            model=small,
            engine={"prefix_cache": False},
            repeat=r,
        )
        _cell(
            tmp_path,
            "reasoning",
            "math500",
            [1],
            _spread(3 + 0.1 * r, 8),
            [9] * 8,
            study="prefix",
            variant="new",
            model=small,
            engine={"prefix_cache": True},
            repeat=r,
        )
        # speculative decoding: shorter end to end (1 s vs 2 s) at the same accuracy
        _spec_pair(tmp_path, 2, 1 + 0.05 * r, n, small, correct=True, repeat=r)
    claims = {c.key: c for c in check_claims(load_cells([tmp_path]))}
    assert claims["quantization"].status == REPRODUCED, claims["quantization"]
    quant = dict(claims["quantization"].numbers)
    # the same tokens over each cell's span, the last finish: (2 + 0.245 s) / (1 + 0.245 s), over 3 cell pairs
    assert quant["new: out tok/s ratio"].startswith("1.80x [") and "settled: holds" in quant["new: out tok/s ratio"]
    assert "(n=3 cell pairs; 300 requests in 6 batches)" in quant["new: out tok/s ratio"]
    assert claims["prefix-cache"].status == REPRODUCED, claims["prefix-cache"]
    assert claims["speculative"].status == REPRODUCED, claims["speculative"]
    assert claims["kv-cache"].status == NOT_TESTED
    # speculation that makes requests slower (3 s vs 2 s) does not reproduce the finding
    for r in range(3):
        _spec_pair(tmp_path / "slow", 2, 3 - 0.1 * r, 8, small, repeat=r)
    assert {c.key: c.status for c in check_claims(load_cells([tmp_path / "slow"]))}["speculative"] == NOT_REPRODUCED
    # the same speed-up from one pair of cells (130 requests each, all correct): however many requests, one pair is one
    # moment on the machine; inconclusive, and the repeats it lacks are named
    _spec_pair(tmp_path / "one", 2, 1, 130, small, correct=True)
    one = {c.key: c for c in check_claims(load_cells([tmp_path / "one"]))}["speculative"]
    assert one.status == INCONCLUSIVE and "about 3 cell pairs (it rests on 1" in one.reason, one.reason


def _graded_cell(
    root: Path, name: str, grades: list[tuple[bool, bool, str, int]], *, variant="", mode="reasoning"
) -> None:
    """A pilot-kind cell (or a variant cell) of gsm8k whose requests carry (correct, correct_lenient,
    parse_status, answer_tokens); each thinks 5 tokens first."""
    w = CellWriter(root / name)
    w.write_manifest(
        {
            "cell": {
                "name": name,
                "study": "kv" if variant else "pilot",
                "model": "m",
                "variant": variant,
                "dataset": "gsm8k",
                "prompt_mode": mode,
                "max_tokens": 64,
                "repeat": 0,
                "workload": {"arrival": "batch", "batch_size": len(grades)},
                "engine": {},
            },
            "spec": {"variants": [{"name": "base"}, {"name": "new"}]},
        }
    )
    for i, (correct, lenient, status, answer) in enumerate(grades):
        rid = f"gsm8k/{i}"
        w.write_request(
            {
                "id": rid,
                "dataset": "gsm8k",
                "domain": "math",
                "batch": 0,
                "arrival_s": 0.0,
                "admitted_s": 0.0,
                "first_token_s": 0.1,
                "first_answer_token_s": 0.5 if answer else None,
                "finish_s": 1.0 + i,
                "output_tokens": 5 + answer,
                "think_tokens": 5,
                "answer_tokens": answer,
                "finish_reason": "stop",
                "correct": correct,
                "correct_lenient": lenient,
                "parse_status": status,
                "prompt_mode": mode,
            },
            {"id": rid, "t_s": [0.1], "token_ids": [1], "phase": "t", "draft": "0"},
        )
    w.write_timeline(
        {"t_s": 0.0, "kv_used": 1, "kv_capacity": 100, "kv_unit": "cells", "running": 1, "waiting": 0, "rss_bytes": 1}
    )
    w.close()


def test_cell_tables_show_strict_lenient_accuracy_and_answer_phase(tmp_path):
    # 4 requests: 1 right in its answer phase, 1 right only while thinking (answer_in_think), 2 wrong;
    # 2 of the 4 have an answer phase. Strict 1/4, lenient 2/4, answer phase 2/4, each with its interval.
    grades = [
        (True, True, "parsed", 3),
        (False, True, "answer_in_think", 0),
        (False, False, "parsed", 2),
        (False, False, "unparsed", 0),
    ]
    _graded_cell(tmp_path / "run", "pilot-cell", grades)
    _graded_cell(tmp_path / "run", "kv-base", grades, variant="base")
    _graded_cell(tmp_path / "run", "kv-new", [(True, True, "parsed", 3)] * 4, variant="new")
    _ok(run_cli("report", tmp_path / "run", "--out", tmp_path / "report"))
    md = (tmp_path / "report" / REPORT_MD).read_text()
    strict, half = "25.0% (1/4) [4.6-69.9%]", "50.0% (2/4) [15.0-85.0%]"
    all_cells = md.split("\n## All cells\n", 1)[1].split("\n## ", 1)[0]
    assert "| accuracy strict | accuracy lenient | answer phase |" in all_cells
    assert f"| {strict} | {half} | {half} |" in all_cells
    domain = md.split("\n## Domain preference\n", 1)[1].split("\n## ", 1)[0]
    assert "| accuracy strict | accuracy lenient | parsed / in think / unparsed |" in domain
    assert f"| gsm8k | easy | reasoning | {strict} | {half} | 2 / 1 / 1 |" in domain
    # the technique table gives each variant's difference from the baseline in points
    techniques = md.split("\n## Techniques\n", 1)[1].split("\n## ", 1)[0]
    assert (
        "| 100.0% (4/4) [51.0-100.0%] (+75.0 pt) | 100.0% (4/4) [51.0-100.0%] (+50.0 pt) | 100.0% (4/4) [51.0-100.0%] (+50.0 pt) |"
        in techniques
    )


def test_derived_quantization_ladder_has_no_accuracy_verdict(tmp_path):
    origin = "m (Q4_K_M, embedded:x)"
    for variant, quant, bits, e2el in (("base", "F16", 16.0, 2.0), ("new", "Q4_0", 4.5, 1.0)):
        for r in range(3):
            _cell(
                tmp_path,
                "reasoning",
                "gsm8k",
                [1],
                _spread(e2el, 8),
                [9] * 8,
                study="quantization",
                variant=variant,
                correct=True,
                model={"quant": quant, "derived_from": origin, "gguf": {"bits_per_weight": bits, "n_params": 5e8}},
                repeat=r,
            )
    claim = {c.key: c for c in check_claims(load_cells([tmp_path]))}["quantization"]
    assert claim.status == NOT_TESTED and "derived from one Q4_K_M file" in claim.reason, claim
    # output tokens over the last finish: (2 + 0.035 s) / (1 + 0.035 s)
    assert dict(claim.numbers)["new (4.50 bpw) vs 16.00 bpw: out tok/s ratio (engine cost only)"].startswith("1.97x [")


def test_lower_precision_than_the_source_gets_an_accuracy_verdict(tmp_path):
    # a ladder derived from the shipped Q4_K_M file: F16 (higher precision than its source: engine cost only), the
    # source itself, and Q4_0 re-quantized from it (lower precision: its loss is attributable). Q4_0 answers half of
    # 150 requests where the source answers all: settled against, by the accuracy condition against the source.
    origin = "m (Q4_K_M, embedded:x)"
    ladder = (
        ("base", "F16", 16.0, origin, True),
        ("q4km", "Q4_K_M", 4.85, None, True),
        ("new", "Q4_0", 4.5, origin, [True, False]),
    )
    for variant, quant, bits, derived, correct in ladder:
        for r in range(3):
            _cell(
                tmp_path,
                "reasoning",
                "gsm8k",
                [1],
                _spread(1.0, 50),
                [9] * 50,
                study="quantization",
                variant=variant,
                repeat=r,
                correct=correct if correct is True else [i % 2 == 0 for i in range(50)],
                model={"quant": quant, "derived_from": derived, "gguf": {"bits_per_weight": bits, "n_params": 5e8}},
            )
    claim = {c.key: c for c in check_claims(load_cells([tmp_path]))}["quantization"]
    assert claim.status == NOT_REPRODUCED, claim
    numbers = dict(claim.numbers)
    assert "settled: fails" in numbers["new (4.50 bpw) vs 4.85 bpw: accuracy difference"]
    assert numbers["new (4.50 bpw) vs 4.85 bpw: accuracy difference"].startswith("-50.0 pt [")
    assert "(n=150 matched items)" in numbers["new (4.50 bpw) vs 4.85 bpw: accuracy difference"]  # paired by item
    assert "q4km (4.85 bpw) vs 16.00 bpw: out tok/s ratio (engine cost only)" in numbers
    assert "against their source file (Q4_K_M)" in claim.reason, claim.reason


def _open_loop(root: Path, cv: float, arrivals: list[float], queue: float, e2el: float, repeats: int = 3) -> None:
    n = len(arrivals)
    for r in range(repeats):
        _cell(
            root,
            "reasoning",
            "gsm8k",
            [1],
            _spread(e2el * (1 + 0.05 * r), n),
            [9] * n,
            workload={"arrival": "gamma", "rate": 1.0, "cv": cv},
            arrivals=arrivals,
            queue=_spread(queue * (1 + 0.05 * r), n),
            repeat=r,
        )


def test_bursty_rule_needs_the_same_realised_load(tmp_path):
    # 10 arrivals over 9 s at both CVs (realised 1.0 req/s): CV 3 queues 2 s and turns around in 4 s, CV 1 in 0.1 / 2: reproduced
    _open_loop(tmp_path / "same", 1.0, [float(i) for i in range(10)], 0.1, 2.0)
    _open_loop(tmp_path / "same", 3.0, [0.0, 0.1, 0.2, 0.3, 0.4, 8.5, 8.6, 8.7, 8.8, 9.0], 2.0, 4.0)
    claim = bursty_load(load_cells([tmp_path / "same"]))
    assert claim.status == REPRODUCED, claim
    assert (
        dict(claim.numbers)["gsm8k, rate 1.0/s, CV 1 -> 3, repeat 2: realised arrival rate (req/s)"] == "1.00 -> 1.00"
    )
    assert (
        "(n=3 cell pairs; 60 requests in 6 windows)"
        in dict(claim.numbers)["gsm8k, rate 1.0/s, CV 1 -> 3: queue p90 high - low CV (s)"]
    )
    # one repeat of the same: one pair, inconclusive
    _open_loop(tmp_path / "once", 1.0, [float(i) for i in range(10)], 0.1, 2.0, repeats=1)
    _open_loop(tmp_path / "once", 3.0, [0.0, 0.1, 0.2, 0.3, 0.4, 8.5, 8.6, 8.7, 8.8, 9.0], 2.0, 4.0, repeats=1)
    assert bursty_load(load_cells([tmp_path / "once"])).status == INCONCLUSIVE
    # CV 3 realises 10 arrivals in 2.25 s (4.0 req/s against 1.0): burstiness confounded with load, not tested
    _open_loop(tmp_path / "load", 1.0, [float(i) for i in range(10)], 0.1, 2.0)
    _open_loop(tmp_path / "load", 3.0, [0.25 * i for i in range(10)], 2.0, 4.0)
    confounded = bursty_load(load_cells([tmp_path / "load"]))
    assert confounded.status == NOT_TESTED and "realised arrival rates" in confounded.reason, confounded


# ---- two runs of one preset never settle opposite verdicts ------------------------------------------

REPORTS = Path(__file__).resolve().parents[2] / "reports"


def _rerun(cells, dest: Path, pick) -> Path:
    """A run in the recorded format whose cells hold `pick(cell)` of each recorded cell's requests
    (ids made unique, so a request drawn twice is two requests), with the cell's manifest and timeline."""
    for cell in cells:
        w = CellWriter(dest / cell.dir.name)
        w.write_manifest(cell.manifest)
        for j, r in enumerate(pick(cell)):
            rid = f"{r['id']}#{j}"
            w.write_request({**r, "id": rid}, {**cell.tokens[r["id"]], "id": rid})
        for sample in cell.timeline:
            w.write_timeline(sample)
        w.close()
    return dest


@pytest.mark.parametrize("raw, n_cells, seeds", [("cpu-2core/pilot-0.5b", 24, 2)])
def test_two_runs_never_settle_opposite_verdicts(tmp_path, raw, n_cells, seeds):
    """Stand-ins for runs of one preset, made from its committed raw files: the two halves of each
    cell's requests (split at random), and two resamples of each cell with replacement. A claim may be
    settled in one and inconclusive in another, never reproduced in one and not reproduced in another.
    pilot-0.5b ran 3 repeats (12 cell pairs), enough independent cells to settle; a run of one repeat
    (e.g. gpu-h100/pilot-c32) leaves its cell-level conditions open, so it could not show a settled verdict."""
    import random

    from rllm_study.running.results import find_cells, read_cell

    cells = [read_cell(d) for d in find_cells([REPORTS / raw])]
    assert len(cells) == n_cells
    settled = 0
    for seed in range(seeds):
        rng = random.Random(seed)
        order = {c.dir.name: rng.sample(range(len(c.requests)), len(c.requests)) for c in cells}
        runs = {
            "half A": _rerun(
                cells,
                tmp_path / f"s{seed}-a",
                lambda c: [c.requests[i] for i in order[c.dir.name][0::2]],  # noqa: B023  (run now)
            ),
            "half B": _rerun(
                cells,
                tmp_path / f"s{seed}-b",
                lambda c: [c.requests[i] for i in order[c.dir.name][1::2]],  # noqa: B023  (run now)
            ),
            "resample 1": _rerun(cells, tmp_path / f"s{seed}-r1", lambda c: rng.choices(c.requests, k=len(c.requests))),  # noqa: B023
            "resample 2": _rerun(cells, tmp_path / f"s{seed}-r2", lambda c: rng.choices(c.requests, k=len(c.requests))),  # noqa: B023
        }
        verdicts = {label: {c.key: c.status for c in check_claims(load_cells([d]))} for label, d in runs.items()}
        for key in verdicts["half A"]:
            seen = {label: v[key] for label, v in verdicts.items()}
            assert not {REPRODUCED, NOT_REPRODUCED} <= set(seen.values()), (seed, key, seen)
            settled += any(s in (REPRODUCED, NOT_REPRODUCED) for s in seen.values())
    assert settled > 0, "no claim settled in any stand-in run: the check would pass vacuously"


def test_title_names_the_gpu_for_offloaded_cells_and_the_cpu_otherwise():
    """Published runs: the H200 pilot's cells had every layer on the GPU, the CPU run's none."""
    from rllm_study.report.build import _title

    root = Path(__file__).parents[2] / "reports"
    gpu = load_cells([next((root / "gpu-h200" / "pilot-1.5b").iterdir())])
    assert _title(gpu) == "rllm-study report: pilot on NVIDIA H200 (140 GiB)"
    cpu = load_cells([next(p for p in (root / "cpu-2core" / "pilot").iterdir() if p.is_dir() and p.name != "report")])
    assert "H200" not in _title(cpu) and _title(cpu).startswith("rllm-study report: pilot on ")


def test_labels_of_direct_cells_say_they_have_no_think_budget():
    """A published run mixing reasoning cells (think budget 480) and direct ones (none)."""
    from rllm_study.report.cells import varying_label

    cells = load_cells([Path(__file__).parents[2] / "reports" / "gpu-h200" / "pilot-1.5b"])
    labels = [varying_label(cells, c) for c in cells]
    assert not any("None" in label for label in labels)
    assert {("no think budget" in label) for label in labels} == {True, False}


def test_think_budget_rows_pool_their_repeats():
    """The think-budget table pools a cap's repeats (the published H200 sweep: 3 repeats of 50
    GSM8K requests a cap): counts add up, and latency percentiles are over all the requests."""
    import numpy as np

    from rllm_study.report.cells import pooled_metrics, think_budget_groups

    run = Path(__file__).parents[2] / "reports" / "gpu-h200" / "think-budget-standard"
    cells = load_cells(
        [p for p in run.iterdir() if "__gsm8k__" in p.name and ("__tb64__" in p.name or "__tb128__" in p.name)]
    )
    (by_budget,) = think_budget_groups(cells).values()
    assert [len(cs) for cs in by_budget] == [3, 3]
    for cs in by_budget:
        acc = pooled_metrics(cs)["accuracy"]["overall"]
        assert acc["total"] == sum(c.metrics["accuracy"]["overall"]["total"] for c in cs) == 150
        assert acc["correct"] == sum(c.metrics["accuracy"]["overall"]["correct"] for c in cs)
        e2el = [r["finish_s"] - r["arrival_s"] for c in cs for r in c.cell.requests]
        assert pooled_metrics(cs)["latency"]["e2el_s"]["p50"] == pytest.approx(float(np.percentile(e2el, 50)))


@pytest.mark.parametrize("decades", [0.4, 1.0, 2.0, 3.6, 5.0, 8.0])
def test_ratio_axis_ticks_do_not_crowd(decades):
    """The compare figure's log axis (ratios from 0.01x to 50x once crowded seven labels into two
    decades): at most 10 ticks, at most three a decade past 1.2 decades, 1x always among them."""
    lo, hi = 10 ** (-decades / 2), 10 ** (decades / 2)
    ticks = _log_ticks(lo, hi)
    assert ticks == sorted(ticks) and all(lo <= t <= hi for t in ticks) and 1.0 in ticks
    assert 3 <= len(ticks) <= 10 or decades < 0.5
    assert len(ticks) <= 1 + 3 * decades or decades <= 1.2
