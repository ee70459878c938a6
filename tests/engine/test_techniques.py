"""KV-cache quantization, prefix caching and speculative decoding in the llama.cpp engine, on the
real SmolLM2 and Qwen2.5-Coder models.

Greedy-equivalence runs go through `isolated`: a fresh Python process with a batch-invariant
engine (see "Batch invariance" in backends/rllm_study/backends/llama_cpp/engine.py), because llama.cpp reads the switch
for its tiled matrix multiplication once per process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import llama_cpp as lc
import pytest

from conftest import THREADS, batch_invariant_call, run_cli
from rllm_study.analysis.metrics import prefix_saved_prefill
from rllm_study.backends.base import Request, RequestFinished, SamplingParams, TokenEvent
from rllm_study.backends.llama_cpp.engine import LlamaCppEngine
from rllm_study.backends.options import LlamaCppOptions, parse_speculative
from rllm_study.errors import UserError

QUESTIONS = [
    "Count from 1 to 30, separated by commas.",
    "Repeat the word 'apple' ten times.",
    "Write a Python function that adds two numbers, then write the same function again.",
    "What is the capital of France?",
]
# A long shared system prompt (about 400 SmolLM2 tokens), as in a few-shot workload.
SYSTEM = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer item {i} briefly and exactly." for i in range(40)
)


def generate(
    model: str,
    options: dict,
    prompts: list[list[dict]],
    max_tokens: int,
    one_by_one: bool = False,
    batch_invariant: bool = True,
    sampling: dict | None = None,
) -> dict:
    """Run chat prompts through an engine (all at once, or each after the previous finished);
    per request: tokens, draft marks ('1' = accepted draft), prompt/cached tokens, draft counts;
    plus the engine's stats().extra and the cell's `techniques` metrics."""
    from rllm_study.analysis.metrics import cell_metrics
    from rllm_study.commands.generate import run_prompts
    from rllm_study.running.results import Cell

    engine = LlamaCppEngine(model, LlamaCppOptions(n_threads=THREADS, batch_invariant=batch_invariant, **options))
    texts = [engine.apply_chat_template(m) for m in prompts]
    params = SamplingParams(max_tokens=max_tokens, **(sampling or {}))
    cells = (
        [run_prompts(engine, [t], params, raw=True) for t in texts]
        if one_by_one
        else [run_prompts(engine, texts, params, raw=True)]
    )
    extra = engine.stats().extra.as_dict()  # the keys the timeline records
    engine.close()
    pairs = [(r, c.tokens[r["id"]]) for c in cells for r in c.requests]  # ids repeat across one-by-one cells
    merged = Cell(
        Path("."),
        {},
        [{**r, "id": f"q{i}"} for i, (r, _) in enumerate(pairs)],
        {f"q{i}": row for i, (_, row) in enumerate(pairs)},
    )
    return {
        "requests": [
            {
                "tokens": row["token_ids"],
                "draft": row["draft"],
                "prompt_tokens": r["prompt_tokens"],
                "cached_tokens": r["cached_tokens"],
                "draft_proposed": r["draft_proposed"],
                "draft_accepted": r["draft_accepted"],
                "finish_reason": r["finish_reason"],
            }
            for r, row in pairs
        ],
        "extra": extra,
        "techniques": cell_metrics(merged)["techniques"],
    }


def isolated(*args, **kwargs) -> dict:
    """`generate` in a fresh Python process (see the module docstring)."""
    return batch_invariant_call("test_techniques", "generate", *args, **kwargs)


def chats(questions: list[str], system: str | None = None) -> list[list[dict]]:
    return [
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
        for q in questions
    ]


def assert_same_tokens(a: dict, b: dict) -> None:
    for i, (x, y) in enumerate(zip(a["requests"], b["requests"], strict=True)):
        assert x["tokens"] == y["tokens"], f"request {i} diverged"


def assert_draft_accounting(run: dict, k: int) -> None:
    """Accepted drafts are marked on their tokens; a verification step emits at most k accepted
    drafts, then one target token (the request's last step may end on a draft); the engine's
    totals are the requests' sums; the metrics read them back."""
    for r in run["requests"]:
        assert r["draft"].count("1") == r["draft_accepted"] <= r["draft_proposed"]
        assert r["draft"][0] == "0"  # the first token comes from the prompt's logits
        assert "1" * (k + 1) not in r["draft"]
    proposed = sum(r["draft_proposed"] for r in run["requests"])
    accepted = sum(r["draft_accepted"] for r in run["requests"])
    assert (run["extra"]["draft_proposed"], run["extra"]["draft_accepted"]) == (proposed, accepted)
    t = run["techniques"]
    assert (t["draft_proposed"], t["draft_accepted"]) == (proposed, accepted)
    assert t["draft_acceptance_rate"] == pytest.approx(accepted / proposed)
    marks = "".join(r["draft"] for r in run["requests"] if r["draft_proposed"] > 0)  # the metric's rule
    assert t["mean_accepted_per_step"] == pytest.approx(marks.count("1") / marks.count("0"))


# -- KV-cache quantization -------------------------------------------------------------------


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "q4_0"])
def test_kv_bytes_per_token_matches_llama_state_size(smollm2_path, kv_type):
    """The state of one sequence (llama_state_seq_get_size) grows by the KV bytes of each new
    token plus 12 bytes of cell metadata (position, seq-id count, seq id)."""
    engine = LlamaCppEngine(
        str(smollm2_path),
        LlamaCppOptions(max_seqs=1, ctx_per_seq=256, n_threads=THREADS, type_k=kv_type, type_v=kv_type),
    )
    prompt = engine.apply_chat_template([{"role": "user", "content": "Count from 1 to 100, separated by commas."}])
    engine.submit(Request("k", prompt, SamplingParams(max_tokens=40)))
    engine.step()
    seq = engine.running[0]
    n1, size1 = seq.n_past, lc.llama_state_seq_get_size(engine.ctx, seq.seq_id)
    for _ in range(12):
        engine.step()
    n2, size2 = seq.n_past, lc.llama_state_seq_get_size(engine.ctx, seq.seq_id)
    per_token = engine.info().kv_bytes_per_token
    engine.close()
    assert n2 - n1 == 12
    assert (size2 - size1) / (n2 - n1) == per_token + 12
    assert per_token == {"f16": 23040, "q8_0": 23040 * 34 / 64, "q4_0": 23040 * 18 / 64}[kv_type]


