"""Arrival processes: statistics over 10,000 draws, seeding, rescaling to the target rate, trace
replay, ramp-up, the timing protocol the runner drives, bad input (API, spec, CLI), the CLI."""

import json

import numpy as np
import pytest

from conftest import run_cli
from rllm_study.errors import UserError
from rllm_study.running.spec import WORKLOAD_KEYS, expand
from rllm_study.workloads.arrivals import ARRIVALS, ClosedLoop, OpenLoop, SyncBatches, gap_stats, make_arrivals
from rllm_study.workloads.arrivals.base import Due

N = 10_001  # 10,000 gaps


@pytest.mark.parametrize(
    "kind, rate, cv, expected_cv",
    [
        ("poisson", 5.0, None, 1.0),
        ("gamma", 2.0, 0.5, 0.5),
        ("gamma", 0.5, 1.0, 1.0),
        ("gamma", 10.0, 1.41, 1.41),
        ("gamma", 3.0, 2.0, 2.0),
    ],
)
def test_rate_and_cv_within_5_percent(kind, rate, cv, expected_cv):
    arrivals = make_arrivals(kind, N, rate=rate, cv=cv, seed=7)
    measured_rate, measured_cv = gap_stats(arrivals.times)
    # random schedules are rescaled to the exact rate (base.rescaled_gaps): any drift means the rescale broke
    assert measured_rate == pytest.approx(rate, rel=1e-9)
    assert abs(measured_cv / expected_cv - 1) < 0.05


def test_constant_rate_has_equal_gaps():
    arrivals = make_arrivals("constant", 101, rate=4.0)
    assert arrivals.times[0] == 0.0 and arrivals.times[-1] == pytest.approx(25.0)
    rate, cv = gap_stats(arrivals.times)
    assert rate == pytest.approx(4.0) and cv == pytest.approx(0.0, abs=1e-9)


def test_gap_stats_formula():
    rate, cv = gap_stats((0.0, 1.0, 3.0))  # gaps 1 and 2: mean 1.5, population std 0.5
    assert rate == pytest.approx(2 / 3) and cv == pytest.approx(1 / 3)


def test_schedule_shape():
    arrivals = make_arrivals("gamma", 500, rate=2.0, cv=3.0, seed=1)
    assert isinstance(arrivals, OpenLoop) and arrivals.kind == "gamma"
    assert len(arrivals.times) == 500 and arrivals.times[0] == 0.0
    assert list(arrivals.times) == sorted(arrivals.times)


@pytest.mark.parametrize("kind, cv", [("poisson", None), ("gamma", 1.5)])
def test_seeds(kind, cv):
    first = make_arrivals(kind, 200, rate=3.0, cv=cv, seed=11)
    assert make_arrivals(kind, 200, rate=3.0, cv=cv, seed=11) == first
    assert make_arrivals(kind, 200, rate=3.0, cv=cv, seed=12).times != first.times


def test_closed_and_batch():
    assert make_arrivals("closed", 10, concurrency=4) == ClosedLoop(4)
    assert make_arrivals("batch", 10, batch_size=16) == SyncBatches(16)


def test_trace_replay(tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("# captured arrivals\n12.5\n10.0  # first\n\n11.0\n20.0\n", encoding="utf-8")
    arrivals = make_arrivals("trace", 3, trace=trace)
    assert arrivals == OpenLoop((0.0, 1.0, 2.5), "trace")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="gamma", rate=0.0, cv=1.0), "--rate must be > 0"),
        (dict(kind="poisson", rate=-2.0), "--rate must be > 0"),
        (dict(kind="gamma", rate=1.0, cv=0.0), "--cv must be > 0"),
        (dict(kind="gamma", rate=1.0), "needs --cv"),
        (dict(kind="batch", batch_size=0), "--batch-size must be at least 1"),
        (dict(kind="closed", concurrency=0), "--concurrency must be at least 1"),
        (dict(kind="poisson", rate=1.0, cv=2.0), "--cv does not apply to --arrival poisson"),
        (dict(kind="burst", rate=1.0), "unknown arrival 'burst'"),
        (dict(kind="trace"), "needs --trace"),
    ],
)
def test_bad_input(kwargs, message):
    kind = kwargs.pop("kind")
    with pytest.raises(UserError, match=message):
        make_arrivals(kind, 10, **kwargs)


