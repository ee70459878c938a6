"""The "ngram" drafter: prompt lookup. The last n tokens of prompt + output (n in NGRAM_SIZES,
longest first) are looked up earlier in the same history, and the tokens that followed their
most recent earlier occurrence are proposed. Costs no model call."""

from __future__ import annotations

from rllm_study.backends.llama_cpp.drafters import history_from

NGRAM_SIZES = (3, 2)  # lookup n-gram lengths, tried longest first (prompt lookup decoding uses 1-3)


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

    @classmethod
    def open(cls, spec, target, target_name, options, new_context) -> NgramDrafter:
        return cls()

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
