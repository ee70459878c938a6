"""Offline reports made only from result files: report.md with figures/*.png beside it, and a
self-contained report.html (figures embedded). `write_report` is what `rllm-study report` calls.

  cells.py      read cells, compute their metrics once, group them
  columns.py    the key metrics tables show and how they print
  claims.py     the paper's findings checked by stated rules
  plots.py      one function per figure
  build.py      the report of one or more runs; compare.py runs side by side
  document.py   the report as data; render_md.py / render_html.py write it out
"""

from __future__ import annotations

import re
from pathlib import Path

from rllm_study.errors import UserError

REPORT_MD, REPORT_HTML = "report.md", "report.html"


def unique_name(name: str, taken: set[str]) -> str:
    """A file-safe form of `name` not yet in `taken` (then added to it)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "figure"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


def write_report(run_dirs: list[Path], out_dir: Path, compare: bool = False) -> list[Path]:
    """Build the report (or, with compare, the side-by-side comparison of the runs) and write
    report.md, figures/<name>.png and report.html into out_dir; returns the files written."""
    from rllm_study.report.build import build_report
    from rllm_study.report.cells import load_cells
    from rllm_study.report.compare import build_comparison
    from rllm_study.report.render_html import render_html
    from rllm_study.report.render_md import FIGURES, render_md

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: --out must be a folder")
    if compare:
        if len(run_dirs) < 2:
            raise UserError(
                "--compare needs at least two run folders, e.g. rllm-study report runs/cpu runs/gpu --compare --out DIR"
            )
        doc = build_comparison({str(d): load_cells([d]) for d in run_dirs})
    else:
        doc = build_report(load_cells(run_dirs), [str(d) for d in run_dirs])
    figures = out_dir / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("*.png"):
        old.unlink()
    written, taken = [], set()
    for fig in doc.figures():
        fig.name = unique_name(fig.name, taken)
        path = figures / f"{fig.name}.png"
        path.write_bytes(fig.png)
        written.append(path)
    for name, text in ((REPORT_MD, render_md(doc)), (REPORT_HTML, render_html(doc))):
        (out_dir / name).write_text(text, encoding="utf-8")
        written.append(out_dir / name)
    return written
