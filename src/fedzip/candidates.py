"""The candidates of one tensor under a byte budget: each way to send it, priced without building it.

- ``top-z``: the largest entries, k-means-quantised, with their positions, at
  kept counts on a geometric grid and 1 to 16 clusters: the paper's method.
  Keeping every entry is dense quantisation: no positions travel then;
- ``factors``: a matrix (a tensor of two or more dimensions, read as
  ``shape[0]`` rows) as rank-r factors, every column quantised to 2 to 8
  levels (:mod:`fedzip.factors`); every rank from one randomised SVD.

A candidate's bytes are exact (factors) or an upper bound reached or beaten
when it is built (Top-z: the gap code bounded without sorting positions,
labels one to a code word); its error, the squared error of what the receiver
would rebuild, is exact. Only the candidates a budget chooses are built.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import encodings, gaps, huffman, wire
from .encodings import Quantized
from .factors import factor_rank, leading_factors, pack_columns, quantise_columns_many
from .packing import Packed
from .quantize import assign, cluster_centroids_many, distinct_float32, optimal_segments_upto
from .sparsify import CHUNK, top_entries

REPRESENTATIONS = ("top-z", "factors")
# Kept fractions tried for every sparsified tensor (each also bounded by its nonzeros).
FRACTIONS = tuple(float(f) for f in np.geomspace(1e-5, 1.0, 25))
CLUSTER_CHOICES = (1, 2, 3, 4, 8, 16)
RANKS = (1, 2, 3, 4, 6, 8, 12, 16)
FACTOR_LEVELS = (2, 3, 4, 8)
# Size of the k-means program that prices candidates (the codec's own quantiser uses 512): its cost
# grows with the square, and Lloyd iterations over every kept value refine what it finds.
PRICING_POINTS = 128
_LLOYD_ITERATIONS = 100
# A tensor's Top-z counts are priced up to this many times its share of the budget by size (and
# at least MIN_PRICED entries): on the probe's real updates the budget never gave a tensor more.
SHARE_LIMIT = 8.0
MIN_PRICED = 4096


@dataclass(frozen=True)
class Option:
    """One way to send a tensor: what it costs at most and exactly what it leaves out."""

    item: Quantized | Packed | Callable[[], Packed]  # factors: built when chosen (see build())
    record_bytes: int  # exact, or an upper bound of the built record's (Top-z)
    error: float  # squared error of the rebuilt tensor
    form: str  # one of REPRESENTATIONS
    detail: str  # its size: "keep 0.0031, 3 clusters", "rank 2, 3 levels", "4 levels"

    def build(self) -> Quantized | Packed:
        """What the codec writes: the quantised tensor, or its factors or levels."""
        return self.item() if callable(self.item) else self.item


def price(name: str | None, q: Quantized, encoding: str) -> int:
    """Bytes of ``q``'s record in ``encoding`` (``auto``: the smallest), as the codec writes it
    (``name`` None: in the keyed container)."""
    bits = encodings.choose(q, encoding)[2]
    return wire.record_bytes(name, q.shape, q.kept, q.centroids.size, bits)


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


def _affordable(size: int, budget_bytes: int) -> int:
    """Kept entries worth pricing: beyond this count, positions alone cost about the whole budget
    (``log2(size / kept) - 1`` bits an entry at least, for positions spread like an update's)."""
    bits = 8 * budget_bytes
    count = min(size, bits)
    while count > 1 and count * max(1.0, math.log2(size / count) - 1) > bits:
        count = int(count * 0.9)
    return max(count, 1)


def _energy(flat: np.ndarray) -> tuple[float, int]:
    """Sum of squares (in float64) and count of nonzero entries, in one pass of cache-sized chunks."""
    total, nonzero = 0.0, 0
    squares = np.empty(min(flat.size, CHUNK), dtype=np.promote_types(flat.dtype, np.float32))
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start : start + CHUNK]
        nonzero += int(np.count_nonzero(chunk))
        # summed in float64 by numpy, not np.dot: BLAS threads stall when another process holds a core
        total += float(np.square(chunk, out=squares[: chunk.size], dtype=squares.dtype).sum(dtype=np.float64))
    return total, nonzero


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


def _topz_options(pool: Pool, counts: list[int]) -> list[Option]:
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


