"""Metrics: pure functions of a cell's recorded files (formats in `rllm_study.running.results`).

Each metric is one function decorated with `@metric(name, unit, formula, ...)`: the decorator
records its `MetricDef` in `METRICS` (what `rllm-study metrics --explain` and report appendices
print) and where `cell_metrics` puts its value. Adding a metric is adding one such function.
Kinds (`per`):
  request  f(record, tokens) -> value for one request; `request_metrics` gives it per request,
           `cell_metrics` its distribution over the completed requests
  pooled   f(record, tokens) -> list of values; `cell_metrics` gives the distribution of all of
           them pooled over the completed requests
  cell     f(ctx: _Context) -> value for the whole cell
`tokens` is `token_times(...)` of the request's tokens.jsonl line, or None when it has none.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from rllm_study.backends.phases import THINK_CLOSE
from rllm_study.errors import UserError
from rllm_study.running.results import Cell
from rllm_study.workloads.arrivals import gap_stats
from rllm_study.workloads.prompts import THINKING_MODES

DEFAULT_PERCENTILES = (50, 90, 95, 99)
DEFAULT_STRAGGLER_K = 2.0
DEFAULT_WINDOW = 16
COMPLETED = ("stop", "length")
SLO_KEYS = ("ttft_s", "ttfvt_s", "tpot_s", "e2el_s")
Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95% interval
DISPATCH_LAG_BOUND_S = 0.1  # a cell whose p99 dispatch lag exceeds this is warned about (run and report)
PARSE_STATUSES = ("parsed", "answer_in_think", "unparsed")  # as `rllm_study.workloads.grading` records them

CONVENTIONS = (
    "Times are seconds from the start of the request's session (each start or resume of a cell is a session); "
    "they are compared only within a session.",
    "Completed requests are those that finished with `stop` or `length`; failed ones (`abort`, `error`) are left "
    "out of latency, token and straggler statistics, requests/s and goodput, count as wrong in accuracy, and their "
    "output tokens count in output throughput (the engine generated them).",
    "A distribution reports count, mean, min, max and the chosen percentiles (linear interpolation between the "
    "closest ranks); missing values (None) are dropped and not counted.",
    "Per-token times come from tokens.jsonl. A network chunk of n tokens received at t after the previous chunk at "
    "t' is spread evenly (its tokens get t' + k(t - t')/n, k = 1..n: n equal gaps); the first chunk's tokens all get "
    "its own time (gaps of 0: they came together). Every token of a chunk has the chunk's phase.",
)


DISPLAYS = ("num", "count", "pct", "mib", "ms", "measured")  # how a value prints: report/columns.py `fmt`
BETTER = ("higher", "lower")


@dataclass(frozen=True)
class MetricDef:
    """A metric's definition and how tables show it (one catalogue for every table, as AIPerf's
    metric declarations carry header, unit and direction):
      label    the column header, unit included; "{stat}" stands for the statistic a column shows
               (p50, peak, mean ...), e.g. "TTFT {stat} s" -> "TTFT p50 s"; "" for a metric no table shows
      display  how a value prints (DISPLAYS): a number, a whole count, a fraction as a percentage,
               bytes in MiB, seconds in ms, or a number that is "not measured" when missing
      better   "higher" or "lower" when that direction is better, None when neither is"""

    name: str
    unit: str
    formula: str
    description: str
    label: str = ""
    display: str = "num"
    better: str | None = None


@dataclass(frozen=True)
class _Entry:
    per: str
    section: str | None
    key: str
    fn: Callable


METRICS: dict[str, MetricDef] = {}
_ENTRIES: dict[str, _Entry] = {}


def define(
    name: str, unit: str, formula: str, *, label: str = "", display: str = "num", better: str | None = None
) -> Callable:
    """Record the definition of `name` (its description is the function's docstring; label, display
    and better as MetricDef says)."""
    assert display in DISPLAYS and better in (None, *BETTER), (display, better)

    def record(fn: Callable) -> Callable:
        METRICS[name] = MetricDef(name, unit, formula, " ".join((fn.__doc__ or "").split()), label, display, better)
        return fn

    return record


def metric(
    name: str,
    unit: str,
    formula: str,
    *,
    section: str | None,
    key: str | None = None,
    per: str = "cell",
    label: str = "",
    display: str = "num",
    better: str | None = None,
) -> Callable:
    """Define a metric and place its value at cell_metrics()[section][key] (top level when section is None)."""
    assert per in ("request", "pooled", "cell"), per

    def register(fn: Callable) -> Callable:
        define(name, unit, formula, label=label, display=display, better=better)(fn)
        _ENTRIES[name] = _Entry(per, section, key or name, fn)
        return fn

    return register


# ---- shared helpers -------------------------------------------------------------------------


def token_times(row: dict) -> tuple[list[float], str]:
    """Per-token times and phases ('t' think, 'a' answer) of one tokens.jsonl line; chunks of
    `n_tokens` are spread as CONVENTIONS states."""
    ts, phase = row["t_s"], row["phase"]
    counts = row.get("n_tokens") or [1] * len(ts)
    times: list[float] = []
    phases: list[str] = []
    for i, (t, n) in enumerate(zip(ts, counts)):
        prev = ts[i - 1] if i else t
        times.extend(prev + k * (t - prev) / n for k in range(1, n + 1))
        phases.append(phase[i] * n)
    return times, "".join(phases)


def _tokens_of(cell: Cell, request_id: str) -> tuple[list[float], str] | None:
    row = cell.tokens.get(request_id)
    return token_times(row) if row and row.get("t_s") else None


def _gaps(tokens: tuple[list[float], str], phase: str | None = None) -> list[float]:
    """Gaps between consecutive tokens; with `phase`, only those whose two tokens are both in it."""
    times, phases = tokens
    return [b - a for a, b, pa, pb in zip(times, times[1:], phases, phases[1:]) if phase is None or pa == pb == phase]


def _since(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def percentile_key(p: float) -> str:
    return f"p{p:g}"


def distribution(values: Iterable[float | None], percentiles: Iterable[float] = DEFAULT_PERCENTILES) -> dict:
    """count, mean, min, max and p<P> for each percentile P; None values dropped (see CONVENTIONS)."""
    vals = np.array([v for v in values if v is not None], dtype=float)
    percentiles = tuple(percentiles)
    if not len(vals):
        return {"count": 0, "mean": None, "min": None, "max": None, **{percentile_key(p): None for p in percentiles}}
    pct = np.percentile(vals, percentiles) if percentiles else []
    return {
        "count": int(len(vals)),
        "mean": float(vals.mean()),
        "min": float(vals.min()),
        "max": float(vals.max()),
        **{percentile_key(p): float(v) for p, v in zip(percentiles, pct)},
    }


@define("wilson_ci95", "fraction", "(p + z^2/(2n) -/+ z sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n), p = k/n, z = 1.96")
def wilson_interval(k: int, n: int, z: float = Z95) -> list[float] | None:
    """The 95% Wilson score interval [low, high] of a proportion of k successes in n trials (e.g.
    correct answers of n requests): unlike p +/- z sqrt(p(1-p)/n) it stays inside [0, 1] and does
    not shrink to a point at k = 0 or k = n. None when n = 0."""
    if n <= 0:
        return None
    p, z2 = k / n, z * z
    centre, half = p + z2 / (2 * n), z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return [max(0.0, float((centre - half) / (1 + z2 / n))), min(1.0, float((centre + half) / (1 + z2 / n)))]


def share(k: int, n: int) -> dict:
    """A proportion with its counts and Wilson interval: {share, k, n, ci95}."""
    return {"share": _ratio(k, n), "k": k, "n": n, "ci95": wilson_interval(k, n)}


# ---- per-request metrics --------------------------------------------------------------------


@metric(
    "ttft_s", "s", "first_token_s - arrival_s", label="TTFT {stat} s", better="lower", section="latency", per="request"
)
def ttft(r: dict, tokens) -> float | None:
    """Time to first token of any phase (think or answer), queue wait and prefill included."""
    return _since(r.get("first_token_s"), r.get("arrival_s"))


@metric(
    "ttfvt_s",
    "s",
    "first_answer_token_s - arrival_s",
    label="TTFVT {stat} s",
    better="lower",
    section="latency",
    per="request",
)
def ttfvt(r: dict, tokens) -> float | None:
    """Time to first visible token: the user waits through all the thinking. None when the request produced no answer token."""
    return _since(r.get("first_answer_token_s"), r.get("arrival_s"))


@metric("e2el_s", "s", "finish_s - arrival_s", label="E2EL {stat} s", better="lower", section="latency", per="request")
def e2el(r: dict, tokens) -> float | None:
    """End-to-end latency from (scheduled) arrival to the request's last token."""
    return _since(r.get("finish_s"), r.get("arrival_s"))


