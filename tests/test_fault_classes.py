"""Faults from outside the process, one class at a time, each with the variants a user meets:
data files other tools write, and files that change while a study runs. Each either works or ends
in one line naming the file or field and the fix, exit code 2, with nothing finished lost."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from conftest import run_cli
from rllm_study.errors import UserError
from rllm_study.running.spec import expand
from rllm_study.workloads.custom_dataset import load_items

# ---- data written by other tools ---------------------------------------------------------------------

QUESTIONS = ["What is 6 times 7?", "Name the result of 10, minus 3.", "What is \"two\" plus 2?\nAnswer briefly."]
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
    return "".join(json.dumps({"question": q, "answer": a}, ensure_ascii=False) + newline for q, a in zip(QUESTIONS, ANSWERS))


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
        "d.jsonl", _jsonl().replace("Answer briefly.", "Answer\u2028briefly.").encode()),
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
    data = f"question,answer\n\"{long_q}\",100000\nWhat is 1+1?,2\n".encode()
    items = _load(tmp_path, "long.csv", data, 2)
    assert items[0].problem == long_q and items[1].answer == "2"
    items = _load(tmp_path, "long.jsonl", (json.dumps({"question": long_q, "answer": "100000"}) + "\n").encode(), 1)
    assert items[0].problem == long_q


@pytest.mark.parametrize("name, data, needle", [
    ("latin1.csv", "question,answer\nCombien font 6 \u00d7 7 ?,42\n".encode("latin-1"), ":2: not UTF-8 text (byte 0xd7); save the file as UTF-8"),
    ("cp1252.jsonl", '{"question": "Caf\u00e9 bill?", "answer": "4"}\n'.encode("cp1252"), ":1: not UTF-8 text (byte 0xe9)"),
    ("quote.csv", b'question,answer\n"unterminated,4\n', ":2: not a CSV row (unexpected end of data); quote a field"),
    ("stray.csv", b'question,answer\n"What is" 2+2?,4\n', ":2: not a CSV row"),
    ("fields.csv", b"frage,antwort\nWas ist 2+2?,4\n", 'no question / problem / prompt field in the first row; name it with question = "FIELD"'),
])
def test_unreadable_data_is_one_line_naming_file_and_fix(tmp_path, name, data, needle):
    (tmp_path / name).write_bytes(data)
    (tmp_path / "spec.toml").write_text(f'models = ["smollm2-135m"]\n[datasets]\nmine = {{ path = "{name}", n = 1 }}\n')
    proc = run_cli("run", tmp_path / "spec.toml", "--dry-run", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert name in proc.stderr and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
