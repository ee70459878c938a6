"""Trace replay with prompts and lengths: Mooncake-style JSONL and BurstGPT CSV, parsed, windowed,
time-scaled, and replayed end to end on the real SmolLM2 model."""

from __future__ import annotations

import json

import pytest

from conftest import THREADS, run_cli
from rllm_study.errors import UserError
from rllm_study.running.results import read_cell
from rllm_study.workloads.arrivals import make_arrivals
from rllm_study.workloads.traces import TraceRequest, read_trace_requests, select

# Mooncake-style: timestamp in ms, lengths in tokens, one hash id per block of 16 tokens (block_tokens = 16 below).
# Rows 0 and 1 share their first three blocks (ids 1, 2, 3); row 2 shares nothing; row 4 lies outside the window.
MOONCAKE = [
    {"timestamp": 0, "input_length": 40, "output_length": 5, "hash_ids": [1, 2, 3]},
    {"timestamp": 1000, "input_length": 60, "output_length": 8, "hash_ids": [1, 2, 3, 4]},
    {"timestamp": 2000, "input_length": 50, "output_length": 3, "hash_ids": [5, 6, 7, 8]},
    {"timestamp": 3000, "input_length": 30, "output_length": 6, "hash_ids": [1, 2]},
    {"timestamp": 9000, "input_length": 30, "output_length": 6, "hash_ids": [9, 10]},
]
BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,35,4,39,Conversation log
7,ChatGPT,20,0,20,Conversation log
6,GPT-4,45,7,52,API log
8,ChatGPT,25,3,28,Conversation log
"""


@pytest.fixture
def traces(tmp_path):
    mooncake, burst = tmp_path / "mooncake.jsonl", tmp_path / "burst.csv"
    mooncake.write_text("".join(json.dumps(r) + "\n" for r in MOONCAKE))
    burst.write_text(BURSTGPT)
    return mooncake, burst


def test_both_formats_parse_with_lengths_and_hash_ids(traces):
    mooncake, burst = traces
    rows = read_trace_requests(mooncake)
    assert rows[1] == TraceRequest(1.0, 60, 8, (1, 2, 3, 4))  # ms -> s
    b = read_trace_requests(burst)
    assert [(r.at_s, r.input_tokens, r.output_tokens, r.hash_ids) for r in b] == [
        (5.0, 35, 4, ()),
        (7.0, 20, 1, ()),
        (6.0, 45, 7, ()),
        (8.0, 25, 3, ()),
    ]  # a 0-token response asks for 1


def test_window_and_time_scale(traces):
    mooncake, burst = traces
    rows = read_trace_requests(mooncake)
    assert [r.at_s for r in select(rows)] == [0.0, 1.0, 2.0, 3.0, 9.0]
    assert [r.at_s for r in select(rows, time_scale=0.5, window_start_s=1.0, window_s=2.5)] == [0.0, 0.5, 1.0]
    assert [r.input_tokens for r in select(read_trace_requests(burst), window_start_s=1.0)] == [
        45,
        20,
        25,
    ]  # sorted by time
    timing = make_arrivals("replay", 3, trace=mooncake, time_scale=2.0, window_s=5.0)
    assert timing.times == (0.0, 2.0, 4.0)
    with pytest.raises(UserError, match="has 4 requests in its window, fewer than the 5 asked"):
        make_arrivals("replay", 5, trace=mooncake, window_s=5.0)


@pytest.mark.parametrize(
    "content,suffix,needle",
    [
        ('{"timestamp": 0, "input_length": 4}\n', ".jsonl", "line 1: field output_length is missing"),
        (
            '{"timestamp": 0, "input_length": 0, "output_length": 2}\n',
            ".jsonl",
            "line 1: input_length must be a whole number >= 1",
        ),
        ("not json\n", ".jsonl", "line 1: not a JSON object"),
        ("Timestamp,Request tokens\n1,2\n", ".csv", "column 'Response tokens' is missing"),
        ("Timestamp,Request tokens,Response tokens\n1,x,2\n", ".csv", "line 2: Request tokens 'x' is not a number"),
        ("0 1 2\n", ".txt", "give a Mooncake-style .jsonl or a BurstGPT .csv"),
    ],
)
def test_bad_trace_files_name_the_line_and_field(tmp_path, content, suffix, needle):
    path = tmp_path / f"t{suffix}"
    path.write_text(content)
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        read_trace_requests(path)


def test_replay_runs_both_traces_with_their_lengths(tmp_path, traces, smollm2_path):
    """One run, two cells (the trace is a workload axis): prompts of the recorded lengths, outputs
    capped at the recorded lengths, times as scheduled, and a shared prefix the cache reuses."""
    mooncake, burst = traces
    spec = tmp_path / "replay.toml"
    spec.write_text(f"""
name = "replay"
models = ["smollm2-135m"]
prompt_modes = ["direct"]
max_tokens = [64]
datasets = {{ trace = 4 }}
[engine]
threads = {THREADS}
concurrency = 2
prefix_cache = true
[workload]
arrival = "replay"
trace = ["{mooncake}", "{burst}"]
window_s = 5.0
time_scale = 0.5
block_tokens = 16
""")
    proc = run_cli("run", spec, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = {p.name.split("__")[-2]: read_cell(p) for p in (tmp_path / "out").iterdir() if p.is_dir()}
    assert sorted(cells) == ["replay-burst-x0.5-w0-5.0", "replay-mooncake-x0.5-w0-5.0"]
    for name, cell in cells.items():
        trace = select(read_trace_requests(burst if "burst" in name else mooncake), 0.5, 0.0, 5.0)[:4]
        reqs = sorted(cell.requests, key=lambda r: r["item_id"])
        assert [r["item_id"] for r in reqs] == [f"trace/{i:05d}" for i in range(4)]
        for r, row in zip(reqs, trace):
            assert r["arrival_s"] == pytest.approx(row.at_s, abs=2e-3)
            assert r["prompt_tokens"] == row.input_tokens  # the recorded prompt length, BOS included
            assert 1 <= r["output_tokens"] <= row.output_tokens
            assert r["correct"] is None and r["dataset"] == "trace"  # trace requests carry no reference answer
        if "mooncake" in name:
            # row 1 repeats row 0's blocks 1, 2, 3 (row 0 holds 40 tokens of them); row 2 shares none
            assert reqs[1]["cached_tokens"] >= 32 > reqs[2]["cached_tokens"]
            assert reqs[3]["cached_tokens"] >= 16


def test_trace_data_set_and_replay_go_together(traces):
    from rllm_study.running.spec import expand

    mooncake, _ = traces
    with pytest.raises(UserError, match='datasets.trace .* and workload.arrival = "replay" .* go together'):
        expand({"datasets": {"trace": 2}, "workload": {"arrival": "poisson", "rate": 1.0}}, "spec.toml")
    with pytest.raises(UserError, match="go together"):
        expand({"datasets": {"gsm8k": 2}, "workload": {"arrival": "replay", "trace": str(mooncake)}}, "spec.toml")
    (cell,) = expand({"datasets": {"trace": 2}, "workload": {"arrival": "replay", "trace": str(mooncake)}}, "spec.toml")
    assert cell.samples == 2 and cell.name.endswith("__trace__reasoning__mt1024__replay-mooncake__r0")
