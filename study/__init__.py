"""rllm-study: the reasoning-LLM serving study on edge engines."""

__version__ = "0.1.0"
