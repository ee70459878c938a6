"""`rllm-study schedule`: an arrival schedule, computed as a run would, printed before anything runs.

Its parameter flags come from the registered arrival processes (`--KEY` for each workload key a
process takes, e.g. `--rate-start` for `rate_start`), checked by the process's own validator.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from rllm_study.workloads.arrivals import ARRIVALS, arrival_params, make_arrivals

_TYPES = {"rate": float, "seconds": float, "count": int, "file": Path, "switch": bool}


def _schedule(arrival: str, n: int, seed: int, as_json: bool, params: dict) -> None:
    timing = make_arrivals(arrival, n, seed=seed, **params)
    if not as_json:
        asked = ", ".join(f"{k} {v}" for k, v in params.items() if v is not None)
        print(f"{arrival} arrivals, n={n}, seed={seed}" + (f" ({asked})" if asked else ""))
    for line in timing.preview(n, as_json):
        print(line)


def register(app: typer.Typer) -> None:
    params = arrival_params()

    def schedule_cmd(arrival: str, n: int, seed: int, as_json: bool, **values) -> None:
        """Print an arrival schedule, computed as a run would, before running anything."""
        _schedule(arrival, n, seed, as_json, values)

    processes = "; ".join(f"{name}: {p.SUMMARY}" for name, p in ARRIVALS.items())
    fixed = [
        ("arrival", str, typer.Option(..., "--arrival", help=f"One of: {', '.join(ARRIVALS)}. {processes}.")),
        ("n", int, typer.Option(..., "-n", help="Number of requests.")),
        ("seed", int, typer.Option(0, "--seed", help="Seed of the random gaps.")),
        (
            "as_json",
            bool,
            typer.Option(
                False, "--json", help="Open loop: one arrival time (s) per line; closed/batch: one JSON object."
            ),
        ),
    ]
    derived = []
    for key, users in params.items():
        first = users[0][1]
        where = ", ".join(name if p.default is None else f"{name}: default {p.default}" for name, p in users)
        derived.append(
            (key, Optional[_TYPES[first.kind]], typer.Option(None, first.flag, help=f"{first.help} ({where})"))
        )
    schedule_cmd.__signature__ = inspect.Signature(
        [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
            for name, kind, option in fixed + derived
        ]
    )
    schedule_cmd.__annotations__ = {name: kind for name, kind, _ in fixed + derived}
    app.command("schedule")(schedule_cmd)
