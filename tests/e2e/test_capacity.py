"""Capacity at a fixed KV memory budget: the cache sized in bytes holds more tokens of a smaller
type, so more requests run at once; checked end to end on the real SmolLM2 model with its claim."""

from __future__ import annotations

import pytest

from conftest import quick_preset, run_cli
from rllm_study.analysis.metrics import cell_metrics
from rllm_study.backends.llama_cpp.engine import kv_budget_cells
from rllm_study.errors import UserError
from rllm_study.report import REPORT_MD
from rllm_study.running.results import read_cell


def test_budget_in_bytes_becomes_cells():
    assert kv_budget_cells(1.0, 1024.0) == 1024
    assert kv_budget_cells(5.0, 23040.0) == 227  # smollm2-135m's f16 KV: 30 layers x 3 KV heads x 64 x (2 + 2) bytes
    with pytest.raises(UserError, match="holds 4 tokens"):
        kv_budget_cells(0.01, 2560.0)


def test_quantized_cache_runs_more_requests_in_the_same_bytes(tmp_path, smollm2_path):
    out = tmp_path / "cap"
    proc = run_cli("run", *quick_preset("kv-capacity", "datasets={gsm8k=3}"), "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = {p.name.split("__")[1]: read_cell(p) for p in out.iterdir() if p.is_dir()}
    f16, q8 = cells["kv-f16"], cells["kv-q8_0"]
    n_ctx = {k: c.manifest["engine"]["context"]["n_ctx"] for k, c in cells.items()}
    per_token = {k: c.manifest["engine"]["kv_bytes_per_token"] for k, c in cells.items()}
    for k in cells:  # each cache holds what 5 MiB buys at its own bytes per token (llama.cpp may round up to 256)
        assert kv_budget_cells(5.0, per_token[k]) <= n_ctx[k] < kv_budget_cells(5.0, per_token[k]) + 256
    assert per_token["kv-q8_0"] < per_token["kv-f16"] and n_ctx["kv-q8_0"] > n_ctx["kv-f16"]
    running = {k: cell_metrics(c)["memory"]["running"] for k, c in cells.items()}
    assert running["kv-q8_0"]["peak"] > running["kv-f16"]["peak"]  # more requests at once in the same bytes
    assert all(len(c.requests) == 3 for c in (f16, q8))
    report = run_cli("report", out, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr[-3000:]
    md = (tmp_path / "report" / REPORT_MD).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| KV capacity at a fixed memory budget |"))
    assert "| not tested |" not in row and "requests running at once, ratio to f16" in md
    kv_row = next(line for line in md.splitlines() if line.startswith("| KV-cache quantization |"))
    assert "| not tested |" in kv_row  # budget cells run at different concurrencies: not the at-one-concurrency claim