@metric(
    "queue_s", "s", "admitted_s - arrival_s", label="queue {stat} s", better="lower", section="latency", per="request"
)
def queue(r: dict, tokens) -> float | None:
    """Queue wait: from (scheduled) arrival until the engine gave the request a sequence slot."""
    return _since(r.get("admitted_s"), r.get("arrival_s"))


@metric(
    "dispatch_lag_s",
    "s",
    "sent_s - arrival_s",
    label="dispatch lag {stat} ms",
    display="ms",
    better="lower",
    section="arrivals",
    per="request",
)
def dispatch_lag(r: dict, tokens) -> float | None:
    """How late the runner handed the request to the engine after its arrival (open loop: its
    scheduled time). The runner sends at the first loop turn after a request is due, so a request
    that comes due during an engine step waits for that step to end; latencies still count from
    the arrival. A p99 above DISPATCH_LAG_BOUND_S (0.1 s) is warned about. None in files recorded
    before `sent_s` existed."""
    return _since(r.get("sent_s"), r.get("arrival_s"))


@metric(
    "tpot_s",
    "s",
    "(e2el_s - ttft_s) / (output_tokens - 1)",
    label="TPOT {stat} ms",
    display="ms",
    better="lower",
    section="latency",
    per="request",
)
def tpot(r: dict, tokens) -> float | None:
    """Time per output token after the first, both phases. None with fewer than 2 output tokens."""
    n, first, total = r.get("output_tokens") or 0, ttft(r, tokens), e2el(r, tokens)
    return None if n < 2 or first is None or total is None else (total - first) / (n - 1)


@metric(
    "user_tok_s",
    "tokens/s",
    "(output_tokens - 1) / (finish_s - first_token_s)",
    label="per-user tok/s {stat}",
    better="higher",
    section="throughput",
    per="request",
)
def user_tok_s(r: dict, tokens) -> float | None:
    """Per-user output speed: how fast one request's tokens came after its first (1 / TPOT; both
    phases). None with fewer than 2 output tokens or no time between first and last token."""
    n, first, last = r.get("output_tokens") or 0, r.get("first_token_s"), r.get("finish_s")
    return None if n < 2 or first is None or last is None or last <= first else (n - 1) / (last - first)


@metric(
    "tpot_think_s", "s", "mean gap between consecutive think tokens (tokens.jsonl)", section="latency", per="request"
)
def tpot_think(r: dict, tokens) -> float | None:
    """Decode speed while thinking. None with fewer than 2 think tokens or no per-token times."""
    return _mean(_gaps(tokens, "t")) if tokens else None


@metric(
    "tpot_answer_s", "s", "mean gap between consecutive answer tokens (tokens.jsonl)", section="latency", per="request"
)
def tpot_answer(r: dict, tokens) -> float | None:
    """Decode speed while answering. None with fewer than 2 answer tokens or no per-token times."""
    return _mean(_gaps(tokens, "a")) if tokens else None


@metric(
    "itl_s",
    "s",
    "every gap t[i] - t[i-1] between consecutive tokens of a request, pooled over requests",
    label="ITL {stat} ms",
    display="ms",
    better="lower",
    section="latency",
    per="pooled",
)
def itl(r: dict, tokens) -> list[float]:
    """Inter-token latency, both phases (network chunks: see the conventions)."""
    return _gaps(tokens) if tokens else []


@metric(
    "output_tokens",
    "tokens",
    "output_tokens (engine token count, think + answer)",
    label="output tok {stat}",
    section="tokens",
    key="output",
    per="request",
)
def output_tokens(r: dict, tokens) -> int | None:
    """Generated tokens of the request, counted by the engine's tokenizer (never re-tokenised text)."""
    return r.get("output_tokens")


@metric(
    "think_tokens",
    "tokens",
    "think_tokens (tokens generated in the think phase)",
    label="think tok {stat}",
    section="tokens",
    key="think",
    per="request",
)
def think_tokens(r: dict, tokens) -> int | None:
    """Hidden reasoning tokens; the `</think>` token counts as think."""
    return r.get("think_tokens")


@metric(
    "answer_tokens",
    "tokens",
    "answer_tokens (tokens generated in the answer phase)",
    section="tokens",
    key="answer",
    per="request",
)
def answer_tokens(r: dict, tokens) -> int | None:
    """Visible answer tokens."""
    return r.get("answer_tokens")


@metric("think_ratio", "fraction", "think_tokens / output_tokens", section="tokens", per="request")
def think_ratio(r: dict, tokens) -> float | None:
    """Share of the output spent thinking. None with no output."""
    return _ratio(r.get("think_tokens") or 0, r.get("output_tokens") or 0)


# ---- stragglers -----------------------------------------------------------------------------


@define("straggler", "bool", "e2el_s > k x median(e2el_s of its group)")
def _mark_stragglers(rows: list[dict], k: float, window: int) -> None:
    """A completed request whose E2EL exceeds k times the median E2EL of its group. Group: the
    synchronous batch (`batch` field) within a session; without `batch`, consecutive windows of W
    completed requests of a session in arrival order (W = 16 unless given). Failed requests belong
    to no group and are never stragglers."""
    # sets each row's `group` and `straggler`
    windowed: dict[int, list[dict]] = {}
    for row in rows:
        row["group"], row["straggler"] = None, False
        if row["completed"] and row["e2el_s"] is not None:
            if row["batch"] is None:
                windowed.setdefault(row["session"], []).append(row)
            else:
                row["group"] = f"s{row['session']}/batch{row['batch']}"
    for session, session_rows in windowed.items():
        session_rows.sort(key=lambda x: (x["arrival_s"], x["id"]))
        for i, row in enumerate(session_rows):
            row["group"] = f"s{session}/window{i // window}"
    for members in straggler_groups(rows).values():
        median = statistics.median(m["e2el_s"] for m in members)
        for m in members:
            m["straggler"] = m["e2el_s"] > k * median


