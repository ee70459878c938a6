"""The llama.cpp engine's parts on their own, without a model: a request's phases and their
transitions (`llama_cpp/request.py`) and one step's batch (`llama_cpp/batch.py`). The engine
that drives them is tested token for token on real models in test_llama_engine.py,
test_techniques.py, test_think_budget.py and test_sampling.py."""

from __future__ import annotations

import pytest

from rllm_study.backends.base import Request, SamplingParams
from rllm_study.backends.llama_cpp.batch import Batch, Entry
from rllm_study.backends.llama_cpp.request import Phase, PhaseError, RequestState
from rllm_study.backends.phases import PhaseTracker


def state(rid: str, prompt: list[int], max_tokens: int = 8) -> RequestState:
    return RequestState(Request(rid, "p", SamplingParams(max_tokens=max_tokens)), prompt, PhaseTracker(False))


def drew(seq: RequestState, token: int, pending: list[int] | None = None) -> None:
    """What the engine does after a draw that does not end the request."""
    seq.out.add(token, "x", 0, False)
    seq.drew(pending if pending is not None else [token])


# -- the state machine --------------------------------------------------------------------------


def test_a_request_goes_queued_prefilling_decoding_finished():
    seq = state("a", [1, 2, 3, 4, 5])
    assert seq.phase is Phase.QUEUED and not seq.holds_slot
    seq.admit(0)
    assert (seq.phase, seq.seq_id, seq.holds_slot) == (Phase.PREFILLING, 0, True)
    seq.fed(3)  # a chunk: still prefilling, whatever is left
    assert (seq.phase, seq.n_past, seq.pending) == (Phase.PREFILLING, 3, [4, 5])
    seq.fed(1)
    assert seq.phase is Phase.PREFILLING  # one prompt token left is still prefilling (no token drawn yet)
    seq.fed(1)
    assert seq.phase is Phase.PREFILLING and seq.pending == []  # the draw that follows decides
    drew(seq, 9)
    assert (seq.phase, seq.pending, seq.n_past) == (Phase.DECODING, [9], 5)
    seq.fed(1)
    drew(seq, 10)
    assert (seq.phase, seq.n_past) == (Phase.DECODING, 6)
    seq.finish()
    assert seq.phase is Phase.FINISHED and not seq.holds_slot


def test_a_prefix_hit_feeds_only_the_rest_of_the_prompt():
    seq = state("p", list(range(10)))
    seq.admit(2)
    seq.restored(7)
    assert (seq.phase, seq.n_past, seq.pending, seq.out.cached_tokens) == (Phase.PREFILLING, 7, [7, 8, 9], 7)
    seq.fed(3)
    drew(seq, 1)
    with pytest.raises(PhaseError, match="cannot restore a prefix in phase DECODING"):
        seq.restored(1)


def test_a_forced_think_close_is_fed_then_decoding_resumes():
    seq = state("t", [1, 2])
    seq.admit(0)
    seq.fed(2)
    drew(seq, 5, pending=[5, 90, 91, 92])  # the drawn token, then </think> + answer cue
    assert seq.phase is Phase.FEEDING
    seq.fed(2)  # a chunk of it
    assert (seq.phase, seq.pending) == (Phase.FEEDING, [91, 92])
    seq.fed(1)  # one token left: fed like a decoding request's (drafts may follow it)
    assert seq.phase is Phase.DECODING
    seq.fed(1)
    drew(seq, 6)
    assert (seq.phase, seq.n_past) == (Phase.DECODING, 6)


def test_preemption_recomputes_prompt_and_output_and_keeps_the_phase_history():
    seq = state("r", [1, 2, 3])
    seq.admit(1)
    seq.fed(3)
    drew(seq, 7)
    seq.fed(1)
    drew(seq, 8)
    seq.preempt()
    assert (seq.phase, seq.n_past, seq.pending, seq.holds_slot) == (Phase.PREEMPTED, 0, [1, 2, 3, 7, 8], False)
    seq.admit(0)
    assert (seq.phase, seq.seq_id) == (Phase.FEEDING, 0)  # it has drawn tokens: no second prefill
    early = state("e", [1, 2, 3])
    early.admit(0)
    early.fed(2)
    early.preempt()
    early.admit(3)
    assert (early.phase, early.pending) == (Phase.PREFILLING, [1, 2, 3])


