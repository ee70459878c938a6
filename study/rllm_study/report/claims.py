"""The paper's findings checked against recorded cells, each by a stated rule decided by intervals.

Four pilot findings (reasoning vs direct), four technique takeaways, and the real-world one.
Each finding is declared as data over one scaffold (`Finding`: its key and title, the paper's words, its
rule, what cells it needs, and the judge that computes and decides its conditions); checking it returns
a `Claim`. A rule is one or more conditions, each a 95% interval against a
threshold (`rllm_study.analysis.stats.Condition`): reproduced when every interval lies on the finding's side,
not reproduced when any lies on the other side, inconclusive otherwise (then the claim says roughly
how many requests, cells or cell pairs would settle it), not tested when the cells it needs are
absent. Every interval names its unit and n ("3 cell pairs; 540 requests in 24 batches"). Intervals:
  accuracy             Wilson per proportion; differences paired by item where every item of the compared cells
                       has its twin (same item id, same repeat: `stats.paired_newcombe`), else Newcombe (MOVER over
                       Wilson); over requests (matched items)
  token counts         think tokens are a property of the items, not of the machine: seeded bootstrap over
                       requests resampled within each cell (`stats.bootstrap`)
  cell-level figures   latency, throughput, KV use, straggler and tail figures: the cells are the unit
                       (requests of one cell share its batches and its moment on the machine). Matched
                       cell pairs (reasoning/direct of one repeat, a variant and its reference of one
                       group, low/high CV at one rate) get a Student t interval over the pairs' ratios
                       (geometric mean) or differences (`stats.pair_interval`); unmatched conditions (the
                       difficulty tiers) a two-stage cluster bootstrap, cells then requests
                       (`stats.cluster_bootstrap`). Each needs at least `stats.MIN_CELLS` independent cells
                       or pairs per side, else it is inconclusive whatever its request count.
The machine's speed: each cell's `machine_speed` (a calibration decode on its own engine before and
after it, else its own one-sequence token gaps). Conditions in seconds between cells of one engine
configuration (the difficulty tiers, bursty CVs, prefix caching on/off) keep only cells whose speeds
agree within SAME_SPEED (`speed_mismatch`), and say which were left out and why; they are joined by
speed-free figures where there is one (tokens; E2EL in the cell's own one-sequence steps). Techniques
that change decode speed themselves (weight and KV quantization, speculation) cannot be told apart
from the machine by a calibration on their own engine: there the matched, interleaved repeats carry
the machine's variation into the t interval.
Accuracy is the lenient accuracy (an answer stated only in the thinking counts: a prompted model that
never closes its think phase still answered); the domain claim shows the strict one beside it.
Pilot claims use the pilot cells at the largest token budget recorded; the running-time and
straggler claims compare cells of one run, batch size and budget only (pooling batch sizes would
mix their latencies), and hold only if they hold at every batch size.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rllm_study.analysis.metrics import (
    MAX_TIMELINE_GAP_S,
    correct_lenient,
    distribution,
    hit_budget_of,
    output_tok_s_of,
    percentile_key,
    tail_share_of,
)
from rllm_study.analysis.stats import (
    MIN_CELLS,
    Condition,
    Interval,
    bootstrap,
    cluster_bootstrap,
    mover,
    newcombe,
    pair_interval,
    paired_newcombe,
    proportion,
    ratio_interval,
    settle,
)
from rllm_study.models import FLOAT_TYPES
from rllm_study.report import columns as C
from rllm_study.report.cells import (
    REASONING,
    TECHNIQUE_FIELDS,
    TIER_ORDER,
    CellData,
    TechniqueGroup,
    load_groups,
    pilot_cells,
    pilot_pairs,
    pooled_accuracy,
    technique_groups,
    techniques_between,
    tier,
)
from rllm_study.report.document import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED, Claim

PEAK_FACTOR = 2.0  # reasoning peak KV use must be at least this multiple of direct's
MATH_GAIN = 0.05  # reasoning must beat direct on math by at least this (5 points)
ACC_TOLERANCE = 0.03  # "within about 3% accuracy": at most 3 points lower
COLLAPSE = 0.5  # "accuracy nearly collapses": at most half the reference's accuracy
LARGE_MODEL = 10e9  # the paper's sizes split between 7B (small) and 14B and up (large)
SAME_LOAD = 0.10  # bursty cells compare only when their realised arrival rates differ by at most 10%
SAME_SPEED = 0.20  # seconds of two cells compare only when their measured machine speeds differ by at most 20%
PILOT_HINT = "run `rllm-study run --preset pilot` (reasoning and direct cells)"
STATUS = {True: REPRODUCED, False: NOT_REPRODUCED, None: INCONCLUSIVE}
CORRECT = "correct_lenient"  # accuracy claims count an answer stated only in the thinking (`metrics.correct_lenient`)

Rows = list[dict]


# ---- deciding by intervals -----------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A condition of a rule (`stats.Condition`) and how its interval prints (C.fmt_interval kind)."""

    cond: Condition
    kind: str = "num"

    def text(self) -> str:
        t = self.cond
        side = ">" if t.above else "<"
        thr = (
            f"{t.threshold:.2f}x"
            if self.kind == "ratio"
            else f"{100 * t.threshold:+.1f} pt"
            if self.kind == "points"
            else C.fmt(t.threshold, self.kind)
        )
        if t.too_few:
            verdict = f"too few to settle ({t.interval.n} {t.interval.unit}; needs {t.interval.min_n})"
        else:
            verdict = {
                True: "settled: holds",
                False: "settled: fails",
                None: "spans the threshold" if t.interval.known else "no interval",
            }[t.outcome]
        return f"{C.fmt_interval(t.interval, self.kind)}; needs {side} {thr}: {verdict}"


def _more(checks: Sequence[Check]) -> str:
    """What would settle the open conditions: the largest `Condition.needed` over them (n x (h / d)^2, at
    least `min_n` independent cells or pairs where that is what is missing), and why the others have no interval."""
    open_ = [c.cond for c in checks if c.cond.outcome is None]
    sized = [t for t in open_ if t.needed is not None]
    parts = []
    if sized:
        t = max(sized, key=lambda t: t.needed / max(t.interval.n, 1))
        iv = t.interval
        short = (
            f" (it rests on {iv.n}, fewer than the {iv.min_n} independent ones a cell-level condition needs)"
            if t.too_few
            else f" (now {iv.n})"
        )
        parts.append(f'about {t.needed} {iv.unit}{short} would settle "{t.what}" if its estimate held')
    parts += sorted(
        {f'"{t.what}": {t.interval.why}' for t in open_ if (not t.interval.known or t.too_few) and t.interval.why}
    )
    return "; ".join(parts) or "the estimate sits on the threshold; no sample size settles it"


def _decide(claim: Claim, checks: Sequence[Check], detail: str) -> Claim:
    """Set the claim's status from its conditions and list each one's interval among its numbers."""
    outcome = settle([c.cond for c in checks])
    claim.status = STATUS[outcome]
    claim.numbers += [(c.cond.what, c.text()) for c in checks]
    if outcome is None:
        detail += f"; inconclusive: {_more(checks)}"
    elif outcome:
        detail += "; every interval clears its threshold"
    else:
        against = [c for c in checks if c.cond.outcome is False]
        detail += "; settled against by " + "; ".join(
            f'"{c.cond.what}" {C.fmt_interval(c.cond.interval, c.kind)}' for c in against
        )
    claim.reason = detail
    return claim


