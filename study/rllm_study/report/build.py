"""The report of one or more runs: cells gathered into sections of text, tables and figures.

Every section is always present; one whose cells are absent says which preset makes them.
Figures of the pilot study show one representative cell per data set and prompt mode: the
largest budget, the largest batch size and the first repeat; tables give every cell's numbers.
"""

from __future__ import annotations

from collections import Counter

from rllm_study.analysis.metrics import (
    CAUSES,
    CLOSERS,
    CONVENTIONS,
    DISPATCH_LAG_BOUND_S,
    LOOP_N,
    LOOP_SHARE,
    METRICS,
    distribution,
    hit_budget_of,
)
from rllm_study.formatting import proportion
from rllm_study.report import columns as C
from rllm_study.report import plots
from rllm_study.report.cells import (
    REASONING,
    CellData,
    dataset_order,
    fingerprint,
    load_groups,
    pilot_cells,
    pooled_accuracy,
    pooled_metrics,
    sweep_groups,
    technique_groups,
    techniques_between,
    think_budget_groups,
    tier,
    varying_label,
)
from rllm_study.report.claims import check_claims
from rllm_study.report.document import Bullets, Document, Figure, Paragraph, Section, Table

INTRO = (
    "A reasoning language model writes a chain of thought (its think tokens) before the answer a user sees. "
    "The study this toolkit reproduces (Li et al., *Reasoning Language Model Inference Serving Unveiled*, "
    "arXiv 2510.18672) served such models next to ordinary ones and found that thinking changes how serving "
    "behaves: memory use swings, a few long answers hold up whole batches, running time follows difficulty, and "
    "the usual serving optimizations pay off differently. This report checks those findings on the hardware that "
    "ran these cells, from the recorded result files alone.",
    "Terms: TTFT is the time to the first token of any kind; TTFVT the time to the first visible (answer) token, "
    "after the thinking; E2EL the time to the last token; all three count from the request's arrival. The KV cache "
    "holds the attention state of every token in flight; its use is the memory that grows as requests think. A "
    "straggler is a request whose E2EL exceeds twice its batch's median. ASU = Accuracy, Service throughput and "
    "User latency, which the paper asks to be good at once. Every formula is in the appendix.",
)


def _section_or_hint(title: str, hint: str) -> Section:
    return Section(title, [Paragraph(hint)])


def _mode_order(mode: str) -> tuple:
    return (mode != REASONING, mode)


# ---- setup -----------------------------------------------------------------------------------


def setup(cells: list[CellData]) -> Section:
    prints = {}
    for c in cells:
        fp = fingerprint(c.cell.manifest)
        prints.setdefault(tuple(fp.items()), []).append(c)
    hw_rows = [[k, v] for k, v in next(iter(prints))] if len(prints) == 1 else None
    blocks: list = []
    if hw_rows:
        blocks.append(Table(["hardware and engine", ""], hw_rows))
    else:
        keys = [k for k, _ in next(iter(prints))]
        blocks.append(
            Table(
                ["cells", *keys],
                [[str(len(cs)), *(v for _, v in fp)] for fp, cs in prints.items()],
                "These runs come from different machines; `--compare` sets them side by side.",
            )
        )
    versions = Counter(
        (
            c.cell.manifest.get("git_commit") or "unknown",
            ", ".join(f"{k} {v}" for k, v in (c.cell.manifest.get("versions") or {}).items()),
        )
        for c in cells
    )
    blocks.append(Table(["git commit", "software", "cells"], [[f"`{g}`", v, str(n)] for (g, v), n in versions.items()]))
    models: dict[str, list[CellData]] = {}
    for c in cells:
        models.setdefault(c.label, []).append(c)
    blocks.append(Paragraph("Models, as each cell used them:"))
    rows = []
    for label, cs in models.items():
        m, gguf = cs[0].model, cs[0].model.get("gguf") or {}
        rows.append(
            [
                label,
                str(m.get("params") or "-"),
                str(m.get("quant") or "-"),
                C.fmt(gguf.get("bits_per_weight")),
                C.fmt((m.get("size_bytes") or 0) / 2**20 or None),
                str(m.get("source") or cs[0].cell.manifest.get("engine", {}).get("base_url") or "-"),
                str(len(cs)),
            ]
        )
    blocks.append(Table(["model", "params", "quant", "bits/weight", "file MiB", "source", "cells"], rows))
    studies: dict[str, list[CellData]] = {}
    for c in cells:
        studies.setdefault(c.study, []).append(c)
    blocks.append(
        Table(
            ["study", "cells", "requests", "data sets", "prompt modes", "budgets", "workloads", "variants"],
            [
                [
                    s,
                    str(len(cs)),
                    str(sum(len(c.cell.requests) for c in cs)),
                    ", ".join(sorted({c.dataset for c in cs}, key=dataset_order)),
                    ", ".join(sorted({c.mode for c in cs}, key=_mode_order)),
                    ", ".join(str(b) for b in sorted({c.budget for c in cs})),
                    ", ".join(sorted({c.workload_name for c in cs})),
                    ", ".join(dict.fromkeys(c.variant for c in cs if c.variant)) or "-",
                ]
                for s, cs in studies.items()
            ],
        )
    )
    return Section("Setup", blocks)


