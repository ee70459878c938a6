"""Prompt modes, the seeded multiple-choice shuffle, user templates, and the GBNF grammars
checked token by token against a real model's vocabulary."""

import ctypes
import json
import math
from collections import Counter

import pytest

from conftest import run_cli
from rllm_study.errors import UserError
from rllm_study.workloads.datasets import MATH, Item, load_dataset
from rllm_study.workloads.prompts import PROMPT_MODES, build_prompt, ends_in_think, open_thinking

GSM = Item("gsm8k/0000", "gsm8k", MATH, "easy", "What is {choices} + 1?", "2")


@pytest.fixture(scope="module")
def gpqa():
    return load_dataset("gpqa-diamond")


def test_modes():
    reasoning, direct, native = (build_prompt(GSM, m) for m in PROMPT_MODES)
    assert reasoning.assistant_prefix == "<think>\n" and reasoning.starts_in_think
    assert [m["role"] for m in reasoning.messages] == ["system", "user"] and "<think>" in reasoning.messages[0][
        "content"
    ]
    assert not direct.starts_in_think and direct.assistant_prefix == ""
    assert [m["role"] for m in native.messages] == ["user"] and not native.starts_in_think
    for p in (reasoning, direct, native):
        assert p.messages[-1]["content"].startswith("What is {choices} + 1?")  # problem text is not a template
        assert "\\boxed{}" in p.messages[-1]["content"] and p.grammar is None and p.choice_letters is None


def test_ends_in_think():
    assert ends_in_think("<|im_start|>assistant\n<think>\n")
    assert not ends_in_think("Think inside <think> and </think>.<|im_start|>assistant\n")
    assert not ends_in_think("<think>done</think>")


def test_open_thinking_leaves_chat_mode_messages_alone():
    """A chat-mode server's prompt is a JSON message list: appending `<think>` to it used to turn
    it into one user message holding the JSON (seen live on vLLM with a <think> vocabulary)."""
    assert open_thinking("<|im_start|>assistant\n", True) == ("<|im_start|>assistant\n<think>\n", True)
    messages = json.dumps([{"role": "user", "content": "hi"}])
    assert open_thinking(messages, True) == (messages, False)


def test_an_assistant_prefix_to_a_chat_mode_server_is_a_user_error():
    """The reasoning mode's "<think>\n" prefix cannot follow a chat-mode message list; it used to
    be glued onto the JSON and sent as one user message."""
    from types import SimpleNamespace

    from rllm_study.running.runner import render

    class ChatServer:
        def apply_chat_template(self, messages):
            return json.dumps(messages)

    cell = SimpleNamespace(name="c", prompt_mode="reasoning")
    with pytest.raises(UserError, match="chat-mode server cannot take"):
        render(cell, ChatServer(), build_prompt(GSM, "reasoning"), [{"role": "user", "content": "hi"}], True)
    cell = SimpleNamespace(name="c", prompt_mode="native")
    text, prompt = render(cell, ChatServer(), build_prompt(GSM, "native"), [{"role": "user", "content": "hi"}], True)
    assert json.loads(text) == [{"role": "user", "content": "hi"}] and not prompt.starts_in_think


def test_gpqa_shuffle_is_seeded_per_item(gpqa):
    prompts = [build_prompt(i, "reasoning", seed=3) for i in gpqa]
    assert prompts == [build_prompt(i, "reasoning", seed=3) for i in gpqa]
    assert [p.correct_letter for p in prompts] != [build_prompt(i, "reasoning", seed=4).correct_letter for i in gpqa]
    for item, p in zip(gpqa, prompts):
        assert sorted(p.choice_letters.values()) == sorted(item.choices)
        assert p.choice_letters[p.correct_letter] == item.answer
        assert "\n".join(f"{k}) {v}" for k, v in p.choice_letters.items()) in p.messages[-1]["content"]
    # an item's order does not depend on which other items were loaded
    assert build_prompt(gpqa[5], "direct", seed=3).choice_letters == prompts[5].choice_letters
    # the correct answer is not stuck on one letter: each gets roughly a quarter of 198
    assert min(Counter(p.correct_letter for p in prompts).values()) > 30


