"""Prefix caching for the llama.cpp engine: host-memory copies of prompt KV, reused by prefix.

After a prompt is prefilled, its sequence's KV is copied out of the context
(`llama_state_seq_get_data`, the per-sequence state: cell positions and K/V rows, no logits)
and kept under its prompt tokens. A new request looks for the cached prompt sharing the longest
token prefix with its own, copies that state into its sequence (`llama_state_seq_set_data`),
drops the cells past the match (`llama_memory_seq_rm`) and prefills only the rest. Works with
split and unified caches: the state names cells by position, not by slot.

Entries are evicted least recently used (a save or a hit is a use) while the tokens they hold
exceed the budget; a prompt already covered by an entry is not saved again, and entries that
are prefixes of a newly saved prompt are dropped (the new one serves them too). With a draft
model (speculative decoding) only the target's KV is cached; the draft context catches up on
the whole prompt itself (see `drafters`).
"""

from __future__ import annotations

import ctypes
import time
from collections import OrderedDict
from dataclasses import dataclass

import llama_cpp as lc
import numpy as np

# Matches shorter than this are recomputed instead (vLLM caches in 16-token blocks): too little
# to gain, and every prompt shares its first few tokens (BOS, the chat template's opening).
MIN_REUSE_TOKENS = 16


@dataclass
class _Entry:
    tokens: np.ndarray  # the prompt tokens whose KV `state` holds (int32)
    state: ctypes.Array  # llama_state_seq_get_data output (uint8)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class PrefixCache:
    """Cached prompt states of one llama.cpp context, LRU under `max_tokens` cached tokens.

    Counters: lookups (admissions looked up), hits (lookups that reused >= MIN_REUSE_TOKENS
    tokens), tokens_reused (sum of reused tokens), restore_s / save_s (wall time spent copying
    states in and out)."""

    def __init__(self, ctx, max_tokens: int):
        self.ctx = ctx
        self.mem = lc.llama_get_memory(ctx)
        self.max_tokens = max_tokens
        self.entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest first
        self._next_key = 0
        self.lookups = self.hits = self.tokens_reused = 0
        self.restore_s = self.save_s = 0.0

    @property
    def cached_tokens(self) -> int:
        return sum(len(e.tokens) for e in self.entries.values())

    @property
    def cached_bytes(self) -> int:
        return sum(ctypes.sizeof(e.state) for e in self.entries.values())

    def restore(self, prompt: list[int], seq_id: int) -> int:
        """Put the longest cached prefix of `prompt` into the (empty) sequence `seq_id`; returns
        the prompt tokens now in its KV (0 on a miss). At least the last prompt token is left to
        decode, so the request still gets logits."""
        self.lookups += 1
        tokens = np.asarray(prompt, dtype=np.int32)
        best_key, best = None, 0
        for key, entry in self.entries.items():
            n = common_prefix(entry.tokens, tokens)
            if n > best:
                best_key, best = key, n
        reuse = min(best, len(prompt) - 1)
        if reuse < MIN_REUSE_TOKENS:
            return 0
        t0 = time.perf_counter()
        state = self.entries[best_key].state
        ok = lc.llama_state_seq_set_data(self.ctx, state, ctypes.sizeof(state), seq_id)
        if ok:
            lc.llama_memory_seq_rm(self.mem, seq_id, reuse, -1)
        else:  # no room for the whole cached state (a full unified cache): recompute instead
            lc.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        self.restore_s += time.perf_counter() - t0
        if not ok:
            return 0
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.tokens_reused += reuse
        return reuse

    def save(self, prompt: list[int], seq_id: int) -> None:
        """Copy the KV of `seq_id`, which holds exactly `prompt`, into the cache."""
        if len(prompt) < MIN_REUSE_TOKENS or len(prompt) > self.max_tokens:
            return
        tokens = np.asarray(prompt, dtype=np.int32)
        for key, entry in list(self.entries.items()):
            n = common_prefix(entry.tokens, tokens)
            if n == len(tokens):  # an entry already holds this whole prompt
                self.entries.move_to_end(key)
                return
            if n == len(entry.tokens):  # the new prompt extends this entry: it replaces it
                del self.entries[key]
        t0 = time.perf_counter()
        size = lc.llama_state_seq_get_size(self.ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        written = lc.llama_state_seq_get_data(self.ctx, buf, size, seq_id)
        self.save_s += time.perf_counter() - t0
        if written != size:
            return
        self.entries[self._next_key] = _Entry(tokens, buf)
        self._next_key += 1
        while self.cached_tokens > self.max_tokens:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()