# ---- claims ---------------------------------------------------------------------------------


def claims_section(cells: list[CellData]) -> Section:
    claims = check_claims(cells)
    summary = Table(["finding", "status", "why"], [[c.title, c.status, c.reason] for c in claims])
    return Section(
        "Claims",
        [
            Paragraph(
                "Each finding of the paper, checked by the rule stated under it. Every condition of a rule is a 95% "
                "interval against a threshold: reproduced when every interval lies on the finding's side, not reproduced "
                "when one lies on the other side, inconclusive when an interval spans its threshold (or the sample is "
                "too small for one), not tested when the cells it needs are not in these runs. Accuracy (the lenient "
                "grade: an answer stated only in the thinking counts): Wilson intervals, Newcombe for differences "
                "(paired by item where the items match). Latency, throughput, KV, straggler and tail figures vary "
                "between cells as well as within them, so their intervals are t intervals over matched cell pairs "
                "(or a bootstrap of cells, then of requests within each drawn cell), and settle only with at least 3 "
                "independent cells a side; seconds are compared only between cells whose measured machine speed "
                "agrees (each verdict names its unit and n). An inconclusive claim names roughly how many requests, "
                "cells or pairs would settle it: "
                "n x (h / d)^2, with h the distance from the estimate to the interval's end on the threshold's side and "
                "d the distance from the estimate to the threshold (log scale for ratios). Two runs of one preset can "
                "differ in what is inconclusive, but settle opposite verdicts only with a few percent probability. "
                "Small edge models and short budgets are not the paper's 7B-70B models: a finding that does not "
                "reproduce here is a measured fact about this setup."
            ),
            summary,
            *claims,
        ],
    )


# ---- pilot ----------------------------------------------------------------------------------


def representatives(cells: list[CellData]) -> list[list[CellData]]:
    """Per (run, model, data set), the pilot cells at the largest budget, largest batch and first repeat, reasoning first."""
    pilot = pilot_cells(cells)
    if not pilot:
        return []
    top = max(c.budget for c in pilot)
    pilot = [c for c in pilot if c.budget == top]
    batch = max(c.workload.get("batch_size") or 0 for c in pilot)
    pilot = [c for c in pilot if (c.workload.get("batch_size") or 0) == batch]
    first = min(c.spec.get("repeat", 0) for c in pilot)
    groups: dict[tuple, list[CellData]] = {}
    for c in sorted(pilot, key=lambda c: (str(c.spec.get("model")), dataset_order(c.dataset), _mode_order(c.mode))):
        if c.spec.get("repeat", 0) == first:
            groups.setdefault((c.run, c.spec.get("model"), c.dataset), []).append(c)
    return list(groups.values())


def _selection_note(reps: list[list[CellData]]) -> str:
    c = reps[0][0]
    return (
        f"Shown: budget {c.budget} tokens, {c.workload_name}, repeat {c.spec.get('repeat', 0)} "
        f"(the largest budget and batch size recorded)."
    )


def _columns(group: list[CellData]) -> list[tuple[str, CellData]]:
    return [(f"{c.dataset} · {c.mode}", c) for c in group]


def _models_note(group: list[CellData]) -> str:
    return "; ".join(dict.fromkeys(c.label for c in group))


def memory_section(cells: list[CellData]) -> Section:
    reps = representatives(cells)
    if not reps:
        return _section_or_hint(
            "Memory use and fluctuation", "No pilot cells in these runs: `rllm-study run --preset pilot` makes them."
        )
    blocks: list = [
        Paragraph(
            "KV-cache use (in the engine's unit, capacity dashed) and process RSS over one cell's run, "
            "with running and waiting requests and each request's arrival and finish. KV use and the running "
            "and waiting counts come from the recorded admission, token and finish events (exact at every "
            "change, as in the tables and claims); RSS and GPU memory from the sampler. " + _selection_note(reps)
        )
    ]
    for group in reps:
        blocks.append(
            Figure(
                f"memory-{group[0].base_model}-{group[0].dataset}",
                plots.timeline(_columns(group)),
                f"Memory over time, {group[0].dataset}: {_models_note(group)}.",
            )
        )
    blocks.append(
        Table(
            ["cell", "KV peak", "KV mean", "KV CV", "KV from", "RSS peak MiB", "RSS CV", "longest sampler gap s"],
            [
                [
                    f"{c.dataset} · {c.mode}",
                    C.cell_value(c.metrics, C.KV_PEAK),
                    C.cell_value(c.metrics, C.KV_MEAN),
                    C.cell_value(c.metrics, C.KV_CV),
                    c.metrics["memory"]["kv_frac"].get("source") or "sampler",
                    C.cell_value(c.metrics, C.RSS_PEAK),
                    C.fmt(c.metrics["memory"]["rss_bytes"]["cv"]),
                    C.fmt(c.metrics["memory"]["rss_bytes"].get("max_gap_s")),
                ]
                for g in reps
                for c in g
            ],
            "KV from events: the cells the requests held, exact at every admission, token and finish "
            "(`kv_events`); from the sampler: the engine's own counter, sampled. Peak, mean and CV are weighted by "
            "time (`time_weighted`).",
        )
    )
    return Section("Memory use and fluctuation", blocks)


