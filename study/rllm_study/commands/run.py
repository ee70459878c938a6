"""`rllm-study run`: run a study spec or a preset into a results folder, then print its ASU table."""

from __future__ import annotations

import copy
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console

from rllm_study.backends import all_options
from rllm_study.commands.metrics import print_summary
from rllm_study.commands.options import engine_flags
from rllm_study.errors import UserError
from rllm_study.running.gpus import parse_gpus, run_on_gpus
from rllm_study.running.results import find_cells
from rllm_study.running.runner import dry_run as dry_run_study
from rllm_study.running.runner import run_study
from rllm_study.running.shards import parse_shard, select
from rllm_study.running.spec import CellSpec, apply_overrides, expand, load_spec, preset_names, recorded_specs


@engine_flags(overrides=True)
def run(
    spec_file: Annotated[Optional[Path], typer.Argument(help="A TOML study spec (or use --preset or --like).")] = None,
    preset: Annotated[
        Optional[str], typer.Option("--preset", help=f"A shipped study: {', '.join(preset_names())}.")
    ] = None,
    like: Annotated[
        Optional[Path],
        typer.Option(
            "--like",
            help="Run the spec a results folder's cells recorded (e.g. a CPU run again on a GPU, for report --compare); the flags and --set below apply on top.",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="The preset's short version (minutes on 2 cores); same as --size quick.")
    ] = False,
    size: Annotated[
        str,
        typer.Option(
            "--size",
            help="quick (CI, minutes), standard (published results: every claim can settle) or full (the spec's body).",
        ),
    ] = "full",
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Replace the spec's models with this one.")
    ] = None,
    backend: Annotated[
        Optional[str], typer.Option("--backend", help="Engine backend for every cell (see generate --help).")
    ] = None,
    think_budget: Annotated[
        Optional[str],
        typer.Option(
            "--think-budget",
            help="Think tokens before the engine closes the thinking, for every cell: N, or mt-K (max_tokens - K).",
        ),
    ] = None,
    overrides: Annotated[
        Optional[List[str]],
        typer.Option("--set", help="Override a spec field: KEY=VALUE (TOML value), e.g. --set max_tokens=[64]."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Results folder (one subfolder per cell); re-running resumes.")
    ] = Path("runs/latest"),
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check everything a run checks before its first cell (loads each model once), list the cells and stop.",
        ),
    ] = False,
    shard: Annotated[
        Optional[str],
        typer.Option(
            "--shard",
            help="Run only shard K/N of the cells (0 <= K < N, balanced by expected tokens), or 'auto' from Slurm/Kubernetes variables.",
        ),
    ] = None,
    energy_cmd: Annotated[
        Optional[str],
        typer.Option(
            "--energy-cmd",
            help="A shell command printing the machine's cumulative joules (e.g. a powermetrics wrapper on Apple Silicon); NVML and RAPL are read without it.",
        ),
    ] = None,
    shard_count: Annotated[
        Optional[int],
        typer.Option(
            "--shard-count", help="N for --shard auto under a Kubernetes Indexed Job (or set RLLM_SHARD_COUNT)."
        ),
    ] = None,
    gpus: Annotated[
        Optional[str],
        typer.Option(
            "--gpus",
            help="Run one shard per GPU (e.g. 0,1,2,3): a child process each, with CUDA_VISIBLE_DEVICES set, writing OUT/shard-K; waits for all.",
        ),
    ] = None,
    engine_values: dict = None,
) -> None:
    """Run a study: every cell's requests through the engine, recorded as they finish (resumable)."""
    if gpus is not None:
        if dry_run:
            raise UserError("--gpus with --dry-run: check the spec with --dry-run alone first")
        console = Console(stderr=True, soft_wrap=True)
        args = sys.argv[sys.argv.index("run") + 1 :] if "run" in sys.argv else []
        print_summary(find_cells(run_on_gpus(args, parse_gpus(gpus), out, console)))
        return
    if sum(x is not None for x in (spec_file, preset, like)) != 1:
        raise UserError(
            "give one of a spec file, --preset NAME or --like RESULTS_FOLDER (presets: "
            + ", ".join(preset_names())
            + ")"
        )
    if quick and size not in ("full", "quick"):
        raise UserError(f"--quick and --size {size} disagree; give one of them")
    if like is not None:
        if quick or size != "full":
            raise UserError(f"--like {like} runs the size that folder ran; drop --quick/--size")
        sources = recorded_specs(like)
    else:
        data, where = load_spec(spec_file, preset, quick, size)
        sources = [(data, None, where)]
    groups: list[tuple[dict, str, list[CellSpec]]] = []
    for recorded, names, where in sources:
        data = _with_flags(
            copy.deepcopy(recorded), model, backend, energy_cmd, engine_values, think_budget, list(overrides or [])
        )
        cells = expand(data, where)
        if names is not None:
            cells = _the_recorded_cells(expand(recorded, where), names, cells, bool(overrides or think_budget), where)
        groups.append((data, where, cells))
    made = Counter(c.name for _, _, cells in groups for c in cells)
    twice = sorted(name for name, count in made.items() if count > 1)
    if twice:  # only --like has several specs
        raise UserError(
            f"--like {like}: the flags make cell {twice[0]} from two of its specs; drop the flag that merges them"
        )
    console = Console(stderr=True, soft_wrap=True)
    if shard is not None:
        part = parse_shard(shard, shard_count)
        everything = [c for _, _, cells in groups for c in cells]
        chosen = {c.name for c in select(everything, part)}
        groups = [(data, where, [c for c in cells if c.name in chosen]) for data, where, cells in groups]
        console.print(f"shard {part}: {len(chosen)} of {len(everything)} cells")
    dirs = []
    for data, where, cells in groups:
        console.print(f"{where}: {len(cells)} cells -> {out}")
        if dry_run:
            planned = dry_run_study(cells, out, console)
            for (c, _), given in zip(planned, cells):
                sized = c.engine.ctx_per_seq != given.engine.ctx_per_seq
                print(
                    c.name + (f"  (ctx_per_seq {c.engine.ctx_per_seq}: sized for its longest prompt)" if sized else "")
                )
            console.print(
                f"ok: {len(cells)} cells checked (workload values, models, data sets, templates, every prompt "
                f"fits its sequence, {out} writable)"
            )
        elif cells:
            dirs += run_study(cells, data, out, console)
    if dirs:
        print_summary(dirs)


