"""MLX through mlx-lm: the engine (`engine`), GGUF -> MLX conversion (`convert`) and the quantized
KV cache (`kv`).

Importing this package (which importing any of its modules does first) loads OpenBLAS on Linux
before mlx is imported: see `preload_openblas`. `from rllm_study.backends.mlx import MlxEngine`
is a public path for scripting; it is resolved on first use, so importing `convert` does not
import mlx."""

from __future__ import annotations

import ctypes
import sys


def preload_openblas() -> bool:
    """On Linux, load OpenBLAS globally before mlx so mlx-cpu's matmuls use it instead of its
    bundled reference BLAS (docs/engines.md, MLX: how much faster). Returns whether it is loaded
    for mlx: False off Linux, when libopenblas.so.0 is absent, or when mlx.core was imported
    first (too late: code that imports mlx itself must import this package before it)."""
    if not sys.platform.startswith("linux") or "mlx.core" in sys.modules:
        return False
    try:
        ctypes.CDLL("libopenblas.so.0", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


OPENBLAS = preload_openblas()


def __getattr__(name: str):
    if name == "MlxEngine":
        from rllm_study.backends.mlx.engine import MlxEngine

        return MlxEngine
    raise AttributeError(name)