def straggler_section(cells: list[CellData]) -> Section:
    reps = representatives(cells)
    if not reps:
        return _section_or_hint(
            "Stragglers", "No pilot cells in these runs: `rllm-study run --preset pilot` makes them."
        )
    k = reps[0][0].metrics["stragglers"]["k"]
    blocks: list = [
        Paragraph(
            f"Each bar is one request from arrival to its last token, grouped by synchronous batch. "
            f"A straggler (red) took more than {k:g}x its batch's median E2EL; the shaded tail is the "
            f"time a batch ran with fewer than half its requests left. " + _selection_note(reps)
        )
    ]
    for group in reps:
        blocks.append(
            Figure(
                f"stragglers-{group[0].base_model}-{group[0].dataset}",
                plots.batches(_columns(group)),
                f"Requests per batch, {group[0].dataset}: {_models_note(group)}.",
            )
        )
    blocks.append(
        Table(
            ["cell", "stragglers", "share", "tail time s", "tail share", "think tok: stragglers / others"],
            [
                [
                    f"{c.dataset} · {c.mode}",
                    f"{c.metrics['stragglers']['count']}/{c.metrics['latency']['e2el_s']['count']}",
                    C.cell_value(c.metrics, C.STRAGGLERS),
                    C.fmt(c.metrics["stragglers"]["tail_time_s"]),
                    C.cell_value(c.metrics, C.TAIL_SHARE),
                    _think_text(
                        c,
                        f"{C.fmt(c.metrics['stragglers']['think_tokens_mean'])} / {C.fmt(c.metrics['stragglers']['non_straggler_think_tokens_mean'])}",
                    ),
                ]
                for g in reps
                for c in g
            ],
            "Stragglers out of completed requests; think tokens only for cells that think.",
        )
    )
    blocks.append(
        Paragraph(
            "Where the stragglers' time went (`straggler_causes`): each straggler's E2EL split into queue wait, prefill, "
            "decoding its think and answer tokens at the one-sequence speed this cell measured (`solo_itl_s` p50: token "
            "gaps while only one request ran), and the rest of its decoding, the slowdown from sharing decode steps with "
            "other requests. Seconds summed over the cell's stragglers; the largest part dominates. Where the cell never "
            "ran one request alone, think and answer are their measured decoding times and sharing is not measured."
        )
    )
    blocks.append(
        Table(
            [
                "cell",
                "stragglers",
                "solo ITL ms (gaps)",
                *(f"{c} s" for c in CAUSES),
                "dominant",
                "capped / capped repetition loops",
            ],
            [_causes_row(c) for g in reps for c in g],
            f"A capped repetition loop (`capped_repetition_loop`): a straggler cut at a budget whose thinking repeats "
            f"itself, at least {LOOP_SHARE:g} of its think-phase {LOOP_N}-grams occurring earlier in it.",
        )
    )
    return Section("Stragglers", blocks)


def _think_text(c: CellData, text: str) -> str:
    """Think-token figures only for cells prompted to think; "—" for direct cells."""
    return text if c.mode == REASONING else "—"


def _causes_row(c: CellData) -> list[str]:
    causes = c.metrics["stragglers"]["causes"]
    solo = c.metrics["stragglers"]["solo_itl_s"]
    secs = causes["seconds"]
    solo_text = f"{C.fmt(solo['p50'], 'ms')} ({solo['count']})" if solo["count"] else "not measured (0)"
    if not causes["count"]:
        return [f"{c.dataset} · {c.mode}", "0", solo_text, *("-" for _ in CAUSES), "-", "-"]
    parts = [
        (
            "—"
            if part == "think" and c.mode != REASONING
            else "not measured"
            if secs[part] is None
            else C.fmt(secs[part])
        )
        for part in CAUSES
    ]
    loops = f"{causes.get('capped', '-')} / {causes.get('capped_repetition_loops', '-')}"
    return [f"{c.dataset} · {c.mode}", str(causes["count"]), solo_text, *parts, causes["dominant"], loops]


def _top_budget_pilot(cells: list[CellData]) -> dict[tuple, list[CellData]]:
    """Per (run, model, batch size): its pilot cells at its largest budget (batch sizes are not pooled:
    their latencies differ)."""
    out: dict[tuple, list[CellData]] = {}
    for c in pilot_cells(cells):
        out.setdefault((c.run, c.spec.get("model"), c.workload.get("batch_size")), []).append(c)
    return {m: [c for c in cs if c.budget == max(x.budget for x in cs)] for m, cs in out.items()}


