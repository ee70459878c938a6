"""`rllm-study import {aiperf,guidellm,vllm-bench}` (issue 29, Deliver 3).

tests/data/peers/aiperf/ and tests/data/peers/guidellm/ were written by the tools themselves
(aiperf 0.13.0 and guidellm 0.8.1 from PyPI, 4 requests each of 32 prompt and 12 output tokens
against `python -m llama_cpp.server` serving SmolLM2 on this 2-core machine, busy at the time:
hence the long latencies). tests/data/peers/vllm_bench_detailed.json is written from the
`--save-result --save-detailed` schema of vLLM's benchmarks/serve.py (vllm does not serve here),
with one failed request and chunks holding several tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import one_line_error, run_cli
from rllm_study.analysis.metrics import cell_metrics, request_metrics
from rllm_study.errors import UserError
from rllm_study.peers import import_export
from rllm_study.running.results import read_cell

DATA = Path(__file__).parents[1] / "data" / "peers"


def _rows(cell_dir: Path) -> dict[str, dict]:
    cell = read_cell(cell_dir)
    return {r["id"]: r for r in request_metrics(cell)}


def test_aiperf_export_keeps_its_own_figures(tmp_path):
    source = DATA / "aiperf" / "profile_export.jsonl"
    (cell_dir,) = import_export("aiperf", source, tmp_path)
    rows = _rows(cell_dir)
    records = [json.loads(line) for line in source.read_text().splitlines()]
    assert len(rows) == len(records) == 4
    for rec in records:
        m, row = rec["metrics"], rows[rec["metadata"]["x_request_id"]]
        assert row["ttft_s"] == pytest.approx(m["time_to_first_token"]["value"] / 1e3, abs=1e-9)
        assert row["e2el_s"] == pytest.approx(m["request_latency"]["value"] / 1e3, abs=1e-9)
        # AIPerf's "inter_token_latency" is our per-request TPOT: (E2EL - TTFT) / (OSL - 1)
        assert row["tpot_s"] == pytest.approx(m["inter_token_latency"]["value"] / 1e3, rel=1e-9)
        assert row["output_tokens"] == m["output_sequence_length"]["value"]
    cell = read_cell(cell_dir)
    manifest = cell.manifest
    assert manifest["imported"]["with_token_times"] == 4  # one token a chunk: every chunk time kept
    assert manifest["cell"]["model"] == "smollm2" and manifest["imported"]["facts"]["version"] == "0.13.0"
    assert manifest["cell"]["workload"] == {"arrival": "closed", "concurrency": 1}  # AIPerf's --concurrency 1
    # pooled ITL: the chunk gaps AIPerf measured, exactly
    gaps = sorted(g / 1e3 for rec in records for g in rec["metrics"]["inter_chunk_latency"]["value"])
    itl = cell_metrics(cell)["latency"]["itl_s"]
    assert itl["count"] == len(gaps) and itl["max"] == pytest.approx(gaps[-1])
    acc = cell_metrics(cell)["accuracy"]["overall"]
    assert acc["accuracy"] is None  # not graded


def test_guidellm_export_keeps_its_own_figures(tmp_path):
    source = DATA / "guidellm" / "benchmarks.json"
    (cell_dir,) = import_export("guidellm", source, tmp_path, name="same-workload")
    assert cell_dir.name == "same-workload"
    rows = _rows(cell_dir)
    for req in json.loads(source.read_text())["benchmarks"][0]["requests"]["successful"]:
        row = rows[req["request_id"]]
        assert row["ttft_s"] == pytest.approx(req["time_to_first_token_ms"] / 1e3, abs=1e-9)
        # GuideLLM's "inter_token_latency_ms" is our TPOT; its "time_per_output_token_ms" is not
        # ((last token - start) / output tokens: TTFT spread over every token)
        assert row["tpot_s"] == pytest.approx(req["inter_token_latency_ms"] / 1e3, rel=1e-9)
        assert row["output_tokens"] == req["output_tokens"] == 12
    manifest = read_cell(cell_dir).manifest
    assert manifest["imported"]["with_token_times"] == 0
    assert any("no per-chunk times" in n for n in manifest["imported"]["notes"])
    assert cell_metrics(read_cell(cell_dir))["latency"]["itl_s"]["count"] == 0  # absent, not invented


def test_vllm_bench_export_with_a_failure_and_multi_token_chunks(tmp_path):
    (cell_dir,) = import_export("vllm-bench", DATA / "vllm_bench_detailed.json", tmp_path)
    cell = read_cell(cell_dir)
    by_id = {r["id"]: r for r in cell.requests}
    assert [by_id[f"vllm-bench-0000{i}"]["finish_reason"] for i in range(4)] == ["stop", "stop", "stop", "error"]
    assert by_id["vllm-bench-00003"]["error"] == "Internal Server Error"
    assert by_id["vllm-bench-00002"]["arrival_s"] == pytest.approx(0.3)
    rows = _rows(cell_dir)
    assert rows["vllm-bench-00000"]["e2el_s"] == pytest.approx(0.2 + 0.16)
    assert rows["vllm-bench-00001"]["tpot_s"] == pytest.approx(0.2 / 4)  # (E2EL - TTFT) / (5 - 1)
    assert cell.manifest["imported"]["with_token_times"] == 1  # 4 tokens in 4 chunks; the others are not 1:1
    assert cell.manifest["cell"]["model"] == "Qwen/QwQ-32B"
    assert cell.manifest["cell"]["workload"] == {"arrival": "closed", "concurrency": 2}  # rate inf, max_concurrency 2
    m = cell_metrics(cell)
    assert m["n_requests"] == 4 and m["finish_reasons"] == {"stop": 3, "error": 1}


@pytest.mark.parametrize(
    "tool,text,needle",
    [
        ("aiperf", '{"metrics": {}}\n', "not an AIPerf"),
        ("guidellm", '{"x": 1}', "not a GuideLLM"),
        ("vllm-bench", '{"ttfts": [0.1]}', "--save-detailed"),
        (
            "vllm-bench",
            json.dumps({k: [1] for k in ("input_lens", "output_lens", "ttfts", "itls", "errors")}),
            "start_times",
        ),
        ("guidellm", '{"benchmarks": []}', "no runs found"),
        ("guidellm", '{"benchmarks": [1]}', "not a list of objects"),
        (
            "vllm-bench",
            json.dumps(
                {
                    **{k: [1] for k in ("input_lens", "output_lens", "ttfts", "errors")},
                    "itls": [["x"]],
                    "start_times": [1],
                }
            ),
            "request 0: ValueError",
        ),
    ],
)
def test_wrong_files_are_one_line_errors(tmp_path, tool, text, needle):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(UserError, match=needle):
        import_export(tool, bad, tmp_path / "out")
    proc = run_cli("import", tool, bad, "--out", tmp_path / "out2")
    one_line_error(proc, str(bad), needle)


def test_report_compare_puts_an_imported_run_beside_another(tmp_path):
    """Two tools' runs of the same workload, imported under one cell name, side by side."""
    for tool, source, out in (
        ("aiperf", DATA / "aiperf" / "profile_export.jsonl", "a"),
        ("guidellm", DATA / "guidellm" / "benchmarks.json", "g"),
    ):
        proc = run_cli("import", tool, source, "--out", tmp_path / out, "--name", "smollm2-c1-32in-12out")
        assert proc.returncode == 0, proc.stderr
    summary = run_cli("summarize", tmp_path / "a")
    assert summary.returncode == 0, summary.stderr
    assert "smollm2-c1-32in-12out" in summary.stdout
    rep = run_cli("report", tmp_path / "a", tmp_path / "g", "--compare", "--out", tmp_path / "rep")
    assert rep.returncode == 0, rep.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "smollm2-c1-32in-12out" in text
