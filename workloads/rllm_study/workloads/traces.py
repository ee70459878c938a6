"""Request traces with their lengths: what to send and when, replayed with synthetic prompts.

A trace row is one request: its arrival time, its prompt length and output length in tokens and,
where the trace has them, the hash ids of its prompt's blocks (equal ids = equal blocks: a shared
prefix). Two formats, told apart by the file's suffix:
  .jsonl  Mooncake-style (the FAST'25 Mooncake traces; AIPerf, vLLM and SGLang read them): one JSON
          object a line, `timestamp` in milliseconds, `input_length`, `output_length` (tokens) and
          `hash_ids` (a list of whole numbers, one per block of `block_tokens` prompt tokens;
          optional)
  .csv    BurstGPT: a header with `Timestamp` (seconds), `Request tokens`, `Response tokens`
          (other columns ignored); no hash ids
Selection (`select`): rows sorted by time; a window [window_start_s, window_start_s + window_s)
in the trace's own seconds, counted from its first row; times then shifted so the first selected
row is at 0 and multiplied by `time_scale` (0.5 replays twice as fast, 2 half as fast).

Prompts (`synthesize_prompt`): raw text (no chat template: a trace's input length is the whole
prompt) of exactly `input_length` tokens of the serving model, built from words that are one
token each with their leading space in that model's vocabulary, so lengths add up block by
block. Block i of a prompt covers tokens [i B, (i+1) B), B = block_tokens; a block with a hash id
is the same words wherever that id appears (seeded by the cell's seed and the id), so requests
whose hash ids share a leading run share that prefix token for token; the last block is cut to
the remainder, and tokens beyond the hash ids (or every block, without hash ids) are words unique
to the request. The output is capped at `output_length` tokens (and at the cell's max_tokens).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rllm_study.errors import UserError

TRACE_DATASET = "trace"  # the data-set name whose requests are the workload's trace (arrival = "replay")
DEFAULT_BLOCK_TOKENS = 512  # Mooncake's block size
MOONCAKE_MS = 1000.0  # Mooncake timestamps are milliseconds
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
# Common English words; those that are one token with a leading space in a model's vocabulary make its prompts.
WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "this",
    "be",
    "are",
    "from",
    "at",
    "or",
    "an",
    "it",
    "not",
    "was",
    "but",
    "have",
    "can",
    "which",
    "will",
    "all",
    "one",
    "has",
    "more",
    "their",
    "if",
    "about",
    "other",
    "when",
    "time",
    "some",
    "new",
    "so",
    "up",
    "out",
    "what",
    "also",
    "than",
    "into",
    "only",
    "its",
    "two",
    "most",
    "first",
    "any",
    "over",
    "such",
    "may",
    "use",
    "make",
    "like",
    "these",
    "then",
    "just",
    "each",
    "many",
    "work",
    "used",
    "way",
    "well",
    "very",
    "our",
    "even",
    "back",
    "good",
    "where",
    "much",
    "made",
    "part",
    "year",
    "day",
    "people",
    "world",
    "life",
    "city",
    "small",
    "group",
    "case",
    "high",
    "state",
    "found",
    "long",
    "place",
    "name",
    "house",
    "water",
    "both",
    "great",
    "local",
    "system",
    "point",
    "number",
    "home",
    "right",
    "school",
    "public",
    "book",
    "city",
    "music",
    "water",
    "night",
    "power",
    "game",
    "line",
    "market",
    "study",
    "story",
    "money",
    "form",
    "field",
    "light",
    "river",
    "road",
    "area",
    "film",
    "model",
    "paper",
    "table",
    "garden",
    "window",
    "letter",
    "voice",
    "heart",
    "plan",
    "food",
    "color",
    "order",
)


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: arrival (seconds; after `select`, from the first selected one,
    scaled), prompt and output length in tokens, block hash ids (empty without)."""

    at_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