def difficulty_section(cells: list[CellData]) -> Section:
    per_model = _top_budget_pilot(cells)
    if not per_model:
        return _section_or_hint(
            "Adaptive running time", "No pilot cells in these runs: `rllm-study run --preset pilot` makes them."
        )
    blocks: list = [
        Paragraph(
            "Think tokens, output tokens and end-to-end latency per completed request, by data set "
            "from easy to hard, at the largest budget, per batch size (repeats pooled)."
        )
    ]
    for cs in per_model.values():
        by_dataset: dict[str, dict[str, list[dict]]] = {}
        for c in sorted(cs, key=lambda c: dataset_order(c.dataset)):
            by_dataset.setdefault(c.dataset, {}).setdefault(c.mode, []).extend(r for r in c.rows if r["completed"])
        blocks.append(
            Figure(
                f"difficulty-{cs[0].base_model}-batch{cs[0].workload.get('batch_size')}",
                plots.difficulty(by_dataset, {d: tier(d) for d in by_dataset}),
                f"Tokens and running time by difficulty, budget {cs[0].budget}, {cs[0].workload_name}: {_models_note(cs)}.",
            )
        )
        rows = []
        for d, modes in by_dataset.items():
            for mode in sorted(modes, key=_mode_order):
                rs = modes[mode]
                think, out, e2el = (distribution(r[k] for r in rs) for k in ("think_tokens", "output_tokens", "e2el_s"))
                free = [r for r in rs if not r["capped"]]
                think_free, e2el_free = (distribution(r[k] for r in free) for k in ("think_tokens", "e2el_s"))
                rows.append(
                    [
                        d,
                        tier(d),
                        mode,
                        str(len(rs)),
                        f"{C.fmt(think['mean'])} / {C.fmt(think['p90'])}" if mode == REASONING else "—",
                        C.fmt(out["mean"]),
                        f"{C.fmt(e2el['mean'])} / {C.fmt(e2el['p90'])}",
                        C.fmt((hit_budget_of(rs) or {}).get("share"), "pct"),
                        f"{C.fmt(think_free['mean']) if mode == REASONING else '—'} / {C.fmt(e2el_free['mean'])} (n={len(free)})",
                        _closers_text(rs) if mode == REASONING else "—",
                    ]
                )
        blocks.append(
            Table(
                [
                    "data set",
                    "difficulty",
                    "mode",
                    "n",
                    "think tok mean / p90",
                    "output tok mean",
                    "E2EL s mean / p90",
                    "hit budget",
                    "without capped: think tok / E2EL s mean",
                    "thinking closed by model / cap / ended / unclosed",
                ],
                rows,
                "Hit budget: the output budget (finish length) or the think cap (`think_closed_by` cap); "
                "the means without capped leave those requests out.",
            )
        )
    return Section("Adaptive running time", blocks)


def _closers_text(rows: list[dict]) -> str:
    """Who ended the thinking of these requests (`think_closed_by`), as counts of those that thought."""
    closers = [r["think_closed_by"] for r in rows if r["think_closed_by"] is not None]
    return " / ".join(str(closers.count(c)) for c in CLOSERS) + f" of {len(closers)}" if closers else "-"


def domain_section(cells: list[CellData]) -> Section:
    pilot = pilot_cells(cells)
    if not pilot:
        return _section_or_hint(
            "Domain preference", "No pilot cells in these runs: `rllm-study run --preset pilot` makes them."
        )
    blocks: list = [
        Paragraph(
            "Accuracy per domain for each prompt mode (requests of all cells pooled; unparsed answers "
            "count as wrong). Strict: the answer stated in the answer phase; lenient: also an answer "
            "found only in the thinking (no answer phase); each with n and its 95% Wilson interval."
        )
    ]
    by_model: dict[str, list[CellData]] = {}
    for c in pilot:
        by_model.setdefault(c.spec.get("model"), []).append(c)
    for cs in by_model.values():
        acc: dict[int, dict[str, dict]] = {}
        for budget in sorted({c.budget for c in cs}):
            for mode in sorted({c.mode for c in cs}, key=_mode_order):
                acc.setdefault(budget, {})[mode] = pooled_accuracy(
                    [c for c in cs if c.budget == budget and c.mode == mode], "by_domain"
                )
        blocks.append(
            Figure(
                f"accuracy-{cs[0].base_model}", plots.domain_accuracy(acc), f"Accuracy by domain: {_models_note(cs)}."
            )
        )
        top = max(acc)
        rows = []
        for mode in sorted({c.mode for c in cs}, key=_mode_order):
            per_ds = pooled_accuracy([c for c in cs if c.budget == top and c.mode == mode], "by_dataset")
            for d in sorted(per_ds, key=dataset_order):
                a = per_ds[d]
                rows.append(
                    [
                        d,
                        tier(d),
                        mode,
                        proportion(a["accuracy"], a["correct"], a["total"], a["ci95"]),
                        proportion(a["accuracy_lenient"], a["correct_lenient"], a["total"], a["ci95_lenient"]),
                        f"{a['parsed']} / {a['answer_in_think']} / {a['unparsed']}",
                    ]
                )
        blocks.append(
            Table(
                [
                    "data set",
                    "difficulty",
                    "mode",
                    "accuracy strict",
                    "accuracy lenient",
                    "parsed / in think / unparsed",
                ],
                rows,
                f"At budget {top} tokens.",
            )
        )
    return Section("Domain preference", blocks)