def test_bad_traces(tmp_path):
    with pytest.raises(UserError, match="cannot read trace file"):
        make_arrivals("trace", 3, trace=tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("0\n1.5\nsoon\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 3: 'soon' is not a number"):
        make_arrivals("trace", 3, trace=tmp_path / "bad.txt")
    (tmp_path / "short.txt").write_text("0\n1\n", encoding="utf-8")
    with pytest.raises(UserError, match="has 2 timestamps, fewer than the 3"):
        make_arrivals("trace", 3, trace=tmp_path / "short.txt")
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(UserError, match="cannot read trace file"):
        make_arrivals("trace", 3, trace=tmp_path / "binary.bin")


def test_cli_json_schedule_is_the_computed_one():
    done = run_cli("schedule", "--arrival", "gamma", "--rate", "2", "--cv", "1.5", "-n", "50", "--seed", "3", "--json")
    assert done.returncode == 0, done.stderr
    times = [json.loads(line) for line in done.stdout.splitlines()]
    assert np.allclose(times, make_arrivals("gamma", 50, rate=2.0, cv=1.5, seed=3).times)


def test_cli_text_and_closed_loop():
    done = run_cli("schedule", "--arrival", "poisson", "--rate", "4", "-n", "5")
    assert done.returncode == 0 and "measured: rate" in done.stdout and len(done.stdout.splitlines()) == 3 + 5
    done = run_cli("schedule", "--arrival", "closed", "--concurrency", "8", "-n", "20", "--json")
    assert json.loads(done.stdout) == {"arrival": "closed", "n": 20, "concurrency": 8}


@pytest.mark.parametrize(
    "args",
    [
        ("--arrival", "gamma", "--rate", "0", "--cv", "1", "-n", "5"),
        ("--arrival", "gamma", "--rate", "1", "--cv", "-1", "-n", "5"),
        ("--arrival", "batch", "--batch-size", "0", "-n", "5"),
        ("--arrival", "trace", "--trace", "/nonexistent/trace.txt", "-n", "5"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args):
    done = run_cli("schedule", *args)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


# ---- realised rate: every random open-loop schedule offers its target load exactly ----------


@pytest.mark.parametrize("kind, cv", [("poisson", None), ("gamma", 1.0), ("gamma", 3.0), ("gamma", 0.3)])
def test_short_schedules_realise_the_target_rate_exactly(kind, cv):
    # 16 arrivals at 0.25 req/s: span (n-1)/rate = 60 s whatever the CV (unscaled, the seeded
    # CV 1 and CV 3 schedules spanned 83.6 s and 22.5 s)
    times = make_arrivals(kind, 16, rate=0.25, cv=cv, seed=0).times
    assert times[0] == 0.0 and times[-1] == pytest.approx(60.0, rel=1e-12)
    assert gap_stats(times)[0] == pytest.approx(0.25, rel=1e-12)


def test_rescaling_keeps_the_shape_of_the_draws():
    raw = np.random.Generator(np.random.PCG64(5)).gamma(1 / 9, 9 / 2.0, 29)  # CV 3 at rate 2, as drawn
    gaps = np.diff(make_arrivals("gamma", 30, rate=2.0, cv=3.0, seed=5).times)
    assert np.allclose(gaps / gaps.sum(), raw / raw.sum())  # one factor for every gap
    assert gap_stats(np.cumsum([0, *raw]))[1] == pytest.approx(gap_stats(np.cumsum([0, *gaps]))[1])  # CV unchanged


# ---- the timing protocol: what the runner asks -------------------------------------------


def test_open_loop_is_due_by_the_clock_alone():
    timing = OpenLoop((0.0, 1.0, 2.5), "trace")
    assert timing.due(0.5, 0, 0) == [Due(0.0)]
    assert timing.due(2.6, 1, 99) == [Due(1.0), Due(2.5)]  # in flight does not matter
    assert timing.due(0.9, 1, 0) == [] and timing.next_due_s(1) == 1.0 and timing.next_due_s(3) is None


def test_closed_loop_fills_up_to_its_concurrency():
    timing = ClosedLoop(3)
    assert timing.due(1.5, 0, 0) == [Due(1.5)] * 3
    assert timing.due(2.0, 3, 3) == [] and timing.due(2.0, 3, 1) == [Due(2.0)] * 2
    assert timing.next_due_s(3) is None  # it waits for finishes


def test_sync_batches_wait_for_the_whole_batch():
    timing = SyncBatches(2)
    assert timing.due(0.0, 0, 0) == [Due(0.0, 0)] * 2
    assert timing.due(5.0, 2, 1) == []  # one of batch 0 still running
    assert timing.due(6.0, 2, 0) == [Due(6.0, 1)] * 2


def test_every_process_is_registered_with_its_keys_and_name():
    assert {"arrival", "rate_start", "rate_end", "shared_prefix"} <= WORKLOAD_KEYS
    for name, process in ARRIVALS.items():
        assert name == process.NAME and process.SUMMARY
        assert {p.key for p in process.PARAMS} <= WORKLOAD_KEYS


def test_spec_and_cli_share_one_validator(tmp_path):
    spec = {"datasets": {"gsm8k": 2}, "workload": {"arrival": "ramp", "rate_start": 1, "rate_end": [0, 2]}}
    with pytest.raises(UserError, match=r"^spec.toml: workload.rate_end must be > 0, got 0$"):
        expand(spec, "spec.toml")
    with pytest.raises(UserError, match=r"^--rate-end must be > 0, got 0$"):
        make_arrivals("ramp", 5, rate_start=1, rate_end=0)
    spec["workload"]["rate_end"] = 2
    (cell,) = expand(spec, "spec.toml")
    assert cell.name.endswith("__ramp-r1-2__r0")


# ---- ramp-up ------------------------------------------------------------------------------


def test_ramp_is_reproducible_from_its_seed():
    first = make_arrivals("ramp", 300, rate_start=1.0, rate_end=5.0, seed=4)
    assert make_arrivals("ramp", 300, rate_start=1.0, rate_end=5.0, seed=4) == first
    assert make_arrivals("ramp", 300, rate_start=1.0, rate_end=5.0, seed=5).times != first.times
    assert list(first.times) == sorted(first.times) and first.kind == "ramp"


def test_ramp_spans_its_mean_rate_exactly():
    times = make_arrivals("ramp", 101, rate_start=2.0, rate_end=8.0, seed=0).times
    assert times[0] == 0.0 and times[-1] == pytest.approx(2 * 100 / (2.0 + 8.0))  # T = 2(n-1)/(r0+r1)
    assert gap_stats(times)[0] == pytest.approx(5.0)


@pytest.mark.parametrize("r0, r1, cv", [(2.0, 10.0, 1.0), (10.0, 2.0, 1.0), (2.0, 10.0, 2.0)])
def test_ramp_realises_r0_at_the_start_and_r1_at_the_end(r0, r1, cv):
    # 10^6 arrivals: T = 2(n-1)/(r0+r1) s; over the first and last 0.5% of T the mean intensity is
    # within (r1-r0)/400 of r0 and r1, and >= 1,600 arrivals fall in each: counting noise of one sd
    # 2.5% at CV 1 and 5% at CV 2, so 10%; a ramp at the wrong end or a flat rate is off by 5x or 3x
    n = 1_000_001
    times = np.asarray(make_arrivals("ramp", n, rate_start=r0, rate_end=r1, cv=cv, seed=1).times)
    span = 2 * (n - 1) / (r0 + r1)
    window = 0.005 * span
    start = np.count_nonzero(times < window) / window
    end = np.count_nonzero(times > span - window) / window
    assert start == pytest.approx(r0, rel=0.1) and end == pytest.approx(r1, rel=0.1)
    # the share of arrivals before T/2 is Lambda(T/2) / Lambda(T) = (3 r0 + r1) / (4 (r0 + r1))
    assert np.count_nonzero(times < span / 2) / n == pytest.approx((3 * r0 + r1) / (4 * (r0 + r1)), rel=0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rate_start=0.0, rate_end=2.0), r"^--rate-start must be > 0, got 0.0$"),
        (dict(rate_start=1.0, rate_end=float("inf")), r"^--rate-end must be > 0, got inf$"),
        (dict(rate_start=1.0), r"^--arrival ramp needs --rate-end$"),
        (dict(rate_start=1.0, rate_end=2.0, cv=-1.0), r"^--cv must be > 0, got -1.0$"),
        (
            dict(rate=1.0, rate_start=1.0, rate_end=2.0),
            r"^--rate does not apply to --arrival ramp \(it uses --cv, --rate-end, --rate-start\)$",
        ),
    ],
)
def test_ramp_bad_params(kwargs, message):
    with pytest.raises(UserError, match=message):
        make_arrivals("ramp", 10, **kwargs)


def test_cli_ramp_schedule():
    done = run_cli("schedule", "--arrival", "ramp", "--rate-start", "1", "--rate-end", "4", "-n", "8", "--seed", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ramp arrivals, n=8, seed=3 (rate_start 1.0, rate_end 4.0)"
    assert lines[1].startswith("measured: rate 2.5 req/s") and len(lines) == 3 + 8
    done = run_cli(
        "schedule", "--arrival", "ramp", "--rate-start", "1", "--rate-end", "4", "-n", "8", "--seed", "3", "--json"
    )
    times = [json.loads(line) for line in done.stdout.splitlines()]
    assert times == list(make_arrivals("ramp", 8, rate_start=1.0, rate_end=4.0, seed=3).times)
    done = run_cli("schedule", "--arrival", "ramp", "--rate-start", "1", "-n", "8")
    assert done.returncode == 2 and done.stderr == "error: --arrival ramp needs --rate-end\n"
