import numpy as np
import pytest

from fedzip import gaps
from fedzip.bitio import BitReader, BitWriter


@pytest.mark.parametrize("density", [0.5, 0.1, 0.01, 0.001])
@pytest.mark.parametrize("method", [gaps.GAMMA, gaps.RICE])
def test_round_trip_and_planned_size(rng, density, method):
    n = 200_000
    positions = np.flatnonzero(rng.random(n) < density)
    deltas = np.diff(positions, prepend=-1)
    _, param, _ = gaps.plan(deltas, n)
    w = BitWriter()
    gaps.write(w, deltas, method, param)
    reader = BitReader(w.getvalue(), w.nbits)
    assert np.array_equal(gaps.read(reader, deltas.size), deltas)
    assert reader.remaining == 0
    chosen_method, chosen_param, bits = gaps.plan(deltas, n)
    w2 = BitWriter()
    gaps.write(w2, deltas, chosen_method, chosen_param)
    assert w2.nbits == bits


def test_rice_is_chosen_for_random_sparse_positions_and_is_near_entropy(rng):
    n, density = 1_000_000, 0.01
    positions = np.flatnonzero(rng.random(n) < density)
    method, _, bits = gaps.plan(np.diff(positions, prepend=-1), n)
    p = positions.size / n
    entropy = n * -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    assert method == gaps.RICE
    assert bits < 1.01 * entropy


@pytest.mark.parametrize("method", [gaps.GAMMA, gaps.RICE])
def test_huge_gaps_round_trip(method):
    deltas = np.array([1, 1_000_000_000, 3, 7_000_000_000])
    param = gaps.rice_parameter(deltas.size / 10**10)
    w = BitWriter()
    gaps.write(w, deltas, method, param)
    assert np.array_equal(gaps.read(BitReader(w.getvalue(), w.nbits), 4), deltas)
