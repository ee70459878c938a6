"""llama.cpp in process (llama-cpp-python's low-level API): the engine (`engine`), prefix reuse
across requests (`prefix`) and speculative drafters (`drafters`, one module per method).

`from rllm_study.backends.llama_cpp import LlamaCppEngine` is a public path for scripting."""

from rllm_study.backends.llama_cpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
