"""`rllm-study pack RUN_DIR...`: compress finished cells' per-token and timeline files for publishing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer

from rllm_study.running.results import cells_in, cells_locked, pack_cell


def pack(
    run_dirs: Annotated[
        List[Path], typer.Argument(help="Run or cell folders written by `rllm-study run` (cells are found below them).")
    ],
) -> None:
    """Gzip each cell's tokens.jsonl and timeline.jsonl into NAME.gz (most of a results folder's
    size); every command reads a packed file as it read the plain one, and a resumed cell appends
    to a new plain file beside it. requests.jsonl stays as it is. Each run folder's lock is held
    while its cells are packed, so a folder a run is writing is refused (exit 2), not cut short."""
    cells = cells_in(run_dirs)
    before = after = packed = 0
    for cell_dir in cells_locked(cells):
        b, a = pack_cell(cell_dir)
        before, after, packed = before + b, after + a, packed + (b > 0)
    print(
        f"packed {packed} of {len(cells)} cells: tokens and timeline files {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB"
    )


def register(app: typer.Typer) -> None:
    app.command("pack")(pack)
