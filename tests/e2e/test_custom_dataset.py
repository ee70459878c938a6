"""Your own data set in a spec: fields detected or named, number/choice/text answers, rows checked
with file, line and field before any engine starts (exit 2, one line), and a real run + report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import THREADS, run_cli
from rllm_study.errors import UserError
from rllm_study.running.results import find_cells, read_cell
from rllm_study.running.spec import expand
from rllm_study.workloads.custom_dataset import load_items
from rllm_study.workloads.grading import grade, text_equal
from rllm_study.workloads.prompts import build_prompt

ROWS = [
    {"problem": "What is 6 times 7?", "solution": "The product is \\boxed{42}."},
    {"problem": "What is 10 minus 3?", "solution": 7},
    {"problem": "What is 2 plus 2?", "solution": "4"},
]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _expand(tmp_path: Path, table: dict):
    spec = tmp_path / "spec.toml"
    spec.write_text("")
    return expand({"models": ["smollm2-135m"], "datasets": {"mine": table}}, str(spec))


def test_fields_are_detected_and_paths_are_relative_to_the_spec(tmp_path):
    _write(tmp_path / "problems.jsonl", ROWS)
    (cell,) = _expand(tmp_path, {"path": "problems.jsonl", "n": 3, "domain": "arithmetic", "difficulty": "easy"})
    d = cell.custom_dataset
    assert (d["question"], d["answer_field"], d["answer"]) == ("problem", "solution", "number")
    assert cell.samples == 3 and cell.dataset == "mine" and d["path"] == str((tmp_path / "problems.jsonl").resolve())
    items = load_items("mine", d, 3)
    assert [i.answer for i in items] == ["42", "7", "4"]  # \boxed{} content; numbers as text
    assert [i.id for i in items] == ["mine/0000", "mine/0001", "mine/0002"]
    assert {(i.domain, i.difficulty, i.dataset) for i in items} == {("arithmetic", "easy", "mine")}
    prompt = build_prompt(items[0], "direct")
    assert grade(items[0], prompt, "\\boxed{42}").correct and not grade(items[0], prompt, "\\boxed{41}").correct


def test_choice_answers_by_letter_or_text_and_csv_columns(tmp_path):
    _write(
        tmp_path / "mc.jsonl",
        [
            {"q": "Largest planet?", "gold": "B", "opts": ["Mars", "Jupiter", "Venus"]},
            {"q": "Smallest prime?", "gold": "2", "opts": ["1", "2", "3", "4"]},
        ],
    )
    (cell,) = _expand(
        tmp_path,
        {"path": "mc.jsonl", "n": 2, "answer": "choice", "question": "q", "answer_field": "gold", "choices": "opts"},
    )
    first, second = load_items("mine", cell.custom_dataset, 2)
    assert (
        first.answer == "Jupiter"
        and first.choices[0] == "Jupiter"
        and set(first.choices) == {"Mars", "Jupiter", "Venus"}
    )
    assert second.answer == "2" and len(second.choices) == 4
    prompt = build_prompt(first, "direct", seed=3)
    assert grade(first, prompt, f"\\boxed{{{prompt.correct_letter}}}").correct
    wrong = next(k for k in prompt.choice_letters if k != prompt.correct_letter)
    assert not grade(first, prompt, f"\\boxed{{{wrong}}}").correct

    (tmp_path / "mc.csv").write_text("question,answer,a,b,c\nSky colour?,blue,red,blue,green\n")
    (cell,) = _expand(tmp_path, {"path": "mc.csv", "n": 1, "answer": "choice", "choices": ["a", "b", "c"]})
    (item,) = load_items("mine", cell.custom_dataset, 1)
    assert item.answer == "blue" and set(item.choices) == {"red", "blue", "green"}


def test_text_answers_match_exactly_after_whitespace_and_case():
    assert text_equal("New  York City", "new york\ncity")
    assert not text_equal("New York City", "New York")
    assert not text_equal("Paris", "Paris.")


def test_text_kind_grades_by_text_not_math(tmp_path):
    _write(
        tmp_path / "t.jsonl", [{"prompt": "Capital of France?", "target": "Paris"}, {"prompt": "2+2?", "target": "4"}]
    )
    (cell,) = _expand(tmp_path, {"path": "t.jsonl", "n": 2, "answer": "text"})
    paris, four = load_items("mine", cell.custom_dataset, 2)
    assert grade(paris, build_prompt(paris, "direct"), "\\boxed{ paris }").correct
    assert not grade(four, build_prompt(four, "direct"), "\\boxed{4.0}").correct  # math would accept it


@pytest.mark.parametrize(
    "rows,table,needle",
    [
        (ROWS[:1] + ['{"problem": "x", "solution": '], {}, "bad.jsonl:2: not a JSON object"),
        (ROWS[:2] + [{"problem": "x"}], {}, "bad.jsonl:3: field 'solution' is missing or empty"),
        (ROWS[:1] + [{"problem": " ", "solution": "1"}], {}, "bad.jsonl:2: field 'problem' is missing or empty"),
        (ROWS[:1] + ["[1, 2]"], {}, "bad.jsonl:2: not a JSON object"),
        (
            [{"problem": "p", "answer": "E", "choices": ["a", "b"]}],
            {"answer": "choice"},
            "bad.jsonl:1: field 'answer': 'E' is neither",
        ),
        ([{"problem": "p", "answer": "a", "choices": "a, b"}], {"answer": "choice"}, "no choices / options field"),
        (
            [{"problem": "p", "answer": "a", "options": ["a", "a"]}],
            {"answer": "choice"},
            "bad.jsonl:1: field 'options': choices must be distinct",
        ),
        (ROWS, {"n": 9}, "datasets.mine.n = 9, but"),
        (ROWS, {"answer": "words"}, "datasets.mine.answer must be one of number, choice, text"),
        (ROWS, {"colour": "red"}, "datasets.mine: unknown key colour"),
        ([{"q": "x", "a": "1"}], {}, "no question / problem / prompt field in the first row"),
    ],
)
def test_malformed_rows_and_keys_are_one_line_exit_2_before_any_work(tmp_path, rows, table, needle):
    _write(tmp_path / "bad.jsonl", rows)
    entries = ", ".join(f"{k} = {json.dumps(v)}" for k, v in {"path": "bad.jsonl", "n": 1, **table}.items())
    spec = tmp_path / "spec.toml"
    spec.write_text(f'models = ["smollm2-135m"]\ndatasets = {{ mine = {{ {entries} }} }}\n')
    out = tmp_path / "out"
    proc = run_cli("run", spec, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and needle in proc.stderr, proc.stderr
    assert not out.exists()  # failed before any cell folder or engine


def test_shipped_name_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="shipped data set's name"):
        expand({"datasets": {"gsm8k": {"path": "x.jsonl", "n": 1}}}, str(tmp_path / "s.toml"))
    with pytest.raises(UserError, match="is not a file"):
        _expand(tmp_path, {"path": "missing.jsonl", "n": 1})


def test_run_and_report_list_the_custom_set_like_a_shipped_one(tmp_path, smollm2_path):
    _write(tmp_path / "problems.jsonl", ROWS)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'name = "mine-study"\nmodels = ["smollm2-135m"]\nprompt_modes = ["direct"]\nmax_tokens = [8]\n'
        'datasets = { arith = { path = "problems.jsonl", n = 2, domain = "arithmetic" }, gsm8k = 1 }\n'
        "[workload]\nbatch_size = 2\n"
    )
    proc = run_cli("run", spec, "-t", str(THREADS), "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    cells = {read_cell(d).manifest["cell"]["dataset"]: read_cell(d) for d in find_cells([tmp_path / "out"])}
    assert set(cells) == {"arith", "gsm8k"}
    reqs = cells["arith"].requests
    assert sorted(r["item_id"] for r in reqs) == ["arith/0000", "arith/0001"]
    assert {r["domain"] for r in reqs} == {"arithmetic"} and sorted(r["reference_answer"] for r in reqs) == ["42", "7"]
    assert all(r["parse_status"] in ("parsed", "unparsed") and isinstance(r["correct"], bool) for r in reqs)
    rep = run_cli("report", tmp_path / "out", "--out", tmp_path / "report")
    assert rep.returncode == 0, rep.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    study_row = next(line for line in text.splitlines() if line.startswith("| mine-study |"))
    assert "arith" in study_row and "gsm8k" in study_row
    assert "arithmetic" in text and "not measured" in text  # no energy counter on this machine
    again = run_cli(
        "run", "--like", tmp_path / "out", "--out", tmp_path / "again", "--dry-run"
    )  # from the repository's folder:
    assert again.returncode == 0, (
        again.stderr
    )  # the file is found where the cells recorded it, not beside the working folder
    assert len([line for line in again.stdout.splitlines() if "__arith__" in line]) == 1
