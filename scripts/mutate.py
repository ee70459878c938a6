#!/usr/bin/env python3
"""Mutation check: does the suite fail when the code it guards breaks?

Copies the working tree (tracked and untracked, not ignored) to a temporary folder once, then for
each deliberate one-line bug below: applies it there (the text must occur exactly once), runs the
test files that guard it against the copy (the copy's three source roots first on PYTHONPATH, so
the venv's editable install of this tree is not what runs), restores the file, and prints caught
(some test failed) or missed (all passed). Exit status 1 when any mutation is missed.

  .venv/bin/python scripts/mutate.py            # every mutation
  .venv/bin/python scripts/mutate.py -k claims  # those whose name contains "claims"
  .venv/bin/python scripts/mutate.py --list
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATS = "study/rllm_study/analysis/stats.py"
METRICS = "study/rllm_study/analysis/metrics.py"
CLAIMS = "study/rllm_study/report/claims.py"
GRADING = "workloads/rllm_study/workloads/grading.py"
OPENAI = "backends/rllm_study/backends/openai_http/engine.py"
CUSTOM = "workloads/rllm_study/workloads/custom_dataset.py"
BENCH = "study/rllm_study/bench/engine.py"
ARRIVALS = "workloads/rllm_study/workloads/arrivals/base.py"
PROMPTS = "study/rllm_study/running/prompts.py"
RUNNER = "study/rllm_study/running/runner.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository


MUTATIONS = (
    # the nine of issue #31
    Mutation(
        "stats: the bootstrap reports a 90% interval as 95%",
        STATS,
        "np.percentile(values, [2.5, 97.5])\n    return Interval(estimate, float(lo), float(hi), n)",
        "np.percentile(values, [5, 95])\n    return Interval(estimate, float(lo), float(hi), n)",
        ("tests/unit/test_stats.py", "tests/unit/test_stats_reference.py"),
    ),
    Mutation(
        "stats: the cluster bootstrap reports a 90% interval as 95%",
        STATS,
        'np.percentile(values, [2.5, 97.5])\n    return Interval(estimate, float(lo), float(hi), n, unit, ""',
        'np.percentile(values, [5, 95])\n    return Interval(estimate, float(lo), float(hi), n, unit, ""',
        ("tests/unit/test_stats.py", "tests/unit/test_stats_reference.py"),
    ),
    Mutation(
        "stats: an interval whose end is on the threshold counts as settled",
        STATS,
        "if iv.lo > self.threshold:",
        "if iv.lo >= self.threshold:",
        ("tests/unit/test_claim_thresholds.py", "tests/unit/test_stats.py"),
    ),
    Mutation(
        "metrics: the SLO limit is exclusive (<= turned into <)",
        METRICS,
        "row[key] <= limit",
        "row[key] < limit",
        ("tests/unit/test_metrics.py",),
    ),
    Mutation(
        "grading: negative bare answers are left unparsed",
        GRADING,
        '_LONE_NUMBER = re.compile(r"-?\\d',
        '_LONE_NUMBER = re.compile(r"\\d',
        ("tests/unit/test_grading.py", "tests/unit/test_grading_forms.py"),
    ),
    Mutation(
        "claims: MATH_GAIN 0.05 -> 0.25",
        CLAIMS,
        "MATH_GAIN = 0.05",
        "MATH_GAIN = 0.25",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "claims: ACC_TOLERANCE 0.03 -> 0.10",
        CLAIMS,
        "ACC_TOLERANCE = 0.03",
        "ACC_TOLERANCE = 0.10",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "claims: SAME_LOAD 0.10 -> 0.50",
        CLAIMS,
        "SAME_LOAD = 0.10",
        "SAME_LOAD = 0.50",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "metrics: TPOT divided by n instead of n - 1",
        METRICS,
        "else (total - first) / (n - 1)",
        "else (total - first) / n",
        ("tests/unit/test_metrics.py",),
    ),
    Mutation(
        'grading: the first "answer is" is taken instead of the last',
        GRADING,
        "return strip_units(_clean(said[-1].group(1)))",
        "return strip_units(_clean(said[0].group(1)))",
        ("tests/unit/test_grading.py", "tests/unit/test_grading_forms.py"),
    ),
    # more, on the gaps the issue lists
    Mutation(
        "claims: COLLAPSE 0.5 -> 0.25",
        CLAIMS,
        "COLLAPSE = 0.5 ",
        "COLLAPSE = 0.25 ",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "claims: COLLAPSE 0.5 -> 0.75",
        CLAIMS,
        "COLLAPSE = 0.5 ",
        "COLLAPSE = 0.75 ",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "claims: PEAK_FACTOR 2 -> 3",
        CLAIMS,
        "PEAK_FACTOR = 2.0",
        "PEAK_FACTOR = 3.0",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "claims: LARGE_MODEL 10B -> 20B",
        CLAIMS,
        "LARGE_MODEL = 10e9",
        "LARGE_MODEL = 20e9",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "claims: LARGE_MODEL 10B -> 5B",
        CLAIMS,
        "LARGE_MODEL = 10e9",
        "LARGE_MODEL = 5e9",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "claims: 10B itself counts as small (>= turned into >)",
        CLAIMS,
        "(v.n_params or 0) >= LARGE_MODEL",
        "(v.n_params or 0) > LARGE_MODEL",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "claims: the prefix-cache rule ignores model size",
        CLAIMS,
        "above=not v.large,",
        "above=True,",
        ("tests/unit/test_claim_thresholds.py",),
    ),
    Mutation(
        "stats: an upper end on the threshold counts as settled",
        STATS,
        "if iv.hi < self.threshold:",
        "if iv.hi <= self.threshold:",
        ("tests/unit/test_claim_thresholds.py", "tests/unit/test_stats.py"),
    ),
    Mutation(
        "stats: t_quantile leaves its table one step early",
        STATS,
        "if df <= len(_T975):",
        "if df < len(_T975):",
        ("tests/unit/test_stats.py", "tests/unit/test_stats_reference.py"),
    ),
    Mutation(
        "grading: \\fbox is not a box",
        GRADING,
        '_BOXED = re.compile(r"\\\\(?:boxed|fbox)\\s*\\{")',
        '_BOXED = re.compile(r"\\\\(?:boxed)\\s*\\{")',
        ("tests/unit/test_grading.py", "tests/unit/test_grading_forms.py"),
    ),
    Mutation(
        "grading: units are not stripped",
        GRADING,
        "for pattern in (_WORD_UNITS, _TEXT_UNITS):",
        "for pattern in ():",
        ("tests/unit/test_grading.py", "tests/unit/test_grading_forms.py"),
    ),
    Mutation(
        "grading: no math-verify timeout",
        GRADING,
        "timeout = VERIFY_TIMEOUT_S if",
        "timeout = None if",
        ("tests/unit/test_grading_forms.py::test_math_verify_timeout_counts_as_not_equal",),
    ),
    Mutation(
        "openai: the last line without its newline is dropped",
        OPENAI,
        "for chunk in reader.chunks([pending]):",
        "for chunk in reader.chunks([]):",
        ("tests/unit/test_stream_reader.py",),
    ),
    Mutation(
        "openai: event: error is ignored",
        OPENAI,
        'if self.event == b"error":',
        "if False:",
        ("tests/unit/test_stream_reader.py",),
    ),
    Mutation(
        "bench: batched-bench read as prompt speed",
        BENCH,
        'float(row["speed_tg"])',
        'float(row["speed_pp"])',
        ("tests/unit/test_bench_parsing.py",),
    ),
    Mutation(
        "bench: llama-bench's prompt row taken",
        BENCH,
        'if r["n_gen"] == n_gen',
        'if r["n_gen"] != n_gen',
        ("tests/unit/test_bench_parsing.py",),
    ),
    Mutation(
        "bench: prefix_ttft_gain inverted",
        METRICS,
        "return _ratio(off, on)",
        "return _ratio(on, off)",
        ("tests/unit/test_bench_parsing.py",),
    ),
    Mutation(
        "custom data: a byte-order mark kept",
        CUSTOM,
        'else "utf-8-sig"',
        'else "utf-8"',
        ("tests/e2e/test_fault_classes.py::test_data_files_from_other_tools_read_the_same",),
    ),
    Mutation(
        "custom data: always comma-separated",
        CUSTOM,
        'delimiter=max(",;\\t", key=header.count)',
        'delimiter=","',
        ("tests/e2e/test_fault_classes.py::test_data_files_from_other_tools_read_the_same",),
    ),
    Mutation(
        "regrade: custom data sets read as shipped ones",
        PROMPTS,
        "if custom else list(_shipped(",
        "if False else list(_shipped(",
        ("tests/e2e/test_fault_classes.py::test_commands_on_a_custom_data_set_folder",),
    ),
    Mutation(
        "arrivals: random schedules not rescaled to the rate",
        ARRIVALS,
        "return gaps if total == 0 else gaps * (len(gaps) / (rate * total))",
        "return gaps",
        ("tests/unit/test_arrivals.py::test_rate_and_cv_within_5_percent",),
    ),
    Mutation(
        "openai: an event name outlives its event",
        OPENAI,
        'self.event = b""  # a blank line ends an event',
        "pass",
        ("tests/unit/test_stream_reader.py",),
    ),
    Mutation(
        "grading: the whole output read as the answer (the answer phase not first)",
        GRADING,
        "visible = answer_text(output_text, prompt.starts_in_think)",
        "visible = output_text",
        ("tests/e2e/test_reasoning_model.py::test_native_run_with_think_budget_grading_and_report",),
    ),
    Mutation(
        "runner: requests sent late (each goes out 150 ms after it came due)",
        RUNNER,
        "arrivals.due((now - t0) / 1e9, len(self.todo)",
        "arrivals.due((now - t0) / 1e9 - 0.15, len(self.todo)",
        ("tests/engine/test_dispatch_lag.py",),
    ),
)


def _copy_tree(dest: Path) -> None:
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _pytest(tree: Path, tests, timeout: float | None = None) -> subprocess.CompletedProcess:
    """The default (not slow) tests `tests` in the copy `tree`, its sources first on the path, stopping at
    the first failure; no bytecode or cache written into the copy."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(tree / root) for root in ("study", "backends", "workloads")),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", *tests],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run(tree: Path, m: Mutation, timeout: float) -> tuple[str, float, str]:
    target = tree / m.path
    original = target.read_text()
    count = original.count(m.old)
    if count != 1:
        return f"not applied ({count} matches)", 0.0, ""
    target.write_text(original.replace(m.old, m.new))
    start = time.monotonic()
    try:
        proc = _pytest(tree, m.tests, timeout)
        verdict = (
            "caught"
            if proc.returncode == 1
            else "missed"
            if proc.returncode == 0
            else f"error (pytest exit {proc.returncode})"
        )
        failed = next((line for line in proc.stdout.splitlines() if line.startswith("FAILED")), "")
    except subprocess.TimeoutExpired:
        verdict, failed = f"error (over {timeout:g} s)", ""
    finally:
        target.write_text(original)
    return verdict, time.monotonic() - start, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only mutations whose name contains this text")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mutation's test run")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if args.k.lower() in m.name.lower()]
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.path}: {m.old!r} -> {m.new!r}\n    tests: {' '.join(m.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="rllm-mutate-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        # the unmutated copy must pass, or a "caught" would mean nothing
        files = sorted({t for m in chosen for t in m.tests})
        proc = _pytest(tree, files)
        print(f"baseline, no mutation: {'passes' if proc.returncode == 0 else 'FAILS'} ({' '.join(files)})", flush=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:])
            return 2
        missed = 0
        for m in chosen:
            verdict, took, failed = _run(tree, m, args.timeout)
            missed += verdict != "caught"
            print(
                f"{verdict:8} {took:6.1f} s  {m.name}" + (f"\n                   {failed}" if failed else ""),
                flush=True,
            )
        print(f"{len(chosen) - missed} of {len(chosen)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
