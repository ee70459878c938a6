"""MLX through mlx-lm: the engine (`engine`), GGUF -> MLX conversion (`convert`) and the quantized
KV cache (`kv`).

`from rllm_study.backends.mlx import MlxEngine` is a public path for scripting; it is resolved on
first use, so importing `convert` does not import mlx."""


def __getattr__(name: str):
    if name == "MlxEngine":
        from rllm_study.backends.mlx.engine import MlxEngine

        return MlxEngine
    raise AttributeError(name)
