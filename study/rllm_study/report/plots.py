"""Report figures (matplotlib, without pyplot: no global backend or state): one function per
figure; each draws a Figure, which `@figure` renders, so callers get PNG bytes.

Figures draw recorded values (request rows and their events, timeline samples) as they are; every
summary number comes from `rllm_study.analysis.metrics`. A cell resumed over several sessions is drawn from its
session with the most requests (clocks differ between sessions).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from functools import wraps

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from rllm_study.analysis.metrics import group_tail, kv_events, occupancy, straggler_groups
from rllm_study.analysis.sweep import knee, non_dominated, pareto_front
from rllm_study.report.cells import CellData

MODE_COLORS = {"reasoning": "#d95f02", "direct": "#1b9e77"}
KV_COLOR, RSS_COLOR, RUN_COLOR, WAIT_COLOR, GPU_COLOR = "#7570b3", "#555555", "#1f78b4", "#e31a1c", "#66a61e"
STRAGGLER, NORMAL, FAILED, TAIL = "#d62728", "#1f77b4", "#999999", "#ffbf47"
WIDTH = 10.0
CYCLE = ("#1f77b4", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#17becf")

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


def figure(draw):
    """Run a figure function under STYLE; it draws on `subplots(...)` and returns the Figure, the
    decorated function returns PNG bytes."""

    @wraps(draw)
    def run(*args, **kwargs) -> bytes:
        with rc_context(STYLE):
            fig = draw(*args, **kwargs)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
        return buf.getvalue()

    return run


def subplots(*args, **kwargs):
    """A new Figure and its axes (Figure.subplots arguments; figsize goes to the Figure)."""
    fig = Figure(figsize=kwargs.pop("figsize"))
    return fig, fig.subplots(*args, **kwargs)


def main_session(cell: CellData) -> int:
    """The session with the most recorded requests (0 when none)."""
    counts = Counter(r.get("session", 0) for r in cell.cell.requests)
    return counts.most_common(1)[0][0] if counts else 0


# ---- timelines --------------------------------------------------------------------------------


def sampled_series(samples: list[dict], key: str, scale: float = 1.0) -> list[float]:
    """A timeline counter per sample, divided by `scale`; NaN where a sample lacks it, so the line
    breaks there instead of dropping to 0 (a sample without a reading is no reading of 0)."""
    return [math.nan if s.get(key) is None else s[key] / scale for s in samples]


@figure
def timeline(columns: list[tuple[str, CellData]], with_rss: bool = True) -> Figure:
    """One column per cell: KV in use (capacity dashed, share of capacity on the right axis), RSS
    (optional; with GPU memory in use beside it for cells that recorded gpu_bytes), running and waiting
    requests, and request arrivals / finishes as ticks; time in seconds from the session start. KV in
    use and the running and waiting counts are the step functions the metrics use, from the recorded
    admission, token and finish events (`kv_events`, `occupancy`: exact at every change); KV falls back
    to the sampled engine counter only where events cannot give it (no per-token times, or an engine
    that counts KV in another unit), and says so in its label. RSS and GPU memory are sampled."""
    rows = ["kv", *(["rss"] if with_rss else []), "reqs", "events"]
    ratios = {"kv": 2.4, "rss": 1.4, "reqs": 1.6, "events": 0.7}
    fig, axes = subplots(
        len(rows),
        len(columns),
        figsize=(WIDTH, 1.25 * sum(ratios[r] for r in rows)),
        sharex=True,
        sharey="row",
        squeeze=False,
        gridspec_kw={"height_ratios": [ratios[r] for r in rows]},
    )
    caps: set = set()
    for j, (title, cell) in enumerate(columns):
        session = main_session(cell)
        samples = [s for s in cell.cell.timeline if s.get("session", 0) == session]
        reqs = [r for r in cell.cell.requests if r.get("session", 0) == session]
        t = [s["t_s"] for s in samples]
        ax = dict(zip(rows, axes[:, j]))
        ax["kv"].set_title(title)
        kv = (kv_events(cell.cell) or {}).get(session)
        if kv is not None:
            ax["kv"].step(*kv, where="post", color=KV_COLOR, lw=1.2, label="KV in use (events)")
        else:
            kv_used = sampled_series(samples, "kv_used")
            ax["kv"].step(t, kv_used, where="post", color=KV_COLOR, lw=1.2, label="KV in use (sampled)")
        for cap in sorted({s.get("kv_capacity") for s in samples if s.get("kv_capacity")}):
            caps.add(cap)
            ax["kv"].axhline(cap, color=KV_COLOR, ls="--", lw=0.8, label=f"capacity {cap:,}")
        unit = next((s.get("kv_unit") for s in samples if s.get("kv_unit")), "cells")
        if with_rss:
            ax["rss"].plot(t, sampled_series(samples, "rss_bytes", 2**20), color=RSS_COLOR, lw=1.2, label="RSS")
            if any(s.get("gpu_bytes") is not None for s in samples):
                ax["rss"].plot(
                    t, sampled_series(samples, "gpu_bytes", 2**20), color=GPU_COLOR, lw=1.2, label="GPU memory"
                )
        steps = occupancy(reqs).get(session)
        if steps is not None:
            times, running, waiting = steps
            ax["reqs"].step(times, running, where="post", color=RUN_COLOR, lw=1.2, label="running")
            ax["reqs"].step(times, waiting, where="post", color=WAIT_COLOR, lw=1.2, label="waiting")
        arrivals = [r["arrival_s"] for r in reqs if r.get("arrival_s") is not None]
        finishes = [r["finish_s"] for r in reqs if r.get("finish_s") is not None]
        ax["events"].eventplot(
            [arrivals, finishes], lineoffsets=[1, 0], linelengths=0.7, colors=[RUN_COLOR, RSS_COLOR], linewidths=0.8
        )
        ax["events"].set_yticks([0, 1], ["finish", "arrive"])
        ax["events"].grid(False)
        ax["events"].set_xlabel("time since session start (s)")
    axes[rows.index("kv"), 0].set_ylabel(f"KV {unit}")
    if with_rss:
        axes[rows.index("rss"), 0].set_ylabel(
            "memory MiB"
            if any(s.get("gpu_bytes") is not None for _, c in columns for s in c.cell.timeline)
            else "RSS MiB"
        )
    axes[rows.index("reqs"), 0].set_ylabel("requests")
    # limits once every column is drawn (rows share their y axis)
    kv_axis, req_axis = axes[rows.index("kv"), 0], axes[rows.index("reqs"), 0]
    kv_axis.set_ylim(0, max([*caps, kv_axis.get_ylim()[1]]) * 1.22)
    req_axis.set_ylim(0, max(1.0, req_axis.get_ylim()[1]) * 1.15)
    req_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(caps) == 1:
        cap = caps.pop()
        axes[rows.index("kv"), -1].secondary_yaxis(
            "right", functions=(lambda x: 100 * x / cap, lambda p: p * cap / 100)
        ).set_ylabel("% of capacity")
    for r in ("kv", "rss", "reqs"):
        if r in rows:
            axes[rows.index(r), 0].legend(loc="upper left", ncol=2)
    fig.align_ylabels(axes[:, 0])
    return fig


# ---- stragglers --------------------------------------------------------------------------------


@figure
def batches(columns: list[tuple[str, CellData]]) -> Figure:
    """One panel per cell: each request a bar from arrival to finish, grouped by batch (or window):
    grey while waiting for its first token, light while thinking, full colour while answering;
    stragglers red; each group's tail (fewer than half its requests left) shaded."""
    heights = []
    for _, cell in columns:
        session = main_session(cell)
        heights.append(sum(r["session"] == session for r in cell.rows))
    fig, axes = subplots(
        1, len(columns), figsize=(WIDTH, min(9.0, 1.2 + 0.16 * max(heights + [4]))), sharex=True, squeeze=False
    )
    for ax, (title, cell) in zip(axes[0], columns):
        session = main_session(cell)
        rows = [r for r in cell.rows if r["session"] == session]
        groups = dict(straggler_groups(rows).items())
        order = sorted(
            rows, key=lambda r: (r["group"] is None, str(r["group"]), r["arrival_s"] or 0, r["finish_s"] or 0)
        )
        spans = {}
        for y, r in enumerate(order):
            if r["arrival_s"] is None or r["finish_s"] is None:
                continue
            spans.setdefault(r["group"], []).append(y)
            color = FAILED if not r["completed"] else STRAGGLER if r["straggler"] else NORMAL
            start, first = (
                r["arrival_s"],
                r["arrival_s"] + (r["ttft_s"] if r["ttft_s"] is not None else r["e2el_s"] or 0),
            )
            answer = r["arrival_s"] + r["ttfvt_s"] if r["ttfvt_s"] is not None else r["finish_s"]
            ax.barh(y, first - start, left=start, color="#dddddd", height=0.8)
            ax.barh(y, answer - first, left=first, color=color, alpha=0.45, height=0.8)
            ax.barh(y, r["finish_s"] - answer, left=answer, color=color, height=0.8)
        for g, members in groups.items():
            ys = spans.get(g)
            if ys:
                last = max(m["finish_s"] for m in members)
                ax.fill_betweenx(
                    [min(ys) - 0.5, max(ys) + 0.5], last - group_tail(members)[1], last, color=TAIL, alpha=0.35, lw=0
                )
                ax.axhline(max(ys) + 0.5, color="#bbbbbb", lw=0.5)
        if not order:
            ax.text(0.5, 0.5, "no request recorded", transform=ax.transAxes, ha="center", color="#777777")
        ax.set_ylim(max(1, len(order)) - 0.5, -0.5)
        ax.set_yticks([])
        ax.set_ylabel("requests, by batch")
        ax.set_xlabel("time since session start (s)")
        ax.set_title(title)
        ax.grid(axis="y", visible=False)
    fig.legend(
        handles=[
            Patch(color="#dddddd", label="waiting for first token"),
            Patch(color=NORMAL, alpha=0.45, label="thinking"),
            Patch(color=NORMAL, label="answering"),
            Patch(color=STRAGGLER, label="straggler"),
            Patch(color=FAILED, label="failed"),
            Patch(color=TAIL, alpha=0.35, label="tail (under half the batch left)"),
        ],
        loc="upper center",
        ncol=6,
        bbox_to_anchor=(0.5, 0.0),
    )
    fig.tight_layout()
    return fig


