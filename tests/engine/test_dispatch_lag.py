"""Dispatch lag: each request's actual send time beside its scheduled arrival, in requests.jsonl,
the metric registry and the report; made visible by a runner kept late by a slow engine step."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import THREADS
from rllm_study.analysis.metrics import DISPATCH_LAG_BOUND_S, METRICS, cell_metrics, request_metrics
from rllm_study.running.results import Cell, CellWriter, read_cell
from rllm_study.running.runner import CellRun, EnginePool, build_jobs
from rllm_study.running.spec import expand
from rllm_study.workloads.arrivals import make_arrivals
from rllm_study.workloads.grading import GradingProcess
from scripted_engine import run_scripted

STEP_DELAY_S = 0.4  # each engine step made this much slower
RATE = 20.0  # constant arrivals 50 ms apart: several come due during one slowed step


def _run_cell(tmp_path: Path, slow: bool) -> Cell:
    spec = {
        "name": "lag",
        "models": ["smollm2-135m"],
        "datasets": {"gsm8k": 4},
        "max_tokens": [4],
        "prompt_modes": ["direct"],
        "engine": {"threads": THREADS, "concurrency": 4},
        "workload": {"arrival": "constant", "rate": RATE},
    }
    (cell,) = expand(spec, "test")
    pool, grader = EnginePool(), GradingProcess()
    try:
        engine = pool.get(cell)
        if slow:
            step = engine.step

            def slow_step():
                time.sleep(STEP_DELAY_S)
                return step()

            engine.step = slow_step
        jobs = build_jobs(cell, engine)
        writer = CellWriter(tmp_path / cell.name)
        writer.write_manifest({"cell": cell.as_dict()})
        run = CellRun(cell, engine, jobs, writer, grader)
        try:
            run.run()
        finally:
            writer.close()
        cell_dir = tmp_path / cell.name
        return read_cell(cell_dir), run.lag_warning()
    finally:
        pool.close()
        grader.close()


def test_a_slow_engine_step_shows_as_dispatch_lag(tmp_path, smollm2_path):
    (cell, warning) = _run_cell(tmp_path, slow=True)
    scheduled = make_arrivals("constant", 4, rate=RATE).times
    reqs = sorted(cell.requests, key=lambda r: r["arrival_s"])
    assert [r["arrival_s"] for r in reqs] == pytest.approx(
        list(scheduled), abs=2e-3
    )  # arrival stays the scheduled time
    lags = [r["sent_s"] - r["arrival_s"] for r in reqs]
    assert all(lag >= 0 for lag in lags)
    # request 0 is sent at once and its first step sleeps STEP_DELAY_S: requests 1..3 come due
    # during it and go out only after it ends, at 0.4 s or later
    assert all(r["sent_s"] >= STEP_DELAY_S for r in reqs[1:])
    assert max(lags) >= STEP_DELAY_S - 0.05 - 1e-3
    metrics = cell_metrics(cell)
    lag = metrics["arrivals"]["dispatch_lag_s"]
    assert lag["count"] == 4 and lag["p99"] > DISPATCH_LAG_BOUND_S
    assert warning is not None and "dispatch lag p99" in warning and "n=4" in warning


def test_a_quick_engine_gets_every_request_on_time(tmp_path):
    """The runner's own part: with engine steps of 2 ms (the scripted engine), each request goes out
    within the bound of its scheduled arrival, and the run does not warn. A runner that sends late
    (scripts/mutate.py's "runner: requests sent late") fails here; the slow-step test above cannot
    tell, since a late runner only adds to the lag it expects."""
    spec = {
        "name": "on-time",
        "datasets": {"gsm8k": 8},
        "max_tokens": [8],
        "prompt_modes": ["direct"],
        "engine": {"concurrency": 8},
        "workload": {"arrival": "constant", "rate": RATE},
    }
    (cell_dir,) = run_scripted(tmp_path, spec, step_s=0.002)
    cell = read_cell(cell_dir)
    assert [r["arrival_s"] for r in sorted(cell.requests, key=lambda r: r["arrival_s"])] == pytest.approx(
        list(make_arrivals("constant", 8, rate=RATE).times), abs=2e-3
    )
    lags = [r["sent_s"] - r["arrival_s"] for r in cell.requests]
    assert min(lags) >= 0 and max(lags) <= DISPATCH_LAG_BOUND_S, lags
    assert cell_metrics(cell)["arrivals"]["dispatch_lag_s"]["count"] == 8


def test_old_folders_without_sent_s_have_no_lag():
    old = {
        "id": "a",
        "arrival_s": 0.0,
        "admitted_s": 0.1,
        "first_token_s": 0.2,
        "finish_s": 0.5,
        "output_tokens": 3,
        "finish_reason": "stop",
    }
    new = {**old, "id": "b", "sent_s": 0.25}
    cell = Cell(Path("."), {"cell": {"name": "x"}}, [old, new])
    rows = {r["id"]: r for r in request_metrics(cell)}
    assert rows["a"]["dispatch_lag_s"] is None and rows["b"]["dispatch_lag_s"] == pytest.approx(0.25)
    assert cell_metrics(cell)["arrivals"]["dispatch_lag_s"]["count"] == 1
    assert METRICS["dispatch_lag_s"].formula == "sent_s - arrival_s" and METRICS["dispatch_lag_s"].unit == "s"


def test_report_warns_about_late_cells(tmp_path):
    from rllm_study.report.build import dispatch_lag_section
    from rllm_study.report.cells import CellData

    def cell(name: str, lag: float) -> CellData:
        reqs = [
            {
                "id": f"{name}{i}",
                "arrival_s": float(i),
                "sent_s": i + lag,
                "admitted_s": i + lag,
                "first_token_s": i + 1.0,
                "finish_s": i + 2.0,
                "output_tokens": 3,
                "finish_reason": "stop",
            }
            for i in range(5)
        ]
        c = Cell(tmp_path / name, {"cell": {"name": name, "workload": {"arrival": "poisson", "rate": 1.0}}}, reqs)
        return CellData(c, cell_metrics(c), request_metrics(c))

    section = dispatch_lag_section([cell("prompt", 0.001), cell("late", 0.5)])
    text = " ".join(getattr(b, "text", "") for b in section.blocks)
    assert "Warning:" in text and "late (500" in text and "prompt (" not in text
    assert dispatch_lag_section([cell("prompt", 0.001)]).blocks[0].text.startswith("Dispatch lag =")
