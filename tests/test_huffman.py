import heapq

import numpy as np
import pytest

from fedzip import huffman
from fedzip.bitio import BitReader, BitWriter
from fedzip.errors import FormatError


def plain_huffman_cost(counts):
    heap = [c for c in counts if c > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


@pytest.mark.parametrize("seed", range(20))
def test_code_lengths_are_optimal_when_the_limit_does_not_bind(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 1000, size=rng.integers(2, 40))
    counts[:2] += 1
    lengths = huffman.code_lengths(counts)
    assert int((counts * lengths).sum()) == plain_huffman_cost(counts)
    used = counts > 0
    assert (2.0 ** -lengths[used]).sum() == 1.0
    assert np.all(lengths[~used] == 0)


def test_length_limit_holds_for_very_skewed_counts():
    counts = np.array([2**i for i in range(30)], dtype=np.int64)  # Fibonacci-like skew
    lengths = huffman.code_lengths(counts)
    assert lengths.max() <= huffman.MAX_CODE_LENGTH
    assert (2.0 ** -lengths.astype(float)).sum() == 1.0
    assert int((counts * lengths).sum()) >= plain_huffman_cost(counts)


def test_canonical_codes_are_prefix_free():
    lengths = huffman.code_lengths(np.array([50, 30, 10, 5, 3, 1, 1]))
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True)]
    for a in words:
        for b in words:
            assert a == b or not b.startswith(a)


@pytest.mark.parametrize("count", [1, 2, 63, 64, 65, 1000, 70_000])
def test_stream_round_trip_and_exact_size(rng, count):
    symbols = np.minimum(rng.geometric(0.3, size=count) - 1, 40).astype(np.uint16)
    w = BitWriter()
    w.write(1, 1)
    huffman.write_stream(w, symbols, 41)
    assert w.nbits - 1 == huffman.stream_bits(np.bincount(symbols, minlength=41))
    reader = BitReader(w.getvalue(), w.nbits)
    reader.read(1)
    assert np.array_equal(huffman.read_stream(reader, count, 41), symbols)
    assert reader.remaining == 0


@pytest.mark.parametrize("offset", range(8))
def test_fifteen_bit_codes_at_every_offset_round_trip(rng, offset):
    # Fibonacci-like counts force the longest codes; the stream ends at the data's last bit.
    counts = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584])
    symbols = rng.permutation(np.repeat(np.arange(counts.size), counts * 3)).astype(np.uint16)
    assert huffman.code_lengths(np.bincount(symbols)).max() == huffman.MAX_CODE_LENGTH
    w = BitWriter()
    w.write(0, offset)
    huffman.write_stream(w, symbols, counts.size)
    assert w.nbits - offset == huffman.stream_bits(np.bincount(symbols))  # past the plain code's limit
    reader = BitReader(w.getvalue(), w.nbits)
    reader.read(offset)
    assert np.array_equal(huffman.read_stream(reader, symbols.size, counts.size), symbols)
    assert reader.remaining == 0


def test_stream_size_is_exact_with_ties_and_many_blocks(rng):
    # tied counts (the code's tie-breaking sets the longest code, and so the block width)
    for _ in range(60):
        counts = rng.integers(0, 6, size=int(rng.integers(2, 40))) * int(rng.integers(1, 600))
        if np.count_nonzero(counts) < 2:
            continue
        symbols = rng.permutation(np.repeat(np.arange(counts.size), counts)).astype(np.uint16)
        w = BitWriter()
        huffman.write_stream(w, symbols, counts.size)
        expected = w.nbits
        assert huffman.stream_bits(counts) == expected


def test_single_symbol_stream_costs_no_bits_per_symbol():
    w = BitWriter()
    huffman.write_stream(w, np.full(10_000, 7, dtype=np.uint16), 9)
    assert w.nbits == 1 + 4
    out = huffman.read_stream(BitReader(w.getvalue(), w.nbits), 10_000, 9)
    assert np.all(out == 7)


@pytest.mark.parametrize("clusters", [2, 3, 5, 17, 256])
def test_labels_round_trip_with_grouping(rng, clusters):
    labels = np.minimum(rng.geometric(0.6, size=5001) - 1, clusters - 1)
    group, bits = huffman.plan_labels(labels, clusters)
    w = BitWriter()
    huffman.write_labels(w, labels, clusters, group)
    assert w.nbits == bits
    out = huffman.read_labels(BitReader(w.getvalue(), w.nbits), labels.size, clusters)
    assert np.array_equal(out, labels)


def test_grouping_beats_one_bit_per_label_when_one_cluster_dominates(rng):
    labels = (rng.random(100_000) < 0.05).astype(np.int64)
    group, bits = huffman.plan_labels(labels, 2)
    assert group > 1
    assert bits < 0.5 * labels.size


def test_incomplete_code_table_is_rejected():
    w = BitWriter()
    w.write(0, 1)
    w.write_array(np.array([1, 2, 0]), huffman.LENGTH_BITS)  # Kraft sum 3/4
    w.write(0, 8)
    with pytest.raises(FormatError):
        huffman.read_stream(BitReader(w.getvalue(), w.nbits), 4, 3)
