"""The one catalogue of table columns: which metric each shows, where its value lives in
`cell_metrics()`, and how it prints. Every report table and `rllm-study summarize` take their
columns from here.

A column's header, display kind and better-direction come from its metric's declaration
(`MetricDef.label`, `.display`, `.better` in rllm_study.analysis.metrics); a column adds only
where its value is (the path into cell_metrics) and which statistic it shows (`stat`, filling the
label's "{stat}"), and may override the kind or direction for that statistic (a CV is a plain
number whatever its metric's unit). A column's value is read from a cell's metrics, never
recomputed; `ratio` = this run's (or variant's) value / the reference's value. A proportion
column (accuracy, answer-phase share) is printed with its counts and 95% Wilson interval, read
from beside its value.
"""

from __future__ import annotations

from dataclasses import dataclass

from rllm_study.analysis.metrics import METRICS
from rllm_study.analysis.stats import Interval
from rllm_study.formatting import num, pct, proportion

MIB = 2**20
_UNSET = object()


@dataclass(frozen=True)
class Column:
    label: str  # as printed, with its unit
    metric: str  # the METRICS entry that defines it
    path: tuple  # keys into cell_metrics()
    kind: str = "num"  # a MetricDef display: num | count | pct | mib | ms | measured (see `fmt`)
    higher_is_better: bool | None = None
    counts: tuple[str, str, str] | None = None  # a proportion's (k, n, interval) keys beside its value


def col(
    metric: str,
    *path: str,
    stat: str = "",
    kind: str | None = None,
    better=_UNSET,
    counts: tuple[str, str, str] | None = None,
) -> Column:
    """The column of `metric` at `path` in cell_metrics(), showing statistic `stat`; header, kind and
    direction from the metric's declaration unless `kind` / `better` ("higher", "lower", None) say otherwise."""
    m = METRICS[metric]
    label = " ".join(m.label.format(stat=stat).split())
    direction = m.better if better is _UNSET else better
    return Column(label, metric, path, kind or m.display, None if direction is None else direction == "higher", counts)


def latency(metric: str, stat: str) -> Column:
    """A latency percentile (or other distribution key) column, e.g. latency("ttft_s", "p90")."""
    return col(metric, "latency", metric, stat, stat=stat)


ACCURACY = col("accuracy", "accuracy", "overall", "accuracy", stat="strict", counts=("correct", "total", "ci95"))
ACCURACY_LENIENT = col(
    "accuracy",
    "accuracy",
    "overall",
    "accuracy_lenient",
    stat="lenient",
    counts=("correct_lenient", "total", "ci95_lenient"),
)
ANSWER_PHASE = col("answer_phase_share", "tokens", "answer_phase", "share", counts=("k", "n", "ci95"))
OUT_TOK_S = col("output_tok_s", "throughput", "output_tok_s")
REQ_S = col("requests_s", "throughput", "requests_s")
N_REQUESTS = col("n_requests", "n_requests")
ARRIVAL_RATE = col("arrival_rate", "arrivals", "rate")
ARRIVAL_CV = col("arrival_cv", "arrivals", "cv")
GOODPUT = col("goodput_req_s", "throughput", "goodput_req_s")
TTFT_P50 = latency("ttft_s", "p50")
TTFVT_P50 = latency("ttfvt_s", "p50")
TTFVT_P95 = latency("ttfvt_s", "p95")
E2EL_P50 = latency("e2el_s", "p50")
E2EL_P90 = latency("e2el_s", "p90")
E2EL_P95 = latency("e2el_s", "p95")
QUEUE_P50 = latency("queue_s", "p50")
QUEUE_P90 = latency("queue_s", "p90")
LAG_P50 = col("dispatch_lag_s", "arrivals", "dispatch_lag_s", "p50", stat="p50")
LAG_P99 = col("dispatch_lag_s", "arrivals", "dispatch_lag_s", "p99", stat="p99")
USER_TOK_S_P50 = col("user_tok_s", "throughput", "user_tok_s", "p50", stat="p50")
RUNNING_MEAN = col("running_requests", "memory", "running", "mean", stat="mean", kind="num")
RUNNING_PEAK = col("running_requests", "memory", "running", "peak", stat="peak")
WAITING_MEAN = col("waiting_requests", "memory", "waiting", "mean", stat="mean")
TPOT_P50 = latency("tpot_s", "p50")
ITL_P50 = latency("itl_s", "p50")
THINK_MEAN = col("think_tokens", "tokens", "think", "mean", stat="mean")
THINK_FORCED = col("think_forced_share", "tokens", "think_forced", "share", counts=("k", "n", "ci95"))
OUTPUT_MEAN = col("output_tokens", "tokens", "output", "mean", stat="mean")
STRAGGLERS = col("straggler_share", "stragglers", "share")
TAIL_SHARE = col("tail_share", "stragglers", "tail_share")
KV_PEAK = col("kv_frac", "memory", "kv_frac", "peak", stat="peak")
KV_MEAN = col("kv_frac", "memory", "kv_frac", "mean", stat="mean")
KV_CV = col("kv_frac", "memory", "kv_frac", "cv", stat="CV", kind="num", better=None)
RSS_PEAK = col("rss_bytes", "memory", "rss_bytes", "peak", stat="peak")
GPU_PEAK = col("gpu_bytes", "memory", "gpu_bytes", "peak", stat="peak")
J_PER_TOKEN = col("j_per_token", "energy", "j_per_token")
TOKENS_PER_J = col("tokens_per_j", "energy", "tokens_per_j")
AVG_POWER = col("avg_power_w", "energy", "avg_power_w")
PREFIX_HITS = col("prefix_hit_rate", "techniques", "prefix_hit_rate")
MACHINE_SPEED = col("machine_speed", "throughput", "machine_speed", "tok_s")
DRAFT_ACCEPT = col("draft_acceptance_rate", "techniques", "draft_acceptance_rate")

