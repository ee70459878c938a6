"""A request inside the llama.cpp engine (`RequestState`) and the phase it is in (`Phase`).

The phase is the request's state, named the way llama.cpp's server names its slot states
(`enum slot_state`), and changed only by the transition methods below; the engine and the batch
read it instead of inferring it from what the request holds. The phases and their transitions:

    QUEUED ---admit---> PREFILLING ---drew---> DECODING ---drew---> DECODING ...
                          (prompt)               |  ^
                                  drew, thinking |  | fed, one token left
                                  closed (think  v  | (or drew)
                                  budget)       FEEDING
    PREFILLING / DECODING / FEEDING ---preempt---> PREEMPTED ---admit---> PREFILLING or FEEDING
    any ---finish---> FINISHED

PREFILLING: the prompt (or what a prefix-cache hit left of it) is being fed in chunks; no token
drawn yet. DECODING: one token to feed, the last one drawn (speculative drafts may follow it).
FEEDING: a request that has drawn tokens has several to feed before its next draw: the forced
`</think>` + answer cue after a think budget closed the thinking, or prompt + output recomputed
after preemption. PREEMPTED (unified KV cache only): its KV was dropped and it waits, first in
the queue, to get a slot back. A request that holds a slot (PREFILLING, DECODING, FEEDING) has a
sequence id `seq_id` and `n_past` cells of KV.

Where its tokens are drawn (`Draw`, fixed at its first admission): on the host in numpy, through
its llama.cpp sampler chain on the host (a grammar request), or by its chain in the decode
graph (sample_on "device"; see the engine's module docstring).
"""

from __future__ import annotations

import codecs
import enum

from rllm_study.backends.base import Request
from rllm_study.backends.output import RequestOutput
from rllm_study.backends.phases import PhaseTracker
from rllm_study.backends.sampling import new_rng


class Phase(enum.Enum):
    QUEUED = "queued"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FEEDING = "feeding"
    PREEMPTED = "preempted"
    FINISHED = "finished"


SLOT_PHASES = frozenset({Phase.PREFILLING, Phase.DECODING, Phase.FEEDING})  # phases that hold a sequence slot
WAITING_PHASES = frozenset({Phase.QUEUED, Phase.PREEMPTED})  # phases in the engine's waiting queue


class Draw(enum.Enum):
    HOST = "host"  # numpy, `rllm_study.backends.sampling.draw_rows` over the step's rows
    CHAIN = "chain"  # its llama.cpp sampler chain on the host (a grammar request)
    DEVICE = "device"  # its chain registered for its sequence id, drawn in the decode graph


class PhaseError(RuntimeError):
    """A transition asked of a request in a phase that does not allow it (an engine bug)."""


class RequestState:
    """A request while the engine holds it: its phase (see the module docstring), its tokens to
    feed (`pending`), its KV cells (`n_past`), its output so far (`out`) and how it draws."""

    __slots__ = (
        "request",
        "phase",
        "seq_id",
        "prompt",
        "out",
        "pending",
        "n_past",
        "draw",
        "sampler",
        "bound",
        "utf8",
        "spec_state",
        "rng",
    )

    def __init__(self, request: Request, prompt: list[int], phases: PhaseTracker):
        self.request = request
        self.phase = Phase.QUEUED
        self.rng = new_rng(request.sampling.seed)  # draws of rllm_study.backends.sampling (Draw.HOST)
        self.seq_id = -1
        self.prompt = prompt
        self.out = RequestOutput(request, len(prompt), phases)  # tokens, text, counts, stop rules
        self.pending: list[int] = list(prompt)  # tokens to feed before the next draw
        self.n_past = 0  # cells this sequence holds in the KV cache
        self.draw = Draw.HOST
        self.sampler = None  # its llama.cpp sampler chain (make_sampler) for Draw.CHAIN and Draw.DEVICE
        self.bound = False  # the chain has been registered with the context once (see the engine's _bind_sampler)
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.spec_state = None  # the drafter's per-sequence state

    def __repr__(self) -> str:
        return f"RequestState({self.request.id!r}, {self.phase.name}, seq_id={self.seq_id}, n_past={self.n_past})"

    @property
    def holds_slot(self) -> bool:
        return self.phase in SLOT_PHASES

    def _expect(self, allowed: frozenset[Phase] | set[Phase], what: str) -> None:
        if self.phase not in allowed:
            raise PhaseError(f"request {self.request.id}: cannot {what} in phase {self.phase.name}")

    def _settle(self) -> None:
        """The phase of a request holding a slot, from what it has drawn and has to feed."""
        if not self.out.tokens:
            self.phase = Phase.PREFILLING
        else:
            self.phase = Phase.DECODING if len(self.pending) == 1 else Phase.FEEDING

    # -- transitions ------------------------------------------------------------------------
    def admit(self, seq_id: int) -> None:
        """QUEUED or PREEMPTED -> a slot phase, with sequence id `seq_id`."""
        self._expect(WAITING_PHASES, "admit")
        self.seq_id = seq_id
        self._settle()

    def restored(self, n_tokens: int) -> None:
        """A prefix-cache hit put the prompt's first `n_tokens` in its KV (PREFILLING only)."""
        self._expect({Phase.PREFILLING}, "restore a prefix")
        self.out.cached_tokens = self.n_past = n_tokens
        del self.pending[:n_tokens]

    def fed(self, n_tokens: int) -> None:
        """A decode took the first `n_tokens` pending tokens into its KV."""
        self._expect(SLOT_PHASES, "feed")
        self.n_past += n_tokens
        del self.pending[:n_tokens]
        if self.pending:
            self._settle()

    def drew(self, pending: list[int]) -> None:
        """It drew a token and goes on; `pending` is what to feed next (the token, or the forced
        think close after it)."""
        self._expect(SLOT_PHASES, "draw")
        self.pending = pending
        self._settle()

    def preempt(self) -> None:
        """Its KV was dropped: it waits to recompute prompt + output so far from scratch."""
        self._expect(SLOT_PHASES, "preempt")
        self.pending = self.prompt + self.out.fed_tokens()
        self.n_past = 0
        self.phase = Phase.PREEMPTED

    def finish(self) -> None:
        self._expect(set(Phase) - {Phase.FINISHED}, "finish")
        self.phase = Phase.FINISHED
