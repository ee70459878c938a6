"""The paper's findings checked against recorded cells, each by a stated rule decided by intervals.

Four pilot findings (reasoning vs direct), four technique takeaways, and the real-world one.
Each check returns a `Claim`. A rule is one or more conditions, each a 95% interval against a
threshold (`rllm_study.analysis.stats.Condition`): reproduced when every interval lies on the finding's side,
not reproduced when any lies on the other side, inconclusive otherwise (then the claim says roughly
how many requests would settle it), not tested when the cells it needs are absent. Intervals:
  accuracy             Wilson per proportion; Newcombe (MOVER over Wilson) for differences
  per-request figures  percentiles, means and throughputs recomputed over requests resampled within
                       each cell (seeded bootstrap, `stats.bootstrap`); ratios between cells are
                       geometric means over the groups compared, recomputed in every resample
  per-cell figures     KV use comes from a cell's timeline, not from requests: its ratios and
                       differences get a Student t interval over the matched pairs
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
from dataclasses import dataclass
from pathlib import Path

from rllm_study.analysis.metrics import distribution, group_tail, percentile_key, session_spans, straggler_groups
from rllm_study.models import FLOAT_TYPES
from rllm_study.report import columns as C
from rllm_study.report.cells import (
    REASONING,
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
from rllm_study.analysis.stats import (
    Interval,
    Condition,
    bootstrap,
    mean_interval,
    mover,
    newcombe,
    proportion,
    ratio_interval,
    settle,
)

PEAK_FACTOR = 2.0        # reasoning peak KV use must be at least this multiple of direct's
MATH_GAIN = 0.05         # reasoning must beat direct on math by at least this (5 points)
ACC_TOLERANCE = 0.03     # "within about 3% accuracy": at most 3 points lower
COLLAPSE = 0.5           # "accuracy nearly collapses": at most half the reference's accuracy
LARGE_MODEL = 10e9       # the paper's sizes split between 7B (small) and 14B and up (large)
SAME_LOAD = 0.10         # bursty cells compare only when their realised arrival rates differ by at most 10%
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
        thr = f"{t.threshold:.2f}x" if self.kind == "ratio" else f"{100 * t.threshold:+.1f} pt" if self.kind == "points" else C.fmt(t.threshold, self.kind)
        verdict = {True: "settled: holds", False: "settled: fails", None: "spans the threshold" if t.interval.known else "no interval"}[t.outcome]
        return f"{C.fmt_interval(t.interval, self.kind)}; needs {side} {thr}: {verdict}"


def _more(checks: Sequence[Check]) -> str:
    """What would settle the open conditions: the largest `Condition.needed` over them (n x (h / d)^2), and
    why the others have no interval."""
    open_ = [c.cond for c in checks if c.cond.outcome is None]
    sized = [t for t in open_ if t.needed is not None]
    parts = []
    if sized:
        t = max(sized, key=lambda t: t.needed / max(t.interval.n, 1))
        parts.append(f"about {t.needed} {t.interval.unit} (now {t.interval.n}) would settle \"{t.what}\" if its estimate held")
    parts += sorted({f"\"{t.what}\": {t.interval.why}" for t in open_ if not t.interval.known and t.interval.why})
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
        detail += "; settled against by " + "; ".join(f"\"{c.cond.what}\" {C.fmt_interval(c.cond.interval, c.kind)}" for c in against)
    claim.reason = detail
    return claim


def _completed(rows: Rows) -> Rows:
    return [r for r in rows if r["completed"]]


def _pctl(key: str, p: float) -> Callable[[Rows], float | None]:
    """The p-th percentile of a per-request value over a cell's completed requests (`distribution`)."""
    return lambda rows: distribution((r[key] for r in _completed(rows)), (p,))[percentile_key(p)]


def _mean_key(key: str) -> Callable[[Rows], float | None]:
    """The mean of a per-request value over a cell's completed requests (`distribution`)."""
    return lambda rows: distribution((r[key] for r in _completed(rows)), ())["mean"]


def _throughput(rows: Rows) -> float | None:
    """output_tok_s over these requests: their output tokens / `session_spans`."""
    duration = session_spans(rows)
    return sum(r["output_tokens"] or 0 for r in rows) / duration if duration else None


def _tail_share(rows: Rows) -> float | None:
    """tail_share over these requests: their straggler groups' tail time / span."""
    groups = straggler_groups([r for r in rows if r.get("group") is not None]).values()
    spans = [group_tail(m) for m in groups]
    total = sum(s for s, _ in spans)
    return sum(t for _, t in spans) / total if total else None


def _ratio_of(stat: Callable[[Rows], float | None], pairs: Sequence[tuple[CellData, CellData]]) -> Interval:
    """Geometric mean over pairs (reference, other) of stat(other) / stat(reference), bootstrapped over
    the requests of every cell."""
    def over(samples: list[Rows]) -> float | None:
        logs = []
        for ref, new in zip(samples[::2], samples[1::2]):
            a, b = stat(ref), stat(new)
            if not a or not b or a <= 0 or b <= 0:
                return None
            logs.append(math.log(b / a))
        return math.exp(statistics.fmean(logs)) if logs else None

    return bootstrap([rows for ref, new in pairs for rows in (ref.rows, new.rows)], over)