def test_user_templates_override_some_modes(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        '[direct]\nsystem = ""\nmath = "Q: {problem}\\nA:"\nchoice = "{problem}\\n{choices}"\nassistant_prefix = ""\n',
        encoding="utf-8",
    )
    direct = build_prompt(GSM, "direct", templates=path)
    assert direct.messages == [{"role": "user", "content": "Q: What is {choices} + 1?\nA:"}]
    assert build_prompt(GSM, "reasoning", templates=path) == build_prompt(GSM, "reasoning")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[direct]\nsystem = ""\nmath = "no placeholder"\nchoice = "{problem}{choices}"\nassistant_prefix = ""\n',
            "math in .* must contain {problem}",
        ),
        (
            '[direct]\nsystem = ""\nmath = "{problem}"\nchoice = "{problem}"\nassistant_prefix = ""\n',
            "must contain {choices}",
        ),
        ('[direct]\nsystem = ""\nmath = "{problem}"\nchoice = "{problem}{choices}"\n', "needs assistant_prefix"),
        ('[direct]\nsystm = ""\n', "unknown key 'systm'"),
        ('[chain]\nsystem = ""\n', r"unknown mode \[chain\]"),
        ("[direct\n", "not valid TOML"),
    ],
)
def test_bad_templates(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        build_prompt(GSM, "direct", templates=path)


def test_template_and_grammar_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read prompt templates"):
        build_prompt(GSM, "direct", templates=tmp_path / "missing.toml")
    with pytest.raises(UserError, match="unknown prompt mode 'cot'"):
        build_prompt(GSM, "cot")
    with pytest.raises(UserError, match="no grammar_math file"):
        build_prompt(GSM, "direct", grammar=True)
    path = tmp_path / "t.toml"
    path.write_text(
        '[reasoning]\nsystem = ""\nmath = "{problem}"\nchoice = "{problem}{choices}"\nassistant_prefix = "<think>\\n"\n'
        'grammar_math = "mine.gbnf"\n',
        encoding="utf-8",
    )
    with pytest.raises(UserError, match="cannot read grammar file .*mine.gbnf"):
        build_prompt(GSM, "reasoning", templates=path, grammar=True)
    (tmp_path / "mine.gbnf").write_text('root ::= "x"\n', encoding="utf-8")  # relative to the TOML file
    assert build_prompt(GSM, "reasoning", templates=path, grammar=True).grammar == 'root ::= "x"\n'


@pytest.fixture(scope="module")
def vocab_model(smollm2_path):
    from rllm_study.backends.llama_cpp.engine import LlamaModel

    model = LlamaModel(smollm2_path)
    yield model
    model.close()


def _grammar_accepts(model, grammar: str, output: str, then_eos: bool = False) -> bool:
    """Feed `output` token by token through llama.cpp's grammar sampler: False as soon as the
    grammar gives a token -inf (forbids it); with then_eos, EOS must be allowed at the end."""
    import llama_cpp as lc

    sampler = lc.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    assert sampler, "grammar does not parse"
    try:
        tokens = model.tokenize(output, add_special=False) + ([lc.llama_vocab_eos(model.vocab)] if then_eos else [])
        for token in tokens:
            data = (lc.llama_token_data * 1)(lc.llama_token_data(token, 0.0, 0.0))
            lc.llama_sampler_apply(sampler, ctypes.byref(lc.llama_token_data_array(data, 1, -1, False)))
            if math.isinf(data[0].logit):
                return False
            lc.llama_sampler_accept(sampler, token)
        return True
    finally:
        lc.llama_sampler_free(sampler)


def test_grammars_force_think_then_answer(vocab_model, gpqa):
    math_grammar = build_prompt(GSM, "reasoning", grammar=True).grammar
    good = "1 + 1 = 2, and 2 < 3.\n</think>\n\nThe final answer is $\\boxed{\\frac{4}{2}}$."
    assert _grammar_accepts(vocab_model, math_grammar, good, then_eos=True)
    assert not _grammar_accepts(vocab_model, math_grammar, "It is 2.\n</think>\n\nThe answer is 2.")
    assert not _grammar_accepts(vocab_model, math_grammar, "no </div> tags while thinking</think>")
    choice_grammar = build_prompt(gpqa[0], "reasoning", grammar=True).grammar
    assert _grammar_accepts(vocab_model, choice_grammar, "Hmm.\n</think>\n\nThe answer is \\boxed{C}.", then_eos=True)
    assert not _grammar_accepts(vocab_model, choice_grammar, "Hmm.\n</think>\n\nThe answer is \\boxed{E}.")


def test_cli_shows_prompts(tmp_path):
    done = run_cli("datasets", "show", "gpqa-diamond", "-n", "1", "--prompt", "reasoning", "--seed", "2", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["prompt"]["choice_letters"][shown["prompt"]["correct_letter"]] == shown["answer"]
    (tmp_path / "bad.toml").write_text("[direct\n", encoding="utf-8")
    done = run_cli("datasets", "show", "gsm8k", "--prompt", "direct", "--templates", str(tmp_path / "bad.toml"))
    assert done.returncode == 2 and done.stderr.startswith("error: prompt templates")
