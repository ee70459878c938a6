"""One function builds a cell's requests (`running.prompts.cell_prompts`) for the runner and for
regrade: the same items, prompts and few-shot preamble from a CellSpec and from the `cell` its
manifest recorded, for a user's data set too (which regrade could not rebuild before)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from rllm_study.analysis.regrade import cell_prompts_by_item, regrade_cell
from rllm_study.running.results import read_jsonl
from rllm_study.running.runner import build_jobs, run_study
from rllm_study.running.spec import expand
from scripted_engine import Script, ScriptedEngine, scripted_backend

ROWS = [
    {"q": "Largest planet?", "gold": "Jupiter", "opts": ["Mars", "Jupiter", "Venus", "Earth"]},
    {"q": "Smallest prime?", "gold": "2", "opts": ["1", "2", "3", "4"]},
    {"q": "Red planet?", "gold": "Mars", "opts": ["Mars", "Jupiter", "Venus", "Earth"]},
    {"q": "Our planet?", "gold": "Earth", "opts": ["Mars", "Jupiter", "Venus", "Earth"]},
]


def _spec(tmp_path: Path, **extra) -> tuple[dict, str]:
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "spec.toml").write_text("")
    spec = {
        "name": "t",
        "backend": "scripted",
        "models": ["scripted"],
        "prompt_modes": ["reasoning"],
        "max_tokens": [64],
        "seed": 3,
        "datasets": {
            "mine": {
                "path": "mc.jsonl",
                "n": 2,
                "answer": "choice",
                "question": "q",
                "answer_field": "gold",
                "choices": "opts",
            }
        },
        **extra,
    }
    return spec, str(tmp_path / "spec.toml")


def test_runner_and_regrade_build_the_same_prompts(tmp_path):
    spec, where = _spec(tmp_path, workload={"arrival": "batch", "batch_size": 2, "shared_prefix": 2})
    with scripted_backend():
        (cell,) = expand(spec, where)
        jobs = build_jobs(cell, ScriptedEngine(cell.model, cell.engine))
    recorded = json.loads(json.dumps(cell.as_dict()))  # as manifest.json holds it
    rebuilt = cell_prompts_by_item(recorded)
    assert [j.id for j in jobs] == list(rebuilt) == ["mine/0000", "mine/0001"]
    for job in jobs:
        item, prompt = rebuilt[job.id]
        assert (item, prompt) == (job.item, job.prompt)  # the shuffle (seed 3) gives the same letters
        assert "Example problem: Red planet?" in job.text and "Example problem: Our planet?" in job.text


def test_regrade_rebuilds_a_custom_data_set_cell(tmp_path):
    """A run on a user's data set, its grades spoiled, then regraded from its manifest alone."""
    spec, where = _spec(tmp_path)
    letters = {}

    def answer(request):  # the scripted model answers each question with its right letter
        return next(letter for q, letter in letters.items() if q in request.prompt)

    with scripted_backend(Script(answer=answer)):
        cells = expand(spec, where)
        for job in build_jobs(cells[0], ScriptedEngine("scripted", cells[0].engine)):
            letters[job.item.problem] = job.prompt.correct_letter
        (cell_dir,) = run_study(cells, spec, tmp_path / "out", Console(quiet=True))
    path = cell_dir / "requests.jsonl"
    records = read_jsonl(path)
    assert [r["correct"] for r in records] == [True, True]
    path.write_text("".join(json.dumps({**r, "correct": False, "correct_lenient": False}) + "\n" for r in records))
    result = regrade_cell(cell_dir)
    assert result.after["strict"] == 2 and result.before["strict"] == 0
    assert [r["correct"] for r in read_jsonl(path)] == [True, True]
