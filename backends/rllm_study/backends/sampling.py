"""Exact temperature / top-k / top-p sampling from rows of logits, on the host, all of a step's rows at once.

The distribution (l = the row's V logits, T = temperature, p = top_p, k = top_k):
  - T = 0: greedy, the first maximum of l (llama.cpp's greedy sampler picks the same token).
  - top_k > 0 keeps the k highest logits (ties: lower token id first); everything below is taken
    over those tokens only. top_k = 0 keeps all V.
  - order "temperature_first" (vLLM, Hugging Face, and so the paper's runs): q = softmax(l / T);
    the nucleus N is the smallest set of most probable tokens (ties: lower id first) whose q
    sums to >= p; the draw is from q restricted to N, renormalised.
  - order "top_p_first" (the default chains of llama.cpp and mlx-lm): N is taken from
    softmax(l) (temperature 1), the draw from softmax(l / T) restricted to N.
  p = 1 keeps every token (a full softmax).

Cost. With s the scale of the nucleus' softmax (1/T for temperature_first, 1 for
top_p_first) and M the row's maximum, the band B = {l >= M - BAND / s} holds every token that
weighs at least e^-BAND (weights w = exp((l - M) s), the maximum weighs 1). Each of the V - |B|
tokens outside weighs less than e^-BAND, so the normaliser Z lies in [Z_B, Z_B + (V - |B|)
e^-BAND] (float64 sums). N is the shortest prefix of B, by logit descending, whose weight
reaches p Z: when the prefix for p Z_B and the one for the upper bound are the same, that is N
whatever Z is inside the interval, and no weight outside B is computed (only B's tokens within
NEAR nats of the maximum are sorted when they alone reach p of the upper bound). So a peaked
row costs a maximum and a comparison over the vocabulary and a sort of a few tokens.

Otherwise (a tail of many tokens just below the band decides where N ends), or when B has more
than BAND_MAX tokens (a flat row; top_p_first's scale 1 widens B), `_nucleus_of_row` sums Z
over the whole row (float64 weights, pairwise sum) and cuts N from the candidates
C = {l >= M - d / s}, d = max(0, ln(V p / (1 - p))): each
token below weighs less than e^-d, together less than V e^-d = (1 - p) / p <= (1 - p) Z_C / p,
hence Z_C >= p Z and C contains N (tried first with d = NEAR): a few passes over the row and a
sort of C. Either way far less than the n_vocab-entry candidate array (one struct per token)
that llama.cpp's sampler chain builds and sorts per sequence per token.

Native pass. `draw_rows` takes every row of a decode step at once: greedy rows (the first
maximum) and nucleus rows go through one numba-compiled pass that holds no GIL and is split over
the machine's cores (threads of a pool); the row's maximum and the band are found with
vectorised block maxima (floats compared as integer keys), so a peaked row costs two reads of
the vocabulary. Rows with top_k > 0 or top_p = 1 are drawn in numpy, one by one. The numbers
are numpy's: float64 weights, the band's sums added in numpy's pairwise order (`_pairwise_sum`),
cumulative sums in order, the same searches; so a row draws the token the numpy sampler before
it drew with the same generator (tested against it on 5,120 draws of vocabulary-sized rows: no
difference). Only the whole-row path's normaliser differs: float64 weights here, float32 there,
which can move N's edge only where p Z falls within float32 rounding of a cumulative sum. The
first call in a process loads the compiled pass from numba's cache (or compiles it, seconds).

Randomness: one `numpy.random.Generator(PCG64(seed))` per request, one uniform draw per
sampled token, so the same seed and the same logits give the same tokens.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

TEMPERATURE_FIRST = "temperature_first"
TOP_P_FIRST = "top_p_first"
ORDERS = (TEMPERATURE_FIRST, TOP_P_FIRST)
DEFAULT_ORDER = TEMPERATURE_FIRST


def new_rng(seed: int) -> np.random.Generator:
    """A request's own random stream (see the module docstring)."""
    return np.random.Generator(np.random.PCG64(seed & 0xFFFFFFFFFFFFFFFF))


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k highest logits, ties at the k-th value broken by lower id."""
    kth = np.partition(logits, len(logits) - k)[len(logits) - k]
    above = np.flatnonzero(logits > kth)
    ties = np.flatnonzero(logits == kth)[: k - len(above)]
    return np.concatenate((above, ties))


def _sample_exact(
    logits: np.ndarray, temperature: float, top_p: float, top_k: int, order: str, rng: np.random.Generator
) -> int:
    """top_k > 0 or top_p = 1 (see draw_rows): the kept tokens' weights in full, in numpy."""
    n = len(logits)
    scale = 1.0 / temperature if order == TEMPERATURE_FIRST else 1.0
    if 0 < top_k < n:
        ids = _top_k(logits, top_k)
        top = float(logits[ids].max())
    else:
        ids = np.arange(n)
        top = float(logits.max())
    vals = logits[ids].astype(np.float64)
    rank = np.lexsort((ids, -vals))  # by logit descending, then id
    ids, vals = ids[rank], vals[rank]
    if top_p < 1:  # within the top k: the normaliser is exact
        cum = np.cumsum(np.exp((vals - top) * scale))
        keep = int(np.searchsorted(cum, top_p * cum[-1])) + 1
        ids, vals = ids[:keep], vals[:keep]
    return _draw(ids, vals, top, temperature, rng)


