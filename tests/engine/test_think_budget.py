"""Think budget: when the engine closes the thinking (RequestOutput, the one home of the rule),
on the real llama.cpp engine (SmolLM2, prompted), in specs, and through `run` + `report`."""

from __future__ import annotations

import pytest

from conftest import REPO, THREADS, chat, drain
from rllm_study.backends.base import ANSWER, FINISH_LENGTH, FINISH_STOP, THINK, Request, SamplingParams
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.backends.output import CLOSE_THINK, RequestOutput
from rllm_study.backends.phases import THINK_CLOSE, PhaseTracker
from rllm_study.errors import UserError
from rllm_study.report import write_report
from rllm_study.running.results import read_cell
from rllm_study.running.spec import expand
from scripted_engine import Script, run_scripted

CUE = "\n\nThe final answer is $\\boxed{"


def _out(budget, max_tokens=10, close_id=None):
    req = Request("r", "p", SamplingParams(max_tokens, think_budget=budget), starts_in_think=True, answer_cue=CUE)
    return RequestOutput(req, 3, PhaseTracker(True, None, close_id))


def _tokenize(text):  # a stand-in tokenizer for the rule tests: one id per character
    return [1000 + ord(ch) for ch in text]


def test_budget_reached_closes_once_and_the_rest_is_answer():
    out = _out(budget=3)
    reasons = [out.add(t, "x", 0, False)[1] for t in (1, 2)]
    assert reasons == [None, None]
    assert out.add(3, "y", 0, False)[1] == CLOSE_THINK
    fed = out.close_thinking(_tokenize, None)
    assert fed == [3] + _tokenize(THINK_CLOSE + CUE)  # the 3rd think token is fed, then the close
    assert out.text == "xxy" + THINK_CLOSE + CUE
    event, reason = out.add(4, "7", 0, False)
    assert event.phase == ANSWER and reason is None
    for t in range(5, 11):  # never closed twice; max_tokens still ends it
        reason = out.add(t, "}", 0, False)[1]
    assert reason == FINISH_LENGTH
    fin = out.finished(reason, 0)
    assert fin.think_forced and fin.forced_tokens == len(_tokenize(THINK_CLOSE + CUE))
    assert (fin.think_tokens, fin.answer_tokens, fin.output_tokens) == (3, 7, 10)
    assert out.fed_tokens() == [1, 2, 3, *_tokenize(THINK_CLOSE + CUE), *range(4, 11)]


def test_end_of_generation_while_thinking_closes_and_is_not_fed():
    out = _out(budget=100, close_id=77)
    out.add(1, "a", 0, False)
    event, reason = out.add(2, "", 0, True)  # EOS inside the think block
    assert reason == CLOSE_THINK and event.phase == THINK
    fed = out.close_thinking(_tokenize, 77)
    assert fed == [77] + _tokenize(CUE)  # the single </think> token by id, no EOS
    out.add(5, "4", 0, False)
    assert out.fed_tokens() == [1, 77, *_tokenize(CUE), 5]
    assert out.add(6, "", 0, True)[1] == FINISH_STOP  # in the answer phase an EOS ends it


def test_no_budget_or_no_room_never_closes():
    plain = _out(budget=None)
    assert [plain.add(t, "x", 0, False)[1] for t in range(3)] == [None, None, None]
    assert plain.add(9, "", 0, True)[1] == FINISH_STOP
    full = _out(budget=2, max_tokens=2)
    full.add(1, "x", 0, False)
    assert full.add(2, "x", 0, False)[1] == FINISH_LENGTH  # the budget is spent: no room to answer
    eos_last = _out(budget=5, max_tokens=2)
    eos_last.add(1, "x", 0, False)
    assert eos_last.add(2, "", 0, True)[1] == FINISH_STOP
    assert not eos_last.finished(FINISH_STOP, 0).think_forced


