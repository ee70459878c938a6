"""A quantized KV cache that mlx-lm's continuous batching can use.

mlx-lm quantizes the KV cache (`kv_bits`) only for one sequence at a time: its
`QuantizedKVCache` has no batched form, so `BatchGenerator` (and `mlx_lm.server`) fall back to
serving requests one by one. `BatchQuantizedKVCache` is `BatchKVCache` (left-padded rows, one
offset per row) with each of keys and values stored as mlx's affine-quantized triple
(packed uint32 words, scales, biases; `group_size` elements share one scale and bias).
Tokens are quantized as they enter the cache, prompt included (as llama.cpp's quantized cache
does), and attention runs on the quantized triples through mlx-lm's quantized SDPA, which it
selects because the cache has `bits`.

Bytes per token per layer = 2 * n_kv_heads * head_dim * (bits / 8 + 2 * 2 / group_size)
(packed values plus a float16 scale and bias per group).

A row of the batch holds exactly the values that the sequence alone would hold only when the
model's matmuls give that row the same floats in both (on Linux, with one OpenBLAS thread): a
1e-6 difference that crosses a rounding boundary moves a value by a whole quantization step, so
batched and alone greedy outputs can part where two tokens nearly tie.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.cache import BatchKVCache, QuantizedKVCache, dynamic_roll

KV_GROUP_SIZE = 64  # mlx-lm's default group size for `kv_bits`


class SeqQuantizedKVCache(QuantizedKVCache):
    """mlx-lm's single-sequence quantized cache, made mergeable into a batch."""

    def size(self) -> int:
        return self.offset

    @classmethod
    def merge(cls, caches: list[SeqQuantizedKVCache]) -> BatchQuantizedKVCache:
        return BatchQuantizedKVCache.merge(caches)


