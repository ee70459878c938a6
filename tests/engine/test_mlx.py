"""The MLX backend and the GGUF -> MLX conversion, on the real SmolLM2 (CPU here, Metal on a Mac)."""

from __future__ import annotations

import ctypes
import json
import os
import sys
from contextlib import contextmanager

import pytest

from conftest import require, require_module

require_module("mlx_lm")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402
from test_sampling import DRAWS, ROW, chi_square_ok, exact_probs  # noqa: E402

from conftest import QUESTIONS, THREADS, chat, drain  # noqa: E402
from rllm_study.backends import options_for  # noqa: E402
from rllm_study.backends.base import PrefillDone, Request, RequestAdmitted, SamplingParams  # noqa: E402
from rllm_study.backends.llama_cpp.engine import LlamaCppEngine  # noqa: E402
from rllm_study.backends.mlx import OPENBLAS  # noqa: E402  (loaded first by conftest)
from rllm_study.backends.mlx.convert import convert_gguf, convert_to_mlx  # noqa: E402
from rllm_study.backends.mlx.engine import MlxEngine, make_sampler  # noqa: E402
from rllm_study.backends.mlx.kv import BatchQuantizedKVCache, make_quantized_cache  # noqa: E402
from rllm_study.backends.options import LlamaCppOptions, MlxOptions  # noqa: E402
from rllm_study.backends.sampling import ORDERS, TEMPERATURE_FIRST, TOP_P_FIRST  # noqa: E402
from rllm_study.errors import UserError  # noqa: E402
from rllm_study.models import resolve_model  # noqa: E402

pytestmark = pytest.mark.mlx
require(
    OPENBLAS or sys.platform != "linux",
    "libopenblas.so.0 is not installed (scripts/setup.sh: apt-get install libopenblas0-pthread)",
)


@pytest.fixture(scope="module")
def smollm2_mlx(smollm2_path):
    return convert_gguf(smollm2_path)


@pytest.fixture(scope="module")
def engine(smollm2_mlx):
    eng = MlxEngine(str(smollm2_mlx), MlxOptions(max_seqs=4, ctx_per_seq=512))
    yield eng
    eng.close()


_refs: dict[str, list[int]] = {}


def reference(eng: MlxEngine, prompt: str, max_tokens: int, **kwargs) -> list[int]:
    """mlx-lm's own single-sequence greedy generation (generate_step), stopping at EOS like we
    do. Plain greedy runs (no kwargs) of the SmolLM2 weights are kept and cut: a shorter greedy
    run is a prefix of a longer one."""
    known = _refs.get(prompt, [])
    if not kwargs and (len(known) >= max_tokens or (known and known[-1] in eng.eos_ids)):
        return known[:max_tokens]
    out = []
    for token, _ in generate_step(mx.array(eng.tokenizer.encode(prompt)), eng.model, max_tokens=max_tokens, **kwargs):
        out.append(token)
        if token in eng.eos_ids:
            break
    if not kwargs:
        _refs[prompt] = out
    return out


@contextmanager
def batch_invariant_matmuls():
    """mlx's CPU matmuls (OpenBLAS on Linux, see engine.py) with one OpenBLAS thread, restored after.
    Threaded, OpenBLAS's sgemm does not compute a row the same way for every matrix shape: layer
    0's k_proj of a 36-token prompt differs by up to 4e-6 between that prompt alone (36 rows) and
    batched with another (72 rows); with one thread the row is bit-identical."""
    if not OPENBLAS:
        yield
        return
    blas = ctypes.CDLL("libopenblas.so.0")
    threads = blas.openblas_get_num_threads()
    blas.openblas_set_num_threads(1)
    try:
        yield
    finally:
        blas.openblas_set_num_threads(threads)


