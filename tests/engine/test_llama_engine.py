"""The continuous-batching llama.cpp engine on the real SmolLM2 and Qwen2.5-Coder-0.5B models."""

from __future__ import annotations

from dataclasses import replace

import llama_cpp
import pytest

from conftest import QUESTIONS, THREADS, chat, drain
from rllm_study.backends.base import (
    ANSWER,
    THINK,
    PrefillDone,
    Request,
    RequestAdmitted,
    RequestFinished,
    SamplingParams,
    TokenEvent,
)
from rllm_study.backends.llama_cpp.engine import LlamaCppEngine
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.errors import UserError

_REFERENCES: dict[tuple[str, bool], llama_cpp.Llama] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_references():
    yield
    while _REFERENCES:
        _REFERENCES.popitem()[1].close()


def reference_greedy(path, prompt: str, max_tokens: int, flash_attn: bool = False) -> list[int]:
    """llama-cpp-python's own single-sequence greedy generation (high-level Llama), one model
    load per (model, flash attention) in this module, reset before each prompt (no prefix reuse).

    Flash attention changes the arithmetic, so engine and reference must agree on it: the
    engine tests pin flash_attn=False (the high-level default) unless they say otherwise."""
    key = (str(path), flash_attn)
    if key not in _REFERENCES:
        _REFERENCES[key] = llama_cpp.Llama(
            model_path=str(path), n_ctx=1024, n_threads=THREADS, flash_attn=flash_attn, verbose=False
        )
    llm = _REFERENCES[key]
    llm.reset()
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    out = []
    for tok in llm.generate(tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
            out.append(tok)
            break
        out.append(tok)
        if len(out) >= max_tokens:
            break
    return out


@pytest.fixture(scope="module")
def small_engine(smollm2_path):
    engine = LlamaCppEngine(
        str(smollm2_path), LlamaCppOptions(max_seqs=4, ctx_per_seq=512, n_threads=THREADS, flash_attn=False)
    )
    yield engine
    engine.close()


@pytest.mark.parametrize(
    "model_fixture,flash", [("smollm2_path", False), ("smollm2_path", True), ("qwen05_path", False)]
)
def test_concurrent_greedy_equals_single_sequence_reference(model_fixture, flash, request):
    path = request.getfixturevalue(model_fixture)
    engine = LlamaCppEngine(
        str(path), LlamaCppOptions(max_seqs=4, ctx_per_seq=512, n_threads=THREADS, flash_attn=flash)
    )
    prompts = [chat(engine, q) for q in QUESTIONS[:4]]
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, SamplingParams(max_tokens=24)))
    got = drain(engine)
    engine.close()
    for i, p in enumerate(prompts):
        assert got[f"r{i}"]["tokens"] == reference_greedy(path, p, 24, flash), f"prompt {i} diverged"


def test_late_arrivals_join_running_batch(small_engine, smollm2_path):
    prompts = [chat(small_engine, q) for q in QUESTIONS[:4]]
    small_engine.submit(Request("early0", prompts[0], SamplingParams(max_tokens=20)))
    small_engine.submit(Request("early1", prompts[1], SamplingParams(max_tokens=20)))

    together = []

    def join(step):
        if step == 3:
            small_engine.submit(Request("late2", prompts[2], SamplingParams(max_tokens=20)))
            small_engine.submit(Request("late3", prompts[3], SamplingParams(max_tokens=20)))
            assert small_engine.stats().running == 2  # the early ones are mid-generation
        together.append({s.request.id for s in small_engine.running})

    got = drain(small_engine, join)
    assert set(got) == {"early0", "early1", "late2", "late3"}
    # the late ones were admitted while the early ones still ran, and decoded in the same steps
    assert any(ids == {"early0", "early1", "late2", "late3"} for ids in together)
    first_late = min(i for i, ev in enumerate(got["late2"]["events"]) if isinstance(ev, TokenEvent))
    assert got["late2"]["events"][first_late].t_ns < got["early0"]["finish"].t_ns
    for rid, idx in [("early0", 0), ("early1", 1), ("late2", 2), ("late3", 3)]:
        assert got[rid]["tokens"] == reference_greedy(smollm2_path, prompts[idx], 20)


def test_stop_string_cuts_output(small_engine):
    prompt = chat(small_engine, "Count from 1 to 10, separated by commas.")
    small_engine.submit(Request("free", prompt, SamplingParams(max_tokens=40)))
    free = drain(small_engine)["free"]["finish"].output_text
    assert "5" in free
    small_engine.submit(Request("cut", prompt, SamplingParams(max_tokens=40, stop=("5",))))
    cut = drain(small_engine)["cut"]["finish"]
    assert cut.reason == "stop"
    assert cut.output_text == free[: free.index("5")]


