"""Combined techniques: the interaction rule (does a combination's effect equal the product of its
parts'?) on built cells, and the quick preset end to end on the real SmolLM2 model."""

from __future__ import annotations

from pathlib import Path

from conftest import quick_preset, run_cli
from rllm_study.report import REPORT_MD
from rllm_study.report.cells import load_cells
from rllm_study.report.claims import combinations, combined_techniques
from rllm_study.report.document import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED
from rllm_study.running.results import CellWriter

N = 60
VARIANTS = [{"name": "base"}, {"name": "kv"}, {"name": "spec"}, {"name": "both"}]
ENGINES = {
    "base": {},
    "kv": {"type_k": "q8_0", "type_v": "q8_0"},
    "spec": {"speculative": "ngram"},
    "both": {"type_k": "q8_0", "type_v": "q8_0", "speculative": "ngram"},
}


def _cell(root: Path, variant: str, span: float, repeat: int = 0) -> None:
    """N requests of 10 output tokens each, arriving at 0 and finishing over `span` seconds (so
    output tok/s = 10 N / span), all correct; `repeat` names one of a group's repeats."""
    name = f"gsm8k-{variant}-r{repeat}"
    w = CellWriter(root / name)
    w.write_manifest(
        {
            "cell": {
                "name": name,
                "study": "combined",
                "model": "m",
                "variant": variant,
                "dataset": "gsm8k",
                "prompt_mode": "reasoning",
                "max_tokens": 64,
                "repeat": repeat,
                "engine": ENGINES[variant],
                "workload": {"arrival": "closed", "concurrency": 4},
            },
            "model": {"quant": "Q4_K_M"},
            "spec": {"variants": VARIANTS},
        }
    )
    for i in range(N):
        finish = span * (0.5 + 0.5 * (i + 1) / N)
        rid = f"gsm8k/{i}"
        w.write_request(
            {
                "id": rid,
                "dataset": "gsm8k",
                "domain": "math",
                "batch": None,
                "arrival_s": 0.0,
                "admitted_s": 0.0,
                "first_token_s": 0.1,
                "first_answer_token_s": None,
                "finish_s": finish,
                "output_tokens": 10,
                "think_tokens": 10,
                "answer_tokens": 0,
                "finish_reason": "stop",
                "correct": True,
                "correct_lenient": True,
                "parse_status": "parsed",
            },
            {"id": rid, "t_s": [0.1], "token_ids": [1], "phase": "t", "draft": "0"},
        )
    w.close()


def test_interaction_rule(tmp_path):
    # KV alone x1.25 faster, n-gram alone x1.6: together x2.0 is their product (interaction 1.00)
    # three repeats (groups of cells): the interval is over groups, at least 3 of them
    for repeat in range(3):
        for variant, span in (("base", 20.0), ("kv", 16.0), ("spec", 12.5), ("both", 10.0)):
            _cell(tmp_path / "adds", variant, span, repeat)
    cells = load_cells([tmp_path / "adds"])
    (combo,) = combinations(cells)
    assert combo.variant == "both" and combo.techniques == ["KV-cache quantization", "speculative decoding"]
    claim = combined_techniques(cells)
    assert claim.status == REPRODUCED, claim
    numbers = dict(claim.numbers)
    assert numbers[
        "both (KV-cache quantization + speculative decoding): out tok/s interaction ratio (lower bound)"
    ].startswith("1.00x [")
    # together no faster than the baseline: interaction 1 / (1.25 x 1.6) = 0.50, settled against
    for repeat in range(3):
        for variant, span in (("base", 20.0), ("kv", 16.0), ("spec", 12.5), ("both", 20.0)):
            _cell(tmp_path / "clash", variant, span, repeat)
    # one group, however many requests, is one moment on the machine: inconclusive
    for variant, span in (("base", 20.0), ("kv", 16.0), ("spec", 12.5), ("both", 10.0)):
        _cell(tmp_path / "one", variant, span)
    assert combined_techniques(load_cells([tmp_path / "one"])).status == INCONCLUSIVE
    assert combined_techniques(load_cells([tmp_path / "clash"])).status == NOT_REPRODUCED
    # without the parts beside it a combination cannot be judged
    for variant, span in (("base", 20.0), ("both", 10.0)):
        _cell(tmp_path / "alone", variant, span)
    assert combined_techniques(load_cells([tmp_path / "alone"])).status == NOT_TESTED


def test_quick_combined_preset_runs_and_is_judged(tmp_path, smollm2_path):
    out = tmp_path / "combined"
    proc = run_cli("run", *quick_preset("combined", "datasets={gsm8k=2}"), "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([p for p in out.iterdir() if p.is_dir()]) == 4
    report = run_cli("report", out, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr[-3000:]
    md = (tmp_path / "report" / REPORT_MD).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| Combined techniques |"))
    assert "| not tested |" not in row and "out tok/s interaction ratio" in md
    assert list((tmp_path / "report" / "figures").glob("technique-combined*.png"))
