"""Load sweeps: Pareto front and knee by their stated rules, and the sweep figure from a real run
(single report and --compare)."""

from __future__ import annotations

import shutil

from conftest import quick_preset, run_cli
from rllm_study.analysis.metrics import METRICS
from rllm_study.analysis.sweep import SweepPoint, knee, load_of, pareto_front
from rllm_study.report import REPORT_MD


def _p(load, thr, user, tpot):
    return SweepPoint(load, thr, user, tpot, None, 10, f"c{load}")


POINTS = [
    _p(1, 10.0, 10.0, 0.100),
    _p(2, 18.0, 9.0, 0.111),
    _p(4, 30.0, 7.5, 0.133),
    _p(8, 33.0, 4.0, 0.250),
    _p(16, 31.0, 2.0, 0.500),
]


def test_front_drops_dominated_points_and_knee_is_where_latency_outgrows_throughput():
    assert [p.load for p in pareto_front(POINTS)] == [1, 2, 4, 8]  # 16 is slower for users and for the machine than 8
    # 1->2: TPOT x1.11 < throughput x1.8; 2->4: x1.20 < x1.67; 4->8: x1.88 > x1.10: the knee is 4
    assert knee(POINTS).load == 4
    assert knee(POINTS[:3]).load == 4  # never outgrown: the last point
    assert knee(POINTS[:1]) is None
    assert {"user_tok_s", "pareto_front", "sweep_knee"} <= set(METRICS)
    assert load_of({"arrival": "closed", "concurrency": 4}) == ("concurrency", 4.0)
    assert load_of({"arrival": "poisson", "rate": 0.5}) == ("rate", 0.5)
    assert load_of({"arrival": "replay", "trace": "x.jsonl"}) is None


def test_sweep_figure_from_a_real_run_and_a_comparison(tmp_path, smollm2_path):
    out = tmp_path / "sweep"
    proc = run_cli(
        "run", *quick_preset("load-sweep", "datasets={gsm8k=3}", "workload.concurrency=[1, 3]"), "--out", out
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_cli("report", out, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr[-3000:]
    md = (tmp_path / "report" / REPORT_MD).read_text()
    section = md.split("## Load sweeps", 1)[1].split("\n## ", 1)[0]
    assert "| concurrency | n | out tok/s | per-user tok/s p50 |" in section
    rows = [line for line in section.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and sum("knee" in r for r in rows) == 1
    assert list((tmp_path / "report" / "figures").glob("sweep-*.png"))
    shutil.copytree(out, tmp_path / "again")
    compare = run_cli("report", out, tmp_path / "again", "--compare", "--out", tmp_path / "compare")
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert "## Load sweeps" in (tmp_path / "compare" / REPORT_MD).read_text()
    assert list((tmp_path / "compare" / "figures").glob("compare-sweep-*.png"))
