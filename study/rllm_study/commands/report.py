"""`rllm-study report`: report.md + figures and a self-contained report.html from result folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer

from rllm_study.report import REPORT_HTML, REPORT_MD, write_report


def report(
    run_dirs: Annotated[
        List[Path], typer.Argument(help="Run or cell folders written by `rllm-study run` (cells are found below them).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.md, figures/ and report.html.")],
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Put the runs side by side (same spec, e.g. CPU vs GPU): each metric per run and its ratio to the first.",
        ),
    ] = False,
) -> None:
    """Write an offline report (Markdown + PNG, and one self-contained HTML file) from result files alone."""
    written = write_report(run_dirs, out, compare)
    figures = sum(p.suffix == ".png" for p in written)
    print(f"wrote {out / REPORT_MD} ({figures} figures in {out / 'figures'}) and {out / REPORT_HTML}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