def _pooled(stat: Callable[[Rows], float | None], first: int) -> Callable[[list[Rows]], float | None]:
    """stat over the first `first` samples pooled, divided by stat over the rest pooled."""
    def over(samples: list[Rows]) -> float | None:
        a, b = stat([r for s in samples[:first] for r in s]), stat([r for s in samples[first:] for r in s])
        return b / a if a and b is not None and a > 0 else None
    return over


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _acc_diff(new: dict, ref: dict) -> Interval:
    """new accuracy - reference accuracy with its Newcombe interval."""
    return newcombe(new[CORRECT], new["total"], ref[CORRECT], ref["total"])


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

def memory(cells: list[CellData]) -> Claim:
    rule = (f"Over matched pilot pairs at the largest budget: reproduced if the reasoning cells' peak KV-cache use is "
            f"at least {PEAK_FACTOR:g}x the direct cells' (geometric mean of the pairs' ratios) and their KV-use "
            f"coefficient of variation (std / mean over the timeline) is higher (mean of the pairs' differences above "
            f"0); t intervals over the pairs, as KV use is a per-cell timeline figure.")
    claim = Claim("memory", "Memory use and fluctuation",
                  "A reasoning model's KV-cache use is high and swings within a batch (about 3% to 70% for a 7B "
                  "model on MATH-500) while the ordinary model stays under about 3%.", rule, NOT_TESTED, "")
    pairs, top = _largest_budget_pairs(cells)
    pairs = [(r, d) for r, d in pairs if C.value(r.metrics, C.KV_PEAK) and C.value(d.metrics, C.KV_PEAK)
             and C.value(r.metrics, C.KV_CV) is not None and C.value(d.metrics, C.KV_CV) is not None]
    if not pairs:
        claim.reason = f"needs reasoning and direct pilot cells with a KV timeline: {PILOT_HINT}"
        return claim
    reasoning, direct = [r for r, _ in pairs], [d for _, d in pairs]
    peak = ratio_interval([C.value(r.metrics, C.KV_PEAK) / C.value(d.metrics, C.KV_PEAK) for r, d in pairs])
    cv = mean_interval([C.value(r.metrics, C.KV_CV) - C.value(d.metrics, C.KV_CV) for r, d in pairs])
    claim.numbers = [("peak KV use, reasoning / direct (mean over cells)",
                      f"{C.fmt(_mean_of(reasoning, C.KV_PEAK), 'pct')} / {C.fmt(_mean_of(direct, C.KV_PEAK), 'pct')}"),
                     ("KV-use CV, reasoning / direct (mean over cells)",
                      f"{C.fmt(_mean_of(reasoning, C.KV_CV))} / {C.fmt(_mean_of(direct, C.KV_CV))}")]
    return _decide(claim, [Check(Condition("peak KV ratio reasoning / direct", peak, PEAK_FACTOR, log=True), "ratio"),
                           Check(Condition("KV-use CV, reasoning - direct", cv, 0.0))],
                   f"reasoning peak KV is {C.fmt_ratio(peak.estimate)} direct's ({len(pairs)} pairs, budget {top})")


def stragglers(cells: list[CellData]) -> Claim:
    rule = ("Over matched pilot pairs at the largest budget, per run and batch size: reproduced if, at every batch "
            "size, the reasoning cells have a larger straggler share (requests whose E2EL exceeds k x their batch's "
            "median; pooled over the cells, Newcombe interval of the difference above 0) and spend a larger share of "
            "batch time in the tail (fewer than half the batch still running; mean over cells, reasoning - direct, "
            "bootstrapped over requests, above 0) than the direct cells.")
    claim = Claim("stragglers", "Stragglers",
                  "A few hard problems stretch a batch from ten-odd seconds to twenty-plus; in the tail only a few "
                  "requests run. The ordinary model's run times are nearly uniform.", rule, NOT_TESTED, "")
    pairs, top = _largest_budget_pairs(cells)
    if not pairs:
        claim.reason = f"needs reasoning and direct pilot cells: {PILOT_HINT}"
        return claim
    groups = _by_batch(pairs, lambda p: p[0])
    checks = []
    for key, ps in groups.items():
        where = _where(key, groups)
        count = {mode: (sum(c.metrics["stragglers"]["count"] for c in side), sum(len(_completed(c.rows)) for c in side))
                 for mode, side in (("r", [r for r, _ in ps]), ("d", [d for _, d in ps]))}
        share = newcombe(*count["r"], *count["d"])

        def tail_diff(samples: list[Rows], n=len(ps)) -> float | None:
            r = [_tail_share(s) for s in samples[:n]]
            d = [_tail_share(s) for s in samples[n:]]
            return None if None in r + d else statistics.fmean(r) - statistics.fmean(d)

        tail = bootstrap([r.rows for r, _ in ps] + [d.rows for _, d in ps], tail_diff)
        checks += [Check(Condition(f"{where}: straggler share, reasoning - direct", share, 0.0), "points"),
                   Check(Condition(f"{where}: tail share of batch time, reasoning - direct", tail, 0.0), "points")]
        think = _mean(r.metrics["stragglers"]["think_tokens_mean"] for r, _ in ps)
        rest = _mean(r.metrics["stragglers"]["non_straggler_think_tokens_mean"] for r, _ in ps)
        claim.numbers.append((f"{where}: stragglers reasoning / direct; think tokens of stragglers / others (reasoning)",
                              f"{count['r'][0]}/{count['r'][1]} / {count['d'][0]}/{count['d'][1]}; {C.fmt(think)} / {C.fmt(rest)}"))
    return _decide(claim, checks, f"{len(pairs)} pairs at budget {top}, batch size {_sizes(groups)}")


