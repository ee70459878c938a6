"""A request's output as a step-driven engine produces it, and the events that report it.

An engine feeds every sampled token (with its decoded text piece) to `RequestOutput.add`,
which keeps the token ids, the visible text, the think/answer counts (via PhaseTracker),
applies the stop strings and the token budget, and returns the TokenEvent plus the finish
reason when the request ends on that token:
  - an end-of-generation token is counted and reported (piece ""), and ends it: `stop`;
  - a stop string ends it: `stop`; the text is cut where the first stop string begins;
  - `max_tokens` output tokens end it: `length`.
`finished` builds the RequestFinished event.

Think budget (sampling.think_budget = N, the one home of this rule for every step-driven
engine). While the request is still in its think phase, `add` returns CLOSE_THINK instead of
going on when
  - N think tokens have been generated (the N-th think token is kept and fed), or
  - the model ends (an end-of-generation token) while thinking: that token is kept as a think
    output token (it was sampled, at a measured time) but never fed to the model,
provided the request still has output budget left (else it ends as above: `length` / `stop`).
The engine then calls `close_thinking`, which returns the tokens to feed next: `</think>` (one
token by id where the vocabulary has it, else its text's tokens) and the request's
`answer_cue`, and appends that text to the output. The forced tokens are prompt-side: fed in one
batch like a prompt chunk, never sampled, with no TokenEvent, not counted in output_tokens nor
against max_tokens (RequestFinished.forced_tokens counts them); what follows is answer phase,
within the rest of max_tokens. A request is closed at most once; think_forced records it.
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
from rllm_study.backends.phases import PhaseTracker, forced_close
from rllm_study.backends.sampling import ORDERS
from rllm_study.errors import UserError

CLOSE_THINK = "close_think"  # not a finish reason: the engine must close the thinking (see above)


def check_sampling(request: Request) -> None:
    """Raise UserError unless temperature >= 0, 0 < top_p <= 1, max_tokens >= 1, top_k >= 0, order
    is one of sampling.ORDERS and think_budget is None or >= 1."""
    s = request.sampling
    if (
        s.temperature < 0
        or not 0 < s.top_p <= 1
        or s.max_tokens < 1
        or s.top_k < 0
        or s.order not in ORDERS
        or (s.think_budget is not None and s.think_budget < 1)
    ):
        raise UserError(
            f"request {request.id}: invalid sampling (temperature >= 0, 0 < top_p <= 1, max_tokens >= 1, top_k >= 0, "
            f"order one of {', '.join(ORDERS)}, think_budget >= 1 required)"
        )


class RequestOutput:
    """Output so far of one request (see the module docstring)."""

    __slots__ = (
        "request",
        "prompt_tokens",
        "tokens",
        "phases",
        "think_tokens",
        "answer_tokens",
        "cached_tokens",
        "draft_proposed",
        "draft_accepted",
        "_max_stop",
        "_parts",
        "_tail",
        "_cut",
        "forced",
        "_forced_at",
        "_forced_skip",
        "_ended",
    )

    def __init__(self, request: Request, prompt_tokens: int, phases: PhaseTracker):
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.tokens: list[int] = []
        self._parts: list[str] = []  # the visible text in pieces, joined by `text` (appending stays O(piece))
        self._tail = ""  # the text's last _max_stop characters: where a stop string may begin
        self.phases = phases
        self.think_tokens = 0
        self.answer_tokens = 0
        self.cached_tokens = 0
        self.draft_proposed = 0
        self.draft_accepted = 0
        self._max_stop = max((len(s) for s in request.sampling.stop), default=0)
        self._cut = False  # the text ends at a stop string: nothing may follow it
        self.forced: list[int] = []  # tokens fed to close the thinking (see "Think budget")
        self._forced_at = 0  # sampled tokens fed before them
        self._forced_skip = 0  # 1 when they replace an end-of-generation token
        self._ended = False  # the last token was end-of-generation

    def add(
        self, token: int, piece: str, t_ns: int, end_of_generation: bool, draft: bool = False
    ) -> tuple[TokenEvent, str | None]:
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
        self._ended = end_of_generation
        room = len(self.tokens) < self.request.sampling.max_tokens
        if end_of_generation:
            return event, CLOSE_THINK if room and self._may_close() else FINISH_STOP
        self._parts.append(piece)
        if self._max_stop:
            window = self._tail + piece  # the text's last _max_stop + len(piece) characters
            hits = [window.find(s) for s in self.request.sampling.stop if s in window]
            if hits:
                text = self.text
                self._parts = [text[: len(text) - len(window) + min(hits)]]
                self._cut = True
                return event, FINISH_STOP
            self._tail = window[-self._max_stop :]
        if not room:
            return event, FINISH_LENGTH
        if self._may_close() and self.think_tokens >= self.request.sampling.think_budget:
            return event, CLOSE_THINK
        return event, None

    @property
    def text(self) -> str:
        """The visible text so far (cut where a stop string begins)."""
        return "".join(self._parts)

    def _may_close(self) -> bool:
        return self.request.sampling.think_budget is not None and not self.forced and self.phases.phase == THINK

    def close_thinking(self, tokenize, think_close_id: int | None, tail: str = "") -> list[int]:
        """After CLOSE_THINK: record the forced close and return the tokens to feed next (the
        last sampled token first, unless it was end-of-generation). `tokenize(text)` gives
        token ids without BOS; `tail` is text an incremental decoder still held."""
        self.forced, text = forced_close(tokenize, think_close_id, self.request.answer_cue)
        self._forced_skip = int(self._ended)
        self._forced_at = len(self.tokens) - self._forced_skip
        self._parts.append(tail + text)
        if self._max_stop:
            self._tail = (self._tail + tail + text)[-self._max_stop :]
        self.phases.close()
        return ([] if self._forced_skip else self.tokens[-1:]) + self.forced

    def fed_tokens(self) -> list[int]:
        """The tokens after the prompt as the model has seen them: sampled and forced, in order."""
        if not self.forced:
            return self.tokens
        return self.tokens[: self._forced_at] + self.forced + self.tokens[self._forced_at + self._forced_skip :]

    def finished(self, reason: str, t_ns: int, tail: str = "", error: str | None = None) -> RequestFinished:
        """The finish event; `tail` is text still held by an incremental decoder (dropped after a stop string)."""
        return RequestFinished(
            request_id=self.request.id,
            t_ns=t_ns,
            reason=reason,
            output_text=self.text if self._cut else self.text + tail,
            prompt_tokens=self.prompt_tokens,
            output_tokens=len(self.tokens),
            think_tokens=self.think_tokens,
            answer_tokens=self.answer_tokens,
            cached_tokens=self.cached_tokens,
            draft_proposed=self.draft_proposed,
            draft_accepted=self.draft_accepted,
            error=error,
            think_forced=bool(self.forced),
            forced_tokens=len(self.forced),
        )
