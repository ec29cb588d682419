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
    """SSE of every run points[l:i] as a matrix indexed [l, i] (inf where l >= i)."""
    center = np.average(points, weights=weights)
    p = points - center
    w = np.concatenate(([0.0], np.cumsum(weights)))
    s = np.concatenate(([0.0], np.cumsum(weights * p)))
    q = np.concatenate(([0.0], np.cumsum(weights * p * p)))
    dw = w[None, :] - w[:, None]
    ds = s[None, :] - s[:, None]
    dq = q[None, :] - q[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = dq - ds * ds / dw
    np.maximum(cost, 0.0, out=cost)
    cost[_on_or_below_diagonal(points.size + 1)] = np.inf
    return cost


@functools.lru_cache(maxsize=8)
def _on_or_below_diagonal(size: int) -> np.ndarray:
    return np.tri(size, dtype=bool)


def optimal_segments(points: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Boundaries (k + 1 indices) of the k runs of sorted ``points`` with least SSE."""
    return optimal_segments_upto(points, weights, k)[k]


def optimal_segments_upto(points: np.ndarray, weights: np.ndarray, k: int) -> dict[int, np.ndarray]:
    """:func:`optimal_segments` for every cluster count from 1 to ``k``, from one dynamic program."""
    m = points.size
    cost = _segment_costs(points, weights)
    best = cost[0].copy()
    choices = []
    columns = np.arange(m + 1)
    for _ in range(1, k):
        total = best[:, None] + cost
        arg = np.argmin(total, axis=0)
        best = total[arg, columns]
        choices.append(arg)
    out = {}
    for count in range(1, k + 1):
        bounds = [m]
        for arg in reversed(choices[: count - 1]):
            bounds.append(int(arg[bounds[-1]]))
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
    if uniq.size <= points:
        segments = optimal_segments_upto(uniq, counts, max(rest))
        cs = np.concatenate(([0.0], np.cumsum(counts * uniq)))
        cw = np.concatenate(([0.0], np.cumsum(counts)))
        for k in rest:
            bounds = segments[k]
            out[k] = (cs[bounds[1:]] - cs[bounds[:-1]]) / (cw[bounds[1:]] - cw[bounds[:-1]])
        return out
    # Bins of equal count resolve the dense middle; bins of equal width in
    # value resolve the tails, where a few outliers dominate the error.
    half = points // 2
    by_count = np.linspace(0, x.size, half + 1).astype(np.int64)
    by_value = np.searchsorted(x, np.linspace(x[0], x[-1], half + 1)[1:-1], side="left")
    edges = np.unique(np.concatenate((by_count, by_value)))
    bin_weights = np.diff(edges).astype(np.float64)
    bin_means = np.add.reduceat(x, edges[:-1]) / bin_weights
    segments = optimal_segments_upto(bin_means, bin_weights, max(rest))
    cs = np.concatenate(([0.0], np.cumsum(bin_weights * bin_means)))
    cw = np.concatenate(([0.0], np.cumsum(bin_weights)))
    value_cw = np.concatenate(([0.0], np.cumsum(counts)))
    value_cs = np.concatenate(([0.0], np.cumsum(counts * uniq)))
    for k in rest:
        bounds = segments[k]
        seeds = (cs[bounds[1:]] - cs[bounds[:-1]]) / (cw[bounds[1:]] - cw[bounds[:-1]])
        out[k] = _lloyd(uniq, value_cw, value_cs, seeds)
    return out


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (ascending ``centroids``) for every value."""
    c = centroids.astype(np.float64)
    return np.searchsorted((c[:-1] + c[1:]) / 2, values.astype(np.float64), side="left")


def quantize_many(
    values: np.ndarray, ks: tuple[int, ...], points: int = EXACT_POINTS
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """:func:`quantize` for several cluster counts at the cost of about one."""
    if values.size == 0:
        return {k: (np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.uint8)) for k in ks}
    sorted_values = np.sort(values.astype(np.float64))
    out = {}
    for k, found in cluster_centroids_many(sorted_values, tuple(ks), points).items():
        centroids = np.unique(found.astype(np.float32))
        out[k] = (centroids, assign(values, centroids).astype(np.uint8))
    return out


def quantize(values: np.ndarray, clusters: int | str) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D ``values``: (float32 centroids ascending, uint8 labels).

    ``clusters`` is a count from 1 to 256 or ``"auto"`` (silhouette choice).
    Fewer centroids come back when there are fewer distinct values.
    """
    if values.size == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.uint8)
    sorted_values = np.sort(values.astype(np.float64))
    k = choose_clusters(sorted_values) if clusters == "auto" else int(clusters)
    centroids = np.unique(cluster_centroids(sorted_values, k).astype(np.float32))
    labels = assign(values, centroids)
    return centroids, labels.astype(np.uint8)


def silhouette(sorted_values: np.ndarray, centroids: np.ndarray) -> float:
    """Mean silhouette score of sorted 1-D values clustered by nearest centroid."""
    x = sorted_values.astype(np.float64)
    n = x.size
    c = np.asarray(centroids, dtype=np.float64)
    cuts = np.concatenate(([0], np.searchsorted(x, (c[:-1] + c[1:]) / 2, side="right"), [n]))
    cuts = np.unique(cuts)
    if cuts.size < 3:
        return 0.0
    prefix = np.concatenate(([0.0], np.cumsum(x)))
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