def _quantized_zeros(shape: tuple[int, int, int], dim: int, dtype, group_size: int, bits: int):
    """Empty (packed words, scales, biases) for `dim` elements quantized to `bits` per group."""
    return (
        mx.zeros((*shape, dim * bits // 32), dtype=mx.uint32),
        mx.zeros((*shape, dim // group_size), dtype=dtype),
        mx.zeros((*shape, dim // group_size), dtype=dtype),
    )


class BatchQuantizedKVCache(BatchKVCache):
    """`BatchKVCache` whose keys and values are quantized triples (see the module docstring)."""

    def __init__(self, left_padding: list[int], group_size: int = KV_GROUP_SIZE, bits: int = 8):
        super().__init__(left_padding)
        self.group_size = group_size
        self.bits = bits

    def update_and_fetch(self, keys, values):
        batch, heads, steps, k_dim = keys.shape
        prev = self._idx
        if self.keys is None or prev + steps > self.keys[0].shape[2]:
            size = (self.step + steps - 1) // self.step * self.step
            shape = (batch, heads, size)
            new_k = _quantized_zeros(shape, k_dim, keys.dtype, self.group_size, self.bits)
            new_v = _quantized_zeros(shape, values.shape[3], values.dtype, self.group_size, self.bits)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                grow = lambda old, new: mx.concatenate([old[..., :prev, :], new], axis=2)  # noqa: E731
                self.keys = tree_map(grow, self.keys, new_k)
                self.values = tree_map(grow, self.values, new_v)
        self.offset = self.offset + steps
        self._idx += steps
        q_keys = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        q_values = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        for i in range(3):
            self.keys[i][..., prev : self._idx, :] = q_keys[i]
            self.values[i][..., prev : self._idx, :] = q_values[i]
        return self.keys_and_values()

    def keys_and_values(self):
        return tree_map(lambda x: x[..., : self._idx, :], (self.keys, self.values))

    def finalize(self):
        if self._right_padding is not None:
            shift = self._right_padding[:, None]
            roll = lambda x: dynamic_roll(x, shift, axis=2)  # noqa: E731
            self.keys, self.values = tree_map(roll, (self.keys, self.values))
            self.offset = self.offset - self._right_padding
            self.left_padding += self._right_padding
            self._right_padding = None

    def filter(self, batch_indices):
        if self.keys is not None:
            self.keys, self.values = tree_map(lambda x: x[batch_indices], (self.keys, self.values))
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        min_left_pad = min(self.left_padding.tolist())
        if min_left_pad > 0:  # drop padding columns no row needs any more
            if self.keys is not None:
                self.keys, self.values = tree_map(lambda x: x[..., min_left_pad:, :], (self.keys, self.values))
            self._idx -= min_left_pad
            self.left_padding -= min_left_pad

    def extend(self, other):
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        max_idx = max(self._idx, other._idx)
        template = self if self.keys is not None else other
        max_size = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)

        def aligned(c):
            """c's triples right-aligned at max_idx and max_size long, with its new left padding."""
            if c.keys is None:
                rows = c.offset.shape[0]
                empty = lambda x: mx.zeros((rows, x.shape[1], 0, x.shape[3]), dtype=x.dtype)  # noqa: E731
                keys, values = tree_map(empty, (template.keys, template.values))
            else:
                keys, values = c.keys, c.values
            left = max_idx - c._idx
            right = max_size - keys[0].shape[2] - left
            if right < 0:
                keys, values = tree_map(lambda x: x[..., :right, :], (keys, values))
                right = 0
            if left or right:
                pad = [(0, 0), (0, 0), (left, right), (0, 0)]
                keys, values = tree_map(lambda x: mx.pad(x, pad), (keys, values))
            return keys, values, c.offset, c.left_padding + left

        (k1, v1, o1, p1), (k2, v2, o2, p2) = aligned(self), aligned(other)
        cat = lambda a, b: mx.concatenate([a, b])  # noqa: E731
        self.keys, self.values = tree_map(cat, k1, k2), tree_map(cat, v1, v2)
        self.offset, self.left_padding = cat(o1, o2), cat(p1, p2)
        self._idx = max_idx

    def extract(self, idx: int) -> SeqQuantizedKVCache:
        cache = SeqQuantizedKVCache(group_size=self.group_size, bits=self.bits)
        start = self.left_padding.tolist()[idx]
        cache.keys, cache.values = tree_map(
            lambda x: mx.contiguous(x[idx : idx + 1, :, start : self._idx]), (self.keys, self.values)
        )
        cache.offset = self._idx - start
        return cache

    @classmethod
    def merge(cls, caches: list[SeqQuantizedKVCache]) -> BatchQuantizedKVCache:
        lengths = [c.size() for c in caches]
        longest = max(lengths)
        first = caches[0]
        if longest == 0:
            return cls([0] * len(caches), first.group_size, first.bits)
        padding = [longest - n for n in lengths]
        full = next(c for c in caches if c.keys is not None)
        shape_of = lambda x: (len(caches), x.shape[1], longest, x.shape[3])  # noqa: E731
        keys, values = tree_map(lambda x: mx.zeros(shape_of(x), dtype=x.dtype), (full.keys, full.values))
        for row, (pad, c) in enumerate(zip(padding, caches)):
            if c.keys is None:
                continue
            for i in range(3):
                keys[i][row : row + 1, :, pad : pad + c.offset] = c.keys[i][..., : c.offset, :]
                values[i][row : row + 1, :, pad : pad + c.offset] = c.values[i][..., : c.offset, :]
        cache = cls(padding, first.group_size, first.bits)
        cache.keys, cache.values = keys, values
        cache.offset += longest
        cache._idx = longest
        return cache

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return sum(x.nbytes for x in (*self.keys, *self.values))


def make_quantized_cache(n_layers: int, bits: int, group_size: int = KV_GROUP_SIZE) -> list[SeqQuantizedKVCache]:
    """An empty per-layer quantized cache for one sequence."""
    return [SeqQuantizedKVCache(group_size=group_size, bits=bits) for _ in range(n_layers)]