def straggler_groups(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["group"] is not None:
            groups.setdefault(row["group"], []).append(row)
    return groups


def group_tail(members: list[dict]) -> tuple[float, float]:
    """(span, tail) of a group: span = last finish - first arrival; tail = time within it when fewer
    than half of the group's n requests were unfinished = last finish - the (floor(n/2)+1)-th finish."""
    finishes = sorted(m["finish_s"] for m in members)
    span = finishes[-1] - min(m["arrival_s"] for m in members)
    return span, finishes[-1] - finishes[len(finishes) // 2]


# ---- who ended the thinking ------------------------------------------------------------------

CLOSERS = ("model", "cap", "ended", "unclosed")
LOOP_N = 8  # n of the n-grams that tell a repetition loop
LOOP_SHARE = 0.5  # a thinking whose n-grams repeat at least this share is a repetition loop


@define(
    "think_closed_by",
    "category",
    "model: not think_forced and an answer phase; cap: think_forced and think_tokens >= the cell's think_budget; "
    "ended: think_forced below the think budget (the model ended while thinking); unclosed: never closed",
)
def think_closed_by(r: dict, think_budget: int | None) -> str | None:
    """Who ended a request's thinking: the model itself (it wrote `</think>`), the engine at the think
    cap (think_budget think tokens), the engine after the model ended while still thinking, or nobody
    (the output budget ran out first, or the request stopped inside its thinking). None when it did not
    think (a direct request, or no think tokens)."""
    if (r.get("think_tokens") or 0) <= 0:
        return None
    if r.get("think_forced"):
        return "cap" if think_budget is not None and r["think_tokens"] >= think_budget else "ended"
    return "model" if has_answer_phase(r) else "unclosed"


@define(
    "repeat_share",
    "fraction",
    f"think-phase {LOOP_N}-grams of token ids that occurred earlier in the same thinking / all its {LOOP_N}-grams",
)
def repeat_share(token_ids: list[int], phases: str) -> float | None:
    """How much a request's thinking repeats itself: the share of its think tokens' 8-grams (token ids,
    tokens.jsonl) that already occurred earlier in that thinking. None with fewer than 8 think tokens."""
    think = [t for t, p in zip(token_ids, phases) if p == "t"]
    grams = [tuple(think[i : i + LOOP_N]) for i in range(len(think) - LOOP_N + 1)]
    seen: set = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else None


@define(
    "capped_repetition_loop",
    "bool",
    f"think_closed_by = cap (or finish_reason = length while thinking) and repeat_share >= {LOOP_SHARE:g}",
)
def capped_loop(r: dict, closer: str | None, share: float | None) -> bool:
    """A request whose thinking went round in a loop until the engine cut it: cut at the think cap (or at
    the output budget while still thinking) with at least half its think-phase 8-grams repeating earlier
    ones (loops repeat about two thirds; other thinking 1-10%)."""
    cut = closer == "cap" or (closer == "unclosed" and r.get("finish_reason") == "length")
    return bool(cut and share is not None and share >= LOOP_SHARE)


@metric(
    "think_closers",
    "fraction",
    "per closer in think_closed_by: completed requests that thought with that closer / completed requests that thought, "
    "with its wilson_ci95",
    section="tokens",
)
def think_closers(ctx: _Context) -> dict | None:
    """Who ended the thinking, as shares of the completed requests that thought: {model, cap, ended,
    unclosed: {share, k, n, ci95}}. A cap hit counts as hitting the budget. None when none thought."""
    closers = [r["think_closed_by"] for r in ctx.done if r["think_closed_by"] is not None]
    return {c: share(closers.count(c), len(closers)) for c in CLOSERS} if closers else None


@metric(
    "hit_budget_share",
    "fraction",
    "completed requests with finish_reason = length or think_closed_by = cap / completed requests",
    section="tokens",
    key="hit_budget",
)
def hit_budget_share(ctx: _Context) -> dict | None:
    """Requests that hit a budget: the output budget (finish `length`) or the think budget (cut at the think
    cap, which ends with `stop`): {share, k, n, ci95}. None without completed requests."""
    return hit_budget_of(ctx.done)


def hit_budget_of(rows: list[dict]) -> dict | None:
    """hit_budget_share over these completed request_metrics rows: {share, k, n, ci95}; None without rows."""
    return share(sum(r["capped"] for r in rows), len(rows)) if rows else None


# ---- requests ------------------------------------------------------------------------------


def request_metrics(cell: Cell, straggler_k: float = DEFAULT_STRAGGLER_K, window: int = DEFAULT_WINDOW) -> list[dict]:
    """One dict per recorded request: identifiers (id, dataset, domain, session, batch, arrival_s,
    finish_s, finish_reason, completed), every per-request metric, who closed its thinking
    (`think_closed_by`), whether it hit a budget (`capped`: finish length or cut at the think cap), its
    `repeat_share` and `repetition_loop` (`capped_repetition_loop`), and its straggler `group` and flag."""
    if straggler_k <= 0 or window < 1:
        raise UserError(f"straggler k = {straggler_k} must be > 0 and window = {window} at least 1")
    rows = []
    think_budget = cell.manifest.get("cell", {}).get("think_budget")
    for r in cell.requests:
        tokens = _tokens_of(cell, r["id"])
        token_row = cell.tokens.get(r["id"]) or {}
        closer = think_closed_by(r, think_budget)
        loop_share = repeat_share(token_row.get("token_ids") or [], token_row.get("phase") or "")
        row = {
            "id": r["id"],
            "dataset": r.get("dataset"),
            "domain": r.get("domain"),
            "session": r.get("session", 0),
            "batch": r.get("batch"),
            "turn": r.get("turn"),
            "arrival_s": r.get("arrival_s"),
            "finish_s": r.get("finish_s"),
            "finish_reason": r.get("finish_reason"),
            "completed": r.get("finish_reason") in COMPLETED,
            "think_closed_by": closer,
            "capped": r.get("finish_reason") == "length" or closer == "cap",
            "repeat_share": loop_share,
            "repetition_loop": capped_loop(r, closer, loop_share),
        }
        row.update({name: e.fn(r, tokens) for name, e in _ENTRIES.items() if e.per == "request"})
        rows.append(row)
    _mark_stragglers(rows, straggler_k, window)
    return rows


# ---- cell metrics ---------------------------------------------------------------------------


@dataclass
class _Context:
    """What every cell metric gets: the recorded cell and its request_metrics rows."""

    cell: Cell
    rows: list[dict]
    percentiles: tuple
    slo: dict | None

    @property
    def done(self) -> list[dict]:
        return [r for r in self.rows if r["completed"]]


@metric("n_requests", "requests", "lines in requests.jsonl", label="n", display="count", section=None)
def n_requests(ctx: _Context) -> int:
    """Recorded (finished, completed or failed) requests of the cell."""
    return len(ctx.cell.requests)


@metric("finish_reasons", "requests", "count of requests per finish_reason", section=None)
def finish_reasons(ctx: _Context) -> dict:
    """How requests ended: stop (EOS or stop string), length (token budget), abort, error."""
    return dict(Counter(r.get("finish_reason") for r in ctx.cell.requests))


@define("correct_lenient", "bool", "correct_lenient; correct where the record has no correct_lenient")
def correct_lenient(r: dict) -> bool:
    """Right with the answer taken from the answer phase or, where that has none, from the thinking
    (parse_status answer_in_think). Files graded before the field existed hold only the strict
    `correct`, and count as it."""
    return (r["correct_lenient"] if "correct_lenient" in r else r.get("correct")) is True


def _accuracy(records: list[dict]) -> dict:
    n = len(records)
    correct = sum(r.get("correct") is True for r in records)
    lenient = sum(map(correct_lenient, records))
    statuses = Counter(r.get("parse_status") for r in records)
    # ungraded: completed requests that carry no grade (a data set without reference answers)
    graded = any(r.get("correct") is not None for r in records) or not any(
        r.get("finish_reason") in COMPLETED for r in records
    )
    return {
        "correct": correct,
        "total": n,
        "accuracy": _ratio(correct, n) if graded else None,
        "ci95": wilson_interval(correct, n) if graded else None,
        "correct_lenient": lenient,
        "accuracy_lenient": _ratio(lenient, n) if graded else None,
        "ci95_lenient": wilson_interval(lenient, n) if graded else None,
        **{status: statuses[status] for status in PARSE_STATUSES},
    }


def _by(records: list[dict], field: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r.get(field) or "unknown", []).append(r)
    return dict(sorted(groups.items()))


@metric(
    "accuracy",
    "fraction",
    "correct / total (all requests), with its wilson_ci95; accuracy_lenient = "
    "sum(correct_lenient) / total, with its wilson_ci95",
    label="accuracy {stat}",
    display="pct",
    better="higher",
    section=None,
)
def accuracy(ctx: _Context) -> dict:
    """Overall, per data set and per domain, strict (`accuracy`: the answer stated in the answer
    phase) and lenient (`accuracy_lenient`: also an answer found only in the thinking), each with
    its count (correct, correct_lenient of total) and 95% Wilson interval (ci95, ci95_lenient).
    Unparsed answers and failed requests count as wrong; the parse-status counts (parsed,
    answer_in_think, unparsed) are reported. None for a group whose completed requests carry no
    grade (a data set without reference answers, e.g. ShareGPT lengths)."""
    reqs = ctx.cell.requests
    return {
        "overall": _accuracy(reqs),
        "by_dataset": {k: _accuracy(v) for k, v in _by(reqs, "dataset").items()},
        "by_domain": {k: _accuracy(v) for k, v in _by(reqs, "domain").items()},
    }


def has_answer_phase(r: dict) -> bool:
    """A think phase and an answer phase: think_tokens > 0 and (answer_tokens > 0 or the output
    holds `</think>`)."""
    return (r.get("think_tokens") or 0) > 0 and (
        (r.get("answer_tokens") or 0) > 0 or THINK_CLOSE in (r.get("output_text") or "")
    )


@metric(
    "answer_phase_share",
    "fraction",
    "completed thinking-mode requests with think_tokens > 0 and (answer_tokens > 0 "
    "or `</think>` in output_text) / completed thinking-mode requests, with its wilson_ci95",
    label="answer phase",
    display="pct",
    section="tokens",
    key="answer_phase",
)
def answer_phase_share(ctx: _Context) -> dict | None:
    """Share of completed requests in a prompt mode that thinks first (reasoning, native) whose
    output has both a think phase and an answer phase (think_tokens > 0 and answer_tokens > 0, or a
    recorded `</think>`): {share, k, n, ci95}. A request without one has no TTFVT and, graded
    strictly, no answer. None for a cell with no such requests (direct mode)."""
    mode = ctx.cell.manifest.get("cell", {}).get("prompt_mode")
    rows = [
        r
        for r in ctx.cell.requests
        if r.get("finish_reason") in COMPLETED and r.get("prompt_mode", mode) in THINKING_MODES
    ]
    return share(sum(map(has_answer_phase, rows)), len(rows)) if rows else None


@metric(
    "think_budget_held_share",
    "fraction",
    "completed requests with think_tokens <= think_budget + tolerance / "
    "completed requests, with its wilson_ci95 (tolerance: the engine's think_budget_tolerance, 0 in process)",
    section="tokens",
    key="think_budget_held",
)
def think_budget_held_share(ctx: _Context) -> dict | None:
    """Whether the think budget held, per request: a server may take the budget field and not
    apply it (vLLM #54906, SGLang #25536). The tolerance allows the tokens a server writes when it
    closes the thinking itself (its end sequence and message, `info().think_budget_tolerance`).
    {share, k, n, ci95}; None for a cell without a think budget."""
    budget = (ctx.cell.manifest.get("cell") or {}).get("think_budget")
    if budget is None:
        return None
    tolerance = (ctx.cell.manifest.get("engine") or {}).get("think_budget_tolerance") or 0
    rows = [r for r in ctx.cell.requests if r.get("finish_reason") in COMPLETED and r.get("think_tokens") is not None]
    return share(sum(r["think_tokens"] <= budget + tolerance for r in rows), len(rows)) if rows else None


@metric(
    "think_close_leaked",
    "requests",
    "count of requests with think_close_leaked",
    section="tokens",
    key="think_close_leaked",
)
def think_close_leaked(ctx: _Context) -> int | None:
    """Requests whose server split the reasoning off yet sent a literal `</think>` in the answer text
    (llama.cpp #28182: a budget cut the parser missed); their phases are split at it. None when the
    engine cannot say (in process: no such split)."""
    flags = [r.get("think_close_leaked") for r in ctx.cell.requests]
    return sum(f is True for f in flags) if any(f is not None for f in flags) else None


@metric(
    "think_forced_share",
    "fraction",
    "completed requests with think_forced / completed requests with think_tokens > 0 "
    "and a known think_forced, with its wilson_ci95",
    label="think forced",
    display="pct",
    section="tokens",
    key="think_forced",
)
def think_forced_share(ctx: _Context) -> dict | None:
    """Share of the completed requests that thought whose thinking the engine closed (think budget
    reached, or the model ended while thinking; see backends/rllm_study/backends/output.py): {share, k, n, ci95}. None
    when none thought, or the engine cannot say (a server)."""
    rows = [
        r
        for r in ctx.cell.requests
        if r.get("finish_reason") in COMPLETED
        and (r.get("think_tokens") or 0) > 0
        and r.get("think_forced") is not None
    ]
    return share(sum(r["think_forced"] is True for r in rows), len(rows)) if rows else None


@metric("duration_s", "s", "sum over sessions of (last finish_s - first arrival_s)", section="throughput")
def duration(ctx: _Context) -> float:
    """Generation time of the cell; a resumed cell adds each session's span (clocks differ between sessions)."""
    return session_spans(ctx.cell.requests)


def session_spans(requests: Iterable[dict]) -> float:
    """Sum over sessions of (last finish_s - first arrival_s) of these requests (records or request_metrics rows)."""
    spans: dict[int, list[float]] = {}
    for r in requests:
        if r.get("arrival_s") is not None and r.get("finish_s") is not None:
            lo_hi = spans.setdefault(r.get("session", 0), [r["arrival_s"], r["finish_s"]])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], r["arrival_s"]), max(lo_hi[1], r["finish_s"])
    return sum(hi - lo for lo, hi in spans.values())


