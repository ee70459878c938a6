"""Faults from outside the process, one class at a time, each with the variants a user meets:
data files other tools write, and files that change while a study runs. Each either works or ends
in one line naming the file or field and the fix, exit code 2, with nothing finished lost."""

from __future__ import annotations

import codecs
import json
import os
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from conftest import CLI, REPO, THREADS, run_cli
from rllm_study.running.results import read_jsonl
from rllm_study.running.spec import expand
from rllm_study.workloads.custom_dataset import load_items

# ---- data written by other tools ---------------------------------------------------------------------

QUESTIONS = ["What is 6 times 7?", "Name the result of 10, minus 3.", 'What is "two" plus 2?\nAnswer briefly.']
ANSWERS = ["42", "7", "4"]


def _csv(delimiter: str = ",", newline: str = "\n", index: bool = False) -> str:
    """The three rows as a spreadsheet writes them: fields holding the delimiter, quotes or line breaks
    quoted; `index`: a first, unnamed column of row numbers (pandas' to_csv)."""

    def field(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in (delimiter, '"', "\n")) else v

    lead = (lambda i: f"{i}{delimiter}") if index else (lambda i: "")
    lines = [f"{lead('')}question{delimiter}answer"]
    lines += [f"{lead(i)}{field(q)}{delimiter}{a}" for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS))]
    return newline.join(lines) + newline


def _jsonl(newline: str = "\n") -> str:
    return "".join(
        json.dumps({"question": q, "answer": a}, ensure_ascii=False) + newline for q, a in zip(QUESTIONS, ANSWERS)
    )


FORMS = {
    # name: (file name, bytes)
    "csv, comma": ("d.csv", _csv().encode()),
    "csv, Excel UTF-8 (byte-order mark, CRLF)": ("d.csv", codecs.BOM_UTF8 + _csv(newline="\r\n").encode()),
    "csv, semicolons (European locales)": ("d.csv", _csv(";", "\r\n").encode()),
    "csv, tabs": ("d.csv", _csv("\t").encode()),
    "csv, UTF-16 with byte-order mark": ("d.csv", _csv(newline="\r\n").encode("utf-16")),
    "csv, spaces after the header's commas": ("d.csv", _csv().replace("question,answer", "question, answer").encode()),
    "csv, pandas to_csv (unnamed index column)": ("d.csv", _csv(index=True).encode()),
    "jsonl": ("d.jsonl", _jsonl().encode()),
    "jsonl, byte-order mark and CRLF": ("d.jsonl", codecs.BOM_UTF8 + _jsonl("\r\n").encode()),
    "jsonl, U+2028 inside a string (json.dumps ensure_ascii=False)": (
        "d.jsonl",
        _jsonl().replace("Answer briefly.", "Answer\u2028briefly.").encode(),
    ),
}


def _load(tmp_path: Path, name: str, data: bytes, n: int = 3):
    (tmp_path / name).write_bytes(data)
    spec = tmp_path / "spec.toml"
    spec.write_text("")
    (cell,) = expand({"models": ["smollm2-135m"], "datasets": {"mine": {"path": name, "n": n}}}, str(spec))
    return load_items("mine", cell.custom_dataset, n)


@pytest.mark.parametrize("form", FORMS)
def test_data_files_from_other_tools_read_the_same(tmp_path, form):
    name, data = FORMS[form]
    items = _load(tmp_path, name, data)
    questions = [i.problem for i in items]
    expected = [q.replace("Answer briefly.", "Answer\u2028briefly.") if "U+2028" in form else q for q in QUESTIONS]
    assert questions == expected and [i.answer for i in items] == ANSWERS, (form, questions)


def test_very_long_rows(tmp_path):
    long_q = "Add these numbers: " + " + ".join(["1"] * 100_000) + ". What is the sum?"  # 400,000 characters
    data = f'question,answer\n"{long_q}",100000\nWhat is 1+1?,2\n'.encode()
    items = _load(tmp_path, "long.csv", data, 2)
    assert items[0].problem == long_q and items[1].answer == "2"
    items = _load(tmp_path, "long.jsonl", (json.dumps({"question": long_q, "answer": "100000"}) + "\n").encode(), 1)
    assert items[0].problem == long_q


