"""Your own data set in a study spec, from a local file:

  datasets = { mine = { path = "problems.jsonl", n = 50, answer = "number" } }

Keys of such a table: KEYS (name -> (default, meaning)); `definition` validates them and unknown
keys are errors. Item ids are NAME/<row index from 0>; the definition records the file's sha256, so a cell resumed
after its file changed is refused (the runner's `check_same_inputs`). A malformed row is a UserError naming the file, its line
number and the field; the whole file is checked when the spec is expanded, before any engine.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
from pathlib import Path

from rllm_study.errors import UserError
from rllm_study.workloads.datasets import DATASETS, Item
from rllm_study.workloads.grading import last_boxed
from rllm_study.workloads.prompts import LETTERS

NO_ANSWER = "none"
ANSWER_KINDS = ("number", "choice", "text", NO_ANSWER)
DETECT = {
    "question": ("question", "problem", "prompt"),
    "answer": ("answer", "solution", "target"),
    "choices": ("choices", "options"),
}
KEYS = {  # key -> (default, meaning): the reference docs/specs.md is generated from it
    "path": (
        "required",
        "A .jsonl file (one JSON object a line) or a .csv file (a header row, then one row a line; "
        "comma, semicolon or tab separated, quoted fields may span lines), relative to the spec file's folder; "
        "UTF-8 (with or without a byte-order mark) or UTF-16 with one.",
    ),
    "n": ("required", "How many items to run: the first n rows (the file must hold at least n)."),
    "answer": (
        '"number"',
        'How the reference is graded: "number" (like the math sets: math-verify equivalence; a '
        'reference holding \\boxed{...} is its content), "choice" (multiple choice, as GPQA: choices '
        "shuffled and lettered per item, graded by letter; the reference is a choice's letter, A = the first, "
        'or its text), "text" (exact match after runs of whitespace become one space and case is folded), '
        '"none" (no reference: a load test\'s prompts; grading is off, the requests record correct = null '
        "and the reports show no accuracy for the set).",
    ),
    "question": (
        "detected",
        f"The field holding the problem; default: the first of {', '.join(DETECT['question'])} in the first row.",
    ),
    "answer_field": (
        "detected",
        f"The field holding the reference; default: the first of {', '.join(DETECT['answer'])} "
        '(not read with answer = "none").',
    ),
    "choices": (
        "detected",
        'answer = "choice" only: the field holding the choices (a list), or a list of fields '
        f"(CSV columns), one choice each; default: the first list field of {', '.join(DETECT['choices'])}.",
    ),
    "domain": ("the set's name", "What the report groups the set under."),
    "difficulty": (
        '"unlabelled"',
        "Its difficulty label (easy, medium or hard puts it on the report's difficulty ladder).",
    ),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_FIELD_CHARS = 1 << 30  # a CSV field may be this long (the csv module's default limit is 131,072 characters)


def _text_of(path: Path) -> str:
    """The file's text: UTF-8 (a byte-order mark, as Excel and Notepad write, is dropped), or UTF-16
    when it starts with a UTF-16 byte-order mark (Excel's "Unicode text"); other encodings are a
    UserError naming the line and how to convert."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the data set ({err.strerror})") from None
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not {encoding.upper().removesuffix('-SIG')} text (byte 0x{data[err.start]:02x}); save the file "
            f"as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}"
        ) from None


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) for every data row of a .jsonl or .csv file. A CSV's delimiter is the
    one its header row uses most of comma, semicolon and tab (spreadsheets in many locales write
    semicolons); quoted fields may hold delimiters and line breaks; field names are stripped."""
    text = _text_of(path)
    if path.suffix.lower() == ".csv":
        header = text.split("\n", 1)[0]
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=max(",;\t", key=header.count), strict=True)
        csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))
        rows, start = [], 1
        try:
            if reader.fieldnames:
                reader.fieldnames = [name.strip() for name in reader.fieldnames]
            start = reader.line_num + 1
            for row in reader:
                rows.append((reader.line_num, row))
                start = reader.line_num + 1
        except csv.Error as err:
            raise UserError(
                f"{path}:{start}: not a CSV row ({err}); quote a field that holds the "
                f'delimiter, a quote (as "") or a line break'
            ) from None
        return rows
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit inside a JSON string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not a JSON object ({err.msg}); one object a line") from None
        if not isinstance(row, dict):
            raise UserError(
                f'{path}:{number}: not a JSON object; one object a line, e.g. {{"question": ..., "answer": ...}}'
            )
        rows.append((number, row))
    return rows


def _detect(path: Path, first: dict, kind: str, wanted: str | None, lists: bool = False) -> str:
    if wanted is not None:
        return wanted
    for name in DETECT[kind]:
        if name in first and (not lists or isinstance(first[name], list)):
            return name
    key = {"question": "question", "answer": "answer_field", "choices": "choices"}[kind]
    raise UserError(f'{path}: no {" / ".join(DETECT[kind])} field in the first row; name it with {key} = "FIELD"')


def definition(name: str, table: dict, base: Path, where: str) -> dict:
    """Validate a spec's data-set table and every row of its file; returns the resolved
    definition (absolute path, field names, answer kind, domain, difficulty) that cells carry."""
    at = f"{where}: datasets.{name}"
    if name in DATASETS:
        raise UserError(f"{at}: {name} is a shipped data set's name; give your file another name")
    if not _NAME.fullmatch(name):
        raise UserError(f"{at}: a data set name may hold only letters, digits, '.', '_' and '-'")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise UserError(f"{at}: unknown key {unknown[0]} (allowed: {', '.join(sorted(KEYS))})")
    if not isinstance(table.get("path"), str) or not table["path"]:
        raise UserError(f'{at}.path: give the data file, e.g. path = "problems.jsonl" (relative to the spec\'s folder)')
    n = table.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"{at}.n must be a sample count >= 1, got {n!r}")
    kind = table.get("answer", "number")
    if kind not in ANSWER_KINDS:
        raise UserError(f"{at}.answer must be one of {', '.join(ANSWER_KINDS)}, got {kind!r}")
    for key in ("question", "answer_field", "domain", "difficulty"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise UserError(f"{at}.{key} must be a non-empty text, got {table[key]!r}")
    choices = table.get("choices")
    if choices is not None and (
        kind != "choice"
        or not (
            isinstance(choices, str)
            or (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices))
        )
    ):
        raise UserError(
            f'{at}.choices goes with answer = "choice": a field name, or a list of at least two field names'
        )
    path = Path(table["path"]).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.is_file():
        raise UserError(f"{at}.path: {path} is not a file")
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise UserError(f"{at}.path: {path.name}: use a .jsonl or .csv file")
    rows = _rows(path)
    if len(rows) < n:
        raise UserError(f"{at}.n = {n}, but {path} holds {len(rows)} rows")
    first = rows[0][1]
    resolved = {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "n": n,
        "answer": kind,
        "question": _detect(path, first, "question", table.get("question")),
        "answer_field": None if kind == NO_ANSWER else _detect(path, first, "answer", table.get("answer_field")),
        "choices": (
            _detect(path, first, "choices", choices, lists=True)
            if kind == "choice" and not isinstance(choices, list)
            else choices
        ),
        "domain": table.get("domain", name),
        "difficulty": table.get("difficulty", "unlabelled"),
    }
    for index, (number, row) in enumerate(rows):
        _item(name, resolved, index, number, row)
    return resolved


def _text(path: str, number: int, row: dict, field: str) -> str:
    value = row.get(field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{path}:{number}: field {field!r} is missing or empty (every row needs it)")
    return value.strip()


def _item(name: str, d: dict, index: int, number: int, row: dict) -> Item:
    """One row as an Item; UserError naming file, line and field when it is malformed."""
    path = d["path"]
    problem = _text(path, number, row, d["question"])
    answer = "" if d["answer"] == NO_ANSWER else _text(path, number, row, d["answer_field"])
    choices: tuple[str, ...] = ()
    if d["answer"] == "choice":
        if isinstance(d["choices"], list):
            choices = tuple(_text(path, number, row, f) for f in d["choices"])
        else:
            value = row.get(d["choices"])
            if not isinstance(value, list) or len(value) < 2:
                raise UserError(f"{path}:{number}: field {d['choices']!r} must be a list of at least two choices")
            if not all(isinstance(v, (str, int, float)) and str(v).strip() for v in value):
                raise UserError(f"{path}:{number}: field {d['choices']!r}: every choice must be a non-empty text")
            choices = tuple(str(v).strip() for v in value)
        if len(choices) > len(LETTERS) or len(set(choices)) != len(choices):
            raise UserError(
                f"{path}:{number}: field {d['choices'] if isinstance(d['choices'], str) else 'choices'!r}: "
                f"choices must be distinct and at most {len(LETTERS)}"
            )
        letter = answer.strip("() ").upper()
        if len(letter) == 1 and LETTERS.find(letter) in range(len(choices)):
            answer = choices[LETTERS.index(letter)]
        elif answer not in choices:
            raise UserError(
                f"{path}:{number}: field {d['answer_field']!r}: {answer!r} is neither a choice's letter "
                f"(A-{LETTERS[len(choices) - 1]}) nor one of the choices"
            )
        choices = (answer, *(c for c in choices if c != answer))  # Item's convention: correct first
    elif d["answer"] == "number":
        answer = last_boxed(answer) or answer
    return Item(
        f"{name}/{index:04d}",
        name,
        d["domain"],
        d["difficulty"],
        problem,
        answer,
        choices,
        text_answer=d["answer"] == "text",
    )


def load_items(name: str, d: dict, limit: int) -> list[Item]:
    """The first `limit` items of a data set `definition` resolved."""
    return [_item(name, d, i, number, row) for i, (number, row) in enumerate(_rows(Path(d["path"]))[:limit])]