def closed_loop(cell: Cell) -> bool:
    """The cell's requests were sent by a closed loop (`arrival = "closed"`): each goes when one
    finishes, so their send times follow the engine's completions and are no arrival process."""
    return ((cell.manifest.get("cell") or {}).get("workload") or {}).get("arrival") == "closed"


def _arrival_times(ctx: _Context) -> list[list[float]]:
    if closed_loop(ctx.cell):
        return []
    sessions: dict[int, list[float]] = {}
    for r in ctx.cell.requests:
        if r.get("arrival_s") is not None:
            sessions.setdefault(r.get("session", 0), []).append(r["arrival_s"])
    return list(sessions.values())


@metric(
    "arrival_rate",
    "requests/s",
    "sum over sessions of (arrivals - 1) / sum over sessions of (last arrival_s - first arrival_s)",
    label="arrival rate req/s",
    section="arrivals",
    key="rate",
)
def arrival_rate(ctx: _Context) -> float | None:
    """Realised offered load: recorded requests (completed or failed) per second of their arrival
    span. Open loop records scheduled arrivals, and Poisson/Gamma schedules are rescaled to their
    target rate, so a cell run to the end realises its target rate. None without two arrivals in a
    session, and None for a closed loop (its send times follow completions: its request rate is
    `requests_s`, the completed requests per second)."""
    return gap_stats(*_arrival_times(ctx))[0]


@metric(
    "arrival_cv",
    "ratio",
    "population std / mean of the gaps between consecutive arrival_s of a session, pooled over sessions",
    label="arrival CV",
    section="arrivals",
    key="cv",
)
def arrival_cv(ctx: _Context) -> float | None:
    """Realised burstiness of the arrivals (1 for Poisson in the limit, 0 for equal gaps). None without
    two arrivals in a session, and None for a closed loop (its gaps are completion gaps, not arrivals)."""
    return gap_stats(*_arrival_times(ctx))[1]


@metric(
    "output_tok_s",
    "tokens/s",
    "sum(output_tokens of all requests) / duration_s",
    label="out tok/s",
    better="higher",
    section="throughput",
)
def output_throughput(ctx: _Context) -> float | None:
    """System output throughput (think and answer tokens)."""
    return output_tok_s_of(ctx.cell.requests)


def output_tok_s_of(requests: list[dict]) -> float | None:
    """output_tok_s over these requests (records or request_metrics rows): their output tokens / `session_spans`."""
    return _ratio(sum(r.get("output_tokens") or 0 for r in requests), session_spans(requests))


@metric(
    "decode_tok_s",
    "tokens/s",
    "tokens with t in (max prefill_done_s, min finish_s] / (min finish_s - max prefill_done_s), all requests of session 0",
    section="throughput",
)
def decode_throughput(ctx: _Context) -> float | None:
    """Aggregate decode rate while every request decodes: the window from the last prompt done to
    the first finish holds no prompt work and no finished request (llama-batched-bench's S_TG for
    requests submitted together; one request: llama-bench's tg). None when that window is empty
    (e.g. arrivals spread out, a request ending on its first token) or a request failed."""
    reqs = [r for r in ctx.cell.requests if r.get("session", 0) == 0]
    if not reqs or any(r.get("finish_reason") not in COMPLETED or r.get("prefill_done_s") is None for r in reqs):
        return None
    start, end = max(r["prefill_done_s"] for r in reqs), min(r["finish_s"] for r in reqs)
    times = [t for r in reqs if (tk := _tokens_of(ctx.cell, r["id"])) for t in tk[0]]
    n = sum(start < t <= end for t in times)
    return n / (end - start) if end > start and n else None


@metric(
    "requests_s", "requests/s", "completed requests / duration_s", label="req/s", better="higher", section="throughput"
)
def request_throughput(ctx: _Context) -> float | None:
    """Completed requests per second."""
    return _ratio(len(ctx.done), duration(ctx))


def meets_slo(row: dict, slo: dict) -> bool:
    """Whether a request_metrics row is within every SLO limit (goodput's rule, below)."""
    # No TPOT (fewer than 2 tokens) means no gap to wait through, so it meets a TPOT limit.
    return all(
        (row[key] is None and key == "tpot_s") or (row[key] is not None and row[key] <= limit)
        for key, limit in slo.items()
    )