def test_conversion_is_cached_plain_hf_layout_with_llama_cpp_tokens(smollm2_path, smollm2_mlx):
    config = json.loads((smollm2_mlx / "config.json").read_text())
    assert config["model_type"] == "llama" and "rope_traditional" not in config  # Q/K un-permuted
    assert config["eos_token_id"] == [0, 2, 4]  # llama.cpp's end-of-generation set for SmolLM2
    tok_config = json.loads((smollm2_mlx / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"].startswith("{% for message in messages %}")
    assert convert_to_mlx(resolve_model("smollm2-135m")) == smollm2_mlx  # cached: same folder, no work
    with pytest.raises(UserError, match="dtype"):
        convert_gguf(smollm2_path, "bfloat8")


def test_concurrent_greedy_equals_mlx_lm_generate(engine):
    prompts = [chat(engine, q) for q in QUESTIONS[:3]]
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, SamplingParams(max_tokens=24)))
    seen = []
    got = drain(engine, lambda _: seen.append(engine.stats()))
    assert max(s.running for s in seen) == 3
    for i, p in enumerate(prompts):
        events = got[f"r{i}"]["events"]
        assert isinstance(events[0], RequestAdmitted) and isinstance(events[1], PrefillDone)
        assert [e.t_ns for e in events] == sorted(e.t_ns for e in events)
        assert got[f"r{i}"]["tokens"] == reference(engine, p, 24), f"prompt {i} diverged from mlx_lm"
        fin = got[f"r{i}"]["finish"]
        assert fin.output_tokens == len(got[f"r{i}"]["tokens"]) and fin.reason in ("stop", "length")


def test_memory_stats_are_plausible(engine):
    engine.submit(Request("m", chat(engine, QUESTIONS[0]), SamplingParams(max_tokens=4)))
    engine.step()
    engine.step()
    st = engine.stats()
    drain(engine)
    weights = engine.n_params * engine.dtype.size
    assert weights <= st.device_bytes <= st.device_peak_bytes < 4 * weights  # MLX holds the weights
    assert st.rss_bytes > weights  # on the CPU, MLX memory is this process's memory
    assert st.running == 1 and 0 < st.kv_used <= st.kv_capacity
    assert st.extra.kv_bytes >= st.kv_used * engine.kv_bytes_per_token()  # allocated >= used
    assert engine.stats().kv_used == 0


def test_seeded_sampling_does_not_depend_on_the_batch(engine):
    prompts = [chat(engine, q) for q in QUESTIONS[:2]]
    hot = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, seed=11)
    for i, p in enumerate(prompts):
        engine.submit(Request(f"b{i}", p, hot))
    batched = drain(engine)
    engine.submit(Request("alone", prompts[0], hot))
    engine.submit(Request("other", prompts[0], SamplingParams(max_tokens=8, temperature=0.9, seed=12)))
    alone = drain(engine)
    assert alone["alone"]["tokens"] == batched["b0"]["tokens"]
    assert alone["other"]["tokens"] != alone["alone"]["tokens"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("top_k", [0, 5])
def test_sampler_follows_the_exact_distribution_in_both_orders(order, top_k):
    """The same distribution as the llama.cpp path (tests/engine/test_sampling.py's exact probabilities),
    and the two orders are told apart."""
    logprobs = mx.array(ROW - np.log(np.exp(ROW.astype(np.float64)).sum()), dtype=mx.float32)
    sampler = make_sampler(SamplingParams(temperature=0.6, top_p=0.9, top_k=top_k, order=order, seed=4))
    draws = np.array(sampler(mx.broadcast_to(logprobs, (DRAWS, len(ROW)))))  # DRAWS independent rows, one call
    freq = np.bincount(draws, minlength=len(ROW)) / DRAWS
    assert chi_square_ok(freq, exact_probs(ROW, 0.6, 0.9, top_k, order))
    other = TOP_P_FIRST if order == TEMPERATURE_FIRST else TEMPERATURE_FIRST
    assert top_k or not chi_square_ok(freq, exact_probs(ROW, 0.6, 0.9, top_k, other))


def test_stop_string_budget_and_abort(engine):
    prompt = chat(engine, "Count from 1 to 10, separated by commas.")
    free = engine.tokenizer.decode(reference(engine, prompt, 16))
    assert "3" in free
    engine.submit(Request("cut", prompt, SamplingParams(max_tokens=16, stop=("3",))))
    engine.submit(Request("short", prompt, SamplingParams(max_tokens=3)))
    engine.submit(Request("gone", prompt, SamplingParams(max_tokens=16)))
    got = drain(engine, lambda step: step == 3 and engine.abort("gone"))
    assert (got["cut"]["finish"].reason, got["cut"]["finish"].output_text) == ("stop", free[: free.index("3")])
    assert (got["short"]["finish"].reason, got["short"]["finish"].output_tokens) == ("length", 3)
    assert got["gone"]["finish"].reason == "abort" and got["gone"]["finish"].output_tokens < 16


def test_prefix_cache_reuses_shared_prefix(smollm2_mlx):
    eng = MlxEngine(str(smollm2_mlx), MlxOptions(max_seqs=2, prefix_cache=True))
    system = "You are a careful assistant. Answer every question in one short sentence. " * 3
    prompts = [
        eng.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}])
        for q in QUESTIONS[:2]
    ]
    eng.submit(Request("first", prompts[0], SamplingParams(max_tokens=8)))
    first = drain(eng)
    eng.submit(Request("second", prompts[1], SamplingParams(max_tokens=8)))
    second = drain(eng)
    eng.close()
    prefill = next(e for e in second["second"]["events"] if isinstance(e, PrefillDone))
    shared = len(os.path.commonprefix([eng.tokenizer.encode(p) for p in prompts]))
    assert first["first"]["finish"].cached_tokens == 0
    assert prefill.cached_tokens == shared == second["second"]["finish"].cached_tokens > 40
    assert second["second"]["tokens"] == reference(eng, prompts[1], 8)


