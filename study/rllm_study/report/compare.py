"""Runs of the same spec side by side (e.g. a CPU against an H100, or two quantizations).

Cells are matched by name (the same spec gives the same cell names). For each matched cell every
key metric is shown per run with its ratio to the first run; a summary gives the geometric mean
of those ratios over matched cells, with its t interval over the matched cell pairs and n. The runs' hardware fingerprints are listed, and so is every
manifest field besides hardware that differed between them (ideally none).
"""

from __future__ import annotations

import json

from rllm_study.analysis.stats import pair_interval
from rllm_study.errors import UserError
from rllm_study.report import columns as C
from rllm_study.report import plots
from rllm_study.report.build import metrics_appendix, sweep_points
from rllm_study.report.cells import CellData, fingerprint, sweep_groups
from rllm_study.report.claims import check_claims
from rllm_study.report.document import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Document,
    Figure,
    Paragraph,
    Section,
    Table,
)

HARDWARE_KEYS = ("hardware", "os", "engine.system_info", "engine.gpu_offload_supported")
MAX_VALUE_CHARS = 80


def flatten(node, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> JSON text of each leaf (lists are leaves)."""
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(node, default=str, sort_keys=True)}


def _ignored(key: str) -> bool:
    """Hardware facts and local file locations: expected to differ between machines."""
    leaf = key.rsplit(".", 1)[-1]
    return any(key == h or key.startswith(h + ".") for h in HARDWARE_KEYS) or leaf in ("path", "file", "model_path")


def differences(runs: dict[str, list[CellData]], matched: list[str]) -> list[list[str]]:
    """Rows (field, value in each run, matched cells where it differs) for manifest fields other
    than hardware that differ between runs in any matched cell."""
    by_name = {label: {c.name: c for c in cells} for label, cells in runs.items()}
    found: dict[str, dict] = {}
    for name in matched:
        flat = {label: flatten(cells[name].cell.manifest) for label, cells in by_name.items()}
        keys = set().union(*flat.values())
        for key in sorted(k for k in keys if not _ignored(k)):
            values = [flat[label].get(key, "(absent)") for label in runs]
            if len(set(values)) > 1:
                entry = found.setdefault(key, {"values": [set() for _ in runs], "cells": 0})
                entry["cells"] += 1
                for seen, v in zip(entry["values"], values):
                    seen.add(v)

    def show(values: set) -> str:
        text = ", ".join(sorted(values))
        return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"

    return [
        [f"`{key}`", *(show(v) for v in e["values"]), f"{e['cells']} of {len(matched)}"] for key, e in found.items()
    ]


def _runs_table(runs: dict[str, list[CellData]]) -> Table:
    prints = {label: [fingerprint(c.cell.manifest) for c in cells] for label, cells in runs.items()}
    keys = list(next(iter(prints.values()))[0])
    rows = [[k, *(", ".join(dict.fromkeys(p[k] for p in ps)) for ps in prints.values())] for k in keys]
    rows.append(
        [
            "git commit",
            *(", ".join(dict.fromkeys(f"`{c.cell.manifest.get('git_commit')}`" for c in cs)) for cs in runs.values()),
        ]
    )
    rows.append(["cells", *(str(len(cs)) for cs in runs.values())])
    return Table(["", *runs], rows)


def agreement(statuses: list[str]) -> str:
    """How the runs' verdicts on one claim relate: opposite settled verdicts, the same settled verdict,
    settled in some and inconclusive in others, or all alike otherwise."""
    settled = {s for s in statuses if s in (REPRODUCED, NOT_REPRODUCED)}
    if len(settled) > 1:
        return "opposite settled verdicts"
    if settled and INCONCLUSIVE in statuses:
        return "settled in some runs, inconclusive in others"
    return "same" if len(set(statuses)) == 1 else "differ in what was tested"


def sweep_comparison(runs: dict[str, list[CellData]]) -> Section | None:
    """The load-sweep figure (`plots.load_sweep`) with one line per run for each sweep the runs share
    (`cells.sweep_groups`, matched by everything but the run folder); None when they share none."""
    shared: dict[tuple, dict[str, list]] = {}
    for label, cells in runs.items():
        for key, cs in sweep_groups(cells).items():
            shared.setdefault(key[:7] + key[8:], {})[label] = sweep_points(cs)
    shared = {k: v for k, v in shared.items() if len(v) > 1}
    if not shared:
        return None
    blocks: list = [
        Paragraph(
            "Each load sweep the runs share, one line per run: per-user speed against machine "
            "throughput, with each run's Pareto front ringed and knee starred (as in the single-run "
            "report's Load sweeps)."
        )
    ]
    for key, series in shared.items():
        study, model, variant, dataset, mode, budget, repeat, arrival, swept, _ = key
        name = " · ".join(
            str(x) for x in (model, variant, dataset, mode, f"budget {budget}", arrival, f"r{repeat}") if x
        )
        blocks.append(
            Figure(
                f"compare-sweep-{study}-{dataset}-{arrival}-{budget}",
                plots.load_sweep(series, swept),
                f"Load sweep over {swept}: {name}.",
            )
        )
    return Section("Load sweeps", blocks)


def build_comparison(runs: dict[str, list[CellData]]) -> Document:
    """The side-by-side report of runs (label -> its cells); the first run is the reference."""
    labels = list(runs)
    ref = labels[0]
    names = [{c.name for c in cs} for cs in runs.values()]
    matched = sorted(set.intersection(*names))
    if not matched:
        raise UserError(
            f"--compare: no cell of {ref} has a namesake in {', '.join(labels[1:])}; compare runs of the same spec "
            "(the same preset and overrides give the same cell names)"
        )
    by_name = {label: {c.name: c for c in cs} for label, cs in runs.items()}

    diffs = differences(runs, matched)
    what_differed = Section(
        "What differed besides hardware",
        [
            Paragraph(
                "Manifest fields (spec, resolved cell, engine settings, model files, software versions, git commit) "
                "that are not the same in every run, over the matched cells; hardware facts and local file paths are "
                "left out."
                if diffs
                else "Nothing: every matched cell ran the same spec, engine settings, model files "
                "and software; only the hardware differed."
            ),
            *([Table(["field", *labels, "matched cells differing"], diffs)] if diffs else []),
        ],
    )

    claims = {label: check_claims(cs) for label, cs in runs.items()}
    claim_rows = [
        [
            c.title,
            *(claims[label][i].status for label in labels),
            agreement([claims[label][i].status for label in labels]),
        ]
        for i, c in enumerate(claims[ref])
    ]
    claims_section = Section(
        "Claims",
        [
            Paragraph(
                "Each finding checked on each run separately, by the rules of the single-run report (95% intervals; "
                "inconclusive where an interval spans its threshold). Runs of one spec on the same hardware may differ "
                "in what is inconclusive; opposite settled verdicts on different hardware are a finding about the "
                "hardware, on the same hardware a sign that something else differed."
            ),
            Table(["finding", *labels, "across runs"], claim_rows),
        ],
    )

    summary_rows, ratios = [], {label: {} for label in labels[1:]}
    for column in C.COMPARE:
        row = [column.label]
        for label in labels[1:]:
            iv = pair_interval(
                [
                    C.ratio(C.value(by_name[label][n].metrics, column), C.value(by_name[ref][n].metrics, column))
                    for n in matched
                ],
                log=True,
                min_n=0,
            )
            ratios[label][column.label] = iv.estimate
            row.append(C.fmt_interval(iv, "ratio") if iv.n else "-")  # no matched cell has the metric
        summary_rows.append(row)
    summary = Section(
        "Summary",
        [
            Paragraph(
                f"Geometric mean over the {len(matched)} matched cells of each metric's ratio to `{ref}` (1.00x = equal; "
                "a metric missing in a cell is left out), with the 95% t interval of the log ratios over the matched "
                "cell pairs and their number n (the cells of one run ran at different moments: the unit is the pair, "
                "not the request)."
            ),
            Table(["metric", *(f"{label} / {ref}" for label in labels[1:])], summary_rows),
            Figure("compare-ratios", plots.ratio_bars(ratios, ref), f"Ratios to {ref}."),
        ],
    )

    cells_section = Section("Cells side by side", [Paragraph("Every key metric of each matched cell in every run.")])
    for name in matched:
        rows = []
        rows.append(
            [
                "n (completed requests)",
                *(str(by_name[label][name].metrics["latency"]["e2el_s"]["count"]) for label in labels),
                *("" for _ in labels[1:]),
            ]
        )
        for column in C.COMPARE:
            vals = [C.value(by_name[label][name].metrics, column) for label in labels]
            rows.append(
                [
                    column.label,
                    *(C.cell_value(by_name[label][name].metrics, column) for label in labels),
                    *(C.fmt_ratio(C.ratio(v, vals[0])) for v in vals[1:]),
                ]
            )
        cells_section.subsections.append(
            Section(name, [Table(["metric", *labels, *(f"{label} / {ref}" for label in labels[1:])], rows)])
        )

    unmatched = sorted(set.union(*names) - set(matched))
    sections = [Section("Runs", [_runs_table(runs)]), what_differed, claims_section, summary, cells_section]
    sweeps = sweep_comparison(runs)
    if sweeps is not None:
        sections.insert(4, sweeps)
    if unmatched:
        sections.append(
            Section(
                "Unmatched cells",
                [
                    Paragraph(
                        "Cells present in only some of the runs, left out above: "
                        + ", ".join(f"`{n}`" for n in unmatched)
                        + "."
                    )
                ],
            )
        )
    sections.append(metrics_appendix())
    intro = [
        Paragraph(
            f"The same cells run on {len(labels)} setups, side by side; ratios are each run's value over "
            f"`{ref}`'s. Made from the result files alone by `rllm-study report --compare`."
        )
    ]
    return Document(f"rllm-study comparison: {' vs '.join(labels)}", intro, sections)