def _draw(ids: np.ndarray, vals: np.ndarray, top: float, temperature: float, rng: np.random.Generator) -> int:
    """One of `ids` with probability proportional to exp((vals - top) / temperature)."""
    w = np.exp((vals - top) / temperature)
    cum = np.cumsum(w)
    j = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return int(ids[min(j, len(ids) - 1)])


BAND = 20.0  # nats: the band's depth (see "Cost"); V e^-BAND = 3e-4 at V = 152k
NEAR = 4.0  # nats: the band's tokens sorted first, when they alone reach p of the upper bound
BAND_MAX = 4096  # a wider band (a flat row, or top_p_first's scale 1) takes the whole-row path
GREEDY, NUCLEUS = 0, 1  # how a row is drawn natively (draw_rows' `kind`)


@numba.njit(cache=True, nogil=True)
def _block_sum(a: np.ndarray, lo: int, n: int) -> float:
    """sum(a[lo:lo + n]) for n <= 128 as numpy's pairwise sum adds a block (8 lanes, then the rest)."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        k = lo + i
        r0, r1, r2, r3 = r0 + a[k], r1 + a[k + 1], r2 + a[k + 2], r3 + a[k + 3]
        r4, r5, r6, r7 = r4 + a[k + 4], r5 + a[k + 5], r6 + a[k + 6], r7 + a[k + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@numba.njit(cache=True, nogil=True)
def _pairwise_sum(a: np.ndarray) -> float:
    """sum(a) in numpy's pairwise order (its add.reduce: a block of up to 128 by _block_sum, a
    longer run as the sum of its halves cut at a multiple of 8), so a sum here rounds exactly as
    numpy's does. The recursion is unrolled onto a stack (depth log2(len / 128) + 1)."""
    if len(a) <= 128:
        return _block_sum(a, 0, len(a))
    los = np.empty(64, dtype=np.int64)
    ns = np.empty(64, dtype=np.int64)
    states = np.zeros(64, dtype=np.int64)
    sums = np.empty(64)
    los[0], ns[0], depth, held = 0, len(a), 1, 0
    while depth:
        lo, n = los[depth - 1], ns[depth - 1]
        if n <= 128:
            sums[held] = _block_sum(a, lo, n)
            held += 1
            depth -= 1
            continue
        half = n // 2 - (n // 2) % 8
        if states[depth - 1] == 2:  # both halves summed: replace them by their sum
            sums[held - 2] += sums[held - 1]
            held -= 1
            depth -= 1
            continue
        first = states[depth - 1] == 0
        states[depth - 1] += 1
        los[depth], ns[depth], states[depth] = (lo, half, 0) if first else (lo + half, n - half, 0)
        depth += 1
    return sums[0]


