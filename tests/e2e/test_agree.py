"""`rllm-study bench agree` (issue 29, Deliver 2): the verdict rule on known ratios, and the whole
command at CI size (slow: llama-server from scripts/build_llama_tools.sh and a venv with the
`peers` extra named by RLLM_PEERS_BIN)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli
from rllm_study.bench.agree import METRICS, TOOLS, compare, markdown


def _runs(scale: dict[str, list[float]]) -> dict[str, list[dict]]:
    """Runs where every metric of a tool is ours x its scale in that round."""
    base = {label: 100.0 for label, *_ in METRICS}
    return {
        tool: [
            {**{k: v * s for k, v in base.items()}, "n": 4, "client_cpu_s": 1.0, "server_cpu_s": 2.0}
            for s in scale[tool]
        ]
        for tool in TOOLS
    }


def test_verdicts_follow_the_interval_over_rounds():
    rows = compare(_runs({"rllm-study": [1, 1, 1], "aiperf": [1.01, 0.99, 1.0], "guidellm": [1.5, 1.6, 1.55]}), 0.05)
    by = {(r["metric"], r["tool"]): r for r in rows}
    assert by[("TTFT p50 ms", "aiperf")]["verdict"] == "agrees"
    assert by[("TTFT p50 ms", "guidellm")]["verdict"].startswith("differs: ")
    assert by[("TTFT p50 ms", "guidellm")]["ratio"] == pytest.approx((1.5 * 1.6 * 1.55) ** (1 / 3))
    wide = compare(_runs({"rllm-study": [1, 1], "aiperf": [0.9, 1.2], "guidellm": [1.0, 1.0]}), 0.05)
    assert all(r["verdict"].endswith("more rounds settle it)") for r in wide if r["tool"] == "aiperf")
    drifting = compare(_runs({"rllm-study": [1, 3], "aiperf": [1.2, 2.7], "guidellm": [1.0, 3.0]}), 0.05)
    assert all("own value varied 3x between rounds" in r["verdict"] for r in drifting if r["tool"] == "aiperf")
    one = compare(_runs({"rllm-study": [1], "aiperf": [1.0], "guidellm": [1.0]}), 0.05)
    assert all("an interval needs two" in r["verdict"] for r in one)
    assert all(r["versus"] == "rllm-study" for r in rows)  # no server column: no comparison with it
    # with the server's own TPOT: each tool's TPOT over the server's in the same run, so the server's speed
    # changing between runs (1 -> 3) cancels; AIPerf's TPOT 10% above the server's in every run differs
    served = _runs({"rllm-study": [1, 3, 2], "aiperf": [1.1, 3.3, 2.2], "guidellm": [1, 3, 2]})
    for tool, scale in (("rllm-study", 1.0), ("aiperf", 1.1), ("guidellm", 1.0)):
        for row in served[tool]:
            row["server TPOT p50 ms"] = row["TPOT p50 ms"] / scale
    versus_server = {r["tool"]: r for r in compare(served, 0.05) if r["versus"] == "server"}
    assert set(versus_server) == set(TOOLS) and all(r["metric"] == "TPOT p50 ms" for r in versus_server.values())
    assert versus_server["rllm-study"]["verdict"] == versus_server["guidellm"]["verdict"] == "agrees"
    assert versus_server["aiperf"]["verdict"].startswith("differs: ")
    assert versus_server["aiperf"]["ratio"] == pytest.approx(1.1) and versus_server["aiperf"]["n"] == 3
    spec = {
        "requests": 4,
        "prompt_tokens": 32,
        "output_tokens": 8,
        "concurrency": 2,
        "rounds": 3,
        "threads": 2,
        "tolerance": 0.05,
    }
    text = markdown({"spec": spec, "runs": _runs({t: [1, 1, 1] for t in TOOLS}), "comparison": rows})
    header = next(line for line in text.splitlines() if line.startswith("| tool |"))
    rule = text.splitlines()[text.splitlines().index(header) + 1]
    assert header.count("|") == rule.count("|") and "server TPOT" not in header
    assert "server CPUs not pinned, client CPUs not pinned" in text  # results written before pinning read so
    # pinned, with the server's own TPOT per run: a column more, its n beside it
    runs = _runs({t: [1, 1, 1] for t in TOOLS})
    for rows_of_tool in runs.values():
        for i, row in enumerate(rows_of_tool):
            row.update({"server TPOT p50 ms": 40.0, "server_n": 4 - (i == 2)})
    pinned = {**spec, "server_cpus": [1], "client_cpus": [0, 2, 3]}
    text = markdown({"spec": pinned, "runs": runs, "comparison": compare(runs, 0.05)})
    lines = text.splitlines()
    verdicts = next(i for i, line in enumerate(lines) if line.startswith("| metric |"))
    assert lines[verdicts].count("|") == lines[verdicts + 1].count("|") == 8
    assert "| TPOT p50 ms | aiperf | server | 2.5 | 2.5 - 2.5 | 3 | differs: " in text
    header = next(line for line in text.splitlines() if line.startswith("| tool |"))
    rule = text.splitlines()[text.splitlines().index(header) + 1]
    assert header.count("|") == rule.count("|") and "| server TPOT p50 ms |" in header
    assert "| rllm-study | 4 | 100 | 100 | 100 | 100 | 100 | 40 (n 3-4) | 1 | 2 |" in text
    assert "Server threads 2, server CPUs 1, client CPUs 0,2-3." in text


def _llama_server() -> Path | None:
    import importlib.metadata

    version = importlib.metadata.version("llama_cpp_python")
    path = Path(
        os.environ.get(
            "RLLM_LLAMA_SERVER", Path.home() / ".cache/rllm-study/llama-tools" / version / "bin/llama-server"
        )
    )
    return path if path.is_file() else None


def test_a_wrong_bin_folder_is_refused_before_anything_starts(tmp_path):
    out = tmp_path / "agree"
    proc = run_cli("bench", "agree", "--peers-bin", tmp_path, "--server-bin", "/bin/true", "--out", out)
    assert proc.returncode == 2 and "no aiperf there" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()  # no tokenizer exported, no server started


def test_a_bad_cpu_list_is_refused_before_anything_starts(tmp_path):
    out = tmp_path / "agree"
    proc = run_cli(
        "bench", "agree", "--peers-bin", tmp_path, "--server-bin", "/bin/true", "--client-cpus", "0-x", "--out", out
    )
    assert proc.returncode == 2 and "--client-cpus '0-x': not a CPU list" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.slow
def test_bench_agree_end_to_end(tmp_path):
    server, peers = _llama_server(), os.environ.get("RLLM_PEERS_BIN")
    if server is None or not peers:
        pytest.skip(
            "needs llama-server (scripts/build_llama_tools.sh) and RLLM_PEERS_BIN (a venv with rllm-study[peers])"
        )
    cpus = sorted(os.sched_getaffinity(0))
    # on 2 or more CPUs, the server pinned to the last and the clients to the first (its -t from the count)
    pinning = ["--server-cpus", str(cpus[-1]), "--client-cpus", str(cpus[0])] if len(cpus) >= 2 else ["-t", "2"]
    proc = run_cli(
        "bench",
        "agree",
        "--peers-bin",
        peers,
        "--server-bin",
        server,
        "-m",
        "smollm2-135m",
        *pinning,
        "-c",
        "2",
        "-n",
        "2",
        "--prompt-tokens",
        "16",
        "--output-tokens",
        "4",
        "--rounds",
        "2",
        "--out",
        tmp_path / "agree",
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "agree" / "agree.json").read_text())
    for tool in TOOLS:
        assert len(result["runs"][tool]) == 2 and all(r["n"] == 2 for r in result["runs"][tool])
        # the server's own timing of each run: one eval line per request of that run
        assert all(r["server_n"] == 2 and r["server TPOT p50 ms"] > 0 for r in result["runs"][tool])
    assert "| rllm-study |" in proc.stdout and "verdict" in proc.stdout and "server TPOT p50 ms" in proc.stdout
    if len(cpus) >= 2:
        spec = result["spec"]
        assert spec["server_cpus"] == [cpus[-1]] and spec["client_cpus"] == [cpus[0]] and spec["threads"] == 1
        assert result["server_affinity"] == [cpus[-1]]  # read back from the running server
        assert f"server CPUs {cpus[-1]}, client CPUs {cpus[0]}" in proc.stdout
