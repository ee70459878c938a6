"""The benchmarks' measurement path: a batch recorded as the study records a cell, its figures the
study's metrics, on the real SmolLM2."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import THREADS
from rllm_study.analysis.metrics import cell_metrics
from rllm_study.backends.base import Request, SamplingParams
from rllm_study.backends.llama_cpp.engine import LlamaCppEngine, StepTimes
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.bench.crosscheck import run_batch
from rllm_study.bench.engine import GREEDY, STEP_PARTS, decode_rate, step_breakdown
from rllm_study.running.recorder import record_batch


@pytest.fixture(scope="module")
def engine(smollm2_path):
    eng = LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=3, ctx_per_seq=256, n_threads=THREADS))
    yield eng
    eng.close()


def test_batch_figures_are_the_recorded_cells_metrics(engine):
    reqs = [
        Request(f"r{i}", "1, 2, 3, 4, 5,", SamplingParams(max_tokens=6 + i, temperature=0.6, top_p=0.95, seed=i))
        for i in range(3)
    ]
    run = run_batch(engine, reqs)
    recs = run.cell.requests
    assert [r["id"] for r in recs] == ["r0", "r1", "r2"] and all(r["arrival_s"] == 0.0 for r in recs)
    assert [r["output_tokens"] for r in recs] == [6, 7, 8]
    assert run.throughput == pytest.approx(21 / max(r["finish_s"] for r in recs))
    assert run.first_token_s == min(r["first_token_s"] for r in recs) > 0
    assert run.finishes["r2"]["finish_reason"] == "length"


def test_decode_rate_counts_the_all_decoding_window(engine):
    cell = record_batch(engine, [Request(f"b{i}", "1, 2, 3, 4, 5,", SamplingParams(max_tokens=12)) for i in range(3)])
    start = max(r["prefill_done_s"] for r in cell.requests)
    end = min(r["finish_s"] for r in cell.requests)
    inside = sum(start < t <= end for row in cell.tokens.values() for t in row["t_s"])
    assert cell_metrics(cell)["throughput"]["decode_tok_s"] == pytest.approx(inside / (end - start))
    sampled = SamplingParams(temperature=0.6, top_p=0.95)
    assert decode_rate(engine, 3, 8, 12, sampled) > 0 and decode_rate(engine, 1, 8, 12, GREEDY) > 0


@pytest.mark.parametrize("overlap", [False, True])
def test_step_times_count_the_decode_steps_and_split_them(engine, smollm2_path, overlap):
    """3 requests of 12 tokens: one prefill step (not counted: it holds prompt tokens) draws their
    first tokens, then 11 decode steps of 3 sequences each; every part of a step is measured and
    the shares add up to the step. The same with overlap_decode, where a step() completes the
    decode the previous one started."""
    if overlap:
        options = LlamaCppOptions(max_seqs=3, ctx_per_seq=256, n_threads=THREADS, overlap_decode=True)
        engine = LlamaCppEngine(str(smollm2_path), options)
    engine.step_times = StepTimes()
    sampled = SamplingParams(temperature=0.6, top_p=0.95)
    record_batch(
        engine,
        [Request(f"s{i}", "1, 2, 3, 4, 5,", SamplingParams(max_tokens=12, seed=i)) for i in range(2)]
        + [Request("s2", "1, 2, 3, 4, 5,", replace(sampled, max_tokens=12))],
    )
    times = engine.step_times
    assert (times.steps, times.sequences) == (11, 33)
    assert times.decode_s > 0 and times.draw_s > 0 and times.other_s > 0 and times.wait_s >= 0
    b = step_breakdown(times)
    assert b["sequences_per_step"] == 3 and sum(b["share"].values()) == pytest.approx(1)
    assert b["ms_per_step"]["decode"] == pytest.approx(1e3 * times.decode_s / 11) and set(b["share"]) == set(STEP_PARTS)
    if overlap:
        engine.close()


def test_profile_summary_reproduces_the_published_step_shares(tmp_path):
    """scripts/profile_summary.py on the committed H200 profile gives the shares its README quotes
    (36.0% llama_decode, 30.1% waiting for the logits, 19.7% sampled rows), and a file that is not
    py-spy's raw format is one line and exit 2."""
    import subprocess
    import sys

    from conftest import REPO

    script = REPO / "scripts" / "profile_summary.py"
    profile = REPO / "reports" / "gpu-h200" / "bench-1.5b" / "profile" / "bench-64.txt"
    out = subprocess.run(
        [sys.executable, script, profile, "--within", "LlamaCppEngine.step", "--functions", "--top", "40"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "6753 samples in stacks through 'LlamaCppEngine.step'" in out
    assert " 19.7%  _sample_nucleus (rllm_study/backends/sampling.py)" in out
    lines = subprocess.run(
        [sys.executable, script, profile, "--within", "LlamaCppEngine.step"], capture_output=True, text=True, check=True
    ).stdout.split("-- self")[1]
    assert " 36.0%  LlamaCppEngine._decode_once (rllm_study/backends/llama_cpp.py:753)" in lines
    assert " 30.1%  LlamaCppEngine._sample (rllm_study/backends/llama_cpp.py:795)" in lines
    frameless = tmp_path / "frameless.txt"  # py-spy writes samples with no Python frame as a count alone
    frameless.write_text("main;step;decode 3\n 5\nmain;step;draw 1\n")
    out = subprocess.run([sys.executable, script, frameless], capture_output=True, text=True, check=True).stdout
    assert "4 samples" in out and " 75.0%  decode" in out
    bad = tmp_path / "not-a-profile.txt"
    bad.write_text("hello\n")
    done = subprocess.run([sys.executable, script, bad], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "line 1" in done.stderr


def test_prefix_and_kv_benches_sample_as_the_presets_do(smollm2_path, monkeypatch):
    """bench techniques' prefix and KV-cache benchmarks measure the presets' sampling (temperature
    0.6, top-p 0.95, request i seed i), not greedy, and say so in their results; their figures
    are the ratios of configurations measured in the same run."""
    from rllm_study.bench import techniques

    seen = []
    real_run, real_rate = techniques.run_batch, techniques.decode_rate

    def run_batch(engine, requests):
        seen.extend(r.sampling for r in requests)
        return real_run(engine, requests)

    def decode_rate(engine, n_seqs, n_prompt, n_gen, sampling):
        seen.append(sampling)
        return real_rate(engine, n_seqs, n_prompt, n_gen, sampling)

    monkeypatch.setattr(techniques, "run_batch", run_batch)
    monkeypatch.setattr(techniques, "decode_rate", decode_rate)
    prefix = techniques.prefix_ttft(str(smollm2_path), THREADS, prefix_tokens=96, reps=1)
    kv = techniques.kv_quantization(
        str(smollm2_path), THREADS, ("f16", "q8_0"), n_seqs=2, n_prompt=16, n_gen=12, reps=1
    )
    assert seen and all((s.temperature, s.top_p) == (0.6, 0.95) for s in seen)
    assert len({s.seed for s in seen if s.max_tokens == 1}) == 3  # warm-up, off, on: a seed each
    for result in (prefix, kv):
        assert result["sampling"] == {
            "temperature": 0.6,
            "top_p": 0.95,
            "order": "temperature_first",
            "seeds": "request i: seed i",
        }
    assert prefix["ttft_gain"] == pytest.approx(prefix["ttft_off_s"]["mean"] / prefix["ttft_on_s"]["mean"])
    q8 = kv["by_type"]["q8_0"]
    assert 0.4 < q8["memory_saved"] < 0.5 and q8["decode_tok_s"]["mean"] > 0  # q8_0: 34 bytes per 32 values vs 64
