"""Engine adapters behind one small protocol (`base.Engine`).

`open_engine(backend, ...)` is the one place a backend name becomes an engine object; each
backend module is imported only when asked for, so a missing optional engine (mlx) does not
break the others.
"""

from __future__ import annotations

from rllm_study.errors import UserError

BACKENDS = ("llama_cpp", "mlx", "openai")


def engine_class(backend: str):
    """Return the Engine class for a backend name (`llama_cpp`, `mlx`, `openai`)."""
    name = backend.replace("-", "_").replace(".", "_")
    if name in ("llama_cpp", "llamacpp", "llama"):
        from rllm_study.backends.llama_cpp import LlamaCppEngine

        return LlamaCppEngine
    if name == "mlx":
        from rllm_study.backends.mlx import MlxEngine

        return MlxEngine
    if name in ("openai", "openai_http", "http"):
        from rllm_study.backends.openai_http import OpenAIEngine

        return OpenAIEngine
    raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
