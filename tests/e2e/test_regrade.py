"""`rllm-study regrade` on copies of committed cells (reports/gpu-h100/pilot-c32): grading fields
rewritten from output_text with the current rules, everything else kept, atomically, idempotent."""

from __future__ import annotations

import json
import re
import shutil

from conftest import REPO, run_cli
from rllm_study.analysis.metrics import cell_metrics
from rllm_study.running.results import FolderLock, read_cell, read_jsonl

SOURCE = REPO / "reports" / "gpu-h100" / "pilot-c32"
CELLS = (
    "qwen2.5-coder-0.5b__gsm8k__reasoning__mt256__batch32__r0",  # gsm8k/0016: \boxed{230 miles}, no </think>
    "qwen2.5-coder-0.5b__math500__direct__mt512__batch32__r0",  # math500/0047: \boxed{5 + c}, reference 5
    "qwen2.5-coder-0.5b__gpqa-diamond__reasoning__mt256__batch32__r0",
)  # gpqa-diamond/0028: "...correct choice is B."
GRADING = {"extracted_answer", "correct", "correct_lenient", "parse_status"}


def _copy(tmp_path):
    """Copies of the cells with their grading fields as the grader before answer_in_think wrote
    them (the committed files have been regraded since): no correct_lenient, answers found only
    in the thinking unparsed, and the old false positive math500/0047 ("5 + c" for 5) right."""
    run = tmp_path / "run"
    for name in CELLS:
        shutil.copytree(SOURCE / name, run / name)
        records = read_jsonl(run / name / "requests.jsonl")
        for rec in records:
            rec.pop("correct_lenient", None)
            if rec["parse_status"] == "answer_in_think":
                rec.update(extracted_answer=None, correct=False, parse_status="unparsed")
            if rec["item_id"] == "math500/0047":
                rec["correct"] = True
        (run / name / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _by_id(cell_dir):
    return {r["id"]: r for r in read_jsonl(cell_dir / "requests.jsonl")}


def test_regrade_rewrites_grading_fields_only(tmp_path):
    run = _copy(tmp_path)
    before = {name: _by_id(run / name) for name in CELLS}
    raw = {name: (run / name / "requests.jsonl").read_bytes() for name in CELLS}

    dry = run_cli("regrade", run, "--dry-run", "--list")
    assert dry.returncode == 0, dry.stderr
    assert all((run / name / "requests.jsonl").read_bytes() == raw[name] for name in CELLS)  # nothing written
    assert "gsm8k/0016: reference '230', answer None -> '230 miles' (answer_in_think" in dry.stdout
    assert (
        "math500/0047: reference '5', answer '5 + c' -> '5 + c' (parsed; now strict wrong, lenient wrong)" in dry.stdout
    )

    done = run_cli("regrade", run)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"regraded {sum(map(len, before.values()))} requests in 3 cells"
    after = {name: _by_id(run / name) for name in CELLS}
    for name in CELLS:
        assert list(after[name]) == list(before[name])  # same requests, same order
        for rid, rec in after[name].items():
            old = before[name][rid]
            assert {k: v for k, v in rec.items() if k not in GRADING} == {
                k: v for k, v in old.items() if k not in GRADING
            }
            assert list(rec) == list(old) + ([] if "correct_lenient" in old else ["correct_lenient"])
        assert not list((run / name).glob("*.tmp"))

    train = after[CELLS[0]]["gsm8k/0016"]
    assert (train["extracted_answer"], train["parse_status"], train["correct"], train["correct_lenient"]) == (
        "230 miles",
        "answer_in_think",
        False,
        True,
    )
    free = after[CELLS[1]]["math500/0047"]
    assert before[CELLS[1]]["math500/0047"]["correct"] is True and (free["correct"], free["correct_lenient"]) == (
        False,
        False,
    )
    letter = after[CELLS[2]]["gpqa-diamond/0028"]
    assert (letter["extracted_answer"], letter["parse_status"], letter["correct"]) == ("B", "parsed", False)

    # the metrics read the new fields: lenient accuracy counts the answer found while thinking
    acc = cell_metrics(read_cell(run / CELLS[0]))["accuracy"]["overall"]
    assert acc["correct_lenient"] > acc["correct"] and acc["answer_in_think"] > 0

    again = run_cli("regrade", run)
    assert again.returncode == 0, again.stderr
    for verdict in ("strict", "lenient"):
        counts = re.search(rf"{verdict} correct:\s+(\d+) -> (\d+)", again.stdout)
        assert counts and counts.group(1) == counts.group(2), again.stdout
    assert "wrong -> right" not in again.stdout and "right -> wrong" not in again.stdout
    assert {name: _by_id(run / name) for name in CELLS} == after


def test_regrade_refuses_a_folder_a_run_is_writing(tmp_path):
    run = _copy(tmp_path)
    raw = {name: (run / name / "requests.jsonl").read_bytes() for name in CELLS}
    with FolderLock(run):  # as a run holds it while writing
        refused = run_cli("regrade", run)
        dry = run_cli("regrade", run, "--dry-run")
    assert (
        refused.returncode == 2
        and "is being written by pid" in refused.stderr
        and len(refused.stderr.strip().splitlines()) == 1
    )
    assert dry.returncode == 0 and dry.stdout.startswith("would regrade"), dry.stderr  # reading needs no lock
    assert all((run / name / "requests.jsonl").read_bytes() == raw[name] for name in CELLS)


def test_regrade_refuses_prompts_that_do_not_match(tmp_path):
    run = _copy(tmp_path)
    gpqa = run / CELLS[2]
    manifest = json.loads((gpqa / "manifest.json").read_text())
    manifest["cell"]["seed"] = 7  # another shuffle: other letters than the run graded against
    (gpqa / "manifest.json").write_text(json.dumps(manifest))
    raw = (gpqa / "requests.jsonl").read_bytes()
    proc = run_cli("regrade", gpqa)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "was graded against" in proc.stderr and "requests.jsonl" in proc.stderr
    assert (gpqa / "requests.jsonl").read_bytes() == raw
    missing = run_cli("regrade", tmp_path / "nope")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
