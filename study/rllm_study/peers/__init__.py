"""Importers of peer load generators' per-request exports (AIPerf, GuideLLM, `vllm bench serve`),
one module per tool; `import_export` writes what one read as rllm-study result cells
(`rllm_study.peers.common`). docs/peers.md maps each tool's metric names to ours."""

from __future__ import annotations

from pathlib import Path

from rllm_study.errors import UserError
from rllm_study.peers import aiperf, guidellm, vllm_bench
from rllm_study.peers.common import Imported, write_imported

READERS = {"aiperf": aiperf.read, "guidellm": guidellm.read, "vllm-bench": vllm_bench.read}


def import_export(tool: str, source: Path, out: Path, name: str | None = None) -> list[Path]:
    """Read `source` as `tool`'s export and write one cell per run in it under `out`."""
    if tool not in READERS:
        raise UserError(f"unknown tool {tool!r}: choose one of {', '.join(READERS)}")
    source = Path(source)
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    found = READERS[tool](source)
    runs: list[Imported] = found if isinstance(found, list) else [found]
    if not runs:
        raise UserError(f"{source}: no runs found in this {tool} export")
    base = name or f"{tool}-{source.stem}"
    return [write_imported(run, source, out, base if len(runs) == 1 else f"{base}-{k}") for k, run in enumerate(runs)]
