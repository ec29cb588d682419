import itertools

import numpy as np
import pytest

from fedzip import quantize as qz


def exact_sse(values, k):
    """Optimal 1-D k-means SSE by dynamic programming over every split (O(k n^2))."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    k = min(k, np.unique(x).size)
    s = np.concatenate(([0.0], np.cumsum(x)))
    q = np.concatenate(([0.0], np.cumsum(x * x)))
    i = np.arange(n + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cnt = i[None, :] - i[:, None]
        cost = (q[None, :] - q[:, None]) - (s[None, :] - s[:, None]) ** 2 / cnt
    cost[cnt <= 0] = np.inf
    best = cost[0]
    for _ in range(1, k):
        best = np.min(best[:, None] + cost, axis=0)
    return max(float(best[n]), 0.0)


def sse(values, centroids, labels):
    return float(((values.astype(np.float64) - centroids.astype(np.float64)[labels]) ** 2).sum())


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_within_one_percent_of_optimal_on_small_inputs(seed, k):
    rng = np.random.default_rng(seed)
    values = rng.standard_t(3, size=rng.integers(20, 600))
    centroids, labels = qz.quantize(values, k)
    assert sse(values, centroids, labels) <= 1.01 * exact_sse(values, k) + 1e-12


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [3, 7])
def test_within_one_percent_of_optimal_when_binned(seed, k):
    rng = np.random.default_rng(100 + seed)
    values = np.concatenate([rng.standard_t(2, size=2500), rng.normal(5, 0.1, size=300)])
    assert np.unique(values).size > qz.EXACT_POINTS  # exercises the binned path
    centroids, labels = qz.quantize(values, k)
    assert sse(values, centroids, labels) <= 1.01 * exact_sse(values, k)


def test_fewer_distinct_values_than_clusters():
    values = np.array([1.0, 1.0, -2.0, 1.0, -2.0])
    centroids, labels = qz.quantize(values, 5)
    assert centroids.tolist() == [-2.0, 1.0]
    assert np.array_equal(centroids[labels], values.astype(np.float32))


def test_single_cluster_is_the_mean():
    values = np.array([1.0, 2.0, 6.0])
    centroids, labels = qz.quantize(values, 1)
    assert centroids.tolist() == [3.0] and labels.tolist() == [0, 0, 0]


def test_centroids_sorted_float32_and_labels_nearest(rng):
    values = rng.standard_t(3, size=10_000)
    centroids, labels = qz.quantize(values, 6)
    assert centroids.dtype == np.float32 and np.all(np.diff(centroids) > 0)
    distance = np.abs(values[:, None] - centroids[None, :].astype(np.float64))
    assert np.all(distance[np.arange(values.size), labels] <= distance.min(axis=1) + 1e-12)


def test_deterministic(rng):
    values = rng.standard_t(3, size=50_000)
    a = qz.quantize(values, 4)
    b = qz.quantize(values.copy(), 4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_auto_finds_well_separated_groups(rng):
    values = np.concatenate([rng.normal(c, 0.05, size=400) for c in (-3.0, 0.5, 4.0, 9.0)])
    centroids, _ = qz.quantize(values, "auto")
    assert centroids.size == 4
    np.testing.assert_allclose(np.sort(centroids), [-3.0, 0.5, 4.0, 9.0], atol=0.05)


def test_silhouette_matches_definition(rng):
    values = np.sort(rng.standard_t(3, size=200))
    centroids = qz.cluster_centroids(values, 3)
    labels = qz.assign(values, centroids)
    d = np.abs(values[:, None] - values[None, :])
    scores = []
    for i in range(values.size):
        own = labels == labels[i]
        if own.sum() == 1:
            scores.append(0.0)
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, labels == c].mean() for c in np.unique(labels) if c != labels[i])
        scores.append((b - a) / max(a, b))
    assert qz.silhouette(values, centroids) == pytest.approx(np.mean(scores), rel=1e-9)


def test_many_cluster_counts_from_one_program_equal_one_at_a_time():
    from fedzip.quantize import quantize, quantize_many

    rng = np.random.default_rng(5)
    for n in (1, 7, 400, 3000):
        values = (rng.standard_t(3, n) * 0.01).astype(np.float32)
        many = quantize_many(values, (1, 2, 3, 8, 16))
        for k, (centroids, labels) in many.items():
            expected = quantize(values, k)
            assert np.array_equal(centroids, expected[0]) and np.array_equal(labels, expected[1])


def test_labels_from_the_bucket_table_equal_a_search_of_the_midpoints(rng):
    centroids = np.sort(rng.standard_normal(9).astype(np.float32)) * np.float32(1e-3)
    mids = (centroids[:-1].astype(np.float64) + centroids[1:]) / 2
    on = mids.astype(np.float32)
    edge_cases = np.concatenate(
        (
            on,  # rounded onto a midpoint, and the floats either side of it
            np.nextafter(on, np.float32(np.inf)),
            np.nextafter(on, np.float32(-np.inf)),
            centroids,
            np.array([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, np.inf, -np.inf, np.nan], dtype=np.float32),
        )
    )
    values = np.concatenate(((rng.standard_t(3, 200_000) * 1e-3).astype(np.float32), edge_cases))
    labels = qz.assign(values, centroids)
    assert values.size >= qz._TABLE_MIN and labels.dtype == np.uint8  # the table's path
    assert np.array_equal(labels, np.searchsorted(mids, values.astype(np.float64), side="left"))


@pytest.mark.parametrize("k", [3, 16])
def test_centroids_of_many_values_from_their_buckets_are_as_good_as_sorting_them(rng, k):
    values = np.concatenate(
        (rng.standard_t(3, qz.BUCKETED + 5000) * 1e-3, rng.standard_normal(40) * 0.5)  # a few outliers
    ).astype(np.float32)
    centroids, labels = qz.quantize(values, k)  # the buckets' path
    exact = np.unique(qz.cluster_centroids(np.sort(values).astype(np.float64), k).astype(np.float32))
    error = float(((values - centroids[labels]) ** 2).sum())
    best = float(((values - exact[qz.assign(values, exact)]) ** 2).sum())
    assert centroids.size == k and error <= 1.001 * best
    assert np.array_equal(labels, qz.assign(values, centroids))


def test_many_values_of_a_few_close_levels_are_clustered_exactly():
    # 1.0 and 1.001 share their top 16 bits: bucketing them would merge the two levels
    values = np.repeat(np.array([1.0, 1.001, -2.5], dtype=np.float32), qz.BUCKETED // 2)
    centroids, labels = qz.quantize(values, 3)
    assert np.array_equal(centroids, np.array([-2.5, 1.0, 1.001], dtype=np.float32))
    assert np.array_equal(centroids[labels], values)


def _weighted_sse(points, weights, bounds):
    total = 0.0
    for lo, hi in itertools.pairwise(bounds):
        p, w = points[lo:hi], weights[lo:hi]
        total += float(w @ (p - (w @ p) / w.sum()) ** 2)
    return total


@pytest.mark.parametrize("seed", range(20))
def test_segments_of_every_count_are_optimal_against_every_split(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 10))
    # integer points give equal-cost splits: the program must still find a least one
    raw = rng.integers(-3, 4, m) if seed % 2 else rng.standard_t(3, m)
    points = np.sort(raw.astype(np.float64))
    weights = rng.integers(1, 5, m).astype(np.float64)
    found = qz.optimal_segments_upto(points, weights, m)
    for count in range(1, m + 1):
        bounds = found[count]
        assert bounds[0] == 0 and bounds[-1] == m and np.all(np.diff(bounds) > 0) and bounds.size == count + 1
        best = min(
            _weighted_sse(points, weights, (0, *inner, m))
            for inner in itertools.combinations(range(1, m), count - 1)
        )
        assert _weighted_sse(points, weights, bounds) <= best + 1e-9