# ---- difficulty ------------------------------------------------------------------------------


@figure
def difficulty(by_dataset: dict[str, dict[str, list[dict]]], tiers: dict[str, str]) -> Figure:
    """Box plots per data set (x, easy to hard) and prompt mode: think tokens, output tokens and
    E2EL per completed request, one panel above the other. `by_dataset`: data set -> mode -> request rows."""
    panels = (("think_tokens", "think tokens"), ("output_tokens", "output tokens"), ("e2el_s", "E2EL (s)"))
    datasets = list(by_dataset)
    modes = sorted({m for per in by_dataset.values() for m in per}, key=lambda m: (m != "reasoning", m))
    fig, axes = subplots(len(panels), 1, figsize=(WIDTH, 6.6), sharex=True, squeeze=False)
    width = 0.8 / max(1, len(modes))
    for ax, (key, label) in zip(axes[:, 0], panels):
        for k, mode in enumerate(modes):
            data = [[r[key] for r in by_dataset[d].get(mode, []) if r[key] is not None] for d in datasets]
            pos = [i - 0.4 + width * (k + 0.5) for i in range(len(datasets))]
            keep = [(p, v) for p, v in zip(pos, data) if v]
            if keep:
                bp = ax.boxplot(
                    [v for _, v in keep],
                    positions=[p for p, _ in keep],
                    widths=width * 0.85,
                    patch_artist=True,
                    showfliers=True,
                    flierprops={"markersize": 3},
                )
                for box in bp["boxes"]:
                    box.set(facecolor=MODE_COLORS.get(mode, CYCLE[k]), alpha=0.6)
                for med in bp["medians"]:
                    med.set(color="black")
        ax.set_ylabel(label)
        ax.set_xlim(-0.6, len(datasets) - 0.4)
    axes[-1, 0].set_xticks(range(len(datasets)), [f"{d} ({tiers[d]})" for d in datasets])
    axes[0, 0].legend(
        handles=[Patch(color=MODE_COLORS.get(m, CYCLE[k]), alpha=0.6, label=m) for k, m in enumerate(modes)],
        loc="upper left",
    )
    fig.align_ylabels(axes[:, 0])
    fig.tight_layout()
    return fig


