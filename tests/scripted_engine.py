"""A scripted engine for fast, in-process tests of the runner, recorder, writer, metrics and reports.

`ScriptedEngine` implements the `rllm_study.backends.base.Engine` protocol with a deterministic
"model" instead of a real one; everything around the model is the real code: each request's
output goes through `backends.output.RequestOutput` (phases, stop strings, token budget, the
think budget's forced close), so the events are those a step-driven engine emits. It is never
the evidence that an engine works: every behaviour tested with it is also tested end to end on
a real model (tests/e2e/test_runner.py, tests/engine/test_llama_engine.py, tests/engine/test_think_budget.py).

The model (`Script`): a request that starts in its think phase writes `think_words(request)`
words of thinking, then ` </think>`; in the answer phase it writes `ANSWER_PIECES` with
`answer(request)` in the box (after a forced close, whose cue opened the box, only the answer
and the closing brace), then ends (end of generation). Tokens are the 4-character chunks
of whitespace-separated words (so `<think>` is two tokens, as for an ordinary prompted model).

Scheduling: up to `max_seqs` requests run at once; each `step()` admits waiting requests into
free slots (RequestAdmitted and PrefillDone in the same step, the whole prompt at once), then
gives every running request one token. `step_s` (seconds slept per step, default 0) stands in
for decode time. KV use counts prompt + output tokens of the running requests, in cells.

Use it as the backend "scripted" inside `with scripted_backend():` (registered only there).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rllm_study.backends import REGISTRY, register
from rllm_study.backends.base import (
    FINISH_ABORT,
    THINK,
    Capabilities,
    EngineInfo,
    EngineStats,
    PrefillDone,
    Request,
    RequestAdmitted,
)
from rllm_study.backends.options import CommonOptions, LlamaCppOptions
from rllm_study.backends.output import CLOSE_THINK, RequestOutput, check_sampling
from rllm_study.backends.phases import PhaseTracker

NAME = "scripted"
EOS_ID = 0
ANSWER_PIECES = (" The", " final", " answer", " is", " \\boxed{{{answer}}}.")


def pieces(text: str) -> list[str]:
    """The scripted tokenizer: every whitespace-separated word (with the space before it) cut into
    4-character chunks."""
    out = []
    for word in re.findall(r"\s*\S+", text):
        out += [word[i : i + 4] for i in range(0, len(word), 4)]
    return out


def token_id(piece: str) -> int:
    """A stable id in 1..49999 (0 is end of generation)."""
    h = 0
    for ch in piece.encode():
        h = (h * 131 + ch) % 49_999
    return h + 1


def stable_hash(text: str) -> int:
    h = 0
    for ch in text.encode():
        h = (h * 131 + ch) & 0xFFFFFFFF
    return h


@dataclass
class Script:
    """What the scripted model writes for a request (see the module docstring)."""

    think_words: Callable[[Request], int] = lambda r: 4 + 2 * (stable_hash(r.id) % 5)
    answer: Callable[[Request], str] = lambda r: "42"

    def next_piece(self, request: Request, out: RequestOutput) -> tuple[str, bool]:
        """(piece, end_of_generation) of the request's next token."""
        if out.phases.phase == THINK:
            n = self.think_words(request)
            return (f" step{out.think_tokens}", False) if out.think_tokens < n else (" </think>", False)
        text = "".join(ANSWER_PIECES).format(answer=self.answer(request))
        if out.forced:  # the engine closed the thinking and fed the answer cue ("... \\boxed{"): finish the box
            text = f" {self.answer(request)}}}."
        answer = pieces(text)
        return (answer[out.answer_tokens], False) if out.answer_tokens < len(answer) else ("", True)


@dataclass
class _Running:
    request: Request
    out: RequestOutput


