"""`run --gpus 0,1,...`: one study across a machine's GPUs without a cluster scheduler.

For N GPUs ids g_0..g_{N-1}, N child processes run the same `rllm-study run` command with
`--shard K/N` (the shard rule of `rllm_study.running.shards`: each cell in exactly one shard),
`--out OUT/shard-K` (a results folder has one writer) and the environment's
CUDA_VISIBLE_DEVICES = g_K, so each child's engine sees one GPU, as its device 0. Each child's
output goes to OUT/shard-K.log. The parent waits for all of them and fails (exit 1) if any
failed, naming its log; `report OUT` reads the shards as one run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rllm_study.errors import UserError

DROPPED = ("--gpus", "--out", "-o")  # options the parent sets per child


def parse_gpus(text: str) -> list[str]:
    """`0,1,3` -> ["0", "1", "3"]: distinct GPU ids (whole numbers, or UUIDs as CUDA takes them)."""
    ids = [part.strip() for part in text.split(",")]
    if not ids or any(not i for i in ids) or len(set(ids)) != len(ids):
        raise UserError(f"--gpus {text!r}: give distinct GPU ids separated by commas, e.g. --gpus 0,1,2,3")
    return ids


def child_args(args: list[str]) -> list[str]:
    """The run command's arguments without the options in DROPPED (and their values)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in DROPPED:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def shard_commands(
    args: list[str], gpus: list[str], out: Path, env: dict | None = None
) -> list[tuple[list[str], dict]]:
    """(argv, environment) of each child (the module docstring); `args` are the run command's own."""
    base = child_args(args)
    if any(a.split("=", 1)[0] in ("--shard", "--shard-count") for a in base):
        raise UserError("--gpus runs one shard per GPU itself; drop --shard and --shard-count")
    env = dict(os.environ if env is None else env)
    return [
        (
            [
                sys.executable,
                "-m",
                "rllm_study",
                "run",
                *base,
                "--out",
                str(out / f"shard-{k}"),
                "--shard",
                f"{k}/{len(gpus)}",
            ],
            {**env, "CUDA_VISIBLE_DEVICES": gpu},
        )
        for k, gpu in enumerate(gpus)
    ]


def run_on_gpus(args: list[str], gpus: list[str], out: Path, console) -> list[Path]:
    """Start one child per GPU, wait for all; the shard folders, or UserError naming failed logs."""
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for k, (argv, env) in enumerate(shard_commands(args, gpus, out)):
        log = open(out / f"shard-{k}.log", "w")  # noqa: SIM115  (the child writes it until it ends; closed below)
        procs.append((k, subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        console.print(f"shard {k}/{len(gpus)} on GPU {gpus[k]}: pid {procs[-1][1].pid}, log {out / f'shard-{k}.log'}")
    failed = []
    for k, proc, log in procs:
        if proc.wait() != 0:
            failed.append(f"shard {k} (exit {proc.returncode}, see {out / f'shard-{k}.log'})")
        log.close()
    if failed:
        raise UserError("--gpus: " + "; ".join(failed))
    return [out / f"shard-{k}" for k in range(len(gpus))]
