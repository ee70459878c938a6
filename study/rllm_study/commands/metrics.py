"""`rllm-study metrics --explain` (every metric's formula and unit) and `rllm-study summarize`
(the ASU table: Accuracy, Service throughput, User latency, one row per cell)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rllm_study.analysis.metrics import (
    CONVENTIONS,
    DEFAULT_PERCENTILES,
    DEFAULT_STRAGGLER_K,
    METRICS,
    SLO_KEYS,
    cell_metrics,
    percentile_key,
)
from rllm_study.errors import UserError
from rllm_study.report import columns as C
from rllm_study.running.results import cells_in, read_cell

LATENCY = ("ttft_s", "ttfvt_s", "e2el_s", "tpot_s")  # one column each, one line per percentile


def parse_percentiles(text: str) -> tuple[float, ...]:
    """'50,90,95,99' -> (50.0, 90.0, 95.0, 99.0); each in [0, 100]."""
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise UserError(f"--percentiles {text!r} must be comma-separated numbers, e.g. 50,90,95,99") from None
    if not all(0 <= p <= 100 for p in values):
        raise UserError(f"--percentiles {text!r}: each percentile must be between 0 and 100")
    return values


def parse_slo(text: str | None) -> dict | None:
    """'ttft_s=2,e2el_s=60' -> {'ttft_s': 2.0, 'e2el_s': 60.0}."""
    if not text:
        return None
    slo = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            slo[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UserError(f"--slo {part!r} must be KEY=SECONDS with KEY one of {', '.join(SLO_KEYS)}")
    return slo


def asu_table(results: list[dict], percentiles: tuple[float, ...]) -> Table:
    """One row per cell, columns from the report's catalogue (`rllm_study.report.columns`); latency
    columns hold one line per percentile; accuracy (strict and lenient) and the answer-phase share
    show their counts and, below, their 95% Wilson interval."""
    pkeys = [percentile_key(p) for p in percentiles]
    with_goodput = any(r["throughput"]["slo"] for r in results)
    before = (C.N_REQUESTS, C.ACCURACY, C.ACCURACY_LENIENT)
    after = (C.ANSWER_PHASE, C.OUT_TOK_S, C.REQ_S, *([C.GOODPUT] if with_goodput else []))
    latency = [[C.latency(name, p) for p in pkeys] for name in LATENCY]
    tail = (C.THINK_MEAN, C.STRAGGLERS, C.KV_PEAK, C.RSS_PEAK)
    table = Table(title="ASU per cell", title_justify="left", box=box.SIMPLE_HEAD)
    headers = (
        "cell",
        *(c.label for c in before),
        "parsed / in think / unparsed",
        *(c.label for c in after),
        "pct",
        *(C.latency(name, "").label for name in LATENCY),
        *(c.label for c in tail),
    )
    for header in headers:
        table.add_column(header, justify="left" if header in ("cell", "pct") else "right")
    for r in results:
        acc = r["accuracy"]["overall"]
        table.add_row(
            escape(r["cell"]),
            *(C.cell_value(r, c, "\n") for c in before),
            f"{acc['parsed']} / {acc['answer_in_think']} / {acc['unparsed']}",
            *(C.cell_value(r, c, "\n") for c in after),
            "\n".join(pkeys),
            *("\n".join(C.cell_value(r, c) for c in columns) for columns in latency),
            *(C.cell_value(r, c) for c in tail),
        )
    return table


def _read(cell_dir: Path):
    try:
        return read_cell(cell_dir)
    except ValueError as err:  # a damaged JSON file (a torn last line is repaired, not an error)
        raise UserError(f"{cell_dir}: unreadable results file ({err}); re-run the cell or remove the folder") from None


def register(app: typer.Typer) -> None:
    @app.command("metrics")
    def metrics_cmd(
        explain: bool = typer.Option(False, "--explain", help="Print every metric with its formula and unit."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Metric definitions: every metric's formula and unit, as reports print them."""
        if not explain:
            raise UserError(
                "nothing to do: use `rllm-study metrics --explain` for definitions, `rllm-study summarize RUN_DIR` for values"
            )
        if as_json:
            print(
                json.dumps(
                    {"metrics": [asdict(m) for m in METRICS.values()], "conventions": list(CONVENTIONS)}, indent=2
                )
            )
            return
        for m in METRICS.values():
            print(f"{m.name} [{m.unit}] = {m.formula}")
            print(textwrap.fill(m.description, width=100, initial_indent="    ", subsequent_indent="    "))
        print("\nConventions:")
        for line in CONVENTIONS:
            print(textwrap.fill(line, width=100, initial_indent="  - ", subsequent_indent="    "))

    @app.command("summarize")
    def summarize_cmd(
        run_dirs: List[Path] = typer.Argument(..., help="Run or cell folders (cells are found below them)."),
        as_json: bool = typer.Option(False, "--json", help="Print every metric of every cell as JSON."),
        percentiles: str = typer.Option(
            ",".join(map(str, DEFAULT_PERCENTILES)), "--percentiles", help="Comma-separated percentiles."
        ),
        slo: Optional[str] = typer.Option(
            None, "--slo", help=f"SLO limits for goodput, e.g. ttfvt_s=30,e2el_s=120 (keys: {', '.join(SLO_KEYS)})."
        ),
        straggler_k: float = typer.Option(
            DEFAULT_STRAGGLER_K, "--straggler-k", help="A straggler's E2EL exceeds k x its group's median."
        ),
    ) -> None:
        """The ASU table (accuracy, throughput, latency percentiles, stragglers, memory), one row per cell."""
        print_summary(cells_in(run_dirs), parse_percentiles(percentiles), parse_slo(slo), straggler_k, as_json)


def print_summary(
    cells: list[Path],
    pcts: tuple[float, ...] = DEFAULT_PERCENTILES,
    slo: dict | None = None,
    straggler_k: float = DEFAULT_STRAGGLER_K,
    as_json: bool = False,
) -> None:
    """Print the ASU table (or JSON) of cells; without --slo each cell's own spec SLOs apply."""
    results = []
    for c in cells:
        cell = _read(c)
        results.append(cell_metrics(cell, pcts, slo or cell.manifest.get("cell", {}).get("slo") or None, straggler_k))
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table, console = asu_table(results, pcts), Console()
    if not console.is_terminal:  # a file or pipe gets the table's natural width; a terminal keeps its own
        console = Console(
            width=max(console.width, console.measure(table, options=console.options.update_width(1000)).maximum)
        )
    console.print(table)