# ---- accuracy ----------------------------------------------------------------------------------


@figure
def domain_accuracy(acc: dict[int, dict[str, dict[str, dict]]]) -> Figure:
    """Accuracy per domain, reasoning vs direct: bars at the largest budget (Wilson 95% whiskers, k/n on each bar) and,
    with several budgets, accuracy against the budget. `acc`: budget -> mode -> domain -> accuracy dict."""
    budgets = sorted(acc)
    top = acc[budgets[-1]]
    modes = sorted(top, key=lambda m: (m != "reasoning", m))
    domains = sorted({d for per in top.values() for d in per})
    fig, axes = subplots(
        1, 2 if len(budgets) > 1 else 1, figsize=(WIDTH if len(budgets) > 1 else WIDTH * 0.6, 3.4), squeeze=False
    )
    ax = axes[0, 0]
    width = 0.8 / max(1, len(modes))
    for k, mode in enumerate(modes):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(domains))]
        vals = [top[mode].get(d, {}).get("accuracy") for d in domains]
        bounds = [(top[mode].get(d) or {}).get("ci95") for d in domains]
        err = [
            [100 * ((v or 0) - b[0]) if b else 0 for v, b in zip(vals, bounds)],
            [100 * (b[1] - (v or 0)) if b else 0 for v, b in zip(vals, bounds)],
        ]
        ax.bar(
            xs,
            [100 * (v or 0) for v in vals],
            width * 0.9,
            color=MODE_COLORS.get(mode, CYCLE[k]),
            label=mode,
            yerr=err,
            capsize=2,
            error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
        )
        for x, d, b in zip(xs, domains, bounds):
            a = top[mode].get(d)
            if a:
                ax.annotate(
                    f"{a['correct']}/{a['total']}",
                    (x, 100 * (b[1] if b else a["accuracy"] or 0)),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(domains)), domains)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 112)
    ax.set_title(f"per domain at budget {budgets[-1]} tokens")
    ax.legend(loc="upper right")
    if len(budgets) > 1:
        ax = axes[0, 1]
        for k, mode in enumerate(modes):
            for d, style in zip(domains, ("-", "--", ":", "-.")):
                ys = [acc[b].get(mode, {}).get(d, {}).get("accuracy") for b in budgets]
                ax.plot(
                    budgets,
                    [None if y is None else 100 * y for y in ys],
                    style,
                    marker="o",
                    ms=3,
                    color=MODE_COLORS.get(mode, CYCLE[k]),
                    label=f"{mode}, {d}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("token budget (max tokens)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 105)
        ax.set_title("against the token budget")
        ax.legend()
    fig.tight_layout()
    return fig


