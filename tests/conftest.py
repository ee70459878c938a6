"""Shared fixtures: the real embedded models, resolved (and fetched once) through the registry."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rllm_study.backends.base import RequestFinished, TokenEvent
from rllm_study.backends.mlx import OPENBLAS  # noqa: F401  (loads OpenBLAS before a test module imports mlx.core)

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rllm_study"]
THREADS = int(os.environ.get("RLLM_TEST_THREADS", "2"))
IN_CI = os.environ.get("CI", "").lower() == "true"
MAX_STEPS = 10_000  # drain's bound: far above any test's tokens, so a stuck engine fails instead of hanging


TIERS = ("unit", "engine", "e2e")


def pytest_collection_modifyitems(items) -> None:
    """Mark each test with its tier, the folder it sits in (tests/unit, tests/engine, tests/e2e), so
    `-m unit` selects the quick tier as `tests/unit` does (docs/architecture.md, Tests)."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)


def require(present: bool, what: str) -> None:
    """Skip a test whose prerequisite (something the README's setup installs or builds) is
    missing, with `what` saying how to get it; under CI (CI=true) fail instead: CI runs the
    setup, so a missing prerequisite there is a broken setup, never a silently untested path."""
    if not present:
        if IN_CI:
            pytest.fail(f"{what} (CI=true: the setup should have provided it)")
        pytest.skip(what, allow_module_level=True)


def require_module(name: str) -> None:
    """Like `pytest.importorskip`, failing under CI (see `require`); finds the module without
    importing it (so a test module can still order its imports)."""
    require(
        importlib.util.find_spec(name) is not None,
        f"python module {name} is not installed (scripts/setup.sh installs it)",
    )


def llama_server_binary() -> Path | None:
    """The llama-server scripts/build_llama_tools.sh builds (or $RLLM_LLAMA_SERVER), None if absent."""
    version = importlib.metadata.version("llama_cpp_python")
    default = Path.home() / ".cache/rllm-study/llama-tools" / version / "bin/llama-server"
    path = Path(os.environ.get("RLLM_LLAMA_SERVER", default))
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from rllm_study.models import resolve_model

    return resolve_model("smollm2-135m").path


@pytest.fixture(scope="session")
def qwen05_path() -> Path:
    from rllm_study.models import resolve_model

    return resolve_model("qwen2.5-coder-0.5b").path


def batch_invariant_call(module: str, function: str, *args, **kwargs):
    """module.function(*args, **kwargs) in a fresh Python process (a test module under tests/),
    with llama.cpp's tiled matrix multiplication off from the start: a batch-invariant engine needs
    GGML_CPU_TILED_MM=0 before llama.cpp's first matrix multiplication in its process (see "Batch
    invariance" in backends/rllm_study/backends/llama_cpp/engine.py). Its JSON-able result."""
    import json

    code = (
        "import json, sys; sys.path[:0] = ['tests/engine', 'tests']; "
        f"from {module} import {function}; print(json.dumps({function}(*{args!r}, **{kwargs!r})))"
    )
    env = {**os.environ, "GGML_CPU_TILED_MM": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `rllm-study ARGS` in a subprocess; returns the completed process (text output)."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def quick_preset(preset: str, *sets: str) -> list[str]:
    """`--preset PRESET --quick` on SmolLM2-135M with the test threads and 16 tokens a request, then
    `--set S` for each of `sets`: the argument list of the e2e tests that run a quick preset."""
    return [
        "--preset",
        preset,
        "--quick",
        "-m",
        "smollm2-135m",
        "-t",
        str(THREADS),
        "--set",
        "max_tokens=[16]",
        *(arg for s in sets for arg in ("--set", s)),
    ]


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert a CLI run ended as a user mistake should: exit 2, no traceback, its last stderr line
    `error: ...` holding every needle; returns that line."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three prime numbers.",
    "Explain what a CPU does in one sentence.",
    "Name a famous painter.",
]


def drain(engine, on_step=None, max_steps: int = MAX_STEPS) -> dict[str, dict]:
    """Step until idle (failing after max_steps steps); per request: its events in order, token
    ids and the finish event."""
    out: dict[str, dict] = {}
    steps = 0
    while engine.has_work():
        assert steps < max_steps, f"the engine still has work after {max_steps} steps"
        for ev in engine.step():
            rec = out.setdefault(ev.request_id, {"events": [], "tokens": [], "finish": None})
            rec["events"].append(ev)
            if isinstance(ev, TokenEvent):
                rec["tokens"].append(ev.token_id)
            if isinstance(ev, RequestFinished):
                rec["finish"] = ev
        steps += 1
        if on_step:
            on_step(steps)
    return out


def chat(engine, text: str) -> str:
    return engine.apply_chat_template([{"role": "user", "content": text}])


@pytest.fixture(scope="session")
def tiny_r1_path() -> Path:
    """A tiny model with DeepSeek-R1-Distill's real tokenizer and chat template and random weights
    (tests/tiny_r1.py), built once into ~/.cache/rllm-study/test-models (about 20 MB)."""
    import tiny_r1

    path = Path("~/.cache/rllm-study/test-models").expanduser() / f"tiny-r1-distill-v{tiny_r1.VERSION}.gguf"
    return path if path.is_file() else tiny_r1.build(path)
