"""Drafters for speculative decoding in the llama.cpp engine.

A drafter proposes up to k next tokens for each decoding sequence; the engine feeds every
sequence's last token plus its draft in one batched target decode and keeps the longest prefix
the target's own sampler agrees with (see `LlamaCppEngine._emit`). Two drafters:
  ngram   prompt lookup: the last n tokens of prompt + output (n in NGRAM_SIZES, longest first)
          are looked up earlier in the same history, and the tokens that followed their most
          recent earlier occurrence are proposed. Costs no model call.
  draft   a smaller model with the same vocabulary, in its own llama.cpp context with one
          sequence per target sequence (same ids). Each step it catches up on the tokens the
          target accepted since last time (the whole prompt on the first step), then drafts k
          tokens greedily, one batched decode per draft position for all sequences.
Each drafter keeps its per-sequence state in `seq.spec_state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import llama_cpp as lc
import numpy as np

NGRAM_SIZES = (3, 2)  # lookup n-gram lengths, tried longest first (prompt lookup decoding uses 1-3)


def history_from(seq, start: int) -> list[int]:
    """prompt + output of a sequence from index `start` on."""
    n_prompt = len(seq.prompt)
    return (seq.prompt[start:] if start < n_prompt else []) + seq.out.fed_tokens()[max(0, start - n_prompt) :]


class NgramIndex:
    """A token history and, for each n-gram in it, where the token after its latest occurrence is."""

    __slots__ = ("tokens", "follower")

    def __init__(self):
        self.tokens: list[int] = []
        self.follower: dict[tuple, int] = {}

    def extend(self, new: list[int]) -> None:
        for token in new:
            i = len(self.tokens)
            for n in NGRAM_SIZES:
                if i >= n:
                    self.follower[tuple(self.tokens[i - n : i])] = i
            self.tokens.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the current suffix."""
        for n in NGRAM_SIZES:
            if len(self.tokens) > n:
                pos = self.follower.get(tuple(self.tokens[-n:]))
                if pos is not None:
                    return self.tokens[pos : pos + k]
        return []


class NgramDrafter:
    method = "ngram"

    def propose(self, work: list[tuple]) -> dict[int, list[int]]:
        """work: (sequence, k) pairs; returns seq_id -> draft (sequences without a match left out)."""
        drafts = {}
        for seq, k in work:
            if seq.spec_state is None:
                seq.spec_state = NgramIndex()
            index = seq.spec_state
            index.extend(history_from(seq, len(index.tokens)))
            draft = index.propose(k)
            if draft:
                drafts[seq.seq_id] = draft
        return drafts

    def release(self, seq) -> None:
        seq.spec_state = None

    def move(self, seq, new_id: int) -> None:
        """The target moved `seq` to sequence id `new_id`; the n-gram index is not tied to ids."""

    def info(self) -> dict:
        return {"method": self.method, "ngram_sizes": list(NGRAM_SIZES)}

    def close(self) -> None:
        pass


@dataclass
class _DraftKV:
    """What a sequence holds in the draft context: history[:hist_len] + extra (drafts fed)."""

    hist_len: int = 0
    extra: list[int] = field(default_factory=list)


class ModelDrafter:
    """Drafts with a second model (see the module docstring). `model` is a loaded LlamaModel,
    `ctx` a context on it with at least as many sequences and cells per sequence as the target."""

    method = "draft"

    def __init__(self, model, ctx, n_batch: int, ref_name: str):
        self.model, self.ctx, self.ref_name = model, ctx, ref_name
        self.mem = lc.llama_get_memory(ctx)
        self.n_batch = n_batch
        self.batch = lc.llama_batch_init(n_batch, 0, 1)

    def _sync(self, seq) -> list[int]:
        """Drop draft KV past what the target accepted; return the history tokens to feed."""
        kv = seq.spec_state or _DraftKV()
        seq.spec_state = kv
        new = history_from(seq, kv.hist_len)
        keep = 0
        while keep < min(len(kv.extra), len(new)) and kv.extra[keep] == new[keep]:
            keep += 1
        if keep < len(kv.extra):
            lc.llama_memory_seq_rm(self.mem, seq.seq_id, kv.hist_len + keep, -1)
        kv.hist_len += keep
        kv.extra = []
        return new[keep:]

    def _decode(self, items: list[tuple]) -> bool:
        """items: (seq, tokens, position of the first); logits on each item's last token."""
        b, n = self.batch, 0
        for seq, tokens, pos in items:
            for j, tok in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, pos + j, 1, 0
                b.seq_id[n][0] = seq.seq_id
                n += 1
            b.logits[n - 1] = 1
        b.n_tokens = n
        return lc.llama_decode(self.ctx, b) == 0

    def _argmax(self, index: int) -> int:
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, index), shape=(self.model.n_vocab,))
        return int(logits.argmax())

    def propose(self, work: list[tuple]) -> dict[int, list[int]]:
        """work: (sequence, k) pairs; returns seq_id -> k greedy draft tokens."""
        feed = {seq.seq_id: self._sync(seq) for seq, _ in work}
        drafts: dict[int, list[int]] = {seq.seq_id: [] for seq, _ in work}
        # Catch up in chunks of n_batch tokens; a sequence's first draft token comes from the
        # logits of its last history token.
        pending = [seq for seq, _ in work]
        while pending:
            items, room, done = [], self.n_batch, []
            for seq in pending:
                if room <= 0:
                    break
                tokens = feed[seq.seq_id]
                take = tokens[:room]
                items.append((seq, take, seq.spec_state.hist_len))
                room -= len(take)
                if len(take) == len(tokens):
                    done.append(len(items) - 1)
            if not self._decode(items):
                return self._fail(work)
            out = -1
            for i, (seq, take, _) in enumerate(items):
                out += len(take)
                seq.spec_state.hist_len += len(take)
                feed[seq.seq_id] = feed[seq.seq_id][len(take) :]
                if i in done:
                    drafts[seq.seq_id].append(self._argmax(out))
            pending = [seq for seq in pending if not drafts[seq.seq_id]]
        # One batched decode per further draft position.
        while True:
            growing = [(seq, k) for seq, k in work if len(drafts[seq.seq_id]) < k]
            if not growing:
                break
            items = [
                (seq, [drafts[seq.seq_id][-1]], seq.spec_state.hist_len + len(seq.spec_state.extra))
                for seq, _ in growing
            ]
            if not self._decode(items):
                return self._fail(work)
            for i, (seq, _) in enumerate(growing):
                seq.spec_state.extra.append(drafts[seq.seq_id][-1])
                drafts[seq.seq_id].append(self._argmax(i))
        return drafts

    def _fail(self, work) -> dict:
        """A draft decode failed (no room in the draft cache): draft nothing this step."""
        for seq, _ in work:
            self.release(seq)
        return {}

    def release(self, seq) -> None:
        if seq.spec_state is not None:
            lc.llama_memory_seq_rm(self.mem, seq.seq_id, -1, -1)
            seq.spec_state = None

    def move(self, seq, new_id: int) -> None:
        """The target moved `seq` to sequence id `new_id` (before updating seq.seq_id): move its
        draft KV the same way (see LlamaCppEngine._compact_ids)."""
        if seq.spec_state is not None:
            lc.llama_memory_seq_cp(self.mem, seq.seq_id, new_id, -1, -1)
            lc.llama_memory_seq_rm(self.mem, seq.seq_id, -1, -1)

    def info(self) -> dict:
        return {"method": self.method, "draft_model": self.ref_name, "draft_facts": self.model.facts()}

    def close(self) -> None:
        if self.ctx:
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
            self.ctx = None
        self.model.close()
