"""Fault injection: one writer per folder, results-path errors (not a folder, read-only, a full
disk), torn and NUL-filled tails, and validation before any work, on real runs of SmolLM2."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import CLI, REPO, THREADS, one_line_error, require, run_cli
from rllm_study.errors import UserError
from rllm_study.running.results import (
    LOCK,
    PACKED,
    REQUESTS,
    TOKENS,
    CellWriter,
    FolderLock,
    ResultsWriteError,
    read_jsonl,
)

TINY = ["-m", "smollm2-135m", "-t", str(THREADS), "--set", "max_tokens=[8]", "--set", "prompt_modes=['direct']"]


def _record(i: int) -> tuple[dict, dict]:
    return {"id": f"r{i}", "output_tokens": 1}, {"id": f"r{i}", "t_s": [0.1], "token_ids": [5]}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- one writer per folder ------------------------------------------------------------------


def test_a_held_lock_refuses_a_second_writer(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from rllm_study.running.results import FolderLock; lock = FolderLock(sys.argv[1]).acquire(); "
                "print('held', flush=True); time.sleep(60)"
            ),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as err:
            FolderLock(tmp_path).acquire()
        assert str(err.value).startswith(
            f"{tmp_path} is being written by pid {holder.pid} on {socket.gethostname()} since "
        )
        assert str(err.value).endswith("; wait, or use another --out")
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(tmp_path).acquire()  # killed -9: the kernel dropped its flock
    assert lock.took_over and f"pid {holder.pid}" in lock.took_over and "no longer holds it" in lock.took_over
    lock.release()
    assert not (tmp_path / LOCK).exists()
    with FolderLock(tmp_path) as clean:  # released cleanly: nothing to take over
        assert clean.took_over is None


def test_two_runs_on_one_folder_record_each_request_once(tmp_path, smollm2_path):
    args = [
        *CLI,
        "run",
        "--preset",
        "pilot",
        "--quick",
        *TINY,
        "--set",
        "datasets={gsm8k=4}",
        "--set",
        "workload.batch_size=2",
        "--out",
        str(tmp_path),
    ]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / LOCK).exists() and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    line = one_line_error(
        second,
        f"{tmp_path} is being written by pid {first.pid} on {socket.gethostname()} since",
        "wait, or use another --out",
    )
    assert line.count("\n") == 0
    (cell,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    ids = [r["id"] for r in read_jsonl(cell / REQUESTS)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 4
    assert not (tmp_path / LOCK).exists()


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path, smollm2_path):
    dead = _dead_pid()
    (tmp_path / LOCK).write_text(
        json.dumps({"pid": dead, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"})
    )
    done = run_cli(
        "run",
        "--preset",
        "pilot",
        "--quick",
        *TINY,
        "--set",
        "datasets={gsm8k=2}",
        "--set",
        "workload.batch_size=2",
        "--out",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"took over the lock left by pid {dead} on {socket.gethostname()}" in done.stderr
    assert not (tmp_path / LOCK).exists()


# -- results-path errors ----------------------------------------------------------------------


def test_out_under_a_regular_file_or_a_file_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    for out, needle in (
        (blocker / "sub", f"{blocker} is a regular file, not a folder"),
        (blocker, "exists and is not a folder"),
    ):
        done = run_cli("run", "--preset", "pilot", "--quick", *TINY, "--out", out)
        one_line_error(done, str(out), needle)
        done = run_cli("run", "--preset", "pilot", "--quick", *TINY, "--out", out, "--dry-run")
        one_line_error(done, str(out), needle)


@pytest.fixture
def mounted(tmp_path):
    """mount(8) a small tmpfs (root only): yields a function mount(options) -> folder. Where mount is
    refused the test skips, and under CI (CI=true) fails (`conftest.require`): CI runs as root."""
    points = []

    def mount(options: str):
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True
        )
        require(
            done.returncode == 0,
            f"cannot mount a tmpfs here ({done.stderr.strip()}): run as root where mount(8) is "
            f"allowed; test_a_failed_write_is_rolled_back covers the rollback only",
        )
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_read_only_results_folder_is_one_line_exit_2(mounted):
    ro = mounted("ro,size=64k")
    done = run_cli("run", "--preset", "pilot", "--quick", *TINY, "--out", ro / "study")
    one_line_error(done, str(ro / "study"), "read-only")


def test_a_full_disk_stops_cleanly_keeps_what_was_written_and_resumes(mounted, smollm2_path):
    disk = mounted("size=96k")
    out = disk / "study"
    filler = disk / "filler"
    # leave 7 pages: lock 1, manifest 2, each file (requests, tokens, timeline, calibration) 1: full at its second page
    filler.write_bytes(b"\0" * (96 * 1024 - 7 * 4096))
    args = (
        "run",
        "--preset",
        "pilot",
        "--quick",
        *TINY,
        "--set",
        "datasets={gsm8k=12}",
        "--set",
        "workload.batch_size=4",
        "--set",
        "sample_period_s=1.0",
        "--out",
        out,
    )
    done = run_cli(*args)
    line = one_line_error(
        done,
        "the disk is full",
        "the run stopped",
        f"finished requests are kept in {out}",
        "run the same command again to resume",
    )
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    kept = read_jsonl(cell / REQUESTS)
    assert 0 < len(kept) < 12
    assert f"; {len(kept)} finished requests are kept" in line
    tokens = {r["id"] for r in read_jsonl(cell / TOKENS)}
    assert tokens >= {r["id"] for r in kept}
    for name in (REQUESTS, TOKENS):  # rolled back to whole lines
        data = (cell / name).read_bytes()
        assert not data or data.endswith(b"\n")
    summary = run_cli("summarize", out, "--json")
    assert summary.returncode == 0, summary.stderr
    assert json.loads(summary.stdout)[0]["n_requests"] == len(kept)
    filler.unlink()
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    ids = [r["id"] for r in read_jsonl(cell / REQUESTS)]
    assert len(ids) == len(set(ids)) == 12 and ids[: len(kept)] == [r["id"] for r in kept]


def test_a_failed_write_is_rolled_back(tmp_path, monkeypatch):
    writer = CellWriter(tmp_path)
    writer.write_request(*_record(0))
    real_write, calls = os.write, []

    def full_on_second(fd, data):
        calls.append(fd)
        if len(calls) == 2:  # the tokens line went out; the request line half does, then the disk is full
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_on_second)
    with pytest.raises(ResultsWriteError) as err:
        writer.write_request(*_record(1))
    assert err.value.err.errno == errno.ENOSPC and str(err.value).endswith("requests.jsonl: the disk is full")
    monkeypatch.setattr(os, "write", real_write)
    assert [r["id"] for r in read_jsonl(tmp_path / REQUESTS)] == ["r0"]
    assert [r["id"] for r in read_jsonl(tmp_path / TOKENS)] == ["r0"]  # the tokens line was cut back too
    writer.write_request(*_record(1))  # space again: appends go on from whole lines
    writer.close()
    assert [r["id"] for r in read_jsonl(tmp_path / REQUESTS)] == ["r0", "r1"]


# -- torn and NUL-filled tails ----------------------------------------------------------------


@pytest.mark.parametrize(
    "tail", [b'{"id":"r9","output_tok', b"\0" * 300, b'{"id":"r9"}' + b"\0" * 40, b"\0" * 30 + b"\n"]
)
def test_torn_or_nul_filled_tail_is_cut_and_the_cell_resumes(tmp_path, tail):
    writer = CellWriter(tmp_path)
    for i in range(2):
        writer.write_request(*_record(i))
    writer.close()
    for name in (REQUESTS, TOKENS):
        with open(tmp_path / name, "ab") as f:
            f.write(tail)
    assert [r["id"] for r in read_jsonl(tmp_path / REQUESTS)] == ["r0", "r1"]
    again = CellWriter(tmp_path)
    assert again.finished_ids == {"r0", "r1"} and again.session == 1
    again.write_request(*_record(2))
    again.close()
    assert [r["id"] for r in read_jsonl(tmp_path / REQUESTS)] == ["r0", "r1", "r2"]


def test_a_damaged_line_before_the_end_is_named(tmp_path):
    path = tmp_path / REQUESTS
    path.write_text('{"id": "a"}\n{"id": \n{"id": "b"}\n')
    with pytest.raises(UserError, match=r"requests.jsonl line 2: not a JSON record"):
        read_jsonl(path)


# -- validation before any work ---------------------------------------------------------------

SPEC = 'name = "v"\nmodels = ["smollm2-135m"]\ndatasets = { gsm8k = 2 }\nprompt_modes = ["direct"]\nmax_tokens = [8]\n'


BAD = '[[variants]]\nname = "good"\n[[variants]]\nname = "bad"\n'


@pytest.mark.parametrize(
    "extra,needle",
    [
        (BAD + '[variants.workload]\narrival = "poisson"\nrate = -1.0\n', "workload.rate must be > 0, got -1.0"),
        (BAD + '[variants.workload]\narrival = "gamma"\nrate = 1.0\ncv = 0.0\n', "workload.cv must be > 0, got 0.0"),
        (
            BAD + '[variants.workload]\narrival = "trace"\ntrace = "/nonexistent/trace.txt"\n',
            "cannot read trace file /nonexistent/trace.txt",
        ),
        (
            BAD + "[variants.engine]\nctx_per_seq = 256\n[variants.workload]\nshared_prefix = 8\n",
            "-token prompt; a sequence holds 255 (set engine.ctx_per_seq >= ",
        ),
        ('templates = "/nonexistent/prompts.toml"\n', "cannot read prompt templates /nonexistent/prompts.toml"),
    ],
)
def test_a_bad_cell_is_refused_before_any_cell_runs(tmp_path, smollm2_path, extra, needle):
    """The good cell comes first: nothing of it may run or be written before the bad one is found."""
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC + extra)
    out = tmp_path / "out"
    for dry in ([], ["--dry-run"]):
        done = run_cli("run", spec, "-t", str(THREADS), "--out", out, *dry)
        one_line_error(done, needle)
        assert not out.exists() or [p.name for p in out.iterdir()] == [], list(out.iterdir())


def test_an_unknown_model_is_refused_before_any_cell(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace('models = ["smollm2-135m"]', 'models = ["smollm2-135m", "no-such-model"]'))
    done = run_cli("run", spec, "-t", str(THREADS), "--out", tmp_path / "out")
    one_line_error(done, "unknown model 'no-such-model'")
    assert not list((tmp_path / "out").glob("*/manifest.json"))


def test_context_is_sized_for_the_longest_prompt(tmp_path, smollm2_path):
    """Default ctx_per_seq (budget + 1024, rounded up to 256) is too small for GPQA's longest
    prompts; the run sizes it instead of failing those requests; a ctx_per_seq you set is kept."""
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("gsm8k = 2", "gpqa-diamond = 130").replace("[8]", "[4]"))
    done = run_cli("run", spec, "-t", str(THREADS), "--out", tmp_path / "out", "--dry-run")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert "(ctx_per_seq " in line and "sized for its longest prompt" in line
    sized = int(line.split("(ctx_per_seq ")[1].split(":")[0])
    assert sized > 1280 and sized % 256 == 0
    assert "ok: 1 cells checked" in done.stderr
    done = run_cli(
        "run", spec, "-t", str(THREADS), "--out", tmp_path / "out", "--dry-run", "--set", "engine.ctx_per_seq=1024"
    )
    one_line_error(done, "has a", "a sequence holds 1023", "set engine.ctx_per_seq >= ")


def test_a_packed_cell_reads_back_the_same_and_resumes(tmp_path):
    """`pack` on a published cell: tokens.jsonl and timeline.jsonl become .gz files, every summary
    metric, token and timeline line reads back the same, and a resumed cell appends beside the
    packed files."""
    import shutil

    from rllm_study.report.cells import load_cells
    from rllm_study.running.results import read_cell

    src = next(
        p for p in sorted((REPO / "reports" / "gpu-h200" / "pilot-1.5b").iterdir()) if (p / "manifest.json").exists()
    )
    cell_dir = tmp_path / "run" / src.name
    shutil.copytree(src, cell_dir)
    for name in PACKED:  # the published cell is packed: write its plain files back first
        (cell_dir / name).write_text("".join(json.dumps(row) + "\n" for row in read_jsonl(cell_dir / name)))
        (cell_dir / (name + ".gz")).unlink()
    before, [loaded] = read_cell(cell_dir), load_cells([cell_dir])
    assert before.tokens and before.timeline and loaded.rows
    done = run_cli("pack", tmp_path / "run")
    assert done.returncode == 0 and "packed 1 of 1 cells" in done.stdout, done.stderr
    for name in PACKED:
        assert not (cell_dir / name).exists() and (cell_dir / (name + ".gz")).exists()
    after = read_cell(cell_dir)
    assert after.tokens == before.tokens and after.requests == before.requests and after.timeline == before.timeline
    [again] = load_cells([cell_dir])
    assert again.metrics == loaded.metrics and again.rows == loaded.rows
    w = CellWriter(cell_dir)  # a resume: new lines go to a plain tokens.jsonl, read after the packed ones
    w.write_request({"id": "extra"}, {"id": "extra", "t_s": [0.5]})
    w.close()
    assert set(read_cell(cell_dir).tokens) == set(before.tokens) | {"extra"}
    assert run_cli("pack", tmp_path / "run").returncode == 0 and set(read_cell(cell_dir).tokens) == set(
        before.tokens
    ) | {"extra"}
    with FolderLock(tmp_path / "run"):  # a run writing the folder: refused in one line, nothing packed
        one_line_error(run_cli("pack", tmp_path / "run"), "is being written by pid")
    (cell_dir / (TOKENS + ".gz")).write_bytes(b"\x1f\x8b\x08\x00 cut")  # a damaged packed file: one line, exit 2
    one_line_error(run_cli("summarize", tmp_path / "run"), "not a complete gzip file")