def _the_recorded_cells(
    recorded: list[CellSpec], names: set[str], changed: list[CellSpec], sets: bool, where: str
) -> list[CellSpec]:
    """--like: which cells of `changed` (the recorded spec with the flags applied) to run. A folder
    that holds its spec's whole grid gets all of `changed` (--set may reshape it). One that holds
    part of it (a grown folder, a shard, one cell) gets the cells at the places its own stand in
    the recorded grid (engine flags and --model keep the places; --set and --think-budget could
    move them, so they are refused there). A recorded name the recorded spec does not make (an
    older rllm-study named cells otherwise) is refused."""
    grid = [c.name for c in recorded]
    strange = sorted(names - set(grid))
    if strange:
        raise UserError(
            f"{where}: its cell {strange[0]} is not one its recorded spec makes now (written by another "
            "rllm-study version?); run that spec from a file instead"
        )
    if len(names) == len(grid):
        return changed
    if sets or len(changed) != len(recorded):
        raise UserError(
            f"{where}: holds {len(names)} of the {len(grid)} cells its spec makes, so --set, --think-budget or a "
            "flag that changes an axis could change which cells those are; drop them, or write the spec to a file"
        )
    return [new for old, new in zip(recorded, changed) if old.name in names]


def _with_flags(
    data: dict,
    model: str | None,
    backend: str | None,
    energy_cmd: str | None,
    engine_values: dict,
    think_budget: str | None,
    sets: list[str],
) -> dict:
    """The spec with run's flags applied: --model, --backend, --energy-cmd, the engine flags (over
    the spec's [engine] for every cell), --think-budget, then each --set."""
    if model:
        data["models"] = [model]
        for variant in data.get("variants", []):
            if "model" in variant:
                variant["model"] = _with_model(variant["model"], model)
    if backend is not None:
        data["backend"] = backend
    if energy_cmd is not None:
        data["energy_cmd"] = energy_cmd
    keys = all_options()
    for name, value in engine_values.items():  # engine flags override the spec's [engine] for every cell
        table = data.setdefault("engine", {})
        table.pop(keys[name].deprecated_key, None)
        table[keys[name].key] = value
    if think_budget is not None:
        data["think_budget"] = int(think_budget) if think_budget.isdigit() else think_budget
    return apply_overrides(data, sets)


def _with_model(variant_model: str, model: str) -> str:
    """--model with a quantization variant: keep the variant's :QUANT suffix on the new model."""
    _, sep, quant = variant_model.partition(":")
    return f"{model.partition(':')[0]}:{quant}" if sep else model


def register(app: typer.Typer) -> None:
    app.command("run")(run)