def adaptive_time(cells: list[CellData]) -> Claim:
    rule = ("Over the reasoning pilot cells at the largest budget, per run and batch size, requests pooled by the math "
            "data sets' difficulty tier (GSM8K easy < MATH-500 medium < AIME hard): reproduced if, at every batch size, "
            "both the mean think tokens and the mean E2EL rise from each tier present to the next harder one (ratio "
            "harder / easier above 1, bootstrapped over requests; at least two tiers).")
    claim = Claim("adaptive", "Adaptive running time",
                  "A reasoning model's running time and token count grow with difficulty (GSM8K < MATH-500 < AIME).",
                  rule, NOT_TESTED, "")
    reasoning = [c for c in pilot_cells(cells) if c.mode == REASONING and tier(c.dataset) in TIER_ORDER]
    if reasoning:
        top = max(c.budget for c in reasoning)
        reasoning = [c for c in reasoning if c.budget == top]
    groups = {k: cs for k, cs in _by_batch(reasoning).items() if len({tier(c.dataset) for c in cs}) >= 2}
    if not groups:
        claim.reason = ("needs reasoning pilot cells of one batch size on math data sets of at least two difficulty "
                        "tiers (e.g. gsm8k and math500 or aime24)")
        return claim
    checks, capped_max = [], 0.0
    for key, cs in groups.items():
        where = _where(key, groups)
        by_tier = {t: [c for c in cs if tier(c.dataset) == t] for t in TIER_ORDER}
        tiers = [t for t in TIER_ORDER if by_tier[t]]
        for easy, hard in zip(tiers, tiers[1:]):
            samples = [c.rows for c in by_tier[easy]] + [c.rows for c in by_tier[hard]]
            for label, key_ in (("think tokens", "think_tokens"), ("E2EL", "e2el_s")):
                iv = bootstrap(samples, _pooled(_mean_key(key_), len(by_tier[easy])))
                checks.append(Check(Condition(f"{where}: mean {label} {hard} / {easy}", iv, 1.0, log=True), "ratio"))
        for t in tiers:
            rows = [r for c in by_tier[t] for r in _completed(c.rows)]
            capped = sum(r["finish_reason"] == "length" for r in rows) / len(rows) if rows else 0.0
            capped_max = max(capped_max, capped)
            claim.numbers.append((f"{where}, {t}: think tokens mean / E2EL mean / hit budget (n={len(rows)})",
                                  f"{C.fmt(_mean_key('think_tokens')(rows))} tok / {C.fmt(_mean_key('e2el_s')(rows))} s / "
                                  f"{C.fmt(capped, 'pct')}"))
    detail = f"budget {top}, batch size {_sizes(groups)}"
    if capped_max >= 0.5:
        detail += f"; {C.fmt(capped_max, 'pct')} of a tier's requests hit the budget, which flattens the ladder"
    return _decide(claim, checks, detail)


