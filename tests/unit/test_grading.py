"""Answer grading on hand-written outputs and on real outputs of our own runs (excerpts of
reports/*/requests.jsonl): answer phase first, then the thinking (lenient), extraction order,
equivalence."""

import threading

import pytest

from rllm_study.workloads.datasets import MATH, SCIENCE, Item, load_dataset
from rllm_study.workloads.grading import (
    ANSWER_IN_THINK,
    PARSED,
    UNPARSED,
    Grade,
    extract_answer,
    grade,
    last_boxed,
    math_equal,
    strip_units,
)
from rllm_study.workloads.prompts import build_prompt

GSM = Item("gsm8k/0000", "gsm8k", MATH, "easy", "Janet's ducks ...", "18")
FRAC = Item("math500/0001", "math500", MATH, "level-3", "Compute ...", "\\frac{14}{3}")
AIME = Item("aime24/0000", "aime24", MATH, "hard", "Find ...", "70")
GPQA = Item(
    "gpqa-diamond/0000",
    "gpqa-diamond",
    SCIENCE,
    "Hard graduate level",
    "Which ...",
    "10^-4 eV",
    ("10^-4 eV", "10^-11 eV", "10^-8 eV", "10^-9 eV"),
)
REASONING = build_prompt(GSM, "reasoning")
DIRECT = build_prompt(GSM, "direct")


@pytest.mark.parametrize(
    "output, extracted, correct",
    [
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18.</think>\n\nThe final answer is $\\boxed{18}$.", "18", True),
        ("9 * 2 = 19?</think>\n\n\\boxed{19}", "19", False),
        ("first \\boxed{9}, then I fixed it</think>\\boxed{9} no wait \\boxed{18}", "18", True),
        ("ok</think>\n\nSo the answer is 18 dollars.", "18", True),
        ("ok</think>\n\n**Answer:** $18$", "18", True),
        ("ok</think>\n\nFinal Answer: The final answer is 18", "18", True),
        ("ok</think>\n\nThe answer is:\n\n$\\frac{36}{2}$", "\\frac{36}{2}", True),
        ("ok</think>\n\\boxed{\\$18.00}", "\\$18.00", True),
    ],
)
def test_math_answers(output, extracted, correct):
    assert grade(GSM, REASONING, output) == Grade(extracted, correct, PARSED)


def test_answer_only_inside_think_counts_as_lenient_only():
    g = grade(GSM, REASONING, "the answer is \\boxed{18} I think, but let me check again and")
    assert (g.extracted_answer, g.parse_status, g.correct, g.correct_lenient) == ("18", ANSWER_IN_THINK, False, True)
    # also when the model opened the think block itself
    g = grade(GSM, DIRECT, "<think>so \\boxed{18}")
    assert (g.parse_status, g.correct, g.correct_lenient) == (ANSWER_IN_THINK, False, True)
    # a wrong answer in the thinking is wrong both ways
    g = grade(GSM, REASONING, "so \\boxed{17}")
    assert (g.parse_status, g.correct, g.correct_lenient) == (ANSWER_IN_THINK, False, False)
    # an answer phase with an answer wins over the thinking, and is both strict and lenient
    g = grade(GSM, REASONING, "\\boxed{17} no wait</think>\\boxed{18}")
    assert (g.extracted_answer, g.parse_status, g.correct, g.correct_lenient) == ("18", PARSED, True, True)
    # an answer phase with nothing in it: the thinking's answer, leniently
    g = grade(GSM, REASONING, "so \\boxed{18}</think>\n\nThe final")
    assert (g.extracted_answer, g.parse_status, g.correct, g.correct_lenient) == ("18", ANSWER_IN_THINK, False, True)


def test_truncated_answer_is_unparsed():
    for cut in (
        "long thinking without end",
        "done</think>\n\nThe final answer is $\\boxed{1",
        "done</think>\n\n",
        "give the final answer within \\boxed{}, so let me",
    ):
        g = grade(GSM, REASONING, cut)
        assert (g.extracted_answer, g.correct, g.correct_lenient, g.parse_status) == (None, False, False, UNPARSED)


def test_nested_boxed():
    assert last_boxed("x \\boxed{\\frac{14}{3}} y") == "\\frac{14}{3}"
    assert last_boxed("\\boxed{a} and \\boxed{\\sqrt{\\frac{1}{2}}}") == "\\sqrt{\\frac{1}{2}}"
    assert last_boxed("\\boxed{5} then \\boxed{\\frac{1}{") == "5"  # the last one is cut off
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    "answer", ["\\frac{14}{3}", "\\dfrac{14}{3}", "14/3", "\\frac{28}{6}", "4\\frac{2}{3}", "4.6666666667"]
)
def test_fraction_forms(answer):
    g = grade(FRAC, build_prompt(FRAC, "direct"), f"\\boxed{{{answer}}}")
    assert g.parse_status == PARSED and g.correct, answer


