"""Exact temperature / top-k / top-p sampling from one row of logits, on the host, in numpy.

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
over the whole row (float32 weights, numpy's pairwise sum, relative error about log2(V) float32
ulps) and cuts N from the candidates C = {l >= M - d / s}, d = max(0, ln(V p / (1 - p))): each
token below weighs less than e^-d, together less than V e^-d = (1 - p) / p <= (1 - p) Z_C / p,
hence Z_C >= p Z and C contains N (tried first with d = NEAR): five vectorised passes and a
sort of C. Either way far less than the n_vocab-entry candidate array (one struct per token)
that llama.cpp's sampler chain builds and sorts per sequence per token.

Randomness: one `numpy.random.Generator(PCG64(seed))` per request, one uniform draw per
sampled token, so the same seed and the same logits give the same tokens.
"""

from __future__ import annotations

import math
import threading

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


def sample(logits: np.ndarray, temperature: float, top_p: float, top_k: int, order: str, rng: np.random.Generator) -> int:
    """One token id drawn from the distribution of the module docstring over `logits` (1-D, any float)."""
    if temperature == 0:
        return int(logits.argmax())
    n = len(logits)
    scale = 1.0 / temperature if order == TEMPERATURE_FIRST else 1.0
    if 0 < top_k < n:
        ids = _top_k(logits, top_k)
        top = float(logits[ids].max())
    elif top_p < 1:
        return _sample_nucleus(logits, temperature, top_p, scale, rng)
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
_THREAD = threading.local()


def _scratch(n: int) -> np.ndarray:
    """This thread's float32 work row of n entries, allocated once (a fresh 0.6 MB array per
    token would cost page faults on every draw)."""
    buf = getattr(_THREAD, "buf", None)
    if buf is None or len(buf) != n:
        buf = _THREAD.buf = np.empty(n, dtype=np.float32)
    return buf


def _sample_nucleus(logits: np.ndarray, temperature: float, top_p: float, scale: float, rng: np.random.Generator) -> int:
    """top_p < 1 without top_k (see "Cost" in the module docstring)."""
    top = float(logits.max())
    band = np.flatnonzero(logits >= np.float32(top - BAND / scale))
    chosen = _nucleus_in_band(logits, band, top, top_p, scale) if len(band) <= BAND_MAX else None
    if chosen is None:
        chosen = _nucleus_of_row(logits, top, top_p, scale)
    return _draw(chosen, logits[chosen].astype(np.float64), top, temperature, rng)


def _nucleus_in_band(logits: np.ndarray, band: np.ndarray, top: float, top_p: float, scale: float) -> np.ndarray | None:
    """N from the band's weights and the bound on the rest, or None when the bound leaves it open."""
    weights = np.exp((logits[band].astype(np.float64) - top) * scale)
    z_low = float(weights.sum())
    z_high = z_low + (len(logits) - len(band)) * math.exp(-BAND) * (1 + 1e-4)  # 1e-4: the float32 rounding of the edge
    near = weights >= math.exp(-NEAR)
    if weights[near].sum() >= top_p * z_high:  # N is among the near tokens: sort only those
        band, weights = band[near], weights[near]
    rank = np.argsort(-logits[band], kind="stable")  # by logit descending, then id
    cum = np.cumsum(weights[rank])
    keep, last = np.searchsorted(cum, (top_p * z_low, top_p * z_high)) + 1
    return band[rank[:keep]] if keep == last <= len(band) else None


def _nucleus_of_row(logits: np.ndarray, top: float, top_p: float, scale: float) -> np.ndarray:
    """N from the exact normaliser of the whole row, cut from the candidates C (see "Cost")."""
    n = len(logits)
    weights = _scratch(n)
    np.subtract(logits, np.float32(top), out=weights, dtype=np.float32)
    if scale != 1.0:
        np.multiply(weights, np.float32(scale), out=weights)
    np.exp(weights, out=weights)
    z = float(np.add.reduce(weights))
    deepest = max(0.0, math.log(n * top_p / (1 - top_p)))
    for depth in sorted({min(NEAR, deepest), deepest}):
        inside = np.flatnonzero(logits >= np.float32(top - depth / scale))
        inside = inside[np.argsort(-logits[inside], kind="stable")]  # by logit descending, then id
        cum = np.cumsum(weights[inside], dtype=np.float64)
        if cum[-1] >= top_p * z:
            break
    return inside[:min(int(np.searchsorted(cum, top_p * z)) + 1, len(inside))]
