"""Drafters for speculative decoding in the llama.cpp engine, one module per method, each
registered by name in `rllm_study.backends.speculative` (the registry: one `register` line).

A drafter proposes up to k next tokens for each decoding sequence; the engine feeds every
sequence's last token plus its draft in one batched target decode and keeps the longest prefix
the target's own sampler agrees with (see `LlamaCppEngine._emit`). The protocol a drafter class
implements (`seq` is the engine's `RequestState`):
  open(spec, target, target_name, options, new_context)
                     classmethod: the drafter for a parsed `Speculative`, the target `LlamaModel`
                     and the name it was asked for, the engine's resolved `LlamaCppOptions`, and
                     `new_context(model)` (a llama.cpp context built with the engine's options);
                     a UserError when it cannot be built
  propose(work)      work: (seq, k) pairs; returns seq_id -> up to k draft tokens (a sequence
                     with no draft may be left out)
  release(seq)       the sequence ended or was preempted: drop its state
  move(seq, new_id)  the engine moves the sequence to id `new_id` (before updating seq.seq_id)
  info()             a dict for the engine's info() ("method" and the drafter's settings)
  close()            free what it holds
Each drafter keeps its per-sequence state in `seq.spec_state`.
"""


def history_from(seq, start: int) -> list[int]:
    """prompt + output of a sequence from index `start` on."""
    n_prompt = len(seq.prompt)
    return (seq.prompt[start:] if start < n_prompt else []) + seq.out.fed_tokens()[max(0, start - n_prompt) :]
