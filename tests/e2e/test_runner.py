"""The study runner end to end on the real SmolLM2 model: presets, arrivals, resume after SIGKILL, spec errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import CLI, REPO, THREADS, run_cli
from rllm_study.running.results import read_cell, read_jsonl
from rllm_study.workloads.arrivals import make_arrivals

TINY = ["-m", "smollm2-135m", "-t", str(THREADS), "--set", "max_tokens=[32]"]
REQUIRED = (
    "id",
    "dataset",
    "item_id",
    "arrival_s",
    "admitted_s",
    "first_token_s",
    "first_answer_token_s",
    "finish_s",
    "prompt_tokens",
    "output_tokens",
    "think_tokens",
    "answer_tokens",
    "finish_reason",
    "extracted_answer",
    "correct",
    "correct_lenient",
    "parse_status",
)


@pytest.fixture(scope="module")
def pilot_run(tmp_path_factory, smollm2_path):
    out = tmp_path_factory.mktemp("pilot")
    joules = out.parent / "joules.py"  # an --energy-cmd helper: a 10 W machine (test_energy.py tests the meters)
    joules.write_text("import time\nprint(time.time() * 10)\n")
    proc = run_cli(
        "run",
        "--preset",
        "pilot",
        "--quick",
        *TINY,
        "--set",
        "datasets={gsm8k=4, gpqa-diamond=2}",
        "--set",
        "workload.batch_size=2",
        "--energy-cmd",
        f"{sys.executable} {joules}",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_quick_pilot_end_to_end(pilot_run):
    out, proc = pilot_run
    cells = sorted(p for p in out.iterdir() if p.is_dir())
    assert [c.name.split("__")[1:3] for c in cells] == [
        ["gpqa-diamond", "direct"],
        ["gpqa-diamond", "reasoning"],
        ["gsm8k", "direct"],
        ["gsm8k", "reasoning"],
    ]
    for c in cells:
        cell = read_cell(c)
        assert len(cell.requests) == (2 if "gpqa" in c.name else 4)
        for r in cell.requests:
            assert all(k in r for k in REQUIRED)
            assert r["arrival_s"] <= r["admitted_s"] <= r["first_token_s"] <= r["finish_s"]
            assert r["output_tokens"] == r["think_tokens"] + r["answer_tokens"] == len(cell.tokens[r["id"]]["t_s"])
        assert {r["batch"] for r in cell.requests} == set(range(len(cell.requests) // 2))
        assert cell.timeline and all(0 <= t["kv_used"] <= t["kv_capacity"] for t in cell.timeline)
        assert cell.timeline[-1]["energy_j"] > 0 and cell.manifest["energy_meters"] == ["cmd"]
        m = cell.manifest
        assert m["model"]["sha256"] and m["hardware"]["cores_logical"] and m["versions"]["llama-cpp-python"]
        assert m["engine"]["context"]["max_seqs"] == 2 and m["cell"]["max_tokens"] == 32
        for (
            r
        ) in cell.requests:  # reasoning starts inside <think>: think tokens, then answer tokens; direct: answer only
            phases = cell.tokens[r["id"]]["phase"]
            assert re.fullmatch("t+a*" if "reasoning" in c.name else "a+", phases), phases
            assert (phases.count("t"), phases.count("a")) == (r["think_tokens"], r["answer_tokens"])
    assert "ASU per cell" in proc.stdout and "smollm2-135m__gsm8k__reasoning" in proc.stdout


def test_cells_record_their_machine_speed_and_run_interleaved(pilot_run):
    out, _ = pilot_run
    order = {}
    for c in (p for p in out.iterdir() if p.is_dir()):
        cell = read_cell(c)
        # a calibration decode on the cell's own engine just before its first request and just after its last
        assert [x["when"] for x in cell.calibration] == ["before", "after"], cell.calibration
        assert all(x["tokens"] >= 2 and x["tok_s"] > 0 and x["session"] == 0 for x in cell.calibration)
        assert not any(r["id"].startswith("calibration") for r in cell.requests)
        order[tuple(c.name.split("__")[1:3])] = cell.manifest["run_order"]
    # reasoning and direct twins run next to each other, data set by data set
    assert {k: v["position"] for k, v in order.items()} == {
        ("gsm8k", "reasoning"): 1,
        ("gsm8k", "direct"): 2,
        ("gpqa-diamond", "reasoning"): 3,
        ("gpqa-diamond", "direct"): 4,
    }
    assert {v["of"] for v in order.values()} == {4}


def test_repeats_rotate_the_order_of_the_compared_conditions():
    from rllm_study.running.spec import expand

    spec = {
        "models": ["m"],
        "datasets": {"gsm8k": 1, "aime24": 1},
        "prompt_modes": ["reasoning", "direct"],
        "repeats": 2,
        "max_tokens": [16, 32],
        "variants": [{"name": "a"}, {"name": "b"}],
    }
    names = [c.name.removeprefix("m__") for c in expand(spec, "s.toml")]
    assert names[:4] == [
        "a__gsm8k__reasoning__mt16__batch8__r0",
        "a__gsm8k__direct__mt16__batch8__r0",
        "a__gsm8k__reasoning__mt32__batch8__r0",
        "a__gsm8k__direct__mt32__batch8__r0",
    ]
    assert names[8:10] == ["b__gsm8k__reasoning__mt16__batch8__r0", "b__gsm8k__direct__mt16__batch8__r0"]
    # repeat 1 runs variant b first, and each pair direct first
    assert names[16:18] == ["b__gsm8k__direct__mt16__batch8__r1", "b__gsm8k__reasoning__mt16__batch8__r1"]
    assert names[24] == "a__gsm8k__direct__mt16__batch8__r1" and len(names) == 32


def test_summarize_reads_the_run(pilot_run):
    out, _ = pilot_run
    proc = run_cli("summarize", out, "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == 4
    for c, r in zip(sorted(p for p in out.iterdir() if p.is_dir()), results):  # recomputed from the raw lines
        rows = read_jsonl(c / "requests.jsonl")
        span = max(x["finish_s"] for x in rows) - min(x["arrival_s"] for x in rows)
        assert r["n_requests"] == len(rows)
        assert r["throughput"]["output_tok_s"] == pytest.approx(sum(x["output_tokens"] for x in rows) / span)
        assert 5 < r["energy"]["avg_power_w"] < 20  # the --energy-cmd machine's 10 W: a cell's ends are read fresh


def test_report_of_the_real_pilot(pilot_run, tmp_path):
    """The report of a real model's run (tests/unit/test_report.py checks reports in depth on scripted runs):
    its sections, claims and the model's honest label from the manifest's model facts."""
    from rllm_study.report import REPORT_MD, write_report

    out, _ = pilot_run
    write_report([out], tmp_path / "report")
    md = (tmp_path / "report" / REPORT_MD).read_text()
    assert re.findall(r"^## (.+)$", md, re.M)[:2] == ["Setup", "Claims"] and "## Appendix: metrics" in md
    assert "SmolLM2-135M-Instruct Q4_1 prompted to reason; not a trained reasoning model" in md
    assert "| Memory use and fluctuation |" in md and (tmp_path / "report" / "report.html").stat().st_size > 0


def test_open_loop_requests_arrive_at_their_scheduled_times(tmp_path, smollm2_path):
    proc = run_cli(
        "run",
        "--preset",
        "realworld",
        "--quick",
        *TINY,
        "--set",
        "datasets={gsm8k=5}",
        "--set",
        "workload.cv=[2.0]",
        "--set",
        "workload.rate=2.0",
        "--out",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (cell_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    cell = read_cell(cell_dir)
    expected = make_arrivals("gamma", 5, rate=2.0, cv=2.0, seed=0).times
    got = sorted(r["arrival_s"] for r in cell.requests)
    assert got == pytest.approx(list(expected), abs=2e-3)
    assert all(r["admitted_s"] >= r["sent_s"] >= r["arrival_s"] for r in cell.requests)  # sent at or after its time
    # the schedule above is what the runner wrote; that it was kept: 5 requests never fill the engine's 8
    # sequences, so each is admitted at the first step boundary after its arrival (a step in progress
    # ends at its next recorded token), never held back longer
    events = sorted(t for row in cell.tokens.values() for t in row["t_s"])
    for r in cell.requests:
        step_end = next((t for t in events if t >= r["arrival_s"]), r["arrival_s"])
        assert r["admitted_s"] <= max(step_end, r["arrival_s"]) + 0.5, (
            r["id"],
            r["arrival_s"],
            r["admitted_s"],
            step_end,
        )


def test_each_cell_starts_with_an_empty_prefix_cache(tmp_path, smollm2_path):
    """Repeats send the same prompts: a cache kept from the cell before would serve repeat 1's
    first request from repeat 0's (it did, before cells got fresh engines)."""
    proc = run_cli(
        "run",
        "--preset",
        "prefix-cache",
        "--quick",
        *TINY,
        "--set",
        "datasets={gsm8k=2}",
        "--set",
        "repeats=2",
        "--set",
        "workload={arrival='closed', concurrency=1}",
        "--set",
        'variants=[{name="on", engine={prefix_cache=true}}]',
        "--out",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    cells = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [c.name[-2:] for c in cells] == ["r0", "r1"]
    for cell_dir in cells:
        first, second = sorted(read_jsonl(cell_dir / "requests.jsonl"), key=lambda r: r["admitted_s"])
        assert first["cached_tokens"] == 0, cell_dir.name  # nothing cached when a cell starts
        assert second["cached_tokens"] > 0  # the cache works within the cell (the chat template's opening)


def test_like_reruns_the_specs_a_folder_recorded(tmp_path, smollm2_path):
    """A folder grown by a second command (one cell given more requests) holds two specs; --like
    runs each cell again with its own, so the copy has the same cells and requests (the way a CPU
    run is repeated on a GPU for report --compare)."""
    first, copy = tmp_path / "first", tmp_path / "copy"
    base = [
        "run",
        "--preset",
        "pilot",
        "--quick",
        *TINY,
        "--set",
        "datasets={gsm8k=2}",
        "--set",
        "workload.batch_size=2",
    ]
    assert run_cli(*base, "--out", first).returncode == 0
    grown = run_cli(*base, "--set", "datasets={gsm8k=3}", "--set", 'prompt_modes=["direct"]', "--out", first)
    assert grown.returncode == 0, grown.stderr
    proc = run_cli("run", "--like", first, "-t", "1", "--out", copy)
    assert proc.returncode == 0, proc.stderr
    assert "(spec 1 of 2, recorded by 1 cell)" in proc.stderr and "(spec 2 of 2, recorded by 1 cell)" in proc.stderr
    cells = sorted(p.name for p in first.iterdir() if p.is_dir())
    assert sorted(p.name for p in copy.iterdir() if p.is_dir()) == cells and len(cells) == 2
    for name in cells:
        a, b = read_cell(first / name, with_tokens=False), read_cell(copy / name, with_tokens=False)
        assert sorted((r["id"], r["item_id"]) for r in a.requests) == sorted(
            (r["id"], r["item_id"]) for r in b.requests
        )
        assert len(b.requests) == (3 if "gsm8k__direct" in name else 2)
        assert b.manifest["engine"]["context"]["n_threads"] == 1  # flags apply on top of the recorded spec
    renamed = run_cli("run", "--like", first, "-m", "qwen2.5-coder-0.5b", "--out", tmp_path / "x", "--dry-run")
    assert renamed.returncode == 0, (
        renamed.stderr
    )  # a flag that renames the cells keeps them: the same two, on the 0.5B
    assert sorted(line for line in renamed.stdout.splitlines() if "qwen" in line) == [
        c.replace("smollm2-135m", "qwen2.5-coder-0.5b") for c in cells
    ]
    whole = run_cli(
        "run",
        "--like",
        REPO / "reports" / "cpu-2core" / "kv-cache-gsm8k64",
        "--set",
        "max_tokens=[64]",
        "--out",
        tmp_path / "y",
        "--dry-run",
    )  # a folder holding its whole grid: --set reshapes all of it
    assert whole.returncode == 0, whole.stderr
    assert len([line for line in whole.stdout.splitlines() if "__mt64__" in line]) == 3
    for args, needle in (
        ([tmp_path / "none"], "does not exist"),
        ([first, "--quick"], "drop --quick"),
        ([first, "--set", "max_tokens=[16]"], "holds 1 of the 2 cells its spec makes"),
    ):
        bad = run_cli("run", "--like", *args, "--out", tmp_path / "x", "--dry-run")
        assert bad.returncode == 2 and needle in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, smollm2_path):
    args = [
        *CLI,
        "run",
        "--preset",
        "realworld",
        "--quick",
        *TINY,
        "--set",
        "datasets={gsm8k=10}",
        "--set",
        "workload={arrival='closed', concurrency=2}",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    req_files = []
    while time.time() < deadline:
        req_files = list(tmp_path.glob("*/requests.jsonl"))
        if req_files and len(read_jsonl(req_files[0])) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_jsonl(req_files[0])
    assert 3 <= len(before) < 10
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = read_jsonl(req_files[0])
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids)) == 10
    assert after[: len(before)] == before  # nothing recorded before the kill changed
    assert {r["session"] for r in after} == {0, 1}
    tokens = {r["id"] for r in read_jsonl(req_files[0].parent / "tokens.jsonl")}
    assert tokens >= set(ids)
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "done already" in again.stderr


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("datasets = { gsm8k = 2 }\nbogus = 1\n", "unknown key bogus"),
        ("datasets = { gsm8k = 2 }\n[engine]\nthreads_typo = 2\n", "engine.threads_typo"),
        ("datasets = { nope = 2 }\n", "datasets.nope"),
        ("datasets = { gsm8k = 0 }\n", "datasets.gsm8k"),
        ("datasets = { gsm8k = 2 }\n[sampling]\ntop_p = 1.5\n", "sampling.top_p"),
        ('datasets = { gsm8k = 2 }\n[workload]\narrival = "sometimes"\n', "workload.arrival"),
        ('datasets = { gsm8k = 2 }\n[workload]\narrival = "gamma"\nrate = 0\ncv = 1\n', "workload.rate must be > 0"),
        (
            'datasets = { gsm8k = 2 }\n[workload]\narrival = "ramp"\nrate_start = 1\n',
            "workload.arrival = 'ramp' needs workload.rate_end",
        ),
        (
            'datasets = { gsm8k = 2 }\n[workload]\narrival = "poisson"\nrate = 1\nbatch_size = 4\n',
            "workload.batch_size does not apply",
        ),
        ("datasets = { gsm8k = 2 }\nmax_tokens = [0]\n", "max_tokens"),
        ("datasets = { gsm8k = 2 \n", "not valid TOML"),
    ],
)
def test_bad_spec_is_one_line_exit_2(tmp_path, spec, needle):
    path = tmp_path / "spec.toml"
    path.write_text(spec)
    proc = run_cli("run", path, "--out", tmp_path / "out", "--dry-run")
    assert proc.returncode == 2
    assert needle in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_unknown_preset_and_missing_spec(tmp_path):
    for args in (["--preset", "nope"], [tmp_path / "missing.toml"], []):
        proc = run_cli("run", *args, "--out", tmp_path, "--dry-run")
        assert proc.returncode == 2 and proc.stderr.startswith("error:")