@pytest.mark.parametrize(
    "name, data, needle",
    [
        (
            "latin1.csv",
            "question,answer\nCombien font 6 \u00d7 7 ?,42\n".encode("latin-1"),
            ":2: not UTF-8 text (byte 0xd7); save the file as UTF-8",
        ),
        (
            "cp1252.jsonl",
            '{"question": "Caf\u00e9 bill?", "answer": "4"}\n'.encode("cp1252"),
            ":1: not UTF-8 text (byte 0xe9)",
        ),
        (
            "quote.csv",
            b'question,answer\n"unterminated,4\n',
            ":2: not a CSV row (unexpected end of data); quote a field",
        ),
        ("stray.csv", b'question,answer\n"What is" 2+2?,4\n', ":2: not a CSV row"),
        (
            "fields.csv",
            b"frage,antwort\nWas ist 2+2?,4\n",
            'no question / problem / prompt field in the first row; name it with question = "FIELD"',
        ),
    ],
)
def test_unreadable_data_is_one_line_naming_file_and_fix(tmp_path, name, data, needle):
    (tmp_path / name).write_bytes(data)
    (tmp_path / "spec.toml").write_text(f'models = ["smollm2-135m"]\n[datasets]\nmine = {{ path = "{name}", n = 1 }}\n')
    proc = run_cli("run", tmp_path / "spec.toml", "--dry-run", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, (
        proc.stderr
    )
    assert name in proc.stderr and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


# ---- files that change while a study runs -------------------------------------------------------------

CHANGING_SPEC = """
name = "changing"
models = ["{model}"]
prompt_modes = ["direct"]
max_tokens = [8]
[datasets]
mine = {{ path = "rows.jsonl", n = 6 }}
[sampling]
temperature = 0.0
[workload]
arrival = "closed"
concurrency = {batch}
"""
ROWS = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(6)]


def _study(tmp_path: Path, model: Path, batch: str = "1") -> list[str]:
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "s.toml").write_text(CHANGING_SPEC.format(model=model, batch=batch))
    return [*CLI, "run", str(tmp_path / "s.toml"), "-t", str(THREADS), "--out", str(tmp_path / "out")]


