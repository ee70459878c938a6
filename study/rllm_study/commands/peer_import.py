"""`rllm-study import TOOL FILE --out DIR`: a peer load generator's per-request export as a results
folder that `summarize`, `report` and `report --compare` read (rllm_study.peers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rllm_study.peers import READERS, import_export


def import_cmd(
    tool: Annotated[str, typer.Argument(help=f"The tool that wrote FILE: {', '.join(READERS)}.")],
    file: Annotated[
        Path,
        typer.Argument(
            help="aiperf: profile_export.jsonl; guidellm: benchmarks.json; "
            "vllm-bench: the --save-result --save-detailed JSON."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder to write the cell(s) into.")],
    name: Annotated[
        Optional[str],
        typer.Option(
            "--name",
            help="Cell name (default TOOL-<file stem>); give the name "
            "of one of your cells to line them up in report --compare.",
        ),
    ] = None,
) -> None:
    """Import a peer tool's per-request measurements (no grading; token times only where the export has them)."""
    for cell_dir in import_export(tool, file, out, name):
        print(f"wrote {cell_dir}")


def register(app: typer.Typer) -> None:
    app.command("import")(import_cmd)