@metric(
    "goodput_req_s",
    "requests/s",
    "completed requests meeting every SLO limit / duration_s",
    label="goodput req/s",
    better="higher",
    section="throughput",
)
def goodput(ctx: _Context) -> float | None:
    """SLO limits are upper bounds on ttft_s, ttfvt_s, tpot_s, e2el_s; a missing TTFVT (no answer)
    misses its limit, a missing TPOT (under 2 tokens) meets it. None when no SLO is given."""
    if not ctx.slo:
        return None
    return _ratio(sum(meets_slo(r, ctx.slo) for r in ctx.done), duration(ctx))


@metric(
    "tokens_by_dataset",
    "tokens",
    "output, think, answer and think_ratio distributions per data set",
    section="tokens",
    key="by_dataset",
)
def tokens_by_dataset(ctx: _Context) -> dict:
    """Think tokens, answer tokens and their ratio per data set (completed requests)."""
    token_metrics = [(n, e.key) for n, e in _ENTRIES.items() if e.per == "request" and e.section == "tokens"]
    return {
        ds: {key: distribution((r[name] for r in rows), ctx.percentiles) for name, key in token_metrics}
        for ds, rows in _by(ctx.done, "dataset").items()
    }


@metric("straggler_count", "requests", "count of stragglers", section="stragglers", key="count")
def straggler_count(ctx: _Context) -> int:
    """Completed requests flagged `straggler`."""
    return sum(r["straggler"] for r in ctx.rows)


@metric(
    "straggler_share",
    "fraction",
    "straggler_count / completed requests",
    label="stragglers",
    display="pct",
    better="lower",
    section="stragglers",
    key="share",
)
def straggler_share(ctx: _Context) -> float | None:
    """Share of completed requests that are stragglers."""
    return _ratio(straggler_count(ctx), len(ctx.done))


@metric(
    "straggler_think_tokens_mean",
    "tokens",
    "mean think_tokens of stragglers",
    section="stragglers",
    key="think_tokens_mean",
)
def straggler_think(ctx: _Context) -> float | None:
    """Do stragglers think longer? Compare with the non-stragglers' mean."""
    return _mean(r["think_tokens"] for r in ctx.done if r["straggler"])


@metric(
    "non_straggler_think_tokens_mean", "tokens", "mean think_tokens of completed non-stragglers", section="stragglers"
)
def non_straggler_think(ctx: _Context) -> float | None:
    """Baseline for straggler_think_tokens_mean."""
    return _mean(r["think_tokens"] for r in ctx.done if not r["straggler"])


@metric("tail_time_s", "s", "sum over groups of (last finish - (floor(n/2)+1)-th finish)", section="stragglers")
def tail_time(ctx: _Context) -> float:
    """Time each straggler group ran with fewer than half of its n requests unfinished, summed over groups."""
    return sum(group_tail(m)[1] for m in straggler_groups(ctx.rows).values())


@metric(
    "tail_share",
    "fraction",
    "tail_time_s / sum over groups of (last finish - first arrival)",
    label="tail share",
    display="pct",
    better="lower",
    section="stragglers",
)
def tail_share(ctx: _Context) -> float | None:
    """Share of the groups' running time spent in the tail."""
    return tail_share_of(ctx.rows)


def tail_share_of(rows: list[dict]) -> float | None:
    """tail_share over these request_metrics rows: their straggler groups' tail time / their spans."""
    spans = [group_tail(m) for m in straggler_groups(rows).values()]
    return _ratio(sum(t for _, t in spans), sum(s for s, _ in spans))


# ---- occupancy and the machine's speed, from the recorded events ---------------------------------


