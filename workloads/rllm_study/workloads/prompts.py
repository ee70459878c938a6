"""Prompts for an item in one of three modes, from templates that are data.

  reasoning  think inside <think>...</think>, then the final answer as \\boxed{...} (the letter
             for a multiple-choice item); the assistant prefix "<think>\\n" starts the output in
             the think phase; optionally a GBNF grammar forces that shape on models that were
             not trained to reason
  direct     the final answer only, no reasoning
  native     a plain question for real reasoning models, whose own chat template opens the
             think block (the runner checks the rendered prompt with `ends_in_think`)

Templates live in templates/prompts.toml (its header explains the keys); a user TOML file of
the same shape replaces the modes it defines. Multiple-choice order is shuffled per item by
(seed, item id), so a run is reproducible and items do not depend on each other.
"""

from __future__ import annotations

import random
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from rllm_study.backends.chat_template import message_list
from rllm_study.backends.phases import THINK_OPEN
from rllm_study.errors import UserError
from rllm_study.workloads.datasets import Item

PROMPT_MODES = ("reasoning", "direct", "native")
THINKING_MODES = ("reasoning", "native")  # the modes whose outputs think first, then answer
DEFAULT_TEMPLATES = Path(str(resources.files("rllm_study.workloads.templates").joinpath("prompts.toml")))
_REQUIRED = ("system", "math", "choice", "assistant_prefix")
_OPTIONAL = ("grammar_math", "grammar_choice", "answer_cue")
_FILES = ("grammar_math", "grammar_choice")
_PLACEHOLDER = re.compile(r"\{(problem|choices)\}")
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Prompt:
    """What to send for one item: chat messages, then `assistant_prefix` after the template's
    generation prompt. For multiple choice, `choice_letters` maps letter -> choice text in the
    shuffled order and `correct_letter` is the right one. `answer_cue` is what an engine writes
    after the `</think>` it forces when a think budget closes the thinking."""

    messages: list[dict]
    assistant_prefix: str
    starts_in_think: bool
    grammar: str | None
    choice_letters: dict[str, str] | None
    correct_letter: str | None
    answer_cue: str = ""


def ends_in_think(rendered: str) -> bool:
    """True when a rendered prompt ends with `<think>` (trailing whitespace aside): the model's
    output then begins inside the think block."""
    return rendered.rstrip().endswith(THINK_OPEN)


def has_think_token(engine) -> bool:
    """True when the engine's vocabulary holds `<think>` as one token (real reasoning models)."""
    return engine.count_tokens(THINK_OPEN) - engine.count_tokens("") == 1


def open_thinking(rendered: str, think_token: bool) -> tuple[str, bool]:
    """A rendered native prompt as sent, and whether the output starts in the think phase: as is
    when it ends in `<think>` (the template opened it); with "<think>\n" added for a vocabulary
    with `<think>` as one token whose template does not (DeepSeek's advice for R1 models); else as
    is, not thinking. A chat-mode message list (`message_list`: the server applies its own template,
    which decides whether thinking opens) is sent as is, not marked thinking: the server's reasoning
    fields then say which tokens are think."""
    if message_list(rendered) is not None:
        return rendered, False
    if not ends_in_think(rendered) and think_token:
        rendered += THINK_OPEN + "\n"
    return rendered, ends_in_think(rendered)


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise UserError(f"cannot read prompt templates {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"prompt templates {path} are not valid TOML: {err}") from None


def _check_mode(path: Path, mode: str, table: object) -> dict:
    if not isinstance(table, dict):
        raise UserError(f"[{mode}] in {path} must be a table")
    unknown = sorted(set(table) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise UserError(f"[{mode}] in {path} has unknown key {unknown[0]!r}: use {', '.join(_REQUIRED + _OPTIONAL)}")
    for key in _REQUIRED:
        if not isinstance(table.get(key), str):
            raise UserError(f'[{mode}] in {path} needs {key} = "..." (text)')
    for key, needed in (("math", ("problem",)), ("choice", ("problem", "choices"))):
        for name in needed:
            if "{" + name + "}" not in table[key]:
                raise UserError(f"[{mode}] {key} in {path} must contain {{{name}}}")
    # grammar files are named relative to the TOML file that names them
    if not isinstance(table.get("answer_cue", ""), str):
        raise UserError(f"[{mode}] in {path} answer_cue must be text")
    return {**table, **{k: path.parent / table[k] for k in _FILES if k in table}}


@lru_cache(maxsize=8)
def load_templates(path: Path | None = None) -> dict[str, dict]:
    """Mode -> template table: the defaults, with the modes a user file defines replaced."""
    modes = {m: _check_mode(DEFAULT_TEMPLATES, m, t) for m, t in _read_toml(DEFAULT_TEMPLATES).items()}
    if path is not None:
        path = Path(path)
        user = _read_toml(path)
        unknown = sorted(set(user) - set(PROMPT_MODES))
        if unknown:
            raise UserError(f"{path} defines unknown mode [{unknown[0]}]: use {', '.join(PROMPT_MODES)}")
        modes.update({m: _check_mode(path, m, t) for m, t in user.items()})
    return modes


@lru_cache(maxsize=16)
def _read_grammar(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read grammar file {path}: {err.strerror}") from None


def build_prompt(item: Item, mode: str, seed: int = 0, templates: Path | None = None, grammar: bool = False) -> Prompt:
    """The prompt for `item` in `mode`; `grammar=True` adds the mode's GBNF grammar."""
    if mode not in PROMPT_MODES:
        raise UserError(f"unknown prompt mode {mode!r}: choose one of {', '.join(PROMPT_MODES)}")
    table = load_templates(Path(templates) if templates is not None else None)[mode]
    choice_letters = correct_letter = None
    values = {"problem": item.problem}
    if item.choices:
        shuffled = list(item.choices)
        random.Random(f"{seed}:{item.id}").shuffle(shuffled)
        choice_letters = dict(zip(LETTERS, shuffled))
        correct_letter = next(k for k, v in choice_letters.items() if v == item.answer)
        values["choices"] = "\n".join(f"{k}) {v}" for k, v in choice_letters.items())
    kind = "choice" if item.choices else "math"
    user = _PLACEHOLDER.sub(lambda m: values[m.group(1)], table[kind])
    messages = ([{"role": "system", "content": table["system"]}] if table["system"] else []) + [
        {"role": "user", "content": user}
    ]
    grammar_text = None
    if grammar:
        if f"grammar_{kind}" not in table:
            raise UserError(f"prompt mode {mode!r} has no grammar_{kind} file; grammars go with the reasoning mode")
        grammar_text = _read_grammar(table[f"grammar_{kind}"])
    prefix = table["assistant_prefix"]
    return Prompt(
        messages,
        prefix,
        ends_in_think(prefix),
        grammar_text,
        choice_letters,
        correct_letter,
        table.get("answer_cue", ""),
    )