def test_model_closing_itself_is_not_forced():
    out = _out(budget=4)
    out.add(1, "x", 0, False)
    out.add(2, THINK_CLOSE, 0, False)  # the model writes </think> itself
    assert [out.add(t, "a", 0, False)[1] for t in (3, 4, 5)] == [None, None, None]
    assert not out.finished(FINISH_STOP, 0).think_forced


@pytest.fixture(scope="module")
def engine(smollm2_path):
    from rllm_study.backends.llama_cpp.engine import LlamaCppEngine

    eng = LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=4, ctx_per_seq=512, n_threads=THREADS))
    yield eng
    eng.close()


def _reasoning_prompt(engine, question):
    return chat(engine, question + " Think inside <think> </think> first.") + "<think>\n"


@pytest.mark.parametrize("budget", [6, 13])
def test_llama_engine_closes_at_the_budget_and_the_model_answers(engine, budget):
    reqs = [
        Request(f"q{i}", _reasoning_prompt(engine, q), SamplingParams(40, think_budget=budget), True, answer_cue=CUE)
        for i, q in enumerate(["What is 2+3?", "Name a prime number above 10."])
    ]
    for r in reqs:
        engine.submit(r)
    out = drain(engine)
    forced = engine.model.tokenize(THINK_CLOSE + CUE, add_special=False)
    for r in reqs:
        fin = out[r.id]["finish"]
        phases = [e.phase for e in out[r.id]["events"] if hasattr(e, "phase")]
        assert fin.think_forced and fin.forced_tokens == len(forced)
        assert phases == [THINK] * budget + [ANSWER] * (len(phases) - budget) and fin.answer_tokens > 0
        assert fin.output_tokens == len(out[r.id]["tokens"]) == budget + fin.answer_tokens  # forced tokens not counted
        think_text = engine.model.detokenize(out[r.id]["tokens"][:budget])
        assert fin.output_text.startswith(think_text + THINK_CLOSE + CUE)


def test_llama_engine_feeds_the_forced_close_to_the_model(engine):
    """Greedy: the answer after a forced close equals the greedy continuation of the prompt with
    the think tokens and the close written into it (the close was really fed)."""
    prompt = _reasoning_prompt(engine, "What is 2+3?")
    engine.submit(Request("f", prompt, SamplingParams(20, think_budget=5), True, answer_cue=CUE))
    got = drain(engine)["f"]
    think = engine.model.detokenize(got["tokens"][:5])
    engine.submit(Request("g", prompt + think + THINK_CLOSE + CUE, SamplingParams(3), False))
    ref = drain(engine)["g"]
    assert got["tokens"][5:8] == ref["tokens"][:3]


def test_llama_engine_end_of_generation_while_thinking_forces_an_answer(engine):
    # A prompt that SmolLM2 answers in a few tokens: it ends (EOS) without ever writing </think>.
    prompt = chat(engine, "Say only the word yes.") + "<think>\n"
    engine.submit(Request("e", prompt, SamplingParams(60, think_budget=50), True, answer_cue="\n\nAnswer: "))
    fin = drain(engine)["e"]["finish"]
    assert fin.think_forced and 0 < fin.think_tokens < 50 and fin.answer_tokens > 0
    assert THINK_CLOSE + "\n\nAnswer: " in fin.output_text


def test_spec_think_budget_axis(tmp_path):
    spec = {"datasets": {"gsm8k": 2}, "max_tokens": [256, 64], "think_budget": [128, "mt-32"]}
    cells = expand(spec, "t.toml")
    assert [(c.max_tokens, c.think_budget, c.name.split("__")[4]) for c in cells] == [
        (256, 128, "tb128"),
        (256, 224, "tbmt-32"),
        (64, 128, "tb128"),
        (64, 32, "tbmt-32"),
    ]  # mt-32 at 64: half
    for unset in ({}, {"think_budget": "off"}):
        (cell,) = expand({"datasets": {"gsm8k": 2}, **unset}, "t.toml")
        assert cell.think_budget is None and "__tb" not in cell.name
    for bad in (0, "64", "mt32", True):
        with pytest.raises(UserError, match="think_budget"):
            expand({**spec, "think_budget": [bad]}, "t.toml")