@dataclass(frozen=True)
class Finding:
    """A finding of the paper declared as data over one scaffold: its key and title, the paper's words,
    the rule that decides it, what cells it needs (and the run that makes them), and `judge`, which
    computes the rule's conditions on the cells and decides them (`_decide`) into the claim it is
    given, or returns None when the cells it needs are absent. Calling a Finding on cells checks it:
    a claim starts not tested, and stays so with `needs` as its reason when the judge finds nothing
    to judge."""

    key: str
    title: str
    paper: str
    rule: str
    needs: str
    judge: Callable[[Claim, list[CellData]], Claim | None]

    def __call__(self, cells: list[CellData]) -> Claim:
        claim = Claim(self.key, self.title, self.paper, self.rule, NOT_TESTED, "")
        judged = self.judge(claim, cells)
        if judged is None:
            claim.reason = self.needs
            return claim
        return judged


def _completed(rows: Rows) -> Rows:
    return [r for r in rows if r["completed"]]


def _pctl(key: str, p: float) -> Callable[[Rows], float | None]:
    """The p-th percentile of a per-request value over a cell's completed requests (`distribution`)."""
    return lambda rows: distribution((r[key] for r in _completed(rows)), (p,))[percentile_key(p)]


def _mean_key(key: str) -> Callable[[Rows], float | None]:
    """The mean of a per-request value over a cell's completed requests (`distribution`)."""
    return lambda rows: distribution((r[key] for r in _completed(rows)), ())["mean"]


def scope(cells: Sequence[CellData]) -> str:
    """What cells hold, for an interval's `scope`: "540 requests in 24 batches" (completed requests, and
    the straggler groups they fall in: synchronous batches or windows)."""
    done = [(c.name, r) for c in cells for r in _completed(c.rows)]
    groups = {(name, r["group"]) for name, r in done if r.get("group") is not None}
    batches = {(name, r["batch"]) for name, r in done if r.get("batch") is not None}
    kind = "batches" if batches else "windows"
    return f"{len(done)} requests in {len(groups)} {kind}" if groups else f"{len(done)} requests"


def _pair_scope(pairs: Sequence[tuple[CellData, CellData]]) -> str:
    return scope([c for pair in pairs for c in pair])


def _ratio_of(stat: Callable[[Rows], float | None], pairs: Sequence[tuple[CellData, CellData]]) -> Interval:
    """Geometric mean over matched cell pairs (reference, other) of stat(other) / stat(reference), with
    the t interval over the pairs (`stats.pair_interval`): the cells are the unit."""

    def one(ref: CellData, new: CellData) -> float | None:
        a, b = stat(ref.rows), stat(new.rows)
        return b / a if a and b and a > 0 and b > 0 else None

    return pair_interval([one(r, n) for r, n in pairs], log=True, scope=_pair_scope(pairs))


def _pooled_ratio(stat: Callable[[Rows], float | None]) -> Callable[[list], float | None]:
    """For `cluster_bootstrap` over two conditions of single-cell clusters: stat over the second
    condition's requests pooled / stat over the first's."""

    def over(conds: list) -> float | None:
        a, b = (stat([r for cluster in cond for cell in cluster for r in cell]) for cond in conds)
        return b / a if a and b is not None and a > 0 else None

    return over


def _pooled(stat: Callable[[Rows], float | None], first: int) -> Callable[[list[Rows]], float | None]:
    """stat over the first `first` samples pooled, divided by stat over the rest pooled."""

    def over(samples: list[Rows]) -> float | None:
        a, b = stat([r for s in samples[:first] for r in s]), stat([r for s in samples[first:] for r in s])
        return b / a if a and b is not None and a > 0 else None

    return over


def speed(c: CellData) -> float | None:
    """The cell's measured machine speed in tokens/s (`machine_speed`), None when not measured."""
    return (c.metrics["throughput"].get("machine_speed") or {}).get("tok_s")


def speed_mismatch(cells: Sequence[CellData]) -> str | None:
    """Why these cells' seconds cannot be compared, or None when they can: every cell's speed measured,
    its own calibrations agreeing (max / min <= 1 + SAME_SPEED: the machine held its speed through the
    cell) and the cells' speeds agreeing the same way."""
    speeds = [speed(c) for c in cells]
    if None in speeds:
        return f"machine speed not measured in {cells[speeds.index(None)].name}"
    for c in cells:
        cal = c.metrics["throughput"]["machine_speed"]["calibration"]
        if len(cal) > 1 and max(cal) > (1 + SAME_SPEED) * min(cal):
            return f"machine speed changed during {c.name}: {C.fmt(min(cal))} to {C.fmt(max(cal))} tok/s"
    if max(speeds) > (1 + SAME_SPEED) * min(speeds):
        return f"machine speed differed: {C.fmt(min(speeds))} vs {C.fmt(max(speeds))} tok/s"
    return None


def _same_speed_pairs(pairs: Sequence[tuple[CellData, CellData]]) -> tuple[list[tuple[CellData, CellData]], str]:
    """The pairs whose two cells ran at one measured speed (`speed_mismatch`), and a note naming the others."""
    kept, left = [], []
    for pair in pairs:
        why = speed_mismatch(pair)
        (left.append(f"{pair[1].name}: {why}") if why else kept.append(pair))
    return kept, (
        f"{len(left)} of {len(pairs)} pairs left out ({'; '.join(left)}; tolerance {100 * SAME_SPEED:g}%)"
        if left
        else ""
    )


def _same_speed_cells(cells: Sequence[CellData]) -> tuple[list[CellData], str]:
    """The largest set of these cells whose speeds all agree (`speed_mismatch` of the set is None: the
    fastest at most 1 + SAME_SPEED times the slowest), and a note naming the others and why."""
    steady = sorted((c for c in cells if speed_mismatch([c]) is None), key=speed)
    best: list[CellData] = []
    for i, first in enumerate(steady):
        window = [c for c in steady[i:] if speed(c) <= (1 + SAME_SPEED) * speed(first)]
        best = window if len(window) > len(best) else best
    left = [f"{c.name}: {speed_mismatch([c]) or f'{C.fmt(speed(c))} tok/s'}" for c in cells if c not in best]
    span = f"{C.fmt(speed(best[0]))}-{C.fmt(speed(best[-1]))} tok/s" if best else "none"
    return best, (
        f"machine speed: {len(left)} of {len(cells)} cells left out, their speed differed from the others' "
        f"({span}): {'; '.join(left)} (tolerance {100 * SAME_SPEED:g}%)"
        if left
        else ""
    )


def _noted(iv: Interval, note: str) -> Interval:
    """The interval with `note` (why cells were left out) added to its `why`."""
    return replace(iv, why="; ".join(w for w in (iv.why, note) if w)) if note else iv


def _in_steps(c: CellData) -> Rows:
    """The cell's completed requests with `e2el_steps` = e2el_s x its machine speed (E2EL in one-sequence
    decode steps of this cell; None without a measured speed)."""
    sp = speed(c)
    return [
        {**r, "e2el_steps": None if sp is None or r["e2el_s"] is None else r["e2el_s"] * sp} for r in _completed(c.rows)
    ]


def _timeline_gap(c: CellData) -> bool:
    """Whether the cell's KV figures come from a sampled timeline with a gap over MAX_TIMELINE_GAP_S
    (KV from events has none)."""
    kv = c.metrics["memory"]["kv_frac"]
    return kv.get("source") != "events" and (kv.get("max_gap_s") or 0) > MAX_TIMELINE_GAP_S


def _share(c: CellData) -> float | None:
    """A cell's straggler share (`straggler_share`)."""
    return c.metrics["stragglers"]["share"]


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _acc_diff(new: dict, ref: dict) -> Interval:
    """new accuracy - reference accuracy with its Newcombe interval."""
    return newcombe(new[CORRECT], new["total"], ref[CORRECT], ref["total"])


