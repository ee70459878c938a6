"""Shared fixtures: the real embedded models, resolved (and fetched once) through the registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rllm_study.backends.base import RequestFinished, TokenEvent

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rllm_study"]
THREADS = int(os.environ.get("RLLM_TEST_THREADS", "2"))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from rllm_study.models import resolve_model

    return resolve_model("smollm2-135m").path


@pytest.fixture(scope="session")
def qwen05_path() -> Path:
    from rllm_study.models import resolve_model

    return resolve_model("qwen2.5-coder-0.5b").path


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `rllm-study ARGS` in a subprocess; returns the completed process (text output)."""
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **(env or {})},
    )


QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three prime numbers.",
    "Explain what a CPU does in one sentence.",
    "Name a famous painter.",
]


def drain(engine, on_step=None) -> dict[str, dict]:
    """Step until idle; per request: its events in order, token ids and the finish event."""
    out: dict[str, dict] = {}
    steps = 0
    while engine.has_work():
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