def _series(cells: list[CellData]) -> dict[str, list[dict]]:
    """Completed-request rows pooled over data sets and repeats, per (model, variant, mode, budget, workload)."""
    keyed: dict[tuple, list[CellData]] = {}
    for c in cells:
        keyed.setdefault((c.spec.get("model"), c.variant, c.mode, c.budget, c.workload_name), []).append(c)
    names = ("model", "variant", "mode", "budget", "workload")
    varying = [i for i in range(len(names)) if len({k[i] for k in keyed}) > 1]
    return {
        (" · ".join(f"budget {k[i]}" if names[i] == "budget" else str(k[i]) for i in varying) or "all"): [
            r for c in cs for r in c.rows
        ]
        for k, cs in keyed.items()
    }


def latency_section(cells: list[CellData]) -> Section:
    blocks: list = [
        Paragraph(
            "Empirical distributions of TTFT, TTFVT and E2EL over completed requests (data sets and "
            "repeats pooled). A curve further left is faster; the gap between TTFT and TTFVT is the "
            "thinking a user waits through. A request with no answer token has no TTFVT."
        )
    ]
    studies: dict[str, list[CellData]] = {}
    for c in cells:
        studies.setdefault(c.study, []).append(c)
    for study, cs in studies.items():
        if len({c.budget for c in cs}) > 1 and len(_series(cs)) > 8:
            cs = [c for c in cs if c.budget == max(x.budget for x in cs)]
        blocks.append(
            Figure(
                f"latency-{study}",
                plots.latency_cdfs(_series(cs)),
                f"Latency CDFs, study {study}"
                + (f" (budget {cs[0].budget})" if len({c.budget for c in cs}) == 1 else "")
                + ".",
            )
        )
    return Section("Latency distributions", blocks)


# ---- techniques -------------------------------------------------------------------------------


def technique_section(cells: list[CellData]) -> Section:
    groups = technique_groups(cells)
    if not groups:
        return _section_or_hint(
            "Techniques",
            "No cells with variants in these runs: the `quantization`, `kv-cache`, "
            "`prefix-cache` and `speculative` presets make them.",
        )
    section = Section(
        "Techniques",
        [
            Paragraph(
                "Each study's variants against its baseline (the first variant in the spec), cell by cell; ratios are "
                "variant / baseline, accuracy differences in percentage points."
            )
        ],
    )
    by_study: dict[str, list] = {}
    for g in groups:
        by_study.setdefault(g.study, []).append(g)
    for study, gs in by_study.items():
        names = sorted({t for g in gs for v in g.variants.values() for t in techniques_between(g.baseline, v)}) or [
            "other settings"
        ]
        group_cells = [v for g in gs for v in g.variants.values()]
        rows, points = [], []
        for g in gs:
            base = g.baseline
            where = varying_label(group_cells, base) if len(gs) > 1 else base.dataset
            settings = variant_settings(list(g.variants.values()))
            for name, c in g.variants.items():
                cells_text = []
                for column in C.TECHNIQUE:
                    new, ref = C.value(c.metrics, column), C.value(base.metrics, column)
                    text = C.cell_value(c.metrics, column)
                    if c is not base and new is not None and ref is not None:
                        text += f" ({C.points(new, ref) if column.counts else C.fmt_ratio(C.ratio(new, ref))})"
                    cells_text.append(text)
                rows.append(
                    [
                        where,
                        name + (" (baseline)" if c is base else ""),
                        settings[c.name],
                        str(c.metrics["latency"]["e2el_s"]["count"]),
                        *cells_text,
                    ]
                )
                points.append((name, where, C.value(c.metrics, C.OUT_TOK_S), C.value(c.metrics, C.ACCURACY_LENIENT)))
        models = "; ".join(dict.fromkeys(c.label for c in group_cells))
        section.subsections.append(
            Section(
                f"Technique: {study}",
                [
                    Paragraph(f"Varies: {', '.join(names)}. Models: {models}."),
                    Table(
                        ["cells", "variant", "settings", "n", *(c.label for c in C.TECHNIQUE)],
                        rows,
                        "ASU against the baseline variant: in brackets the ratio variant / baseline (accuracy and answer-phase "
                        "share: the difference in points). n: completed requests, which the latency percentiles rest on; "
                        "accuracy counts every request.",
                    ),
                    Figure(
                        f"technique-{study}",
                        plots.accuracy_vs_throughput(points),
                        f"Accuracy (lenient, the grade the claims use) against output tokens/s, study {study}.",
                    ),
                ],
            )
        )
    return section