LABELLED_POINTS = 8  # accuracy_vs_throughput names its points up to this many


@figure
def accuracy_vs_throughput(points: list[tuple[str, str, float | None, float | None]]) -> Figure:
    """One point per (variant, group): x output tokens/s (from 0), y lenient accuracy (the grade
    the claims decide on); colour by variant, marker by group; the Pareto front (points no other point
    beats on both throughput and accuracy) is ringed and joined by a dashed line. Up to LABELLED_POINTS points are
    named beside them; more would overlap, so the variants' colours go into the legend instead.
    `points`: (variant, group label, output tok/s, lenient accuracy fraction)."""
    variants = list(dict.fromkeys(p[0] for p in points))
    groups = list(dict.fromkeys(p[1] for p in points))
    markers = "osD^v<>P*Xdh"
    named = len(points) <= LABELLED_POINTS
    fig, ax = subplots(figsize=(WIDTH * 0.62, 3.6))
    shown = sorted((p for p in points if p[2] is not None and p[3] is not None), key=lambda p: p[2])
    for i, (variant, group, tok, acc) in enumerate(shown):
        ax.scatter(
            tok,
            100 * acc,
            s=42,
            color=CYCLE[variants.index(variant) % len(CYCLE)],
            marker=markers[groups.index(group) % len(markers)],
            edgecolor="black",
            lw=0.4,
            zorder=3,
        )
        if (
            named
        ):  # labels alternate above and below in order of throughput, so that neighbours on the x axis stay legible
            ax.annotate(
                variant,
                (tok, 100 * acc),
                xytext=(0, 7 if i % 2 == 0 else -13),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    front = non_dominated(shown, lambda p: p[2], lambda p: p[3])
    if front:  # the ASU Pareto front: no other point is both faster and more accurate
        ax.plot(
            [p[2] for p in front],
            [100 * p[3] for p in front],
            ls="--",
            marker="o",
            ms=13,
            mfc="none",
            mec="black",
            color="black",
            lw=0.8,
            zorder=2,
        )
    handles = (
        []
        if named
        else [Line2D([], [], ls="", marker="s", color=CYCLE[i % len(CYCLE)], label=v) for i, v in enumerate(variants)]
    )
    if front:
        handles.append(
            Line2D(
                [], [], ls="--", marker="o", ms=9, mfc="none", mec="black", color="black", lw=0.8, label="Pareto front"
            )
        )
    if len(groups) > 1:
        handles += [
            Line2D([], [], ls="", marker=markers[i % len(markers)], color="black", label=g)
            for i, g in enumerate(groups)
        ]
    if handles:
        ax.legend(
            handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7 if len(handles) > 10 else None
        )
    top = max([p[2] for p in points if p[2] is not None] + [1.0])
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel("accuracy, lenient (%)")
    ax.set_ylim(-3, 103)
    ax.set_title("accuracy against throughput (up and right is better)")
    return fig


@figure
def load_sweep(series: dict[str, list], swept: str) -> Figure:
    """Left: per-user output speed (user_tok_s p50) against machine throughput (output tok/s), one
    line per sweep in order of load, each point named by its load; the Pareto front of each sweep
    ringed, its knee starred. Right: output throughput and (where SLOs were given) goodput against
    the load. `series`: label -> `analysis.sweep.SweepPoint`s; `swept`: "concurrency" or "rate"."""
    fig, (ax, ax2) = subplots(1, 2, figsize=(WIDTH, 3.8))
    good_ax = None
    for i, (label, points) in enumerate(series.items()):
        color = CYCLE[i % len(CYCLE)]
        shown = [p for p in points if p.throughput is not None and p.user_speed is not None]
        ax.plot(
            [p.throughput for p in shown], [p.user_speed for p in shown], "-o", color=color, ms=5, lw=1.2, label=label
        )
        for p in shown:
            ax.annotate(
                f"{p.load:g}", (p.throughput, p.user_speed), xytext=(4, 4), textcoords="offset points", fontsize=7
            )
        front = pareto_front(points)
        ax.scatter(
            [p.throughput for p in front],
            [p.user_speed for p in front],
            s=140,
            facecolors="none",
            edgecolors=color,
            lw=1.2,
            zorder=3,
        )
        k = knee(points)
        if k is not None and k.throughput is not None and k.user_speed is not None:
            ax.scatter(
                [k.throughput], [k.user_speed], marker="*", s=220, color=color, edgecolor="black", lw=0.6, zorder=4
            )
        loads = [p.load for p in points]
        ax2.plot(loads, [p.throughput for p in points], "-o", color=color, ms=4, lw=1.2)
        if any(p.goodput is not None for p in points):
            good_ax = good_ax or ax2.twinx()
            good_ax.plot(loads, [p.goodput for p in points], "--s", color=color, ms=4, lw=1.0)
    ax.set_xlabel("machine output tokens/s")
    ax.set_ylabel("per-user output tokens/s (p50)")
    known = [p for points in series.values() for p in points if p.throughput is not None and p.user_speed is not None]
    ax.set_xlim(0, 1.15 * max([p.throughput for p in known] + [1e-9]))
    ax.set_ylim(0, 1.15 * max([p.user_speed for p in known] + [1e-9]))
    ax.set_title("per-user speed against throughput")
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], ls="", marker="o", mfc="none", mec="black", ms=10, label="Pareto front"),
        Line2D([], [], ls="", marker="*", color="black", ms=12, label="knee"),
    ]
    ax.legend(handles=handles, loc="best")
    ax2.set_xlabel(swept + (" (req/s)" if swept == "rate" else " (requests in flight)"))
    ax2.set_ylabel("output tokens/s (solid)")
    ax2.set_ylim(bottom=0)
    ax2.set_title("throughput" + (" and goodput" if good_ax else "") + " against load")
    if good_ax is not None:
        good_ax.set_ylabel("goodput req/s (dashed)")
        good_ax.set_ylim(bottom=0)
        good_ax.grid(False)
    return fig


