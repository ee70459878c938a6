"""Host-side sampling (backends/rllm_study/backends/sampling.py): its distribution against the exact probabilities on
fixed logits, for both orders, and the llama.cpp engine's use of it on the real SmolLM2."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import THREADS, chat
from rllm_study.backends import sampling
from rllm_study.backends.base import Request, SamplingParams, TokenEvent
from rllm_study.backends.llama_cpp import engine as llama_engine
from rllm_study.backends.llama_cpp.engine import LlamaCppEngine
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.backends.sampling import ORDERS, TEMPERATURE_FIRST, TOP_P_FIRST, draw_rows, new_rng, sample
from rllm_study.errors import UserError
from rllm_study.running.spec import expand

DRAWS = 10_000


def exact_probs(logits: np.ndarray, temperature: float, top_p: float, top_k: int, order: str) -> np.ndarray:
    """The definition in backends/rllm_study/backends/sampling.py, written out with a full sort in float64."""
    logits = logits.astype(np.float64)
    ranked = np.lexsort((np.arange(len(logits)), -logits))  # logit descending, then id
    if 0 < top_k < len(logits):
        ranked = ranked[:top_k]
    vals = logits[ranked]
    scale = 1 / temperature if order == TEMPERATURE_FIRST else 1.0
    q = np.exp((vals - vals[0]) * scale)
    q /= q.sum()
    if top_p < 1:
        keep = int(np.searchsorted(np.cumsum(q), top_p)) + 1
        ranked, vals = ranked[:keep], vals[:keep]
    w = np.exp((vals - vals[0]) / temperature)
    probs = np.zeros(len(logits))
    probs[ranked] = w / w.sum()
    return probs


def frequencies(logits, temperature, top_p, top_k, order, draws=DRAWS, buckets=None) -> np.ndarray:
    """Token frequencies of `draws` draws, each from a fresh generator with its own seed."""
    counts = np.zeros(len(logits) if buckets is None else buckets.max() + 1)
    for seed in range(draws):
        token = sample(logits, temperature, top_p, top_k, order, new_rng(seed))
        counts[token if buckets is None else buckets[token]] += 1
    return counts / draws


def chi_square_ok(freq: np.ndarray, probs: np.ndarray, draws: int = DRAWS) -> bool:
    """Pearson's chi-square against probs below its 99.99% quantile (Wilson-Hilferty), and no
    draw where probs is 0."""
    support = probs > 0
    if freq[~support].sum() > 0:
        return False
    stat = float((((freq - probs) ** 2)[support] / probs[support]).sum() * draws)
    df = int(support.sum()) - 1
    if df == 0:
        return True
    z = 3.719  # standard normal 99.99% quantile
    return stat < df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


# A row where the two orders disagree: at T = 0.6 the temperature-first nucleus (p = 0.9) has 3
# tokens, the top-p-first one 7.
ROW = np.array([3.0, 2.6, 2.2, 1.5, 1.2, 1.0, 0.7, 0.2, -0.5, -1.0, -2.0, -3.0] + [-4.0] * 20, dtype=np.float32)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("top_k", [0, 5])
def test_draws_follow_the_exact_distribution(order, top_k):
    probs = exact_probs(ROW, 0.6, 0.9, top_k, order)
    freq = frequencies(ROW, 0.6, 0.9, top_k, order)
    assert chi_square_ok(freq, probs), (order, top_k, np.round(freq[:12], 4), np.round(probs[:12], 4))


def test_the_two_orders_are_told_apart():
    """The statistical check can fail: draws of one order are rejected against the other's probabilities."""
    tf, pf = (exact_probs(ROW, 0.6, 0.9, 0, o) for o in (TEMPERATURE_FIRST, TOP_P_FIRST))
    assert (tf > 0).sum() < (pf > 0).sum()
    assert not chi_square_ok(frequencies(ROW, 0.6, 0.9, 0, TEMPERATURE_FIRST), pf)
    assert not chi_square_ok(frequencies(ROW, 0.6, 0.9, 0, TOP_P_FIRST), tf)