def variant_settings(cells: list[CellData]) -> dict[str, str]:
    """Per cell name, the settings that differ among these variant cells: model quantization (with
    bits per weight), engine options and the engine's KV bytes per token."""

    def facts(c: CellData) -> dict[str, str]:
        out = {"weights": f"{c.model.get('quant')} ({C.fmt((c.model.get('gguf') or {}).get('bits_per_weight'))} bpw)"}
        out.update({k: str(v) for k, v in (c.spec.get("engine") or {}).items()})
        per_token = (c.cell.manifest.get("engine") or {}).get("kv_bytes_per_token")
        out["KV/token"] = "-" if per_token is None else f"{per_token / 1024:.1f} KiB"
        return out

    all_facts = {c.name: facts(c) for c in cells}
    keys = [k for k in next(iter(all_facts.values())) if len({f.get(k) for f in all_facts.values()}) > 1]
    return {name: ", ".join(f"{k} {f.get(k)}" for k in keys) or "-" for name, f in all_facts.items()}


# ---- load -----------------------------------------------------------------------------------


def load_section(cells: list[CellData]) -> Section:
    groups = load_groups(cells)
    if not groups:
        return _section_or_hint(
            "Bursty arrivals", "No open-loop cells in these runs: `rllm-study run --preset realworld` makes them."
        )
    blocks: list = [
        Paragraph(
            "Requests arrive on their own schedule (open loop: Poisson, or Gamma with shape 1/CV^2, "
            "burstier as the CV grows), whether or not the engine keeps up. Poisson and Gamma schedules are "
            "rescaled to their target rate, so cells at one rate offer the same load over the same span; "
            "each row gives the realised arrival rate and CV of its n recorded arrivals. Per rate and CV: "
            "requests running and waiting in the queue, and KV-cache use, over time."
        )
    ]
    for key, cs in groups.items():
        study, _, dataset, mode, budget, *_ = key
        blocks.append(
            Figure(
                f"load-{study}-{cs[0].base_model}-{dataset}-{mode}-{budget}",
                plots.timeline([(c.workload_name, c) for c in cs], with_rss=False),
                f"Queue and KV use under load, {dataset}, {mode}, budget {budget}: {_models_note(cs)}.",
            )
        )
        blocks.append(
            Table(
                ["workload", *(c.label for c in C.LOAD)],
                [[c.workload_name, *(C.cell_value(c.metrics, col) for col in C.LOAD)] for c in cs],
            )
        )
    return Section("Bursty arrivals", blocks)


def sweep_points(cells: list[CellData]) -> list:
    """One `analysis.sweep.SweepPoint` per cell of a sweep, from its metrics."""
    from rllm_study.analysis.sweep import SweepPoint, load_of

    return [
        SweepPoint(
            load_of(c.workload)[1],
            C.value(c.metrics, C.OUT_TOK_S),
            C.value(c.metrics, C.USER_TOK_S_P50),
            C.value(c.metrics, C.TPOT_P50),
            C.value(c.metrics, C.GOODPUT),
            c.metrics["latency"]["e2el_s"]["count"],
            c.name,
        )
        for c in cells
    ]


def sweep_section(cells: list[CellData]) -> Section:
    """Load sweeps (`cells.sweep_groups`): per-user speed against machine throughput, front and knee."""
    from rllm_study.analysis.sweep import knee, pareto_front

    groups = sweep_groups(cells)
    if not groups:
        return _section_or_hint(
            "Load sweeps",
            "No load sweeps in these runs (cells that differ only in concurrency or "
            "rate): `rllm-study run --preset load-sweep` makes one.",
        )
    blocks: list = [
        Paragraph(
            "Each sweep runs the same requests at rising load. Per-user speed = `user_tok_s` p50, (output tokens - 1) / "
            "(finish - first token) of each completed request; machine throughput = `output_tok_s`. Ringed points form the "
            "Pareto front (no other point of the sweep is faster for users and for the machine at once); the star is the "
            "knee (`sweep_knee`): the last load before TPOT p50 grows by a larger factor than throughput. Goodput needs "
            "SLOs (`[slo]` in the spec)."
        )
    ]
    by_figure: dict[tuple, dict[str, list]] = {}
    for key, cs in groups.items():
        study, model, variant, dataset, mode, budget, repeat, run, arrival, swept, _ = key
        points = sweep_points(cs)
        label = " · ".join(str(x) for x in (model, variant, dataset, f"r{repeat}") if x not in ("", None))
        by_figure.setdefault((study, arrival, swept, budget), {})[label] = points
        front, k = pareto_front(points), knee(points)
        rows = [
            [
                f"{p.load:g}",
                str(p.n),
                C.fmt(p.throughput),
                C.fmt(p.user_speed),
                C.fmt(p.tpot, "ms"),
                C.fmt(p.goodput),
                ("front" if p in front else "") + (" knee" if p is k else ""),
            ]
            for p in points
        ]
        blocks.append(
            Table(
                [swept, "n", "out tok/s", "per-user tok/s p50", "TPOT p50 ms", "goodput req/s", "marked"],
                rows,
                f"{label}, {mode}, budget {budget}, {arrival} (study {study}).",
            )
        )
    for (study, arrival, swept, budget), series in by_figure.items():
        blocks.append(
            Figure(
                f"sweep-{study}-{arrival}-{budget}",
                plots.load_sweep(series, swept),
                f"Load sweep over {swept}, {arrival}, budget {budget} (study {study}).",
            )
        )
    return Section("Load sweeps", blocks)