@numba.njit(cache=True, nogil=True)
def _ranked(row: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of `ids` (ascending) by logit descending, then id."""
    return np.argsort(-row[ids], kind="mergesort")


@numba.njit(cache=True, nogil=True)
def _nucleus_in_band(row: np.ndarray, band: np.ndarray, top: float, top_p: float, scale: float) -> np.ndarray:
    """N from the band's weights and the bound on the rest; empty when the bound leaves it open."""
    weights = np.empty(len(band))
    for i in range(len(band)):
        weights[i] = math.exp((np.float64(row[band[i]]) - top) * scale)
    z_low = _pairwise_sum(weights)
    z_high = z_low + (len(row) - len(band)) * math.exp(-BAND) * (1 + 1e-4)  # 1e-4: the float32 rounding of the edge
    near = weights >= math.exp(-NEAR)
    near_weights = weights[near]
    if _pairwise_sum(near_weights) >= top_p * z_high:  # N is among the near tokens: sort only those
        band, weights = band[near], near_weights
    rank = _ranked(row, band)
    cum = np.cumsum(weights[rank])
    keep = np.searchsorted(cum, top_p * z_low) + 1
    last = np.searchsorted(cum, top_p * z_high) + 1
    if keep == last and keep <= len(band):
        return band[rank[:keep]]
    return band[:0]


@numba.njit(cache=True, nogil=True)
def _nucleus_of_row(row: np.ndarray, top: float, top_p: float, scale: float) -> np.ndarray:
    """N from the exact normaliser of the whole row, cut from the candidates C (see "Cost")."""
    n = len(row)
    weights = np.empty(n)
    for i in range(n):
        weights[i] = math.exp((np.float64(row[i]) - top) * scale)
    z = _pairwise_sum(weights)
    deepest = max(0.0, math.log(n * top_p / (1 - top_p)))
    for depth in (min(NEAR, deepest), deepest):
        inside = np.flatnonzero(row >= np.float32(top - depth / scale))
        inside = inside[_ranked(row, inside)]
        cum = np.cumsum(weights[inside])
        if cum[-1] >= top_p * z:
            break
    return inside[: min(np.searchsorted(cum, top_p * z) + 1, len(inside))]


@numba.njit(cache=True, nogil=True, inline="always")
def _key(bits: int) -> int:
    """An integer that orders float32s (given as their int32 bits, no NaN) as their values: the
    sign bit flips the order of the other bits of a negative float. Integer maxima vectorise."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@numba.njit(cache=True, nogil=True)
def _row_max(row: np.ndarray) -> float:
    """max(row) of a float32 row without NaN, as the maximum of _key."""
    bits = row.view(np.int32)
    best = _key(bits[0])
    for i in range(len(bits)):
        key = _key(bits[i])
        best = key if key > best else best
    return np.array([_key(best)], dtype=np.int32).view(np.float32)[0]


@numba.njit(cache=True, nogil=True)
def _collect(row: np.ndarray, edge: float, out: np.ndarray) -> int:
    """Write the ids of row's entries >= edge, ascending, into `out`; their count, or len(out) + 1
    once more than len(out) are found. Only blocks of 2048 entries, and within them of 128,
    whose maximum reaches the edge are searched (a vectorised maximum per block)."""
    size, n = 0, len(row)
    for start in range(0, n, 2048):
        stop = min(start + 2048, n)
        if _row_max(row[start:stop]) < edge:
            continue
        for lo in range(start, stop, 128):
            hi = min(lo + 128, stop)
            if _row_max(row[lo:hi]) < edge:
                continue
            for i in range(lo, hi):
                if row[i] >= edge:
                    if size == len(out):
                        return size + 1
                    out[size] = i
                    size += 1
    return size


@numba.njit(cache=True, nogil=True)
def _first_max(row: np.ndarray) -> int:
    """The id of row's first maximum (numpy's argmax) in one vectorised pass: the maximum of each
    block of 2048 entries, then a search of the first block that holds the highest."""
    best, at = _row_max(row[:2048]), 0
    for start in range(2048, len(row), 2048):
        top = _row_max(row[start : start + 2048])
        if top > best:
            best, at = top, start
    for i in range(at, len(row)):
        if row[i] == best:
            return i
    return at


@numba.njit(cache=True, nogil=True)
def _draw_nucleus(row: np.ndarray, temperature: float, top_p: float, scale: float, u: float) -> int:
    """top_p < 1 without top_k (see "Cost" in the module docstring); u: the request's uniform draw."""
    top = np.float64(_row_max(row))
    band = np.empty(BAND_MAX, dtype=np.int64)
    size = _collect(row, np.float32(top - BAND / scale), band)
    chosen = _nucleus_in_band(row, band[:size], top, top_p, scale) if size <= BAND_MAX else band[:0]
    if len(chosen) == 0:
        chosen = _nucleus_of_row(row, top, top_p, scale)
    cum = np.cumsum(np.exp((row[chosen].astype(np.float64) - top) / temperature))
    j = np.searchsorted(cum, u * cum[-1], side="right")
    return chosen[min(j, len(chosen) - 1)]