def domain_preference(cells: list[CellData]) -> Claim:
    rule = (f"Pooled accuracy over matched pilot pairs at the largest budget, per domain: reproduced if reasoning beats "
            f"direct on math by at least {100 * MATH_GAIN:g} points (Newcombe interval of the difference) and its gain "
            f"on every other domain is under half the math gain (MOVER interval of half the math gain minus that gain, "
            f"above 0).")
    claim = Claim("domain", "Domain preference",
                  "Reasoning is far better on math and only on par on knowledge-heavy GPQA.", rule, NOT_TESTED, "")
    pairs, top = _largest_budget_pairs(cells)
    acc_r = pooled_accuracy([r for r, _ in pairs], "by_domain") if pairs else {}
    acc_d = pooled_accuracy([d for _, d in pairs], "by_domain") if pairs else {}
    domains = [d for d in acc_r if d in acc_d and acc_r[d]["accuracy"] is not None and acc_d[d]["accuracy"] is not None]
    others = [d for d in domains if d != "math"]
    if "math" not in domains or not others:
        claim.reason = f"needs reasoning and direct pilot cells on math and on another domain (e.g. gpqa-diamond): {PILOT_HINT}"
        return claim
    gain = {d: _acc_diff(acc_r[d], acc_d[d]) for d in domains}
    checks = [Check(Condition("math: reasoning - direct", gain["math"], MATH_GAIN), "points")]
    checks += [Check(Condition(f"half the math gain - {d} gain", mover(gain["math"], gain[d], 0.5), 0.0), "points") for d in others]
    claim.numbers = [(f"{d}: accuracy lenient, reasoning / direct", f"{C.acc_text(acc_r[d], True)} / {C.acc_text(acc_d[d], True)}")
                     for d in domains]
    claim.numbers += [(f"{d}: accuracy strict (not deciding), reasoning / direct", f"{C.acc_text(acc_r[d])} / {C.acc_text(acc_d[d])}")
                      for d in domains]
    return _decide(claim, checks, "; ".join(f"{d}: reasoning {C.points(gain[d].estimate, 0.0)} vs direct" for d in domains)
                   + f" (budget {top})")


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
        """Variant accuracy - reference accuracy (pooled), Newcombe interval."""
        ref, new = self.accuracy
        return _acc_diff(new, ref)

    def ratio(self, stat: Callable[[Rows], float | None]) -> Interval:
        """Geometric mean over groups of stat(variant) / stat(reference), bootstrapped over requests."""
        return _ratio_of(stat, self.pairs)

    @property
    def large(self) -> bool:
        return all((v.n_params or 0) >= LARGE_MODEL for _, v in self.pairs)


def versus(cells: list[CellData], technique: str, reference: Callable[[TechniqueGroup], CellData | None],
           keep: Callable[[TechniqueGroup], bool] = lambda g: True) -> list[Versus]:
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


E2EL_P50, TOK_S = _pctl("e2el_s", 50), _throughput


def derived_origin(c: CellData) -> str | None:
    """The quantized file a derived model was made from (the `derived_from` manifest fact, e.g.
    'qwen2.5-coder-0.5b (Q4_K_M, ...)' -> 'Q4_K_M'), or None when it is not derived or came from
    full-precision weights (F32/F16/BF16), whose derived quantizations can differ in accuracy."""
    found = re.search(r"\(([A-Za-z0-9_]+),", c.model.get("derived_from") or "")
    return found.group(1) if found and found.group(1).upper() not in FLOAT_TYPES else None


def weight_quantization(cells: list[CellData]) -> Claim:
    rule = (f"Each variant with fewer bits per weight than its group's highest-precision variant (same model, data set, "
            f"budget, workload): reproduced if every one keeps pooled accuracy within {100 * ACC_TOLERANCE:g} points "
            f"of it (Newcombe interval of the difference above -{100 * ACC_TOLERANCE:g} points) and reaches at least its "
            f"output tokens/s (geometric mean over groups, bootstrapped over requests, above 1). Not tested for accuracy "
            f"when the ladder was derived from one quantized file.")
    claim = Claim("quantization", "Weight quantization",
                  "4-bit (GPTQ-Int4) and FP8 weights stay within about 3% accuracy with equal or better serving.",
                  rule, NOT_TESTED, "")
    vs = versus(cells, "weight quantization", lambda g: max(g.variants.values(), key=_bits))
    vs = [v for v in vs if _bits(v.pairs[0][1]) < _bits(v.pairs[0][0])]
    if not vs:
        claim.reason = "needs cells of one model at several weight quantizations: run `rllm-study run --preset quantization`"
        return claim
    origins = {derived_origin(c) for v in vs for pair in v.pairs for c in pair} - {None}
    if origins:
        for v in vs:
            ref, new = v.pairs[0]
            claim.numbers.append((f"{v.variant} ({_bits(new):.2f} bpw) vs {_bits(ref):.2f} bpw: out tok/s ratio (engine cost only)",
                                  C.fmt_interval(v.ratio(TOK_S), "ratio")))
            claim.numbers.append((f"{v.variant}: E2EL p50 ratio (engine cost only)", C.fmt_interval(v.ratio(E2EL_P50), "ratio")))
        claim.reason = (f"the ladder is derived from one {', '.join(sorted(origins))} file, so its accuracy "
                        f"cannot differ for a reason the study can attribute to precision; engine cost shown only")
        return claim
    checks = []
    for v in vs:
        ref, new = v.pairs[0]
        checks += [Check(Condition(f"{v.variant} ({_bits(new):.2f} bpw) vs {_bits(ref):.2f} bpw: accuracy difference",
                              v.accuracy_diff, -ACC_TOLERANCE), "points"),
                   Check(Condition(f"{v.variant}: out tok/s ratio", v.ratio(TOK_S), 1.0, log=True), "ratio")]
    detail = f"{len(vs)} lower-bit variant(s) against the highest precision"
    if _no_answers(vs):
        detail += "; the reference answered nothing correctly, so only speed was really tested"
    return _decide(claim, checks, detail)


