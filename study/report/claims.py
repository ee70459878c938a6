"""The paper's findings checked against recorded cells, each by a stated rule.

Four pilot findings (reasoning vs direct), four technique takeaways, and the real-world one.
Each check returns a `Claim`: reproduced, not reproduced, or not tested (the cells it needs are
absent, or cannot decide it), with the numbers that decided it. Every number is read from
`cell_metrics`/`request_metrics` and aggregated as the rule says:
  pooled accuracy     the accuracy metric over the requests of several cells taken together
  mean over cells     the arithmetic mean of a per-cell value
  geometric mean      of per-group ratios variant / reference (groups: same data set, budget,
                      workload and repeat)
Pilot claims use the pilot cells at the largest token budget recorded: matched pairs of the same
model prompted to reason and to answer directly (the running-time claim: the reasoning cells).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from rllm_study.metrics import distribution
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
from rllm_study.report.document import NOT_REPRODUCED, NOT_TESTED, REPRODUCED, Claim

PEAK_FACTOR = 2.0        # reasoning peak KV use must be at least this multiple of direct's
MATH_GAIN = 0.05         # reasoning must beat direct on math by at least this (5 points)
ACC_TOLERANCE = 0.03     # "within about 3% accuracy": at most 3 points lower
COLLAPSE = 0.5           # "accuracy nearly collapses": at most half the reference's accuracy
LARGE_MODEL = 10e9       # the paper's sizes split between 7B (small) and 14B and up (large)
PILOT_HINT = "run `rllm-study run --preset pilot` (reasoning and direct cells)"


def _status(ok: bool) -> str:
    return REPRODUCED if ok else NOT_REPRODUCED


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _mean_of(cells: list[CellData], column: C.Column) -> float | None:
    return _mean(C.value(c.metrics, column) for c in cells)


def _acc_text(acc: dict) -> str:
    return f"{C.fmt(acc['accuracy'], 'pct')} ({acc['correct']}/{acc['total']})"


def _largest_budget_pairs(cells: list[CellData]) -> tuple[list[tuple[CellData, CellData]], int | None]:
    pairs = pilot_pairs(cells)
    if not pairs:
        return [], None
    top = max(r.budget for r, _ in pairs)
    return [p for p in pairs if p[0].budget == top], top


# ---- pilot findings ---------------------------------------------------------------------------

def memory(cells: list[CellData]) -> Claim:
    rule = (f"Over matched pilot pairs at the largest budget: reproduced if the reasoning cells' peak KV-cache use "
            f"(mean over cells) is at least {PEAK_FACTOR:g}x the direct cells' and their KV-use coefficient of "
            f"variation (std / mean over the timeline, mean over cells) is higher.")
    claim = Claim("memory", "Memory use and fluctuation",
                  "A reasoning model's KV-cache use is high and swings within a batch (about 3% to 70% for a 7B "
                  "model on MATH-500) while the ordinary model stays under about 3%.", rule, NOT_TESTED, "")
    pairs, top = _largest_budget_pairs(cells)
    pairs = [(r, d) for r, d in pairs if C.value(r.metrics, C.KV_PEAK) is not None and C.value(d.metrics, C.KV_PEAK) is not None]
    if not pairs:
        claim.reason = f"needs reasoning and direct pilot cells with a KV timeline: {PILOT_HINT}"
        return claim
    reasoning, direct = [r for r, _ in pairs], [d for _, d in pairs]
    peak_r, peak_d = _mean_of(reasoning, C.KV_PEAK), _mean_of(direct, C.KV_PEAK)
    cv_r, cv_d = _mean_of(reasoning, C.KV_CV), _mean_of(direct, C.KV_CV)
    peak_ratio = C.ratio(peak_r, peak_d)
    ok = peak_ratio is not None and peak_ratio >= PEAK_FACTOR and cv_r is not None and cv_d is not None and cv_r > cv_d
    claim.status = _status(ok)
    claim.reason = (f"reasoning peak KV is {C.fmt_ratio(peak_ratio)} direct's and its CV is "
                    f"{'higher' if (cv_r or 0) > (cv_d or 0) else 'not higher'} ({len(pairs)} pairs, budget {top})")
    claim.numbers = [("peak KV use, reasoning", C.fmt(peak_r, "pct")), ("peak KV use, direct", C.fmt(peak_d, "pct")),
                     ("peak ratio reasoning / direct", C.fmt_ratio(peak_ratio)),
                     ("KV-use CV, reasoning", C.fmt(cv_r)), ("KV-use CV, direct", C.fmt(cv_d))]
    return claim


def stragglers(cells: list[CellData]) -> Claim:
    rule = ("Over matched pilot pairs at the largest budget: reproduced if the reasoning cells have stragglers "
            "(requests whose E2EL exceeds k x their batch's median; share > 0) and spend a larger share of batch time "
            "in the tail (fewer than half the batch still running; mean over cells) than the direct cells.")
    claim = Claim("stragglers", "Stragglers",
                  "A few hard problems stretch a batch from ten-odd seconds to twenty-plus; in the tail only a few "
                  "requests run. The ordinary model's run times are nearly uniform.", rule, NOT_TESTED, "")
    pairs, top = _largest_budget_pairs(cells)
    if not pairs:
        claim.reason = f"needs reasoning and direct pilot cells: {PILOT_HINT}"
        return claim
    reasoning, direct = [r for r, _ in pairs], [d for _, d in pairs]
    share_r, share_d = _mean_of(reasoning, C.STRAGGLERS), _mean_of(direct, C.STRAGGLERS)
    tail_r, tail_d = _mean_of(reasoning, C.TAIL_SHARE), _mean_of(direct, C.TAIL_SHARE)
    ok = (share_r or 0) > 0 and tail_r is not None and tail_d is not None and tail_r > tail_d
    claim.status = _status(ok)
    claim.reason = (f"reasoning straggler share {C.fmt(share_r, 'pct')}, tail share {C.fmt(tail_r, 'pct')} vs "
                    f"direct {C.fmt(tail_d, 'pct')} ({len(pairs)} pairs, budget {top})")
    think = _mean(r.metrics["stragglers"]["think_tokens_mean"] for r in reasoning)
    rest = _mean(r.metrics["stragglers"]["non_straggler_think_tokens_mean"] for r in reasoning)
    claim.numbers = [("straggler share, reasoning", C.fmt(share_r, "pct")), ("straggler share, direct", C.fmt(share_d, "pct")),
                     ("tail share of batch time, reasoning", C.fmt(tail_r, "pct")), ("tail share of batch time, direct", C.fmt(tail_d, "pct")),
                     ("think tokens of stragglers / others (reasoning)", f"{C.fmt(think)} / {C.fmt(rest)}")]
    return claim


def adaptive_time(cells: list[CellData]) -> Claim:
    rule = ("Over the reasoning pilot cells at the largest budget, requests pooled by the math data sets' difficulty "
            "tier (GSM8K easy < MATH-500 medium < AIME hard): reproduced if both the mean think tokens and the mean "
            "E2EL rise strictly from each tier present to the next harder one (at least two tiers).")
    claim = Claim("adaptive", "Adaptive running time",
                  "A reasoning model's running time and token count grow with difficulty (GSM8K < MATH-500 < AIME).",
                  rule, NOT_TESTED, "")
    reasoning = [c for c in pilot_cells(cells) if c.mode == REASONING]
    if reasoning:
        top = max(c.budget for c in reasoning)
        reasoning = [c for c in reasoning if c.budget == top]
    by_tier: dict[str, list[dict]] = {}
    for c in reasoning:
        if tier(c.dataset) in TIER_ORDER:
            by_tier.setdefault(tier(c.dataset), []).extend(r for r in c.rows if r["completed"])
    tiers = [t for t in TIER_ORDER if by_tier.get(t)]
    if len(tiers) < 2:
        claim.reason = ("needs reasoning pilot cells on math data sets of at least two difficulty tiers "
                        "(e.g. gsm8k and math500 or aime24)")
        return claim
    think = [distribution(r["think_tokens"] for r in by_tier[t])["mean"] for t in tiers]
    e2el = [distribution(r["e2el_s"] for r in by_tier[t])["mean"] for t in tiers]
    capped = [sum(r["finish_reason"] == "length" for r in by_tier[t]) / len(by_tier[t]) for t in tiers]

    def rising(xs):
        return all(a is not None and b is not None and b > a for a, b in zip(xs, xs[1:]))

    ok = rising(think) and rising(e2el)
    claim.status = _status(ok)
    claim.reason = (f"think tokens {'rise' if rising(think) else 'do not rise'} and E2EL "
                    f"{'rises' if rising(e2el) else 'does not rise'} with difficulty at budget {top}")
    if max(capped) >= 0.5:
        claim.reason += f"; {C.fmt(max(capped), 'pct')} of a tier's requests hit the budget, which flattens the ladder"
    claim.numbers = [(f"{t}: think tokens mean / E2EL mean / hit budget (n={len(by_tier[t])})",
                      f"{C.fmt(k)} tok / {C.fmt(e)} s / {C.fmt(h, 'pct')}") for t, k, e, h in zip(tiers, think, e2el, capped)]
    return claim


def domain_preference(cells: list[CellData]) -> Claim:
    rule = (f"Pooled accuracy over matched pilot pairs at the largest budget, per domain: reproduced if reasoning beats "
            f"direct on math by at least {100 * MATH_GAIN:g} points and its gain on every other domain is under half "
            f"the math gain.")
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
    gain = {d: acc_r[d]["accuracy"] - acc_d[d]["accuracy"] for d in domains}
    ok = gain["math"] >= MATH_GAIN and all(gain[d] < gain["math"] / 2 for d in others)
    claim.status = _status(ok)
    claim.reason = "; ".join(f"{d}: reasoning {C.points(acc_r[d]['accuracy'], acc_d[d]['accuracy'])} vs direct" for d in domains) + f" (budget {top})"
    claim.numbers = [(f"{d}: reasoning / direct", f"{_acc_text(acc_r[d])} / {_acc_text(acc_d[d])}") for d in domains]
    return claim


# ---- technique takeaways ------------------------------------------------------------------------

@dataclass
class Versus:
    """One variant against its technique's reference cell, over every group where both ran."""

    variant: str
    pairs: list[tuple[CellData, CellData]]  # (reference, variant)

    @property
    def accuracy(self) -> tuple[dict, dict]:
        return pooled_accuracy([r for r, _ in self.pairs]), pooled_accuracy([v for _, v in self.pairs])

    def ratio(self, column: C.Column) -> float | None:
        """Geometric mean over groups of variant / reference."""
        rs = [C.ratio(C.value(v.metrics, column), C.value(r.metrics, column)) for r, v in self.pairs]
        rs = [x for x in rs if x]
        return statistics.geometric_mean(rs) if rs else None

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
    return all(v.accuracy[0]["correct"] == 0 for v in vs)


