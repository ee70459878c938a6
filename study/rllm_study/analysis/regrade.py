"""Re-grading recorded requests with the current grader, from the recorded output alone.

A cell's items and prompts are rebuilt from its manifest's `cell` by the runner's own
`rllm_study.running.prompts.cell_prompts` (shipped or custom data set, samples, prompt mode, seed,
templates, grammar, few-shot prefix; the seed decides the multiple-choice shuffle), and each line of
requests.jsonl is graded again by `grade(...)` from its `output_text`. Its grading fields
(`Grade.record_fields`) are then rewritten in place: the new file is written next to the old one,
fsync'd and renamed over it, so a kill at any moment leaves either file whole. Nothing else in
the line changes; a line whose reference answer differs from the rebuilt prompt's is refused (the
prompts would not be the ones the run sent).
Native-mode cells decided at run time, from the rendered chat template, whether the output began
inside a think block; here a record with think_tokens > 0 did (an output that opened <think>
itself is treated the same by `answer_text`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from rllm_study.analysis.metrics import correct_lenient
from rllm_study.errors import UserError
from rllm_study.running.prompts import cell_prompts
from rllm_study.running.results import MANIFEST, REQUESTS, read_jsonl
from rllm_study.workloads.datasets import Item
from rllm_study.workloads.grading import Grade, grade
from rllm_study.workloads.prompts import Prompt


@dataclass
class Regraded:
    """What a regrade changed: request counts, and verdict flips by cause. A cause is
    "<old parse_status> -> <new>" when the place the answer was found changed, else "other answer
    extracted" or "same answer, equivalence rule" (e.g. free symbols for a numeric reference)."""

    cells: int = 0
    requests: int = 0
    before: Counter = field(default_factory=Counter)  # strict / lenient correct counts
    after: Counter = field(default_factory=Counter)
    flips: Counter = field(default_factory=Counter)  # (verdict, "wrong -> right" | "right -> wrong", cause) -> n
    statuses: Counter = field(default_factory=Counter)  # (old parse_status, new parse_status) -> n
    changed: list[dict] = field(default_factory=list)  # one entry per request whose verdicts changed

    def add(self, other: Regraded) -> None:
        self.cells += other.cells
        self.requests += other.requests
        for mine, theirs in (
            (self.before, other.before),
            (self.after, other.after),
            (self.flips, other.flips),
            (self.statuses, other.statuses),
        ):
            mine.update(theirs)
        self.changed += other.changed


def cell_prompts_by_item(cell: dict) -> dict[str, tuple[Item, Prompt]]:
    """item id -> (item, prompt) for a manifest's `cell`: the runner's own `cell_prompts`."""
    return {p.item.id: (p.item, p.prompt) for p in cell_prompts(cell)}


def _cause(old: dict, new: Grade) -> str:
    if old.get("parse_status") != new.parse_status:
        return f"{old.get('parse_status')} -> {new.parse_status}"
    return (
        "other answer extracted"
        if old.get("extracted_answer") != new.extracted_answer
        else "same answer, equivalence rule"
    )


def regrade_cell(cell_dir: Path, write: bool = True) -> Regraded:
    """Grade every request of one cell again (see the module doc); rewrite the file if `write`."""
    cell_dir = Path(cell_dir)
    path = cell_dir / REQUESTS
    try:
        cell = json.loads((cell_dir / MANIFEST).read_text(encoding="utf-8"))["cell"]
        size = path.stat().st_size if path.exists() else 0
        records = read_jsonl(path)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{cell_dir}: cannot read its manifest's cell or {REQUESTS} ({err})") from None
    prompts = cell_prompts_by_item(cell)
    out = Regraded(cells=1, requests=len(records))
    for r in records:
        item_id = r.get("item_id") or r["id"]
        if item_id not in prompts:
            raise UserError(
                f"{path}: request {r['id']} names item {item_id}, not among the first {cell['samples']} "
                f"of {cell['dataset']}; the data set changed since the run, so it cannot be regraded"
            )
        item, prompt = prompts[item_id]
        reference = prompt.correct_letter or item.answer
        if r.get("reference_answer") not in (None, reference):
            raise UserError(
                f"{path}: request {r['id']} was graded against {r['reference_answer']!r} but its rebuilt "
                f"prompt's answer is {reference!r}; the manifest does not describe the prompts sent"
            )
        if cell["prompt_mode"] == "native":
            prompt = replace(prompt, starts_in_think=(r.get("think_tokens") or 0) > 0)
        g = grade(item, prompt, r.get("output_text") or "")
        out.statuses[(r.get("parse_status"), g.parse_status)] += 1
        old = {"strict": r.get("correct") is True, "lenient": correct_lenient(r)}
        new = {"strict": g.correct, "lenient": g.correct_lenient}
        for verdict in old:
            out.before[verdict] += old[verdict]
            out.after[verdict] += new[verdict]
            if old[verdict] != new[verdict]:
                out.flips[(verdict, "wrong -> right" if new[verdict] else "right -> wrong", _cause(r, g))] += 1
        if old != new:
            out.changed.append(
                {
                    "cell": cell_dir.name,
                    "id": r["id"],
                    "reference": reference,
                    "before": r.get("extracted_answer"),
                    "after": g.extracted_answer,
                    "parse_status": g.parse_status,
                    **{f"{k}_now": v for k, v in new.items()},
                }
            )
        r.update(g.record_fields())
    if write:
        _rewrite(path, records, size)
    return out


def _rewrite(path: Path, records: list[dict], size: int) -> None:
    """Replace `path` by `records` atomically; refuse if the file grew meanwhile (a run writing it)."""
    tmp = path.with_name(path.name + ".regrade.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if path.stat().st_size != size:
            tmp.unlink()
            raise UserError(f"{path} changed while it was regraded (is a run writing it?); nothing was rewritten")
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot rewrite {path}: {err.strerror}") from None
