"""Answer grading on hand-written outputs: answer phase only, extraction order, equivalence."""

import threading

import pytest

from rllm_study.workloads.datasets import MATH, SCIENCE, Item
from rllm_study.workloads.grading import PARSED, UNPARSED, Grade, extract_answer, grade, last_boxed, math_equal
from rllm_study.workloads.prompts import build_prompt

GSM = Item("gsm8k/0000", "gsm8k", MATH, "easy", "Janet's ducks ...", "18")
FRAC = Item("math500/0001", "math500", MATH, "level-3", "Compute ...", "\\frac{14}{3}")
AIME = Item("aime24/0000", "aime24", MATH, "hard", "Find ...", "70")
GPQA = Item("gpqa-diamond/0000", "gpqa-diamond", SCIENCE, "Hard graduate level", "Which ...", "10^-4 eV",
            ("10^-4 eV", "10^-11 eV", "10^-8 eV", "10^-9 eV"))
REASONING = build_prompt(GSM, "reasoning")
DIRECT = build_prompt(GSM, "direct")


@pytest.mark.parametrize("output, extracted, correct", [
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18.</think>\n\nThe final answer is $\\boxed{18}$.", "18", True),
    ("9 * 2 = 19?</think>\n\n\\boxed{19}", "19", False),
    ("first \\boxed{9}, then I fixed it</think>\\boxed{9} no wait \\boxed{18}", "18", True),
    ("ok</think>\n\nSo the answer is 18 dollars.", "18", True),
    ("ok</think>\n\n**Answer:** $18$", "18", True),
    ("ok</think>\n\nFinal Answer: The final answer is 18", "18", True),
    ("ok</think>\n\nThe answer is:\n\n$\\frac{36}{2}$", "\\frac{36}{2}", True),
    ("ok</think>\n\\boxed{\\$18.00}", "\\$18.00", True),
])
def test_math_answers(output, extracted, correct):
    assert grade(GSM, REASONING, output) == Grade(extracted, correct, PARSED)


def test_answer_only_inside_think_does_not_count():
    g = grade(GSM, REASONING, "the answer is \\boxed{18} I think, but let me check again and")
    assert g.parse_status == UNPARSED and not g.correct and g.extracted_answer is None
    # also when the model opened the think block itself
    g = grade(GSM, DIRECT, "<think>so \\boxed{18}")
    assert g.parse_status == UNPARSED and not g.correct


def test_truncated_answer_is_unparsed():
    for cut in ("long thinking without end", "done</think>\n\nThe final answer is $\\boxed{1", "done</think>\n\n"):
        g = grade(GSM, REASONING, cut)
        assert (g.extracted_answer, g.correct, g.parse_status) == (None, False, UNPARSED)


def test_nested_boxed():
    assert last_boxed("x \\boxed{\\frac{14}{3}} y") == "\\frac{14}{3}"
    assert last_boxed("\\boxed{a} and \\boxed{\\sqrt{\\frac{1}{2}}}") == "\\sqrt{\\frac{1}{2}}"
    assert last_boxed("\\boxed{5} then \\boxed{\\frac{1}{") == "5"  # the last one is cut off
    assert last_boxed("no box") is None


@pytest.mark.parametrize("answer", ["\\frac{14}{3}", "\\dfrac{14}{3}", "14/3", "\\frac{28}{6}", "4\\frac{2}{3}", "4.6666666667"])
def test_fraction_forms(answer):
    g = grade(FRAC, build_prompt(FRAC, "direct"), f"\\boxed{{{answer}}}")
    assert g.parse_status == PARSED and g.correct, answer


@pytest.mark.parametrize("answer, correct", [("070", True), ("70", True), ("70^\\circ", True), ("71", False), ("7", False)])
def test_aime_integers(answer, correct):
    assert grade(AIME, build_prompt(AIME, "direct"), f"The answer is {answer}.").correct is correct


def test_units_and_latex_text_are_stripped():
    assert math_equal("6", "6 \\text{ inches}")
    assert math_equal("2,125", "2125")
    assert not math_equal("3", "4")


def test_math_verify_odd_input_is_not_equal():
    for odd in ("\\frac{", "}}}{{", "\\sqrt[", "x" * 600, "\\begin{matrix}"):
        assert math_equal("18", odd) is False


def test_math_verify_in_a_worker_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(math_equal("\\frac{1}{2}", "0.5")))
    worker.start()
    worker.join()
    assert results == [True]


def test_gpqa_letters_follow_the_shuffle():
    prompt = build_prompt(GPQA, "reasoning", seed=1)
    right = prompt.correct_letter
    wrong = next(k for k in prompt.choice_letters if k != right)
    assert prompt.choice_letters[right] == GPQA.answer
    for text, correct in [
        (f"...</think>\n\nThe answer is \\boxed{{{right}}}.", True),
        (f"...</think>\n\n\\boxed{{({wrong})}}", False),
        (f"...</think>\n\nThe answer is ({right}).", True),
        (f"...</think>\n\nAnswer: {wrong}", False),
        (f"...</think>\n\nI pick option {right} because it fits.", True),
        (f"...</think>\n\n({right})", True),
        (f"...</think>\n\n\\boxed{{\\text{{{right}}}}}", True),
        (f"...</think>\n\nThe answer is {GPQA.answer}", True),  # the choice's text names its letter
    ]:
        g = grade(GPQA, prompt, text)
        assert g.parse_status == PARSED and g.correct is correct, text
        assert g.extracted_answer in prompt.choice_letters


def test_gpqa_choice_text_with_parentheses():
    item = Item("gpqa-diamond/0001", "gpqa-diamond", SCIENCE, "Hard graduate level", "Which ...", "(R)-butan-2-ol",
                ("(R)-butan-2-ol", "(S)-butan-2-ol", "butanal", "propanone"))
    prompt = build_prompt(item, "direct", seed=5)
    assert grade(item, prompt, "The answer is (R)-butan-2-ol.") == Grade(prompt.correct_letter, True, PARSED)


def test_gpqa_letter_inside_think_only_is_unparsed():
    prompt = build_prompt(GPQA, "reasoning", seed=1)
    g = grade(GPQA, prompt, f"It must be ({prompt.correct_letter}). The answer is {prompt.correct_letter}")
    assert g.parse_status == UNPARSED and not g.correct


def test_extraction_order_prefers_boxed_then_answer_is_then_letter():
    assert extract_answer("answer is 3. \\boxed{4}", multiple_choice=False) == "4"
    assert extract_answer("(B) looks good, but the answer is C", multiple_choice=True) == "C"
    assert extract_answer("I go with (B)", multiple_choice=True) == "B"
    assert extract_answer("I go with (B)", multiple_choice=False) is None