@pytest.mark.parametrize("order", ORDERS)
def test_a_full_vocabulary_row_with_heavy_tail(order):
    """A vocabulary-sized row whose flat tail holds much of the mass: the nucleus reaches into the
    tail (ties broken by id) and the normaliser must count all of it. Buckets: each head token,
    the part of the tail inside the nucleus, the part outside."""
    n = 16_384
    logits = np.full(n, 2.2, dtype=np.float32)
    logits[[10_000, 3, 16_000, 9, 42]] = [9.0, 8.5, 8.0, 7.0, 6.0]
    probs = exact_probs(logits, 0.6, 0.95, 0, order)
    tail = logits == np.float32(2.2)
    buckets = np.zeros(n, dtype=int)
    buckets[[10_000, 3, 16_000, 9, 42]] = [0, 1, 2, 3, 4]
    buckets[tail & (probs > 0)] = 5
    buckets[tail & (probs == 0)] = 6
    bucket_probs = np.bincount(buckets, weights=probs, minlength=7)
    assert bucket_probs[5] > 0.01 and bucket_probs[6] == 0  # part of the tail is in the nucleus
    freq = frequencies(logits, 0.6, 0.95, 0, order, draws=2000, buckets=buckets)
    assert chi_square_ok(freq, bucket_probs, 2000), (np.round(freq, 4), np.round(bucket_probs, 4))


def test_a_tail_just_below_the_band_is_counted():
    """The band's bound decides N only when it can: here 300k tokens just below the band (each
    weighing e^-20.1) hold 5.6e-4 of the mass, enough to move the nucleus' edge from {A} to {A,
    B}; the band leaves N open, the whole-row path is taken and B drawn at its exact rate. A
    peaked row is decided by the band."""
    t, p = 0.6, 0.95
    logits = np.full(300_000, -(sampling.BAND + 0.1) * t, dtype=np.float32)
    logits[[7, 123]] = [0.0, t * np.log(1 / p - 1 - 2e-4)]  # A alone holds p of the band's weight
    probs = exact_probs(logits, t, p, 0, TEMPERATURE_FIRST)
    assert probs[123] > 0.04 and (probs > 0).sum() == 2
    assert len(sampling._nucleus_in_band(logits, np.array([7, 123]), 0.0, p, 1 / t)) == 0  # left open
    buckets = np.full(len(logits), 2)
    buckets[[7, 123]] = [0, 1]
    freq = frequencies(logits, t, p, 0, TEMPERATURE_FIRST, draws=2000, buckets=buckets)
    assert chi_square_ok(freq, np.bincount(buckets, weights=probs, minlength=3), 2000), freq
    top = float(ROW.max())
    band = np.flatnonzero(np.float32(top - sampling.BAND * t) <= ROW)
    nucleus = np.flatnonzero(exact_probs(ROW, t, 0.9, 0, TEMPERATURE_FIRST))
    assert list(sampling._nucleus_in_band(ROW, band, top, 0.9, 1 / t)) == list(nucleus)


