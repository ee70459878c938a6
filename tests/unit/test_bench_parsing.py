"""`bench engine`'s reading of llama.cpp's own tools and the four benchmark ratios. The tools are
stood in by scripts that print output in the tools' formats (llama-bench -o json: one object per
test, the prompt test with n_gen 0 first; llama-batched-bench --output-format jsonl: log lines and
one object per parallel level) and record their arguments; the tools themselves run in
scripts/gpu and the slow bench tests when built."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from rllm_study.analysis.metrics import decode_vs_reference, kv_speed_ratio, prefix_ttft_gain, speculative_speedup
from rllm_study.bench.engine import measure_batched_bench, measure_llama_bench
from rllm_study.errors import UserError

LLAMA_BENCH = [
    {
        "build_commit": "abc",
        "model_filename": "m.gguf",
        "n_threads": 2,
        "n_prompt": 512,
        "n_gen": 0,
        "avg_ns": 1,
        "avg_ts": 812.5,
        "stddev_ts": 3.1,
        "samples_ts": [810.0, 815.0],
    },
    {
        "build_commit": "abc",
        "model_filename": "m.gguf",
        "n_threads": 2,
        "n_prompt": 0,
        "n_gen": 64,
        "avg_ns": 1,
        "avg_ts": 97.25,
        "stddev_ts": 0.4,
        "samples_ts": [97.0, 97.5],
    },
]
BATCHED = [
    "main: n_kv_max = 2048, n_batch = 2048, n_ubatch = 512, flash_attn = 0",
    *(
        json.dumps(
            {
                "n_kv_max": 2048,
                "pp": 128,
                "tg": 64,
                "pl": pl,
                "n_kv": pl * 192,
                "t_pp": 0.5,
                "speed_pp": 256.0 * pl,
                "t_tg": 1.0,
                "speed_tg": tg,
                "t": 1.5,
                "speed": 1.0,
            }
        )
        for pl, tg in ((1, 95.5), (4, 301.0), (8, 480.25))
    ),
    "",
    "llama_perf_context_print: total time = 1.0 ms",
]


def _tool(bin_dir: Path, name: str, stdout: str, rc: int = 0) -> Path:
    """An executable NAME in bin_dir that records its arguments in NAME.args and prints `stdout`."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / f"{name}.out").write_text(stdout)
    script = bin_dir / name
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{bin_dir}/{name}.args"\ncat "{bin_dir}/{name}.out"\n'
        + (f'echo "failed to load model" >&2\nexit {rc}\n' if rc else "")
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _args(bin_dir: Path, name: str) -> list[str]:
    return (bin_dir / f"{name}.args").read_text().splitlines()


def test_llama_bench_json_gives_the_tg_rate_of_its_n_gen(tmp_path):
    _tool(tmp_path, "llama-bench", json.dumps(LLAMA_BENCH, indent=2))
    assert measure_llama_bench(tmp_path, Path("m.gguf"), 2, 64, True, 3) == 97.25
    args = _args(tmp_path, "llama-bench")
    for flag, value in (
        ("-n", "64"),
        ("-p", "0"),
        ("-fa", "1"),
        ("-r", "3"),
        ("-ngl", "0"),
        ("-o", "json"),
        ("-t", "2"),
    ):
        assert args[args.index(flag) + 1] == value, (flag, args)
    assert measure_llama_bench(tmp_path, Path("m.gguf"), 2, 64, False, 3, n_gpu_layers=-1) == 97.25
    args = _args(tmp_path, "llama-bench")
    assert args[args.index("-fa") + 1] == "0" and args[args.index("-ngl") + 1] == "99"  # all layers


def test_batched_bench_jsonl_gives_s_tg_per_parallel_level_among_log_lines(tmp_path):
    _tool(tmp_path, "llama-batched-bench", "\n".join(BATCHED) + "\n")
    assert measure_batched_bench(tmp_path, Path("m.gguf"), 2, [1, 4, 8], 128, 64, False) == {
        1: 95.5,
        4: 301.0,
        8: 480.25,
    }
    args = _args(tmp_path, "llama-batched-bench")
    assert args[args.index("-npl") + 1] == "1,4,8" and args[args.index("--output-format") + 1] == "jsonl"
    assert args[args.index("-c") + 1] == str(8 * (128 + 64 + 64)) and args[args.index("-fa") + 1] == "off"


def test_a_failing_or_missing_tool_is_named(tmp_path):
    _tool(tmp_path, "llama-bench", "", rc=1)
    with pytest.raises(RuntimeError, match=r"llama-bench failed \(1\): failed to load model"):
        measure_llama_bench(tmp_path, Path("m.gguf"), 2, 64, False, 1)
    with pytest.raises(UserError, match="build_llama_tools.sh"):
        measure_batched_bench(tmp_path / "nowhere", Path("m.gguf"), 2, [1], 8, 8, False)


def test_the_four_benchmark_ratios_point_the_documented_way():
    assert decode_vs_reference(ours=48.0, reference=96.0) == 0.5  # ours / the tool's
    assert speculative_speedup(with_spec=30.0, without=20.0) == 1.5  # with / without
    assert prefix_ttft_gain(off=2.0, on=0.5) == 4.0  # off / on: above 1 is a gain
    assert kv_speed_ratio(quantized=90.0, f16=100.0) == 0.9  # quantized / f16
    assert {
        decode_vs_reference(1.0, 0.0),
        speculative_speedup(1.0, 0.0),
        prefix_ttft_gain(1.0, 0.0),
        kv_speed_ratio(1.0, 0.0),
    } == {None}