def _paired_acc(
    pairs: Sequence[tuple[CellData, CellData]], keep: Callable[[dict], bool] = lambda r: True
) -> Interval | None:
    """Lenient accuracy of the second cell of each pair - the first's, over the items the two answered (matched by
    item id within each pair), with `stats.paired_newcombe`; None when an item of one side has no twin in the other."""
    counts = [0, 0, 0, 0]  # both right, only the second, only the first, neither
    for first, second in pairs:
        sides = [
            {r.get("item_id") or r["id"]: correct_lenient(r) for r in c.cell.requests if keep(r)}
            for c in (first, second)
        ]
        if set(sides[0]) != set(sides[1]):
            return None
        for item, ok_first in sides[0].items():
            ok_second = sides[1][item]
            counts[0 if ok_first and ok_second else 1 if ok_second else 2 if ok_first else 3] += 1
    return paired_newcombe(*counts) if sum(counts) else None


def _largest_budget_pairs(cells: list[CellData]) -> tuple[list[tuple[CellData, CellData]], int | None]:
    pairs = pilot_pairs(cells)
    if not pairs:
        return [], None
    top = max(r.budget for r, _ in pairs)
    return [p for p in pairs if p[0].budget == top], top


def _batch(c: CellData) -> int:
    return c.workload.get("batch_size") or 0


def _by_batch(items: list, cell_of: Callable = lambda x: x) -> dict[tuple, list]:
    """Items grouped by their cell's run folder, model and batch size (the latencies a claim may compare)."""
    out: dict[tuple, list] = {}
    for it in items:
        c = cell_of(it)
        out.setdefault((c.run, str(c.spec.get("model")), _batch(c)), []).append(it)
    return out


def _sizes(groups: dict[tuple, list]) -> str:
    """The batch sizes of `_by_batch` groups, each compared on its own."""
    sizes = sorted({k[2] for k in groups})
    return " and ".join(map(str, sizes)) + (" (each compared on its own)" if len(sizes) > 1 else "")


def _where(key: tuple, groups: dict[tuple, list]) -> str:
    """A `_by_batch` group's label: its batch size, with the model and run folder name where other groups share it."""
    run, model, batch = key
    label = f"batch {batch}"
    if len({k[1] for k in groups}) > 1:
        label += f", {model}"
    if sum(k[1:] == (model, batch) for k in groups) > 1:
        label += f", run {Path(run).name}"
    return label


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _mean_of(cells: list[CellData], column: C.Column) -> float | None:
    return _mean(C.value(c.metrics, column) for c in cells)


# ---- pilot findings ---------------------------------------------------------------------------


def _memory(claim: Claim, cells: list[CellData]) -> Claim | None:
    pairs, top = _largest_budget_pairs(cells)
    pairs = [
        (r, d)
        for r, d in pairs
        if C.value(r.metrics, C.KV_PEAK)
        and C.value(d.metrics, C.KV_PEAK)
        and C.value(r.metrics, C.KV_CV) is not None
        and C.value(d.metrics, C.KV_CV) is not None
    ]
    gapped = [c.name for pair in pairs for c in pair if _timeline_gap(c)]
    pairs = [(r, d) for r, d in pairs if not (_timeline_gap(r) or _timeline_gap(d))]
    if not pairs and not gapped:
        return None
    if not pairs:
        claim.reason = (
            f"every pair has a cell whose sampled KV timeline has gaps over {MAX_TIMELINE_GAP_S:g} s "
            f"({', '.join(gapped)}): no claim rests on a timeline with holes"
        )
        return claim
    reasoning, direct = [r for r, _ in pairs], [d for _, d in pairs]
    where = _pair_scope(pairs)
    peak = pair_interval(
        [C.value(r.metrics, C.KV_PEAK) / C.value(d.metrics, C.KV_PEAK) for r, d in pairs], log=True, scope=where
    )
    cv = pair_interval([C.value(r.metrics, C.KV_CV) - C.value(d.metrics, C.KV_CV) for r, d in pairs], scope=where)
    claim.numbers = [
        (
            "peak KV use, reasoning / direct (mean over cells)",
            f"{C.fmt(_mean_of(reasoning, C.KV_PEAK), 'pct')} / {C.fmt(_mean_of(direct, C.KV_PEAK), 'pct')}",
        ),
        (
            "KV-use CV, reasoning / direct (mean over cells)",
            f"{C.fmt(_mean_of(reasoning, C.KV_CV))} / {C.fmt(_mean_of(direct, C.KV_CV))}",
        ),
    ]
    sources = sorted({c.metrics["memory"]["kv_frac"].get("source") or "sampler" for pair in pairs for c in pair})
    detail = f"reasoning peak KV is {C.fmt_ratio(peak.estimate)} direct's ({len(pairs)} pairs, budget {top}; KV from {' and '.join(sources)})"
    if gapped:
        detail += f"; left out, their sampled KV timeline has gaps over {MAX_TIMELINE_GAP_S:g} s: {', '.join(gapped)}"
    return _decide(
        claim,
        [
            Check(Condition("peak KV ratio reasoning / direct", peak, PEAK_FACTOR, log=True), "ratio"),
            Check(Condition("KV-use CV, reasoning - direct", cv, 0.0)),
        ],
        detail,
    )


memory = Finding(
    "memory",
    "Memory use and fluctuation",
    paper=(
        "A reasoning model's KV-cache use is high and swings within a batch (about 3% to 70% for a 7B "
        "model on MATH-500) while the ordinary model stays under about 3%."
    ),
    rule=(
        f"Over matched pilot pairs at the largest budget: reproduced if the reasoning cells' peak KV-cache use is "
        f"at least {PEAK_FACTOR:g}x the direct cells' (geometric mean of the pairs' ratios) and their KV-use "
        f"coefficient of variation (std / mean over the timeline) is higher (mean of the pairs' differences above "
        f"0); t intervals over the pairs, as KV use is a per-cell timeline figure; at least {MIN_CELLS} pairs. KV use "
        f"comes from the requests' events (exact at every change) where the engine counts cells, else from the "
        f"sampled timeline, and a cell whose sampled timeline has a gap over {MAX_TIMELINE_GAP_S:g} s is left out; "
        f"peak, mean and CV are weighted by time."
    ),
    needs=f"needs reasoning and direct pilot cells with a KV timeline: {PILOT_HINT}",
    judge=_memory,
)


def _stragglers(claim: Claim, cells: list[CellData]) -> Claim | None:
    pairs, top = _largest_budget_pairs(cells)
    if not pairs:
        return None
    groups = _by_batch(pairs, lambda p: p[0])
    checks = []
    for key, ps in groups.items():
        where = _where(key, groups)
        count = {
            mode: (sum(c.metrics["stragglers"]["count"] for c in side), sum(len(_completed(c.rows)) for c in side))
            for mode, side in (("r", [r for r, _ in ps]), ("d", [d for _, d in ps]))
        }
        share = pair_interval([_minus(_share(r), _share(d)) for r, d in ps], scope=_pair_scope(ps))
        tail = pair_interval(
            [_minus(tail_share_of(r.rows), tail_share_of(d.rows)) for r, d in ps], scope=_pair_scope(ps)
        )
        checks += [
            Check(Condition(f"{where}: straggler share, reasoning - direct", share, 0.0), "points"),
            Check(Condition(f"{where}: tail share of batch time, reasoning - direct", tail, 0.0), "points"),
        ]
        think = _mean(r.metrics["stragglers"]["think_tokens_mean"] for r, _ in ps)
        rest = _mean(r.metrics["stragglers"]["non_straggler_think_tokens_mean"] for r, _ in ps)
        claim.numbers.append(
            (
                f"{where}: stragglers reasoning / direct; think tokens of stragglers / others (reasoning)",
                f"{count['r'][0]}/{count['r'][1]} / {count['d'][0]}/{count['d'][1]}; {C.fmt(think)} / {C.fmt(rest)}",
            )
        )
    return _decide(claim, checks, f"{len(pairs)} pairs at budget {top}, batch size {_sizes(groups)}")


