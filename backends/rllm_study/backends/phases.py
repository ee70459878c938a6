"""Think/answer phase of each generated token.

A reasoning model writes hidden thinking inside `<think>...</think>` and then the visible
answer. The phase of a token is the one in force when it was generated; the token that
closes the think block (`</think>`) still counts as think, and one that opens it counts as
think. Where the tokenizer has `<think>`/`</think>` as single special tokens (R1-Distill,
QwQ, Qwen3) the ids decide; otherwise the decoded text is searched for the markers.
"""

from __future__ import annotations

from rllm_study.backends.base import ANSWER, THINK

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class PhaseTracker:
    """Feed tokens in order; `feed` returns each token's phase."""

    __slots__ = ("phase", "_open_id", "_close_id", "_tail")

    def __init__(self, starts_in_think: bool, think_open_id: int | None = None, think_close_id: int | None = None):
        self.phase = THINK if starts_in_think else ANSWER
        self._open_id = think_open_id
        self._close_id = think_close_id
        self._tail = ""

    def feed(self, token_id: int, piece: str) -> str:
        if self._close_id is not None and token_id in (self._open_id, self._close_id):
            self.phase = ANSWER if token_id == self._close_id else THINK
            return THINK
        text = self._tail + piece
        self._tail = text[-(len(THINK_CLOSE) - 1) :]
        if self.phase == THINK:
            if THINK_CLOSE in text:
                self.phase = ANSWER
                return THINK
            return THINK
        if THINK_OPEN in text and THINK_CLOSE not in text[text.rfind(THINK_OPEN) :]:
            self.phase = THINK
            return THINK
        return ANSWER

    def close(self) -> None:
        """The engine closed the think block itself (a forced `</think>`): answer from here on."""
        self.phase = ANSWER
        self._tail = ""


def forced_close(tokenize, think_close_id: int | None, cue: str) -> tuple[list[int], str]:
    """The tokens and text an engine feeds to close a think block: `</think>` then `cue`.

    `</think>` is the single token `think_close_id` where the vocabulary has one (real reasoning
    models), else the tokens of its text; `tokenize(text)` must add no BOS."""
    if think_close_id is not None:
        return [think_close_id] + (tokenize(cue) if cue else []), THINK_CLOSE + cue
    return tokenize(THINK_CLOSE + cue), THINK_CLOSE + cue


def answer_text(output_text: str, starts_in_think: bool) -> str:
    """The visible answer: the text after the last `</think>`.

    With no `</think>`: empty if the output began inside a think block (truncated thinking has
    no answer), else the whole text (a direct answer).
    """
    cut = output_text.rfind(THINK_CLOSE)
    if cut >= 0:
        return output_text[cut + len(THINK_CLOSE) :]
    if starts_in_think or THINK_OPEN in output_text:
        return ""
    return output_text