def weight_quantization(cells: list[CellData]) -> Claim:
    rule = (f"Each variant with fewer bits per weight than its group's highest-precision variant (same model, data set, "
            f"budget, workload): reproduced if every one keeps pooled accuracy within {100 * ACC_TOLERANCE:g} points "
            f"of it and reaches at least its output tokens/s (geometric mean over groups).")
    claim = Claim("quantization", "Weight quantization",
                  "4-bit (GPTQ-Int4) and FP8 weights stay within about 3% accuracy with equal or better serving.",
                  rule, NOT_TESTED, "")
    vs = versus(cells, "weight quantization", lambda g: max(g.variants.values(), key=_bits))
    vs = [v for v in vs if _bits(v.pairs[0][1]) < _bits(v.pairs[0][0])]
    if not vs:
        claim.reason = "needs cells of one model at several weight quantizations: run `rllm-study run --preset quantization`"
        return claim
    verdicts = []
    for v in vs:
        (ref_acc, acc), tok = v.accuracy, v.ratio(C.OUT_TOK_S)
        keeps = ref_acc["accuracy"] is not None and acc["accuracy"] is not None and acc["accuracy"] >= ref_acc["accuracy"] - ACC_TOLERANCE
        verdicts.append(keeps and tok is not None and tok >= 1.0)
        claim.numbers.append((f"{v.variant} ({_bits(v.pairs[0][1]):.2f} bpw) vs {_bits(v.pairs[0][0]):.2f} bpw: accuracy / out tok/s / E2EL p50",
                              f"{C.points(acc['accuracy'], ref_acc['accuracy'])} / {C.fmt_ratio(tok)} / {C.fmt_ratio(v.ratio(C.E2EL_P50))}"))
    claim.status = _status(all(verdicts))
    claim.reason = f"{sum(verdicts)} of {len(vs)} lower-bit variants keep accuracy and speed"
    if _no_answers(vs):
        claim.reason += "; the reference answered nothing correctly, so only speed was really tested"
    return claim