stragglers = Finding(
    "stragglers",
    "Stragglers",
    paper=(
        "A few hard problems stretch a batch from ten-odd seconds to twenty-plus; in the tail only a few "
        "requests run. The ordinary model's run times are nearly uniform."
    ),
    rule=(
        "Over matched pilot pairs at the largest budget, per run and batch size: reproduced if, at every batch "
        "size, the reasoning cells have a larger straggler share (requests whose E2EL exceeds k x their batch's "
        "median) and spend a larger share of batch time in the tail (fewer than half the batch still running) "
        "than the direct cells: each the mean over the pairs of the cells' difference, reasoning - direct, with "
        f"its t interval over the pairs above 0 (stragglers cluster by batch and cell); at least {MIN_CELLS} pairs."
    ),
    needs=f"needs reasoning and direct pilot cells: {PILOT_HINT}",
    judge=_stragglers,
)


def _adaptive_time(claim: Claim, cells: list[CellData]) -> Claim | None:
    reasoning = [c for c in pilot_cells(cells) if c.mode == REASONING and tier(c.dataset) in TIER_ORDER]
    if reasoning:
        top = max(c.budget for c in reasoning)
        reasoning = [c for c in reasoning if c.budget == top]
    groups = {k: cs for k, cs in _by_batch(reasoning).items() if len({tier(c.dataset) for c in cs}) >= 2}
    if not groups:
        return None
    checks, capped_max = [], 0.0
    for key, cs in groups.items():
        where = _where(key, groups)
        by_tier = {t: [c for c in cs if tier(c.dataset) == t] for t in TIER_ORDER}
        tiers = [t for t in TIER_ORDER if by_tier[t]]
        for easy, hard in zip(tiers, tiers[1:]):
            samples = [c.rows for c in by_tier[easy]] + [c.rows for c in by_tier[hard]]
            think = bootstrap(samples, _pooled(_mean_key("think_tokens"), len(by_tier[easy])))
            both = by_tier[easy] + by_tier[hard]
            steps = cluster_bootstrap(
                [[[_in_steps(c)] for c in by_tier[t]] for t in (easy, hard)],
                _pooled_ratio(_mean_key("e2el_steps")),
                unit="cells per tier",
                scope=scope(both),
            )
            same, note = _same_speed_cells(both)
            e2el = cluster_bootstrap(
                [[[c.rows] for c in by_tier[t] if c in same] for t in (easy, hard)],
                _pooled_ratio(_mean_key("e2el_s")),
                unit="cells per tier",
                scope=scope(same),
            )
            checks += [
                Check(Condition(f"{where}: mean think tokens {hard} / {easy}", think, 1.0, log=True), "ratio"),
                Check(
                    Condition(f"{where}: mean E2EL in one-sequence steps {hard} / {easy}", steps, 1.0, log=True),
                    "ratio",
                ),
                Check(Condition(f"{where}: mean E2EL {hard} / {easy}", _noted(e2el, note), 1.0, log=True), "ratio"),
            ]
        for t in tiers:
            rows = [r for c in by_tier[t] for r in _completed(c.rows)]
            capped = (hit_budget_of(rows) or {}).get("share")
            capped_max = max(capped_max, capped or 0.0)
            free = [r for r in rows if not r["capped"]]
            claim.numbers.append(
                (
                    f"{where}, {t}: think tokens mean / E2EL mean / hit budget (n={len(rows)})",
                    f"{C.fmt(_mean_key('think_tokens')(rows))} tok / {C.fmt(_mean_key('e2el_s')(rows))} s / "
                    f"{C.fmt(capped, 'pct')}",
                )
            )
            claim.numbers.append(
                (
                    f"{where}, {t}: without capped requests, think tokens mean / E2EL mean (n={len(free)}; not deciding)",
                    f"{C.fmt(_mean_key('think_tokens')(free))} tok / {C.fmt(_mean_key('e2el_s')(free))} s",
                )
            )
    detail = f"budget {top}, batch size {_sizes(groups)}"
    if capped_max >= 0.5:
        detail += f"; {C.fmt(capped_max, 'pct')} of a tier's requests hit a budget (output or think cap), which flattens the ladder"
    return _decide(claim, checks, detail)


adaptive_time = Finding(
    "adaptive",
    "Adaptive running time",
    paper="A reasoning model's running time and token count grow with difficulty (GSM8K < MATH-500 < AIME).",
    rule=(
        "Over the reasoning pilot cells at the largest budget, per run and batch size, requests pooled by the math "
        "data sets' difficulty tier (GSM8K easy < MATH-500 medium < AIME hard): reproduced if, at every batch size, "
        "both the mean think tokens and the mean E2EL rise from each tier present to the next harder one (ratio "
        "harder / easier above 1; at least two tiers). Think tokens, a property of the items, are bootstrapped over "
        "requests; E2EL, which the machine shapes, by a cluster bootstrap over the tiers' cells and their requests, "
        f"with at least {MIN_CELLS} cells (repeats) a tier, twice: in the cells' own one-sequence decode steps "
        f"(E2EL x the cell's machine speed: speed-free) and in seconds, the latter over the cells whose measured "
        f"speeds agree within {100 * SAME_SPEED:g}% only."
    ),
    needs=(
        "needs reasoning pilot cells of one batch size on math data sets of at least two difficulty "
        "tiers (e.g. gsm8k and math500 or aime24)"
    ),
    judge=_adaptive_time,
)


def _domain_preference(claim: Claim, cells: list[CellData]) -> Claim | None:
    pairs, top = _largest_budget_pairs(cells)
    acc_r = pooled_accuracy([r for r, _ in pairs], "by_domain") if pairs else {}
    acc_d = pooled_accuracy([d for _, d in pairs], "by_domain") if pairs else {}
    domains = [d for d in acc_r if d in acc_d and acc_r[d]["accuracy"] is not None and acc_d[d]["accuracy"] is not None]
    others = [d for d in domains if d != "math"]
    if "math" not in domains or not others:
        return None
    gain = {
        d: _paired_acc([(dr, r) for r, dr in pairs], lambda x, d=d: (x.get("domain") or "unknown") == d)
        or _acc_diff(acc_r[d], acc_d[d])
        for d in domains
    }
    checks = [Check(Condition("math: reasoning - direct", gain["math"], MATH_GAIN), "points")]
    checks += [
        Check(Condition(f"half the math gain - {d} gain", mover(gain["math"], gain[d], 0.5), 0.0), "points")
        for d in others
    ]
    claim.numbers = [
        (f"{d}: accuracy lenient, reasoning / direct", f"{C.acc_text(acc_r[d], True)} / {C.acc_text(acc_d[d], True)}")
        for d in domains
    ]
    claim.numbers += [
        (f"{d}: accuracy strict (not deciding), reasoning / direct", f"{C.acc_text(acc_r[d])} / {C.acc_text(acc_d[d])}")
        for d in domains
    ]
    return _decide(
        claim,
        checks,
        "; ".join(f"{d}: reasoning {C.points(gain[d].estimate, 0.0)} vs direct" for d in domains) + f" (budget {top})",
    )