def _whole(value, path: Path, line: int, field: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < low:
        raise UserError(f"trace file {path} line {line}: {field} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _seconds(value, path: Path, line: int, field: str, scale: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"trace file {path} line {line}: {field} must be a finite number >= 0, got {value!r}")
    return float(value) / scale


def _read_mooncake(path: Path, lines: list[str]) -> list[TraceRequest]:
    out = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"trace file {path} line {number}: not a JSON object ({err.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"trace file {path} line {number}: not a JSON object")
        for field in ("timestamp", "input_length", "output_length"):
            if field not in row:
                raise UserError(
                    f"trace file {path} line {number}: field {field} is missing "
                    "(a Mooncake-style line holds timestamp in ms, input_length, output_length, hash_ids)"
                )
        hashes = row.get("hash_ids") or []
        if not isinstance(hashes, list):
            raise UserError(f"trace file {path} line {number}: hash_ids must be a list of whole numbers")
        out.append(
            TraceRequest(
                _seconds(row["timestamp"], path, number, "timestamp", MOONCAKE_MS),
                _whole(row["input_length"], path, number, "input_length", 1),
                _whole(row["output_length"], path, number, "output_length", 1),
                tuple(_whole(h, path, number, "hash_ids", 0) for h in hashes),
            )
        )
    return out


def _number(text: str, path: Path, line: int, field: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise UserError(f"trace file {path} line {line}: {field} {text!r} is not a number") from None


def _read_burstgpt(path: Path, lines: list[str]) -> list[TraceRequest]:
    reader = csv.DictReader(lines)
    missing = [c for c in BURSTGPT_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(
            f"trace file {path}: column {missing[0]!r} is missing (a BurstGPT CSV has the header "
            f"{', '.join(BURSTGPT_COLUMNS)}, ...)"
        )
    out = []
    for row in reader:
        number = reader.line_num
        values = {c: _number(row[c], path, number, c) for c in BURSTGPT_COLUMNS}
        out.append(
            TraceRequest(
                _seconds(values["Timestamp"], path, number, "Timestamp", 1.0),
                _whole(values["Request tokens"], path, number, "Request tokens", 1),
                # a failed request has 0 response tokens: it still asks for one
                max(1, _whole(values["Response tokens"], path, number, "Response tokens", 0)),
            )
        )
    return out


def read_trace_requests(path: Path) -> list[TraceRequest]:
    """Every row of a Mooncake-style .jsonl or BurstGPT .csv trace (module docstring), in file order;
    a file that cannot be read or parsed is a UserError naming it, the line and the field."""
    path = Path(path)
    readers = {".jsonl": _read_mooncake, ".csv": _read_burstgpt}
    if path.suffix not in readers:
        raise UserError(f"trace file {path}: give a Mooncake-style .jsonl or a BurstGPT .csv file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read trace file {path}: {getattr(err, 'strerror', None) or err}") from None
    rows = readers[path.suffix](path, lines)
    if not rows:
        raise UserError(f"trace file {path} holds no requests")
    return rows


def select(
    rows: list[TraceRequest], time_scale: float = 1.0, window_start_s: float = 0.0, window_s: float = math.inf
) -> list[TraceRequest]:
    """The rows in the window (module docstring), sorted by time, shifted to start at 0 and scaled."""
    ordered = sorted(rows, key=lambda r: r.at_s)
    start = ordered[0].at_s + window_start_s
    kept = [r for r in ordered if start <= r.at_s < start + window_s]
    if not kept:
        return []
    first = kept[0].at_s
    return [TraceRequest((r.at_s - first) * time_scale, r.input_tokens, r.output_tokens, r.hash_ids) for r in kept]


def load_trace(path: Path, time_scale: float, window_start_s: float, window_s: float, n: int) -> list[TraceRequest]:
    """The first n requests of the trace's window; a UserError when the window holds fewer."""
    kept = select(read_trace_requests(path), time_scale, window_start_s, window_s)
    if len(kept) < n:
        raise UserError(
            f"trace file {path} has {len(kept)} requests in its window, fewer than the {n} asked "
            f"(ask for at most {len(kept)}, or widen workload.window_s)"
        )
    return kept[:n]


class PromptSynthesizer:
    """Prompts of exact token lengths for one model (`count_tokens(text)` is the model's count,
    special tokens such as BOS included). See the module docstring."""

    def __init__(self, count_tokens, seed: int, block_tokens: int = DEFAULT_BLOCK_TOKENS):
        self.count, self.seed, self.block_tokens = count_tokens, seed, block_tokens
        self.base = count_tokens("")  # special tokens every prompt gets (BOS)
        self.words = [w for w in dict.fromkeys(WORDS) if count_tokens(" " + w) - self.base == 1]
        if len(self.words) < 16:
            raise UserError("the model's vocabulary has too few one-token English words to synthesize trace prompts")

    def _words(self, key: tuple[int, ...], n: int) -> list[str]:
        picks = np.random.default_rng([self.seed, *key]).integers(0, len(self.words), n)
        return [self.words[i] for i in picks]

    def prompt(self, request: TraceRequest, index: int) -> str:
        """Text of `request.input_tokens` tokens (BOS included where the model adds one)."""
        target = max(request.input_tokens - self.base, 1)
        words: list[str] = []
        for block in range(-(-target // self.block_tokens)):
            size = min(self.block_tokens, target - block * self.block_tokens)
            # a hash id names a shared block (key 0); without one, the block is this request's own (key 1)
            key = (0, request.hash_ids[block]) if block < len(request.hash_ids) else (1, index, block)
            words += self._words(key, size)
        text = "".join(" " + w for w in words)
        extra = 0
        while (got := self.count(text) - self.base) != target and extra < 64:  # a merge across words: mend at the end
            extra += 1
            if got > target:
                text = text[: text.rstrip().rfind(" ")]
            else:
                text += "".join(" " + w for w in self._words((2, index, extra), target - got))
        return text
