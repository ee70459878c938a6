"""Engine options shared by `generate`, `run` and `bench`: one definition per flag, one builder."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from rllm_study.backends.base import EngineOptions
from rllm_study.errors import UserError

Backend = Annotated[str, typer.Option("--backend", help="llama_cpp (in process), mlx, or openai (an OpenAI-compatible server).")]
Concurrency = Annotated[int, typer.Option("--concurrency", "-c", help="Concurrent sequences (parallel slots) in the engine.")]
Threads = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads (default: physical cores).")]
GpuLayers = Annotated[int, typer.Option("--n-gpu-layers", help="Layers offloaded to CUDA/Metal (-1 = all).")]
CtxPerSeq = Annotated[int, typer.Option("--ctx-per-seq", help="KV cells (tokens) per sequence; the cache holds concurrency x this.")]
KvTypeK = Annotated[str, typer.Option("--kv-type-k", help="K-cache type: f16, q8_0, q4_0, ...")]
KvTypeV = Annotated[str, typer.Option("--kv-type-v", help="V-cache type: f16, q8_0, q4_0, ... (quantized V turns flash attention on).")]
FlashAttn = Annotated[Optional[bool], typer.Option("--flash-attn/--no-flash-attn", help="Flash attention (default: llama.cpp's auto).")]
KvUnified = Annotated[bool, typer.Option("--kv-unified", help="One KV pool shared by all sequences (admission by free cells, preemption when full).")]
KvBits = Annotated[Optional[int], typer.Option("--kv-bits", help="MLX: quantized KV cache bits (4 or 8).")]
PrefixCache = Annotated[bool, typer.Option("--prefix-cache", help="Reuse the KV of cached prompt prefixes.")]
Spec = Annotated[Optional[str], typer.Option("--spec", help="Speculative decoding: ngram, or draft:MODEL.")]
SpecTokens = Annotated[int, typer.Option("--spec-tokens", help="Draft length per step.")]
BatchInvariant = Annotated[bool, typer.Option("--batch-invariant", help="llama.cpp: the same logits whatever else is batched (slower; turns flash attention on).")]
BaseUrl = Annotated[Optional[str], typer.Option("--base-url", help="OpenAI-compatible server URL (backend openai).")]


def engine_options(
    *, concurrency: int = 4, threads: int | None = None, n_gpu_layers: int = 0, ctx_per_seq: int = 4096,
    kv_type_k: str = "f16", kv_type_v: str = "f16", flash_attn: bool | None = None, kv_unified: bool = False,
    kv_bits: int | None = None, prefix_cache: bool = False, spec: str | None = None, spec_tokens: int = 4,
    batch_invariant: bool = False, base_url: str | None = None,
) -> EngineOptions:
    """Validate CLI values and build EngineOptions (user mistakes raise UserError)."""
    if concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {concurrency}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if ctx_per_seq < 16:
        raise UserError(f"--ctx-per-seq must be >= 16, got {ctx_per_seq}")
    if spec is not None and not (spec == "ngram" or (spec.startswith("draft:") and len(spec) > 6)):
        raise UserError(f"--spec {spec!r}: use 'ngram' or 'draft:MODEL'")
    if spec_tokens < 1:
        raise UserError(f"--spec-tokens must be >= 1, got {spec_tokens}")
    if kv_bits is not None and kv_bits not in (2, 3, 4, 6, 8):
        raise UserError(f"--kv-bits must be one of 2, 3, 4, 6, 8, got {kv_bits}")
    return EngineOptions(
        max_seqs=concurrency, n_threads=threads, n_gpu_layers=n_gpu_layers, ctx_per_seq=ctx_per_seq,
        type_k=kv_type_k, type_v=kv_type_v, flash_attn=flash_attn, kv_unified=kv_unified, kv_bits=kv_bits,
        prefix_cache=prefix_cache, spec=spec, spec_tokens=spec_tokens, batch_invariant=batch_invariant, base_url=base_url,
    )
