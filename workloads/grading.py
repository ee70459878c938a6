"""Grading a model's output against an item's reference answer.

The final answer comes from the answer phase only (`answer_text`: never from inside
<think>), tried in this order:
  1. the last complete \\boxed{...} (nested braces allowed)
  2. the last "answer is ..." / "answer: ..." (rest of that line; for math, words after a
     number are taken as units and dropped: "18 dollars" -> "18")
  3. multiple choice only: the last letter standing alone ("(C)", "C)", "option C", a line "C")
Nothing found (e.g. output truncated before an answer) -> parse_status "unparsed", counted wrong.
Multiple choice is graded by letter (an answer equal to a choice's text counts as its letter);
math by `math-verify` equivalence (fractions, LaTeX forms, units, "070" = 70), where any
failure or timeout of math-verify counts as not equal.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

from rllm_study.backends.phases import answer_text
from rllm_study.workloads.datasets import Item
from rllm_study.workloads.prompts import Prompt

PARSED = "parsed"
UNPARSED = "unparsed"
VERIFY_TIMEOUT_S = 5      # per math-verify parse/compare, where a signal timer is possible
MAX_ANSWER_CHARS = 500    # a longer "final answer" is not compared (it is not one)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LAST_ANSWER_IS = re.compile(r"(?s:.*)\banswer\s*(?:is\b|:)[\s:]*([^\n]+)", re.IGNORECASE)  # greedy prefix: the last one
_LETTER = re.compile(r"\(([A-J])\)|\b(?i:option|choice)\s+([A-J])\b|^[\s*#>]*([A-J])(?:\)|[\s.*]*$)", re.MULTILINE)
_NUMBER_THEN_WORDS = re.compile(r"(-?[\d.,]+(?:/[\d.,]+)?)\s+[A-Za-z][A-Za-z ]*")
_TEXT_WRAP = re.compile(r"^\\text\{(.*)\}$")


@dataclass(frozen=True)
class Grade:
    extracted_answer: str | None
    correct: bool
    parse_status: str


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} (or \\fbox{...}); None if there is none."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def _clean(answer: str) -> str:
    """Strip markdown emphasis, $ / \\( \\) delimiters, a trailing full stop and a \\text{} wrap."""
    s = answer.strip().strip("*").strip()
    s = s.removeprefix("\\(").removesuffix("\\)").strip().rstrip(".").strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$").strip()
    wrapped = _TEXT_WRAP.match(s)
    return wrapped.group(1).strip() if wrapped else s


def extract_answer(visible: str, multiple_choice: bool) -> str | None:
    """The final answer in the visible (answer-phase) text, by the order in the module doc."""
    boxed = last_boxed(visible)
    if boxed:
        return _clean(boxed)
    said = _LAST_ANSWER_IS.match(visible)
    # a \boxed left here was never closed: the output was cut off inside it
    if said and _clean(said.group(1)) and not _BOXED.search(said.group(1)):
        value = _clean(said.group(1))
        words = None if multiple_choice else _NUMBER_THEN_WORDS.fullmatch(value)
        return words.group(1) if words else value
    if multiple_choice:
        letters = _LETTER.findall(visible)
        if letters:
            return next(g for g in letters[-1] if g)
    return None


def _letter(answer: str, choice_letters: dict[str, str]) -> str | None:
    """The choice letter an extracted answer names: "C", "(C)", "C) text", or a choice's text."""
    s = answer.strip().strip("()").strip()
    if s.upper() in choice_letters:
        return s.upper()
    head = re.match(r"\(?([A-J])\)\s", answer.strip() + " ")
    if head and head.group(1) in choice_letters:
        return head.group(1)
    return next((k for k, v in choice_letters.items() if v.strip().lower() == answer.strip().lower()), None)


def math_equal(reference: str, answer: str) -> bool:
    """math-verify equivalence of two LaTeX answers; any error or timeout -> False.

    The signal-based timeout works only in the main thread; elsewhere it runs without one,
    and answers are bounded by MAX_ANSWER_CHARS instead."""
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    from math_verify import parse, verify

    timeout = VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(f"${reference}$", parsing_timeout=timeout)
        pred = parse(f"${answer}$", parsing_timeout=timeout)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # math-verify and sympy raise many types on odd input; not equal
        return False


def grade(item: Item, prompt: Prompt, output_text: str) -> Grade:
    """Extract the final answer from the answer phase of `output_text` and judge it."""
    multiple_choice = prompt.choice_letters is not None
    extracted = extract_answer(answer_text(output_text, prompt.starts_in_think), multiple_choice)
    if extracted is None:
        return Grade(None, False, UNPARSED)
    if multiple_choice:
        letter = _letter(extracted, prompt.choice_letters)
        return Grade(letter or extracted, letter is not None and letter == prompt.correct_letter, PARSED)
    return Grade(extracted, math_equal(item.answer, extracted), PARSED)


# math-verify warns once per process when run without its signal timeout (see math_equal)
logging.getLogger("math_verify").setLevel(logging.ERROR)