def sessions_section(cells: list[CellData]) -> Section:
    """Multi-turn cells turn by turn (`by_turn`): what a user waited for and how much of the growing
    prompt the prefix cache served."""
    multi = [c for c in cells if (c.metrics.get("turns") or {}).get("by_turn")]
    if not multi:
        return _section_or_hint(
            "Multi-turn sessions", "No multi-turn cells in these runs: `rllm-study run --preset multi-turn` makes them."
        )
    rows = []
    for c in multi:
        for k, t in c.metrics["turns"]["by_turn"].items():
            rows.append(
                [
                    varying_label(multi, c),
                    k,
                    str(t["n"]),
                    C.fmt(t["ttft_s_p50"]),
                    C.fmt(t["ttfvt_s_p50"]),
                    C.fmt(t["prompt_tokens_mean"]),
                    C.fmt(t["cached_tokens_mean"]),
                    C.fmt(t["reuse"], "pct"),
                ]
            )
    return Section(
        "Multi-turn sessions",
        [
            Paragraph(
                "Each session asks a problem, then follow-ups about it; every turn's prompt carries the earlier turns' "
                "questions and answers (thinking removed unless the workload keeps it), sent a think time after the "
                "previous answer. Per turn, over completed requests: TTFT and TTFVT p50 (from the turn's scheduled "
                "arrival), prompt tokens, tokens served from the prefix cache, and reuse = cached / prompt tokens."
            ),
            Table(
                ["cell", "turn", "n", "TTFT p50 s", "TTFVT p50 s", "prompt tok mean", "cached tok mean", "reuse"], rows
            ),
        ],
    )


