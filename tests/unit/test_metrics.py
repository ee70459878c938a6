"""Every metric on hand-built cells whose answers are worked out by hand in the comments."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rllm_study.analysis.metrics import (
    METRICS,
    Z95,
    cell_metrics,
    distribution,
    request_metrics,
    token_times,
    wilson_interval,
)
from rllm_study.errors import UserError
from rllm_study.running.results import CellWriter, read_cell

CLI = str(Path(sys.executable).with_name("rllm-study"))


def record(id, arrival, admitted, first, first_answer, finish, output, think, **extra):
    """A requests.jsonl line (times in seconds from the session start)."""
    return {
        "id": id,
        "dataset": "gsm8k",
        "domain": "math",
        "item_id": id,
        "arrival_s": arrival,
        "admitted_s": admitted,
        "prefill_done_s": first,
        "first_token_s": first,
        "first_answer_token_s": first_answer,
        "finish_s": finish,
        "prompt_tokens": 20,
        "cached_tokens": 0,
        "output_tokens": output,
        "think_tokens": think,
        "answer_tokens": output - think,
        "finish_reason": "stop",
        "extracted_answer": "1",
        "correct": True,
        "parse_status": "ok",
        "draft_proposed": 0,
        "draft_accepted": 0,
        "error": None,
        **extra,
    }


def tokens(id, t_s, phase, **extra):
    return {"id": id, "t_s": t_s, "token_ids": [1] * len(t_s), "phase": phase, "draft": "0" * len(t_s), **extra}


def write_cell(path: Path, sessions: list[list[tuple[dict, dict]]], timeline=(), name="cell-a"):
    """One CellWriter per session (a resume opens a new session), then read it back."""
    for i, pairs in enumerate(sessions):
        w = CellWriter(path)
        w.write_manifest({"cell": {"name": name}})
        for rec, tok in pairs:
            w.write_request(rec, tok)
        if i == 0:
            for sample in timeline:
                w.write_timeline(sample)
        w.close()
    return read_cell(path)


def three_requests():
    # r1 reasons: 5 think tokens 0.25 s apart from t=1, then 4 answer tokens at 3, 3.5, 4, 5.
    r1 = (
        record("r1", 0.0, 0.5, 1.0, 3.0, 5.0, 9, 5),
        tokens("r1", [1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 3.5, 4.0, 5.0], "tttttaaaa"),
    )
    # r2 answers directly: 5 answer tokens 0.5 s apart from t=2.
    r2 = (
        record("r2", 1.0, 1.0, 2.0, 2.0, 4.0, 5, 0, dataset="math500"),
        tokens("r2", [2.0, 2.5, 3.0, 3.5, 4.0], "aaaaa"),
    )
    # r3 is cut by the budget after one think token: no answer, unparsed.
    r3 = (
        record(
            "r3",
            2.0,
            3.0,
            4.0,
            None,
            4.0,
            1,
            1,
            finish_reason="length",
            correct=False,
            parse_status="unparsed",
            extracted_answer=None,
        ),
        tokens("r3", [4.0], "t"),
    )
    return [r1, r2, r3]


@pytest.fixture
def cell(tmp_path):
    return write_cell(tmp_path / "c", [three_requests()])


def test_per_request_latency_by_hand(cell):
    rows = {r["id"]: r for r in request_metrics(cell)}
    r1, r2, r3 = rows["r1"], rows["r2"], rows["r3"]
    assert (r1["ttft_s"], r1["ttfvt_s"], r1["e2el_s"], r1["queue_s"]) == (1.0, 3.0, 5.0, 0.5)
    assert r1["tpot_s"] == pytest.approx((5.0 - 1.0) / (9 - 1))
    assert r1["tpot_think_s"] == pytest.approx(0.25)  # 4 gaps of 0.25
    assert r1["tpot_answer_s"] == pytest.approx(2.0 / 3)  # gaps 0.5, 0.5, 1.0 (not the 1.0 think->answer gap)
    assert r1["think_ratio"] == pytest.approx(5 / 9)
    assert (r2["ttft_s"], r2["ttfvt_s"], r2["e2el_s"], r2["queue_s"], r2["tpot_s"]) == (1.0, 1.0, 3.0, 0.0, 0.5)
    assert r2["tpot_think_s"] is None and r2["tpot_answer_s"] == pytest.approx(0.5)
    assert r3["ttfvt_s"] is None and r3["tpot_s"] is None and r3["queue_s"] == 1.0
    assert [r["straggler"] for r in rows.values()] == [False, False, False]


def test_cell_metrics_by_hand(cell):
    m = cell_metrics(cell)
    assert m["cell"] == "cell-a" and m["n_requests"] == 3
    assert m["finish_reasons"] == {"stop": 2, "length": 1}
    lat = m["latency"]
    assert lat["ttft_s"]["count"] == 3 and lat["ttft_s"]["mean"] == pytest.approx(4 / 3) and lat["ttft_s"]["p50"] == 1.0
    assert lat["ttfvt_s"]["count"] == 2 and lat["ttfvt_s"]["mean"] == 2.0  # r3 has none
    assert lat["e2el_s"]["p90"] == pytest.approx(4.6)  # [2, 3, 5]: 3 + 0.8 * (5 - 3)
    assert lat["tpot_s"]["count"] == 2 and lat["tpot_s"]["mean"] == 0.5
    # ITL: r1's 8 gaps sum to 4 s, r2's 4 gaps of 0.5 s; r3 has one token.
    assert (
        lat["itl_s"]["count"] == 12 and lat["itl_s"]["mean"] == pytest.approx(6.0 / 12) and lat["itl_s"]["max"] == 1.0
    )
    thr = m["throughput"]
    assert thr["duration_s"] == 5.0  # last finish 5 - first arrival 0
    assert thr["output_tok_s"] == pytest.approx(15 / 5)  # 9 + 5 + 1 tokens
    assert thr["requests_s"] == pytest.approx(3 / 5)
    assert thr["goodput_req_s"] is None and thr["slo"] is None
    tok = m["tokens"]
    assert (tok["output"]["mean"], tok["think"]["mean"], tok["answer"]["mean"]) == (5.0, 2.0, 3.0)
    assert tok["think_ratio"]["mean"] == pytest.approx((5 / 9 + 0 + 1) / 3)
    assert tok["by_dataset"]["math500"]["output"]["count"] == 1 and tok["by_dataset"]["gsm8k"]["think"]["mean"] == 3.0
    json.dumps(m)  # plain JSON


def test_accuracy_counts_unparsed_and_failed_as_wrong(tmp_path):
    pairs = three_requests()
    failed = record(
        "r4",
        3.0,
        None,
        None,
        None,
        3.5,
        0,
        0,
        dataset="gpqa-diamond",
        domain="science",
        finish_reason="error",
        correct=None,
        parse_status="unparsed",
        error="boom",
    )
    ungraded = record(
        "r5", 3.0, 3.0, 3.1, 3.1, 3.4, 2, 0, dataset="sharegpt", domain=None, correct=None, parse_status=None
    )
    c = write_cell(
        tmp_path / "c", [pairs + [(failed, tokens("r4", [], "")), (ungraded, tokens("r5", [3.1, 3.4], "aa"))]]
    )
    acc = cell_metrics(c)["accuracy"]
    keys = ("correct", "total", "unparsed", "accuracy")
    assert {k: acc["overall"][k] for k in keys} == {"correct": 2, "total": 5, "unparsed": 2, "accuracy": 2 / 5}
    assert {k: acc["by_dataset"]["gsm8k"][k] for k in keys} == {
        "correct": 1,
        "total": 2,
        "unparsed": 1,
        "accuracy": 0.5,
    }
    assert acc["by_dataset"]["gpqa-diamond"]["accuracy"] == 0.0  # failed = wrong
    assert acc["by_dataset"]["sharegpt"]["accuracy"] is None  # nothing graded
    assert set(acc["by_domain"]) == {"math", "science", "unknown"}
    m = cell_metrics(c)
    assert m["latency"]["e2el_s"]["count"] == 4  # the failed request is left out
    assert m["throughput"]["requests_s"] == pytest.approx(4 / 5)  # 4 completed / (last finish 5 - first arrival 0)


@pytest.mark.parametrize("k, n", [(0, 8), (2, 8), (8, 8), (1, 1), (37, 100), (0, 1)])
def test_wilson_interval_solves_its_defining_equation(k, n):
    # The Wilson interval is every p whose normal test does not reject k/n: |k/n - p| <= z sqrt(p(1-p)/n),
    # so each bound inside (0, 1) solves (k/n - p)^2 = z^2 p (1 - p) / n, and the bounds hold k/n.
    lo, hi = wilson_interval(k, n)
    for p in (lo, hi):
        if 0 < p < 1:
            assert (k / n - p) ** 2 == pytest.approx(Z95**2 * p * (1 - p) / n)
    assert 0 <= lo <= k / n <= hi <= 1 and hi - lo > 0
    assert (lo == 0) == (k == 0) and (hi == 1) == (k == n)
    assert wilson_interval(0, 0) is None


def test_strict_and_lenient_accuracy_with_intervals(tmp_path):
    # r1 right from the answer phase; r2 right only in its thinking; r3 unparsed; r4 an old record
    # (no correct_lenient, graded before the field existed): it counts as its strict `correct`.
    base = dict(dataset="gsm8k", prompt_mode="reasoning")
    r1 = record("r1", 0, 0, 1, 2, 3, 4, 2, correct=True, correct_lenient=True, parse_status="parsed", **base)
    r2 = record(
        "r2", 0, 0, 1, None, 3, 4, 4, correct=False, correct_lenient=True, parse_status="answer_in_think", **base
    )
    r3 = record("r3", 0, 0, 1, None, 3, 4, 4, correct=False, correct_lenient=False, parse_status="unparsed", **base)
    r4 = record("r4", 0, 0, 1, 2, 3, 4, 2, correct=True, parse_status="parsed", **base)
    c = write_cell(tmp_path / "c", [[(r, tokens(r["id"], [1.0], "t")) for r in (r1, r2, r3, r4)]])
    acc = cell_metrics(c)["accuracy"]["by_dataset"]["gsm8k"]
    assert (acc["correct"], acc["correct_lenient"], acc["total"]) == (2, 3, 4)
    assert (acc["accuracy"], acc["accuracy_lenient"]) == (0.5, 0.75)
    assert acc["ci95"] == wilson_interval(2, 4) and acc["ci95_lenient"] == wilson_interval(3, 4)
    assert (acc["parsed"], acc["answer_in_think"], acc["unparsed"]) == (2, 1, 1)


def test_answer_phase_share(tmp_path):
    # Reasoning-mode requests: r1 thinks then answers; r2 only thinks (cut by the budget); r3 wrote
    # </think> as its last token (no answer token, but the split is there); r4 failed (left out).
    # r5 is a direct-mode request (not counted); a direct-only cell has no share at all.
    think = dict(prompt_mode="reasoning")
    r1 = record("r1", 0, 0, 1, 2, 3, 9, 5, **think)
    r2 = record("r2", 0, 0, 1, None, 3, 8, 8, finish_reason="length", **think)
    r3 = record("r3", 0, 0, 1, None, 3, 6, 6, output_text="thinking</think>", **think)
    r4 = record("r4", 0, None, None, None, 3, 0, 0, finish_reason="error", **think)
    r5 = record("r5", 0, 0, 1, 1, 3, 4, 0, prompt_mode="direct")
    c = write_cell(tmp_path / "c", [[(r, tokens(r["id"], [1.0], "t")) for r in (r1, r2, r3, r4, r5)]])
    phase = cell_metrics(c)["tokens"]["answer_phase"]
    assert (phase["k"], phase["n"], phase["share"]) == (2, 3, 2 / 3) and phase["ci95"] == wilson_interval(2, 3)
    direct = write_cell(tmp_path / "d", [[(r5, tokens("r5", [1.0], "a"))]])
    assert cell_metrics(direct)["tokens"]["answer_phase"] is None


def test_goodput_under_slo(cell):
    def goodput(slo):
        return cell_metrics(cell, slo=slo)["throughput"]["goodput_req_s"]

    assert goodput({"ttft_s": 1.5}) == pytest.approx(2 / 5)  # r1, r2 (TTFT 1); r3 has 2
    assert goodput({"ttft_s": 1.0}) == pytest.approx(2 / 5)  # on the limit meets it (an upper bound, inclusive)
    assert goodput({"ttfvt_s": 2}) == pytest.approx(1 / 5)  # r2 only; r3 never answered
    assert goodput({"tpot_s": 0.4}) == pytest.approx(1 / 5)  # r3: one token, no gap to wait
    assert goodput({"ttft_s": 1.5, "e2el_s": 4}) == pytest.approx(1 / 5)
    with pytest.raises(UserError, match="ttft"):
        cell_metrics(cell, slo={"ttft": 1})
    with pytest.raises(UserError, match="> 0"):
        cell_metrics(cell, slo={"e2el_s": -1})


def test_resumed_cell_duration_sums_sessions(tmp_path):
    s0 = [
        (record("a", 0.0, 0.0, 1.0, 1.0, 10.0, 10, 0), tokens("a", [1.0, 10.0], "aa")),
        (record("b", 2.0, 2.0, 3.0, 3.0, 6.0, 10, 0), tokens("b", [3.0, 6.0], "aa")),
    ]
    s1 = [(record("c", 0.0, 0.0, 1.0, 1.0, 4.0, 8, 0), tokens("c", [1.0, 4.0], "aa"))]
    c = write_cell(tmp_path / "c", [s0, s1])
    assert sorted(r["session"] for r in c.requests) == [0, 0, 1]
    thr = cell_metrics(c)["throughput"]
    assert thr["duration_s"] == 14.0  # (10 - 0) + (4 - 0), not 10
    assert thr["output_tok_s"] == pytest.approx(28 / 14) and thr["requests_s"] == pytest.approx(3 / 14)


def test_network_chunk_is_spread_over_its_gap(tmp_path):
    # chunks of 2, 1 and 4 tokens at t = 1, 2, 4: token times 1, 1, 2, 2.5, 3, 3.5, 4
    row = tokens("n", [1.0, 2.0, 4.0], "aaa", n_tokens=[2, 1, 4])
    assert token_times(row) == ([1.0, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0], "aaaaaaa")
    c = write_cell(tmp_path / "c", [[(record("n", 0.0, 0.0, 1.0, 1.0, 4.0, 7, 0), row)]])
    m = cell_metrics(c)
    itl = m["latency"]["itl_s"]
    assert itl["count"] == 6 and itl["min"] == 0.0 and itl["mean"] == pytest.approx(0.5)
    assert m["latency"]["tpot_s"]["mean"] == pytest.approx(0.5)  # (4 - 1) / 6: ITL mean == TPOT
    assert m["latency"]["tpot_answer_s"]["mean"] == pytest.approx(0.5)


def test_stragglers_in_synchronous_batches(tmp_path):
    # batch 0: E2EL 1, 1.1, 1.2, 5 -> median 1.15, limit 2.3 -> one straggler (5 s, 100 think tokens);
    # tail: 4 requests, fewer than 2 unfinished after the 3rd finish (1.2) -> 5 - 1.2 = 3.8 s of a 5 s span.
    # batch 1 (arrives at 5): E2EL 1, 1.5 -> none; tail 0 of a 1.5 s span.
    batch0 = [
        (record(f"b0-{i}", 0.0, 0.0, 0.5, 0.5, e, 10, th, batch=0), tokens(f"b0-{i}", [0.5, e], "tt"))
        for i, (e, th) in enumerate([(1.0, 10), (1.1, 10), (1.2, 10), (5.0, 100)])
    ]
    batch1 = [
        (record(f"b1-{i}", 5.0, 5.0, 5.5, 5.5, f, 10, 20, batch=1), tokens(f"b1-{i}", [5.5, f], "tt"))
        for i, f in enumerate([6.0, 6.5])
    ]
    c = write_cell(tmp_path / "c", [batch0 + batch1])
    rows = {r["id"]: r for r in request_metrics(c)}
    assert [rows[f"b0-{i}"]["straggler"] for i in range(4)] == [False, False, False, True]
    assert rows["b0-3"]["group"] == "s0/batch0" and rows["b1-0"]["group"] == "s0/batch1"
    s = cell_metrics(c)["stragglers"]
    assert (s["k"], s["count"], s["share"]) == (2.0, 1, pytest.approx(1 / 6))
    assert s["think_tokens_mean"] == 100 and s["non_straggler_think_tokens_mean"] == pytest.approx((30 + 40) / 5)
    assert s["tail_time_s"] == pytest.approx(3.8) and s["tail_share"] == pytest.approx(3.8 / 6.5)
    assert cell_metrics(c, straggler_k=5.0)["stragglers"]["count"] == 0  # 5 > 5 x 1.15 is false


def test_straggler_causes_against_the_cells_own_solo_speed(tmp_path):
    # batch 0 of 5, all arrive at 0. Four finish at 1 s. The straggler s: admitted at 0.5 (queue 0.5), first token at
    # 0.75 (prefill 0.25), 4 think then 3 answer tokens at 0.75, 1.2 | 1.4, 1.6 | 1.8, 2.0, 2.2: 6 gaps (3 think,
    # 3 answer), finish 2.2 (E2EL 2.2 > 2 x median 1.0). Occupancy from the events: 4 running from 0, 5 from 0.5, s
    # alone from 1.0 to its finish: its gaps inside that stretch are the five of 0.2 s after 1.2 -> solo p50 = 0.2 s.
    # think = 3 x 0.2 = 0.6, answer = 0.6, sharing = decode 1.45 - 6 x 0.2 = 0.25 (the shared gap 0.45 less 0.2);
    # 0.5 + 0.25 + 0.6 + 0.6 + 0.25 = 2.2 = E2EL.
    fast = [
        (record(f"f{i}", 0.0, 0.0, 0.5, 0.5, 1.0, 2, 0, batch=0), tokens(f"f{i}", [0.5, 1.0], "aa")) for i in range(4)
    ]
    slow = (
        record("s", 0.0, 0.5, 0.75, 1.8, 2.2, 7, 4, batch=0),
        tokens("s", [0.75, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2], "ttttaaa"),
    )
    samples = [
        {"t_s": t, "kv_used": 1, "kv_capacity": 10, "running": r, "waiting": 0}
        for t, r in ((0.0, 5), (0.5, 5), (1.0, 1), (2.25, 0))
    ]
    m = cell_metrics(write_cell(tmp_path / "c", [fast + [slow]], timeline=samples))["stragglers"]
    assert m["solo_itl_s"]["count"] == 5 and m["solo_itl_s"]["p50"] == pytest.approx(0.2)
    causes = m["causes"]
    assert causes["count"] == 1 and causes["solo_itl_s"] == pytest.approx(0.2)
    assert causes["seconds"] == {
        "queue": pytest.approx(0.5),
        "prefill": pytest.approx(0.25),
        "think": pytest.approx(0.6),
        "answer": pytest.approx(0.6),
        "sharing": pytest.approx(0.25),
    }
    assert sum(causes["seconds"].values()) == pytest.approx(2.2)
    # never alone (g, outside the batch, runs from 0 to 3 s): no solo speed; think / answer are the measured gaps
    # (0.85 / 0.6), sharing unknown
    g = (record("g", 0.0, 0.0, 0.5, 0.5, 3.0, 2, 0), tokens("g", [0.5, 3.0], "aa"))
    causes = cell_metrics(write_cell(tmp_path / "d", [fast + [slow, g]], timeline=samples))["stragglers"]["causes"]
    assert causes["solo_itl_s"] is None and causes["seconds"]["sharing"] is None
    assert (causes["seconds"]["think"], causes["seconds"]["answer"]) == (pytest.approx(0.85), pytest.approx(0.6))
    assert causes["dominant"] == "think"


def test_stragglers_in_arrival_windows(tmp_path):
    # no `batch`: windows of 3 in arrival order (file order differs); E2EL 1, 1, 10 | 2, 2, 2
    spec = [("d", 3.0, 2.0), ("a", 0.0, 1.0), ("c", 2.0, 10.0), ("b", 1.0, 1.0), ("f", 5.0, 2.0), ("e", 4.0, 2.0)]
    pairs = [(record(i, a, a, a + 0.5, a + 0.5, a + e, 5, 0), tokens(i, [a + 0.5, a + e], "aa")) for i, a, e in spec]
    c = write_cell(tmp_path / "c", [pairs])
    rows = {r["id"]: r for r in request_metrics(c, window=3)}
    assert {i: rows[i]["group"] for i in "abcdef"} == {
        "a": "s0/window0",
        "b": "s0/window0",
        "c": "s0/window0",
        "d": "s0/window1",
        "e": "s0/window1",
        "f": "s0/window1",
    }
    assert [i for i in "abcdef" if rows[i]["straggler"]] == ["c"]  # 10 > 2 x median 1


def test_memory_fluctuation(tmp_path):
    samples = [
        {
            "t_s": 0.0,
            "kv_used": 10,
            "kv_capacity": 100,
            "kv_unit": "cells",
            "running": 1,
            "waiting": 0,
            "rss_bytes": 100,
            "device_bytes": None,
        },
        {
            "t_s": 0.1,
            "kv_used": 50,
            "kv_capacity": 100,
            "kv_unit": "cells",
            "running": 2,
            "waiting": 1,
            "rss_bytes": 200,
            "device_bytes": None,
        },
        {
            "t_s": 0.2,
            "kv_used": 30,
            "kv_capacity": 100,
            "kv_unit": "cells",
            "running": 1,
            "waiting": 0,
            "rss_bytes": 300,
            "device_bytes": None,
        },
    ]
    mem = cell_metrics(write_cell(tmp_path / "c", [three_requests()], timeline=samples))["memory"]
    # KV from the events (the engine counts cells; 20-token prompts): a request's 20 prompt cells enter at the middle of
    # its prefill (r1: admitted 0.5, prefill done 1.0 -> 0.75; r2: 1.5; r3: 3.5), one more cell per token, all released at
    # its finish. Cells: 0 (0-0.75 s), 20, 21, 22, 43, 44 (each 0.25 s), 46, 47, 49, 71 (each 0.5 s), 28 (4-5 s):
    # weighted by time over the 5 s span, mean = (150 x 0.25 + 213 x 0.5 + 28) / 5 = 34.4 cells, peak 71
    held = [
        (0.75, 0),
        (0.25, 20),
        (0.25, 21),
        (0.25, 22),
        (0.25, 43),
        (0.25, 44),
        (0.5, 46),
        (0.5, 47),
        (0.5, 49),
        (0.5, 71),
        (1.0, 28),
    ]
    var = sum(w * (v / 100 - 0.344) ** 2 for w, v in held) / 5
    assert mem["kv_frac"]["source"] == "events" and mem["kv_frac"]["peak"] == 0.71
    assert mem["kv_frac"]["mean"] == pytest.approx(0.344) and mem["kv_frac"]["cv"] == pytest.approx(
        math.sqrt(var) / 0.344
    )
    assert mem["kv_used"]["peak"] == 71 and mem["kv_used"]["unit"] == "cells" and mem["kv_used"]["seconds"] == 5.0
    # running requests from the events: 0, 1, 2, 2, 3, 1 over 0.5, 0.5, 1, 1, 1, 1 s: mean 8.5 / 5
    assert (mem["running"]["peak"], mem["running"]["mean"]) == (3, pytest.approx(1.7))
    assert (mem["waiting"]["peak"], mem["waiting"]["mean"]) == (1, pytest.approx(1.5 / 5))
    # what events cannot give is sampled and held until the next sample: rss 100 (0-0.1 s), 200 (0.1-0.2), 300 (last)
    assert mem["rss_bytes"] == {
        "count": 3,
        "peak": 300,
        "mean": 150,
        "cv": pytest.approx(50 / 150),
        "seconds": pytest.approx(0.2),
        "max_gap_s": pytest.approx(0.1),
    }
    assert mem["device_bytes"] is None
    # an engine that counts KV in bytes: the sampled counter, held between samples (0.1 and 0.5, 0.1 s each)
    in_bytes = [{**x, "kv_unit": "bytes"} for x in samples]
    kv = cell_metrics(write_cell(tmp_path / "b", [three_requests()], timeline=in_bytes))["memory"]["kv_frac"]
    assert (kv["source"], kv["peak"], kv["mean"], kv["cv"]) == (
        "sampler",
        0.5,
        pytest.approx(0.3),
        pytest.approx(0.2 / 0.3),
    )


def test_prefix_and_speculative_counters(tmp_path):
    pairs = three_requests()
    pairs[0][0].update(cached_tokens=8, draft_proposed=6, draft_accepted=3)
    pairs[0][1]["draft"] = "011010000"  # 3 accepted draft tokens over 6 target steps
    pairs[1][0].update(cached_tokens=4)
    t = cell_metrics(write_cell(tmp_path / "c", [pairs]))["techniques"]
    assert t["prefix_hit_rate"] == pytest.approx(2 / 3) and t["cached_prompt_tokens"] == 12
    assert (t["draft_proposed"], t["draft_accepted"], t["draft_acceptance_rate"]) == (6, 3, 0.5)
    assert t["mean_accepted_per_step"] == pytest.approx(3 / 6)


def test_decode_throughput_window_by_hand(tmp_path):
    pairs = three_requests()[:2]
    # Window: last prompt done (r2, 2.0) to first finish (r2, 4.0). Tokens in (2, 4]: r1 at 3, 3.5, 4
    # and r2 at 2.5, 3, 3.5, 4 = 7 tokens in 2 s.
    assert cell_metrics(write_cell(tmp_path / "c", [pairs]))["throughput"]["decode_tok_s"] == pytest.approx(3.5)
    # r3 is done with its prompt only when it finishes (4.0): no window.
    assert cell_metrics(write_cell(tmp_path / "d", [three_requests()]))["throughput"]["decode_tok_s"] is None


def test_prefix_saved_prefill_from_the_engine_counters(tmp_path):
    base = {
        "kv_used": 1,
        "kv_capacity": 10,
        "kv_unit": "cells",
        "running": 1,
        "waiting": 0,
        "rss_bytes": 1,
        "device_bytes": None,
    }
    samples = [
        {**base, "t_s": 0.0, "extra": {"prefix_tokens_reused": 10, "prefill_s_per_token": 0.5}},
        {**base, "t_s": 0.1, "extra": {"prefix_tokens_reused": 300, "prefill_s_per_token": 0.002}},
    ]
    t = cell_metrics(write_cell(tmp_path / "c", [three_requests()], timeline=samples))["techniques"]
    assert t["prefix_saved_prefill_s"] == pytest.approx(300 * 0.002)  # the last sample: counters are cumulative
    assert cell_metrics(write_cell(tmp_path / "d", [three_requests()]))["techniques"]["prefix_saved_prefill_s"] is None


def test_bench_figures_are_defined():
    assert {
        "decode_tok_s",
        "output_tok_s",
        "draft_acceptance_rate",
        "prefix_saved_prefill_s",
        "decode_vs_reference",
        "speculative_speedup",
        "prefix_ttft_gain",
        "kv_speed_ratio",
    } <= set(METRICS)


def test_no_drafting_gives_none(cell):
    t = cell_metrics(cell)["techniques"]
    assert t["draft_acceptance_rate"] is None and t["mean_accepted_per_step"] is None and t["prefix_hit_rate"] == 0.0


def test_distribution():
    d = distribution([3.0, None, 1.0, 2.0, 4.0], percentiles=(50, 99.9))
    assert d == {"count": 4, "mean": 2.5, "min": 1.0, "max": 4.0, "p50": 2.5, "p99.9": pytest.approx(3.997)}
    assert distribution([None]) == {
        "count": 0,
        "mean": None,
        "min": None,
        "max": None,
        "p50": None,
        "p90": None,
        "p95": None,
        "p99": None,
    }


def test_every_reported_value_has_a_definition(cell):
    m = cell_metrics(cell)
    defined = set(METRICS)
    assert {
        "ttft_s",
        "ttfvt_s",
        "e2el_s",
        "queue_s",
        "tpot_s",
        "tpot_think_s",
        "tpot_answer_s",
        "itl_s",
        "straggler",
    } <= defined
    assert set(m["latency"]) <= defined
    assert all(d.unit and d.formula and d.description for d in METRICS.values())


def run_cli(*args):
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


def test_cli_explain():
    out = run_cli("metrics", "--explain", "--json")
    assert out.returncode == 0, out.stderr
    names = [m["name"] for m in json.loads(out.stdout)["metrics"]]
    # every definition, once
    assert sorted(names) == sorted(METRICS) and len(names) == len(set(names))
    text = run_cli("metrics", "--explain")
    assert text.returncode == 0 and "first_answer_token_s - arrival_s" in text.stdout


def test_cli_summarize(tmp_path):
    write_cell(tmp_path / "run" / "cell-a", [three_requests()], name="cell-a")
    write_cell(tmp_path / "run" / "cell-b", [three_requests()[:2]], name="cell-b")
    out = run_cli("summarize", tmp_path / "run", "--slo", "ttft_s=1.5")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if "cell-a" in line or "cell-b" in line]
    assert len(rows) == 2 and "66.7% (2/3)" in rows[0] and "100.0% (2/2)" in rows[1]
    # strict and lenient accuracy (this old-style cell has no correct_lenient: lenient = strict), each
    # with its Wilson interval on the next line, and the parse-status counts (r1 and r2 say "ok": none of them)
    assert rows[0].count("66.7% (2/3)") == 2 and "0 / 0 / 1" in rows[0]
    lo, hi = wilson_interval(2, 3)
    assert out.stdout.count(f"[{100 * lo:.1f}-{100 * hi:.1f}%]") == 2
    js = run_cli("summarize", tmp_path / "run", "--json", "--percentiles", "50,99")
    assert js.returncode == 0, js.stderr
    assert [c["cell"] for c in json.loads(js.stdout)] == ["cell-a", "cell-b"]
    assert set(json.loads(js.stdout)[0]["latency"]["e2el_s"]) == {"count", "mean", "min", "max", "p50", "p99"}


@pytest.mark.parametrize(
    "args",
    [
        ("EMPTY",),
        ("RUN", "--percentiles", "50,x"),
        ("RUN", "--slo", "ttft=1"),
        ("RUN", "--straggler-k", "0"),
        ("MISSING",),
    ],
)
def test_cli_summarize_bad_input(tmp_path, args):
    (tmp_path / "empty").mkdir()
    write_cell(tmp_path / "run" / "cell-a", [three_requests()])
    paths = {"EMPTY": tmp_path / "empty", "RUN": tmp_path / "run", "MISSING": tmp_path / "nope"}
    out = run_cli("summarize", *(paths.get(a, a) for a in args))
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1


def test_realised_arrival_rate_and_cv_pool_sessions(tmp_path):
    # session 0 arrivals 0, 1, 4 (gaps 1, 3); session 1 arrivals 0, 2 (gap 2); file order differs
    s0 = [
        (record("b", 4.0, 4.0, 5.0, 5.0, 6.0, 2, 0), tokens("b", [5.0, 6.0], "aa")),
        (record("a", 0.0, 0.0, 1.0, 1.0, 8.0, 2, 0), tokens("a", [1.0, 8.0], "aa")),
        (record("x", 1.0, 1.0, 2.0, None, 2.0, 1, 1, finish_reason="error"), tokens("x", [2.0], "t")),
    ]
    s1 = [
        (record("c", 0.0, 0.0, 1.0, 1.0, 3.0, 2, 0), tokens("c", [1.0, 3.0], "aa")),
        (record("d", 2.0, 2.0, 3.0, 3.0, 4.0, 2, 0), tokens("d", [3.0, 4.0], "aa")),
    ]
    arrivals = cell_metrics(write_cell(tmp_path / "c", [s0, s1]))["arrivals"]
    assert arrivals["rate"] == pytest.approx(3 / 6)  # (3-1) + (2-1) gaps over spans 4 + 2
    assert arrivals["cv"] == pytest.approx(math.sqrt(2 / 3) / 2)  # gaps 1, 3, 2: mean 2, population std sqrt(2/3)
    one = cell_metrics(write_cell(tmp_path / "one", [s1[:1]]))["arrivals"]
    assert (one["rate"], one["cv"]) == (None, None)  # one arrival: no gap
    assert {"arrival_rate", "arrival_cv"} <= set(METRICS)


def test_finish_gaps_by_change_reproduces_the_published_split(tmp_path):
    """scripts/finish_gaps.py --by-change on the committed H200 server cell (1.5B): its classes
    partition the gaps (the finish class is finish_gaps' spanning kind), and it prints the figures
    scripts/gpu/README.md quotes: at 1-7 running, steady p50 3.8 ms, the gap after a finish 11.0
    ms and after an admission 9.0 ms. A folder without cells is one line, exit 2."""
    import subprocess
    import sys

    from rllm_study.analysis.metrics import finish_gaps
    from rllm_study.running.results import read_cell

    repo = Path(__file__).parents[2]
    cell_dir = repo / "reports" / "gpu-h200" / "bench-1.5b" / "server-grading-process" / "in_process"
    script = repo / "scripts" / "finish_gaps.py"
    out = subprocess.run(
        [sys.executable, script, "--by-change", cell_dir], capture_output=True, text=True, check=True
    ).stdout
    rows = [line[60:].split() for line in out.splitlines()[1:]]  # after the 60-character cell column
    table = {(r[0], " ".join(r[1:-3])): (int(r[-3]), float(r[-2])) for r in rows}
    g = finish_gaps(read_cell(next(cell_dir.iterdir())))
    assert sum(n for n, _ in table.values()) == g["spanning"]["count"] + g["other"]["count"]
    assert sum(n for (_, kind), (n, _) in table.items() if kind == "finish") == g["spanning"]["count"]
    assert table["1-7", "steady"][1] == 3.8 and table["1-7", "1 after finish"][1] == 11.0
    assert table["1-7", "1 after admission"][1] == 9.0
    done = subprocess.run([sys.executable, script, tmp_path], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error:") and len(done.stderr.strip().splitlines()) == 1


def test_finish_gaps_split_every_gap_of_a_published_cell():
    """finish_gap_p90_ratio on a real cell (the H200 run of the pilot's GSM8K reasoning cell): every
    gap between consecutive tokens of a completed request is in exactly one of the two kinds, a
    gap spans a finish iff another request finished inside it, and the ratio is the p90s' ratio."""
    import numpy as np

    from rllm_study.analysis.metrics import _tokens_of, finish_gaps
    from rllm_study.running.results import read_cell

    root = Path(__file__).parents[2] / "reports" / "gpu-h200" / "pilot-1.5b"
    cell = read_cell(next(root.glob("*gsm8k__reasoning*")))
    g = finish_gaps(cell)
    done = [r for r in cell.requests if r.get("finish_reason") in ("stop", "length")]
    ends = sorted(r["finish_s"] for r in done)
    spanning = other = 0
    for r in done:
        times = _tokens_of(cell, r["id"])[0]
        for a, b in zip(times, times[1:]):
            inside = any(a <= e < b for e in ends if e != r["finish_s"])
            spanning, other = spanning + inside, other + (not inside)
    assert (g["spanning"]["count"], g["other"]["count"]) == (spanning, other) and spanning > 0
    assert g["ratio"] == pytest.approx(g["spanning"]["p90"] / g["other"]["p90"])
    assert np.isfinite(g["ratio"])


def test_occupancy_and_one_sequence_speed_from_events(tmp_path):
    # three_requests by hand: r1 waits 0-0.5 and runs 0.5-5; r2 runs 1-4; r3 waits 2-3 and runs 3-4
    from rllm_study.analysis.metrics import occupancy, solo_gaps

    cell = write_cell(tmp_path / "c", [three_requests()])
    times, running, waiting = occupancy(cell.requests)[0]
    assert list(times) == [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert list(running) == [0, 1, 2, 2, 3, 1, 0] and list(waiting) == [1, 0, 0, 1, 0, 0, 0]
    # one request runs alone in [0.5, 1) and [4, 5): only r1's last gap (4 -> 5 s) lies wholly inside one
    assert solo_gaps(cell) == [1.0]
    speed = cell_metrics(cell)["throughput"]["machine_speed"]
    assert speed == {"tok_s": 1.0, "source": "one-sequence gaps", "calibration": [], "own_tok_s": 1.0, "n_gaps": 1}
    # calibration decodes recorded around the session win over the cell's own gaps: their mean
    w = CellWriter(tmp_path / "c")
    for when, tok_s in (("before", 20.0), ("after", 30.0)):
        w.write_calibration({"when": when, "tokens": 32, "seconds": 31 / tok_s, "tok_s": tok_s})
    w.close()
    speed = cell_metrics(read_cell(tmp_path / "c"))["throughput"]["machine_speed"]
    assert (speed["tok_s"], speed["source"], speed["calibration"]) == (25.0, "calibration", [20.0, 30.0])


def test_who_ended_the_thinking_and_capped_repetition_loops(tmp_path):
    from rllm_study.analysis.metrics import repeat_share

    # think budget 20. a: the model closed its thinking (5 think, 3 answer tokens); b: cut at the cap after 20 think tokens
    # that alternate 1, 2 (a loop: of its 13 8-grams only 2 are new, 11 repeat); c: the model ended while thinking after
    # 6 (the engine closed it below the cap); d: 8 distinct think tokens, then the output budget ran out (length) with the
    # thinking never closed; e: answered directly.
    def row(id, think, answer, ids, **extra):
        n = think + answer
        return (
            record(id, 0.0, 0.0, 0.1, 0.1 if answer else None, 1.0 + n / 100, n, think, batch=0, **extra),
            {**tokens(id, [0.1 + i / 100 for i in range(n)], "t" * think + "a" * answer), "token_ids": ids},
        )

    cases = [
        row("a", 5, 3, list(range(8)), think_forced=False),
        row("b", 20, 2, [1, 2] * 10 + [7, 8], think_forced=True),
        row("c", 6, 2, list(range(8)), think_forced=True),
        row("d", 8, 0, list(range(8)), think_forced=False, finish_reason="length"),
        row("e", 0, 4, list(range(4)), think_forced=False),
    ]
    w = CellWriter(tmp_path / "c")
    w.write_manifest({"cell": {"name": "c", "think_budget": 20}})
    for rec, tok in cases:
        w.write_request(rec, tok)
    w.close()
    cell = read_cell(tmp_path / "c")
    rows = {r["id"]: r for r in request_metrics(cell)}
    assert {i: rows[i]["think_closed_by"] for i in "abcde"} == {
        "a": "model",
        "b": "cap",
        "c": "ended",
        "d": "unclosed",
        "e": None,
    }
    # a cap hit counts as hitting the budget, like running out of output tokens
    assert [i for i in "abcde" if rows[i]["capped"]] == ["b", "d"]
    assert rows["b"]["repeat_share"] == pytest.approx(11 / 13) and rows["b"]["repetition_loop"]
    assert rows["d"]["repeat_share"] == 0.0 and not rows["d"]["repetition_loop"]  # cut, but no loop
    assert repeat_share([1, 2] * 3, "t" * 6) is None  # under 8 think tokens
    tok = cell_metrics(cell)["tokens"]
    assert {c: (v["k"], v["n"]) for c, v in tok["think_closers"].items()} == {
        "model": (1, 4),
        "cap": (1, 4),
        "ended": (1, 4),
        "unclosed": (1, 4),
    }
    assert (tok["hit_budget"]["k"], tok["hit_budget"]["n"]) == (2, 5)
    # the straggler causes count capped requests and capped repetition loops among the stragglers: E2EL 1.08, 1.22,
    # 1.08, 1.08, 1.04 s; at k = 2 none exceeds 2 x the median 1.08, at k = 1 b alone does, capped in a loop
    assert cell_metrics(cell)["stragglers"]["causes"]["count"] == 0
    causes = cell_metrics(cell, straggler_k=1.0)["stragglers"]["causes"]
    assert (causes["count"], causes["capped"], causes["capped_repetition_loops"]) == (1, 1, 1)
