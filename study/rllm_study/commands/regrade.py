"""`rllm-study regrade RUN_DIR...`: grade recorded requests again with the current grader."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer

from rllm_study.analysis.regrade import Regraded, regrade_cell
from rllm_study.running.results import cells_in, cells_locked


def regrade(
    run_dirs: Annotated[
        List[Path], typer.Argument(help="Run or cell folders written by `rllm-study run` (cells are found below them).")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print what would change; rewrite nothing.")] = False,
    list_changes: Annotated[
        bool, typer.Option("--list", help="Also print every request whose verdict changes.")
    ] = False,
) -> None:
    """Grade every recorded request again from its output text with the current rules, rewriting
    the grading fields of requests.jsonl in place (atomically), and print what changed and why.
    Each run folder's lock is held while its cells are rewritten, so a folder a run is writing is
    refused (exit 2); --dry-run reads without it."""
    total = Regraded()
    cells = cells_in(run_dirs)
    for cell_dir in cells if dry_run else cells_locked(cells):
        total.add(regrade_cell(cell_dir, write=not dry_run))
    print(summary(total, dry_run))
    if list_changes:
        for c in total.changed:
            print(
                f"  {c['cell']} {c['id']}: reference {c['reference']!r}, answer {c['before']!r} -> {c['after']!r} "
                f"({c['parse_status']}; now strict {'right' if c['strict_now'] else 'wrong'}, "
                f"lenient {'right' if c['lenient_now'] else 'wrong'})"
            )


def summary(r: Regraded, dry_run: bool) -> str:
    """Counts before and after, then each verdict flip by cause."""
    lines = [
        f"{'would regrade' if dry_run else 'regraded'} {r.requests} requests in {r.cells} cells",
        f"  strict correct:  {r.before['strict']} -> {r.after['strict']}",
        f"  lenient correct: {r.before['lenient']} -> {r.after['lenient']} "
        "(before: the recorded correct_lenient, or correct where a file has none)",
    ]
    lines += [f"  {verdict} {flip}: {n} ({cause})" for (verdict, flip, cause), n in sorted(r.flips.items())]
    lines += ["  parse status (before -> after: requests):"]
    lines += [f"    {old} -> {new}: {n}" for (old, new), n in sorted(r.statuses.items(), key=str)]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("regrade")(regrade)
