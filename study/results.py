"""The results store: one folder per cell, plain files, written as things happen.

  manifest.json   spec, resolved cell, versions, hardware, model facts (written atomically)
  requests.jsonl  one line per finished request, appended and fsync'd as it finishes
  tokens.jsonl    one line per finished request: its per-token times, written just before
                  its requests.jsonl line (a request counts as finished only once that is there)
  timeline.jsonl  engine stats sampled at a fixed period

A request line holds at least: id, dataset, item_id, session, arrival_s, admitted_s,
prefill_done_s, first_token_s, first_answer_token_s, finish_s (seconds from the start of its
session, see below; null when it never happened), prompt_tokens, cached_tokens,
output_tokens, think_tokens, answer_tokens, finish_reason, extracted_answer, correct,
correct_lenient, parse_status, draft_proposed, draft_accepted, error (grading fields: see
`rllm_study.workloads.grading`; files written before correct_lenient existed lack it).
A token line: {"id", "session", "t_s": [...], "token_ids": [...], "phase": "ttta...",
"draft": "0010..." , "n_tokens": [...] (only when a network chunk held several tokens)}.
A timeline line: {"session", "t_s", "kv_used", "kv_capacity", "kv_unit", "running",
"waiting", "rss_bytes", "device_bytes"}.

Sessions: each start (or resume) of a cell is a new session with its own clock (t = 0 at its
start), numbered from 0; times are comparable only within a session.
A kill at any moment loses at most the line being written: a torn last line is cut off on
the next open, and requests already in requests.jsonl are skipped on resume.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rllm_study.errors import UserError

MANIFEST = "manifest.json"
REQUESTS = "requests.jsonl"
TOKENS = "tokens.jsonl"
TIMELINE = "timeline.jsonl"


def _repair_torn_tail(path: Path) -> None:
    """Cut a partial last line (from a kill mid-write) so appends start on a fresh line."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: Path) -> list[dict]:
    """All complete JSON lines of a file ([] if it does not exist); a torn last line is skipped."""
    if not Path(path).exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


class CellWriter:
    """Appends a cell's results; safe to reopen after a crash (see the module docstring)."""

    def __init__(self, cell_dir: Path):
        self.dir = Path(cell_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in (REQUESTS, TOKENS, TIMELINE):
            _repair_torn_tail(self.dir / name)
        done = read_jsonl(self.dir / REQUESTS)
        self.finished_ids: set[str] = {r["id"] for r in done}
        sessions = [r.get("session", 0) for r in done] + [r.get("session", 0) for r in read_jsonl(self.dir / TIMELINE)[-1:]]
        self.session = (max(sessions) + 1) if sessions else 0
        self._requests = open(self.dir / REQUESTS, "a", encoding="utf-8")
        self._tokens = open(self.dir / TOKENS, "a", encoding="utf-8")
        self._timeline = open(self.dir / TIMELINE, "a", encoding="utf-8")

    def write_manifest(self, manifest: dict) -> None:
        tmp = self.dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.dir / MANIFEST)

    def write_request(self, record: dict, tokens: dict) -> None:
        """Record a finished request durably: tokens line, then the request line, each fsync'd."""
        for f, row in ((self._tokens, tokens), (self._requests, record)):
            f.write(json.dumps({**row, "session": self.session}, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.finished_ids.add(record["id"])

    def write_timeline(self, sample: dict) -> None:
        self._timeline.write(json.dumps({"session": self.session, **sample}, separators=(",", ":")) + "\n")
        self._timeline.flush()

    def close(self) -> None:
        for f in (self._requests, self._tokens, self._timeline):
            f.close()


@dataclass
class Cell:
    """Everything recorded for one cell, read back from its folder."""

    dir: Path
    manifest: dict
    requests: list[dict]
    tokens: dict[str, dict] = field(default_factory=dict)
    timeline: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.get("cell", {}).get("name", self.dir.name)


def read_cell(cell_dir: Path, with_tokens: bool = True) -> Cell:
    cell_dir = Path(cell_dir)
    manifest = json.loads((cell_dir / MANIFEST).read_text(encoding="utf-8"))
    tokens = {}
    if with_tokens:
        for row in read_jsonl(cell_dir / TOKENS):
            tokens[row["id"]] = row  # a later line for the same id wins
    return Cell(cell_dir, manifest, read_jsonl(cell_dir / REQUESTS), tokens, read_jsonl(cell_dir / TIMELINE))


def find_cells(paths: Iterable[Path]) -> list[Path]:
    """Cell folders (those holding a manifest.json) at or below each path, in sorted order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / MANIFEST).exists():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(m.parent for m in p.rglob(MANIFEST)))
    return found


def cells_in(paths: Iterable[Path]) -> list[Path]:
    """`find_cells` of folders a user named: UserError when one does not exist or none holds a cell."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise UserError(f"{p} does not exist; pass a run folder written by `rllm-study run`")
    found = find_cells(paths)
    if not found:
        raise UserError(f"no cells (folders holding manifest.json) in {', '.join(map(str, paths))}; "
                        "pass a run folder written by `rllm-study run`")
    return found