@pytest.mark.parametrize(
    "answer, correct", [("070", True), ("70", True), ("70^\\circ", True), ("71", False), ("7", False)]
)
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
    item = Item(
        "gpqa-diamond/0001",
        "gpqa-diamond",
        SCIENCE,
        "Hard graduate level",
        "Which ...",
        "(R)-butan-2-ol",
        ("(R)-butan-2-ol", "(S)-butan-2-ol", "butanal", "propanone"),
    )
    prompt = build_prompt(item, "direct", seed=5)
    assert grade(item, prompt, "The answer is (R)-butan-2-ol.") == Grade(prompt.correct_letter, True, PARSED)


def test_gpqa_letter_inside_think_only():
    prompt = build_prompt(GPQA, "reasoning", seed=1)
    right = prompt.correct_letter
    g = grade(GPQA, prompt, f"It must be ({right}). The answer is {right}")
    assert (g.extracted_answer, g.parse_status, g.correct, g.correct_lenient) == (right, ANSWER_IN_THINK, False, True)
    # the weak forms ("(B)", "option B", a lone letter) are not taken from the thinking
    for weak in (f"It must be ({right}), let me see", f"so option {right} fits, but", f"\n{right}\n"):
        assert grade(GPQA, prompt, weak).parse_status == UNPARSED, weak


def test_extraction_order_prefers_boxed_then_answer_is_then_letter():
    assert extract_answer("answer is 3. \\boxed{4}", multiple_choice=False) == "4"
    assert extract_answer("(B) looks good, but the answer is C", multiple_choice=True) == "C"
    assert extract_answer("I go with (B)", multiple_choice=True) == "B"
    assert extract_answer("I go with (B)", multiple_choice=False) is None


# ---- real outputs (excerpts of the committed reports/*/requests.jsonl, our own tool's outputs) ----

# Reasoning prompts start inside <think>; these outputs never wrote </think>, so the old grader
# found no answer phase and called them "unparsed" although the stated answer is right.
IN_THINK = [
    # reports/cpu-2core/pilot/qwen2.5-coder-0.5b__gsm8k__reasoning__mt256__batch8__r0, gsm8k/0001
    (
        "3",
        "The total number of bolts is:\n\\[\n2 + 1 = 3 \\text{ bolts}\n\\]\n\n"
        "Therefore, the total number of bolts needed is \\boxed{3}.",
        "3",
    ),
    # reports/gpu-h100/pilot-c32/qwen2.5-coder-0.5b__gsm8k__reasoning__mt256__batch32__r0, gsm8k/0016
    (
        "230",
        "   - In the second day, the distance covered by each train is also 230 miles.\n\n"
        "Therefore, the distance covered by each train in the two days is \\boxed{230 miles}.",
        "230 miles",
    ),
    # reports/gpu-h100/kv-cache/qwen2.5-coder-0.5b__kv-q8_0__gsm8k__reasoning__mt256__batch8__r0, gsm8k/0000
    (
        "18",
        "- Total revenue = 9 eggs * $2/egg = $18\n\nTherefore, Janet makes \\boxed{18} dollars every day at the "
        "farmers' market.",
        "18",
    ),
    # reports/gpu-h100/kv-cache/qwen2.5-coder-0.5b__kv-q4_0__gsm8k__reasoning__mt256__batch8__r0, gsm8k/0001
    (
        "3",
        "3. Therefore, the total amount of blue fiber is 2 + 2/2 = 2 + 1 = 3.\n\nThe answer is 3 bolts of blue fiber.",
        "3",
    ),
    # reports/cpu-2core/pilot/qwen2.5-coder-0.5b__math500__reasoning__mt256__batch8__r0, math500/0005
    (
        "42",
        "\\text{Perimeter of the hexagon} = 21 \\text{ inches} + 21 \\text{ inches} = 42 \\text{ inches}\n   \\]\n\n"
        "Therefore, the perimeter of the regular hexagon is \\(\\boxed{42}\\).",
        "42",
    ),
]


@pytest.mark.parametrize("reference, output, extracted", IN_THINK)
def test_real_answers_stated_only_while_thinking(reference, output, extracted):
    item = Item("gsm8k/x", "gsm8k", MATH, "easy", "...", reference)
    g = grade(item, build_prompt(item, "reasoning"), output)
    assert (g.extracted_answer, g.parse_status, g.correct, g.correct_lenient) == (
        extracted,
        ANSWER_IN_THINK,
        False,
        True,
    )
    # the same text after </think> is a parsed, strictly right answer
    g = grade(item, build_prompt(item, "reasoning"), "thinking</think>\n" + output)
    assert (g.parse_status, g.correct, g.correct_lenient) == (PARSED, True, True)


