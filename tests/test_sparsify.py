import numpy as np
import pytest

from fedzip.sparsify import keep_count, peak_magnitude, top_entries


def brute_force(values, count):
    magnitude = np.abs(values)
    order = np.lexsort((np.arange(values.size), -magnitude))  # by magnitude, then index
    chosen = order[:count]
    return np.sort(chosen[magnitude[chosen] > 0])


@pytest.mark.parametrize("n", [1, 10, 1000, 200_000])
@pytest.mark.parametrize("keep", [0.001, 0.01, 0.3, 1.0])
def test_matches_brute_force_with_ties(rng, n, keep):
    values = rng.integers(-50, 50, size=n).astype(np.float32)  # many ties and zeros
    count = keep_count(n, keep)
    assert np.array_equal(top_entries(values, count), brute_force(values, count))


def test_large_heavy_tailed_input_keeps_exactly_count(rng):
    values = rng.standard_t(3, size=3_000_000).astype(np.float32)
    count = keep_count(values.size, 0.01)
    chosen = top_entries(values, count)
    assert chosen.size == count == 30_000
    assert np.array_equal(chosen, brute_force(values, count))


def test_structured_input_where_the_sample_misleads(rng):
    values = np.zeros(1_000_000, dtype=np.float32)
    values[::37] = 1.0  # the strided sample sees few of these
    values[5::37] = 2.0
    count = 40_000
    assert np.array_equal(top_entries(values, count), brute_force(values, count))


def test_keep_count():
    assert keep_count(0, 0.5) == 0
    assert keep_count(10, 0.0001) == 1
    assert keep_count(10, 0.25) == 3
    assert keep_count(10, 1.0) == 10


def test_peak_magnitude(rng):
    values = rng.standard_normal(300_000).astype(np.float32)
    assert peak_magnitude(values) == np.abs(values).max()
    values[123_456] = np.nan
    assert np.isnan(peak_magnitude(values))
    assert peak_magnitude(np.zeros(0, np.float32)) == 0.0