def test_a_step_drawn_at_once_equals_its_rows_drawn_one_by_one():
    """draw_rows over a step's rows (split over the cores) gives each row the token sample gives
    it alone with the same generator: greedy, nucleus in both orders, top-k and top-p = 1 rows
    mixed, rows taken out of order and one twice; each sampled row takes one uniform."""
    rng = np.random.default_rng(3)
    block = (rng.standard_normal((12, 5000)) * 3).astype(np.float32)
    block[rng.integers(0, 12, 30), rng.integers(0, 5000, 30)] += 12
    kinds = [
        (0.0, 0.95, 0, TEMPERATURE_FIRST),
        (0.6, 0.95, 0, TEMPERATURE_FIRST),
        (1.2, 0.9, 0, TOP_P_FIRST),
        (0.6, 0.95, 40, TEMPERATURE_FIRST),
        (0.8, 1.0, 0, TOP_P_FIRST),
    ]
    rows = [11, 3, 0, 7, 7, 5, 9, 1, 2, 10, 4, 6, 8]
    params = [kinds[i % len(kinds)] for i in range(len(rows))]
    together = draw_rows(block, rows, [(*k, new_rng(i)) for i, k in enumerate(params)])
    alone = [sample(block[r], *k, new_rng(i)) for i, (r, k) in enumerate(zip(rows, params))]
    assert together == alone
    assert together[0] == int(block[11].argmax())
    gen = new_rng(0)
    draw_rows(block, [1, 2], [(0.6, 0.95, 0, TEMPERATURE_FIRST, gen), (0.0, 0.95, 0, TEMPERATURE_FIRST, gen)])
    ref = new_rng(0)
    ref.random()  # the sampled row's uniform; the greedy row takes none
    assert gen.random() == ref.random()


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 127, 128, 129, 300, 4096, 151_936])
def test_sums_round_as_numpy_sums(n):
    """The native normaliser adds in numpy's pairwise order, so its nucleus edge is numpy's."""
    a = np.random.default_rng(n).random(n) * 10.0 ** np.random.default_rng(n + 1).uniform(-6, 6, n)
    assert sampling._pairwise_sum(a) == float(np.add.reduce(a))


def test_greedy_is_the_first_maximum_and_top_p_one_is_the_full_softmax():
    row = np.array([0.5, 2.0, 2.0, -1.0], dtype=np.float32)
    assert sample(row, 0.0, 0.95, 0, TEMPERATURE_FIRST, new_rng(0)) == 1
    freq = frequencies(row, 1.0, 1.0, 0, TEMPERATURE_FIRST)
    assert chi_square_ok(freq, exact_probs(row, 1.0, 1.0, 0, TEMPERATURE_FIRST))


def test_same_seed_same_tokens():
    a, b, c = new_rng(5), new_rng(5), new_rng(6)
    draws = [[sample(ROW, 1.0, 0.99, 0, TEMPERATURE_FIRST, g) for _ in range(50)] for g in (a, b, c)]
    assert draws[0] == draws[1] != draws[2]


# ---- the engine ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(smollm2_path):
    eng = LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=4, ctx_per_seq=384, n_threads=THREADS))
    yield eng
    eng.close()


def _run(engine, requests) -> dict[str, list[int]]:
    for r in requests:
        engine.submit(r)
    tokens: dict[str, list[int]] = {r.id: [] for r in requests}
    for _ in range(2000):
        if not engine.has_work():
            break
        for ev in engine.step():
            if isinstance(ev, TokenEvent):
                tokens[ev.request_id].append(ev.token_id)
    assert not engine.has_work()
    return tokens


def test_engine_draws_every_token_with_the_sampling_function(engine, monkeypatch):
    """Each emitted token is drawn by sampling.draw_rows from that step's logits with the request's own
    generator: replaying the recorded logits through it with a fresh generator of the request's
    seed gives the same tokens. The same seed repeats the tokens, another seed changes them."""
    calls: dict[int, list[tuple[np.ndarray, int]]] = {}

    def recording(block, rows, draws):
        tokens = draw_rows(block, rows, draws)
        for row, draw, token in zip(rows, draws, tokens):
            calls.setdefault(id(draw[-1]), []).append((block[row].copy(), token))
        return tokens

    monkeypatch.setattr(llama_engine, "draw_rows", recording)
    prompt = chat(engine, "Tell me a short story about a cat.")
    sp = SamplingParams(max_tokens=24, temperature=0.6, top_p=0.95, seed=11)
    out = _run(
        engine,
        [
            Request("a", prompt, sp),
            Request("b", prompt, sp),
            Request("c", prompt, SamplingParams(max_tokens=24, temperature=0.6, top_p=0.95, seed=12)),
        ],
    )
    assert out["a"] == out["b"]
    assert out["a"] != out["c"]
    drawn = [[token for _, token in rows] for rows in calls.values()]
    assert sorted(drawn) == sorted(out.values())
    for rows in calls.values():
        replay = new_rng(11 if [t for _, t in rows] == out["a"] else 12)
        assert [sample(row, 0.6, 0.95, 0, TEMPERATURE_FIRST, replay) for row, _ in rows] == [t for _, t in rows]