def test_token_budget(small_engine):
    small_engine.submit(Request("b", chat(small_engine, "Tell me a long story."), SamplingParams(max_tokens=7)))
    fin = drain(small_engine)["b"]["finish"]
    assert (fin.reason, fin.output_tokens) == ("length", 7)


def test_abort_running_and_waiting(smollm2_path):
    engine = LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=1, ctx_per_seq=512, n_threads=THREADS))
    p = chat(engine, "Tell me a long story.")
    engine.submit(Request("run", p, SamplingParams(max_tokens=200)))
    engine.submit(Request("wait", p, SamplingParams(max_tokens=200)))
    engine.submit(Request("keep", p, SamplingParams(max_tokens=5)))

    def abort(step):
        if step == 4:
            engine.abort("wait")
            engine.abort("run")

    got = drain(engine, abort)
    engine.close()
    assert got["run"]["finish"].reason == "abort" and 0 < got["run"]["finish"].output_tokens < 200
    assert got["wait"]["finish"].reason == "abort" and got["wait"]["finish"].output_tokens == 0
    assert got["keep"]["finish"].reason == "length"


def test_batches_keep_sequence_ids_consecutive_and_moved_sequences_decode_on(small_engine, smollm2_path):
    """A split KV cache makes llama.cpp cut a batch wherever sequence ids stop increasing by one,
    so every batch lists its sequences in id order, ids in use are always 0..n-1 (a new request
    takes the lowest free id; when requests end, the highest-id sequence moves down into the
    hole), and a moved sequence goes on exactly as if it had not moved."""
    prompts = [chat(small_engine, q) for q in QUESTIONS[:4]]
    budgets = (30, 6, 10, 30)  # b1 then b2 end first; b3 moves down, then the late request comes
    for i, budget in enumerate(budgets):
        small_engine.submit(Request(f"b{i}", prompts[i], SamplingParams(max_tokens=budget)))
    moves_before = small_engine.stats().extra.seq_moves
    orders, late_id = [], None

    def watch(step):
        nonlocal late_id
        batch = small_engine.batch.raw
        orders.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        running = {s.request.id: s.seq_id for s in small_engine.running}
        if "late" in running:
            late_id = running["late"]
        elif late_id is None and not {"b1", "b2"} & set(running):
            small_engine.submit(Request("late", prompts[1], SamplingParams(max_tokens=8)))

    got = drain(small_engine, watch)
    assert small_engine.stats().extra.seq_moves > moves_before
    assert late_id == 2  # b0 and b3 hold ids 0 and 1 by then
    for ids in orders:
        assert ids == sorted(ids) and sorted(set(ids)) == list(range(len(set(ids)))), ids
    assert any(len(set(ids)) == 4 for ids in orders)  # steps with all four sequences in one batch
    for i in (0, 3):
        assert got[f"b{i}"]["tokens"] == reference_greedy(smollm2_path, prompts[i], budgets[i]), f"b{i} diverged"


def run_all(path, options, prompts, max_tokens, watch=None) -> dict[str, dict]:
    engine = LlamaCppEngine(str(path), options)
    for i, p in enumerate(prompts):
        engine.submit(Request(f"q{i}", p, SamplingParams(max_tokens=max_tokens)))
    got = drain(engine, watch and (lambda _: watch(engine.stats())))
    engine.close()
    return got


def test_too_small_split_cache_queues_and_all_finish(smollm2_path, small_engine):
    """More requests than slots: they wait, none fail, greedy output is unchanged."""
    prompts = [chat(small_engine, q) for q in QUESTIONS]
    peak_waiting = 0

    def watch(st):
        nonlocal peak_waiting
        peak_waiting = max(peak_waiting, st.waiting)
        assert st.kv_used <= st.kv_capacity

    small = LlamaCppOptions(max_seqs=2, ctx_per_seq=256, n_threads=THREADS, flash_attn=False)
    got = run_all(smollm2_path, small, prompts, 60, watch)
    roomy = run_all(smollm2_path, replace(small, max_seqs=5), prompts, 60)
    assert peak_waiting >= 1
    for i in range(len(prompts)):
        assert got[f"q{i}"]["finish"].reason in ("stop", "length")
        assert got[f"q{i}"]["tokens"] == roomy[f"q{i}"]["tokens"]


