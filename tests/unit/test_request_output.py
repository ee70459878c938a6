"""RequestOutput's stop strings (backends/rllm_study/backends/output.py), against the plain rule
on random texts: the output is cut where the first stop string begins, wherever the pieces split it."""

from __future__ import annotations

import random

from rllm_study.backends.base import FINISH_STOP, Request, SamplingParams
from rllm_study.backends.output import RequestOutput
from rllm_study.backends.phases import PhaseTracker


def reference(pieces: list[str], stops: list[str]) -> tuple[str, int | None]:
    """The text kept and the index of the piece that ends the request (None: none does): the
    first piece after which the text holds a stop string; the text cut at its earliest start."""
    text = ""
    for i, piece in enumerate(pieces):
        text += piece
        starts = [text.find(s) for s in stops if s in text]
        if starts:
            return text[: min(starts)], i
    return text, None


def test_stop_strings_cut_where_they_begin_across_pieces():
    rng = random.Random(7)
    checked = stopped = 0
    for _ in range(400):
        pieces = ["".join(rng.choice("ab c\n") for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(1, 30))]
        stops = ["".join(rng.choice("ab c\n") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 3))]
        out = RequestOutput(Request("r", "p", SamplingParams(1000, stop=stops)), 3, PhaseTracker(False, None, None))
        want_text, want_at = reference(pieces, stops)
        at = None
        for i, piece in enumerate(pieces):
            if out.add(i, piece, 0, False)[1] == FINISH_STOP:
                at = i
                break
        assert (out.text, at) == (want_text, want_at), (pieces, stops)
        assert out.finished(FINISH_STOP if at is not None else "length", 0, tail="zz").output_text == (
            want_text if at is not None else want_text + "zz"
        )
        checked += 1
        stopped += at is not None
    assert checked == 400 and 100 < stopped < 400  # both outcomes are exercised
