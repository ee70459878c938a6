"""`rllm-study bench server`: its one-line argument errors (default suite), and the side-by-side
of one realworld workload in process and through llama-server, which it starts and stops itself
(slow: needs llama-server from `scripts/build_llama_tools.sh`)."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import THREADS, llama_server_binary, run_cli


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, lines
    return lines[0]


@pytest.mark.parametrize(
    "args, says",
    [
        (("--server-bin", "/no/such/llama-server"), "--server-bin /no/such/llama-server: no such file"),
        (("--server-bin", "pyproject.toml"), "--server-bin pyproject.toml: not executable"),
        ((), "give either --base-url URL"),
        (("--server-bin", "/bin/true", "--base-url", "http://127.0.0.1:9"), "give either --base-url URL"),
        (("--base-url", "http://127.0.0.1:9", "--cv", "0"), "workload.cv must be > 0"),
        (
            ("--base-url", "http://127.0.0.1:9", "--workload", "closed"),
            "--workload 'closed': choose realworld or greedy",
        ),
    ],
)
def test_bad_arguments_are_one_line_exit_2(args, says):
    assert says in _one_line_error(run_cli("bench", "server", *args, timeout=120))


@pytest.mark.slow
def test_side_by_side_starts_and_stops_llama_server(tmp_path):
    binary = llama_server_binary()
    if binary is None:
        pytest.skip("llama-server is not built: run scripts/build_llama_tools.sh")
    proc = run_cli(
        "bench",
        "server",
        "--server-bin",
        binary,
        "-m",
        "smollm2-135m",
        "-n",
        "5",
        "--max-tokens",
        "16",
        "-c",
        "2",
        "-t",
        THREADS,
        "--rate",
        "4",
        "--cv",
        "2",
        "--slo",
        "ttft_s=30,e2el_s=120",
        "--out",
        tmp_path,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    sides = result["sides"]
    assert list(sides) == ["in_process", "server_same", "server_defaults"]
    assert result["server"]["started"] and result["server"]["defaults"]["top_k"] > 0
    assert sides["in_process"]["backend"] == "llama_cpp" and sides["server_same"]["backend"] == "openai"
    assert sides["server_same"]["extra_samplers"].startswith("off (top_k 0")
    assert sides["server_defaults"]["extra_samplers"] == "server defaults"
    for side in sides.values():
        # every request completed on every side, on the same realised arrivals (same seed)
        assert side["n_requests"] == side["completed"] == side["e2el_s"]["count"] == 5
        assert side["arrival_rate"] == pytest.approx(4.0) and side["arrival_cv"] == pytest.approx(
            sides["in_process"]["arrival_cv"]
        )
        assert 0 <= side["meeting_slo"] <= 5 and side["output_tokens"] > 0
        assert side["e2el_s"]["p50"] <= side["e2el_s"]["p90"]
        gaps = side["finish_gaps"]  # the gap check: 5 requests of up to 16 tokens, both kinds of gap present
        assert gaps["n_spanning"] > 0 and gaps["n_other"] > 0 and gaps["p90_ratio"] > 0
    ours = sides["in_process"]
    for key in ("server_same", "server_defaults"):
        r, theirs = result["ratios"][key], sides[key]  # the ratios' estimates are the sides' figures
        assert r["output_tok_s"]["ratio"] == pytest.approx(ours["output_tok_s"] / theirs["output_tok_s"])
        assert r["e2el_p90_s"]["ratio"] == pytest.approx(ours["e2el_s"]["p90"] / theirs["e2el_s"]["p90"])
        if theirs["goodput_req_s"]:
            assert r["goodput_req_s"]["ratio"] == pytest.approx(ours["goodput_req_s"] / theirs["goodput_req_s"])
        lo, hi = r["e2el_p50_s"]["ci95"]  # 5 requests per side: the fewest the bootstrap takes
        assert lo <= r["e2el_p50_s"]["ratio"] <= hi and r["e2el_p50_s"]["n"] == 5
    assert (
        result["target"]["verdict"] in ("met", "missed", "inconclusive") and "same sampling" in result["target"]["rule"]
    )
    with pytest.raises(httpx.HTTPError):  # the server it started is gone
        httpx.get(result["server"]["base_url"] + "/health", timeout=2)
    manifests = {k: json.loads((tmp_path / k).glob("*/manifest.json").__next__().read_text()) for k in sides}
    assert [manifests[k]["cell"]["engine"].get("server_default_samplers") for k in sides] == [None, False, True]
    from rich.console import Console

    from rllm_study.bench.server import table

    console = Console(width=200, record=True)
    console.print(table(result))
    text = console.export_text()
    for label in (
        "in-process",
        "llama-server, same sampling",
        "llama-server, its defaults",
        "ratio in-process /",
        f"top_k {result['server']['defaults']['top_k']}",
        "(n=5)",
    ):
        assert label in text