@figure
def think_budget_sweep(series: dict[str, list[tuple[int, dict]]]) -> Figure:
    """Four panels against the think budget (log2 x axis): accuracy, mean think tokens, TTFVT p50
    and E2EL p50; one line per series. `series`: label -> [(think budget, cell_metrics)]."""
    panels = (
        ("accuracy (%)", lambda m: _pct(m["accuracy"]["overall"]["accuracy"])),
        ("think tokens (mean)", lambda m: m["tokens"]["think"]["mean"]),
        ("TTFVT p50 (s)", lambda m: m["latency"]["ttfvt_s"]["p50"]),
        ("E2EL p50 (s)", lambda m: m["latency"]["e2el_s"]["p50"]),
    )
    fig, axes = subplots(1, len(panels), figsize=(WIDTH, 2.9), sharex=True, squeeze=False)
    for ax, (title, get) in zip(axes[0], panels):
        for i, (label, pts) in enumerate(series.items()):
            xy = [(tb, get(m)) for tb, m in pts if get(m) is not None]
            if xy:
                ax.plot(*zip(*xy), marker="o", ms=4, color=CYCLE[i % len(CYCLE)], label=label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("think budget (tokens)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylim(0, 103)
    axes[0][0].legend(loc="best")
    return fig


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


# ---- latency -------------------------------------------------------------------------------------


@figure
def latency_cdfs(series: dict[str, list[dict]]) -> Figure:
    """Empirical CDFs of TTFT, TTFVT and E2EL over completed requests, one line per series; a series
    named after a prompt mode ('reasoning · ...') takes that mode's colour."""
    panels = (("ttft_s", "TTFT (s)"), ("ttfvt_s", "TTFVT (s)"), ("e2el_s", "E2EL (s)"))
    fig, axes = subplots(1, 3, figsize=(WIDTH, 3.2), sharey=True)
    styles, used = {}, Counter()
    for i, name in enumerate(series):
        mode = name.split(" · ")[0]
        color = MODE_COLORS.get(mode, CYCLE[i % len(CYCLE)])
        styles[name] = (color, ("-", "--", ":", "-.")[used[color] % 4])
        used[color] += 1
    for ax, (key, label) in zip(axes, panels):
        for name, rows in series.items():
            vals = np.sort([r[key] for r in rows if r["completed"] and r[key] is not None])
            if len(vals):
                ax.step(
                    np.concatenate([[0], vals]),
                    np.arange(len(vals) + 1) / len(vals),
                    where="post",
                    color=styles[name][0],
                    ls=styles[name][1],
                    lw=1.3,
                    label=f"{name} (n={len(vals)})",
                )
        if not ax.lines:
            ax.text(0.5, 0.5, "no request reached this point", transform=ax.transAxes, ha="center", color="#777777")
        ax.set_xlabel(label)
        ax.set_xlim(left=0)
    axes[0].set_ylabel("share of requests")
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="lower center",
        ncol=min(3, max(1, len(series))),
        bbox_to_anchor=(0.5, -0.02 - 0.05 * ((len(series) - 1) // 3)),
    )
    fig.tight_layout(rect=(0, 0.08 + 0.05 * ((len(series) - 1) // 3), 1, 1))
    return fig


# ---- comparison --------------------------------------------------------------------------------


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis from lo to hi that do not crowd: 1-1.5-2-3-5-7 in each decade for a
    span of up to 1.2 decades, 1-2-5 up to 2.5, 1-3 up to 5, decades beyond."""
    decades = np.log10(hi / lo)
    steps = (
        (1, 1.5, 2, 3, 5, 7) if decades <= 1.2 else (1, 2, 5) if decades <= 2.5 else (1, 3) if decades <= 5 else (1,)
    )
    first, last = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    return [m * 10.0**e for e in range(first, last + 1) for m in steps if lo <= m * 10.0**e <= hi]


@figure
def ratio_bars(ratios: dict[str, dict[str, float | None]], reference: str) -> Figure:
    """Bars from 1 to each run / reference-run ratio per metric (log scale: 2x and 0.5x are equally
    long); metrics without a ratio in any run are left out. `ratios`: run label -> metric label -> ratio."""
    runs = list(ratios)
    metrics = [
        m for m in dict.fromkeys(m for per in ratios.values() for m in per) if any(ratios[r].get(m) for r in runs)
    ]
    fig, ax = subplots(figsize=(WIDTH * 0.75, 1.0 + 0.3 * max(1, len(metrics)) * max(1, len(runs))))
    h = 0.8 / max(1, len(runs))
    span = max([abs(np.log10(v)) for per in ratios.values() for v in per.values() if v] + [np.log10(1.5)])
    for k, run in enumerate(runs):
        for i, m in enumerate(metrics):
            v = ratios[run].get(m)
            if not v:
                continue
            y = i - 0.4 + h * (k + 0.5)
            ax.barh(y, v - 1, left=1, height=h * 0.9, color=CYCLE[(k + 1) % len(CYCLE)], label=run if i == 0 else None)
            ax.annotate(
                f"{v:.2f}x",
                (v, y),
                xytext=(4 if v >= 1 else -4, 0),
                textcoords="offset points",
                ha="left" if v >= 1 else "right",
                va="center",
                fontsize=7,
            )
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    lo, hi = 10 ** (-span * 1.35), 10 ** (span * 1.35)
    ax.set_xlim(lo, hi)
    ax.set_xticks(_log_ticks(lo, hi))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    ax.set_yticks(range(len(metrics)), metrics)
    ax.set_ylim(len(metrics) - 0.5, -0.5)
    ax.set_xlabel(f"ratio to {reference} (geometric mean over matched cells; log scale)")
    if len(runs) > 1:
        ax.legend(loc="lower right")
    return fig
