"""Shards: two shards run in parallel (through the shipped Slurm example) give exactly what one
unsharded run gives, each cell in exactly one shard; the selection rule and the schedulers'
environment variables; the Kubernetes example's command partitions the cells."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import CLI, REPO, run_cli
from rllm_study.errors import UserError
from rllm_study.running.results import find_cells, read_cell
from rllm_study.running.shards import assign, expected_tokens, from_environment, parse_shard, select
from rllm_study.running.spec import expand

SLURM = REPO / "examples" / "slurm" / "study-array.sbatch"
K8S = REPO / "examples" / "kubernetes" / "study-indexed-job.yaml"
TINY_SPEC = """
name = "shards"
models = ["smollm2-135m"]
prompt_modes = ["reasoning", "direct"]
max_tokens = [12]
datasets = { gsm8k = 2, gpqa-diamond = 2 }
[sampling]
temperature = 0.0
[engine]
batch_invariant = true
[workload]
arrival = "batch"
batch_size = 2
"""
# what must not depend on which machine ran a cell (latencies do, so they are not compared)
REQUEST_FIELDS = (
    "dataset",
    "item_id",
    "prompt_tokens",
    "output_tokens",
    "think_tokens",
    "answer_tokens",
    "finish_reason",
    "output_text",
    "extracted_answer",
    "correct",
    "parse_status",
    "batch",
)


def _cells(root: Path) -> dict[str, Path]:
    return {read_cell(d, with_tokens=False).name: d for d in find_cells([root])}


def _deterministic(summary: list[dict]) -> dict:
    return {m["cell"]: (m["n_requests"], m["finish_reasons"], m["accuracy"], m["tokens"]) for m in summary}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_path):
    """Shards 0/2 and 1/2 (the Slurm example, as array tasks) and one unsharded run, all at once,
    one llama.cpp thread each: three processes share the machine's cores, and more threads than
    cores spin in llama.cpp's barriers (28 s at 2 threads each on 2 cores)."""
    root = tmp_path_factory.mktemp("shards")
    spec = root / "tiny.toml"
    spec.write_text(TINY_SPEC)
    env = {
        **os.environ,
        "SPEC": str(spec),
        "OUT": str(root / "sharded"),
        "THREADS": "1",
        "RLLM_STUDY": shlex.join(CLI),
        "SLURM_ARRAY_TASK_COUNT": "2",
        "SLURM_ARRAY_TASK_MIN": "1",
    }
    procs = [
        subprocess.Popen(
            ["bash", str(SLURM)],
            cwd=REPO,
            env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for task in (1, 2)
    ]
    procs.append(
        subprocess.Popen(
            [*CLI, "run", str(spec), "-t", "1", "--out", str(root / "single")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    return root, [err for _, err in outputs]


def test_each_cell_runs_in_exactly_one_shard(runs):
    root, stderr = runs
    shard0, shard1 = _cells(root / "sharded" / "shard-0"), _cells(root / "sharded" / "shard-1")
    single = _cells(root / "single")
    assert len(single) == 4 and shard0 and shard1
    assert not set(shard0) & set(shard1)
    assert set(shard0) | set(shard1) == set(single)
    assert "shard 0/2: " in stderr[0] and "shard 1/2: " in stderr[1]
    for d in [*shard0.values(), *shard1.values()]:
        ids = [r["id"] for r in read_cell(d, with_tokens=False).requests]
        assert len(ids) == len(set(ids)) == 2


def test_sharded_requests_and_tokens_equal_the_unsharded_run(runs):
    root, _ = runs
    sharded, single = _cells(root / "sharded"), _cells(root / "single")
    assert sharded.keys() == single.keys()
    for name in single:
        a, b = read_cell(sharded[name]), read_cell(single[name])
        assert a.manifest["cell"] == b.manifest["cell"]
        ra = {r["id"]: r for r in a.requests}
        rb = {r["id"]: r for r in b.requests}
        assert ra.keys() == rb.keys()
        for rid in rb:
            assert {k: ra[rid][k] for k in REQUEST_FIELDS} == {k: rb[rid][k] for k in REQUEST_FIELDS}, (name, rid)
            assert (
                a.tokens[rid]["token_ids"] == b.tokens[rid]["token_ids"]
                and a.tokens[rid]["phase"] == b.tokens[rid]["phase"]
            )
        assert sum(r["output_tokens"] for r in rb.values()) > 0


def test_summary_and_report_over_both_shards_equal_the_unsharded_ones(runs, tmp_path):
    root, _ = runs
    both = run_cli("summarize", root / "sharded" / "shard-0", root / "sharded" / "shard-1", "--json")
    one = run_cli("summarize", root / "single", "--json")
    assert both.returncode == 0 and one.returncode == 0, both.stderr + one.stderr
    assert _deterministic(json.loads(both.stdout)) == _deterministic(json.loads(one.stdout))
    reports = []
    for src in (root / "sharded", root / "single"):
        proc = run_cli("report", src, "--out", tmp_path / src.name)
        assert proc.returncode == 0, proc.stderr
        reports.append(_report_facts((tmp_path / src.name / "report.md").read_text()))
    for (header, sharded), (_, single) in zip(reports[0]["tables"], reports[1]["tables"]):
        assert sharded == single, header
    assert reports[0] == reports[1]
    assert reports[1]["made from"] == ("4", "8") and reports[1]["domain"]
    cell_table = next(
        body
        for header, body in reports[1]["tables"]
        if header[:2] == ("cell", "requests") and "think tok mean" in header
    )
    assert len(cell_table) == 4


# report table columns that depend only on what was generated, not on when (latencies, rates,
# memory samples and the claims resting on them differ run to run)
DETERMINISTIC = {
    "cell",
    "study",
    "cells",
    "requests",
    "data sets",
    "prompt modes",
    "budgets",
    "workloads",
    "variants",
    "data set",
    "difficulty",
    "mode",
    "n",
    "accuracy",
    "accuracy strict",
    "accuracy lenient",
    "answer phase",
    "correct",
    "unparsed",
    "parsed / in think / unparsed",
    "think tok mean",
    "output tok mean",
    "hit budget",
}


def _report_facts(text: str) -> dict:
    """What a report must print identically whichever machines ran the cells: cell and request
    counts, the deterministic columns of every table, which claims could be tested, and the
    accuracy-only claim (domain preference)."""
    lines = text.splitlines()
    tables = []
    for i, line in enumerate(lines[:-1]):
        if line.startswith("| ") and lines[i + 1].startswith("|---"):
            header = [h.strip() for h in line.strip("|").split("|")]
            keep = [j for j, h in enumerate(header) if h in DETERMINISTIC]
            body = []
            for row in lines[i + 2 :]:
                if not row.startswith("| "):
                    break
                cells = [c.strip() for c in row.strip("|").split("|")]
                body.append(tuple(cells[j] for j in keep))
            tables.append((tuple(header[j] for j in keep), body))
    claim_rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    claims = {
        r[0]: r[1:]
        for r in claim_rows
        if len(r) == 3 and r[1] in ("reproduced", "not reproduced", "not tested", "inconclusive")
    }
    return {
        "made from": re.search(r"Made from (\d+) cells \((\d+) requests\)", text).groups(),
        "tables": [t for t in tables if t[0]],
        "not tested": sorted(k for k, v in claims.items() if v[0] == "not tested"),
        "domain": claims.get("Domain preference"),
    }


def _cell(name, samples, budget, mode="reasoning"):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, samples=samples, max_tokens=budget, prompt_mode=mode)


def test_assignment_balances_expected_tokens_not_counts():
    cells = [_cell("big", 10, 4096), *(_cell(f"small{i}", 10, 256) for i in range(8))]
    owner = assign(cells, 2)
    assert owner[0] != owner[1] and owner.count(owner[0]) == 1  # the big cell alone on its shard
    weights = [sum(expected_tokens(c) for c, s in zip(cells, owner) if s == k) for k in range(2)]
    assert max(weights) == expected_tokens(cells[0])
    assert expected_tokens(_cell("d", 10, 100, "direct")) < expected_tokens(_cell("r", 10, 100))


def test_selection_is_a_deterministic_partition_in_spec_order():
    from rllm_study.running.spec import load_spec

    data, where = load_spec(None, "pilot", False)
    cells = expand(data, where)
    parts = [select(cells, parse_shard(f"{k}/3")) for k in range(3)]
    assert sorted(c.name for p in parts for c in p) == sorted(c.name for c in cells)
    for p in parts:
        positions = [cells.index(c) for c in p]
        assert positions == sorted(positions)
    assert parts == [select(expand(data, where), parse_shard(f"{k}/3")) for k in range(3)]


@pytest.mark.parametrize(
    "env,count,want",
    [
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, None, (3, 4)),
        ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}, None, (3, 4)),
        ({"JOB_COMPLETION_INDEX": "2", "RLLM_SHARD_COUNT": "5"}, None, (2, 5)),
        ({"JOB_COMPLETION_INDEX": "2"}, 3, (2, 3)),
    ],
)
def test_shard_from_scheduler_environment(env, count, want):
    shard = from_environment(env, count)
    assert (shard.index, shard.count) == want


