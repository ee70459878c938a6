"""Multi-turn sessions: turns sent a think time after the previous answer, prompts carrying the
earlier turns with their thinking removed (or kept), per-turn figures and the multi-turn claim,
end to end on the real SmolLM2 model."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import THREADS, require_module, run_cli
from rllm_study.analysis.metrics import cell_metrics
from rllm_study.errors import UserError
from rllm_study.report import REPORT_MD
from rllm_study.running.results import read_cell
from rllm_study.running.spec import expand, load_spec
from rllm_study.workloads.arrivals import make_arrivals
from rllm_study.workloads.arrivals.base import SPEC

THINK_S = 0.3
SPEC_TEXT = f"""
name = "mt"
models = ["smollm2-135m"]
prompt_modes = ["reasoning"]
max_tokens = [16]
datasets = {{ gsm8k = 2 }}
[engine]
threads = {THREADS}
[workload]
arrival = "sessions"
turns = 2
think_time_s = {THINK_S}
concurrency = 2
[[variants]]
name = "off"
engine = {{ prefix_cache = false }}
[[variants]]
name = "on"
engine = {{ prefix_cache = true }}
[[variants]]
name = "on-keep"
engine = {{ prefix_cache = true }}
workload = {{ keep_thinking = true }}
"""


def test_session_parameters_are_checked_as_spec_keys():
    timing = make_arrivals("sessions", 3, naming=SPEC, turns=4, think_time_s=0.0, session_rate=2.0)
    assert timing.turns == 4 and timing.starts.times[0] == 0.0 and len(timing.starts.times) == 3
    with pytest.raises(UserError, match="workload.keep_thinking must be true or false"):
        make_arrivals("sessions", 3, naming=SPEC, keep_thinking=1)
    with pytest.raises(UserError, match="workload.think_time_s must be a number of seconds >= 0"):
        make_arrivals("sessions", 3, naming=SPEC, think_time_s=-1)


def test_multi_turn_preset_quick_size_expands():
    spec, where = load_spec(preset="multi-turn", quick=True)
    cells = expand(spec, where)
    assert [c.variant for c in cells] == ["off", "on"]
    assert all(c.workload["arrival"] == "sessions" and c.samples == 4 for c in cells)


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2_path):
    root = tmp_path_factory.mktemp("mt")
    (root / "mt.toml").write_text(SPEC_TEXT)
    proc = run_cli("run", root / "mt.toml", "--out", root / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_cli("report", root / "out", "--out", root / "report")
    assert report.returncode == 0, report.stderr[-3000:]
    cells = {p.name.split("__")[1]: read_cell(p) for p in (root / "out").iterdir() if p.is_dir()}
    return cells, (root / "report" / REPORT_MD).read_text(), root


def _by_turn(cell) -> dict[tuple[str, int], dict]:
    return {(r["session_id"], r["turn"]): r for r in cell.requests}


def test_turns_follow_their_answers_after_the_think_time(run):
    cells, _, _ = run
    for cell in cells.values():
        turns = _by_turn(cell)
        assert sorted(turns) == [("gsm8k/0000", 1), ("gsm8k/0000", 2), ("gsm8k/0001", 1), ("gsm8k/0001", 2)]
        for session in ("gsm8k/0000", "gsm8k/0001"):
            first, second = turns[(session, 1)], turns[(session, 2)]
            assert second["id"] == f"{session}/t2" and second["item_id"] == session
            assert second["arrival_s"] == pytest.approx(
                first["finish_s"] + THINK_S, abs=1e-5
            )  # scheduled: answer + think time
            assert second["sent_s"] >= second["arrival_s"]
            assert second["prompt_tokens"] > first["prompt_tokens"]  # the earlier turn rides along
            assert second["correct"] is not None  # every turn is graded


def test_thinking_is_removed_from_later_prompts_unless_kept(run):
    """Turn 2's prompt = turn 1's + (turn 1's answer without its thinking, or its whole output when
    kept) + the follow-up: what it grew by beyond that is the same follow-up in both cells."""
    cells, _, _ = run
    for session in ("gsm8k/0000", "gsm8k/0001"):
        removed, kept = _by_turn(cells["on"]), _by_turn(cells["on-keep"])
        r1, r2 = removed[(session, 1)], removed[(session, 2)]
        k1, k2 = kept[(session, 1)], kept[(session, 2)]
        assert r1["think_tokens"] > 0 and k1["think_tokens"] > 0
        follow_up_removed = r2["prompt_tokens"] - r1["prompt_tokens"] - r1["answer_tokens"]
        follow_up_kept = k2["prompt_tokens"] - k1["prompt_tokens"] - k1["output_tokens"]
        assert abs(follow_up_removed - follow_up_kept) <= 4, (follow_up_removed, follow_up_kept)


def test_cache_serves_later_turns_and_the_report_says_so(run):
    cells, md, _ = run
    off, on = _by_turn(cells["off"]), _by_turn(cells["on"])
    assert all(r["cached_tokens"] == 0 for r in off.values())
    assert all(on[(s, 2)]["cached_tokens"] >= 16 for s in ("gsm8k/0000", "gsm8k/0001"))  # turn 1's prompt reused
    by_turn = cell_metrics(cells["on"])["turns"]["by_turn"]
    assert by_turn["1"]["n"] == 2 and by_turn["2"]["reuse"] > 0
    assert "## Multi-turn sessions" in md
    row = next(line for line in md.splitlines() if line.startswith("| Multi-turn prefix caching |"))
    assert "| not tested |" not in row  # the claim is decided (at this size: inconclusive or settled)
    assert "TTFT p50 ratio on / off, turns >= 2" in md


def test_an_interrupted_session_resumes_from_its_first_unfinished_turn(run):
    """A cell cut off after its first turns (their requests.jsonl lines kept, the rest lost, as a
    kill leaves it) resumes: each session's turn 2 is sent with the recorded turn-1 answer as its
    history, so its prompt is the one the uninterrupted run sent; nothing finished is lost or doubled."""
    cells, _, root = run
    copy = root / "resumed"
    shutil.copytree(root / "out", copy)
    (cell_dir,) = [p for p in copy.iterdir() if "__on__" in p.name]
    lines = (cell_dir / "requests.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["turn"] == 1]
    (cell_dir / "requests.jsonl").write_text("".join(line + "\n" for line in kept))
    proc = run_cli("run", root / "mt.toml", "--out", copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("done already") == 2  # the other two cells were complete
    resumed = read_cell(cell_dir)
    assert sorted(r["id"] for r in resumed.requests) == sorted(r["id"] for r in cells["on"].requests)
    assert [json.loads(line) for line in kept] == resumed.requests[:2]  # the kept lines stay as they were
    before, after = _by_turn(cells["on"]), _by_turn(resumed)
    for session in ("gsm8k/0000", "gsm8k/0001"):
        assert after[(session, 2)]["session"] == 1
        assert after[(session, 2)]["prompt_tokens"] == before[(session, 2)]["prompt_tokens"]


@pytest.mark.mlx
def test_multi_turn_sessions_on_mlx_reuse_earlier_turns(tmp_path, smollm2_path):
    """The same driver on the MLX backend (its prompt cache): later turns carry the earlier ones and
    are served from the cache with caching on, never with it off."""
    require_module("mlx_lm")
    proc = run_cli(
        "run",
        "--preset",
        "multi-turn",
        "--quick",
        "--backend",
        "mlx",
        "-m",
        "smollm2-135m",
        "--set",
        "datasets={gsm8k=1}",
        "--set",
        "max_tokens=[8]",
        "--set",
        "workload.concurrency=1",
        "--out",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = {p.name.split("__")[1]: read_cell(p) for p in tmp_path.iterdir() if p.is_dir()}
    for name, cell in cells.items():
        turns = sorted(cell.requests, key=lambda r: r["turn"])
        assert [r["turn"] for r in turns] == [1, 2, 3] and cell.manifest["cell"]["backend"] == "mlx"
        assert turns[0]["prompt_tokens"] < turns[1]["prompt_tokens"] < turns[2]["prompt_tokens"]
        for earlier, later in zip(turns, turns[1:]):
            assert later["arrival_s"] == pytest.approx(earlier["finish_s"] + 0.2, abs=1e-5)
            if name == "on":
                assert (
                    later["cached_tokens"] >= earlier["prompt_tokens"] - 8
                )  # the earlier turn's prompt, up to the reply
            else:
                assert later["cached_tokens"] == 0