def test_engine_order_changes_the_draws_and_grammar_keeps_its_chain(engine):
    prompt = chat(engine, "Name three colours.")
    base = SamplingParams(max_tokens=24, temperature=1.5, top_p=0.8, seed=3)
    out = _run(engine, [Request("tf", prompt, base), Request("pf", prompt, replace(base, order=TOP_P_FIRST))])
    assert out["tf"] != out["pf"]
    grammar = 'root ::= "yes" | "no"'
    out = _run(engine, [Request("g", prompt, base, grammar=grammar)])
    assert engine.model.detokenize([t for t in out["g"] if not engine.model.is_eog(t)]) in ("yes", "no")


@pytest.mark.parametrize("bad", [SamplingParams(order="top_p_last"), SamplingParams(top_k=-1)])
def test_engine_refuses_bad_order_or_top_k(engine, bad):
    with pytest.raises(UserError, match="order one of"):
        engine.submit(Request("bad", "hi", bad))


def test_spec_order_is_in_the_cell_and_checked():
    spec = {"datasets": {"gsm8k": 1}, "sampling": {"order": "top_p_first", "top_k": 40}}
    (cell,) = expand(spec, "test.toml")
    assert cell.as_dict()["sampling_order"] == "top_p_first" and cell.top_k == 40
    (default,) = expand({"datasets": {"gsm8k": 1}}, "test.toml")
    assert default.sampling_order == TEMPERATURE_FIRST and default.top_k == 0
    with pytest.raises(UserError, match="sampling.order"):
        expand({"datasets": {"gsm8k": 1}, "sampling": {"order": "random"}}, "test.toml")
    with pytest.raises(UserError, match="sampling.top_k"):
        expand({"datasets": {"gsm8k": 1}, "sampling": {"top_k": 1.5}}, "test.toml")


# ---- drawing in the decode graph (sample_on = "device") -------------------------------------

PROMPT = "Once upon a time, there was a"


def _first_token_logits(engine, monkeypatch) -> np.ndarray:
    """The logits of PROMPT's next token, as the host sampler sees them."""
    rows = []

    def recording(block, at, draws):
        rows.extend(block[r].copy() for r in at)
        return draw_rows(block, at, draws)

    monkeypatch.setattr(llama_engine, "draw_rows", recording)
    _run(engine, [Request("logits", PROMPT, SamplingParams(max_tokens=1, temperature=0.6, top_p=0.95))])
    monkeypatch.undo()
    return rows[0]


@pytest.fixture(scope="module")
def device_engine(smollm2_path):
    eng = LlamaCppEngine(
        str(smollm2_path), LlamaCppOptions(max_seqs=32, ctx_per_seq=32, n_threads=1, sample_on="device")
    )
    yield eng
    eng.close()