OVERVIEW = (
    ACCURACY,
    ACCURACY_LENIENT,
    ANSWER_PHASE,
    OUT_TOK_S,
    TTFT_P50,
    TTFVT_P50,
    E2EL_P50,
    E2EL_P95,
    THINK_MEAN,
    STRAGGLERS,
    KV_PEAK,
    RSS_PEAK,
    J_PER_TOKEN,
    MACHINE_SPEED,
)
TECHNIQUE = (
    ACCURACY,
    ACCURACY_LENIENT,
    ANSWER_PHASE,
    OUT_TOK_S,
    TTFVT_P50,
    TTFVT_P95,
    E2EL_P50,
    E2EL_P95,
    KV_PEAK,
    RSS_PEAK,
)
LOAD = (
    N_REQUESTS,
    ARRIVAL_RATE,
    ARRIVAL_CV,
    REQ_S,
    OUT_TOK_S,
    QUEUE_P50,
    QUEUE_P90,
    ANSWER_PHASE,
    TTFVT_P50,
    E2EL_P50,
    E2EL_P95,
    KV_PEAK,
    KV_MEAN,
)
COMPARE = (
    ACCURACY,
    ACCURACY_LENIENT,
    ANSWER_PHASE,
    OUT_TOK_S,
    REQ_S,
    GOODPUT,
    TTFT_P50,
    TTFVT_P50,
    TTFVT_P95,
    E2EL_P50,
    E2EL_P95,
    QUEUE_P50,
    TPOT_P50,
    ITL_P50,
    THINK_MEAN,
    OUTPUT_MEAN,
    STRAGGLERS,
    TAIL_SHARE,
    KV_PEAK,
    KV_MEAN,
    KV_CV,
    RSS_PEAK,
    GPU_PEAK,
    J_PER_TOKEN,
    TOKENS_PER_J,
    AVG_POWER,
    PREFIX_HITS,
    DRAFT_ACCEPT,
    MACHINE_SPEED,
)


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


def cell_value(metrics: dict, column: Column, sep: str = " ") -> str:
    """The column's value as printed; a proportion with its counts and, after `sep`, its interval."""
    if column.counts is None:
        return fmt(value(metrics, column), column.kind)
    beside = _node(metrics, column.path[:-1]) or {}
    k, n, interval = (beside.get(key) for key in column.counts)
    return proportion(value(metrics, column), k, n, interval, sep)


def acc_text(acc: dict, lenient: bool = False) -> str:
    """An accuracy dict of `cell_metrics` (strict, or lenient) as its value, counts and Wilson interval."""
    if lenient:
        return proportion(
            acc.get("accuracy_lenient"), acc.get("correct_lenient"), acc.get("total"), acc.get("ci95_lenient")
        )
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