domain_preference = Finding(
    "domain",
    "Domain preference",
    paper="Reasoning is far better on math and only on par on knowledge-heavy GPQA.",
    rule=(
        f"Pooled accuracy over matched pilot pairs at the largest budget, per domain: reproduced if reasoning beats "
        f"direct on math by at least {100 * MATH_GAIN:g} points (Newcombe interval of the difference, paired by item where the items match) and its gain "
        f"on every other domain is under half the math gain (MOVER interval of half the math gain minus that gain, "
        f"above 0)."
    ),
    needs=f"needs reasoning and direct pilot cells on math and on another domain (e.g. gpqa-diamond): {PILOT_HINT}",
    judge=_domain_preference,
)


# ---- technique takeaways ------------------------------------------------------------------------


@dataclass
class Versus:
    """One variant against its technique's reference cell, over every group where both ran."""

    variant: str
    pairs: list[tuple[CellData, CellData]]  # (reference, variant)

    @property
    def accuracy(self) -> tuple[dict, dict]:
        return pooled_accuracy([r for r, _ in self.pairs]), pooled_accuracy([v for _, v in self.pairs])

    @property
    def accuracy_diff(self) -> Interval:
        """Variant accuracy - reference accuracy, paired by item (`_paired_acc`) where the items match, else pooled
        with the Newcombe interval."""
        ref, new = self.accuracy
        return _paired_acc(self.pairs) or _acc_diff(new, ref)

    def ratio(self, stat: Callable[[Rows], float | None]) -> Interval:
        """Geometric mean over the matched cell pairs of stat(variant) / stat(reference), t interval over the pairs."""
        return _ratio_of(stat, self.pairs)

    def ratio_same_speed(self, stat: Callable[[Rows], float | None]) -> Interval:
        """`ratio` over the pairs whose cells ran at one measured machine speed (`_same_speed_pairs`), for a
        technique that leaves decode speed alone; the others are named in the interval's `why`."""
        kept, note = _same_speed_pairs(self.pairs)
        return _noted(_ratio_of(stat, kept), note)

    @property
    def large(self) -> bool:
        return all((v.n_params or 0) >= LARGE_MODEL for _, v in self.pairs)


def versus(
    cells: list[CellData],
    technique: str,
    reference: Callable[[TechniqueGroup], CellData | None],
    keep: Callable[[TechniqueGroup], bool] = lambda g: True,
) -> list[Versus]:
    """Each variant that differs from its group's reference in `technique` alone, against that reference."""
    found: dict[str, list] = {}
    for group in technique_groups(cells):
        ref = reference(group) if keep(group) else None
        if ref is None:
            continue
        for name, cell in group.variants.items():
            if cell is not ref and techniques_between(ref, cell) == {technique}:
                found.setdefault(name, []).append((ref, cell))
    return [Versus(name, pairs) for name, pairs in found.items()]


def _ref_where(pred: Callable[[CellData], bool]) -> Callable[[TechniqueGroup], CellData | None]:
    return lambda g: next((c for c in g.variants.values() if pred(c)), None)


def _bits(c: CellData) -> float:
    return (c.model.get("gguf") or {}).get("bits_per_weight") or 0.0


def _no_answers(vs: list[Versus]) -> bool:
    return all(v.accuracy[0][CORRECT] == 0 for v in vs)


E2EL_P50, TOK_S = _pctl("e2el_s", 50), output_tok_s_of


def derived_origin(c: CellData) -> str | None:
    """The quantized file a derived model was made from (the `derived_from` manifest fact, e.g.
    'qwen2.5-coder-0.5b (Q4_K_M, ...)' -> 'Q4_K_M'), or None when it is not derived or came from
    full-precision weights (F32/F16/BF16), whose derived quantizations can differ in accuracy."""
    found = re.search(r"\(([A-Za-z0-9_]+),", c.model.get("derived_from") or "")
    return found.group(1) if found and found.group(1).upper() not in FLOAT_TYPES else None


def _weight_quantization(claim: Claim, cells: list[CellData]) -> Claim | None:
    vs = versus(cells, "weight quantization", lambda g: max(g.variants.values(), key=_bits))
    vs = [v for v in vs if _bits(v.pairs[0][1]) < _bits(v.pairs[0][0])]
    if not vs:
        return None
    origins = {derived_origin(c) for v in vs for pair in v.pairs for c in pair} - {None}
    reference = "the highest precision"
    if origins:
        for v in vs:
            ref, new = v.pairs[0]
            claim.numbers.append(
                (
                    f"{v.variant} ({_bits(new):.2f} bpw) vs {_bits(ref):.2f} bpw: out tok/s ratio (engine cost only)",
                    C.fmt_interval(v.ratio(TOK_S), "ratio"),
                )
            )
            claim.numbers.append(
                (f"{v.variant}: E2EL p50 ratio (engine cost only)", C.fmt_interval(v.ratio(E2EL_P50), "ratio"))
            )
        sources = {o.upper() for o in origins}
        vs = [
            v
            for v in versus(
                cells,
                "weight quantization",
                _ref_where(lambda c: derived_origin(c) is None and str(c.model.get("quant") or "").upper() in sources),
            )
            if _bits(v.pairs[0][1]) < _bits(v.pairs[0][0])
        ]
        if not vs:
            claim.reason = (
                f"the ladder is derived from one {', '.join(sorted(origins))} file and has no variant of lower "
                f"precision than it: the others' accuracy cannot differ for a reason the study can attribute to "
                f"precision; engine cost shown only"
            )
            return claim
        reference = f"their source file ({', '.join(sorted(origins))}); higher-precision variants: engine cost only"
    checks = []
    for v in vs:
        ref, new = v.pairs[0]
        checks += [
            Check(
                Condition(
                    f"{v.variant} ({_bits(new):.2f} bpw) vs {_bits(ref):.2f} bpw: accuracy difference",
                    v.accuracy_diff,
                    -ACC_TOLERANCE,
                ),
                "points",
            ),
            Check(Condition(f"{v.variant}: out tok/s ratio", v.ratio(TOK_S), 1.0, log=True), "ratio"),
        ]
    detail = f"{len(vs)} lower-bit variant(s) against {reference}"
    if _no_answers(vs):
        detail += "; the reference answered nothing correctly, so only speed was really tested"
    return _decide(claim, checks, detail)


weight_quantization = Finding(
    "quantization",
    "Weight quantization",
    paper="4-bit (GPTQ-Int4) and FP8 weights stay within about 3% accuracy with equal or better serving.",
    rule=(
        f"Each variant with fewer bits per weight than its group's highest-precision variant (same model, data set, "
        f"budget, workload): reproduced if every one keeps pooled accuracy within {100 * ACC_TOLERANCE:g} points "
        f"of it (Newcombe interval of the difference, paired by item where the items match, above -{100 * ACC_TOLERANCE:g} points) and reaches at least its "
        f"output tokens/s (geometric mean over matched cell pairs, t interval over the pairs, at least {MIN_CELLS} "
        f"pairs, above 1). A ladder derived from one quantized file: a variant of lower precision than that source is "
        f"judged the same way against the source's own cells (its loss is attributable to precision); variants of "
        f"higher precision than the source hold no more information than it, so they show engine cost only."
    ),
    needs="needs cells of one model at several weight quantizations: run `rllm-study run --preset quantization`",
    judge=_weight_quantization,
)


def _kv_plain(c: CellData) -> bool:
    return (
        c.field("engine.type_k") in ("f16", "f32", "bf16")
        and c.field("engine.type_v") in ("f16", "f32", "bf16")
        and not c.field("engine.kv_bits")
    )


