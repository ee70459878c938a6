"""A request's output as a step-driven engine produces it, and the events that report it.

An engine feeds every sampled token (with its decoded text piece) to `RequestOutput.add`,
which keeps the token ids, the visible text, the think/answer counts (via PhaseTracker),
applies the stop strings and the token budget, and returns the TokenEvent plus the finish
reason when the request ends on that token:
  - an end-of-generation token is counted and reported (piece ""), and ends it: `stop`;
  - a stop string ends it: `stop`; the text is cut where the first stop string begins;
  - `max_tokens` output tokens end it: `length`.
`finished` builds the RequestFinished event.
"""

from __future__ import annotations

from rllm_study.backends.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    THINK,
    Request,
    RequestFinished,
    TokenEvent,
)
from rllm_study.backends.phases import PhaseTracker
from rllm_study.backends.sampling import ORDERS
from rllm_study.errors import UserError


def check_sampling(request: Request) -> None:
    """Raise UserError unless temperature >= 0, 0 < top_p <= 1, max_tokens >= 1, top_k >= 0 and
    order is one of sampling.ORDERS."""
    s = request.sampling
    if s.temperature < 0 or not 0 < s.top_p <= 1 or s.max_tokens < 1 or s.top_k < 0 or s.order not in ORDERS:
        raise UserError(
            f"request {request.id}: invalid sampling (temperature >= 0, 0 < top_p <= 1, max_tokens >= 1, top_k >= 0, "
            f"order one of {', '.join(ORDERS)} required)"
        )


class RequestOutput:
    """Output so far of one request (see the module docstring)."""

    __slots__ = ("request", "prompt_tokens", "tokens", "text", "phases", "think_tokens", "answer_tokens",
                 "cached_tokens", "draft_proposed", "draft_accepted", "_max_stop", "_cut")

    def __init__(self, request: Request, prompt_tokens: int, phases: PhaseTracker):
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.tokens: list[int] = []
        self.text = ""
        self.phases = phases
        self.think_tokens = 0
        self.answer_tokens = 0
        self.cached_tokens = 0
        self.draft_proposed = 0
        self.draft_accepted = 0
        self._max_stop = max((len(s) for s in request.sampling.stop), default=0)
        self._cut = False  # the text ends at a stop string: nothing may follow it

    def add(self, token: int, piece: str, t_ns: int, end_of_generation: bool,
            draft: bool = False) -> tuple[TokenEvent, str | None]:
        """Record one token; returns its event and `stop`/`length` if the request ends here, else None."""
        self.tokens.append(token)
        phase = self.phases.feed(token, piece)
        if phase == THINK:
            self.think_tokens += 1
        else:
            self.answer_tokens += 1
        if draft:
            self.draft_accepted += 1
        event = TokenEvent(self.request.id, t_ns, token, piece, phase, draft=draft)
        if end_of_generation:
            return event, FINISH_STOP
        self.text += piece
        if self._max_stop:
            window = self.text[-(self._max_stop + len(piece)):]
            hits = [window.find(s) for s in self.request.sampling.stop if s in window]
            if hits:
                self.text = self.text[: len(self.text) - len(window) + min(hits)]
                self._cut = True
                return event, FINISH_STOP
        if len(self.tokens) >= self.request.sampling.max_tokens:
            return event, FINISH_LENGTH
        return event, None

    def finished(self, reason: str, t_ns: int, tail: str = "", error: str | None = None) -> RequestFinished:
        """The finish event; `tail` is text still held by an incremental decoder (dropped after a stop string)."""
        return RequestFinished(
            request_id=self.request.id, t_ns=t_ns, reason=reason, output_text=self.text if self._cut else self.text + tail,
            prompt_tokens=self.prompt_tokens, output_tokens=len(self.tokens), think_tokens=self.think_tokens,
            answer_tokens=self.answer_tokens, cached_tokens=self.cached_tokens,
            draft_proposed=self.draft_proposed, draft_accepted=self.draft_accepted, error=error,
        )
