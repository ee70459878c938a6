"""Grading a model's output against an item's reference answer.

Where the answer is looked for:
  1. the answer phase (`answer_text`: the text after the last </think>, or the whole output of a
     request that never thought) -> parse_status "parsed"
  2. if nothing is found there, the whole output, thinking included: the last answer the model
     stated anywhere by rules 1 and 2 below (e.g. a reasoning prompt whose output ends "...so the
     total is \\boxed{3}." without ever writing </think>) -> parse_status "answer_in_think"; the
     weak letter forms of rule 3 are not looked for there ("(C)" in thinking is as often carbon)
  3. nothing in either -> "unparsed" (e.g. output truncated before an answer)
Each grade holds two verdicts: `correct` (strict: the answer is right and came from the answer
phase; answer_in_think counts wrong) and `correct_lenient` (right, from either place).

Within a text the final answer is, in this order:
  1. the last complete \\boxed{...} (nested braces allowed; an empty \\boxed{} is skipped)
  2. the last "answer is ..." / "answer: ..." (rest of that line; for multiple choice also
     "choice is ...", "option is ...", e.g. "The letter of the correct choice is B.")
  3. math: an answer that is nothing but a number ("18", "18 dollars"; answer phase only);
     multiple choice only, the last of: a bold letter ("**B**"), "(B)", "option B" / "choice B",
     a line holding only the letter ("B", "B)", "(B).")
A multiple-choice answer must name one of the item's own letters (by the letter, "(B)",
"B) text", or a choice's exact text): "E" for an item with choices A-D is no answer, and a letter
followed by its own choice's text ("D) 10^-4 eV") restates the options and is no answer either.
Math answers are compared by `math_equal`, those of an item with `text_answer` by `text_equal`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

from rllm_study.backends.phases import answer_text
from rllm_study.workloads.datasets import Item
from rllm_study.workloads.prompts import LETTERS, Prompt

PARSED = "parsed"
ANSWER_IN_THINK = "answer_in_think"
UNPARSED = "unparsed"
PARSE_STATUSES = (PARSED, ANSWER_IN_THINK, UNPARSED)
VERIFY_TIMEOUT_S = 5  # per math-verify parse/compare, where a signal timer is possible
MAX_ANSWER_CHARS = 500  # a longer "final answer" is not compared (it is not one)
_RESTATED_CHARS = 12  # a letter followed by this much of its own choice's text restates the option

_LONE_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")  # rule 3 for math: the whole answer
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# lookaheads, so that overlapping phrases are all found ("Answer: the answer is 18")
_ANSWER_IS = re.compile(r"(?=\banswer\s*(?:is\b|:)[\s:]*([^\n]+))", re.IGNORECASE)
_CHOICE_IS = re.compile(r"(?=\b(?:answer|choice|option)\s*(?:is\b|:)[\s:]*([^\n]+))", re.IGNORECASE)
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{(.*)\}$")
_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?"
_SPACE = r"(?:\s|\\[,;:! ]|~)"  # a space, or a LaTeX one
_POWER = r"(?:\^\{?\d\}?)?"  # cm^2
# units: words after a plain number, spaced ("230 miles") or of two letters or more ("5cm", not
# "5c": a coefficient), or a \text{...} / \mathrm{...} after anything
_WORD_UNITS = re.compile(rf"({_NUMBER})(?:{_SPACE}+[A-Za-z]|[A-Za-z]{{2}})[A-Za-z ]*{_POWER}")
_TEXT_UNITS = re.compile(rf"(.*?\S){_SPACE}*\\(?:text|mathrm|mbox)\s*\{{[^{{}}0-9]*\}}{_POWER}")
_E_NOTATION = re.compile(r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)")  # 1.5e3: math-verify reads it as 1.5 x e x 3


@dataclass(frozen=True)
class Grade:
    """`matches`: the extracted answer equals the reference (False when nothing was extracted)."""

    extracted_answer: str | None
    matches: bool
    parse_status: str

    @property
    def correct(self) -> bool:
        """Strict: right, and stated in the answer phase."""
        return self.matches and self.parse_status == PARSED

    @property
    def correct_lenient(self) -> bool:
        """Right, stated in the answer phase or (answer_in_think) only while thinking."""
        return self.matches and self.parse_status != UNPARSED

    def record_fields(self) -> dict:
        """The grade as a requests.jsonl line holds it."""
        return {
            "extracted_answer": self.extracted_answer,
            "correct": self.correct,
            "correct_lenient": self.correct_lenient,
            "parse_status": self.parse_status,
        }


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty \\boxed{...} (or \\fbox{...}); None if there is none."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                if text[start:i].strip():
                    return text[start:i].strip()
                break
    return None


def _clean(answer: str) -> str:
    """Strip markdown emphasis, $ / \\( \\) delimiters, a trailing full stop and a \\text{} wrap."""
    s = answer.strip().strip("*").strip()
    s = s.removeprefix("\\(").removesuffix("\\)").strip().rstrip(".").strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$").strip()
    wrapped = _TEXT_WRAP.match(s)
    return wrapped.group(1).strip() if wrapped else s


def strip_units(value: str) -> str:
    """A math answer without its units: "230 miles" -> "230", "5cm" -> "5", "6 \\text{ inches}" -> "6",
    "\\frac{3}{2} \\mathrm{cm}^2" -> "\\frac{3}{2}". Plain words count as units only after a number
    (spaced, or of two letters or more), so "5 + c" and "5c" keep their symbol."""
    for pattern in (_WORD_UNITS, _TEXT_UNITS):
        m = pattern.fullmatch(value.strip())
        if m:
            return m.group(1)
    return value


@lru_cache(maxsize=16)
def _letter_patterns(letters: str) -> tuple[re.Pattern, re.Pattern]:
    """(a leading letter of a phrase's rest, the weak letter forms of rule 3) for these letters."""
    k = f"[{re.escape(letters)}]"
    lead = re.compile(rf"^[\s*_(\[{{]*({k})(?![A-Za-z0-9])")
    weak = re.compile(
        rf"\*\*\(?({k})\)?[.:]?\*\*"  # **B**
        rf"|\(({k})\)"  # (B)
        rf"|\b(?i:option|choice)\s+\(?({k})\b\)?"  # option B
        rf"|^[\s*#>_]*\(?({k})\)?[\s.*_]*$",  # a line holding only B
        re.MULTILINE,
    )
    return lead, weak


def _restates(text: str, end: int, letter: str, choice_letters: dict[str, str] | None) -> bool:
    """True when the letter ending at `end` is followed by its own choice's text: an option restated."""
    if not choice_letters or letter not in choice_letters:
        return False
    head = choice_letters[letter].strip()[:_RESTATED_CHARS].lower()
    return bool(head) and text[end : end + 4 * _RESTATED_CHARS].lstrip(" )*.:").lower().startswith(head)


def _choice_letter(answer: str, choice_letters: dict[str, str] | None, letters: str) -> str | None:
    """The item's letter an answer names: "C", "(C)", "C) text", "**C**", or a choice's exact text."""
    s = _clean(answer)
    lead, _ = _letter_patterns(letters)
    named = lead.match(s)
    if named:
        return named.group(1)
    return next((k for k, v in (choice_letters or {}).items() if v.strip().lower() == s.lower()), None)


def extract_answer(
    text: str, multiple_choice: bool, choice_letters: dict[str, str] | None = None, weak: bool = True
) -> str | None:
    """The final answer in `text` by the order in the module doc; for multiple choice, one of the
    letters of `choice_letters` (letter -> choice text; A-J when not given) or None. `weak=False`
    leaves out rule 3."""
    if not multiple_choice:
        boxed = last_boxed(text)
        if boxed:
            return _clean(boxed)
        said = [m for m in _ANSWER_IS.finditer(text) if _clean(m.group(1))]
        # a \boxed left in the rest of the line was never closed: the output was cut off inside it
        if said and not _BOXED.search(said[-1].group(1)):
            return strip_units(_clean(said[-1].group(1)))
        if weak and (lone := _LONE_NUMBER.fullmatch(strip_units(_clean(text)))):
            return lone.group(0)
        return None
    letters = "".join(choice_letters) if choice_letters else LETTERS
    boxed = last_boxed(text)
    if boxed and (letter := _choice_letter(boxed, choice_letters, letters)):
        return letter
    for said in reversed(list(_CHOICE_IS.finditer(text))):
        if letter := _choice_letter(said.group(1), choice_letters, letters):
            return letter
    if not weak:
        return None
    for m in reversed(list(_letter_patterns(letters)[1].finditer(text))):
        letter = next(g for g in m.groups() if g)
        if not _restates(text, m.end(), letter, choice_letters):
            return letter
    return None


@lru_cache(maxsize=1)
def _no_unit_stripping() -> list:
    """math-verify's default extraction without its unit stripping, which removes a trailing
    "unit" even after an operator ("5 + c" -> "5 +"); units are `strip_units`' job here."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    normal = NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
    )
    return [LatexExtractionConfig(normalization_config=normal), ExprExtractionConfig()]


def _from_e_notation(value: str) -> str:
    """A number written in e notation as LaTeX: "1.5e3" -> "1.5 \\times 10^{3}"; anything else as is."""
    m = _E_NOTATION.fullmatch(value.strip())
    return f"{m.group(1)} \\times 10^{{{m.group(2)}}}" if m else value


def math_equal(reference: str, answer: str) -> bool:
    """True when `answer` is `reference`: math-verify equivalence (fractions, LaTeX forms, "070" =
    70, an equation's right side: "x = 5" is 5, "25\\%" is 25) of the two without their units
    (`strip_units`), an answer in e notation read as a power of ten ("1.5e3" is 1500).
    Symbols are kept, so an answer with free symbols is wrong for a numeric reference ("5 + c" is
    not 5). Any math-verify failure or timeout, or an answer longer than MAX_ANSWER_CHARS, counts
    as not equal.

    The signal-based timeout works only in the main thread; elsewhere it runs without one,
    and answers are bounded by MAX_ANSWER_CHARS instead."""
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    from math_verify import parse, verify

    timeout = VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    config = _no_unit_stripping()
    try:
        gold = parse(f"${strip_units(reference)}$", extraction_config=config, parsing_timeout=timeout)
        pred = parse(f"${_from_e_notation(strip_units(answer))}$", extraction_config=config, parsing_timeout=timeout)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # math-verify and sympy raise many types on odd input; not equal
        return False


def _judge(item: Item, prompt: Prompt, text: str, weak: bool) -> tuple[str | None, bool]:
    """(extracted answer, whether it equals the reference) for one text."""
    if prompt.choice_letters is not None:
        letter = extract_answer(text, True, prompt.choice_letters, weak)
        return letter, letter is not None and letter == prompt.correct_letter
    extracted = extract_answer(text, False)
    equal = text_equal if item.text_answer else math_equal
    return extracted, extracted is not None and equal(item.answer, extracted)


def text_equal(reference: str, answer: str) -> bool:
    """Exact match of two texts after runs of whitespace become one space and case is folded."""
    return " ".join(reference.split()).casefold() == " ".join(answer.split()).casefold()


def grade(item: Item, prompt: Prompt, output_text: str) -> Grade:
    """Grade `output_text` (the module doc: answer phase first, else the whole output)."""
    visible = answer_text(output_text, prompt.starts_in_think)
    if visible.strip():
        extracted, matches = _judge(item, prompt, visible, weak=True)
        if extracted is not None:
            return Grade(extracted, matches, PARSED)
    if visible != output_text:
        extracted, matches = _judge(item, prompt, output_text, weak=False)
        if extracted is not None:
            return Grade(extracted, matches, ANSWER_IN_THINK)
    return Grade(None, False, UNPARSED)


UNGRADED = {"extracted_answer": None, "correct": None, "correct_lenient": None, "parse_status": None}
"""The grade fields of a request whose item has no reference answer (`Item.answer` empty: a
custom data set with answer = "none"): nothing is graded, and accuracy is None for its set."""


PARENT_CHECK_S = 1.0  # how often the grading child checks that its parent is alive


def _grading_child(parent_pid: int) -> None:
    """GradingProcess's child at start: ignore SIGINT, and leave when the parent is gone (it is
    re-parented, so os.getppid() changes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


class GradingProcess:
    """`grade` in one child process, for a run's writer thread.

    Why: math-verify's sympy work is pure Python holding the GIL for milliseconds per answer, and
    a thread doing it makes the engine thread wait for the GIL before its next decode step (what
    `bench server`'s finish-gap check measures; figures in scripts/gpu/README.md). A child
    process has its own GIL, and runs `grade` in its main thread, where math-verify's signal
    timeout (VERIFY_TIMEOUT_S) works.
    The child is spawned (not forked: no copy of the parent's engine threads or CUDA state) and
    ignores SIGINT, so Ctrl-C stops the run cleanly while the writer still grades what finished.
    It exits by itself within PARENT_CHECK_S of its parent's death (a run killed with -9 left it
    idle otherwise: its queue's pipe never reads EOF). The calling thread waits for each grade
    without holding the GIL."""

    def __init__(self):
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_grading_child,
            initargs=(os.getpid(),),
        )

    def grade(self, item: Item, prompt: Prompt, output_text: str) -> Grade:
        return self._pool.submit(grade, item, prompt, output_text).result()

    def worker_pid(self) -> int:
        return self._pool.submit(os.getpid).result()

    def close(self) -> None:
        self._pool.shutdown()


# math-verify warns once per process when run without its signal timeout (see math_equal)
logging.getLogger("math_verify").setLevel(logging.ERROR)