@pytest.mark.parametrize(
    "order",
    [TEMPERATURE_FIRST, pytest.param(TOP_P_FIRST, marks=pytest.mark.slow)],  # 17 s each on 2 cores
)
def test_device_draws_follow_the_exact_distribution(engine, device_engine, monkeypatch, order):
    """512 first tokens of PROMPT drawn by llama.cpp's chain in the decode graph (distinct seeds,
    the presets' temperature 0.6 and top-p 0.95) against exact_probs of that position's logits:
    no draw outside the nucleus (51 tokens temperature-first, 1,420 top-p-first), and a
    chi-square over the tokens expected 10+ times plus the rest of the nucleus. The top-p-first
    order runs with -m slow; the default run keeps the presets' order (temperature first)."""
    assert device_engine.info().sample_on == "device"
    probs = exact_probs(_first_token_logits(engine, monkeypatch), 0.6, 0.95, 0, order)
    draws = 512
    sp = SamplingParams(max_tokens=1, temperature=0.6, top_p=0.95, order=order)
    out = _run(device_engine, [Request(f"d{i}", PROMPT, replace(sp, seed=i)) for i in range(draws)])
    tokens = np.array(list(out.values())).ravel()
    assert len(tokens) == draws
    big = np.flatnonzero(probs * draws >= 10)
    buckets = np.full(len(probs), len(big) + 1)  # outside the nucleus
    buckets[probs > 0] = len(big)  # the rest of the nucleus
    buckets[big] = np.arange(len(big))
    freq = np.bincount(buckets[tokens], minlength=len(big) + 2) / draws
    bucket_probs = np.bincount(buckets, weights=probs, minlength=len(big) + 2)
    assert freq[-1] == 0, f"{int(freq[-1] * draws)} draws outside the nucleus"
    assert chi_square_ok(freq, bucket_probs, draws), (np.round(freq, 3), np.round(bucket_probs, 3))


def test_device_draws_keep_each_request_on_its_own_chain(smollm2_path):
    """Greedy and sampled requests mixed, more than the engine's slots, so sequences finish, ids
    are compacted and freed ids re-used: each greedy request's tokens equal the host's greedy
    tokens in the same run shape (its chain followed it), and a sampled request's tokens repeat
    with its seed."""
    requests = []
    for i in range(10):
        sampled = SamplingParams(max_tokens=8 + 3 * i, temperature=0.6, top_p=0.95, seed=i % 3)
        requests.append(Request(f"r{i}", PROMPT, sampled if i % 2 else SamplingParams(max_tokens=8 + 3 * i)))
    runs = {}
    for where in ("host", "device"):
        eng = LlamaCppEngine(
            str(smollm2_path), LlamaCppOptions(max_seqs=4, ctx_per_seq=96, n_threads=1, sample_on=where)
        )
        try:
            runs[where] = _run(eng, requests)
            assert eng.seq_moves > 0
        finally:
            eng.close()
    for i, r in enumerate(requests):
        if i % 2 == 0:
            assert runs["device"][r.id] == runs["host"][r.id], r.id
    r1, r7 = runs["device"]["r1"], runs["device"]["r7"]  # both seed 1: the same draws while both run
    assert r7[: len(r1)] == r1


def test_where_tokens_are_drawn_is_chosen_and_checked(engine, smollm2_path):
    """host is the default; device is refused with speculative decoding, and on a CPU output
    layer with more than one thread; a bad value names the values."""
    assert engine.info().sample_on == "host"
    with pytest.raises(UserError, match="threads = 1 only"):
        LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=2, ctx_per_seq=64, n_threads=2, sample_on="device"))
    with pytest.raises(UserError, match="sample_on 'device': speculative"):
        LlamaCppEngine(
            str(smollm2_path),
            LlamaCppOptions(max_seqs=2, ctx_per_seq=64, n_threads=THREADS, sample_on="device", speculative="ngram"),
        )
    with pytest.raises(UserError, match="must be one of host, device"):
        LlamaCppOptions(sample_on="gpu")


def test_a_refused_sample_on_frees_the_model_and_context(smollm2_path, monkeypatch):
    """The sample_on check runs after the context is built: its UserError frees both."""
    freed = []
    close, free = llama_engine.LlamaModel.close, llama_engine.lc.llama_free
    monkeypatch.setattr(llama_engine.LlamaModel, "close", lambda self: freed.append("model") or close(self))
    monkeypatch.setattr(llama_engine.lc, "llama_free", lambda ctx: freed.append("context") or free(ctx))
    with pytest.raises(UserError, match="threads = 1 only"):
        LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=2, ctx_per_seq=64, n_threads=2, sample_on="device"))
    assert freed == ["context", "model"]