def occupancy(requests: Iterable[dict]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per session, the running and waiting counts as step functions, exact at every change: (times,
    running, waiting), the counts holding from times[k] until times[k + 1]. A request waits from
    arrival_s to admitted_s and runs from admitted_s to finish_s (records without admitted_s are
    admitted on arrival); a change point gathers every event at that time."""
    deltas: dict[int, dict[float, list[int]]] = {}
    for r in requests:
        arrival, finish = r.get("arrival_s"), r.get("finish_s")
        if arrival is None or finish is None:
            continue
        admitted = r.get("admitted_s") if r.get("admitted_s") is not None else arrival
        d = deltas.setdefault(r.get("session", 0), {})
        for t, dr, dw in ((arrival, 0, 1), (admitted, 1, -1), (finish, -1, 0)):
            step = d.setdefault(t, [0, 0])
            step[0] += dr
            step[1] += dw
    out = {}
    for session, d in deltas.items():
        times = np.array(sorted(d))
        out[session] = (times, np.cumsum([d[t][0] for t in times]), np.cumsum([d[t][1] for t in times]))
    return out


def solo_gaps(cell: Cell) -> list[float]:
    """Token gaps t[i] - t[i-1] of any request during which exactly one request was running (by
    `occupancy`: no admission or finish between the two tokens, one sequence in the engine): the
    one-sequence decode step of this cell, measured from its own events."""
    steps = occupancy(cell.requests)
    gaps = []
    for r in cell.requests:
        tokens = _tokens_of(cell, r["id"])
        if not tokens or r.get("session", 0) not in steps:
            continue
        times, running, _ = steps[r.get("session", 0)]
        t = np.array(tokens[0])
        if len(t) < 2:
            continue
        k = np.searchsorted(times, t[:-1], side="right") - 1
        nxt = np.append(times, np.inf)[k + 1]
        alone = (k >= 0) & (running[np.maximum(k, 0)] == 1) & (nxt >= t[1:])
        gaps += [float(g) for g in (t[1:] - t[:-1])[alone] if g > 0]
    return gaps


@metric(
    "machine_speed",
    "tokens/s",
    "calibration: mean tok_s of calibration.jsonl (CALIBRATION_TOKENS greedy tokens, one sequence, just before and "
    "after each session); own_tok_s = 1 / median(solo_gaps): gaps t[i] - t[i-1] while exactly one request ran "
    "(occupancy from admitted_s / finish_s); tok_s = calibration where recorded, else own_tok_s",
    label="machine tok/s",
    better="higher",
    section="throughput",
)
def machine_speed(ctx: _Context) -> dict:
    """How fast the machine decoded one sequence while the cell ran, in tokens/s:
    {tok_s, source ("calibration", "one-sequence gaps" or None), calibration (each calibration
    decode's tok_s, in order), own_tok_s, n_gaps}. The calibration is a fixed decode on the cell's
    own engine, so it also carries what the cell's engine settings do to speed (a quantized model
    decodes faster): compare it between cells of one engine configuration. Cells recorded before
    calibrations existed use their own one-sequence token gaps."""
    cal = [c["tok_s"] for c in ctx.cell.calibration if c.get("tok_s")]
    gaps = solo_gaps(ctx.cell)
    own = 1.0 / float(np.median(gaps)) if gaps else None
    tok_s, source = (_mean(cal), "calibration") if cal else (own, "one-sequence gaps") if own else (None, None)
    return {"tok_s": tok_s, "source": source, "calibration": cal, "own_tok_s": own, "n_gaps": len(gaps)}


@metric(
    "solo_itl_s",
    "s",
    "solo_gaps: gaps t[i] - t[i-1] of any request while exactly one request ran (occupancy, from events)",
    section="stragglers",
)
def solo_itl(ctx: _Context) -> dict:
    """One-sequence decode speed measured in the cell itself: the token gaps of requests while they
    ran alone (`solo_gaps`, exact from the admission and finish events). Its p50 is the reference of
    `straggler_causes`; count 0 when the cell never ran one request alone."""
    return distribution(solo_gaps(ctx.cell), ctx.percentiles)


CAUSES = ("queue", "prefill", "think", "answer", "sharing")


@metric(
    "straggler_causes",
    "s",
    "per straggler: queue = admitted_s - arrival_s; prefill = first_token_s - admitted_s; with solo = solo_itl_s p50: "
    "think = think gaps x solo, answer = answer gaps x solo, sharing = (finish_s - first_token_s) - think - answer; "
    "without solo: think, answer = measured time of think / answer gaps, sharing not measured; summed over stragglers; "
    "capped_repetition_loops = stragglers with capped_repetition_loop",
    section="stragglers",
    key="causes",
)
def straggler_causes(ctx: _Context) -> dict:
    """Where the stragglers' E2EL went. A gap belongs to the phase of its later token (tokens.jsonl;
    without per-token times: think gaps = think_tokens - 1 when it thought, answer gaps the rest). The
    five parts add up to E2EL. `sharing` is the slowdown from sharing decode steps with other requests:
    decoding time beyond what a one-sequence decode of the same length took in this cell (may be
    negative when the straggler decoded faster than that median). `capped` counts the stragglers that hit
    a budget (output or think cap), `capped_repetition_loops` those whose cause is a capped repetition loop
    (`capped_repetition_loop`: cut with at least half its thinking's 8-grams repeating). `dominant` names the largest part
    (None without stragglers); `seconds` are sums over the cell's `count` stragglers."""
    solo_gaps = solo_itl(ctx)
    solo = solo_gaps["p50"] if solo_gaps["count"] else None
    sums = dict.fromkeys(CAUSES, 0.0)
    stragglers = [r for r in ctx.rows if r["straggler"]]
    records = {r["id"]: r for r in ctx.cell.requests}
    for row in stragglers:
        r = records[row["id"]]
        decode = r["finish_s"] - r["first_token_s"]
        tokens = _tokens_of(ctx.cell, r["id"])
        if tokens:
            times, phases = tokens
            think_gaps = [b - a for a, b, p in zip(times, times[1:], phases[1:]) if p == "t"]
            n_gaps = len(times) - 1
        else:
            n_gaps = max((r.get("output_tokens") or 0) - 1, 0)
            n_think = max((r.get("think_tokens") or 0) - 1, 0)
            think_gaps = [decode / n_gaps] * n_think if n_gaps else []
        sums["queue"] += r["admitted_s"] - r["arrival_s"]
        sums["prefill"] += r["first_token_s"] - r["admitted_s"]
        if solo is None:
            sums["think"] += sum(think_gaps)
            sums["answer"] += decode - sum(think_gaps)
        else:
            sums["think"] += solo * len(think_gaps)
            sums["answer"] += solo * (n_gaps - len(think_gaps))
            sums["sharing"] += decode - solo * n_gaps
    if solo is None:
        sums["sharing"] = None
    known = {c: v for c, v in sums.items() if v is not None}
    return {
        "count": len(stragglers),
        "solo_itl_s": solo,
        "seconds": sums,
        "dominant": max(known, key=known.get) if stragglers else None,
        "capped_repetition_loops": sum(r["repetition_loop"] for r in stragglers),
        "capped": sum(r["capped"] for r in stragglers),
    }


MAX_TIMELINE_GAP_S = 1.0  # a sampled timeline with a longer gap between samples decides no claim


@define(
    "time_weighted",
    "as the values",
    "values[k] holds from t[k] to t[k+1]: peak = max(values); mean = sum(values[k] x (t[k+1] - t[k])) / T; "
    "cv = sqrt(sum((values[k] - mean)^2 x (t[k+1] - t[k])) / T) / mean; T = sum of the sessions' spans",
)
def time_weighted(series: Iterable[tuple[Iterable[float], Iterable[float | None]]]) -> dict:
    """Peak, time-weighted mean and coefficient of variation of step functions (one per session; a
    value None is left out with its stretch): {count (values), peak, mean, cv (None when the mean is 0),
    seconds (T), max_gap_s (the longest stretch one value held)}."""
    values, weights, peak, gap = [], [], None, 0.0
    for times, vals in series:
        kept = [(t, v) for t, v in zip(times, vals) if v is not None]
        for (t, v), (t_next, _) in zip(kept, kept[1:] + [kept[-1]] if kept else []):
            values.append(float(v))
            weights.append(float(t_next) - float(t))
            peak = float(v) if peak is None else max(peak, float(v))
            gap = max(gap, float(t_next) - float(t))
    total = sum(weights)
    if not values:
        return {"count": 0, "peak": None, "mean": None, "cv": None, "seconds": 0.0, "max_gap_s": None}
    v, w = np.array(values), np.array(weights)
    mean = float((v * w).sum() / total) if total > 0 else float(v.mean())
    var = float(((v - mean) ** 2 * w).sum() / total) if total > 0 else float(v.var())
    return {
        "count": len(values),
        "peak": peak,
        "mean": mean,
        "cv": (var**0.5) / mean if mean else None,
        "seconds": total,
        "max_gap_s": gap,
    }


def _sampled(timeline: list[dict], value: Callable[[dict], float | None]) -> list[tuple[list[float], list]]:
    """A sampled timeline as one sample-and-hold step function per session (samples in time order)."""
    sessions: dict[int, list[dict]] = {}
    for s in timeline:
        if s.get("t_s") is not None:
            sessions.setdefault(s.get("session", 0), []).append(s)
    return [
        ([s["t_s"] for s in rows], [value(s) for s in rows])
        for rows in (sorted(r, key=lambda s: s["t_s"]) for r in sessions.values())
    ]


def kv_events(cell: Cell) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
    """Per session, KV cells held by requests as a step function from the recorded events: one more
    cell from each token's time, all released at finish_s, exact at every change; a request's
    prompt_tokens cells, which fill while its prompt is decoded between admitted_s and prefill_done_s
    (first_token_s where not recorded), enter at the midpoint of that prefill, where a step has the
    same time integral as a steady fill (the mean is exact; within a prefill the step is off by at most
    half its prompt). The function starts at the session's first arrival. None when a request has no
    per-token times or the engine counts KV in another unit than cells (one per token per sequence)."""
    units = {s.get("kv_unit") for s in cell.timeline if s.get("kv_unit")}
    if units - {"cells"} or not cell.requests:
        return None
    deltas: dict[int, Counter] = {}
    for r in cell.requests:
        tokens = _tokens_of(cell, r["id"])
        done = r.get("prefill_done_s") if r.get("prefill_done_s") is not None else r.get("first_token_s")
        start = (
            None if done is None else (done + (r.get("admitted_s") if r.get("admitted_s") is not None else done)) / 2
        )
        if r.get("arrival_s") is None or r.get("finish_s") is None:
            continue
        d = deltas.setdefault(r.get("session", 0), Counter())
        d[r["arrival_s"]] += 0
        if start is None:
            continue
        if not tokens:
            return None
        held = (r.get("prompt_tokens") or 0) + len(tokens[0])
        d[start] += r.get("prompt_tokens") or 0
        for t in tokens[0]:
            d[t] += 1
        d[r["finish_s"]] -= held
    out = {}
    for session, d in deltas.items():
        times = np.array(sorted(d))
        out[session] = (times, np.cumsum([d[t] for t in times]))
    return out


def _kv_capacity(cell: Cell) -> int | None:
    caps = [s["kv_capacity"] for s in cell.timeline if s.get("kv_capacity")]
    return max(caps) if caps else None


@metric(
    "kv_frac",
    "fraction",
    "KV cells in use / kv_capacity: from events (kv_events) where the engine counts cells, else per timeline sample "
    "(sample-and-hold); peak, mean and cv = std / mean weighted by time (time_weighted)",
    label="KV {stat}",
    display="pct",
    better="lower",
    section="memory",
)
def kv_frac(ctx: _Context) -> dict:
    """KV-cache usage and its fluctuation over the run, weighted by time: {count, peak, mean, cv,
    seconds, max_gap_s, source}. source "events": KV cells held by the requests, exact at every
    admission, token and finish (`kv_events`), as a share of the engine's capacity; source
    "sampler": the engine's own counter sampled by the runner (other engines, older cells), whose
    `max_gap_s` says how long the sampler went without a sample (gaps over MAX_TIMELINE_GAP_S
    keep a claim from resting on it)."""
    events, capacity = kv_events(ctx.cell), _kv_capacity(ctx.cell)
    if events is not None and capacity:
        return {**time_weighted((t, v / capacity) for t, v in events.values()), "source": "events"}
    series = _sampled(ctx.cell.timeline, lambda s: _ratio(s.get("kv_used") or 0, s.get("kv_capacity") or 0))
    return {**time_weighted(series), "source": "sampler"}


@metric(
    "kv_used",
    "kv_unit",
    "KV in use: from events (kv_events, cells) or per timeline sample; peak, mean, cv weighted by time",
    section="memory",
)
def kv_used(ctx: _Context) -> dict:
    """KV cache in use, in the engine's unit (cells: one per token per sequence; bytes; percent), from
    events where the unit is cells (see kv_frac), weighted by time."""
    units = sorted({s.get("kv_unit") for s in ctx.cell.timeline if s.get("kv_unit")})
    events = kv_events(ctx.cell)
    stats = (
        time_weighted(events.values())
        if events is not None
        else time_weighted(_sampled(ctx.cell.timeline, lambda s: s.get("kv_used")))
    )
    return {**stats, "unit": "/".join(units) or None, "source": "events" if events is not None else "sampler"}


@metric(
    "running_requests",
    "requests",
    "requests admitted and not finished (occupancy, from events): peak, mean, cv weighted by time",
    label="running {stat}",
    display="count",
    better="higher",
    section="memory",
    key="running",
)
def running_requests(ctx: _Context) -> dict:
    """How many requests the engine held at once, exact at every admission and finish."""
    return time_weighted((t, r) for t, r, _ in occupancy(ctx.cell.requests).values())


@metric(
    "waiting_requests",
    "requests",
    "requests arrived and not admitted (occupancy, from events): peak, mean, cv weighted by time",
    label="waiting {stat}",
    better="lower",
    section="memory",
    key="waiting",
)
def waiting_requests(ctx: _Context) -> dict:
    """How many requests waited for a sequence slot at once, exact at every arrival and admission."""
    return time_weighted((t, w) for t, _, w in occupancy(ctx.cell.requests).values())


@metric(
    "rss_bytes",
    "bytes",
    "rss_bytes per timeline sample (sample-and-hold): peak, mean, cv weighted by time",
    label="RSS {stat} MiB",
    display="mib",
    better="lower",
    section="memory",
)
def rss(ctx: _Context) -> dict:
    """Resident memory of the engine process (what events cannot give: the sampler records it)."""
    return time_weighted(_sampled(ctx.cell.timeline, lambda s: s.get("rss_bytes")))


@metric(
    "device_bytes",
    "bytes",
    "device_bytes per timeline sample (sample-and-hold): peak, mean, cv weighted by time",
    section="memory",
)
def device(ctx: _Context) -> dict | None:
    """Accelerator memory in use; None when there is no device."""
    stats = time_weighted(_sampled(ctx.cell.timeline, lambda s: s.get("device_bytes")))
    return stats if stats["count"] else None


@metric(
    "gpu_bytes",
    "bytes",
    "gpu_bytes per timeline sample (NVML, all processes; sample-and-hold): peak, mean, cv weighted by time",
    label="GPU MiB {stat}",
    display="mib",
    better="lower",
    section="memory",
)
def gpu_memory(ctx: _Context) -> dict | None:
    """GPU memory in use on the cell's GPUs as NVML reports it (every process on them); None without NVML."""
    stats = time_weighted(_sampled(ctx.cell.timeline, lambda s: s.get("gpu_bytes")))
    return stats if stats["count"] else None


# ---- energy ---------------------------------------------------------------------------------


def _measured_sessions(ctx: _Context) -> dict[int, tuple[float, float]]:
    """session -> (energy_j, t_s) of its last timeline sample that carries energy_j."""
    last: dict[int, tuple[float, float]] = {}
    for s in ctx.cell.timeline:
        if s.get("energy_j") is not None:
            last[s.get("session", 0)] = (s["energy_j"], s["t_s"])
    return last


@metric("energy_j", "J", "sum over measured sessions of the last timeline energy_j", section="energy")
def energy(ctx: _Context) -> float | None:
    """Energy the machine's counters (NVML GPUs, RAPL CPU packages, --energy-cmd) measured while the
    cell ran, from each session's start to its last sample; None ("not measured") without a counter."""
    sessions = _measured_sessions(ctx)
    return sum(j for j, _ in sessions.values()) if sessions else None


def _measured_tokens(ctx: _Context) -> int:
    sessions = _measured_sessions(ctx)
    return sum(r.get("output_tokens") or 0 for r in ctx.cell.requests if r.get("session", 0) in sessions)


@metric(
    "j_per_token",
    "J/token",
    "energy_j / output tokens of the measured sessions' requests",
    label="J/token",
    display="measured",
    better="lower",
    section="energy",
)
def j_per_token(ctx: _Context) -> float | None:
    """Energy per generated token (think and answer); None when not measured or no tokens."""
    joules = energy(ctx)
    return None if joules is None else _ratio(joules, _measured_tokens(ctx))


@metric(
    "tokens_per_j",
    "tokens/J",
    "output tokens of the measured sessions' requests / energy_j",
    label="tokens/J",
    display="measured",
    better="higher",
    section="energy",
)
def tokens_per_j(ctx: _Context) -> float | None:
    """Generated tokens per joule; None when not measured or no energy was counted."""
    joules = energy(ctx)
    return None if joules is None else _ratio(_measured_tokens(ctx), joules)


@metric(
    "avg_power_w",
    "W",
    "energy_j / sum over measured sessions of their last sample's t_s",
    label="avg W",
    display="measured",
    section="energy",
)
def avg_power(ctx: _Context) -> float | None:
    """Average power drawn by the measured parts while the cell ran; None when not measured."""
    joules = energy(ctx)
    return None if joules is None else _ratio(joules, sum(t for _, t in _measured_sessions(ctx).values()))


@metric(
    "prefix_hit_rate",
    "fraction",
    "requests with cached_tokens > 0 / all requests",
    label="prefix hit rate",
    display="pct",
    section="techniques",
)
def prefix_hit_rate(ctx: _Context) -> float | None:
    """Share of requests whose prompt reused a cached prefix."""
    reqs = ctx.cell.requests
    return _ratio(sum((r.get("cached_tokens") or 0) > 0 for r in reqs), len(reqs))


@metric("cached_prompt_tokens", "tokens", "sum(cached_tokens)", section="techniques")
def cached_prompt_tokens(ctx: _Context) -> int:
    """Prompt tokens taken from the prefix cache instead of being recomputed."""
    return sum(r.get("cached_tokens") or 0 for r in ctx.cell.requests)


def prefix_saved_prefill(extra: dict) -> float | None:
    """prefix_saved_prefill_s (below) from one `stats().extra` of the llama.cpp engine."""
    per_token, reused = extra.get("prefill_s_per_token"), extra.get("prefix_tokens_reused")
    return None if per_token is None or reused is None else reused * per_token


@metric(
    "prefix_saved_prefill_s",
    "s",
    "prefix_tokens_reused x prefill_s_per_token (the last timeline sample's engine counters)",
    section="techniques",
)
def prefix_saved_prefill_cell(ctx: _Context) -> float | None:
    """Prefill time the prefix cache avoided, estimated: prompt tokens reused times the engine's
    measured prefill cost per token (decode seconds / prompt tokens over steps that decoded prompt
    tokens only); the copies cost prefix_restore_s + prefix_save_s on top. The counters are
    cumulative per engine. None without them or before a prefill-only step."""
    extras = [s["extra"] for s in ctx.cell.timeline if s.get("extra")]
    return prefix_saved_prefill(extras[-1]) if extras else None


@metric("draft_proposed", "tokens", "sum(draft_proposed)", section="techniques")
def draft_proposed(ctx: _Context) -> int:
    """Tokens proposed by the speculative drafter (n-gram or draft model)."""
    return sum(r.get("draft_proposed") or 0 for r in ctx.cell.requests)


@metric("draft_accepted", "tokens", "sum(draft_accepted)", section="techniques")
def draft_accepted(ctx: _Context) -> int:
    """Proposed tokens the target model accepted."""
    return sum(r.get("draft_accepted") or 0 for r in ctx.cell.requests)


@metric(
    "draft_acceptance_rate",
    "fraction",
    "draft_accepted / draft_proposed",
    label="draft acceptance",
    display="pct",
    section="techniques",
)
def draft_acceptance_rate(ctx: _Context) -> float | None:
    """None when nothing was proposed."""
    return _ratio(draft_accepted(ctx), draft_proposed(ctx))


@metric(
    "mean_accepted_per_step",
    "tokens",
    "draft tokens / non-draft tokens in tokens.jsonl `draft` (requests with drafts proposed)",
    section="techniques",
)
def mean_accepted_per_step(ctx: _Context) -> float | None:
    """Accepted draft tokens per target-model step: each step emits the draft tokens it accepted and
    then exactly one token of its own (the first token, from prefill, is a step too). None without drafting."""
    marks = "".join(
        ctx.cell.tokens[r["id"]].get("draft") or ""
        for r in ctx.cell.requests
        if (r.get("draft_proposed") or 0) > 0 and r["id"] in ctx.cell.tokens
    )
    return _ratio(marks.count("1"), marks.count("0"))


@metric(
    "by_turn",
    "s, tokens",
    "per turn k of multi-turn sessions (completed requests with turn = k): n; ttft_s and "
    "ttfvt_s p50 and mean; prompt_tokens and cached_tokens means; reuse = sum(cached_tokens) / sum(prompt_tokens)",
    section="turns",
)
def by_turn(ctx: _Context) -> dict | None:
    """Multi-turn sessions, turn by turn: how long a user waited for the first token and the first
    visible token, how long the prompt had grown (earlier questions and answers) and how much of it
    the prefix cache served. None for a cell without turns."""
    records = {r["id"]: r for r in ctx.cell.requests}
    turns: dict[int, list[dict]] = {}
    for row in ctx.done:
        if row.get("turn") is not None:
            turns.setdefault(row["turn"], []).append(row)
    if not turns:
        return None
    out = {}
    for k, rows in sorted(turns.items()):
        prompt = [records[r["id"]].get("prompt_tokens") or 0 for r in rows]
        cached = [records[r["id"]].get("cached_tokens") or 0 for r in rows]
        ttft_d, ttfvt_d = (
            distribution((r["ttft_s"] for r in rows), (50,)),
            distribution((r["ttfvt_s"] for r in rows), (50,)),
        )
        out[str(k)] = {
            "n": len(rows),
            "ttft_s_p50": ttft_d["p50"],
            "ttft_s_mean": ttft_d["mean"],
            "ttfvt_s_p50": ttfvt_d["p50"],
            "ttfvt_s_mean": ttfvt_d["mean"],
            "prompt_tokens_mean": statistics.fmean(prompt),
            "cached_tokens_mean": statistics.fmean(cached),
            "reuse": _ratio(sum(cached), sum(prompt)),
        }
    return out


# ---- benchmark ratios (figures of two configurations measured in the same run) ----------------


@define(
    "decode_vs_reference",
    "ratio",
    "decode_tok_s (ours) / llama-batched-bench S_TG at N sequences, or llama-bench tg at 1",
)
def decode_vs_reference(ours: float, reference: float) -> float | None:
    """`rllm-study bench engine`: our engine's decode rate against llama.cpp's own tools from the same
    build and settings (n_prompt, n_gen, threads, flash attention, offload). None without a reference."""
    return _ratio(ours, reference)


@define(
    "bench_server_ratio",
    "ratio",
    "in-process figure / llama-server figure on the same workload, with its "
    "bootstrap_ci95 over each side's requests (durations held at the measured ones)",
)
def bench_server_ratio(ours: float | None, theirs: float | None) -> float | None:
    """`rllm-study bench server` (`rllm_study.bench.server.ratio_interval`): a figure of in process over
    llama-server. Each side is its requests and its duration; a resample redraws each side's requests,
    keeping its duration, so the interval shows the spread over requests, not over runs. For goodput and
    output tok/s above 1 means in process is better, for E2EL below 1. None where the server's figure is
    0 or missing."""
    return None if ours is None or not theirs else ours / theirs


@define(
    "speculative_speedup",
    "ratio",
    "output_tok_s with speculation / output_tok_s without, means over alternating rounds",
)
def speculative_speedup(with_spec: float, without: float) -> float | None:
    """`bench techniques`: throughput, not time, because outputs may differ in length."""
    return _ratio(with_spec, without)


@define("prefix_ttft_gain", "ratio", "ttft_s with the prefix cache off / ttft_s on, means over alternating rounds")
def prefix_ttft_gain(off: float, on: float) -> float | None:
    """`bench techniques`: one request at a time sharing a long prefix with an earlier one."""
    return _ratio(off, on)


@define(
    "kv_speed_ratio",
    "ratio",
    "decode_tok_s with a KV-cache type / decode_tok_s with f16, means over alternating rounds",
)
def kv_speed_ratio(quantized: float, f16: float) -> float | None:
    """`bench techniques`: the speed cost (or gain) of a quantized KV cache."""
    return _ratio(quantized, f16)


def _check_slo(slo: dict | None) -> None:
    for key, limit in (slo or {}).items():
        if key not in SLO_KEYS:
            raise UserError(f"SLO key {key!r} is not known; use one of {', '.join(SLO_KEYS)}")
        if not isinstance(limit, (int, float)) or isinstance(limit, bool) or limit <= 0:
            raise UserError(f"SLO {key} = {limit!r} must be a number of seconds > 0")


def cell_metrics(
    cell: Cell,
    percentiles: Iterable[float] = DEFAULT_PERCENTILES,
    slo: dict | None = None,
    straggler_k: float = DEFAULT_STRAGGLER_K,
    window: int = DEFAULT_WINDOW,
) -> dict:
    """Every metric of one cell as a plain JSON-able dict, laid out by section (see METRICS)."""
    _check_slo(slo)
    percentiles = tuple(percentiles)
    ctx = _Context(cell, request_metrics(cell, straggler_k, window), percentiles, slo or None)
    out: dict = {"cell": cell.name}
    sections = {
        s: {}
        for s in (
            "latency",
            "throughput",
            "arrivals",
            "tokens",
            "stragglers",
            "memory",
            "energy",
            "techniques",
            "turns",
        )
    }
    sections["throughput"]["slo"] = ctx.slo
    sections["stragglers"].update(k=straggler_k, window=window)
    for name, e in _ENTRIES.items():
        if e.per == "request":
            value = distribution((r[name] for r in ctx.done), percentiles)
        elif e.per == "pooled":
            value = distribution(_pooled(ctx, e.fn), percentiles)
        else:
            value = e.fn(ctx)
        (out if e.section is None else sections[e.section])[e.key] = value
    return {**out, **sections}


def _pooled(ctx: _Context, fn: Callable) -> list[float]:
    ids = {r["id"] for r in ctx.done}
    return [v for r in ctx.cell.requests if r["id"] in ids for v in fn(r, _tokens_of(ctx.cell, r["id"]))]


def completed_token_times(cell: Cell) -> Iterable[tuple[dict, list[dict], list[float]]]:
    """(request, the completed requests of its session, its token times) for each completed
    request whose tokens were recorded: what finish_gaps and its diagnostics
    (scripts/finish_gaps.py) read."""
    rows = [r for r in cell.requests if r.get("finish_reason") in COMPLETED]
    sessions: dict[int, list[dict]] = {}
    for r in rows:
        sessions.setdefault(r.get("session", 0), []).append(r)
    for r in rows:
        tokens = _tokens_of(cell, r["id"])
        if tokens is not None:
            yield r, sessions[r.get("session", 0)], tokens[0]


def gap_spans(events: np.ndarray, a: float, b: float) -> bool:
    """Whether one of the sorted times `events` lies in the gap from a to b: a <= t < b."""
    i = np.searchsorted(events, a, side="left")
    return bool(i < len(events) and events[i] < b)


@define(
    "finish_gap_p90_ratio",
    "ratio",
    "p90(gaps spanning another request's finish) / p90(all other gaps); a gap t[i] - t[i-1] of one request spans "
    "a finish when another request of its session has t[i-1] <= finish_s < t[i]",
)
def finish_gaps(cell: Cell) -> dict:
    """Whether finishing a request (grading, recording) delays the other requests' next token:
    the gaps between consecutive tokens of completed requests, split into those that span
    another request's finish and the others, with their distributions and the ratio of their
    p90s (1.0: a finish costs the others nothing). Pooled over the cell's sessions."""
    spanning: list[float] = []
    other: list[float] = []
    for r, session, times in completed_token_times(cell):
        ends = np.sort([q["finish_s"] for q in session if q["finish_s"] != r["finish_s"]])
        for a, b in zip(times, times[1:]):
            (spanning if gap_spans(ends, a, b) else other).append(b - a)
    span, rest = distribution(spanning), distribution(other)
    return {
        "spanning": span,
        "other": rest,
        "ratio": _ratio(span["p90"], rest["p90"]) if span["count"] and rest["count"] else None,
    }