def tensor_options(
    name: str | None,
    array: np.ndarray,
    sparsify: bool,
    encoding: str,
    max_bytes: int | None = None,
    representations: tuple[str, ...] = ("top-z",),
    iterations: int = 4,
    share: float = 1.0,
) -> list[Option]:
    """The tensor's candidates in ``representations`` that no cheaper one of their form beats, and
    sending nothing, cheapest first (``name`` None: priced for the keyed container, which leaves
    names and shapes out).

    A tensor that is not sparsified (a bias, unless ``sparsify_1d``) has its
    nonzero entries quantised in place of Top-z's candidates. Kept counts that
    could not fit in ``max_bytes`` are not tried, nor, for a tensor holding
    ``share`` of the update's entries, counts costing more than ``SHARE_LIMIT``
    times that share of the budget: otherwise every tensor of a large model
    would price counts up to the whole budget, and the work would grow with
    the square of the model's size.
    """
    flat = array.reshape(-1)
    energy, nonzero = _energy(flat)
    candidates: list[Option] = []
    if nonzero and ("top-z" in representations or not sparsify):
        if sparsify:
            largest = nonzero
            if max_bytes is not None:
                within = max(
                    MIN_PRICED, _affordable(flat.size, math.ceil(max_bytes * min(1.0, SHARE_LIMIT * share)))
                )
                largest = min(nonzero, within)
            counts = sorted({min(largest, max(1, math.ceil(f * flat.size))) for f in FRACTIONS})
            # every nonzero entry a candidate: no addresses to hold (twice the tensor's size)
            pool = Pool(name, array, encoding, energy, None if largest == nonzero else largest)
        else:
            pool, counts = Pool(name, array, encoding, energy, None), [nonzero]
        candidates += _topz_options(pool, counts)
        pool.release()
    if "factors" in representations:
        fits = (lambda o: True) if max_bytes is None else (lambda o: o.record_bytes <= max_bytes)
        candidates += [o for o in _factor_options(name, array, energy, iterations) if fits(o)]
    # nothing of the tensor (its whole update stays in the error-feedback residual): the least a
    # tensor can cost, a few bytes, and the only option of an empty or all-zero one
    q = Quantized(
        array.shape, array.dtype, np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.float32)
    )
    nothing = Option(q, price(name, q, encoding), energy, "top-z", "nothing")
    # each form's front apart: a Top-z option a cheaper factorisation beats as priced may still win
    # once built (its bytes are a bound, and what it over-counts buys more), and the budget also
    # weighs each form alone (budget.choose)
    fronts = [pareto([o for o in candidates if o.form == form] + [nothing]) for form in REPRESENTATIONS]
    return sorted(
        {id(o): o for front in fronts for o in front}.values(), key=lambda o: (o.record_bytes, o.error)
    )


def _factor_options(name: str | None, array: np.ndarray, energy: float, iterations: int) -> list[Option]:
    """Rank-r factors at every rank of ``RANKS`` worth factoring and every level count, priced
    without building them: a column is quantised alike at every rank, so one product gives every
    rank's and level count's error, ``|M|^2 - 2 sum_j l_j.M r_j + sum_ij (L'L)_ij (R'R)_ij``,
    and label counts give the Huffman stream's bits. Each Option builds its factors when asked."""
    top = max((r for r in RANKS if factor_rank(array.shape, r) == r), default=0)
    if not top:
        return []
    rows = array.shape[0]
    matrix = array.reshape(rows, -1)
    left, right = leading_factors(array, top, iterations)
    left_levels = quantise_columns_many(left, FACTOR_LEVELS, PRICING_POINTS)
    right_levels = quantise_columns_many(right, FACTOR_LEVELS, PRICING_POINTS)

    def dequantised(columns: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        return np.stack([centroids[labels].astype(np.float64) for centroids, labels in columns], 1)

    lefts = {levels: dequantised(left_levels[levels]) for levels in FACTOR_LEVELS}
    rights = {levels: dequantised(right_levels[levels]) for levels in FACTOR_LEVELS}
    # M r_j for every level count in one pass over the matrix
    stacked = np.concatenate([rights[levels] for levels in FACTOR_LEVELS], 1).astype(matrix.dtype)
    projected = np.split((matrix @ stacked).astype(np.float64), len(FACTOR_LEVELS), axis=1)
    options = []
    for levels, product in zip(FACTOR_LEVELS, projected, strict=True):
        left_q, right_q = lefts[levels], rights[levels]
        columns = left_levels[levels] + right_levels[levels]
        cross = np.einsum("ij,ij->j", left_q, product)
        gram = (left_q.T @ left_q) * (right_q.T @ right_q)
        counts = [np.bincount(labels, minlength=levels) for _, labels in columns]
        for rank in (r for r in RANKS if r <= top):
            error = energy - 2 * float(cross[:rank].sum()) + float(gram[:rank, :rank].sum())
            used = sum(counts[:rank]) + sum(counts[top : top + rank])
            bits = 24 + huffman.stream_bits(used)
            size = wire.record_bytes(
                name, array.shape, rank * (rows + matrix.shape[1]), 2 * rank * levels, bits
            )
            # built from the columns quantised here: the chosen factors cost no second k-means
            build = functools.partial(pack_columns, columns[:rank] + columns[top : top + rank], levels, rows)
            options.append(Option(build, size, max(error, 0.0), "factors", f"rank {rank}, {levels} levels"))
    return options


def pareto(options: list[Option]) -> list[Option]:
    """Cheapest first, each with less error than every cheaper one."""
    front: list[Option] = []
    for option in sorted(options, key=lambda o: (o.record_bytes, o.error)):
        if not front or option.error < front[-1].error:
            front.append(option)
    return front