def test_run_and_report_with_a_think_budget(tmp_path):
    """The think-budget preset through the runner and the report, on the scripted engine in process (a
    model that would think for 100 tokens); the real engine's close is tested above, and a real model's
    run with a think budget (the pilot's mt-32) in test_runner.py."""
    out = tmp_path / "runs"
    run_scripted(
        out,
        preset="think-budget",
        script=Script(think_words=lambda r: 100),
        overrides=("max_tokens=[48]", "think_budget=[8, 16]", "datasets={gsm8k=2}", "workload.batch_size=2"),
    )
    cells = sorted(p for p in out.iterdir() if p.is_dir())
    assert [c.name.split("__")[4] for c in cells] == ["tb16", "tb8"]
    for c in cells:
        cell = read_cell(c)
        budget = cell.manifest["cell"]["think_budget"]
        for r in cell.requests:
            assert r["think_forced"] and r["think_tokens"] <= budget and r["answer_tokens"] > 0
            assert cell.tokens[r["id"]]["phase"].startswith("t" * r["think_tokens"] + "a")
    report = tmp_path / "report"
    write_report([out], report)
    md = (report / "report.md").read_text()
    section = md[md.index("## Think budget") :]
    assert (
        "answer phase" in section and "think forced" in section and "| 8 | 2 |" in section and "| 16 | 2 |" in section
    )
    assert list((report / "figures").glob("think-budget-*.png"))


def test_direct_cells_take_no_think_budget():
    """The think-budget axis multiplies only the thinking modes: a direct cell runs once, without a
    budget and without a `tb` part in its name; a bad budget value is still refused."""
    cells = expand(
        {
            "datasets": {"gsm8k": 1},
            "prompt_modes": ["reasoning", "direct"],
            "max_tokens": [256],
            "think_budget": [64, "mt-32"],
        },
        "spec.toml",
    )
    direct = [c for c in cells if c.prompt_mode == "direct"]
    assert sorted(c.think_budget for c in cells if c.prompt_mode == "reasoning") == [64, 224]
    assert len(direct) == 1 and direct[0].think_budget is None and "__tb" not in direct[0].name
    with pytest.raises(UserError):
        expand({"datasets": {"gsm8k": 1}, "prompt_modes": ["direct"], "think_budget": [0]}, "spec.toml")


def test_every_preset_gives_its_reasoning_cells_the_pilots_think_budget():
    """A prompted model rarely closes its thinking itself: without a think budget most reasoning
    requests of a technique or load preset never reach an answer phase, so strict accuracy measures
    formatting and TTFVT describes a minority. Every preset with reasoning cells closes the thinking
    32 tokens before the budget, as the pilot does, at every size (the think-budget preset sweeps its own)."""
    from rllm_study.running.spec import SIZES, load_spec, preset_names

    for preset in preset_names():
        if preset == "think-budget":
            continue
        for size in SIZES:
            spec, where = load_spec(preset=preset, size=size)
            reasoning = [c for c in expand(spec, where) if c.prompt_mode == "reasoning"]
            assert reasoning, (preset, size)
            for c in reasoning:
                assert c.think_budget == max(c.max_tokens - 32, -(-c.max_tokens // 2)), (preset, size, c.name)


def test_a_folder_run_before_the_presets_had_a_think_budget_reruns_without_one():
    """`run --like` takes a folder's recorded spec, not today's preset: the committed kv-cache run
    (recorded without a think budget) expands to its own cells again, none with a think budget."""
    from rllm_study.running.spec import recorded_specs

    folder = REPO / "reports" / "cpu-2core" / "kv-cache-gsm8k64"
    (spec, names, where), *rest = recorded_specs(folder)
    assert not rest and "think_budget" not in spec
    cells = expand(spec, where)
    assert sorted(c.name for c in cells) == sorted(names) and len(names) == 3
    assert all(c.think_budget is None and "__tb" not in c.name for c in cells)