def test_quantized_kv_stays_batched_and_matches_single_sequence(smollm2_mlx, engine):
    """kv_bits=8, 2 requests batched == each alone with the same cache (quantized from the first
    token), token for token; the prompts differ in length, so the shorter one's row is padded.
    Both fit the cache's first allocation (BatchKVCache.step positions per row), so it holds
    exactly 2 x step x kv_bytes_per_token bytes.

    Exact equality needs matmuls that give a row the same result in a batch as alone
    (batch_invariant_matmuls): quantizing each token as it enters the cache turns a 1e-6
    difference that crosses a rounding boundary into a whole quantization step (1/255 of the
    group's range), and such steps add up over 30 layers enough to flip a near-tie: with two
    OpenBLAS threads, the greedy first token of QUESTIONS[0] alone ('The' 25.235 vs 'L' 25.211)
    comes out 'L' when batched with QUESTIONS[1]."""
    eng = MlxEngine(str(smollm2_mlx), MlxOptions(max_seqs=2, kv_bits=8))
    prompts = [chat(eng, q) for q in QUESTIONS[2:4]]
    lengths = [eng.count_tokens(p) for p in prompts]
    assert lengths[0] != lengths[1]  # one row padded
    with batch_invariant_matmuls():
        for i, p in enumerate(prompts):
            eng.submit(Request(f"q{i}", p, SamplingParams(max_tokens=12)))
        seen = []
        got = drain(eng, lambda _: seen.append(eng.stats()))
        eng.close()
        singles = [reference(eng, p, 12, prompt_cache=make_quantized_cache(eng.n_layers, 8)) for p in prompts]
    assert max(s.running for s in seen) == 2
    assert max(s.extra.kv_bytes for s in seen) == 2 * BatchQuantizedKVCache.step * eng.kv_bytes_per_token()
    assert eng.kv_bytes_per_token() < 0.3 * engine.kv_bytes_per_token()  # 8 bits + scale, bias per 64 vs float32
    for i, single in enumerate(singles):
        assert got[f"q{i}"]["tokens"] == single, f"prompt {i} diverged"


def test_draft_model_serves_one_at_a_time_and_counts_acceptance(smollm2_mlx):
    """SmolLM2 (from Q4_1) drafted by SmolLM2 re-quantized to Q4_0, both converted: close but not
    equal weights, so drafts are both accepted and rejected; greedy output unchanged, accepted
    drafts marked."""
    draft = convert_gguf(resolve_model("smollm2-135m:Q4_0").path)
    eng = MlxEngine(str(smollm2_mlx), MlxOptions(max_seqs=2, speculative=f"draft:{draft}", speculative_tokens=3))
    assert not eng.capabilities().continuous_batching
    assert any("max_seqs=2 is not used" in note for note in eng.unsupported)
    prompts = [chat(eng, q) for q in QUESTIONS[:2]]
    for i, p in enumerate(prompts):
        eng.submit(Request(f"d{i}", p, SamplingParams(max_tokens=24)))
    seen = []
    got = drain(eng, lambda _: seen.append(eng.stats().running))
    eng.close()
    assert max(seen) == 1
    rejected = 0
    for i, p in enumerate(prompts):
        fin = got[f"d{i}"]["finish"]
        marked = sum(e.draft for e in got[f"d{i}"]["events"] if hasattr(e, "draft"))
        assert got[f"d{i}"]["tokens"] == reference(eng, p, 24)
        assert 0 < fin.draft_accepted == marked <= fin.draft_proposed
        rejected += fin.draft_proposed - fin.draft_accepted
    assert rejected > 0


