"""The real-reasoning-model path end to end, on a tiny model with DeepSeek-R1-Distill's real
tokenizer and chat template and random weights (tests/tiny_r1.py): `<think>`/`</think>` as single
tokens, the native prompt mode, phases by token id, the think budget forced by token id, grading,
through `rllm-study run` and `rllm-study report`."""

from __future__ import annotations

import pytest

from conftest import THREADS, run_cli
from rllm_study.backends.base import ANSWER, THINK
from rllm_study.backends.phases import PhaseTracker
from rllm_study.models import gguf_facts
from rllm_study.running.results import read_cell
from tiny_r1 import THINK_CLOSE_ID, THINK_OPEN_ID

CUE = "\\n\\nThe final answer is $\\\\boxed{18}$."  # TOML escapes: the engine writes "...$\boxed{18}$."
TEMPLATES = f'''
[native]
system = ""
math = "{{problem}}\\n\\nPlease reason step by step, and put your final answer within \\\\boxed{{}}."
choice = "{{problem}}\\n\\n{{choices}}\\n\\nPut the letter of the correct choice within \\\\boxed{{}}."
assistant_prefix = ""
answer_cue = "{CUE}"
'''


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
    (tmp_path / "native.toml").write_text(TEMPLATES)
    (tmp_path / "spec.toml").write_text(f'''
name = "r1-tiny"
models = ["{tiny_r1_path}"]
prompt_modes = ["native"]
max_tokens = [24]
think_budget = [8]
templates = "{tmp_path / "native.toml"}"
[datasets]
gsm8k = 2
[sampling]
temperature = 0.0
[workload]
arrival = "batch"
batch_size = 2
''')
    out = tmp_path / "runs"
    proc = run_cli("run", tmp_path / "spec.toml", "-t", THREADS, "--out", out)
    assert proc.returncode == 0, proc.stderr
    (cell_dir,) = [p for p in out.iterdir() if p.is_dir()]
    cell = read_cell(cell_dir)
    forced = 1 + len(model.tokenize("\n\nThe final answer is $\\boxed{18}$.", add_special=False))
    for r in cell.requests:
        # the template does not open <think>: the runner added "<think>\n", so output starts thinking;
        # random weights never close it, so the engine did, by id: </think> is one forced token
        assert r["think_forced"] and r["forced_tokens"] == forced
        assert r["think_tokens"] == 8 and r["answer_tokens"] == 16 and r["first_answer_token_s"] is not None
        assert cell.tokens[r["id"]]["phase"] == "t" * 8 + "a" * 16
        assert "</think>\n\nThe final answer is $\\boxed{18}$." in r["output_text"]
        assert r["extracted_answer"] == "18" and r["parse_status"] == "parsed"
    assert {r["item_id"]: r["correct"] for r in cell.requests} == {"gsm8k/0000": True, "gsm8k/0001": False}
    report = tmp_path / "report"
    proc = run_cli("report", out, "--out", report)
    assert proc.returncode == 0, proc.stderr
    md = (report / "report.md").read_text()
    assert "(trained reasoning model)" in md and "answer phase" in md
