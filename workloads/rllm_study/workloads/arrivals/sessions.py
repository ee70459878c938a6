"""Multi-turn sessions: conversations of K turns, each turn sent a think time after the previous
one finished; sessions start closed loop (C conversations at a time) or open loop (Poisson starts).

Each item of the cell's data set becomes one session: turn 1 asks its problem, turns 2..K ask the
follow-ups of `rllm_study.running.sessions` about it, each prompt carrying the previous turns'
questions and answers (their thinking removed unless `keep_thinking`). A turn's arrival is its
scheduled time: the session's start for turn 1, else the previous turn's finish + think_time_s.
The timing object below answers the runner's two questions about *session starts* (the n of
`build` is the number of sessions); `rllm_study.running.sessions` sends the turns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from rllm_study.workloads.arrivals.base import ArrivalProcess, Due, OpenLoop, Param, Timing, rescaled_gaps, rng
from rllm_study.workloads.arrivals.closed import CONCURRENCY, ClosedLoop

TURNS = Param("turns", "count", "Turns per multi-turn session (K).", default=3)
THINK_TIME = Param(
    "think_time_s", "seconds", "Seconds a user waits after a turn's answer before the next turn.", default=1.0
)
SESSION_RATE = Param(
    "session_rate", "rate", "Open loop: Poisson session starts per second (default: closed loop).", default=0.0
)
KEEP_THINKING = Param(
    "keep_thinking", "switch", "Keep each earlier answer's thinking in later turns' prompts.", default=False
)


@dataclass(frozen=True)
class SessionTiming(Timing):
    """When sessions start (`starts`: due(now, sessions started, sessions unfinished)) and how their turns follow."""

    starts: Timing
    turns: int
    think_time_s: float
    keep_thinking: bool

    def due(self, now_s: float, sent: int, in_flight: int) -> list[Due]:
        return self.starts.due(now_s, sent, in_flight)

    def next_due_s(self, sent: int) -> float | None:
        return self.starts.next_due_s(sent)

    def preview(self, n: int, as_json: bool) -> list[str]:
        if as_json:
            return [
                json.dumps(
                    {
                        "arrival": Sessions.NAME,
                        "sessions": n,
                        "turns": self.turns,
                        "think_time_s": self.think_time_s,
                        "keep_thinking": self.keep_thinking,
                    }
                )
            ]
        head = (
            f"{n} sessions of {self.turns} turns; each turn {self.think_time_s:g} s after the previous one's answer; "
            f"thinking {'kept' if self.keep_thinking else 'removed'} in later prompts"
        )
        if isinstance(self.starts, ClosedLoop):
            return [f"{head}; {self.starts.concurrency} sessions in progress at once, the next starting as one ends"]
        return [f"{head}; session starts (open loop):", *self.starts.preview(n, as_json)]


class Sessions(ArrivalProcess):
    NAME = "sessions"
    SUMMARY = (
        "multi-turn sessions of K turns (think_time_s between a turn's answer and the next turn), "
        "C at a time or Poisson starts at session_rate"
    )
    PARAMS = (
        TURNS,
        THINK_TIME,
        replace(CONCURRENCY, help="Sessions in progress at once (closed loop)."),
        SESSION_RATE,
        KEEP_THINKING,
    )

    @classmethod
    def build(cls, n: int, seed: int, params: dict) -> SessionTiming:
        rate = params["session_rate"]
        if rate:
            starts: Timing = OpenLoop.from_gaps(cls.NAME, rescaled_gaps(rng(seed).exponential(1 / rate, n - 1), rate))
        else:
            starts = ClosedLoop(params["concurrency"])
        return SessionTiming(starts, params["turns"], params["think_time_s"], params["keep_thinking"])

    @classmethod
    def cell_name(cls, params: dict) -> str:
        start = (
            f"r{params['session_rate']}"
            if params.get("session_rate")
            else f"c{params.get('concurrency', CONCURRENCY.default)}"
        )
        keep = "-keepthink" if params.get("keep_thinking") else ""
        return (
            f"sessions{params.get('turns', TURNS.default)}-{start}-think{params.get('think_time_s', THINK_TIME.default)}"
            f"{keep}"
        )