def test_free_symbols_are_wrong_for_a_numeric_reference():
    # reports/gpu-h100/pilot-c32/qwen2.5-coder-0.5b__math500__direct__mt512__batch32__r0, math500/0047 (reference 5):
    # math-verify alone accepts it, reading the trailing "c" as a unit
    item = Item("math500/0047", "math500", MATH, "level-4", "...", "5")
    output = (
        "We can now find \\(a + b + c\\):\n\\[a + b + c = 7 + (-2) + c = 5 + c.\\]\n\n"
        "Thus, the final answer is:\n\\[\\boxed{5 + c}.\\]"
    )
    g = grade(item, build_prompt(item, "direct"), output)
    assert (g.extracted_answer, g.parse_status, g.correct, g.correct_lenient) == ("5 + c", PARSED, False, False)
    for wrong in ("5c", "c + 5", "5 + x", "\\frac{5}{c}", "x = 5 + c"):
        assert not math_equal("5", wrong), wrong
    for right in ("5", "x = 5", "5 \\text{ cm}", "5 cm", "5cm", "\\frac{10}{2}"):
        assert math_equal("5", right), right
    assert math_equal("5 + c", "c + 5")  # a symbolic reference keeps symbolic answers


def test_units_after_a_matching_number():
    assert [
        strip_units(s)
        for s in ("230 miles", "6 \\text{ inches}", "\\frac{3}{2} \\mathrm{cm}^2", "18 dollars", "5 + c", "x^2", "230")
    ] == ["230", "6", "\\frac{3}{2}", "18", "5 + c", "x^2", "230"]
    item = Item("gsm8k/0016", "gsm8k", MATH, "easy", "...", "230")
    assert grade(item, DIRECT, "\\boxed{230 miles}") == Grade("230 miles", True, PARSED)
    assert grade(item, DIRECT, "\\boxed{231 miles}") == Grade("231 miles", False, PARSED)
    assert grade(item, DIRECT, "The answer is 230 miles per day.") == Grade("230", True, PARSED)


@pytest.mark.parametrize(
    "form",
    [
        "The letter of the correct choice is {}.",
        "So the correct choice is {}",
        "({})",
        "Answer: {}",
        "\\boxed{{{}}}",
        "**{}**",
        "The correct option is ({}) because",
        "\\boxed{{\\text{{{}}}}}",
        "Final answer: **{}**",
    ],
)
def test_gpqa_usual_letter_forms(form):
    prompt = build_prompt(GPQA, "direct", seed=3)
    wrong = next(k for k in prompt.choice_letters if k != prompt.correct_letter)
    for letter, correct in ((prompt.correct_letter, True), (wrong, False)):
        g = grade(GPQA, prompt, "Some working.\n\n" + form.format(letter))
        assert (g.extracted_answer, g.parse_status, g.correct) == (letter, PARSED, correct), form


def test_gpqa_only_the_items_letters_count():
    prompt = build_prompt(GPQA, "direct", seed=3)
    assert set(prompt.choice_letters) == set("ABCD")
    for text in ("\\boxed{E}", "Answer: E", "The correct choice is F.", "(E)", "**E**"):
        assert grade(GPQA, prompt, text).parse_status == UNPARSED, text


def _gpqa(item_id: str, mode: str):
    item = next(it for it in load_dataset("gpqa-diamond", limit=40) if it.id == item_id)
    return item, build_prompt(item, mode, seed=0)


def test_gpqa_real_letter_phrase():
    # reports/gpu-h100/pilot-c32/qwen2.5-coder-0.5b__gpqa-diamond__reasoning__mt256__batch32__r0, gpqa-diamond/0028
    item, prompt = _gpqa("gpqa-diamond/0028", "reasoning")
    output = (
        "Therefore, the most probable mutation that will eliminate the anti-nutritional compound in the cultivar "
        "is Mutant 2.\n</think>\nThe letter of the correct choice is B."
    )
    assert prompt.correct_letter == "A"  # the recorded reference
    assert grade(item, prompt, output) == Grade("B", False, PARSED)


