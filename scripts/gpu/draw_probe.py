"""Where the host draw's time goes on a GPU machine (issue 28): the bench's step breakdown puts
0.16 ms in drawing one 152k-entry row after a decode on the H100's host, against about 0.02 ms
for the same kernel on a row in cache on a 2-core CPU. This probe separates reading llama.cpp's
logits buffer right after a decode from the kernel's own cost.

Usage: python3 scripts/gpu/draw_probe.py MODEL SEQS OUT.json   (every layer on the GPU)
After a warm-up it runs decode steps of SEQS sequences (sampled, the presets' settings) and
times (perf_counter, best and median over the decode steps of SEQS rows):
  fresh     draw_rows as the engine calls it, right after llama_synchronize (the rows as the
            GPU's copy left them)
  again     draw_rows once more on the same rows (now in the CPU's caches where they fit)
  copy      numpy copy of the rows into a private array
  on_copy   draw_rows on that copy
  parts_K   draw_rows with the rows split over K threads (K = 1, 2, 4, 8, 16)
Prints and writes the figures (milliseconds)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace

import numpy as np

from rllm_study.backends import sampling
from rllm_study.backends.base import Request, SamplingParams
from rllm_study.backends.llama_cpp import engine as engine_module
from rllm_study.backends.llama_cpp.engine import LlamaCppEngine
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.bench.engine import _prompt_of


def main() -> None:
    model, seqs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    engine = LlamaCppEngine(
        model, LlamaCppOptions(max_seqs=seqs, ctx_per_seq=512, n_threads=16, n_gpu_layers=-1, overlap_decode=False)
    )
    times: dict[str, list[float]] = {}
    real = engine_module.draw_rows

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        times.setdefault(name, []).append(1e3 * (time.perf_counter() - t0))
        return result

    def probe(block, rows, draws):
        if len(rows) != seqs:
            return real(block, rows, draws)
        tokens = timed("fresh", lambda: real(block, rows, draws))  # the engine's own draw, first read
        fresh_rows = list(rows)
        again_draws = [(t, p, k, o, np.random.Generator(np.random.PCG64(1))) for t, p, k, o, _ in draws]

        timed("again", lambda: real(block, fresh_rows, again_draws))
        copy = timed("copy", lambda: np.array(block[fresh_rows]))
        timed("on_copy", lambda: real(copy, list(range(len(fresh_rows))), again_draws))
        for parts in (1, 2, 4, 8, 16):
            sampling.PARALLEL_FROM = max(1, len(fresh_rows) // parts) if parts > 1 else 10**9
            timed(f"parts_{parts}", lambda: real(block, fresh_rows, again_draws))
        sampling.PARALLEL_FROM = 4
        return tokens

    prompt = _prompt_of(engine, 128)
    sampled = SamplingParams(max_tokens=96, temperature=0.6, top_p=0.95)
    for i in range(seqs):
        engine.submit(Request(f"w{i}", prompt, replace(sampled, max_tokens=8, seed=i)))
    while engine.has_work():
        engine.step()
    engine_module.draw_rows = probe
    for i in range(seqs):
        engine.submit(Request(f"p{i}", prompt, replace(sampled, seed=i)))
    while engine.has_work():
        engine.step()
    engine_module.draw_rows = real
    engine.close()
    summary = {
        name: {"n": len(v), "best_ms": min(v), "median_ms": statistics.median(v)} for name, v in sorted(times.items())
    }
    result = {"model": model, "seqs": seqs, "cores": sampling.CORES, "figures": summary}
    print(json.dumps(result, indent=2))
    with open(out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