def _kv_plain(c: CellData) -> bool:
    return c.field("engine.type_k") in ("f16", "f32", "bf16") and c.field("engine.type_v") in ("f16", "f32", "bf16") and not c.field("engine.kv_bits")


def kv_quantization(cells: list[CellData]) -> Claim:
    rule = (f"Each quantized-KV variant against its group's f16 KV variant. Models under {LARGE_MODEL / 1e9:g}B "
            f"parameters (the paper's 7B case): reproduced if accuracy collapses (pooled accuracy at most "
            f"{COLLAPSE:g}x the f16 cache's: MOVER interval of {COLLAPSE:g} x f16 accuracy - variant accuracy above 0). "
            f"Larger models: reproduced if output tokens/s rises (bootstrap ratio above 1) at accuracy within "
            f"{100 * ACC_TOLERANCE:g} points (Newcombe).")
    claim = Claim("kv-cache", "KV-cache quantization",
                  "An FP8 KV cache is faster for 14B and 32B models at similar accuracy, but accuracy nearly collapses "
                  "for the 7B model.", rule, NOT_TESTED, "")
    vs = versus(cells, "KV-cache quantization", _ref_where(_kv_plain), keep=lambda g: not _kv_budget(g))
    if not vs:
        claim.reason = "needs cells with f16 and quantized KV caches: run `rllm-study run --preset kv-cache`"
        return claim
    checks = []
    for v in vs:
        ref_acc, acc = v.accuracy
        size = "large" if v.large else "small"
        claim.numbers.append((f"{v.variant} ({size} model): accuracy lenient vs f16 cache",
                              f"{C.acc_text(acc, True)} vs {C.acc_text(ref_acc, True)}"))
        if ref_acc["accuracy"] is None or acc["accuracy"] is None or (not v.large and ref_acc[CORRECT] == 0):
            continue
        if v.large:
            checks += [Check(Condition(f"{v.variant}: out tok/s ratio", v.ratio(TOK_S), 1.0, log=True), "ratio"),
                       Check(Condition(f"{v.variant}: accuracy difference", v.accuracy_diff, -ACC_TOLERANCE), "points")]
        else:
            collapse = mover(proportion(ref_acc[CORRECT], ref_acc["total"]), proportion(acc[CORRECT], acc["total"]), COLLAPSE)
            checks.append(Check(Condition(f"{v.variant}: {COLLAPSE:g} x f16 accuracy - variant accuracy", collapse, 0.0), "points"))
    if not checks:
        claim.reason = "the f16-cache reference answered nothing correctly, so an accuracy collapse cannot show"
        return claim
    return _decide(claim, checks, f"{len(vs)} quantized-KV variant(s) against the f16 cache")


def prefix_caching(cells: list[CellData]) -> Claim:
    rule = (f"Prefix caching on against off, on single-turn workloads (no shared prefix), E2EL p50 ratio on / off "
            f"(geometric mean over groups, bootstrapped over requests). Models under {LARGE_MODEL / 1e9:g}B: reproduced "
            f"if the ratio is above 1 (caching adds latency). Larger models: reproduced if it is below 1.")
    claim = Claim("prefix-cache", "Prefix caching",
                  "Prefix caching helps 14B and larger models; for the 7B model it adds latency, because single-turn "
                  "requests share no prefix and the bookkeeping is pure cost.", rule, NOT_TESTED, "")
    single = versus(cells, "prefix caching", _ref_where(lambda c: not c.field("engine.prefix_cache")),
                    keep=lambda g: not g.baseline.workload.get("shared_prefix") and not _multi_turn(g))
    shared = versus(cells, "prefix caching", _ref_where(lambda c: not c.field("engine.prefix_cache")),
                    keep=lambda g: bool(g.baseline.workload.get("shared_prefix")))
    for v in shared:
        claim.numbers.append((f"{v.variant}, shared-prefix workload (not deciding): E2EL p50 ratio / hit rate",
                              f"{C.fmt_interval(v.ratio(E2EL_P50), 'ratio')} / "
                              f"{C.fmt(_mean_of([c for _, c in v.pairs], C.PREFIX_HITS), 'pct')}"))
    if not single:
        claim.reason = "needs single-turn cells with prefix caching on and off: run `rllm-study run --preset prefix-cache`"
        return claim
    checks = [Check(Condition(f"{v.variant}, single-turn ({'large' if v.large else 'small'} model): E2EL p50 ratio on / off",
                         v.ratio(E2EL_P50), 1.0, above=not v.large, log=True), "ratio") for v in single]
    return _decide(claim, checks, f"{len(single)} single-turn comparison(s)")