def test_gpqa_restated_options_are_no_answer():
    # reports/gpu-h100/pilot-c32/qwen2.5-coder-0.5b__gpqa-diamond__reasoning__mt512__batch32__r0, gpqa-diamond/0010
    item, prompt = _gpqa("gpqa-diamond/0010", "reasoning")
    output = (
        "Both SARS-CoV and SARS-CoV-2 Programmed -1 Frameshift Signals show two conformations when under tension, "
        "similar to other pseudoknots that induce comparable frameshifting rates.\n\n"
        "D) Programmed ribosomal frameshifting creates two polyproteins near to 5` end of the genome by moving back "
        "by 1 nucleotide with the help of slippery nucleot"
    )
    assert grade(item, prompt, output).parse_status == UNPARSED  # in the thinking
    assert grade(item, prompt, "</think>" + output).parse_status == UNPARSED  # as the answer
    # every option restated, in the forms a model writes them: still no answer, not "D"
    for label in ("{}) ", "({}) ", "**{})** ", "Option {}: "):
        listing = "\n".join(label.format(k) + v for k, v in prompt.choice_letters.items())
        g = grade(item, prompt, "</think>The options are:\n" + listing)
        assert g.parse_status == UNPARSED, (label, g)
    # a restatement followed by a stated answer: the answer
    # (reports/cpu-2core/pilot/qwen2.5-coder-0.5b__gpqa-diamond__reasoning__mt256__batch8__r0, gpqa-diamond/0000)
    item, prompt = _gpqa("gpqa-diamond/0000", "reasoning")
    output = (
        "Now, let's compare this difference to the given options:\nA) 10^-11 eV\nB) 10^-9 eV\nC) 10^-8 eV\n"
        "D) 10^-4 eV\n\nSince the difference in their lifetimes is the same as the difference in their energies, "
        "the only option that fits this criterion is:\n\\boxed{A}"
    )
    assert grade(item, prompt, output) == Grade("A", prompt.correct_letter == "A", ANSWER_IN_THINK)


def test_gpqa_letters_in_thinking_are_not_weak_answers():
    # reports/gpu-h100/pilot-c32/qwen2.5-coder-0.5b__gpqa-diamond__reasoning__mt256__batch32__r0, gpqa-diamond/0008
    # (cut by the budget): "(C)" and "(H)" are elements, not choices
    item, prompt = _gpqa("gpqa-diamond/0008", "reasoning")
    output = (
        "**Benzo[1,2-c:3,4-c':5,6-c'']trifuran-1,3,4,6,7,9-hexaone (B1,2C3,4C5,6C7,9H):**\n- Carbon (C) has three "
        "bonds.\n- Hydrogen (H) has two bonds.\n- Nitrogen (N) has two bonds.\n- C4h symmetry: This is because each"
    )
    assert grade(item, prompt, output) == Grade(None, False, UNPARSED)


def test_grading_stays_fast_on_long_outputs():
    # a 4096-token budget is about 16k characters: grading it must not be the slow part of a run
    import time

    long_think = "Let me compute 12 * 7 = 84, (B) is out, option C maybe. " * 300
    start = time.perf_counter()
    for _ in range(20):
        grade(GSM, REASONING, long_think + "so \\boxed{18}")
        grade(GPQA, build_prompt(GPQA, "reasoning"), long_think)
    assert (time.perf_counter() - start) / 40 < 0.1


def test_a_direct_answer_that_is_only_a_number():
    """Real direct-mode outputs of qwen2.5-coder-0.5b (reports/gpu-h200/pilot, gsm8k direct 256):
    the whole answer is a bare number. It is the answer (right or wrong), never "unparsed"; a
    number inside a sentence or inside the thinking is not taken by this rule."""
    assert grade(GSM, DIRECT, "18") == Grade("18", True, PARSED)
    assert grade(GSM, DIRECT, "5") == Grade("5", False, PARSED)
    assert grade(GSM, DIRECT, " 18 dollars.\n") == Grade("18", True, PARSED)
    assert grade(GSM, DIRECT, "I think 18 or 19").parse_status == UNPARSED
    assert grade(GSM, REASONING, "<think>18").parse_status == UNPARSED


def test_the_grading_process_grades_as_grade_does_in_its_own_process():
    """GradingProcess (the runner's): the same verdicts as `grade`, from another process."""
    import os

    from rllm_study.workloads.grading import GradingProcess

    cases = [
        (GSM, REASONING, "<think>6 * 3</think> The answer is \\boxed{18}."),
        (GSM, REASONING, "<think>so 17</think> \\boxed{17}"),
        (GPQA, build_prompt(GPQA, "reasoning"), "<think>hmm</think> The answer is (B)."),
        (GSM, DIRECT, "I think 18 or 19"),
    ]
    grader = GradingProcess()
    try:
        assert [grader.grade(*c) for c in cases] == [grade(*c) for c in cases]
        assert grader.worker_pid() != os.getpid()
    finally:
        grader.close()


def _alive(pid: int) -> bool:
    """Running; on Linux a zombie left unreaped by whoever adopted it counts as gone."""
    import os

    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/status") as f:
                return "\tZ" not in next(line for line in f if line.startswith("State:"))
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_grading_child_leaves_when_its_run_is_killed():
    """A run killed with -9 takes its grading child with it (within about a second)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, time; from rllm_study.workloads.grading import GradingProcess; "
        "g = GradingProcess(); print(g.worker_pid(), flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        if not _alive(child):
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError(f"grading child {child} outlived its killed parent by 10 s")
