"""OpenAI-compatible servers over HTTP (llama-server, vLLM, SGLang, mlx_lm.server): the engine
(`engine`) and the servers' own telemetry (`telemetry`).

`from rllm_study.backends.openai_http import OpenAIEngine` is a public path for scripting."""

from rllm_study.backends.openai_http.engine import OpenAIEngine

__all__ = ["OpenAIEngine"]