def _kv_quantization(claim: Claim, cells: list[CellData]) -> Claim | None:
    vs = versus(cells, "KV-cache quantization", _ref_where(_kv_plain), keep=lambda g: not _kv_budget(g))
    if not vs:
        return None
    checks = []
    for v in vs:
        ref_acc, acc = v.accuracy
        size = "large" if v.large else "small"
        claim.numbers.append(
            (
                f"{v.variant} ({size} model): accuracy lenient vs f16 cache",
                f"{C.acc_text(acc, True)} vs {C.acc_text(ref_acc, True)}",
            )
        )
        if ref_acc["accuracy"] is None or acc["accuracy"] is None or (not v.large and ref_acc[CORRECT] == 0):
            continue
        if v.large:
            checks += [
                Check(Condition(f"{v.variant}: out tok/s ratio", v.ratio(TOK_S), 1.0, log=True), "ratio"),
                Check(Condition(f"{v.variant}: accuracy difference", v.accuracy_diff, -ACC_TOLERANCE), "points"),
            ]
        else:
            collapse = mover(
                proportion(ref_acc[CORRECT], ref_acc["total"]), proportion(acc[CORRECT], acc["total"]), COLLAPSE
            )
            checks.append(
                Check(
                    Condition(f"{v.variant}: {COLLAPSE:g} x f16 accuracy - variant accuracy", collapse, 0.0), "points"
                )
            )
    if not checks:
        claim.reason = "the f16-cache reference answered nothing correctly, so an accuracy collapse cannot show"
        return claim
    return _decide(claim, checks, f"{len(vs)} quantized-KV variant(s) against the f16 cache")


kv_quantization = Finding(
    "kv-cache",
    "KV-cache quantization",
    paper=(
        "An FP8 KV cache is faster for 14B and 32B models at similar accuracy, but accuracy nearly collapses "
        "for the 7B model."
    ),
    rule=(
        f"Each quantized-KV variant against its group's f16 KV variant. Models under {LARGE_MODEL / 1e9:g}B "
        f"parameters (the paper's 7B case): reproduced if accuracy collapses (pooled accuracy at most "
        f"{COLLAPSE:g}x the f16 cache's: MOVER interval of {COLLAPSE:g} x f16 accuracy - variant accuracy above 0). "
        f"Larger models: reproduced if output tokens/s rises (bootstrap ratio above 1) at accuracy within "
        f"{100 * ACC_TOLERANCE:g} points (Newcombe, paired by item where the items match)."
    ),
    needs="needs cells with f16 and quantized KV caches: run `rllm-study run --preset kv-cache`",
    judge=_kv_quantization,
)


def _prefix_caching(claim: Claim, cells: list[CellData]) -> Claim | None:
    single = versus(
        cells,
        "prefix caching",
        _ref_where(lambda c: not c.field("engine.prefix_cache")),
        keep=lambda g: not g.baseline.workload.get("shared_prefix") and not _multi_turn(g),
    )
    shared = versus(
        cells,
        "prefix caching",
        _ref_where(lambda c: not c.field("engine.prefix_cache")),
        keep=lambda g: bool(g.baseline.workload.get("shared_prefix")),
    )
    for v in shared:
        claim.numbers.append(
            (
                f"{v.variant}, shared-prefix workload (not deciding): E2EL p50 ratio / hit rate",
                f"{C.fmt_interval(v.ratio(E2EL_P50), 'ratio')} / "
                f"{C.fmt(_mean_of([c for _, c in v.pairs], C.PREFIX_HITS), 'pct')}",
            )
        )
    if not single:
        return None  # the shared-prefix numbers stay listed
    checks = [
        Check(
            Condition(
                f"{v.variant}, single-turn ({'large' if v.large else 'small'} model): E2EL p50 ratio on / off",
                v.ratio_same_speed(E2EL_P50),
                1.0,
                above=not v.large,
                log=True,
            ),
            "ratio",
        )
        for v in single
    ]
    return _decide(claim, checks, f"{len(single)} single-turn comparison(s)")


prefix_caching = Finding(
    "prefix-cache",
    "Prefix caching",
    paper=(
        "Prefix caching helps 14B and larger models; for the 7B model it adds latency, because single-turn "
        "requests share no prefix and the bookkeeping is pure cost."
    ),
    rule=(
        f"Prefix caching on against off, on single-turn workloads (no shared prefix), E2EL p50 ratio on / off "
        f"(geometric mean over matched cell pairs, t interval over the pairs, at least {MIN_CELLS} pairs; only pairs "
        f"whose measured machine speeds agree within {100 * SAME_SPEED:g}%). Models under {LARGE_MODEL / 1e9:g}B: reproduced "
        f"if the ratio is above 1 (caching adds latency). Larger models: reproduced if it is below 1."
    ),
    needs="needs single-turn cells with prefix caching on and off: run `rllm-study run --preset prefix-cache`",
    judge=_prefix_caching,
)


def _speculative(claim: Claim, cells: list[CellData]) -> Claim | None:
    vs = versus(cells, "speculative decoding", _ref_where(lambda c: not c.field("engine.speculative")))
    if not vs:
        return None
    checks = []
    for v in vs:
        ref_acc, _ = v.accuracy
        checks.append(
            Check(Condition(f"{v.variant}: E2EL p50 ratio", v.ratio(E2EL_P50), 1.0, above=False, log=True), "ratio")
        )
        if ref_acc["accuracy"] is not None:
            checks.append(
                Check(Condition(f"{v.variant}: accuracy difference", v.accuracy_diff, -ACC_TOLERANCE), "points")
            )
        claim.numbers.append(
            (
                f"{v.variant} (not deciding): out tok/s ratio / TTFVT p50 ratio / draft acceptance",
                f"{C.fmt_interval(v.ratio(TOK_S), 'ratio')} / {C.fmt_interval(v.ratio(_pctl('ttfvt_s', 50)), 'ratio')} / "
                f"{C.fmt(_mean_of([c for _, c in v.pairs], C.DRAFT_ACCEPT), 'pct')}",
            )
        )
    detail = f"{len(vs)} speculative variant(s) against none"
    if _no_answers(vs):
        detail += "; the reference answered nothing correctly, so the accuracy part is uninformative"
    return _decide(claim, checks, detail)


speculative = Finding(
    "speculative",
    "Speculative decoding",
    paper=(
        "N-gram speculative decoding shortens end-to-end time at every model size with no accuracy loss, but "
        "lowers tokens/s and worsens TTFVT."
    ),
    rule=(
        f"Each speculative variant against no speculation: reproduced if every one shortens E2EL p50 (ratio below "
        f"1, geometric mean over matched cell pairs, t interval over the pairs, at least {MIN_CELLS} pairs) with pooled accuracy within "
        f"{100 * ACC_TOLERANCE:g} points (Newcombe, paired by item where the items match). The paper also saw lower tokens/s and a worse TTFVT: both "
        f"ratios are shown, not deciding."
    ),
    needs="needs cells with and without speculative decoding: run `rllm-study run --preset speculative`",
    judge=_speculative,
)


# ---- real-world workload ---------------------------------------------------------------------


def _cv(c: CellData) -> float | None:
    wl = c.workload
    return 1.0 if wl.get("arrival") == "poisson" else wl.get("cv") if wl.get("arrival") == "gamma" else None


