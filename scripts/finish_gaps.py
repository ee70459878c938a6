"""Token gaps that span another request's finish vs the others, per cell of results folders.

Usage: .venv/bin/python scripts/finish_gaps.py RESULTS [RESULTS ...]
Prints, per cell, n and p50/p90 of both kinds of gaps and the p90 ratio (metric
`finish_gap_p90_ratio`, see `rllm-study metrics --explain`). The check of issue 14.3: with
grading and writing off the engine loop, the ratio stays within 1.05. To compare before and
after a change, run the same spec at both commits (same seed, threads, model) and pass both.
"""

from __future__ import annotations

import sys

from rllm_study.metrics import finish_gaps
from rllm_study.results import find_cells, read_cell


def main(paths: list[str]) -> None:
    print(f"{'cell':<60} {'n span':>7} {'p50 ms':>7} {'p90 ms':>7} {'n other':>8} {'p50 ms':>7} {'p90 ms':>7} {'p90 ratio':>9}")
    for d in find_cells(paths):
        g = finish_gaps(read_cell(d))
        s, o = g["spanning"], g["other"]
        ms = lambda v: "-" if v is None else f"{v * 1e3:.1f}"  # noqa: E731
        ratio = "-" if g["ratio"] is None else f"{g['ratio']:.3f}"
        print(f"{str(d)[-60:]:<60} {s['count']:>7} {ms(s['p50']):>7} {ms(s['p90']):>7} {o['count']:>8} {ms(o['p50']):>7} {ms(o['p90']):>7} {ratio:>9}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