def test_unsupported_options_are_reported(smollm2_mlx):
    opts = options_for(
        "mlx", type_k="q8_0", type_v="q8_0", n_gpu_layers=99, n_threads=2, speculative="ngram", batch_invariant=True
    )
    eng = MlxEngine(str(smollm2_mlx), opts)
    notes = " | ".join(eng.info().unsupported_options)
    for word in ("type_k", "n_gpu_layers", "n_threads", "'ngram'", "batch_invariant"):
        assert word in notes
    with pytest.raises(UserError, match="grammar"):
        eng.submit(Request("g", "hi", grammar='root ::= "a"'))
    eng.close()
    with pytest.raises(UserError, match="kv_bits"):
        MlxEngine(str(smollm2_mlx), MlxOptions(kv_bits=7))


def test_same_f16_weights_through_llama_cpp_and_mlx():
    """llama.cpp F16 GGUF vs the same weights converted to MLX float16, greedy: report the
    first divergence; the first tokens must agree."""
    ref = resolve_model("smollm2-135m:F16")
    llama = LlamaCppEngine(str(ref.path), LlamaCppOptions(max_seqs=2, ctx_per_seq=512, n_threads=THREADS))
    mlx = MlxEngine(str(convert_gguf(ref.path, "float16")), MlxOptions(max_seqs=2, ctx_per_seq=512))
    prompts = [chat(llama, q) for q in QUESTIONS[:2]]
    assert prompts == [chat(mlx, q) for q in QUESTIONS[:2]]
    assert [llama.count_tokens(p) for p in prompts] == [mlx.count_tokens(p) for p in prompts]
    results = []
    for eng in (llama, mlx):
        for i, p in enumerate(prompts):
            eng.submit(Request(f"x{i}", p, SamplingParams(max_tokens=16)))
        results.append(drain(eng))
        eng.close()
    for i in range(len(prompts)):
        a, b = results[0][f"x{i}"]["tokens"], results[1][f"x{i}"]["tokens"]
        first_diff = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"prompt {i}: llama.cpp F16 and MLX float16 agree on the first {first_diff} of {len(a)}/{len(b)} tokens")
        assert first_diff >= 4


def test_think_budget_closes_the_thinking_and_the_model_answers(engine):
    """Budget reached (the close fed after the sampled token) and EOS while thinking (the close
    replaces the EOS, whose KV entry is dropped): either way </think> + cue is written once and
    the answer follows; the answer's first tokens are greedy continuations of the text so far."""
    from rllm_study.backends.base import ANSWER, THINK
    from rllm_study.backends.phases import THINK_CLOSE

    cue = "\n\nThe final answer is $\\boxed{"
    think = chat(engine, "What is 2+3? Think inside <think> </think> first.") + "<think>\n"
    short = chat(engine, "Say only the word yes.") + "<think>\n"
    engine.submit(Request("budget", think, SamplingParams(24, think_budget=6), True, answer_cue=cue))
    engine.submit(Request("eos", short, SamplingParams(40, think_budget=30), True, answer_cue=cue))
    out = drain(engine)
    forced = engine.tokenizer.encode(THINK_CLOSE + cue, add_special_tokens=False)
    b = out["budget"]
    fin = b["finish"]
    assert fin.think_forced and fin.forced_tokens == len(forced) and fin.think_tokens == 6 and fin.answer_tokens > 0
    assert [e.phase for e in b["events"] if hasattr(e, "phase")] == [THINK] * 6 + [ANSWER] * fin.answer_tokens
    assert THINK_CLOSE + cue in fin.output_text
    continued = reference(engine, think + engine.tokenizer.decode(b["tokens"][:6]) + THINK_CLOSE + cue, 2)
    assert b["tokens"][6:8] == continued
    e = out["eos"]["finish"]
    assert e.think_forced and 0 < e.think_tokens < 30 and e.answer_tokens > 0 and THINK_CLOSE + cue in e.output_text