def test_too_small_unified_cache_preempts_recomputes_and_all_finish(smollm2_path, small_engine):
    """A unified cache too small for all: the youngest request is preempted and recomputed later;
    none fail. Unified attention rounds differently with each batch mix, so the prompts are
    counting tasks whose greedy tokens have wide margins, checked against one-at-a-time runs."""
    # five prompts of about 44 tokens fill 220 of the 256 cells (llama.cpp's smallest context): the first
    # preemption comes after about 8 tokens each, so 32 tokens a request are enough to preempt and recompute
    n = (1, 30, 60, 90, 120)
    prompts = [chat(small_engine, f"Count from {k} to {k + 25}, separated by commas.") for k in n]
    opts = LlamaCppOptions(max_seqs=5, n_ctx=256, n_threads=THREADS, kv_unified=True, flash_attn=False)
    engine = LlamaCppEngine(str(smollm2_path), opts)
    for i, p in enumerate(prompts):
        engine.submit(Request(f"q{i}", p, SamplingParams(max_tokens=32)))
    got = drain(engine, lambda _: engine.stats().kv_used <= 256 or pytest.fail("KV over capacity"))
    preemptions = engine.stats().extra.preemptions
    engine.close()
    alone = run_all(smollm2_path, replace(opts, max_seqs=1), prompts, 32)
    assert preemptions >= 1
    for i in range(len(prompts)):
        assert got[f"q{i}"]["finish"].reason in ("stop", "length")
        assert got[f"q{i}"]["tokens"] == alone[f"q{i}"]["tokens"]


def test_events_order_and_monotonic_times(small_engine):
    for i, q in enumerate(QUESTIONS[:3]):
        small_engine.submit(
            Request(f"m{i}", chat(small_engine, q), SamplingParams(max_tokens=16, temperature=0.8, seed=i))
        )
    got = drain(small_engine)
    for rec in got.values():
        kinds = [type(e) for e in rec["events"]]
        assert kinds[0] is RequestAdmitted and kinds[1] is PrefillDone and kinds[-1] is RequestFinished
        times = [e.t_ns for e in rec["events"]]
        assert times == sorted(times)
        fin = rec["finish"]
        assert fin.output_tokens == len(rec["tokens"]) == fin.think_tokens + fin.answer_tokens


def test_seeded_sampling_is_reproducible(small_engine):
    p = chat(small_engine, "Invent a name for a cat.")
    for rid in ("s1", "s2"):
        small_engine.submit(Request(rid, p, SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=7)))
    for seed in (8, 9, 10):
        small_engine.submit(
            Request(f"o{seed}", p, SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=seed))
        )
    got = drain(small_engine)
    assert got["s1"]["tokens"] == got["s2"]["tokens"]
    others = [got[f"o{seed}"]["tokens"] for seed in (8, 9, 10)]  # another seed, another draw
    assert any(t != got["s1"]["tokens"] for t in others) and len({tuple(t) for t in others}) > 1


def test_think_answer_split_by_text_markers(small_engine):
    """As reasoning prompts do, the prompt ends inside an open <think> block; the grammar forces
    thinking, the closing marker (several tokens here: SmolLM2 has no <think> token), then an answer."""
    grammar = 'root ::= [a-z ]{3,20} "</think>" " The answer is " [0-9] "."'
    prompt = chat(small_engine, "What is 2+2? Think first.") + "<think>"
    small_engine.submit(Request("t", prompt, SamplingParams(max_tokens=60), starts_in_think=True, grammar=grammar))
    rec = drain(small_engine)["t"]
    toks = [e for e in rec["events"] if isinstance(e, TokenEvent)]
    text_by_phase = {THINK: "", ANSWER: ""}
    for e in toks:
        text_by_phase[e.phase] += e.text
    assert text_by_phase[THINK].endswith("</think>") and "<" not in text_by_phase[THINK][:-8]
    assert text_by_phase[ANSWER].startswith(" The answer is")
    phases = [e.phase for e in toks if e.text]
    assert phases == sorted(phases, key=lambda p: p == ANSWER)  # all think, then all answer


def test_prompt_longer_than_a_sequence_fails_only_that_request(smollm2_path):
    engine = LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=2, ctx_per_seq=64, n_threads=THREADS))
    engine.submit(Request("long", "word " * 2000, SamplingParams(max_tokens=4)))
    engine.submit(Request("ok", "Hi", SamplingParams(max_tokens=4)))
    got = drain(engine)
    engine.close()
    assert got["long"]["finish"].reason == "error" and "prompt has" in got["long"]["finish"].error
    assert got["ok"]["finish"].reason == "length"


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(temperature=-0.1),
        SamplingParams(top_p=0.0),
        SamplingParams(top_p=1.5),
        SamplingParams(max_tokens=0),
    ],
)
def test_invalid_sampling_is_a_user_error(small_engine, sampling):
    with pytest.raises(UserError):
        small_engine.submit(Request("bad", "Hi", sampling))


def test_stats_track_kv_cells(small_engine):
    small_engine.submit(Request("k", chat(small_engine, "Say something."), SamplingParams(max_tokens=8)))
    small_engine.step()
    st = small_engine.stats()
    assert st.running == 1 and st.kv_used > 5 and st.kv_capacity == 4 * 512 and st.rss_bytes > 50e6
    drain(small_engine)
    assert small_engine.stats().kv_used == 0