@numba.njit(cache=True, nogil=True)
def _draw_rows(block, rows, kind, temperature, top_p, scale, uniform, out) -> None:
    """out[i] = the token of block[rows[i]]: its first maximum (kind GREEDY) or a nucleus draw."""
    for i in range(len(rows)):
        row = block[rows[i]]
        if kind[i] == GREEDY:
            out[i] = _first_max(row)
        else:
            out[i] = _draw_nucleus(row, temperature[i], top_p[i], scale[i], uniform[i])


_POOL: ThreadPoolExecutor | None = None
PARALLEL_FROM = 4  # rows per step from which the rows are split over the cores
CORES = os.cpu_count() or 1  # read once: os.cpu_count() reads /sys (about 10 us) on every call


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=CORES, thread_name_prefix="draw")
    return _POOL


def draw_rows(block: np.ndarray, rows: list[int], draws: list[tuple]) -> list[int]:
    """One token per (row of `block`, draw): draws[i] = (temperature, top_p, top_k, order, rng) of the
    request whose logits are block[rows[i]] (block: 2-D float32, C-contiguous, e.g. a decode step's
    logits). The distribution of the module docstring; greedy and nucleus rows are drawn in one
    native pass over all rows (numba, without the GIL, in parallel over the machine's cores),
    rows with top_k > 0 or top_p = 1 in numpy. Each sampled row takes one uniform from its rng."""
    n = len(rows)
    out = np.empty(n, dtype=np.int64)
    native = np.ones(n, dtype=np.bool_)
    kind = np.zeros(n, dtype=np.int64)
    temperature = np.zeros(n)
    top_p = np.ones(n)
    scale = np.ones(n)
    uniform = np.zeros(n)
    for i, (t, p, k, order, rng) in enumerate(draws):
        if t == 0:
            continue
        if 0 < k < block.shape[1] or p >= 1:
            native[i] = False
            out[i] = _sample_exact(block[rows[i]], t, p, k, order, rng)
            continue
        kind[i], temperature[i], top_p[i] = NUCLEUS, t, p
        scale[i] = 1.0 / t if order == TEMPERATURE_FIRST else 1.0
        uniform[i] = rng.random()
    picked = np.flatnonzero(native)
    if len(picked):
        rows_at = np.asarray(rows, dtype=np.int64)[picked]
        args = (rows_at, kind[picked], temperature[picked], top_p[picked], scale[picked], uniform[picked])
        drawn = np.empty(len(picked), dtype=np.int64)
        parts = min(CORES, len(picked) // PARALLEL_FROM) or 1
        if parts == 1:
            _draw_rows(block, *args, drawn)
        else:  # the kernel releases the GIL: one contiguous share of the rows per core
            cuts = np.linspace(0, len(picked), parts + 1).astype(int)
            jobs = [
                _pool().submit(_draw_rows, block, *(x[lo:hi] for x in args), drawn[lo:hi])
                for lo, hi in zip(cuts[:-1], cuts[1:])
            ]
            for job in jobs:
                job.result()
        out[picked] = drawn
    return out.tolist()


def sample(
    logits: np.ndarray, temperature: float, top_p: float, top_k: int, order: str, rng: np.random.Generator
) -> int:
    """One token id drawn from the distribution of the module docstring over `logits` (1-D; not
    float32 is converted): draw_rows on one row."""
    row = np.ascontiguousarray(logits, dtype=np.float32)
    return draw_rows(row[np.newaxis], [0], [(temperature, top_p, top_k, order, rng)])[0]
