"""Top-z candidates of one tensor priced from their value order, without building them.

The kept set of a magnitude threshold is the two ends of the candidates sorted by value, so its
k-means centroids, the exact squared error and the label counts come from prefix sums; its
bytes are an upper bound (the gap code bounded without sorting positions, labels one to a code
word) that the built record reaches or beats. Only the options a budget chooses are built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import encodings, gaps, huffman, wire
from .encodings import Quantized
from .option import Option
from .quantize import assign, cluster_centroids_many, distinct_float32, optimal_segments_upto
from .sparsify import top_entries

CLUSTER_CHOICES = (1, 2, 3, 4, 8, 16)
# Size of the k-means program that prices candidates (the codec's own quantiser uses 512): its cost
# grows with the square, and Lloyd iterations over every kept value refine what it finds.
PRICING_POINTS = 128
_LLOYD_ITERATIONS = 100


def _body_bits_at_most(encoding: str, size: int, symbol_counts: np.ndarray, label_bits: int) -> int:
    """An upper bound of the body bits of a tensor of ``size`` entries with ``symbol_counts`` (pruned
    entries, then each cluster's) in ``encoding`` (``auto``: the least); ``label_bits`` bounds the
    labels' code. Exact for ``huffman`` and ``position``. For ``dap``, Golomb-Rice at the density's
    parameter b spends ``kept * (b + 1) + sum((gap - 1) >> b)`` bits and the gaps add up to at most
    ``size``: the positions need no sorting to bound it."""
    kept = size - int(symbol_counts[0])
    bits = {}
    if kept == size:  # every entry kept: no positions travel
        bits["position"] = bits["dap"] = label_bits
    else:
        bits["position"] = kept * encodings.address_width(size) + label_bits
        b = gaps.rice_parameter(kept / size)
        bits["dap"] = 1 + gaps.RICE_PARAM_BITS + kept * (b + 1) + ((size - kept) >> b) + label_bits
    # Huffman codes every entry in a bit at least (of two symbols or more): priced only when that
    # could beat the others (the budget prices thousands of candidates an update)
    if encoding == "huffman" or (encoding == "auto" and min(bits.values()) > size):
        bits["huffman"] = huffman.stream_bits(symbol_counts)
    return min(bits.values()) if encoding == "auto" else bits[encoding]


class _Kept:
    """The kept set of one threshold: the candidates sorted by value, less the middle ``[low, high)``
    (the entries smaller in magnitude), addressed by its own index ``0..size``."""

    def __init__(self, ascending: np.ndarray, sums: np.ndarray, low: int, high: int):
        self.ascending, self.sums, self.low, self.high = ascending, sums, low, high  # sums: prefix sums
        self.size = low + ascending.size - high

    def real(self, index: np.ndarray) -> np.ndarray:
        """The position in ``ascending`` of the kept set's ``index`` (an end: ``size`` maps past it)."""
        return np.where(index <= self.low, index, index + (self.high - self.low))

    def own(self, real: np.ndarray) -> np.ndarray:
        """The kept set's index of a position in ``ascending`` (the middle maps to its start)."""
        return np.where(real <= self.low, real, np.maximum(real - (self.high - self.low), self.low))

    def prefix(self, prefix: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Sums over the kept set's first ``index`` entries, from a prefix sum over ``ascending``."""
        gap = prefix[self.high] - prefix[self.low]
        return prefix[self.real(index)] - np.where(index > self.low, gap, 0.0)

    def cuts(self, centroids: np.ndarray) -> np.ndarray:
        """Cluster boundaries of nearest-centroid labels (a value on a midpoint goes below, as
        :func:`fedzip.quantize.assign`)."""
        middle = np.searchsorted(self.ascending, (centroids[:-1] + centroids[1:]) / 2, side="right")
        return np.concatenate(([0], self.own(middle), [self.size]))

    def centroids(self, ks: tuple[int, ...]) -> dict[int, np.ndarray]:
        """Near-optimal k-means centroids for every count of ``ks``, as
        :func:`fedzip.quantize.cluster_centroids_many` computes them, without gathering the set:
        the dynamic program over bins of equal count and of equal width, then Lloyd iterations."""
        if self.size <= PRICING_POINTS:
            values = np.concatenate((self.ascending[: self.low], self.ascending[self.high :]))
            return cluster_centroids_many(values, ks, PRICING_POINTS)
        half = PRICING_POINTS // 2
        first = self.ascending[0] if self.low else self.ascending[self.high]
        last = self.ascending[-1] if self.high < self.ascending.size else self.ascending[self.low - 1]
        by_count = np.linspace(0, self.size, half + 1).astype(np.int64)
        by_value = self.own(np.searchsorted(self.ascending, np.linspace(first, last, half + 1)[1:-1]))
        edges = np.unique(np.concatenate((by_count, by_value)))
        weights = np.diff(edges).astype(np.float64)
        sums = np.diff(self.prefix(self.sums, edges))
        segments = optimal_segments_upto(sums / weights, weights, max(ks))
        cw, cs = np.concatenate(([0.0], np.cumsum(weights))), np.concatenate(([0.0], np.cumsum(sums)))
        out = {}
        for k in ks:
            bounds = segments[k]
            centroids = (cs[bounds[1:]] - cs[bounds[:-1]]) / (cw[bounds[1:]] - cw[bounds[:-1]])
            cuts = None
            for _ in range(_LLOYD_ITERATIONS):
                new_cuts = self.cuts(centroids)
                if cuts is not None and np.array_equal(cuts, new_cuts):
                    break
                cuts = new_cuts
                count = np.diff(cuts)
                nonempty = count > 0
                centroids = np.diff(self.prefix(self.sums, cuts))[nonempty] / count[nonempty]
            out[k] = centroids
        return out


class Pool:
    """A tensor's Top-z candidates (its ``largest`` nonzero entries by magnitude, at ``index`` in
    ascending addresses; ``largest`` None: every entry) sorted by value, with the prefix sums that
    price any threshold: the kept set of a threshold is every candidate at or above it in
    magnitude, the two ends of the order, so k-means, the exact squared error and the label counts
    need no gathering. Thresholds are above zero: zeros sort into the middle and are never kept.

    Every tensor's pool lives until the budget has chosen, but large pools hold only what is in
    use: :meth:`release` drops the addresses and the sorted values (20 bytes a candidate; 1.5x a
    500M-parameter update when all were kept), found again, the same, when asked for.
    """

    def __init__(
        self, name: str | None, array: np.ndarray, encoding: str, energy: float, largest: int | None
    ):
        self.name, self.array, self.largest = name, array, largest
        self.encoding, self.energy, self.size = encoding, energy, array.size
        self._index: np.ndarray | None = None
        self._sorted: tuple[np.ndarray, np.ndarray, int] | None = None

    @property
    def index(self) -> np.ndarray | None:
        """The candidates' addresses, ascending (None: every entry is one)."""
        if self.largest is None:
            return None
        if self._index is None:
            found = top_entries(self.array.reshape(-1), self.largest)
            self._index = found.astype(np.int32) if self.size < 2**31 else found  # 4 bytes where they fit
        return self._index

    @property
    def ascending(self) -> np.ndarray:
        return self._sort()[0]

    @property
    def sums(self) -> np.ndarray:
        return self._sort()[1]

    @property
    def negatives(self) -> int:
        return self._sort()[2]

    def _sort(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The candidates by value (float64), their prefix sums and how many are negative."""
        if self._sorted is None:
            flat, index = self.array.reshape(-1), self.index
            # sorted in its own dtype (SIMD, exact), summed in float64
            ascending = np.sort(flat if index is None else flat[index]).astype(np.float64)
            sums = np.empty(ascending.size + 1)  # prefix sums, in place: no second copy
            sums[0] = 0.0
            np.cumsum(ascending, out=sums[1:])
            self._sorted = ascending, sums, int(np.searchsorted(ascending, 0.0, side="left"))
        return self._sorted

    def release(self) -> None:
        """Drop the addresses and the sorted candidates (found again if asked for) when they are a
        real share of memory: at least a tenth of a tensor of 2^20 entries or more. Smaller pools
        are kept, as finding them again costs time (a 25M update's budget took 40% longer)."""
        held = (self.largest or self.size) * 20  # int32 address, float64 value and prefix sum
        if self.size >= 1 << 20 and held >= self.array.nbytes // 10:
            self._index, self._sorted = None, None

    def thresholds(self, counts: list[int]) -> list[float]:
        """The magnitude thresholds that keep ``counts`` candidates (ties together), largest count first."""
        return list(dict.fromkeys(self.largest_magnitude(c) for c in sorted(set(counts), reverse=True)))

    def largest_magnitude(self, count: int) -> float:
        """The ``count``-th largest magnitude (1 <= count <= nonzero candidates): the negatives' magnitudes
        ascend from the end of their part and the others' from its start, so two sorted runs meet."""
        ascending, negatives = self.ascending, self.negatives
        positives = ascending.size - negatives
        # take i of the count from the negatives (their i largest magnitudes: ascending[:i]) and the
        # rest from the others' top; the right i takes each run's entries down to the same magnitude
        low, high = max(0, count - positives), min(count, negatives)
        while low < high:
            i = (low + high) // 2
            # the (i+1)-th negative is larger than the smallest positive taken: take more negatives
            if -ascending[i] > ascending[ascending.size - (count - i)]:
                low = i + 1
            else:
                high = i
        i = low
        smallest = []
        if i:
            smallest.append(-ascending[i - 1])
        if count - i:
            smallest.append(ascending[ascending.size - (count - i)])
        return float(min(smallest))

    def kept(self, threshold: float) -> _Kept:
        """The kept set at ``threshold``."""
        low = int(np.searchsorted(self.ascending, -threshold, side="right"))
        high = int(np.searchsorted(self.ascending, threshold, side="left"))
        return _Kept(self.ascending, self.sums, low, high)

    def cost(self, kept: _Kept, centroids: np.ndarray) -> tuple[int, float]:
        """Bytes (at most) and exact squared error of ``kept`` labelled by ``centroids`` (ascending)."""
        c = centroids.astype(np.float64)
        cuts = kept.cuts(c)
        n = np.diff(cuts)
        s = np.diff(kept.prefix(self.sums, cuts))
        # the left-out entries' squares plus each cluster's sum(v - c)^2 = Q - 2cS + nc^2: the kept
        # squares Q cancel, so no prefix sum of squares is needed
        error = max(self.energy - float(np.sum(c * (2 * s - n * c))), 0.0)
        labels = 0 if c.size < 2 else huffman.GROUP_BITS + huffman.stream_bits(n)
        bits = _body_bits_at_most(
            self.encoding, self.size, np.concatenate(([self.size - kept.size], n)), labels
        )
        return wire.record_bytes(self.name, self.array.shape, kept.size, c.size, bits), error

    def smallest_kept(self, threshold: float) -> float:
        """The smallest magnitude at or above ``threshold`` (a threshold keeping the same set that the
        array's own dtype represents exactly); ``threshold`` when none is."""
        kept = self.kept(threshold)
        low, high = kept.low, kept.high
        ends = ([-self.ascending[low - 1]] if low else []) + (
            [self.ascending[high]] if high < self.ascending.size else []
        )
        return float(min(ends)) if ends else threshold


def topz_options(pool: Pool, counts: list[int]) -> list[Option]:
    """Top-z at every count of ``counts`` among the pool's candidates and every cluster count. Ties at
    a threshold are kept together (the count can come out a little larger)."""
    options = []
    for threshold in pool.thresholds(counts):
        kept = pool.kept(threshold)
        choices = tuple(k for k in CLUSTER_CHOICES if k <= kept.size)
        for found in kept.centroids(choices).values():
            centroids = distinct_float32(found)
            size, error = pool.cost(kept, centroids)
            build = TopzBuild(pool, threshold, centroids)
            detail = f"keep {kept.size / pool.size:.3g}, {centroids.size} clusters"
            options.append(Option(build, size, error, "top-z", detail))
    return options


@dataclass(frozen=True)
class TopzBuild:
    """Builds a Top-z candidate: the pool's candidates at or above ``threshold`` in magnitude,
    labelled by ``centroids``."""

    pool: Pool
    threshold: float
    centroids: np.ndarray

    def __call__(self) -> Quantized:
        array, index = self.pool.array, self.pool.index
        flat = array.reshape(-1)
        if index is None:
            positions = np.flatnonzero(np.abs(flat) >= self.threshold)
        else:
            positions = index[np.abs(flat[index]) >= self.threshold].astype(np.int64)
        labels = assign(flat[positions], self.centroids)
        return Quantized(array.shape, array.dtype, positions, labels, self.centroids)