def _start_and_stop(args: list[str], until, kill: bool) -> subprocess.Popen:
    """Start a run; once until() holds, kill it with -9 (kill) or let it go on."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not until():
        time.sleep(0.02)
    if kill:
        os.kill(proc.pid, signal.SIGKILL)
    return proc


def _lines(folder: Path) -> list[list[dict]]:
    return [read_jsonl(f) for f in sorted(folder.glob("*/requests.jsonl"))]


def test_the_model_file_deleted_between_cells_stops_in_one_line_and_resumes(tmp_path, smollm2_path):
    model = tmp_path / "model.gguf"
    shutil.copyfile(smollm2_path, model)
    args = _study(tmp_path, model, batch="[1, 2]")  # two engine configurations: the second cell opens the model again
    proc = _start_and_stop(args, lambda: any(len(r) >= 1 for r in _lines(tmp_path / "out")), kill=False)
    model.unlink()
    _, err = proc.communicate(timeout=600)
    line = err.strip().splitlines()[-1]
    assert proc.returncode == 2 and line.startswith("error: ") and "Traceback" not in err, err
    assert str(model) in line and "not found" in line and "finished requests are kept" in line and "resumes" in line, (
        line
    )
    first = _lines(tmp_path / "out")[0]
    assert len(first) == 6
    shutil.copyfile(smollm2_path, model)
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    cells = _lines(tmp_path / "out")
    assert [len(c) for c in cells] == [6, 6] and cells[0] == first


def test_a_resumed_cell_refuses_a_changed_data_file_or_model_file(tmp_path, smollm2_path, tiny_r1_path):
    model = tmp_path / "model.gguf"
    shutil.copyfile(smollm2_path, model)
    args = _study(tmp_path, model)
    proc = _start_and_stop(args, lambda: any(len(r) >= 2 for r in _lines(tmp_path / "out")), kill=True)
    proc.communicate()
    (kept,) = _lines(tmp_path / "out")
    assert 2 <= len(kept) < 6
    rows = (tmp_path / "rows.jsonl").read_text()
    # the data file edited (a row replaced): the finished requests were graded against the old rows
    (tmp_path / "rows.jsonl").write_text(rows.replace("What is 0 plus 0?", "What is 9 plus 9?").replace('"0"', '"18"'))
    changed = run_cli(*args[3:])
    line = changed.stderr.strip().splitlines()[-1]
    assert changed.returncode == 2 and line.startswith("error: ") and "Traceback" not in changed.stderr, changed.stderr
    assert "rows.jsonl: the data file changed since cell" in line and "restore the file" in line, line
    (tmp_path / "rows.jsonl").write_text(rows)
    # the model file replaced by another model
    shutil.copyfile(tiny_r1_path, model)
    replaced = run_cli(*args[3:])
    assert replaced.returncode == 2 and "Traceback" not in replaced.stderr, replaced.stderr
    assert f"{model}: the model file changed since cell" in replaced.stderr.strip().splitlines()[-1], replaced.stderr
    # both restored: the cell resumes where it stopped
    shutil.copyfile(smollm2_path, model)
    done = run_cli(*args[3:])
    assert done.returncode == 0, done.stderr
    (after,) = _lines(tmp_path / "out")
    assert after[: len(kept)] == kept and len({r["id"] for r in after}) == len(after) == 6


# ---- every command on every kind of folder ------------------------------------------------------------


def test_commands_on_a_custom_data_set_folder(tmp_path):
    """regrade refused a custom data set's cells ("unknown data set 'mine'"); summarize, report, pack and
    run --like read them. The cell is written by the run's own writer, its outputs by hand."""
    from rllm_study.running.results import CellWriter

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "s.toml").write_text(CHANGING_SPEC.format(model="smollm2-135m", batch="1"))
    (cell,) = expand(tomllib.loads((tmp_path / "s.toml").read_text()), str(tmp_path / "s.toml"))
    out = tmp_path / "out"
    w = CellWriter(out / cell.name)
    w.write_manifest({"cell": cell.as_dict(), "spec": tomllib.loads((tmp_path / "s.toml").read_text())})
    for i, row in enumerate(ROWS):
        rid = f"mine/{i:04d}"
        w.write_request(
            {
                "id": rid,
                "item_id": rid,
                "dataset": "mine",
                "domain": "mine",
                "arrival_s": 0.0,
                "admitted_s": 0.0,
                "first_token_s": 0.1,
                "first_answer_token_s": 0.1,
                "finish_s": 0.5 + i,
                "output_tokens": 3,
                "think_tokens": 0,
                "answer_tokens": 3,
                "finish_reason": "stop",
                "reference_answer": row["answer"],
                "output_text": f"\\boxed{{{row['answer'] if i % 2 else 7}}}",
                "correct": False,
                "parse_status": "unparsed",
            },
            {"id": rid, "t_s": [0.1, 0.2, 0.5 + i], "token_ids": [1, 2, 3], "phase": "aaa", "draft": "000"},
        )
    w.close()
    regraded = run_cli("regrade", out)
    assert regraded.returncode == 0, regraded.stderr
    grades = [r["correct"] for r in read_jsonl(out / cell.name / "requests.jsonl")]
    assert grades == [False, True, False, True, False, True]
    for args in (
        ("summarize", out),
        ("report", out, "--out", tmp_path / "report"),
        ("pack", out),
        ("run", "--like", out, "--dry-run", "--out", tmp_path / "again"),
    ):
        done = run_cli(*args)
        assert done.returncode == 0, (args, done.stderr)
    # the data file moved away since the run: regrade names it
    (tmp_path / "rows.jsonl").rename(tmp_path / "moved.jsonl")
    moved = run_cli("regrade", out)
    assert moved.returncode == 2 and "rows.jsonl: cannot read the data set" in moved.stderr, moved.stderr
    assert len(moved.stderr.strip().splitlines()) == 1