def _kv_plain(c: CellData) -> bool:
    return c.field("engine.type_k") in ("f16", "f32", "bf16") and c.field("engine.type_v") in ("f16", "f32", "bf16") and not c.field("engine.kv_bits")


def kv_quantization(cells: list[CellData]) -> Claim:
    rule = (f"Each quantized-KV variant against its group's f16 KV variant. Models under {LARGE_MODEL / 1e9:g}B "
            f"parameters (the paper's 7B case): reproduced if accuracy collapses (pooled accuracy at most "
            f"{COLLAPSE:g}x the f16 cache's). Larger models: reproduced if output tokens/s rises at accuracy within "
            f"{100 * ACC_TOLERANCE:g} points.")
    claim = Claim("kv-cache", "KV-cache quantization",
                  "An FP8 KV cache is faster for 14B and 32B models at similar accuracy, but accuracy nearly collapses "
                  "for the 7B model.", rule, NOT_TESTED, "")
    vs = versus(cells, "KV-cache quantization", _ref_where(_kv_plain))
    if not vs:
        claim.reason = "needs cells with f16 and quantized KV caches: run `rllm-study run --preset kv-cache`"
        return claim
    verdicts = []
    for v in vs:
        (ref_acc, acc), tok = v.accuracy, v.ratio(C.OUT_TOK_S)
        claim.numbers.append((f"{v.variant} ({'large' if v.large else 'small'} model): accuracy vs f16 cache / out tok/s / KV peak",
                              f"{_acc_text(acc)} vs {_acc_text(ref_acc)} / {C.fmt_ratio(tok)} / {C.fmt_ratio(v.ratio(C.KV_PEAK))}"))
        if ref_acc["accuracy"] is None or acc["accuracy"] is None or (not v.large and ref_acc["correct"] == 0):
            continue
        if v.large:
            verdicts.append(tok is not None and tok > 1.0 and acc["accuracy"] >= ref_acc["accuracy"] - ACC_TOLERANCE)
        else:
            verdicts.append(acc["accuracy"] <= COLLAPSE * ref_acc["accuracy"])
    if not verdicts:
        claim.reason = "the f16-cache reference answered nothing correctly, so an accuracy collapse cannot show"
        return claim
    claim.status = _status(all(verdicts))
    claim.reason = f"{sum(verdicts)} of {len(verdicts)} quantized-KV variants behave as the paper found for their model size"
    return claim


