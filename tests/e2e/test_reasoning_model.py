"""The real-reasoning-model path end to end, on a tiny model with DeepSeek-R1-Distill's real
tokenizer and chat template and random weights (tests/tiny_r1.py): `<think>`/`</think>` as single
tokens, the native prompt mode, phases by token id, the think budget forced by token id, grading,
through `rllm-study run` and `rllm-study report`."""

from __future__ import annotations

import json

import pytest

from conftest import THREADS, run_cli
from rllm_study.backends.base import ANSWER, THINK
from rllm_study.backends.phases import PhaseTracker
from rllm_study.models import gguf_facts
from rllm_study.running.results import read_cell
from tiny_r1 import THINK_CLOSE_ID, THINK_OPEN_ID

CUE = "\\n\\nThe final answer is $\\\\boxed{"  # TOML escapes: the engine writes "...$\boxed{" (no answer in it)
# The model's own output, shaped by a grammar: thinking that holds a decoy answer (7), then an answer phase
# where the model itself picks 18 or 19 (random weights: its greedy choice, whichever it is).
GRAMMAR = r"""root ::= "Check \\boxed{7} then answer" "</think>" "\n\nThe answer is " ("18" | "19") "."
"""
TEMPLATES = f'''
[native]
system = ""
math = "{{problem}}\\n\\nPlease reason step by step, and put your final answer within \\\\boxed{{}}."
choice = "{{problem}}\\n\\n{{choices}}\\n\\nPut the letter of the correct choice within \\\\boxed{{}}."
assistant_prefix = ""
answer_cue = "{CUE}"
grammar_math = "r1.gbnf"
'''
EGGS = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market?"
)


@pytest.fixture(scope="module")
def model(tiny_r1_path):
    from rllm_study.backends.llama_cpp.engine import LlamaModel

    m = LlamaModel(tiny_r1_path)
    yield m
    m.close()


def test_tiny_model_carries_the_real_tokenizer_and_template(model, tiny_r1_path):
    assert (model.think_open_id, model.think_close_id) == (THINK_OPEN_ID, THINK_CLOSE_ID)
    assert model.tokenize("<think>", add_special=False) == [THINK_OPEN_ID]
    prompt = model.apply_chat_template([{"role": "user", "content": "What is 2+3?"}])
    assert prompt == "<｜User｜>What is 2+3?<｜Assistant｜>"
    facts = gguf_facts(tiny_r1_path)
    assert facts["reasoning"] and facts["think_token_ids"] == [THINK_OPEN_ID, THINK_CLOSE_ID]


def test_phases_split_by_token_id(model):
    tokens = model.tokenize("a sum</think>The answer", add_special=False)
    assert THINK_CLOSE_ID in tokens
    tracker = PhaseTracker(True, model.think_open_id, model.think_close_id)
    phases = [tracker.feed(t, "") for t in tokens]  # no text at all: the ids alone decide
    cut = tokens.index(THINK_CLOSE_ID)
    assert phases == [THINK] * (cut + 1) + [ANSWER] * (len(tokens) - cut - 1)


def test_native_run_with_think_budget_grading_and_report(tmp_path, tiny_r1_path, model):
    """Two think budgets over one question twice, with references 18 and 19. Budget 8: the engine
    closes the thinking by id and feeds a cue that holds no answer; the model's own answer is noise,
    so nothing is graded right. Budget 40: the grammar lets the model close the thinking itself and
    pick 18 or 19 in its answer phase; grading must read that answer (not the decoy 7 in the
    thinking), so exactly the item whose reference the model chose is right."""
    (tmp_path / "native.toml").write_text(TEMPLATES)
    (tmp_path / "r1.gbnf").write_text(GRAMMAR)
    (tmp_path / "eggs.jsonl").write_text(
        "".join(json.dumps({"question": EGGS, "answer": a}) + "\n" for a in ("18", "19"))
    )
    (tmp_path / "spec.toml").write_text(f'''
name = "r1-tiny"
models = ["{tiny_r1_path}"]
prompt_modes = ["native"]
max_tokens = [40]
think_budget = [8, 40]
grammar = true
templates = "{tmp_path / "native.toml"}"
[datasets]
eggs = {{ path = "{tmp_path / "eggs.jsonl"}", n = 2 }}
[sampling]
temperature = 0.0
[workload]
arrival = "batch"
batch_size = 2
''')
    out = tmp_path / "runs"
    proc = run_cli("run", tmp_path / "spec.toml", "-t", THREADS, "--out", out)
    assert proc.returncode == 0, proc.stderr
    cells = {int(p.name.split("__tb")[1].split("__")[0]): read_cell(p) for p in out.iterdir() if p.is_dir()}
    assert sorted(cells) == [8, 40]
    forced = 1 + len(model.tokenize("\n\nThe final answer is $\\boxed{", add_special=False))
    for r in cells[8].requests:
        # the template does not open <think>: the runner added "<think>\n", so output starts thinking; the
        # grammar's thinking is longer than 8 tokens, so the engine closed it, by id: </think> is one forced token
        assert r["think_forced"] and r["forced_tokens"] == forced
        assert r["think_tokens"] == 8 and r["answer_tokens"] == 32 and r["first_answer_token_s"] is not None
        assert cells[8].tokens[r["id"]]["phase"] == "t" * 8 + "a" * 32
        assert "</think>\n\nThe final answer is $\\boxed{" in r["output_text"]
        # the cue names no answer and the model's own (no longer grammar-bound) output is noise
        assert (r["extracted_answer"], r["parse_status"], r["correct"]) == (None, "unparsed", False), r["output_text"]
    chosen = set()
    for r in cells[40].requests:
        assert not r["think_forced"] and r["forced_tokens"] == 0
        think, answer = r["output_text"].split("</think>")
        assert "\\boxed{7}" in think and answer in ("\n\nThe answer is 18.", "\n\nThe answer is 19.")
        phase = cells[40].tokens[r["id"]]["phase"]
        assert phase == "t" * r["think_tokens"] + "a" * r["answer_tokens"] and r["answer_tokens"] > 0
        mine = answer[-3:-1]  # what the model wrote in its answer phase
        chosen.add(mine)
        assert (r["extracted_answer"], r["parse_status"]) == (mine, "parsed")
        assert r["correct"] == (r["reference_answer"] == mine)
    assert len(chosen) == 1  # one prompt, greedy: the same choice for both items, so exactly one is right
    assert sorted(r["correct"] for r in cells[40].requests) == [False, True]
    report = tmp_path / "report"
    proc = run_cli("report", out, "--out", report)
    assert proc.returncode == 0, proc.stderr
    md = (report / "report.md").read_text()
    assert "(trained reasoning model)" in md and "answer phase" in md
