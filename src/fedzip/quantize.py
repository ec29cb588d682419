"""Quantization by 1-D k-means over the kept values.

The clustering is near-optimal rather than a local optimum of Lloyd's
algorithm: an exact dynamic program over the sorted values (or over equal-count
bins of them when there are many), refined by Lloyd iterations that use prefix
sums, so each iteration costs O(k log n) after one sort.
"""

from __future__ import annotations

import functools

import numpy as np

MAX_CLUSTERS = 256
# The dynamic program is exact up to this many distinct points; above it, it
# runs on this many equal-count bins and Lloyd iterations refine the result.
EXACT_POINTS = 512
AUTO_CANDIDATES = range(2, 9)
AUTO_SAMPLE = 512
_LLOYD_ITERATIONS = 100


def _segment_costs(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """SSE of every run points[l:i] as a matrix indexed [i, l] (inf where l >= i): the dynamic
    program takes minima along rows (contiguous), and the matrices are built in place (it prices
    thousands of kept sets an update)."""
    center = float(weights @ points) / float(weights.sum())
    p = points - center
    wp = weights * p
    w, s, q = _prefix(weights), _prefix(wp), _prefix(wp * p)
    with np.errstate(divide="ignore", invalid="ignore"):
        ds = s[:, None] - s[None, :]
        np.square(ds, out=ds)
        np.divide(ds, w[:, None] - w[None, :], out=ds)
        cost = q[:, None] - q[None, :]
        cost -= ds
    np.fmax(cost, 0.0, out=cost)  # rounding below zero; NaN (empty runs) to zero, then inf
    cost += _on_or_above_diagonal(points.size + 1)
    return cost


@functools.lru_cache(maxsize=8)
def _on_or_above_diagonal(size: int) -> np.ndarray:
    """inf on and above the diagonal, zero below."""
    return np.where(np.tri(size, k=-1, dtype=bool), 0.0, np.inf)


def optimal_segments_upto(points: np.ndarray, weights: np.ndarray, k: int) -> dict[int, np.ndarray]:
    """Boundaries (``count + 1`` indices) of the ``count`` runs of sorted ``points`` with the least
    weighted SSE, for every count from 1 to ``k``, from one dynamic program."""
    m = points.size
    cost = _segment_costs(points, weights)  # [end, start]
    best = cost[:, 0].copy()
    choices = []
    rows = np.arange(m + 1)
    for _ in range(1, k):
        total = cost + best
        arg = total.argmin(axis=1)
        best = total[rows, arg]
        choices.append(arg.tolist())
    out = {}
    for count in range(1, k + 1):
        bounds = [m]
        for arg in reversed(choices[: count - 1]):
            bounds.append(arg[bounds[-1]])
        bounds.append(0)
        out[count] = np.array(bounds[::-1], dtype=np.int64)
    return out


def _lloyd(values: np.ndarray, cw: np.ndarray, cs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Lloyd iterations on sorted ``values`` with prefix sums of their weights (``cw``) and of
    weight times value (``cs``)."""
    cuts = None
    for _ in range(_LLOYD_ITERATIONS):
        mids = (centroids[:-1] + centroids[1:]) / 2
        new_cuts = np.concatenate(([0], np.searchsorted(values, mids, side="right"), [values.size]))
        if cuts is not None and np.array_equal(cuts, new_cuts):
            break
        cuts = new_cuts
        w = cw[cuts[1:]] - cw[cuts[:-1]]
        nonempty = w > 0
        centroids = (cs[cuts[1:]] - cs[cuts[:-1]])[nonempty] / w[nonempty]
    return centroids


def cluster_centroids(sorted_values: np.ndarray, k: int) -> np.ndarray:
    """Near-optimal k-means centroids (ascending, float64) of sorted 1-D values."""
    return cluster_centroids_many(sorted_values, (k,))[k]


def cluster_centroids_many(
    sorted_values: np.ndarray, ks: tuple[int, ...], points: int = EXACT_POINTS
) -> dict[int, np.ndarray]:
    """:func:`cluster_centroids` for several cluster counts, sharing one dynamic program.

    ``points``: the dynamic program's size (exact up to this many distinct values, bins above);
    its cost grows with its square. The byte budget prices its many candidates with fewer."""
    x = sorted_values.astype(np.float64, copy=False)
    distinct = np.concatenate(([True], x[1:] != x[:-1]))
    uniq = x[distinct]
    out = {k: uniq for k in ks if uniq.size <= k}
    rest = tuple(k for k in ks if k not in out)
    if not rest:
        return out
    counts = np.diff(np.concatenate((np.flatnonzero(distinct), [x.size]))).astype(np.float64)
    cw, cs = _prefix(counts), _prefix(counts * uniq)
    if uniq.size <= points:
        segments = optimal_segments_upto(uniq, counts, max(rest))
        return out | {k: _run_means(segments[k], cw, cs) for k in rest}
    # Bins of equal count resolve the dense middle; bins of equal width in
    # value resolve the tails, where a few outliers dominate the error.
    half = points // 2
    by_count = np.linspace(0, x.size, half + 1).astype(np.int64)
    by_value = np.searchsorted(x, np.linspace(x[0], x[-1], half + 1)[1:-1], side="left")
    edges = np.unique(np.concatenate((by_count, by_value)))
    bin_weights = np.diff(edges).astype(np.float64)
    bin_means = np.add.reduceat(x, edges[:-1]) / bin_weights
    return out | _binned(bin_means, bin_weights, rest, uniq, cw, cs)


def _prefix(values: np.ndarray) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(values)))


def _run_means(bounds: np.ndarray, cw: np.ndarray, cs: np.ndarray) -> np.ndarray:
    """The means of the runs between ``bounds``, from prefix sums of weights and weighted values."""
    return (cs[bounds[1:]] - cs[bounds[:-1]]) / (cw[bounds[1:]] - cw[bounds[:-1]])


def _binned(
    bin_means: np.ndarray,
    bin_weights: np.ndarray,
    ks: tuple[int, ...],
    points: np.ndarray,
    cw: np.ndarray,
    cs: np.ndarray,
) -> dict[int, np.ndarray]:
    """Centroids for every count of ``ks``: the dynamic program over the bins, its runs' means
    refined by Lloyd iterations on the sorted ``points`` (prefix sums ``cw``, ``cs``)."""
    segments = optimal_segments_upto(bin_means, bin_weights, max(ks))
    bin_cw, bin_cs = _prefix(bin_weights), _prefix(bin_weights * bin_means)
    return {k: _lloyd(points, cw, cs, _run_means(segments[k], bin_cw, bin_cs)) for k in ks}


def distinct_float32(ascending: np.ndarray) -> np.ndarray:
    """Ascending centroids as float32, those the cast made equal once (``np.unique`` without its sort)."""
    c = ascending.astype(np.float32)
    return c[np.concatenate(([True], c[1:] != c[:-1]))] if c.size > 1 else c


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (ascending ``centroids``, at most 256) for every value, as uint8:
    the midpoints below it (a value on a midpoint goes below)."""
    c = centroids.astype(np.float64)
    mids = (c[:-1] + c[1:]) / 2
    if values.dtype == np.float32 and values.size >= _TABLE_MIN and 0 < mids.size < _SEARCH:
        return _assign_by_table(values, mids)
    return np.searchsorted(mids, values.astype(np.float64), side="left").astype(np.uint8)


# Large float32 arrays are labelled by a table over the top 16 bits of each value, searching only
# the values of the few buckets a midpoint splits (the same labels, several times faster).
_TABLE_MIN = 1 << 16
_SEARCH = 255  # a table entry: search this bucket's values


def _assign_by_table(values: np.ndarray, mids: np.ndarray) -> np.ndarray:
    labels = _bucket_labels(mids)[values.view(np.uint32) >> 16]
    search = np.flatnonzero(labels == _SEARCH)
    if search.size:
        labels[search] = np.searchsorted(mids, values[search].astype(np.float64), side="left")
    return labels


def _bucket_labels(mids: np.ndarray) -> np.ndarray:
    """For each top 16 bits of a float32, the label all its 2^16 values take, or _SEARCH when a
    midpoint falls inside them (or they are infinities and NaNs)."""
    top = np.arange(1 << 16, dtype=np.uint32)
    negative = top >= 0x8000
    # a bucket's values run from its smallest to its largest: the low bits all ones or all zeros
    with np.errstate(invalid="ignore"):  # NaN patterns: their buckets are searched
        lowest = np.where(negative, top << 16 | 0xFFFF, top << 16).view(np.float32).astype(np.float64)
        highest = np.where(negative, top << 16, top << 16 | 0xFFFF).view(np.float32).astype(np.float64)
    first = np.searchsorted(mids, lowest, side="left")
    table = np.where(first == np.searchsorted(mids, highest, side="left"), first, _SEARCH)
    table[(top & 0x7F80) == 0x7F80] = _SEARCH  # exponent all ones
    return table.astype(np.uint8)


def quantize_many(
    values: np.ndarray, ks: tuple[int, ...], points: int = EXACT_POINTS
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """:func:`quantize` for several cluster counts at the cost of about one."""
    if values.size == 0:
        return {k: (np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.uint8)) for k in ks}
    sorted_values = np.sort(values.astype(np.float64))
    out = {}
    for k, found in cluster_centroids_many(sorted_values, tuple(ks), points).items():
        centroids = distinct_float32(found)
        out[k] = (centroids, assign(values, centroids))
    return out


# Centroids of more float32 values than this come from their buckets (see _bucket_centroids):
# sorting and clustering every entry of a dense 25M-entry tensor took 3 s.
BUCKETED = 1 << 20


def _bucket_centroids(values: np.ndarray, k: int) -> np.ndarray | None:
    """Near-optimal k-means centroids of many float32 values without sorting them: the values
    grouped by their top 16 bits (2^16 buckets in value order, each under 1% of its values'
    magnitude wide), each bucket a point at its mean weighted by its count, then the dynamic
    program over bins of them and Lloyd iterations on the buckets. None when the exact path
    decides: few buckets, or a bucket's mean not finite (infinities or NaNs)."""
    counts = np.zeros(1 << 16)
    sums = np.zeros(1 << 16)
    for start in range(0, values.size, _BUCKET_CHUNK):  # small temporaries, reused
        part = values[start : start + _BUCKET_CHUNK]
        top = part.view(np.uint32) >> 16
        counts += np.bincount(top, minlength=1 << 16)
        sums += np.bincount(top, weights=part, minlength=1 << 16)
    counts, sums = counts[_BUCKET_ORDER], sums[_BUCKET_ORDER]
    used = counts > 0
    weights = counts[used]
    with np.errstate(invalid="ignore"):
        points = sums[used] / weights
    # few buckets: values that take a few distinct values, which a bucket could merge (1.0 and
    # 1.001 share one); sorting clusters them exactly
    if points.size <= EXACT_POINTS or not np.all(np.isfinite(points)):
        return None
    cw, cs = _prefix(weights), _prefix(sums[used])
    # as cluster_centroids_many: bins of equal count and of equal width in value
    half = EXACT_POINTS // 2
    by_count = np.searchsorted(cw, np.linspace(0, cw[-1], half + 1), side="left")
    by_value = np.searchsorted(points, np.linspace(points[0], points[-1], half + 1)[1:-1], side="left")
    edges = np.unique(np.concatenate((by_count, by_value, [0, points.size])))
    bin_weights = cw[edges[1:]] - cw[edges[:-1]]
    return _binned(_run_means(edges, cw, cs), bin_weights, (k,), points, cw, cs)[k]


_BUCKET_CHUNK = 1 << 18
# The buckets in value order: negative floats (sign bit set) from the largest magnitude down,
# then the others from zero up.
_BUCKET_ORDER = np.concatenate((np.arange(0xFFFF, 0x7FFF, -1), np.arange(0x8000)))


def quantize(values: np.ndarray, clusters: int | str) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D ``values``: (float32 centroids ascending, uint8 labels).

    ``clusters`` is a count from 1 to 256 or ``"auto"`` (silhouette choice).
    Fewer centroids come back when there are fewer distinct values.
    """
    if values.size == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.uint8)
    found = None
    if clusters != "auto" and values.dtype == np.float32 and values.size > BUCKETED:
        found = _bucket_centroids(values, int(clusters))
    if found is None:
        sorted_values = np.sort(values).astype(np.float64)  # sorted in its dtype: SIMD, same order
        k = choose_clusters(sorted_values) if clusters == "auto" else int(clusters)
        found = cluster_centroids(sorted_values, k)
    centroids = distinct_float32(found)
    labels = assign(values, centroids)
    return centroids, labels


def silhouette(sorted_values: np.ndarray, centroids: np.ndarray) -> float:
    """Mean silhouette score of sorted 1-D values clustered by nearest centroid."""
    x = sorted_values.astype(np.float64)
    n = x.size
    c = np.asarray(centroids, dtype=np.float64)
    cuts = np.concatenate(([0], np.searchsorted(x, (c[:-1] + c[1:]) / 2, side="right"), [n]))
    cuts = np.unique(cuts)
    if cuts.size < 3:
        return 0.0
    prefix = _prefix(x)
    cluster = np.searchsorted(cuts, np.arange(n), side="right") - 1
    lo, hi = cuts[cluster], cuts[cluster + 1]
    i = np.arange(n)
    size = hi - lo
    # In 1-D with contiguous clusters, sums of distances come from prefix sums,
    # and the nearest other cluster is one of the two adjacent ones.
    own = (i - lo) * x - (prefix[i] - prefix[lo]) + (prefix[hi] - prefix[i + 1]) - (hi - i - 1) * x
    a = np.where(size > 1, own / np.maximum(size - 1, 1), 0.0)
    nclusters = cuts.size - 1
    b = np.full(n, np.inf)
    has_left = cluster > 0
    left_lo = cuts[np.maximum(cluster - 1, 0)]
    left = (lo - left_lo) * x - (prefix[lo] - prefix[left_lo])
    b = np.where(has_left, left / np.maximum(lo - left_lo, 1), b)
    has_right = cluster < nclusters - 1
    right_hi = cuts[np.minimum(cluster + 2, nclusters)]
    right = (prefix[right_hi] - prefix[hi]) - (right_hi - hi) * x
    b = np.minimum(b, np.where(has_right, right / np.maximum(right_hi - hi, 1), np.inf))
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(size > 1, (b - a) / np.maximum(a, b), 0.0)
    return float(np.nan_to_num(s).mean())


def choose_clusters(sorted_values: np.ndarray) -> int:
    """Cluster count with the best silhouette on an evenly spaced sample."""
    x = np.asarray(sorted_values, dtype=np.float64)
    if x.size > AUTO_SAMPLE:
        x = x[np.linspace(0, x.size - 1, AUTO_SAMPLE).astype(np.int64)]
    distinct = int(np.count_nonzero(x[1:] != x[:-1])) + 1
    best_k, best_score = 1, -np.inf
    for k in AUTO_CANDIDATES:
        if k > distinct:
            break
        score = silhouette(x, cluster_centroids(x, k))
        if score > best_score + 1e-12:
            best_k, best_score = k, score
    return best_k