def test_quantized_kv_holds_more_sequences_in_same_memory(smollm2_path):
    """One KV byte budget (512 f16 cells); each cache type gets the cells that fit in it
    (a multiple of 256); eight 150-token prompts arrive at once into a unified cache.
    Admitted concurrently: f16 < q8_0 < q4_0."""
    budget = 512 * 23040
    prompt = "Summarise this: " + "the quick brown fox jumps over the lazy dog " * 15
    peaks = {}
    for kv in ("f16", "q8_0", "q4_0"):
        probe = LlamaCppEngine(
            str(smollm2_path), LlamaCppOptions(max_seqs=1, ctx_per_seq=256, n_threads=THREADS, type_k=kv, type_v=kv)
        )
        per_token = probe.info().kv_bytes_per_token
        probe.close()
        n_ctx = int(budget // per_token) // 256 * 256
        engine = LlamaCppEngine(
            str(smollm2_path),
            LlamaCppOptions(max_seqs=8, n_ctx=n_ctx, kv_unified=True, n_threads=THREADS, type_k=kv, type_v=kv),
        )
        assert engine.n_ctx * per_token <= budget
        for i in range(8):
            engine.submit(Request(f"r{i}", prompt, SamplingParams(max_tokens=4)))
        peak = 0
        while engine.has_work():
            engine.step()
            peak = max(peak, engine.stats().running)
        engine.close()
        peaks[kv] = peak
    assert peaks["f16"] < peaks["q8_0"] < peaks["q4_0"] == 8, peaks


# -- prefix caching --------------------------------------------------------------------------


def test_prefix_cache_counts_hits_and_keeps_greedy_output(smollm2_path):
    """Crafted workload, one request at a time: four questions under one long system prompt
    (the first misses, the others reuse the system prompt), the first again (all its prompt
    but the last token reused), and a short unrelated prompt (a miss). Output is unchanged, with
    and without n-gram speculation on top."""
    prompts = chats(QUESTIONS, SYSTEM) + chats(QUESTIONS[:1], SYSTEM) + chats(["Hi"])
    opts = {"max_seqs": 2, "ctx_per_seq": 1024}
    off = isolated(str(smollm2_path), opts, prompts, 12, one_by_one=True)
    on = isolated(str(smollm2_path), {**opts, "prefix_cache": True}, prompts, 12, one_by_one=True)
    both = isolated(
        str(smollm2_path), {**opts, "prefix_cache": True, "speculative": "ngram"}, prompts, 12, one_by_one=True
    )
    assert_same_tokens(off, on)
    assert_same_tokens(off, both)

    engine = LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=1, ctx_per_seq=1024, n_threads=THREADS))
    toks = [engine.model.tokenize(engine.apply_chat_template(m)) for m in prompts]
    engine.close()

    def shared(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    expected = [0] + [max(shared(toks[i], toks[j]) for j in range(i)) for i in range(1, 4)] + [len(toks[4]) - 1, 0]
    assert expected[1] > 350 and expected[5] == 0  # the system prompt is shared; "Hi" shares < 16 tokens
    for run in (on, both):
        assert [r["cached_tokens"] for r in run["requests"]] == expected
        x = run["extra"]
        assert (x["prefix_lookups"], x["prefix_hits"], x["prefix_tokens_reused"]) == (6, 4, sum(expected))
        assert prefix_saved_prefill(x) == pytest.approx(sum(expected) * x["prefill_s_per_token"], rel=1e-4)
        assert run["techniques"]["prefix_hit_rate"] == pytest.approx(4 / 6)
        assert run["techniques"]["cached_prompt_tokens"] == sum(expected)
    # Entries: the four distinct long prompts and "Hi" (with the template's default system prompt); not the repeat
    assert on["extra"]["prefix_entries"] == 5
    assert on["extra"]["prefix_cached_tokens"] == sum(len(t) for t in toks[:4]) + len(toks[5])


def test_prefix_cache_evicts_least_recently_used_under_its_budget(smollm2_path):
    """Room for 1,300 tokens. A and B (~570 tokens each, sharing the system prompt), A again (A
    becomes the most recent), then an unrelated ~300-token prompt D: B, the least recently
    used, is evicted. Then A again reuses all but its last token, B only the system prompt."""
    a, b = chats(QUESTIONS[:2], SYSTEM)
    d = chats(["Summarise: " + "the quick brown fox jumps over the lazy dog " * 28])[0]
    opts = {"max_seqs": 1, "ctx_per_seq": 1024}
    run = isolated(
        str(smollm2_path),
        {**opts, "prefix_cache": True, "prefix_cache_tokens": 1300},
        [a, b, a, d, a, b],
        12,
        one_by_one=True,
    )
    reqs = run["requests"]
    assert reqs[3]["cached_tokens"] == 0 and sum(reqs[i]["prompt_tokens"] for i in (0, 1, 3)) > 1300
    assert reqs[4]["cached_tokens"] == reqs[4]["prompt_tokens"] - 1
    assert reqs[5]["cached_tokens"] == reqs[1]["cached_tokens"] < reqs[5]["prompt_tokens"] - 5
    assert run["extra"]["prefix_entries"] == 2 and run["extra"]["prefix_cached_tokens"] <= 1300
    cold = isolated(str(smollm2_path), opts, [a, b], 12, one_by_one=True)  # no cache at all
    assert reqs[4]["tokens"] == cold["requests"][0]["tokens"]  # A from its cached entry
    assert reqs[5]["tokens"] == cold["requests"][1]["tokens"]  # B after its eviction: only the system prompt reused


# -- speculative decoding --------------------------------------------------------------------


def test_ngram_speculation_keeps_greedy_output(smollm2_path):
    prompts = chats(QUESTIONS)
    opts = {"max_seqs": 4, "ctx_per_seq": 512}
    plain = isolated(str(smollm2_path), opts, prompts, 60)
    spec = isolated(str(smollm2_path), {**opts, "speculative": "ngram", "speculative_tokens": 4}, prompts, 60)
    assert_same_tokens(plain, spec)
    assert spec["extra"]["draft_accepted"] > 10
    assert_draft_accounting(spec, 4)


def test_draft_model_speculation_keeps_greedy_output(smollm2_path):
    """SmolLM2 re-quantized to Q4_0 drafting for SmolLM2 Q4_1: the same vocabulary, close but
    not equal logits, so drafts are accepted and rejected; one and four concurrent sequences.
    With four, requests end at different steps and a sequence moves to a lower id, its draft KV
    with it (LlamaCppEngine._compact_ids)."""
    proposed = accepted = 0
    for n in (1, 4):
        prompts = chats(QUESTIONS[:n])
        opts = {"max_seqs": n, "ctx_per_seq": 512}
        plain = isolated(str(smollm2_path), opts, prompts, 40)
        spec = isolated(
            str(smollm2_path), {**opts, "speculative": "draft:smollm2-135m:Q4_0", "speculative_tokens": 3}, prompts, 40
        )
        assert_same_tokens(plain, spec)
        assert_draft_accounting(spec, 3)
        if n == 4:
            assert spec["extra"]["seq_moves"] >= 1
        proposed += spec["extra"]["draft_proposed"]
        accepted += spec["extra"]["draft_accepted"]
    assert 0 < accepted < proposed


@pytest.mark.slow  # fetches the 1.5B model (1.1 GB), which setup does not
def test_qwen_half_b_drafting_for_one_and_a_half_b_keeps_greedy_output():
    """The real draft/target pair, two sequences, 20 tokens (the 1.5B decodes ~10-15 tok/s on 2 cores)."""
    prompts = chats(QUESTIONS[:2])
    opts = {"max_seqs": 2, "ctx_per_seq": 512}
    plain = isolated("qwen2.5-coder-1.5b", opts, prompts, 20)
    spec = isolated(
        "qwen2.5-coder-1.5b", {**opts, "speculative": "draft:qwen2.5-coder-0.5b", "speculative_tokens": 4}, prompts, 20
    )
    assert_same_tokens(plain, spec)
    assert spec["extra"]["draft_accepted"] > 0
    assert_draft_accounting(spec, 4)


def test_speculation_with_sampling_is_seeded_and_keeps_the_grammar(smollm2_path):
    """Temperature > 0: the same seed gives the same tokens; a grammar still holds on every
    emitted token (drafts are checked by the grammar-constrained sampler)."""
    grammar = 'root ::= [a-z ]{3,40} "</think>" " The answer is " [0-9] "."'
    engine = LlamaCppEngine(
        str(smollm2_path), LlamaCppOptions(max_seqs=3, ctx_per_seq=512, n_threads=THREADS, speculative="ngram")
    )
    prompt = engine.apply_chat_template([{"role": "user", "content": "What is 2+2? Think first."}]) + "<think>"
    sampling = SamplingParams(max_tokens=60, temperature=0.9, seed=5)
    for rid in ("a", "b"):
        engine.submit(Request(rid, prompt, sampling, starts_in_think=True, grammar=grammar))
    engine.submit(Request("g", prompt, SamplingParams(max_tokens=60), starts_in_think=True, grammar=grammar))
    tokens: dict[str, list[int]] = {}
    finished = {}
    while engine.has_work():
        for ev in engine.step():
            if isinstance(ev, TokenEvent):
                tokens.setdefault(ev.request_id, []).append(ev.token_id)
            elif isinstance(ev, RequestFinished):
                finished[ev.request_id] = ev
    engine.close()
    assert tokens["a"] == tokens["b"]
    assert sum(fin.draft_accepted for fin in finished.values()) > 0
    for fin in finished.values():
        assert fin.reason == "stop"
        head, sep, tail = fin.output_text.partition("</think>")
        assert sep and set(head) <= set("abcdefghijklmnopqrstuvwxyz ")
        assert tail[:-2] == " The answer is " and tail[-2].isdigit() and tail[-1] == "."


@pytest.mark.parametrize("spec", ["ngram", "draft:smollm2-135m:Q4_0"])
def test_speculation_at_temperature_gives_the_tokens_of_no_speculation(smollm2_path, spec):
    """Temperature 0.8, one seed, batch-invariant: every emitted token is one draw of the
    target's own sampler whether or not drafts are fed, so speculation on and off give the same
    tokens; drafts are accepted (and, from the Q4_0 draft model, also rejected)."""
    prompts = chats(QUESTIONS)
    opts = {"max_seqs": 4, "ctx_per_seq": 512}
    sampling = {"temperature": 0.8, "top_p": 0.95, "seed": 11}
    off = isolated(str(smollm2_path), opts, prompts, 40, sampling=sampling)
    on = isolated(
        str(smollm2_path), {**opts, "speculative": spec, "speculative_tokens": 3}, prompts, 40, sampling=sampling
    )
    assert_same_tokens(off, on)
    assert on["extra"]["draft_accepted"] > 0
    if spec.startswith("draft"):
        assert on["extra"]["draft_accepted"] < on["extra"]["draft_proposed"]
    assert_draft_accounting(on, 3)


def test_preemption_at_temperature_recomputes_and_keeps_the_seeded_tokens_up_to_it(smollm2_path):
    """A unified cache too small for four requests at temperature 0.8 (ignore_eos, so every request
    runs its 40 tokens whatever it samples): the youngest is preempted and recomputed and all
    finish. Until the first preemption both runs have the same batches, so every request's seeded
    tokens equal those of the same requests in a cache with room for all. After it they may part:
    batch invariance does not hold in a unified cache, whose attention spans the cells in use by
    every sequence (docs/engines.md; measured at n_ctx 256 and 90 tokens, SmolLM2 seed 4: three of
    four requests parted at tokens 23, 24 and 46). Parting before the first preemption would be a
    sampler or scheduling bug."""
    prompts = chats([f"Count from {n} to {n + 25}, separated by commas." for n in (1, 30, 60, 90)])
    sampling = {"temperature": 0.8, "top_p": 0.95, "seed": 4}
    common = {"max_seqs": 4, "kv_unified": True, "ignore_eos": True}
    # n_ctx 256: llama.cpp rounds a context up to a multiple of 256 (llama_n_ctx), so no smaller one is
    tight = isolated(str(smollm2_path), {**common, "n_ctx": 256}, prompts, 40, sampling=sampling)
    roomy = isolated(str(smollm2_path), {**common, "n_ctx": 2048}, prompts, 40, sampling=sampling)
    assert tight["extra"]["preemptions"] >= 1 and roomy["extra"]["preemptions"] == 0
    assert [len(r["tokens"]) for r in tight["requests"]] == [40] * 4
    assert all(r["finish_reason"] == "length" for r in tight["requests"])
    # every request holds prompt + k cells after k tokens: the first preemption comes after at least
    # `lockstep` tokens of all four (the engine preempts only when the cells needed exceed n_ctx)
    lockstep = (256 - sum(r["prompt_tokens"] for r in tight["requests"])) // 4
    assert lockstep >= 16, lockstep
    for i, (t, r) in enumerate(zip(tight["requests"], roomy["requests"], strict=True)):
        assert t["tokens"][:lockstep] == r["tokens"][:lockstep], f"request {i} parted before any preemption"


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["draft", "draft:", "lookahead", "ngram:3"])
def test_bad_spec_values_are_user_errors(spec):
    with pytest.raises(UserError, match="spec"):
        parse_speculative(spec)


