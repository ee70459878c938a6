"""The generated reference pages (docs/specs.md, docs/metrics.md) are current, and say what they must."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rllm_study.analysis.metrics import METRICS
from rllm_study.backends import all_options
from rllm_study.reference import RENDER, metric_reference, spec_reference, stale_pages
from rllm_study.running.spec import SAMPLING_KEYS, SLO_KEYS, TOP_KEYS, VARIANT_KEYS, WORKLOAD_KEYS

ROOT = Path(__file__).resolve().parents[2]


def test_committed_pages_are_current():
    assert stale_pages(ROOT) == [], "run `.venv/bin/python scripts/gen_docs.py` and commit docs/"


def test_check_names_a_stale_page(tmp_path):
    for page, render in RENDER.items():
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text(render(), encoding="utf-8")
    assert stale_pages(tmp_path) == []
    (tmp_path / "docs/specs.md").write_text("old\n", encoding="utf-8")
    assert stale_pages(tmp_path) == ["docs/specs.md"]


def test_spec_page_has_every_key():
    page = spec_reference()
    for key in TOP_KEYS | SAMPLING_KEYS | SLO_KEYS | VARIANT_KEYS | WORKLOAD_KEYS:
        assert f"| `{key}` |" in page, key
    for meta in all_options().values():
        assert f"| `{meta.key}` | `{meta.flag}" in page, meta.key
    assert "| `speculative` | `--speculative` | text or unset | unset |" in page
    assert "| `prefix_cache` | `--prefix-cache/--no-prefix-cache` | boolean | false |" in page


def test_metric_page_has_every_metric():
    page = metric_reference()
    for m in METRICS.values():
        assert f"| `{m.name}` | {m.unit} |" in page, m.name
    assert "bootstrap_ci95" in METRICS  # defined in analysis/stats.py


def test_registry_is_whole_whatever_is_imported_first():
    """METRICS holds every definition (stats and bench ones too) after importing only metrics.py."""
    code = "from rllm_study.analysis.metrics import METRICS; print(sorted(METRICS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    for name in ("bootstrap_ci95", "newcombe_ci95", "ttft_s", "bench_server_ratio"):
        assert f"'{name}'" in out.stdout, name


def test_gen_docs_check_exit_code():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_docs.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
