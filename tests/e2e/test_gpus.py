"""`run --gpus`: one shard per GPU (issue 29, Deliver 7), tested on the CPU: the command line and
environment each child receives, and a real two-shard run of SmolLM2 whose children record the
CUDA_VISIBLE_DEVICES they saw."""

from __future__ import annotations

import sys

import pytest

from conftest import THREADS, run_cli
from rllm_study.errors import UserError
from rllm_study.running.gpus import child_args, parse_gpus, shard_commands
from rllm_study.running.results import find_cells, read_cell


def test_each_child_gets_its_shard_folder_and_gpu(tmp_path):
    args = ["spec.toml", "--gpus", "0,2", "-t", "2", "--out", "runs/x", "--set", "max_tokens=[8]"]
    cmds = shard_commands(args, parse_gpus("0,2"), tmp_path, env={"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert len(cmds) == 2
    for k, (argv, env) in enumerate(cmds):
        assert argv[:4] == [sys.executable, "-m", "rllm_study", "run"]
        assert argv[4:] == [
            "spec.toml",
            "-t",
            "2",
            "--set",
            "max_tokens=[8]",
            "--out",
            str(tmp_path / f"shard-{k}"),
            "--shard",
            f"{k}/2",
        ]
        assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": ["0", "2"][k]}
    assert child_args(["--gpus=0,1", "-o", "x", "--out=y", "s.toml"]) == ["s.toml"]


@pytest.mark.parametrize("text", ["", "0,,1", "0,0", " , "])
def test_bad_gpu_lists(text):
    with pytest.raises(UserError, match="--gpus"):
        parse_gpus(text)


def test_shard_flags_are_refused_with_gpus(tmp_path):
    with pytest.raises(UserError, match="drop --shard"):
        shard_commands(["s.toml", "--shard", "0/2"], ["0", "1"], tmp_path)


def test_two_shards_run_every_cell_once_each_with_its_gpu(tmp_path, smollm2_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'name = "gpus"\nmodels = ["smollm2-135m"]\nprompt_modes = ["direct"]\nmax_tokens = [4, 6, 8]\n'
        "datasets = { gsm8k = 1 }\n[workload]\nbatch_size = 1\n"
    )
    proc = run_cli("run", spec, "-t", str(THREADS), "--gpus", "5,7", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr + "".join(p.read_text() for p in (tmp_path / "out").glob("*.log"))
    seen = {}
    for k, gpu in enumerate(("5", "7")):
        log = (tmp_path / "out" / f"shard-{k}.log").read_text()
        assert f"shard {k}/2" in log
        for cell_dir in find_cells([tmp_path / "out" / f"shard-{k}"]):
            cell = read_cell(cell_dir)
            assert cell.manifest["hardware"]["cuda_visible_devices"] == gpu  # what the child process saw
            seen[cell.name] = gpu
    assert len(seen) == 3  # every cell, once
    assert set(seen.values()) == {"5", "7"}
    assert "shard 0/2 on GPU 5" in proc.stderr and "shard 1/2 on GPU 7" in proc.stderr
