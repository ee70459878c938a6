"""The kill windows a run can stop in, built exactly: between a request's tokens line and its
requests line (an orphan tokens row), inside the manifest write, and a shard of a sharded study
killed with -9 and resumed. Nothing finished is lost, nothing is recorded twice, and every
reading command works on what is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import CLI, REPO, THREADS, run_cli
from rllm_study.analysis.metrics import cell_metrics
from rllm_study.running import results
from rllm_study.running.results import MANIFEST, REQUESTS, TOKENS, CellWriter, find_cells, read_cell, read_jsonl


class Killed(BaseException):
    """The process dying at this point: nothing after it runs, no handler cleans up."""


MANIFEST_DATA = {
    "cell": {
        "name": "c",
        "study": "s",
        "model": "m",
        "variant": "",
        "dataset": "gsm8k",
        "prompt_mode": "direct",
        "max_tokens": 8,
        "repeat": 0,
        "workload": {"arrival": "batch", "batch_size": 2},
        "engine": {},
    }
}


def _request(i: int, t: float = 0.5) -> tuple[dict, dict]:
    rid = f"gsm8k/{i}"
    return (
        {
            "id": rid,
            "dataset": "gsm8k",
            "batch": 0,
            "arrival_s": 0.0,
            "admitted_s": 0.0,
            "first_token_s": 0.1,
            "first_answer_token_s": 0.1,
            "finish_s": t,
            "output_tokens": 2,
            "think_tokens": 0,
            "answer_tokens": 2,
            "finish_reason": "stop",
            "correct": True,
            "parse_status": "parsed",
        },
        {"id": rid, "t_s": [0.1, t], "token_ids": [1, 2], "phase": "aa", "draft": "00"},
    )


def test_a_kill_between_the_tokens_line_and_the_requests_line(tmp_path, monkeypatch):
    cell = tmp_path / "run" / "c"
    w = CellWriter(cell)
    w.write_manifest(MANIFEST_DATA)
    w.write_request(*_request(0))
    real_write = results._write_all

    def dies_on_the_requests_line(fd, data):
        if fd == w._fds[REQUESTS]:
            raise Killed
        real_write(fd, data)

    monkeypatch.setattr(results, "_write_all", dies_on_the_requests_line)
    with pytest.raises(Killed):
        w.write_request(*_request(1, t=0.7))
    monkeypatch.setattr(results, "_write_all", real_write)
    # on disk: two token lines, one request line: gsm8k/1's tokens are an orphan
    assert [r["id"] for r in read_jsonl(cell / TOKENS)] == ["gsm8k/0", "gsm8k/1"]
    assert [r["id"] for r in read_jsonl(cell / REQUESTS)] == ["gsm8k/0"]
    # readers count only what finished
    m = cell_metrics(read_cell(cell))
    assert m["n_requests"] == 1
    summary = run_cli("summarize", tmp_path / "run")
    assert summary.returncode == 0, summary.stderr
    # the resumed session reruns gsm8k/1; its new tokens line is the one read
    again = CellWriter(cell)
    assert again.finished_ids == {"gsm8k/0"} and again.session == 1
    again.write_request(*_request(1, t=0.9))
    again.close()
    done = read_cell(cell)
    assert [r["id"] for r in done.requests] == ["gsm8k/0", "gsm8k/1"]
    assert done.tokens["gsm8k/1"]["t_s"] == [0.1, 0.9] and done.tokens["gsm8k/1"]["session"] == 1
    assert cell_metrics(done)["n_requests"] == 2


@pytest.mark.parametrize("step", ["write", "replace"])
def test_a_kill_inside_the_manifest_write(tmp_path, monkeypatch, step):
    """Killed while writing manifest.json.tmp, or just before it replaces manifest.json: the old
    manifest (or none) stands, never a half-written one; the next session writes it whole."""
    cell = tmp_path / "run" / "c"
    w = CellWriter(cell)
    w.write_manifest(MANIFEST_DATA)
    w.write_request(*_request(0))
    w.close()
    newer = {**MANIFEST_DATA, "resumed": True}
    if step == "write":
        real = type(cell).write_text

        def half(self, text, *args, **kwargs):
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise Killed

        monkeypatch.setattr(type(cell), "write_text", half)
    else:

        def never(*args):
            raise Killed

        monkeypatch.setattr(results.os, "replace", never)
    with pytest.raises(Killed):
        CellWriter(cell).write_manifest(newer)
    monkeypatch.undo()
    assert json.loads((cell / MANIFEST).read_text()) == MANIFEST_DATA  # the old one, whole
    assert find_cells([tmp_path / "run"]) == [cell]
    assert run_cli("summarize", tmp_path / "run").returncode == 0
    w = CellWriter(cell)
    w.write_manifest(newer)
    w.close()
    assert json.loads((cell / MANIFEST).read_text()) == newer and not (cell / (MANIFEST + ".tmp")).exists()


SHARD_SPEC = """
name = "shard-resume"
models = ["smollm2-135m"]
prompt_modes = ["direct"]
max_tokens = [8, 12]
datasets = { gsm8k = 6 }
[sampling]
temperature = 0.0
[workload]
arrival = "closed"
concurrency = 1
"""


def test_a_killed_shard_resumes_and_the_shards_make_the_whole_study(tmp_path, smollm2_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SHARD_SPEC)
    out = tmp_path / "out"
    shard = [*CLI, "run", str(spec), "-t", str(THREADS), "--shard", "0/2", "--out", str(out)]
    proc = subprocess.Popen(shard, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, files = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None:
        files = list(out.glob("*/requests.jsonl"))
        if files and len(read_jsonl(files[0])) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_jsonl(files[0])
    assert 2 <= len(before) < 6, "the shard was not killed mid-cell"
    again = subprocess.run(shard, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "shard 0/2: 1 of 2 cells" in again.stderr, again.stderr
    after = read_jsonl(files[0])
    assert after[: len(before)] == before and len({r["id"] for r in after}) == len(after) == 6
    other = run_cli("run", spec, "-t", THREADS, "--shard", "1/2", "--out", out)
    assert other.returncode == 0, other.stderr
    cells = find_cells([out])
    assert len(cells) == 2 and all(len(read_jsonl(c / REQUESTS)) == 6 for c in cells)
    for args in (("summarize", out), ("report", out, "--out", tmp_path / "report")):
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
