"""Speculative decoding methods, found by name in `REGISTRY`.

A method is one drafter module plus one `register(...)` line below: its name, whether its
option value names a model (`NAME:MODEL`, e.g. `draft:qwen2.5-coder-0.5b`) or is the bare name
(`ngram`), its help line, and the llama.cpp drafter class as an import path (imported only
when an engine builds it, so this module loads without llama.cpp). Everything else reads the
registry: the `speculative` option's check and help (`backends/rllm_study/backends/options.py`,
through `parse_speculative` and `forms`), the llama.cpp engine's drafter and its
`capabilities().speculative`, and `bench techniques`, which measures every registered method.
The drafter protocol is in `rllm_study.backends.llama_cpp.drafters`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from rllm_study.errors import UserError


@dataclass(frozen=True)
class Method:
    """A registered speculative method; `drafter` is the llama.cpp drafter as "module:Class"."""

    name: str
    drafter: str
    help: str
    takes_model: bool = False
    example_model: str = "qwen2.5-coder-0.5b"  # shown in the option's error message

    def spelling(self, model: str | None = None) -> str:
        """The option value that selects this method (with `model` for a method that takes one)."""
        return f"{self.name}:{model or 'MODEL'}" if self.takes_model else self.name

    def drafter_class(self):
        module, _, cls = self.drafter.partition(":")
        return getattr(importlib.import_module(module), cls)


REGISTRY: dict[str, Method] = {}


def register(name: str, drafter: str, help: str, takes_model: bool = False) -> None:
    REGISTRY[name] = Method(name, drafter, help, takes_model)


register(
    "ngram",
    "rllm_study.backends.llama_cpp.drafters.ngram:NgramDrafter",
    "prompt lookup: propose the tokens that followed the latest earlier occurrence of the last n tokens",
)
register(
    "draft",
    "rllm_study.backends.llama_cpp.drafters.draft_model:ModelDrafter",
    "a smaller model with the target's vocabulary drafts greedily",
    takes_model=True,
)


@dataclass(frozen=True)
class Speculative:
    """A parsed `speculative` value: the method's name and, for a method that takes one, the
    draft model reference (same vocabulary as the target)."""

    method: str
    draft_model: str | None = None

    def registered(self) -> Method:
        return REGISTRY[self.method]


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", or " + items[-1]


def forms(quoted: bool = True) -> str:
    """The accepted values, e.g. "'ngram' or 'draft:MODEL' (e.g. draft:qwen2.5-coder-0.5b)"
    (quoted, for errors) or "ngram, or draft:MODEL" (for help)."""
    spellings = [m.spelling() for m in REGISTRY.values()]
    if not quoted:
        return _joined(spellings)
    text = " or ".join(f"'{s}'" for s in spellings)
    examples = [m.spelling(m.example_model) for m in REGISTRY.values() if m.takes_model]
    return text + (f" (e.g. {', '.join(examples)})" if examples else "")


def parse_speculative(value: str | None) -> Speculative | None:
    """`speculative` option text -> Speculative (None when off); anything else is a UserError."""
    if value is None:
        return None
    if isinstance(value, str):
        name, colon, model = value.partition(":")
        method = REGISTRY.get(name)
        if method is not None and (bool(colon) == method.takes_model) and (model or not method.takes_model):
            return Speculative(name, model or None)
    raise UserError(f"speculative {value!r}: use {forms()}")