def _bursty_load(claim: Claim, cells: list[CellData]) -> Claim | None:
    checks, confounded = [], []
    at_rate: dict[tuple, list[tuple[CellData, CellData]]] = {}
    for key, members in load_groups(cells).items():
        by_rate: dict[float, list[CellData]] = {}
        for c in members:
            if _cv(c) is not None:
                by_rate.setdefault(c.workload.get("rate"), []).append(c)
        for rate, group in sorted(by_rate.items()):
            if len({_cv(c) for c in group}) < 2:
                continue
            low, high = min(group, key=_cv), max(group, key=_cv)
            real = [c.metrics["arrivals"]["rate"] for c in (low, high)]
            where = f"{low.dataset}, rate {rate}/s, CV {_cv(low):g} -> {_cv(high):g}"
            claim.numbers.append(
                (
                    f"{where}, repeat {low.spec.get('repeat', 0)}: realised arrival rate (req/s)",
                    f"{C.fmt(real[0])} -> {C.fmt(real[1])}",
                )
            )
            if None in real or abs(real[1] / real[0] - 1) > SAME_LOAD:
                confounded.append(f"{where}, repeat {low.spec.get('repeat', 0)}")
                continue
            at_rate.setdefault((*key[:5], key[6], rate, where), []).append((low, high))
            claim.numbers.append(
                (
                    f"{where}, repeat {low.spec.get('repeat', 0)}: KV peak",
                    f"{C.cell_value(low.metrics, C.KV_PEAK)} -> {C.cell_value(high.metrics, C.KV_PEAK)}",
                )
            )
    for key, pairs in at_rate.items():
        where, p90 = key[-1], _pctl("queue_s", 90)
        pairs, note = _same_speed_pairs(pairs)
        queue = pair_interval([_minus(p90(high.rows), p90(low.rows)) for low, high in pairs], scope=_pair_scope(pairs))
        checks += [
            Check(Condition(f"{where}: queue p90 high - low CV (s)", _noted(queue, note), 0.0)),
            Check(
                Condition(
                    f"{where}: E2EL p90 ratio high / low CV",
                    _noted(_ratio_of(_pctl("e2el_s", 90), pairs), note),
                    1.0,
                    log=True,
                ),
                "ratio",
            ),
        ]
    if not checks and not confounded:
        return None
    if not checks:
        claim.reason = (
            f"the realised arrival rates of {'; '.join(confounded)} differ by more than "
            f"{100 * SAME_LOAD:g}%, so burstiness would be confounded with load"
        )
        return claim
    detail = f"{len(at_rate)} rate(s) at the same realised load"
    if confounded:
        detail += f"; left out (realised rates differ by over {100 * SAME_LOAD:g}%): {'; '.join(confounded)}"
    return _decide(claim, checks, detail)


bursty_load = Finding(
    "bursty",
    "Bursty arrivals",
    paper=(
        "Under bursty Gamma arrivals a reasoning model's KV use sits near capacity for long stretches, "
        "requests pile up in the queue and turnaround grows."
    ),
    rule=(
        f"Open-loop Poisson/Gamma cells at the same rate (same model, data set, budget), lowest against highest "
        f"arrival CV of one repeat, a pair compared only where their realised arrival rates (`arrival_rate`) differ "
        f"by at most {100 * SAME_LOAD:g}% (else burstiness is confounded with load): reproduced if, at every such "
        f"rate, both the queue wait p90 (difference high - low above 0 s: a queue may be empty at low CV) and the "
        f"E2EL p90 (ratio high / low above 1) are higher at the highest CV, each with its t interval over the "
        f"matched pairs (repeats) whose measured machine speeds agree within {100 * SAME_SPEED:g}%; at least {MIN_CELLS} pairs."
    ),
    needs="needs open-loop cells at one rate with two or more CVs: run `rllm-study run --preset realworld`",
    judge=_bursty_load,
)


# ---- workloads: capacity at a fixed KV memory budget ---------------------------------------------


def _kv_budget(g: TechniqueGroup) -> float:
    return g.baseline.field("engine.kv_budget_mib") or 0.0


def _kv_capacity(claim: Claim, cells: list[CellData]) -> Claim | None:
    vs = versus(cells, "KV-cache quantization", _ref_where(_kv_plain), keep=lambda g: bool(_kv_budget(g)))
    if not vs:
        return None
    checks = []
    for v in vs:
        pairs = [
            (r, c) for r, c in v.pairs if C.value(r.metrics, C.RUNNING_MEAN) and C.value(c.metrics, C.RUNNING_MEAN)
        ]
        held = pair_interval(
            [C.value(c.metrics, C.RUNNING_MEAN) / C.value(r.metrics, C.RUNNING_MEAN) for r, c in pairs], log=True
        )
        checks.append(
            Check(Condition(f"{v.variant}: requests running at once, ratio to f16", held, 1.0, log=True), "ratio")
        )
        checks.append(Check(Condition(f"{v.variant}: out tok/s ratio to f16", v.ratio(TOK_S), 1.0, log=True), "ratio"))
        ref_acc, acc = v.accuracy
        if ref_acc["accuracy"] is not None and acc["accuracy"] is not None:
            checks.append(
                Check(Condition(f"{v.variant}: accuracy difference", v.accuracy_diff, -ACC_TOLERANCE), "points")
            )
        budget = v.pairs[0][0].field("engine.kv_budget_mib")
        claim.numbers.append(
            (
                f"{v.variant} vs f16 at {budget:g} MiB (not deciding): running mean / peak, waiting mean; "
                "TPOT p50 ratio",
                f"{C.fmt(_mean_of([c for _, c in v.pairs], C.RUNNING_MEAN))} vs "
                f"{C.fmt(_mean_of([r for r, _ in v.pairs], C.RUNNING_MEAN))} / "
                f"{C.fmt(_mean_of([c for _, c in v.pairs], C.RUNNING_PEAK))} vs "
                f"{C.fmt(_mean_of([r for r, _ in v.pairs], C.RUNNING_PEAK))}, "
                f"{C.fmt(_mean_of([c for _, c in v.pairs], C.WAITING_MEAN))} vs "
                f"{C.fmt(_mean_of([r for r, _ in v.pairs], C.WAITING_MEAN))}; "
                f"{C.fmt_interval(v.ratio(_pctl('tpot_s', 50)), 'ratio')}",
            )
        )
    return _decide(claim, checks, f"{len(vs)} quantized-KV variant(s) against f16 at one KV budget")


kv_capacity = Finding(
    "kv-capacity",
    "KV capacity at a fixed memory budget",
    paper="A quantized KV cache allows larger batch sizes without performance degradation.",
    rule=(
        f"Each quantized-KV variant against the f16 cache at the same KV memory budget (`kv_budget_mib`, the "
        f"cache sized in bytes, so a smaller type holds more tokens), offered more requests than f16 holds: "
        f"reproduced if the quantized cache runs more requests at once (mean `running` over the timeline, ratio "
        f"above 1, t interval over matched cell pairs), raises output tokens/s (ratio above 1, bootstrapped over "
        f"requests) and keeps pooled accuracy within {100 * ACC_TOLERANCE:g} points (Newcombe)."
    ),
    needs="needs f16 and quantized KV cells at one KV budget: run `rllm-study run --preset kv-capacity`",
    judge=_kv_capacity,
)


# ---- combined techniques ------------------------------------------------------------------------

ADDITIVE = 1.10  # "the effects add": the interaction ratio lies within [1/1.10, 1.10]


@dataclass
class Combination:
    """A variant that differs from its group's baseline in two or more techniques, with, per group,
    its cells: (baseline, combination, [one part per technique: the variant that differs from the
    baseline in that technique alone, set as in the combination])."""

    variant: str
    techniques: list[str]
    groups: list[tuple[CellData, CellData, list[CellData]]]