def prefix_caching(cells: list[CellData]) -> Claim:
    rule = (f"Prefix caching on against off, on single-turn workloads (no shared prefix), E2EL p50 ratio on / off "
            f"(geometric mean over groups). Models under {LARGE_MODEL / 1e9:g}B: reproduced if the ratio is above 1 "
            f"(caching adds latency). Larger models: reproduced if it is below 1.")
    claim = Claim("prefix-cache", "Prefix caching",
                  "Prefix caching helps 14B and larger models; for the 7B model it adds latency, because single-turn "
                  "requests share no prefix and the bookkeeping is pure cost.", rule, NOT_TESTED, "")
    single = versus(cells, "prefix caching", _ref_where(lambda c: not c.field("engine.prefix_cache")),
                    keep=lambda g: not g.baseline.workload.get("shared_prefix"))
    shared = versus(cells, "prefix caching", _ref_where(lambda c: not c.field("engine.prefix_cache")),
                    keep=lambda g: bool(g.baseline.workload.get("shared_prefix")))
    for v in shared:
        claim.numbers.append((f"{v.variant}, shared-prefix workload (not deciding): E2EL p50 / TTFT p50 / hit rate",
                              f"{C.fmt_ratio(v.ratio(C.E2EL_P50))} / {C.fmt_ratio(v.ratio(C.TTFT_P50))} / "
                              f"{C.fmt(_mean_of([c for _, c in v.pairs], C.PREFIX_HITS), 'pct')}"))
    if not single:
        claim.reason = "needs single-turn cells with prefix caching on and off: run `rllm-study run --preset prefix-cache`"
        return claim
    verdicts = []
    for v in single:
        e2el = v.ratio(C.E2EL_P50)
        verdicts.append(e2el is not None and (e2el < 1.0 if v.large else e2el > 1.0))
        claim.numbers.insert(0, (f"{v.variant}, single-turn ({'large' if v.large else 'small'} model): E2EL p50 / TTFT p50 / hit rate",
                                 f"{C.fmt_ratio(e2el)} / {C.fmt_ratio(v.ratio(C.TTFT_P50))} / "
                                 f"{C.fmt(_mean_of([c for _, c in v.pairs], C.PREFIX_HITS), 'pct')}"))
    claim.status = _status(all(verdicts))
    claim.reason = f"{sum(verdicts)} of {len(verdicts)} single-turn comparisons behave as the paper found for their model size"
    return claim