def speculative(cells: list[CellData]) -> Claim:
    rule = (f"Each speculative variant against no speculation: reproduced if every one shortens E2EL p50 (ratio below "
            f"1, geometric mean over groups, bootstrapped over requests) with pooled accuracy within "
            f"{100 * ACC_TOLERANCE:g} points (Newcombe). The paper also saw lower tokens/s and a worse TTFVT: both "
            f"ratios are shown, not deciding.")
    claim = Claim("speculative", "Speculative decoding",
                  "N-gram speculative decoding shortens end-to-end time at every model size with no accuracy loss, but "
                  "lowers tokens/s and worsens TTFVT.", rule, NOT_TESTED, "")
    vs = versus(cells, "speculative decoding", _ref_where(lambda c: not c.field("engine.speculative")))
    if not vs:
        claim.reason = "needs cells with and without speculative decoding: run `rllm-study run --preset speculative`"
        return claim
    checks = []
    for v in vs:
        ref_acc, _ = v.accuracy
        checks.append(Check(Condition(f"{v.variant}: E2EL p50 ratio", v.ratio(E2EL_P50), 1.0, above=False, log=True), "ratio"))
        if ref_acc["accuracy"] is not None:
            checks.append(Check(Condition(f"{v.variant}: accuracy difference", v.accuracy_diff, -ACC_TOLERANCE), "points"))
        claim.numbers.append((f"{v.variant} (not deciding): out tok/s ratio / TTFVT p50 ratio / draft acceptance",
                              f"{C.fmt_interval(v.ratio(TOK_S), 'ratio')} / {C.fmt_interval(v.ratio(_pctl('ttfvt_s', 50)), 'ratio')} / "
                              f"{C.fmt(_mean_of([c for _, c in v.pairs], C.DRAFT_ACCEPT), 'pct')}"))
    detail = f"{len(vs)} speculative variant(s) against none"
    if _no_answers(vs):
        detail += "; the reference answered nothing correctly, so the accuracy part is uninformative"
    return _decide(claim, checks, detail)


# ---- real-world workload ---------------------------------------------------------------------

def _cv(c: CellData) -> float | None:
    wl = c.workload
    return 1.0 if wl.get("arrival") == "poisson" else wl.get("cv") if wl.get("arrival") == "gamma" else None


def bursty_load(cells: list[CellData]) -> Claim:
    rule = (f"Open-loop Poisson/Gamma cells at the same rate (same model, data set, budget), lowest against highest "
            f"arrival CV, compared only where their realised arrival rates (`arrival_rate`) differ by at most "
            f"{100 * SAME_LOAD:g}% (else burstiness is confounded with load): reproduced if, at every such rate, both "
            f"the queue wait p90 (difference high - low above 0 s: a queue may be empty at low CV) and the E2EL p90 "
            f"(ratio high / low above 1) are higher at the highest CV, both bootstrapped over requests.")
    claim = Claim("bursty", "Bursty arrivals",
                  "Under bursty Gamma arrivals a reasoning model's KV use sits near capacity for long stretches, "
                  "requests pile up in the queue and turnaround grows.", rule, NOT_TESTED, "")
    checks, confounded = [], []
    for members in load_groups(cells).values():
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
            claim.numbers.append((f"{where}: realised arrival rate (req/s)", f"{C.fmt(real[0])} -> {C.fmt(real[1])}"))
            if None in real or abs(real[1] / real[0] - 1) > SAME_LOAD:
                confounded.append(where)
                continue
            pair = [(low, high)]
            queue = bootstrap([low.rows, high.rows], lambda s: _minus(_pctl("queue_s", 90)(s[1]), _pctl("queue_s", 90)(s[0])))
            checks += [Check(Condition(f"{where}: queue p90 high - low CV (s)", queue, 0.0)),
                       Check(Condition(f"{where}: E2EL p90 ratio high / low CV", _ratio_of(_pctl("e2el_s", 90), pair), 1.0, log=True), "ratio")]
            claim.numbers.append((f"{where}: KV peak", f"{C.cell_value(low.metrics, C.KV_PEAK)} -> {C.cell_value(high.metrics, C.KV_PEAK)}"))
    if not checks:
        claim.reason = (f"the realised arrival rates of {'; '.join(confounded)} differ by more than "
                        f"{100 * SAME_LOAD:g}%, so burstiness would be confounded with load" if confounded else
                        "needs open-loop cells at one rate with two or more CVs: run `rllm-study run --preset realworld`")
        return claim
    detail = f"{len(checks) // 2} rate(s) at the same realised load"
    if confounded:
        detail += f"; left out (realised rates differ by over {100 * SAME_LOAD:g}%): {'; '.join(confounded)}"
    return _decide(claim, checks, detail)


# ---- workloads: capacity at a fixed KV memory budget ---------------------------------------------

def _kv_budget(g: TechniqueGroup) -> float:
    return g.baseline.field("engine.kv_budget_mib") or 0.0