def combinations(cells: list[CellData]) -> list[Combination]:
    """Every combination of techniques whose single-technique parts were run beside it (same group)."""
    found: dict[str, Combination] = {}
    for g in technique_groups(cells):
        base = g.baseline
        for name, combo in g.variants.items():
            techniques = sorted(techniques_between(base, combo))
            if len(techniques) < 2:
                continue
            parts = []
            for t in techniques:
                part = next(
                    (
                        c
                        for c in g.variants.values()
                        if techniques_between(base, c) == {t}
                        and all(c.field(f) == combo.field(f) for f in TECHNIQUE_FIELDS[t])
                    ),
                    None,
                )
                parts.append(part)
            if None not in parts:
                found.setdefault(name, Combination(name, techniques, [])).groups.append((base, combo, parts))
    return list(found.values())


def _interaction(stat: Callable[[Rows], float | None], group: tuple) -> float | None:
    """One group's (stat(combination) / stat(baseline)) / product over parts of (stat(part) / stat(baseline));
    None where a figure is undefined or not positive."""
    base, combo, parts = group
    values = [stat(c.rows) for c in (base, combo, *parts)]
    if any(v is None or v <= 0 for v in values):
        return None
    return math.exp(math.log(values[1] / values[0]) - sum(math.log(v / values[0]) for v in values[2:]))


def _combined_techniques(claim: Claim, cells: list[CellData]) -> Claim | None:
    combos = combinations(cells)
    if not combos:
        return None
    checks = []
    for combo in combos:
        groups = [_interaction(TOK_S, g) for g in combo.groups]
        inter = ratio_interval([r for r in groups if r is not None], "cell groups", min_n=MIN_CELLS)
        what = f"{combo.variant} ({' + '.join(combo.techniques)}): out tok/s interaction ratio"
        checks += [
            Check(Condition(what + " (lower bound)", inter, 1 / ADDITIVE, log=True), "ratio"),
            Check(Condition(what + " (upper bound)", inter, ADDITIVE, above=False, log=True), "ratio"),
        ]
        pairs = [(base, cell) for base, cell, _ in combo.groups]
        together = Versus(combo.variant, pairs)
        claim.numbers.append(
            (
                f"{combo.variant} (not deciding): out tok/s ratio to baseline / accuracy difference",
                f"{C.fmt_interval(together.ratio(TOK_S), 'ratio')} / "
                f"{C.fmt_interval(together.accuracy_diff, 'points')}",
            )
        )
    return _decide(claim, checks, f"{len(combos)} combination(s), each beside its parts")


combined_techniques = Finding(
    "combined",
    "Combined techniques",
    paper=(
        "The study names combining techniques (quantized weights, quantized KV, prefix caching, speculative "
        "decoding) as the next step: do their effects add?"
    ),
    rule=(
        f"Each combination of two or more techniques against its parts, in every group where the baseline, the "
        f"combination and each single-technique part ran: the interaction ratio of output tokens/s, "
        f"(combination / baseline) / product of (part / baseline) per group of cells, geometric mean over the "
        f"groups with its t interval (each group is one moment on the machine; at least {MIN_CELLS} groups). Reproduced (the effects add, on a log scale) if it lies within [1/{ADDITIVE:g}, {ADDITIVE:g}] "
        f"for every combination; not reproduced if one settles outside. The combination's accuracy difference "
        f"from the baseline is shown beside it (Newcombe), not deciding."
    ),
    needs=(
        "needs a combination of techniques run beside each of its parts and the baseline: "
        "run `rllm-study run --preset combined`"
    ),
    judge=_combined_techniques,
)


# ---- workloads: multi-turn sessions ------------------------------------------------------------


def _multi_turn(g: TechniqueGroup) -> bool:
    return g.baseline.workload.get("arrival") == "sessions"


def _later_turns(stat: Callable[[Rows], float | None]) -> Callable[[Rows], float | None]:
    """stat over the requests of turn 2 and later (the turns whose prompts carry earlier turns)."""
    return lambda rows: stat([r for r in rows if (r.get("turn") or 0) >= 2])


def _multi_turn_prefix_caching(claim: Claim, cells: list[CellData]) -> Claim | None:
    vs = versus(cells, "prefix caching", _ref_where(lambda c: not c.field("engine.prefix_cache")), keep=_multi_turn)
    if not vs:
        return None
    checks = []
    for v in vs:
        checks += [
            Check(
                Condition(f"{v.variant}: out tok/s ratio on / off", v.ratio_same_speed(TOK_S), 1.0, log=True),
                "ratio",
            ),
            Check(
                Condition(
                    f"{v.variant}: TTFT p50 ratio on / off, turns >= 2",
                    v.ratio_same_speed(_later_turns(_pctl("ttft_s", 50))),
                    1.0,
                    above=False,
                    log=True,
                ),
                "ratio",
            ),
        ]
        for side, group in (("off", [r for r, _ in v.pairs]), (v.variant, [c for _, c in v.pairs])):
            turns: dict[str, list[dict]] = {}
            for c in group:
                for k, t in (c.metrics.get("turns", {}).get("by_turn") or {}).items():
                    turns.setdefault(k, []).append(t)
            claim.numbers.append(
                (
                    f"{side} (not deciding): per turn, prompt tokens mean / cache reuse / TTFT p50 s (n)",
                    "; ".join(
                        f"turn {k}: {C.fmt(_mean(t['prompt_tokens_mean'] for t in ts))} / "
                        f"{C.fmt(_mean(t['reuse'] for t in ts), 'pct')} / "
                        f"{C.fmt(_mean(t['ttft_s_p50'] for t in ts))} ({sum(t['n'] for t in ts)})"
                        for k, ts in sorted(turns.items(), key=lambda kv: int(kv[0]))
                    ),
                )
            )
    return _decide(
        claim, checks, f"{len(vs)} caching variant(s) against off, {sum(len(v.pairs) for v in vs)} matched cell pair(s)"
    )


multi_turn_prefix_caching = Finding(
    "multi-turn",
    "Multi-turn prefix caching",
    paper="Prefix caching raises throughput by up to 30% in multi-turn conversations.",
    rule=(
        'Prefix caching on against off on multi-turn sessions (`arrival = "sessions"`, each turn\'s prompt '
        "carrying the earlier turns): reproduced if output tokens/s rises (ratio on / off above 1) and the TTFT p50 "
        "of turns 2 and later falls (ratio on / off below 1), both geometric means over matched cell pairs with "
        f"their t intervals (at least {MIN_CELLS} pairs; only pairs whose measured machine speeds agree within "
        f'{100 * SAME_SPEED:g}%, as caching leaves decode speed alone). The paper\'s "up to 30%" is an upper figure, '
        "so the size of the gain is shown, not required."
    ),
    needs="needs multi-turn cells with prefix caching on and off: run `rllm-study run --preset multi-turn`",
    judge=_multi_turn_prefix_caching,
)


PILOT_CLAIMS = (memory, stragglers, adaptive_time, domain_preference)
TECHNIQUE_CLAIMS = (weight_quantization, kv_quantization, prefix_caching, speculative)
LOAD_CLAIMS = (bursty_load,)
WORKLOAD_CLAIMS = (multi_turn_prefix_caching, kv_capacity, combined_techniques)


def check_claims(cells: list[CellData]) -> list[Claim]:
    """Every claim (pilot, technique, real-world, workload) checked against the cells."""
    return [check(cells) for check in (*PILOT_CLAIMS, *TECHNIQUE_CLAIMS, *LOAD_CLAIMS, *WORKLOAD_CLAIMS)]
