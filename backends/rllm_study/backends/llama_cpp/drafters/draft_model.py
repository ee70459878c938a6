"""The "draft" drafter: a smaller model with the same vocabulary, in its own llama.cpp context
with one sequence per target sequence (same ids). Each step it catches up on the tokens the
target accepted since last time (the whole prompt on the first step), then drafts k tokens
greedily, one batched decode per draft position for all sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import llama_cpp as lc
import numpy as np

from rllm_study.backends.llama_cpp.drafters import history_from
from rllm_study.backends.llama_cpp.model import LlamaModel
from rllm_study.errors import UserError


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

    @classmethod
    def open(cls, spec, target, target_name, options, new_context) -> ModelDrafter:
        """Load spec.draft_model (on the target's GPU layers, weight repacking off in batch-invariant
        mode), check it shares the target's vocabulary, and give it a context like the target's."""
        from rllm_study.models import resolve_model

        ref = spec.draft_model
        model = LlamaModel(resolve_model(ref).path, options.n_gpu_layers, not options.batch_invariant)
        try:
            if not model.same_vocab(target):
                raise UserError(
                    f"speculative draft:{ref}: its vocabulary ({model.n_vocab} tokens) differs from "
                    f"{target_name}'s ({target.n_vocab} tokens); a draft model must share the target's tokenizer exactly "
                    "(e.g. qwen2.5-coder-0.5b drafting for qwen2.5-coder-1.5b)"
                )
            return cls(model, new_context(model), options.n_batch, ref)
        except UserError:
            model.close()
            raise

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