def speculative(cells: list[CellData]) -> Claim:
    rule = (f"Each speculative variant against no speculation: reproduced if every one shortens E2EL p50 (ratio < 1, "
            f"geometric mean over groups) with pooled accuracy within {100 * ACC_TOLERANCE:g} points. The paper also "
            f"saw lower tokens/s and a worse TTFVT: both ratios are shown, not deciding.")
    claim = Claim("speculative", "Speculative decoding",
                  "N-gram speculative decoding shortens end-to-end time at every model size with no accuracy loss, but "
                  "lowers tokens/s and worsens TTFVT.", rule, NOT_TESTED, "")
    vs = versus(cells, "speculative decoding", _ref_where(lambda c: not c.field("engine.spec")))
    if not vs:
        claim.reason = "needs cells with and without speculative decoding: run `rllm-study run --preset speculative`"
        return claim
    verdicts = []
    for v in vs:
        (ref_acc, acc), e2el = v.accuracy, v.ratio(C.E2EL_P50)
        keeps = ref_acc["accuracy"] is None or (acc["accuracy"] is not None and acc["accuracy"] >= ref_acc["accuracy"] - ACC_TOLERANCE)
        verdicts.append(e2el is not None and e2el < 1.0 and keeps)
        claim.numbers.append((f"{v.variant}: E2EL p50 / accuracy / out tok/s / TTFVT p50 / draft acceptance",
                              f"{C.fmt_ratio(e2el)} / {C.points(acc['accuracy'], ref_acc['accuracy'])} / "
                              f"{C.fmt_ratio(v.ratio(C.OUT_TOK_S))} / {C.fmt_ratio(v.ratio(C.TTFVT_P50))} / "
                              f"{C.fmt(_mean_of([c for _, c in v.pairs], C.DRAFT_ACCEPT), 'pct')}"))
    claim.status = _status(all(verdicts))
    claim.reason = f"{sum(verdicts)} of {len(vs)} speculative variants are faster end to end without losing accuracy"
    if _no_answers(vs):
        claim.reason += "; the reference answered nothing correctly, so the accuracy part is uninformative"
    return claim


# ---- real-world workload ---------------------------------------------------------------------

def _cv(c: CellData) -> float | None:
    wl = c.workload
    return 1.0 if wl.get("arrival") == "poisson" else wl.get("cv") if wl.get("arrival") == "gamma" else None


def bursty_load(cells: list[CellData]) -> Claim:
    rule = ("Open-loop Poisson/Gamma cells at the same rate (same model, data set, budget), lowest against highest "
            "arrival CV: reproduced if, at every rate run with two or more CVs, both the queue wait p90 and the E2EL "
            "p90 are higher at the highest CV.")
    claim = Claim("bursty", "Bursty arrivals",
                  "Under bursty Gamma arrivals a reasoning model's KV use sits near capacity for long stretches, "
                  "requests pile up in the queue and turnaround grows.", rule, NOT_TESTED, "")
    verdicts = []
    for members in load_groups(cells).values():
        by_rate: dict[float, list[CellData]] = {}
        for c in members:
            if _cv(c) is not None:
                by_rate.setdefault(c.workload.get("rate"), []).append(c)
        for rate, group in sorted(by_rate.items()):
            if len({_cv(c) for c in group}) < 2:
                continue
            low, high = min(group, key=_cv), max(group, key=_cv)
            q = (C.value(low.metrics, C.QUEUE_P90), C.value(high.metrics, C.QUEUE_P90))
            e = (C.value(low.metrics, C.E2EL_P90), C.value(high.metrics, C.E2EL_P90))
            verdicts.append(None not in q + e and q[1] > q[0] and e[1] > e[0])
            n = f"n={low.metrics['latency']['e2el_s']['count']}/{high.metrics['latency']['e2el_s']['count']}"
            claim.numbers.append((f"{low.dataset}, rate {rate}/s, CV {_cv(low):g} -> {_cv(high):g} ({n}): queue p90 / E2EL p90 / KV peak",
                                  f"{C.fmt(q[0])} -> {C.fmt(q[1])} s / {C.fmt(e[0])} -> {C.fmt(e[1])} s / "
                                  f"{C.cell_value(low.metrics, C.KV_PEAK)} -> {C.cell_value(high.metrics, C.KV_PEAK)}"))
    if not verdicts:
        claim.reason = "needs open-loop cells at one rate with two or more CVs: run `rllm-study run --preset realworld`"
        return claim
    claim.status = _status(all(verdicts))
    claim.reason = f"queues and turnaround grow with burstiness at {sum(verdicts)} of {len(verdicts)} rates"
    return claim


PILOT_CLAIMS = (memory, stragglers, adaptive_time, domain_preference)
TECHNIQUE_CLAIMS = (weight_quantization, kv_quantization, prefix_caching, speculative)
LOAD_CLAIMS = (bursty_load,)


def check_claims(cells: list[CellData]) -> list[Claim]:
    """Every claim (pilot, technique, real-world) checked against the cells."""
    return [check(cells) for check in (*PILOT_CLAIMS, *TECHNIQUE_CLAIMS, *LOAD_CLAIMS)]
