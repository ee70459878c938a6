"""Answer forms the graders meet in MATH-500 and in model outputs, each pinned so that a one-line
change to extraction or comparison fails here: negative references (18 of the offline MATH-500
subset), the last of several "answer is" phrases, percentages, scientific notation, sets and
intervals, \\fbox, references with units, and the math-verify timeout."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from rllm_study.workloads.datasets import MATH, Item, load_dataset
from rllm_study.workloads.grading import PARSED, Grade, extract_answer, grade, math_equal
from rllm_study.workloads.prompts import build_prompt


def _item(answer: str) -> Item:
    return Item("math500/9999", "math500", MATH, "level-3", "Compute ...", answer)


def _grade(answer: str, output: str, mode: str = "reasoning") -> Grade:
    item = _item(answer)
    return grade(item, build_prompt(item, mode), output)


@pytest.mark.parametrize("output", ["-2", " -2.\n", "-2 degrees"])
def test_negative_bare_answers_keep_their_sign(output):
    assert _grade("-2", output, "direct") == Grade("-2", True, PARSED)
    assert _grade("2", output, "direct") == Grade("-2", False, PARSED)


@pytest.mark.parametrize(
    "output, extracted",
    [
        ("ok</think>\\boxed{-125}", "-125"),
        ("ok</think>The answer is -125.", "-125"),
        ("ok</think>The answer is $-\\frac{1}{2}$.", "-\\frac{1}{2}"),
        ("ok</think>Answer: -3.5", "-3.5"),
    ],
)
def test_negative_answers_in_phrases(output, extracted):
    g = _grade(extracted, output)
    assert g == Grade(extracted, True, PARSED)
    assert not _grade(extracted.lstrip("-"), output).matches


def test_the_offline_math500_negative_references_grade_against_their_own_answers():
    negative = [i for i in load_dataset("math500", 500) if i.answer.strip().startswith("-")]
    assert len(negative) >= 18
    for item in negative:
        prompt = build_prompt(item, "direct")
        assert grade(item, prompt, item.answer).correct, item
        assert not grade(item, prompt, item.answer.lstrip("-")).matches, item


@pytest.mark.parametrize(
    "output, last",
    [
        ("The answer is 3. Wait, no, the answer is 5.", "5"),
        ("Answer: 3\nLet me check again.\nFinal answer: 5", "5"),
        ("I first thought the answer is 12,\nbut the answer is 13", "13"),
        ("Answer: the answer is 7", "7"),
    ],
)
def test_the_last_answer_is_phrase_wins(output, last):
    assert extract_answer(output, False) == last
    assert _grade(last, "ok</think>" + output) == Grade(last, True, PARSED)


@pytest.mark.parametrize(
    "reference, answer, equal",
    [
        ("25\\%", "25", True),
        ("25\\%", "25\\%", True),
        ("25\\%", "25%", True),
        ("25\\%", "26\\%", False),
        ("1500", "1.5 \\times 10^{3}", True),
        ("1500", "1.5e3", True),
        ("0.0015", "1.5e-3", True),
        ("1500", "1.6e3", False),
        ("1.5 \\times 10^{3}", "1500", True),
        ("\\{1, 2\\}", "\\{2, 1\\}", True),
        ("\\{1, 2\\}", "\\{1, 3\\}", False),
        ("(0, 1]", "(0,1]", True),
        ("[0,1]", "(0,1)", False),
        ("(-\\infty, 3)", "(-\\infty,3)", True),
        ("5 \\text{ cm}", "5", True),
        ("5", "5 cm", True),
        ("12 \\text{ inches}", "12", True),
        ("5 \\text{ cm}", "6", False),
        ("\\$18", "18", True),
        ("18", "\\$18.00", True),
    ],
)
def test_equivalent_forms(reference, answer, equal):
    assert math_equal(reference, answer) is equal


def test_fbox_is_a_box():
    assert extract_answer("so \\fbox{7}", False) == "7"
    assert _grade("7", "ok</think>\\boxed{6}, no: \\fbox{7}") == Grade("7", True, PARSED)


def test_math_verify_timeout_counts_as_not_equal():
    """A comparison sympy cannot finish (a tower of powers) stops at VERIFY_TIMEOUT_S and is not equal;
    in a subprocess, so a missing timeout fails the test instead of hanging the suite."""
    code = (
        "import time; import rllm_study.workloads.grading as g; g.VERIFY_TIMEOUT_S = 1; t = time.monotonic(); "
        "print(g.math_equal('1', '9^{9^{9^{9}}}'), round(time.monotonic() - t, 1))"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    equal, took = proc.stdout.split()
    assert equal == "False" and float(took) < 10, proc.stdout + proc.stderr[-2000:]
    assert time.monotonic() - start < 30
