"""`bench agree`'s parts that need no server (issue 29): CPU lists and pinning (bench.cpus), and the
server's own TPOT read from llama-server's log (bench.agree.server_tpot)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from conftest import require
from rllm_study.bench.agree import server_tpot
from rllm_study.bench.cpus import format_cpus, parse_cpus, pinned
from rllm_study.errors import UserError

AVAILABLE = sorted(os.sched_getaffinity(0))


def test_cpu_lists_parse_and_print_in_linux_notation():
    assert (
        format_cpus({0, 2, 3}) == "0,2-3"
        and format_cpus([5]) == "5"
        and format_cpus({1, 2, 3, 7, 9, 10}) == "1-3,7,9-10"
    )
    first = AVAILABLE[0]
    assert parse_cpus(str(first), "--server-cpus") == (first,)
    assert parse_cpus(f" {first} , {first}-{first}", "--server-cpus") == (first,)
    if AVAILABLE[:2] == [0, 1]:
        assert parse_cpus("1,0", "--client-cpus") == (0, 1) and parse_cpus("0-1", "--client-cpus") == (0, 1)


@pytest.mark.parametrize("text", ["", "a", "1-", "2-1", "-1", "0,,1", "1.5"])
def test_a_malformed_cpu_list_names_the_flag(text):
    with pytest.raises(UserError, match=r"^--client-cpus .*not a CPU list"):
        parse_cpus(text, "--client-cpus")


def test_a_cpu_this_machine_lacks_is_refused():
    absent = AVAILABLE[-1] + 1
    with pytest.raises(UserError, match=rf"^--server-cpus .*no CPU {absent} here; .*CPUs {format_cpus(AVAILABLE)}$"):
        parse_cpus(f"{AVAILABLE[0]},{absent}", "--server-cpus")


def test_pinned_moves_every_thread_and_child_and_restores_them():
    require(len(AVAILABLE) >= 2, "pinning is seen only on a machine with 2 or more CPUs")
    one = (AVAILABLE[-1],)
    stop = threading.Event()
    earlier = threading.Thread(target=stop.wait)  # a thread started before the pinning
    earlier.start()
    tid = earlier.native_id
    try:
        with pinned(one):
            assert os.sched_getaffinity(0) == set(one) and os.sched_getaffinity(tid) == set(one)
            child = subprocess.run(
                [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                capture_output=True,
                text=True,
                check=True,
            )
            assert child.stdout.strip() == str(list(one))
        assert sorted(os.sched_getaffinity(0)) == AVAILABLE and sorted(os.sched_getaffinity(tid)) == AVAILABLE
    finally:
        stop.set()
        earlier.join()
    with pinned(None):
        assert sorted(os.sched_getaffinity(0)) == AVAILABLE


LOG = """\
0.00.100.000 I slot print_timing: id  0 | task 0 | prompt eval time =    100.00 ms /   128 tokens (    0.78 ms per token)
0.00.100.001 I slot print_timing: id  0 | task 0 |        eval time =    999.00 ms /    31 tokens (   32.23 ms per token)
"""
RUN = """\
0.01.100.000 I slot print_timing: id  0 | task 4 | prompt eval time =    700.00 ms /   128 tokens (    5.47 ms per token)
0.01.100.001 I slot print_timing: id  0 | task 4 |        eval time =   1200.00 ms /    31 tokens (   38.71 ms per token)
0.01.100.002 I slot print_timing: id  0 | task 4 |       total time =   1940.00 ms /   159 tokens
0.01.200.001 I slot print_timing: id  1 | task 5 |        eval time =   1500.00 ms /    31 tokens (   48.39 ms per token)
0.01.250.001 I slot print_timing: id  1 | task 7 |        eval time =      0.01 ms /     1 tokens (    0.01 ms per token)
0.01.300.001 I slot print_timing: id  0 | task 6 |        eval time =   1800.00 ms /    31 tokens (   58.06 ms per token)
"""


def test_server_tpot_reads_the_decode_lines_written_during_the_run(tmp_path):
    log = tmp_path / "llama-server.log"
    log.write_text(LOG + RUN)
    # only the run's lines (after the offset), only "eval time" (not prompt eval), X / (N - 1) (the server
    # times N - 1 gaps), a one-token request skipped (no gap): median of 40, 50, 60 ms
    got = server_tpot(log, len(LOG.encode()), 3)
    assert got == {"server TPOT p50 ms": pytest.approx(50.0), "server_n": 3}
