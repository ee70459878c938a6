"""Overlap (engine option overlap_decode): booking a step's tokens while the next decode runs
gives the same tokens, texts, finishes and think splits as booking them first, on the real
llama.cpp engine (SmolLM2). On a CPU llama_decode computes the whole step before it returns, so
overlap gains nothing there, but every rule of it (the provisional next token, a stop string or
think close found one step late, slots released after the decode they are in) runs the same.

The equivalence run goes through a fresh process with a batch-invariant engine (see "Batch
invariance" in backends/rllm_study/backends/llama_cpp/engine.py): overlap feeds a request that
meets a stop string once more and a think close one step later, so batch shapes differ, and only
batch-invariant logits make the tokens of the other requests comparable bit for bit."""

from __future__ import annotations

import pytest

from conftest import THREADS, batch_invariant_call, chat, drain
from rllm_study.backends.base import Request, SamplingParams
from rllm_study.backends.llama_cpp.engine import LlamaCppEngine
from rllm_study.backends.options import LlamaCppOptions
from rllm_study.errors import UserError

CUE = "\n\nThe final answer is $\\boxed{"


def scenario(model: str, overlap: bool) -> dict:
    """Five requests over three slots (two wait for one), ending every way a request ends: a stop
    string, max_tokens (greedy and seeded samples), a think budget's forced close, the model's
    end of generation. Per request: tokens, finish reason, text, think/answer counts, forced close."""
    engine = LlamaCppEngine(
        model,
        LlamaCppOptions(max_seqs=3, ctx_per_seq=512, n_threads=THREADS, batch_invariant=True, overlap_decode=overlap),
    )
    think = chat(engine, "What is 2+3? Think inside <think> </think> first.") + "<think>\n"
    requests = [
        Request("stop", chat(engine, "Count from 1 to 30, separated by commas."), SamplingParams(60, stop=["7."])),
        Request(
            "sampled", chat(engine, "Write one sentence about the sea."), SamplingParams(24, temperature=0.8, seed=1)
        ),
        Request("think", think, SamplingParams(30, think_budget=6), starts_in_think=True, answer_cue=CUE),
        Request("top_p", chat(engine, "Name three colours."), SamplingParams(20, temperature=0.7, top_p=0.9, seed=3)),
        Request("eos", chat(engine, "Say only the word yes."), SamplingParams(40)),
    ]
    for r in requests:
        engine.submit(r)
    got = drain(engine)
    assert engine.overlap is overlap
    times = engine.step_times
    engine.close()
    return {
        "requests": {
            rid: {
                "tokens": rec["tokens"],
                "reason": rec["finish"].reason,
                "text": rec["finish"].output_text,
                "think": rec["finish"].think_tokens,
                "answer": rec["finish"].answer_tokens,
                "forced": rec["finish"].think_forced,
            }
            for rid, rec in got.items()
        },
        "steps": times.steps,
    }


def test_overlap_gives_the_same_outputs_as_booking_first(smollm2_path):
    off, on = (batch_invariant_call("test_overlap", "scenario", str(smollm2_path), ov) for ov in (False, True))
    assert off["requests"] == on["requests"]
    reasons = {rid: r["reason"] for rid, r in on["requests"].items()}
    assert reasons == {"stop": "stop", "sampled": "stop", "think": "stop", "top_p": "length", "eos": "stop"}
    think = on["requests"]["think"]
    assert think["forced"] and think["think"] == 6 and think["answer"] > 0
    assert on["requests"]["stop"]["text"].endswith("6. 6\n") and len(on["requests"]["stop"]["tokens"]) < 60
    assert len(on["requests"]["eos"]["tokens"]) < 40
    assert on["steps"] > 0 and off["steps"] > 0


def test_overlap_abort_in_flight_frees_the_slot_after_the_decode(smollm2_path):
    engine = LlamaCppEngine(
        str(smollm2_path), LlamaCppOptions(max_seqs=1, ctx_per_seq=512, n_threads=THREADS, overlap_decode=True)
    )
    p = chat(engine, "Tell me a long story.")
    engine.submit(Request("run", p, SamplingParams(max_tokens=200)))
    engine.submit(Request("next", p, SamplingParams(max_tokens=5)))
    held = []

    def abort(step):
        if step == 4:
            assert engine._inflight is not None  # "run" has a token in the decode still running
            engine.abort("run")
            held.append(list(engine._held))

    got = drain(engine, abort)
    assert [s.request.id for s in held[0]] == ["run"]  # its slot waited for that decode
    assert got["run"]["finish"].reason == "abort" and 0 < got["run"]["finish"].output_tokens < 200
    assert got["run"]["finish"].output_tokens == len(got["run"]["tokens"])
    assert got["next"]["finish"].reason == "length" and len(got["next"]["tokens"]) == 5
    assert engine.stats().kv_used == 0 and engine._free_ids == [0] and not engine._held
    engine.submit(Request("last", p, SamplingParams(max_tokens=50)))
    engine.step()
    engine.step()
    assert engine._inflight is not None
    engine.close()  # waits for the decode still running, then frees


def test_overlap_is_off_on_a_cpu_and_refused_where_it_cannot_work(smollm2_path):
    engine = LlamaCppEngine(str(smollm2_path), LlamaCppOptions(max_seqs=1, ctx_per_seq=256, n_threads=THREADS))
    assert engine.overlap is False  # no layer on a GPU: llama_decode is synchronous
    engine.close()
    for options, why in (
        ({"kv_unified": True}, "kv_unified"),
        ({"speculative": "ngram"}, "speculative decoding"),
    ):
        with pytest.raises(UserError, match=f"overlap_decode does not work with {why}"):
            LlamaCppEngine(
                str(smollm2_path),
                LlamaCppOptions(max_seqs=1, ctx_per_seq=256, n_threads=THREADS, overlap_decode=True, **options),
            )