def kv_capacity(cells: list[CellData]) -> Claim:
    rule = (f"Each quantized-KV variant against the f16 cache at the same KV memory budget (`kv_budget_mib`, the "
            f"cache sized in bytes, so a smaller type holds more tokens), offered more requests than f16 holds: "
            f"reproduced if the quantized cache runs more requests at once (mean `running` over the timeline, ratio "
            f"above 1, t interval over matched cell pairs), raises output tokens/s (ratio above 1, bootstrapped over "
            f"requests) and keeps pooled accuracy within {100 * ACC_TOLERANCE:g} points (Newcombe).")
    claim = Claim("kv-capacity", "KV capacity at a fixed memory budget",
                  "A quantized KV cache allows larger batch sizes without performance degradation.", rule, NOT_TESTED, "")
    vs = versus(cells, "KV-cache quantization", _ref_where(_kv_plain), keep=lambda g: bool(_kv_budget(g)))
    if not vs:
        claim.reason = "needs f16 and quantized KV cells at one KV budget: run `rllm-study run --preset kv-capacity`"
        return claim
    checks = []
    for v in vs:
        pairs = [(r, c) for r, c in v.pairs if C.value(r.metrics, C.RUNNING_MEAN) and C.value(c.metrics, C.RUNNING_MEAN)]
        held = ratio_interval([C.value(c.metrics, C.RUNNING_MEAN) / C.value(r.metrics, C.RUNNING_MEAN) for r, c in pairs])
        checks.append(Check(Condition(f"{v.variant}: requests running at once, ratio to f16", held, 1.0, log=True), "ratio"))
        checks.append(Check(Condition(f"{v.variant}: out tok/s ratio to f16", v.ratio(TOK_S), 1.0, log=True), "ratio"))
        ref_acc, acc = v.accuracy
        if ref_acc["accuracy"] is not None and acc["accuracy"] is not None:
            checks.append(Check(Condition(f"{v.variant}: accuracy difference", v.accuracy_diff, -ACC_TOLERANCE), "points"))
        budget = v.pairs[0][0].field("engine.kv_budget_mib")
        claim.numbers.append((f"{v.variant} vs f16 at {budget:g} MiB (not deciding): running mean / peak, waiting mean; "
                              "TPOT p50 ratio",
                              f"{C.fmt(_mean_of([c for _, c in v.pairs], C.RUNNING_MEAN))} vs "
                              f"{C.fmt(_mean_of([r for r, _ in v.pairs], C.RUNNING_MEAN))} / "
                              f"{C.fmt(_mean_of([c for _, c in v.pairs], C.RUNNING_PEAK))} vs "
                              f"{C.fmt(_mean_of([r for r, _ in v.pairs], C.RUNNING_PEAK))}, "
                              f"{C.fmt(_mean_of([c for _, c in v.pairs], C.WAITING_MEAN))} vs "
                              f"{C.fmt(_mean_of([r for r, _ in v.pairs], C.WAITING_MEAN))}; "
                              f"{C.fmt_interval(v.ratio(_pctl('tpot_s', 50)), 'ratio')}"))
    return _decide(claim, checks, f"{len(vs)} quantized-KV variant(s) against f16 at one KV budget")


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
    from rllm_study.report.cells import TECHNIQUE_FIELDS

    found: dict[str, Combination] = {}
    for g in technique_groups(cells):
        base = g.baseline
        for name, combo in g.variants.items():
            techniques = sorted(techniques_between(base, combo))
            if len(techniques) < 2:
                continue
            parts = []
            for t in techniques:
                part = next((c for c in g.variants.values() if techniques_between(base, c) == {t}
                             and all(c.field(f) == combo.field(f) for f in TECHNIQUE_FIELDS[t])), None)
                parts.append(part)
            if None not in parts:
                found.setdefault(name, Combination(name, techniques, [])).groups.append((base, combo, parts))
    return list(found.values())


def _interaction(stat: Callable[[Rows], float | None], k: int) -> Callable[[list[Rows]], float | None]:
    """Over samples laid out per group as [baseline, combination, part 1 .. part k]: the geometric mean
    over groups of (stat(combination) / stat(baseline)) / product over parts of (stat(part) / stat(baseline))."""
    def over(samples: list[Rows]) -> float | None:
        logs = []
        for i in range(0, len(samples), k + 2):
            values = [stat(s) for s in samples[i:i + k + 2]]
            if any(v is None or v <= 0 for v in values):
                return None
            base, combo, parts = values[0], values[1], values[2:]
            logs.append(math.log(combo / base) - sum(math.log(p / base) for p in parts))
        return math.exp(statistics.fmean(logs)) if logs else None
    return over