@pytest.mark.parametrize(
    "phase, call",
    [
        (Phase.QUEUED, lambda s: s.fed(1)),
        (Phase.QUEUED, lambda s: s.preempt()),
        (Phase.PREFILLING, lambda s: s.admit(1)),
        (Phase.FINISHED, lambda s: s.finish()),
        (Phase.PREEMPTED, lambda s: s.drew([1])),
    ],
)
def test_transitions_a_phase_does_not_allow_are_refused(phase, call):
    seq = state("x", [1, 2])
    seq.phase = phase
    with pytest.raises(PhaseError, match=f"in phase {phase.name}"):
        call(seq)


# -- the batch ----------------------------------------------------------------------------------


def running(*specs) -> list[RequestState]:
    """RequestStates holding slots, from (seq_id, prompt, drawn token or None): with a token,
    the prompt is in the KV cache and the request is DECODING that token."""
    out = []
    for seq_id, prompt, token in specs:
        seq = state(f"s{seq_id}", prompt)
        seq.admit(seq_id)
        if token is not None:
            seq.fed(len(prompt))
            drew(seq, token)
        out.append(seq)
    return out


def batch_rows(batch: Batch) -> list[tuple[int, int, int, int]]:
    b = batch.raw
    return [(b.token[i], b.pos[i], b.seq_id[i][0], b.logits[i]) for i in range(b.n_tokens)]


def test_decoding_requests_first_then_chunks_in_the_room_left_written_in_id_order():
    batch = Batch(8)
    try:
        prefill_a, decode, prefill_b = running(
            (2, [10, 11, 12, 13, 14, 15], None), (0, [1, 2], 50), (1, [20, 21, 22, 23], None)
        )
        entries = batch.fill([prefill_a, decode, prefill_b], {})
        # decode (1 token) first; then prefill_a (admitted first) takes 6 of the 7 left, prefill_b 1.
        assert entries == [Entry(decode, 1, 0, []), Entry(prefill_b, 1, -1, []), Entry(prefill_a, 6, 7, [])]
        assert batch_rows(batch) == [
            (50, 2, 0, 1),
            (20, 0, 1, 0),
            (10, 0, 2, 0),
            (11, 1, 2, 0),
            (12, 2, 2, 0),
            (13, 3, 2, 0),
            (14, 4, 2, 0),
            (15, 5, 2, 1),
        ]
        assert batch.n_tokens == 8
    finally:
        batch.close()


def test_drafts_follow_their_token_with_logits_on_each_and_chunks_take_the_rest():
    batch = Batch(6)
    try:
        a, b, c = running((0, [1, 2], 7), (1, [3], 8), (2, [4, 5, 6, 7, 8], None))
        entries = batch.fill([a, b, c], {0: [30, 31], 1: [40]})
        assert entries == [Entry(a, 1, 0, [30, 31]), Entry(b, 1, 3, [40]), Entry(c, 1, -1, [])]
        assert batch_rows(batch) == [
            (7, 2, 0, 1),
            (30, 3, 0, 1),
            (31, 4, 0, 1),
            (8, 1, 1, 1),
            (40, 2, 1, 1),
            (4, 0, 2, 0),
        ]
    finally:
        batch.close()


def test_a_prompt_with_one_token_left_is_served_with_the_decoding_ones():
    batch = Batch(2)
    try:
        long, last = running((0, [1, 2, 3], None), (1, [9], None))
        entries = batch.fill([long, last], {})
        assert entries == [Entry(long, 1, -1, []), Entry(last, 1, 1, [])]
    finally:
        batch.close()
