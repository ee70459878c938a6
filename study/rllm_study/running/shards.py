"""Shards: a deterministic 1/N of a study's cells, so N machines run one study between them.

Rule (`assign`): every cell gets a weight, its expected output tokens,
    weight = samples x max_tokens x FILL[prompt_mode]
where FILL is the share of the budget a request of that mode typically generates (docs/running.md,
"Running larger studies", says where the factors come from). Cells are then dealt out by
greedy longest-processing-time: in order of falling weight (ties by cell name), each cell goes
to the shard with the least weight so far (ties to the lowest index). The assignment depends
only on the expanded cells, so every machine computes the same one; each cell lands in exactly
one shard, and a shard runs its cells in the spec's order (so engines are reused as unsharded).

Shard K of N is 0-based (0 <= K < N). `--shard K/N` names it; `--shard auto` reads it from the
scheduler's environment (`from_environment`):
  Slurm job arrays      K = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN (0 when unset),
                        N = SLURM_ARRAY_TASK_COUNT
  Kubernetes Indexed    K = JOB_COMPLETION_INDEX, N = --shard-count or RLLM_SHARD_COUNT
  Jobs                  (set it to the Job's `completions`)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from rllm_study.errors import UserError

FILL = {"direct": 0.4}
FILL_DEFAULT = 0.9  # reasoning and native: thinking fills most of the budget
COUNT_ENV = "RLLM_SHARD_COUNT"


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def make_shard(index: int, count: int, where: str) -> Shard:
    """A validated shard; `where` names the flag or variables the numbers came from."""
    if count < 1:
        raise UserError(f"{where}: the shard count must be >= 1, got {count}")
    if not 0 <= index < count:
        raise UserError(f"{where}: shard index {index} is outside 0..{count - 1} (shards are numbered from 0)")
    return Shard(index, count)


def parse_shard(text: str, count: int | None = None, env: dict | None = None) -> Shard:
    """`K/N`, or `auto` (the scheduler's environment, see the module docstring)."""
    if text == "auto":
        return from_environment(os.environ if env is None else env, count)
    if count is not None:
        raise UserError(f"--shard-count goes with --shard auto; --shard {text} already names the count")
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise UserError(f"--shard {text!r}: use K/N with 0 <= K < N (e.g. --shard 0/4), or --shard auto")
    return make_shard(int(match.group(1)), int(match.group(2)), f"--shard {text}")


def _int_env(env: dict, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"--shard auto: {name}={env[name]!r} is not a whole number") from None


def from_environment(env: dict, count: int | None = None) -> Shard:
    """The shard of this task under a Slurm job array or a Kubernetes Indexed Job."""
    if "SLURM_ARRAY_TASK_ID" in env:
        if "SLURM_ARRAY_TASK_COUNT" not in env:
            raise UserError("--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
        low = _int_env(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        n = count if count is not None else _int_env(env, "SLURM_ARRAY_TASK_COUNT")
        return make_shard(_int_env(env, "SLURM_ARRAY_TASK_ID") - low, n, "--shard auto (Slurm array)")
    if "JOB_COMPLETION_INDEX" in env:
        if count is None and COUNT_ENV not in env:
            raise UserError(
                f"--shard auto: JOB_COMPLETION_INDEX is set; give the number of shards with "
                f"--shard-count N or {COUNT_ENV} (the Job's completions)"
            )
        n = count if count is not None else _int_env(env, COUNT_ENV)
        return make_shard(_int_env(env, "JOB_COMPLETION_INDEX"), n, "--shard auto (Kubernetes Indexed Job)")
    raise UserError("--shard auto: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set; use --shard K/N")


def expected_tokens(cell) -> float:
    """A cell's weight: samples x max_tokens x FILL of its prompt mode (see the module docstring)."""
    return cell.samples * cell.max_tokens * FILL.get(cell.prompt_mode, FILL_DEFAULT)


def assign(cells: list, count: int) -> list[int]:
    """The shard index of each cell, by the greedy longest-processing-time rule above."""
    loads = [0.0] * count
    owner = [0] * len(cells)
    for i in sorted(range(len(cells)), key=lambda i: (-expected_tokens(cells[i]), cells[i].name)):
        shard = min(range(count), key=lambda s: (loads[s], s))
        owner[i] = shard
        loads[shard] += expected_tokens(cells[i])
    return owner


def select(cells: list, shard: Shard) -> list:
    """The cells of `shard`, in the spec's order."""
    owner = assign(cells, shard.count)
    return [c for c, s in zip(cells, owner) if s == shard.index]
