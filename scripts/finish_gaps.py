"""Token gaps that span another request's finish vs the others, per cell of results folders.

Usage: .venv/bin/python scripts/finish_gaps.py [--by-change] RESULTS [RESULTS ...]
Prints, per cell, n and p50/p90 of both kinds of gaps and the p90 ratio (metric
`finish_gap_p90_ratio`, see `rllm-study metrics --explain`). The check of issue 14.3: with
grading and writing off the engine loop, the ratio stays within 1.05. To compare before and
after a change, run the same spec at both commits (same seed, threads, model) and pass both.

--by-change: where a finish's cost comes from. Every gap between consecutive tokens of a
completed request is put in one class: "finish" (another request of its session finished
inside it), else "admission" (another was admitted inside it), else "1 after finish" / "2
after finish" (the same request's gap before / two before was a finish gap; likewise "... after
admission"), else "steady";
and in a band by the requests running through the whole gap (admitted at or before its start,
finished at or after its end; the gap's own request included): 1-7, 8-15, 16+. A finish and an admission both change the
decode batch's shape; only a finish grades and writes a record. So when the gaps after an
admission are as long as those after a finish, what a finish costs the others is the new
shape (on CUDA: llama.cpp runs a changed graph without its CUDA graph, then captures it again),
not the harness's work between steps.
"""

from __future__ import annotations

import sys

import numpy as np

from rllm_study.analysis.metrics import completed_token_times, finish_gaps, gap_spans
from rllm_study.errors import UserError
from rllm_study.running.results import cells_in, read_cell

CLASSES = (
    "steady",
    "finish",
    "1 after finish",
    "2 after finish",
    "admission",
    "1 after admission",
    "2 after admission",
)
BANDS = ((1, 8, "1-7"), (8, 16, "8-15"), (16, None, "16+"))


def gaps_by_change(cell) -> dict[tuple[str, str], list[float]]:
    """(band, class) -> gaps in seconds (see --by-change in the module docstring)."""
    out: dict[tuple[str, str], list[float]] = {}
    for r, session, times in completed_token_times(cell):
        others = [q for q in session if q["finish_s"] != r["finish_s"]]  # as finish_gaps
        ends = np.sort([q["finish_s"] for q in others])
        starts = np.sort([q["admitted_s"] for q in others])
        admitted = np.array([q["admitted_s"] for q in session])
        finished = np.array([q["finish_s"] for q in session])
        kinds = []
        for a, b in zip(times, times[1:]):
            kind = "finish" if gap_spans(ends, a, b) else "admission" if gap_spans(starts, a, b) else None
            kinds.append((kind, int(np.sum((admitted <= a) & (finished >= b))), b - a))
        for j, (kind, running, gap) in enumerate(kinds):
            if kind is None:
                kind = (
                    f"1 after {kinds[j - 1][0]}"
                    if j >= 1 and kinds[j - 1][0]
                    else f"2 after {kinds[j - 2][0]}"
                    if j >= 2 and kinds[j - 2][0]
                    else "steady"
                )
            band = next(name for low, high, name in BANDS if running >= low and (high is None or running < high))
            out.setdefault((band, kind), []).append(gap)
    return out


def main(args: list[str]) -> None:
    if not args or "-h" in args or "--help" in args:
        print(__doc__)
        return
    by_change = "--by-change" in args
    try:
        cells = cells_in([a for a in args if a != "--by-change"])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if by_change:
        print(f"{'cell':<60} {'running':>7} {'gaps':<17} {'n':>6} {'p50 ms':>7} {'p90 ms':>7}")
    else:
        print(
            f"{'cell':<60} {'n span':>7} {'p50 ms':>7} {'p90 ms':>7} {'n other':>8} {'p50 ms':>7} {'p90 ms':>7} {'p90 ratio':>9}"
        )
    for d in cells:
        cell = read_cell(d)
        name = str(d)[-60:]
        if by_change:
            split = gaps_by_change(cell)
            for _, _, band in BANDS:
                for kind in CLASSES:
                    v = split.get((band, kind))
                    if v:
                        print(
                            f"{name:<60} {band:>7} {kind:<17} {len(v):>6} {np.percentile(v, 50) * 1e3:>7.1f} {np.percentile(v, 90) * 1e3:>7.1f}"
                        )
            continue
        g = finish_gaps(cell)
        s, o = g["spanning"], g["other"]
        ms = lambda v: "-" if v is None else f"{v * 1e3:.1f}"  # noqa: E731
        ratio = "-" if g["ratio"] is None else f"{g['ratio']:.3f}"
        print(
            f"{name:<60} {s['count']:>7} {ms(s['p50']):>7} {ms(s['p90']):>7} {o['count']:>8} {ms(o['p50']):>7} {ms(o['p90']):>7} {ratio:>9}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
