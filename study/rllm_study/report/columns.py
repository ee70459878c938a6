"""The key metrics that report tables show, where each lives in `cell_metrics()` and how it is printed.

A column's value is read from a cell's metrics, never recomputed; `ratio` = this run's (or
variant's) value / the reference's value. A proportion column (accuracy, answer-phase share) is
printed with its counts and 95% Wilson interval, read from beside its value.
"""

from __future__ import annotations

from dataclasses import dataclass

from rllm_study.formatting import num, pct, proportion
from rllm_study.analysis.stats import Interval

MIB = 2**20


@dataclass(frozen=True)
class Column:
    label: str       # as printed, with its unit
    metric: str      # the METRICS entry that defines it
    path: tuple      # keys into cell_metrics()
    kind: str = "num"  # num | count (a whole number) | pct (a fraction printed as a percentage) | mib (bytes printed in MiB) | ms (seconds printed in ms)
    #                    | measured (a number; None printed "not measured": no counter on the machine)
    higher_is_better: bool | None = None
    counts: tuple[str, str, str] | None = None  # a proportion's (k, n, interval) keys beside its value


def col(label: str, metric: str, *path: str, kind: str = "num", better: bool | None = None,
        counts: tuple[str, str, str] | None = None) -> Column:
    return Column(label, metric, path, kind, better, counts)


ACCURACY = col("accuracy strict", "accuracy", "accuracy", "overall", "accuracy", kind="pct", better=True,
               counts=("correct", "total", "ci95"))
ACCURACY_LENIENT = col("accuracy lenient", "accuracy", "accuracy", "overall", "accuracy_lenient", kind="pct", better=True,
                       counts=("correct_lenient", "total", "ci95_lenient"))
ANSWER_PHASE = col("answer phase", "answer_phase_share", "tokens", "answer_phase", "share", kind="pct", counts=("k", "n", "ci95"))
OUT_TOK_S = col("out tok/s", "output_tok_s", "throughput", "output_tok_s", better=True)
REQ_S = col("req/s", "requests_s", "throughput", "requests_s", better=True)
N_REQUESTS = col("n", "n_requests", "n_requests", kind="count")
ARRIVAL_RATE = col("arrival rate req/s", "arrival_rate", "arrivals", "rate")
ARRIVAL_CV = col("arrival CV", "arrival_cv", "arrivals", "cv")
GOODPUT = col("goodput req/s", "goodput_req_s", "throughput", "goodput_req_s", better=True)
TTFT_P50 = col("TTFT p50 s", "ttft_s", "latency", "ttft_s", "p50", better=False)
TTFVT_P50 = col("TTFVT p50 s", "ttfvt_s", "latency", "ttfvt_s", "p50", better=False)
TTFVT_P95 = col("TTFVT p95 s", "ttfvt_s", "latency", "ttfvt_s", "p95", better=False)
E2EL_P50 = col("E2EL p50 s", "e2el_s", "latency", "e2el_s", "p50", better=False)
E2EL_P90 = col("E2EL p90 s", "e2el_s", "latency", "e2el_s", "p90", better=False)
E2EL_P95 = col("E2EL p95 s", "e2el_s", "latency", "e2el_s", "p95", better=False)
QUEUE_P50 = col("queue p50 s", "queue_s", "latency", "queue_s", "p50", better=False)
QUEUE_P90 = col("queue p90 s", "queue_s", "latency", "queue_s", "p90", better=False)
TPOT_P50 = col("TPOT p50 ms", "tpot_s", "latency", "tpot_s", "p50", kind="ms", better=False)
ITL_P50 = col("ITL p50 ms", "itl_s", "latency", "itl_s", "p50", kind="ms", better=False)
THINK_MEAN = col("think tok mean", "think_tokens", "tokens", "think", "mean")
THINK_FORCED = col("think forced", "think_forced_share", "tokens", "think_forced", "share", kind="pct", counts=("k", "n", "ci95"))
OUTPUT_MEAN = col("output tok mean", "output_tokens", "tokens", "output", "mean")
STRAGGLERS = col("stragglers", "straggler_share", "stragglers", "share", kind="pct", better=False)
TAIL_SHARE = col("tail share", "tail_share", "stragglers", "tail_share", kind="pct", better=False)
KV_PEAK = col("KV peak", "kv_frac", "memory", "kv_frac", "peak", kind="pct", better=False)
KV_MEAN = col("KV mean", "kv_frac", "memory", "kv_frac", "mean", kind="pct", better=False)
KV_CV = col("KV CV", "kv_frac", "memory", "kv_frac", "cv")
RSS_PEAK = col("RSS peak MiB", "rss_bytes", "memory", "rss_bytes", "peak", kind="mib", better=False)
GPU_PEAK = col("GPU MiB peak", "gpu_bytes", "memory", "gpu_bytes", "peak", kind="mib", better=False)
J_PER_TOKEN = col("J/token", "j_per_token", "energy", "j_per_token", kind="measured", better=False)
TOKENS_PER_J = col("tokens/J", "tokens_per_j", "energy", "tokens_per_j", kind="measured", better=True)
AVG_POWER = col("avg W", "avg_power_w", "energy", "avg_power_w", kind="measured")
PREFIX_HITS = col("prefix hit rate", "prefix_hit_rate", "techniques", "prefix_hit_rate", kind="pct")
MACHINE_SPEED = col("machine tok/s", "machine_speed", "throughput", "machine_speed", "tok_s")
DRAFT_ACCEPT = col("draft acceptance", "draft_acceptance_rate", "techniques", "draft_acceptance_rate", kind="pct")