def dispatch_lag_section(cells: list[CellData]) -> Section:
    """Per cell, how late the runner sent its requests after their arrival (`dispatch_lag_s`), with a
    warning naming the cells whose p99 exceeds DISPATCH_LAG_BOUND_S."""
    measured = [c for c in cells if c.metrics["arrivals"]["dispatch_lag_s"]["count"]]
    if not measured:
        return _section_or_hint(
            "Dispatch lag",
            "No cell in these runs recorded its send times (`sent_s`, recorded "
            "since the runner took it): run them again to see the dispatch lag.",
        )
    late = [c for c in measured if c.metrics["arrivals"]["dispatch_lag_s"]["p99"] > DISPATCH_LAG_BOUND_S]
    blocks: list = [
        Paragraph(
            "Dispatch lag = sent_s - arrival_s: how long after its arrival (open loop: its scheduled time) the runner handed "
            "a request to the engine. The runner sends at the first loop turn after a request is due, so one that comes due "
            "during an engine step waits for that step; latencies still count from the arrival. Completed requests; "
            f"bound on p99: {1000 * DISPATCH_LAG_BOUND_S:g} ms."
        )
    ]
    if late:
        blocks.append(
            Paragraph(
                f"**Warning:** {len(late)} of {len(measured)} cells sent requests later than the bound "
                f"(p99 above {1000 * DISPATCH_LAG_BOUND_S:g} ms): "
                + ", ".join(f"{c.name} ({C.cell_value(c.metrics, C.LAG_P99)} ms)" for c in late)
                + ". Their offered load was not sent on time; read their latencies as including the lag."
            )
        )
    rows = []
    for c in measured:
        lag = c.metrics["arrivals"]["dispatch_lag_s"]
        rows.append(
            [
                varying_label(measured, c),
                c.workload_name,
                str(lag["count"]),
                C.cell_value(c.metrics, C.LAG_P50),
                C.fmt(lag["p90"], "ms"),
                C.cell_value(c.metrics, C.LAG_P99),
                C.fmt(lag["max"], "ms"),
                "over the bound" if c in late else "ok",
            ]
        )
    blocks.append(Table(["cell", "workload", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99 vs bound"], rows))
    return Section("Dispatch lag", blocks)


# ---- all cells and appendix ---------------------------------------------------------------------

THINK_BUDGET_COLUMNS = (
    C.ACCURACY,
    C.ACCURACY_LENIENT,
    C.THINK_MEAN,
    C.THINK_FORCED,
    C.ANSWER_PHASE,
    C.TTFVT_P50,
    C.E2EL_P50,
    C.E2EL_P95,
)


def think_budget_section(cells: list[CellData]) -> Section:
    """Accuracy, thinking and latency against the think budget (cells that differ only in it)."""
    groups = think_budget_groups(cells)
    if not groups:
        return _section_or_hint(
            "Think budget",
            "No cells that differ only in their think budget: `rllm-study run --preset think-budget` makes them.",
        )
    blocks: list = [
        Paragraph(
            "The engine closes the thinking when a request has generated its think budget of think tokens, or when the "
            "model ends while still thinking, by writing `</think>` and the prompt mode's answer cue; the answer follows "
            "within the rest of the token budget. `think forced` is the share of thinking requests it closed so."
        )
    ]
    by_figure: dict[tuple, dict[str, list]] = {}
    for key, by_budget in groups.items():
        study, model, dataset, mode, budget, workload, _ = key
        pooled = [(cs[0].think_budget, pooled_metrics(cs), cs) for cs in by_budget]
        by_figure.setdefault((study, model, budget, workload), {})[f"{dataset} · {mode}"] = [
            (tb, m) for tb, m, _ in pooled
        ]
        rows = [
            [
                str(tb),
                str(sum(len(c.cell.requests) for c in cs)),
                str(len(cs)),
                *(C.cell_value(m, col) for col in THINK_BUDGET_COLUMNS),
            ]
            for tb, m, cs in pooled
        ]
        blocks.append(
            Table(
                ["think budget", "requests", "repeats", *(col.label for col in THINK_BUDGET_COLUMNS)],
                rows,
                f"{model}, {dataset}, {mode} mode, token budget {budget}, {workload} (study {study}); "
                "each row pools its repeats' requests.",
            )
        )
    for (_study, model, budget, workload), series in by_figure.items():
        blocks.append(
            Figure(
                f"think-budget-{model}-{budget}-{workload}",
                plots.think_budget_sweep(series),
                f"Against the think budget: {model}, token budget {budget}, {workload} "
                "(each point pools one think budget's repeats; requests and intervals are in the tables above).",
            )
        )
    return Section("Think budget", blocks)


def cells_section(cells: list[CellData]) -> Section:
    section = Section("All cells", [Paragraph("Every cell's key numbers (percentiles over completed requests).")])
    studies: dict[str, list[CellData]] = {}
    for c in cells:
        studies.setdefault(c.study, []).append(c)
    for study, cs in studies.items():
        rows = [
            [
                varying_label(cs, c),
                str(len(c.cell.requests)),
                *(
                    _think_text(c, C.cell_value(c.metrics, col))
                    if col is C.THINK_MEAN
                    else C.cell_value(c.metrics, col)
                    for col in C.OVERVIEW
                ),
            ]
            for c in cs
        ]
        section.blocks.append(Table(["cell", "requests", *(c.label for c in C.OVERVIEW)], rows, f"Study {study}."))
    return section


def metrics_appendix() -> Section:
    rows = [[f"`{m.name}`", m.unit, f"`{m.formula}`", m.description] for m in METRICS.values()]
    return Section(
        "Appendix: metrics",
        [
            Paragraph(
                "Every metric this report uses, with its formula and unit (the same definitions as `rllm-study metrics --explain`)."
            ),
            Table(["metric", "unit", "formula", "meaning"], rows),
            Paragraph("Conventions:"),
            Bullets(list(CONVENTIONS)),
        ],
    )


def _title(cells: list[CellData]) -> str:
    """The studies and where they ran: the GPU for cells with layers offloaded to one, else the CPU."""
    studies = ", ".join(dict.fromkeys(c.study for c in cells))

    def machine(c: CellData) -> str:
        fp = fingerprint(c.cell.manifest)
        offloaded = ((c.cell.manifest.get("engine") or {}).get("context") or {}).get("n_gpu_layers")
        return fp["GPUs"] if offloaded and fp["GPUs"] != "none" else fp["CPU"]

    return f"rllm-study report: {studies} on {', '.join(dict.fromkeys(machine(c) for c in cells))}"


def build_report(cells: list[CellData], sources: list[str]) -> Document:
    """The full report of these cells; `sources` names the run folders they came from."""
    intro = [
        *(Paragraph(p) for p in INTRO),
        Paragraph(
            f"Made from {len(cells)} cells ({sum(len(c.cell.requests) for c in cells)} requests) in "
            + ", ".join(f"`{s}`" for s in sources)
            + "."
        ),
    ]
    return Document(
        _title(cells),
        intro,
        [
            setup(cells),
            claims_section(cells),
            memory_section(cells),
            straggler_section(cells),
            difficulty_section(cells),
            domain_section(cells),
            latency_section(cells),
            technique_section(cells),
            load_section(cells),
            sweep_section(cells),
            sessions_section(cells),
            dispatch_lag_section(cells),
            think_budget_section(cells),
            cells_section(cells),
            metrics_appendix(),
        ],
    )