class ScriptedEngine:
    """The scripted engine (see the module docstring); built as ScriptedEngine(model, options)."""

    script = Script()
    step_s = 0.0

    def __init__(self, model: str, options: CommonOptions):
        self.model, self.options = model, options
        self.waiting: list[Request] = []
        self.running: dict[str, _Running] = {}
        self.aborted: set[str] = set()

    # -- the Engine protocol -------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        check_sampling(request)
        self.waiting.append(request)

    def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list:
        events = []
        now = time.perf_counter_ns
        for rid in sorted(self.aborted):
            if rid in self.running:
                events.append(self.running.pop(rid).out.finished(FINISH_ABORT, now()))
            for r in [r for r in self.waiting if r.id == rid]:
                self.waiting.remove(r)
                events.append(
                    RequestOutput(r, self.count_tokens(r.prompt), PhaseTracker(r.starts_in_think)).finished(
                        FINISH_ABORT, now()
                    )
                )
        self.aborted.clear()
        while self.waiting and len(self.running) < self.options.max_seqs:
            r = self.waiting.pop(0)
            out = RequestOutput(r, self.count_tokens(r.prompt), PhaseTracker(r.starts_in_think))
            self.running[r.id] = _Running(r, out)
            events.append(RequestAdmitted(r.id, now()))
            events.append(PrefillDone(r.id, now(), out.prompt_tokens))
        if self.step_s:
            time.sleep(self.step_s)
        for rid in list(self.running):
            run = self.running[rid]
            piece, eog = self.script.next_piece(run.request, run.out)
            event, reason = run.out.add(EOS_ID if eog else token_id(piece), piece, now(), eog)
            events.append(event)
            if reason == CLOSE_THINK:
                run.out.close_thinking(lambda text: [token_id(p) for p in pieces(text)], None)
            elif reason is not None:
                events.append(self.running.pop(rid).out.finished(reason, now()))
        return events

    def stats(self) -> EngineStats:
        used = sum(r.out.prompt_tokens + len(r.out.tokens) + len(r.out.forced) for r in self.running.values())
        capacity = self.options.n_ctx or self.options.max_seqs * self.options.ctx_per_seq
        return EngineStats(
            kv_used=used,
            kv_capacity=capacity,
            running=len(self.running),
            waiting=len(self.waiting),
            rss_bytes=(1 + len(self.running)) * 2**20,
        )

    def capabilities(self) -> Capabilities:
        return Capabilities(backend=NAME, local_model=False, think_budget=True)

    def info(self) -> EngineInfo:
        return EngineInfo(backend=NAME, build="scripted", model={"name": self.model})

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return text + ("<|assistant|>\n" if add_generation_prompt else "")

    def count_tokens(self, text: str) -> int:
        return len(pieces(text))

    def close(self) -> None:
        self.waiting.clear()
        self.running.clear()


@contextlib.contextmanager
def scripted_backend(script: Script | None = None, step_s: float = 0.0, options: type[CommonOptions] = LlamaCppOptions):
    """The backend "scripted" registered (and ScriptedEngine's script and step time set) inside the
    block. It takes llama.cpp's options by default, so a spec written for llama.cpp (KV types,
    threads) runs unchanged; the scripted model honours only the common ones (concurrency, context)."""
    saved = ScriptedEngine.script, ScriptedEngine.step_s
    ScriptedEngine.script, ScriptedEngine.step_s = script or Script(), step_s
    register(NAME, f"{__name__}:ScriptedEngine", options)
    try:
        yield ScriptedEngine
    finally:
        REGISTRY.pop(NAME, None)
        ScriptedEngine.script, ScriptedEngine.step_s = saved


def run_scripted(
    out: Path,
    spec: dict | None = None,
    *,
    preset: str | None = None,
    overrides: tuple[str, ...] = (),
    script: Script | None = None,
    step_s: float = 0.0,
) -> list[Path]:
    """`rllm-study run` in process on the scripted engine: a spec (or a preset's quick size) with
    `--set` overrides, its backend and models replaced by the scripted ones; returns the cell folders."""
    from rich.console import Console

    from rllm_study.running.runner import run_study
    from rllm_study.running.spec import apply_overrides, expand, load_spec

    where = str(out / "spec.toml")
    if preset is not None:
        spec, where = load_spec(preset=preset, quick=True)
    spec = apply_overrides({**spec, "backend": NAME}, [*overrides, f'models=["{NAME}"]'])
    with scripted_backend(script, step_s):
        return run_study(expand(spec, where), spec, out, Console(quiet=True))
