"""mlx_lm.server (mlx-lm on the Linux CPU) live through `--backend openai` (issue 29, Deliver 6):
chat mode through `generate` (which used to stop at "no tokenizer endpoint known"), and
completions mode checked token for token against the in-process MLX engine on the same prompt.

mlx_lm.server answers GET /v1/models only when HF_HUB_CACHE names an existing folder (it lists
the hub cache); the fixture sets one, as docs/peers.md tells users to."""

from __future__ import annotations

import os
import sys

import pytest

from conftest import drain, require_module, run_cli

require_module("mlx_lm")

from rllm_study.backends.base import Request, SamplingParams  # noqa: E402
from rllm_study.backends.mlx.convert import convert_gguf  # noqa: E402
from rllm_study.backends.mlx.engine import MlxEngine  # noqa: E402
from rllm_study.backends.openai_http.engine import OpenAIEngine  # noqa: E402
from rllm_study.backends.options import MlxOptions, OpenAIOptions  # noqa: E402
from rllm_study.bench.server import free_port, serve  # noqa: E402

pytestmark = pytest.mark.mlx
PROMPT = "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smollm2_mlx(smollm2_path):
    return convert_gguf(smollm2_path)


@pytest.fixture(scope="module")
def mlx_server(smollm2_mlx, tmp_path_factory):
    hub = tmp_path_factory.mktemp("hf-hub")
    port = free_port()
    env_before = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(hub)  # inherited by the server process
    try:
        cmd = [
            sys.executable,
            "-m",
            "mlx_lm.server",
            "--model",
            str(smollm2_mlx),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--temp",
            "0",
        ]
        with serve(cmd, port, tmp_path_factory.mktemp("mlx-server") / "log", "/v1/models") as (_, url):
            yield url
    finally:
        if env_before is None:
            os.environ.pop("HF_HUB_CACHE", None)
        else:
            os.environ["HF_HUB_CACHE"] = env_before


def test_generate_in_chat_mode(mlx_server):
    proc = run_cli(
        "generate",
        "--backend",
        "openai",
        "--base-url",
        mlx_server + "/v1/chat/completions",
        "-n",
        "8",
        "-p",
        "What is 2+2?",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no tokenizer endpoint" not in proc.stderr
    assert "aggregate output throughput" in proc.stdout + proc.stderr


def test_completions_mode_matches_the_in_process_engine(mlx_server, smollm2_mlx):
    remote = OpenAIEngine("", OpenAIOptions(base_url=mlx_server, timeout_s=600, telemetry_period_s=0))
    remote.submit(Request("r", PROMPT, SamplingParams(max_tokens=12)))
    served = drain(remote)["r"]["finish"]
    remote.close()
    local = MlxEngine(str(smollm2_mlx), MlxOptions(max_seqs=1, ctx_per_seq=256))
    local.submit(Request("r", PROMPT, SamplingParams(max_tokens=12)))
    ours = drain(local)["r"]["finish"]
    local.close()
    assert served.error is None and served.reason in ("stop", "length")
    assert served.output_text == ours.output_text
    assert served.output_tokens == ours.output_tokens  # the server's usage count = our engine's tokens
