"""One decode step's batch (`Batch`): which tokens of which requests go into one `llama_decode`.

`Batch.fill(running, drafts)` writes llama.cpp's batch and returns one `Entry` per request fed.
The rules:
  - requests with one token to feed (decoding ones, with their draft tokens, logits on each;
    and any whose prompt has one token left) are served first and always fit (the engine
    proposes drafts only within the room: `LlamaCppEngine._propose_drafts`);
  - the room left (n_batch tokens in all) goes to the chunks of requests with several tokens to
    feed (prefilling a prompt, or feeding a forced think close or a recompute), in the engine's
    order (admission order), each as much as fits;
  - a request whose last pending token is in the batch gets logits there (its `out` index);
    a chunk that stops short of it gets none; `rows` maps each batch index with logits on to
    its row of the step's logits (their rank in batch order: llama_get_logits' layout);
  - tokens are written in sequence-id order: with a split KV cache llama.cpp cuts a batch into
    micro-batches of consecutive, increasing sequence ids (llama_batch_allocr::split_equal), so
    another order costs extra micro-batches, up to one per sequence (docs/engines.md: what that
    costs). The engine keeps the ids in use consecutive (admission takes the lowest free id,
    its `_compact_ids` closes the holes).
"""

from __future__ import annotations

from typing import NamedTuple

import llama_cpp as lc

from rllm_study.backends.llama_cpp.request import RequestState


class Entry(NamedTuple):
    """A request in the batch: `fed` of its pending tokens, the batch index `out` of the logits
    its next token is drawn from (-1: none, a chunk short of its last pending token), and the
    draft tokens fed after them (logits on each)."""

    seq: RequestState
    fed: int
    out: int
    draft: list[int]


class Batch:
    """llama.cpp's batch of up to n_batch tokens (one sequence id per token), filled per step."""

    def __init__(self, n_batch: int):
        self.n_batch = n_batch
        self.raw = lc.llama_batch_init(n_batch, 0, 1)
        self.rows: dict[int, int] = {}  # batch index with logits on -> its row in llama_get_logits

    @property
    def n_tokens(self) -> int:
        return self.raw.n_tokens

    def fill(self, running: list[RequestState], drafts: dict[int, list[int]]) -> list[Entry]:
        """Fill the batch from the requests holding slots (admission order) and their drafts
        (seq_id -> draft tokens); returns the entries in sequence-id order (see the module docstring)."""
        chosen = []
        room = self.n_batch
        single = [s for s in running if len(s.pending) == 1]
        several = [s for s in running if len(s.pending) > 1]
        for seq in single + several:
            if room <= 0:
                break
            draft = drafts.get(seq.seq_id, [])
            take = seq.pending + draft if draft else seq.pending[:room]
            room -= len(take)
            chosen.append((seq, take, draft))
        b = self.raw
        n = 0
        entries = []
        outputs = []  # batch indices with logits on, ascending
        for seq, take, draft in sorted(chosen, key=lambda c: c[0].seq_id):
            for j, tok in enumerate(take):
                b.token[n] = tok
                b.pos[n] = seq.n_past + j
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq.seq_id
                on = bool(draft) and j >= len(seq.pending) - 1
                b.logits[n] = on
                if on:
                    outputs.append(n)
                n += 1
            out = -1
            fed = len(take) - len(draft)
            if fed == len(seq.pending):
                out = n - 1 - len(draft)
                if not draft:
                    b.logits[n - 1] = 1
                    outputs.append(n - 1)
            entries.append(Entry(seq, fed, out, draft))
        b.n_tokens = n
        # llama.cpp keeps the logits of the tokens with logits on contiguously, in batch order
        # (llama_get_logits), so a batch index's row is its rank among them.
        self.rows = {index: row for row, index in enumerate(outputs)}
        return entries

    def close(self) -> None:
        if self.raw is not None:
            lc.llama_batch_free(self.raw)
            self.raw = None