OVERVIEW = (ACCURACY, ACCURACY_LENIENT, ANSWER_PHASE, OUT_TOK_S, TTFT_P50, TTFVT_P50, E2EL_P50, E2EL_P95, THINK_MEAN, STRAGGLERS, KV_PEAK, RSS_PEAK,
            J_PER_TOKEN, MACHINE_SPEED)
TECHNIQUE = (ACCURACY, ACCURACY_LENIENT, ANSWER_PHASE, OUT_TOK_S, TTFVT_P50, TTFVT_P95, E2EL_P50, E2EL_P95, KV_PEAK, RSS_PEAK)
LOAD = (N_REQUESTS, ARRIVAL_RATE, ARRIVAL_CV, REQ_S, OUT_TOK_S, QUEUE_P50, QUEUE_P90, TTFVT_P50, E2EL_P50, E2EL_P95, KV_PEAK, KV_MEAN)
COMPARE = (ACCURACY, ACCURACY_LENIENT, ANSWER_PHASE, OUT_TOK_S, REQ_S, GOODPUT, TTFT_P50, TTFVT_P50, TTFVT_P95, E2EL_P50, E2EL_P95, QUEUE_P50,
           TPOT_P50, ITL_P50, THINK_MEAN, OUTPUT_MEAN, STRAGGLERS, TAIL_SHARE, KV_PEAK, KV_MEAN, KV_CV, RSS_PEAK,
           GPU_PEAK, J_PER_TOKEN, TOKENS_PER_J, AVG_POWER, PREFIX_HITS, DRAFT_ACCEPT, MACHINE_SPEED)


def _node(metrics: dict, path: tuple):
    node = metrics
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def value(metrics: dict, column: Column) -> float | None:
    node = _node(metrics, column.path)
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def fmt(v: float | None, kind: str = "num") -> str:
    if v is None:
        return "not measured" if kind == "measured" else "-"
    if kind == "count":
        return str(int(v))
    if kind == "pct":
        return pct(v)
    if kind == "mib":
        return num(v / MIB)
    if kind == "ms":
        return num(v * 1000)
    return num(v)


def cell_value(metrics: dict, column: Column) -> str:
    """The column's value as printed; a proportion with its counts and interval."""
    if column.counts is None:
        return fmt(value(metrics, column), column.kind)
    beside = _node(metrics, column.path[:-1]) or {}
    k, n, interval = (beside.get(key) for key in column.counts)
    return proportion(value(metrics, column), k, n, interval)


def acc_text(acc: dict, lenient: bool = False) -> str:
    """An accuracy dict of `cell_metrics` (strict, or lenient) as its value, counts and Wilson interval."""
    if lenient:
        return proportion(acc.get("accuracy_lenient"), acc.get("correct_lenient"), acc.get("total"), acc.get("ci95_lenient"))
    return proportion(acc.get("accuracy"), acc.get("correct"), acc.get("total"), acc.get("ci95"))


def fmt_interval(iv: Interval, kind: str = "num") -> str:
    """'estimate [lo, hi] (n=N unit; scope)'; kind ratio (x), points (difference of fractions), pct or a num kind."""
    def one(v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}x" if kind == "ratio" else f"{100 * v:+.1f} pt" if kind == "points" else fmt(v, kind)

    bounds = f" [{one(iv.lo)}, {one(iv.hi)}]" if iv.known else " (no interval)"
    scope = f"; {iv.scope}" if iv.scope else ""
    return f"{one(iv.estimate)}{bounds} (n={iv.n} {iv.unit}{scope})"


def ratio(new: float | None, ref: float | None) -> float | None:
    """new / ref; None when either is missing or ref is 0."""
    return None if new is None or ref in (None, 0) else new / ref


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def points(new: float | None, ref: float | None) -> str:
    """A difference of two fractions in percentage points, signed."""
    return "-" if new is None or ref is None else f"{100 * (new - ref):+.1f} pt"