def test_batch_invariant_is_a_spec_key_that_reaches_the_engine(smollm2_path):
    from rllm_study.running.spec import expand

    variants = [{"name": "plain"}, {"name": "invariant", "engine": {"batch_invariant": True}}]
    cells = expand({"datasets": {"gsm8k": 1}, "variants": variants}, "spec.toml")
    assert [c.engine.batch_invariant for c in cells] == [False, True]
    engine = LlamaCppEngine(str(smollm2_path), replace(cells[1].engine, n_threads=THREADS))
    context = engine.info().context
    engine.close()
    assert context["batch_invariant"] is True and context["flash_attn"] is True


def test_engine_rejects_bad_technique_options(smollm2_path):
    for bad in (
        {"speculative": "ngram", "speculative_tokens": 0},
        {"prefix_cache": True, "prefix_cache_tokens": 0},
        {"type_k": "q3_0"},
    ):
        with pytest.raises(UserError):
            LlamaCppEngine(str(smollm2_path), LlamaCppOptions(n_threads=THREADS, **bad))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["-m", "smollm2-135m:Q9_9"], "unknown quantization type 'Q9_9'"),
        (["-m", "smollm2-135m", "--kv-type-k", "q3_0"], "unknown KV-cache type 'q3_0'"),
        (["-m", "smollm2-135m", "--kv-type-v", "int4"], "unknown KV-cache type 'int4'"),
        (["-m", "qwen2.5-coder-0.5b", "--speculative", "draft:smollm2-135m"], "vocabulary"),
        (["-m", "smollm2-135m", "--speculative", "medusa"], "--speculative 'medusa'"),
        (["-m", "smollm2-135m", "--batch-invariant", "--no-flash-attn"], "batch_invariant needs flash attention"),
    ],
)
def test_bad_option_values_give_one_line_and_exit_code_2(args, needle):
    done = run_cli("generate", "-p", "Hi", "-n", "2", "-t", str(THREADS), *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], done.stderr
