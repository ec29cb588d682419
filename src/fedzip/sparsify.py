"""Top-z sparsification: keep the entries of largest magnitude."""

from __future__ import annotations

import math

import numpy as np

# Below this size an exact partition over every entry is cheap enough.
_SMALL = 1 << 16
_SAMPLE = 1 << 15


def keep_count(size: int, keep: float) -> int:
    """Entries kept out of ``size`` for a kept fraction ``keep``: max(1, ceil(keep * size))."""
    if size == 0:
        return 0
    return min(size, max(1, math.ceil(keep * size)))


def top_entries(magnitude: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of the ``count`` largest nonzero entries of 1-D ``magnitude``.

    Ties at the threshold go to the lower index. Zeros are never kept, so fewer
    than ``count`` indices come back when there are fewer nonzeros.
    """
    n = magnitude.size
    if count <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if count >= n:
        return np.flatnonzero(magnitude)
    candidates = None
    if n > _SMALL:
        candidates = _candidates(magnitude, count)
    if candidates is None:
        candidates = np.arange(n, dtype=np.int64)
        values = magnitude
    else:
        values = magnitude[candidates]
    threshold = np.partition(values, values.size - count)[values.size - count]
    if threshold == 0:
        return candidates[np.flatnonzero(values)]
    above = np.flatnonzero(values > threshold)
    ties = np.flatnonzero(values == threshold)[: count - above.size]
    chosen = np.concatenate((above, ties))
    chosen.sort()
    return candidates[chosen]


def _candidates(magnitude: np.ndarray, count: int) -> np.ndarray | None:
    """Indices of a superset of the top ``count`` entries, found from a sample.

    A strided sample estimates a threshold a little below the true one; one
    comparison pass then leaves roughly ``count`` candidates for the exact
    partition. Returns None when the estimate fell short (the caller then
    partitions everything).
    """
    n = magnitude.size
    stride = max(1, n // _SAMPLE)
    sample = magnitude[::stride]
    fraction = count / n
    # Aim above the target by a few standard deviations of the sampled count.
    margin = 4.0 * math.sqrt(fraction * (1 - fraction) / sample.size) + 0.1 * fraction
    rank = min(sample.size - 1, int(sample.size * (1 - min(1.0, fraction + margin))))
    if rank <= 0:
        return None
    estimate = np.partition(sample, rank)[rank]
    candidates = np.flatnonzero(magnitude >= estimate)
    if candidates.size < count:
        return None
    return candidates