def combined_techniques(cells: list[CellData]) -> Claim:
    rule = (f"Each combination of two or more techniques against its parts, in every group where the baseline, the "
            f"combination and each single-technique part ran: the interaction ratio of output tokens/s, "
            f"(combination / baseline) / product of (part / baseline), geometric mean over groups, bootstrapped over "
            f"requests. Reproduced (the effects add, on a log scale) if it lies within [1/{ADDITIVE:g}, {ADDITIVE:g}] "
            f"for every combination; not reproduced if one settles outside. The combination's accuracy difference "
            f"from the baseline is shown beside it (Newcombe), not deciding.")
    claim = Claim("combined", "Combined techniques",
                  "The study names combining techniques (quantized weights, quantized KV, prefix caching, speculative "
                  "decoding) as the next step: do their effects add?", rule, NOT_TESTED, "")
    combos = combinations(cells)
    if not combos:
        claim.reason = ("needs a combination of techniques run beside each of its parts and the baseline: "
                        "run `rllm-study run --preset combined`")
        return claim
    checks = []
    for combo in combos:
        k = len(combo.techniques)
        samples = [c.rows for base, cell, parts in combo.groups for c in (base, cell, *parts)]
        inter = bootstrap(samples, _interaction(TOK_S, k))
        what = f"{combo.variant} ({' + '.join(combo.techniques)}): out tok/s interaction ratio"
        checks += [Check(Condition(what + " (lower bound)", inter, 1 / ADDITIVE, log=True), "ratio"),
                   Check(Condition(what + " (upper bound)", inter, ADDITIVE, above=False, log=True), "ratio")]
        pairs = [(base, cell) for base, cell, _ in combo.groups]
        together = Versus(combo.variant, pairs)
        claim.numbers.append((f"{combo.variant} (not deciding): out tok/s ratio to baseline / accuracy difference",
                              f"{C.fmt_interval(together.ratio(TOK_S), 'ratio')} / "
                              f"{C.fmt_interval(together.accuracy_diff, 'points')}"))
    return _decide(claim, checks, f"{len(combos)} combination(s), each beside its parts")


# ---- workloads: multi-turn sessions ------------------------------------------------------------

def _multi_turn(g: TechniqueGroup) -> bool:
    return g.baseline.workload.get("arrival") == "sessions"


def _later_turns(stat: Callable[[Rows], float | None]) -> Callable[[Rows], float | None]:
    """stat over the requests of turn 2 and later (the turns whose prompts carry earlier turns)."""
    return lambda rows: stat([r for r in rows if (r.get("turn") or 0) >= 2])


def multi_turn_prefix_caching(cells: list[CellData]) -> Claim:
    rule = ("Prefix caching on against off on multi-turn sessions (`arrival = \"sessions\"`, each turn's prompt "
            "carrying the earlier turns): reproduced if output tokens/s rises (ratio on / off above 1) and the TTFT p50 "
            "of turns 2 and later falls (ratio on / off below 1), both geometric means over matched cells, "
            "bootstrapped over requests. The paper's \"up to 30%\" is an upper figure, so the size of the gain is "
            "shown, not required.")
    claim = Claim("multi-turn", "Multi-turn prefix caching",
                  "Prefix caching raises throughput by up to 30% in multi-turn conversations.", rule, NOT_TESTED, "")
    vs = versus(cells, "prefix caching", _ref_where(lambda c: not c.field("engine.prefix_cache")), keep=_multi_turn)
    if not vs:
        claim.reason = "needs multi-turn cells with prefix caching on and off: run `rllm-study run --preset multi-turn`"
        return claim
    checks = []
    for v in vs:
        checks += [Check(Condition(f"{v.variant}: out tok/s ratio on / off", v.ratio(TOK_S), 1.0, log=True), "ratio"),
                   Check(Condition(f"{v.variant}: TTFT p50 ratio on / off, turns >= 2",
                                   v.ratio(_later_turns(_pctl("ttft_s", 50))), 1.0, above=False, log=True), "ratio")]
        for side, group in (("off", [r for r, _ in v.pairs]), (v.variant, [c for _, c in v.pairs])):
            turns: dict[str, list[dict]] = {}
            for c in group:
                for k, t in (c.metrics.get("turns", {}).get("by_turn") or {}).items():
                    turns.setdefault(k, []).append(t)
            claim.numbers.append((f"{side} (not deciding): per turn, prompt tokens mean / cache reuse / TTFT p50 s (n)",
                                  "; ".join(f"turn {k}: {C.fmt(_mean(t['prompt_tokens_mean'] for t in ts))} / "
                                            f"{C.fmt(_mean(t['reuse'] for t in ts), 'pct')} / "
                                            f"{C.fmt(_mean(t['ttft_s_p50'] for t in ts))} ({sum(t['n'] for t in ts)})"
                                            for k, ts in sorted(turns.items(), key=lambda kv: int(kv[0])))))
    return _decide(claim, checks, f"{len(vs)} caching variant(s) against off, {sum(len(v.pairs) for v in vs)} matched cell pair(s)")


PILOT_CLAIMS = (memory, stragglers, adaptive_time, domain_preference)
TECHNIQUE_CLAIMS = (weight_quantization, kv_quantization, prefix_caching, speculative)
LOAD_CLAIMS = (bursty_load,)
WORKLOAD_CLAIMS = (multi_turn_prefix_caching, kv_capacity, combined_techniques)


def check_claims(cells: list[CellData]) -> list[Claim]:
    """Every claim (pilot, technique, real-world, workload) checked against the cells."""
    return [check(cells) for check in (*PILOT_CLAIMS, *TECHNIQUE_CLAIMS, *LOAD_CLAIMS, *WORKLOAD_CLAIMS)]
