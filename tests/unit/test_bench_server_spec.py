"""`bench server`'s workload: every side runs the same requests, so none carries a think budget
(llama-server's completions API, which the server sides use, takes none)."""

from __future__ import annotations

import pytest

from rllm_study.bench.server import server_url, side_spec, workload_spec
from rllm_study.errors import UserError
from rllm_study.running.spec import expand, load_spec


def test_workload_has_no_think_budget_on_any_side():
    preset, _ = load_spec(preset="realworld")
    assert preset.get("think_budget"), "the realworld preset sets a think budget; this test checks it is dropped"
    spec = workload_spec("qwen2.5-coder-0.5b", "gsm8k", 8, 256, 4.0, 2.0, 4, 2, 0, None)
    assert "think_budget" not in spec
    for backend, url in (("llama_cpp", None), ("openai", "http://127.0.0.1:1")):
        side = side_spec(spec, backend, url, default_samplers=False)
        assert [cell.think_budget for cell in expand(side, "bench server")] == [None]
    assert spec["max_tokens"] == [256] and spec["workload"] == {"arrival": "gamma", "rate": 4.0, "cv": 2.0}


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:1"])
def test_a_base_url_nothing_answers_is_refused_before_any_side_runs(url, tmp_path):
    with (
        pytest.raises(UserError, match="no server answers"),
        server_url(url, None, "smollm2-135m", None, tmp_path / "log"),
    ):
        pass
