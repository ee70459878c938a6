"""`rllm-study run`: run a study spec or a preset into a results folder, then print its ASU table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console

from rllm_study.commands.metrics import print_summary
from rllm_study.errors import UserError
from rllm_study.runner import run_study
from rllm_study.spec import apply_overrides, expand, load_spec, preset_names


def run(
    spec_file: Annotated[Optional[Path], typer.Argument(help="A TOML study spec (or use --preset).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help=f"A shipped study: {', '.join(preset_names())}.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="The preset's short version (minutes on 2 cores).")] = False,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Replace the spec's models with this one.")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="llama_cpp, mlx or openai.")] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Server URL for --backend openai.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads for the engine.")] = None,
    n_gpu_layers: Annotated[Optional[int], typer.Option("--n-gpu-layers", help="Layers offloaded to the GPU (-1 = all).")] = None,
    kv_type_k: Annotated[Optional[str], typer.Option("--kv-type-k", help="K-cache type for every cell.")] = None,
    kv_type_v: Annotated[Optional[str], typer.Option("--kv-type-v", help="V-cache type for every cell.")] = None,
    prefix_cache: Annotated[Optional[bool], typer.Option("--prefix-cache/--no-prefix-cache", help="Prefix caching for every cell.")] = None,
    spec: Annotated[Optional[str], typer.Option("--spec", help="Speculative decoding for every cell: ngram or draft:MODEL.")] = None,
    spec_tokens: Annotated[Optional[int], typer.Option("--spec-tokens", help="Draft length.")] = None,
    overrides: Annotated[Optional[List[str]], typer.Option("--set", help="Override a spec field: KEY=VALUE (TOML value), e.g. --set max_tokens=[64].")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder (one subfolder per cell); re-running resumes.")] = Path("runs/latest"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and stop.")] = False,
) -> None:
    """Run a study: every cell's requests through the engine, recorded as they finish (resumable)."""
    if (spec_file is None) == (preset is None):
        raise UserError("give either a spec file or --preset NAME (presets: " + ", ".join(preset_names()) + ")")
    data, where = load_spec(spec_file, preset, quick)
    sets = list(overrides or [])
    if model:
        data["models"] = [model]
        for variant in data.get("variants", []):
            if "model" in variant:
                variant["model"] = _with_model(variant["model"], model)
    for key, value in (("backend", backend), ("engine.base_url", base_url), ("engine.threads", threads),
                       ("engine.n_gpu_layers", n_gpu_layers), ("engine.type_k", kv_type_k), ("engine.type_v", kv_type_v),
                       ("engine.prefix_cache", prefix_cache), ("engine.spec", spec), ("engine.spec_tokens", spec_tokens)):
        if value is not None:
            data = apply_overrides(data, [f"{key}={value!r}" if isinstance(value, str) else f"{key}={str(value).lower()}"])
    data = apply_overrides(data, sets)
    cells = expand(data, where)
    console = Console(stderr=True, soft_wrap=True)
    console.print(f"{where}: {len(cells)} cells -> {out}")
    if dry_run:
        for c in cells:
            print(c.name)
        return
    dirs = run_study(cells, data, out, console)
    print_summary(dirs)


def _with_model(variant_model: str, model: str) -> str:
    """--model with a quantization variant: keep the variant's :QUANT suffix on the new model."""
    _, sep, quant = variant_model.partition(":")
    return f"{model.partition(':')[0]}:{quant}" if sep else model


def register(app: typer.Typer) -> None:
    app.command("run")(run)
