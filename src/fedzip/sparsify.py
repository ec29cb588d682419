"""Top-z sparsification: keep the entries of largest magnitude."""

from __future__ import annotations

import math

import numpy as np

# Below this size an exact partition over every entry is cheap enough.
_SMALL = 1 << 16
_SAMPLE = 1 << 15
# Work in chunks that stay in cache instead of allocating |x| for a whole tensor.
CHUNK = 1 << 16


def keep_count(size: int, keep: float) -> int:
    """Entries kept out of ``size`` for a kept fraction ``keep``: max(1, ceil(keep * size))."""
    if size == 0:
        return 0
    return min(size, max(1, math.ceil(keep * size)))


def peak_magnitude(flat: np.ndarray) -> float:
    """Largest absolute value of 1-D ``flat`` (NaN if it holds a NaN), in cache-sized chunks."""
    peak = 0.0
    buffer = np.empty(min(flat.size, CHUNK), dtype=flat.dtype)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start : start + CHUNK]
        value = float(np.abs(chunk, out=buffer[: chunk.size]).max())
        if value != value:
            return value
        peak = max(peak, value)
    return peak


def top_entries(flat: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of the ``count`` nonzero entries of 1-D ``flat`` largest in magnitude.

    Ties at the threshold go to the lower index. Zeros are never kept, so fewer
    than ``count`` indices come back when there are fewer nonzeros.
    """
    n = flat.size
    if count <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if count >= n:
        return np.flatnonzero(flat != 0)
    candidates = _candidates(flat, count) if n > _SMALL else None
    if candidates is None:
        candidates = np.arange(n, dtype=np.int64)
        values = np.abs(flat)
    else:
        values = np.abs(flat[candidates])
    threshold = np.partition(values, values.size - count)[values.size - count]
    if threshold == 0:
        return candidates[np.flatnonzero(values)]
    chosen = np.flatnonzero(values > threshold)  # ascending, as flatnonzero gives them
    ties = np.flatnonzero(values == threshold)[: count - chosen.size]
    if ties.size:  # two ascending runs: a merge (timsort), not a sort from scratch
        chosen = np.sort(np.concatenate((chosen, ties)), kind="stable")
    return candidates[chosen]


def _candidates(flat: np.ndarray, count: int) -> np.ndarray | None:
    """Indices of a superset of the top ``count`` entries, found from a sample.

    A strided sample estimates a threshold a little below the true one; one
    chunked comparison pass then leaves roughly ``count`` candidates for the
    exact partition. Returns None when the estimate fell short (the caller
    then partitions everything).
    """
    n = flat.size
    stride = max(1, n // _SAMPLE)
    sample = np.abs(flat[::stride])
    fraction = count / n
    # Aim above the target by a few standard deviations of the sampled count.
    margin = 4.0 * math.sqrt(fraction * (1 - fraction) / sample.size) + 0.1 * fraction
    rank = min(sample.size - 1, int(sample.size * (1 - min(1.0, fraction + margin))))
    if rank <= 0:
        return None
    estimate = np.partition(sample, rank)[rank]
    magnitude = np.empty(min(n, CHUNK), dtype=flat.dtype)
    selected = np.empty(min(n, CHUNK), dtype=bool)
    found = []
    for start in range(0, n, CHUNK):
        chunk = flat[start : start + CHUNK]
        size = chunk.size
        np.abs(chunk, out=magnitude[:size])
        np.greater_equal(magnitude[:size], estimate, out=selected[:size])
        found.append(np.flatnonzero(selected[:size]) + start)
    candidates = np.concatenate(found)
    if candidates.size < count:
        return None
    return candidates
