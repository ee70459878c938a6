"""The runner's machine-speed calibration (`calibrate`) on a stand-in engine whose first decodes
are slow, as a fresh engine's are on a GPU (the real engine's calibrations are checked in
tests/e2e/test_runner.py)."""

from __future__ import annotations

from rllm_study.backends.base import RequestFinished, TokenEvent
from rllm_study.running.runner import CALIBRATION_TOKENS, CALIBRATION_WARM_UP_TOKENS, calibrate


class ColdStartEngine:
    """One token a step; the first CALIBRATION_WARM_UP_TOKENS tokens this engine ever makes take 10 ms each (a fresh
    engine's one-off costs), later ones 2 ms."""

    def __init__(self):
        self.made = 0
        self.now = 0
        self.submitted: list[str] = []
        self.running = None

    def submit(self, request) -> None:
        self.submitted.append(request.id)
        self.running = (request.id, request.sampling.max_tokens, 0)

    def abort(self, request_id: str) -> None:
        self.running = None

    def has_work(self) -> bool:
        return self.running is not None

    def step(self):
        rid, budget, done = self.running
        self.now += 10_000_000 if self.made < CALIBRATION_WARM_UP_TOKENS else 2_000_000
        self.made += 1
        events = [TokenEvent(rid, self.now, 1, "x", "answer")]
        if done + 1 == budget:
            events.append(RequestFinished(rid, self.now, "length", "x" * budget, 3, budget, 0, budget, 0))
            self.running = None
        else:
            self.running = (rid, budget, done + 1)
        return events


def test_the_first_calibration_of_an_engine_is_warmed_up_once():
    engine = ColdStartEngine()
    before = calibrate(engine, "before")
    assert engine.submitted == ["calibration-before-warm-up", "calibration-before"]
    assert before["tokens"] == CALIBRATION_TOKENS and before["tok_s"] == 500.0  # 2 ms a token: warm
    after = calibrate(engine, "after")
    assert engine.submitted[2:] == ["calibration-after"] and after["tok_s"] == 500.0