@pytest.mark.parametrize(
    "text,env,count,needle",
    [
        ("2/2", {}, None, "outside 0..1"),
        ("1-2", {}, None, "use K/N"),
        ("0/0", {}, None, "must be >= 1"),
        ("0/2", {}, 2, "goes with --shard auto"),
        ("auto", {}, None, "neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX"),
        ("auto", {"JOB_COMPLETION_INDEX": "0"}, None, "--shard-count"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, None, "not a whole number"),
    ],
)
def test_bad_shards_are_user_errors(text, env, count, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        parse_shard(text, count, env)


def test_cli_bad_shard_is_one_line_exit_2():
    proc = run_cli("run", "--preset", "pilot", "--quick", "--shard", "5/2", "--dry-run")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "outside 0..1" in proc.stderr


def test_kubernetes_example_command_partitions_its_study(tmp_path):
    docs = list(yaml.safe_load_all(K8S.read_text()))
    spec = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["study.toml"]
    job = next(d for d in docs if d["kind"] == "Job")["spec"]
    (container,) = job["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert job["completionMode"] == "Indexed" and int(env["RLLM_SHARD_COUNT"]) == job["completions"]
    (tmp_path / "study.toml").write_text(spec)
    command = " ".join(container["args"]).replace("rllm-study", shlex.join(CLI), 1)
    command = command.replace("/spec/", f"{tmp_path}/").replace("/results", str(tmp_path / "results")) + " --dry-run"
    shards = []
    for index in range(job["completions"]):
        proc = subprocess.run(
            [*container["command"], command],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, **env, "JOB_COMPLETION_INDEX": str(index)},
        )
        assert proc.returncode == 0, proc.stderr
        shards.append([line.split()[0] for line in proc.stdout.splitlines() if line.strip()])
    every = [c.name for c in expand(tomllib.loads(spec), "configmap")]
    assert sorted(n for s in shards for n in s) == sorted(every) and all(shards)
