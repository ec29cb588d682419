"""A byte budget instead of a kept fraction: each tensor's representation and size, where they buy the most.

For every tensor, candidates are priced (the record's bytes, from the
encodings' own size rules) and scored by the squared error of what the
receiver would rebuild. The representations (``REPRESENTATIONS``):

- ``top-z``: the largest entries, k-means-quantised, with their positions
  (kept counts on a geometric grid, 1 to 16 clusters): the paper's method.
  Keeping every entry is dense quantisation: no positions travel then;
- ``factors``: a matrix (a tensor of two or more dimensions, read as
  ``shape[0]`` rows) as rank-r factors, every column quantised to 2 to 8
  levels (:mod:`fedzip.factors`); every rank comes from one randomised SVD.

Each tensor's candidates are cut to their lower convex hull (bytes against
error), and the budget goes, one step at a time, to the step that removes the
most error per byte: the Lagrangian allocation of rate-distortion theory,
greedy on convex hulls. Candidates are priced without being built, from one
pass over the kept values or one product with the matrix; only the chosen ones
are built. A priced size is exact or an upper bound of the built one, so the
payload never exceeds the budget; what the budget cannot buy stays in the
error-feedback residual when one is used.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import encodings, gaps, huffman, wire
from .encodings import Quantized
from .factors import factor_rank, leading_factors, pack_columns, quantise_columns_many
from .packing import Packed
from .quantize import assign, cluster_centroids_many
from .sparsify import CHUNK, top_entries

REPRESENTATIONS = ("top-z", "factors")
DEFAULT_REPRESENTATIONS = REPRESENTATIONS
# Kept fractions tried for every sparsified tensor (each also bounded by its nonzeros).
FRACTIONS = tuple(float(f) for f in np.geomspace(1e-5, 1.0, 25))
CLUSTER_CHOICES = (1, 2, 3, 4, 8, 16)
RANKS = (1, 2, 3, 4, 6, 8, 12, 16)
FACTOR_LEVELS = (2, 3, 4, 8)
# Size of the k-means program that prices candidates (the codec's own quantiser uses 512): its cost
# grows with the square, and Lloyd iterations over every kept value refine what it finds.
PRICING_POINTS = 128


@dataclass(frozen=True)
class Option:
    """One way to send a tensor: exactly what it costs and what it leaves out."""

    item: Quantized | Packed | Callable[[], Packed]  # factors: built when chosen (see build())
    record_bytes: int
    error: float  # squared error of the rebuilt tensor
    form: str  # one of REPRESENTATIONS
    detail: str  # its size: "keep 0.0031, 3 clusters", "rank 2, 3 levels", "4 levels"

    def build(self) -> Quantized | Packed:
        """What the codec writes: the quantised tensor, or its factors or levels."""
        return self.item() if callable(self.item) else self.item


def _price(name: str, q: Quantized, encoding: str) -> int:
    """Bytes of ``q``'s record in ``encoding`` (``auto``: the smallest), as the codec writes it."""
    bits = encodings.choose(q, encoding)[2]
    return wire.record_bytes(name, q.shape, q.kept, q.centroids.size, bits)


def _body_bits_at_most(encoding: str, size: int, symbol_counts: np.ndarray, label_bits: int) -> int:
    """An upper bound of the body bits of a tensor of ``size`` entries with ``symbol_counts`` (pruned
    entries, then each cluster's) in ``encoding`` (``auto``: the least); ``label_bits`` bounds the
    labels' code. Exact for ``huffman`` and ``position``. For ``dap``, Golomb-Rice at the density's
    parameter b spends ``kept * (b + 1) + sum((gap - 1) >> b)`` bits and the gaps add up to at most
    ``size``: the positions need no sorting to bound it."""
    kept = size - int(symbol_counts[0])
    bits = {"huffman": huffman.stream_bits(symbol_counts)}
    if kept == size:  # every entry kept: no positions travel
        bits["position"] = bits["dap"] = label_bits
    else:
        bits["position"] = kept * encodings.address_width(size) + label_bits
        b = gaps.rice_parameter(kept / size)
        bits["dap"] = 1 + gaps.RICE_PARAM_BITS + kept * (b + 1) + ((size - kept) >> b) + label_bits
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


def _topz_options(
    name: str, array: np.ndarray, encoding: str, energy: float, index: np.ndarray, counts: list[int]
) -> list[Option]:
    """Top-z with every count of ``counts`` of the entries at ``index`` (largest magnitude first) and
    every cluster count, priced without building: the kept set of every count, sorted by value, is
    its negative entries (ascending) then its positive ones (the two tails of the magnitude order),
    so k-means, its squared error and its label counts cost one pass over the kept values. Bytes
    are an upper bound (:func:`_position_bits_at_most`; labels one per code word), reached or
    beaten when the option is built."""
    flat = array.reshape(-1)
    values = flat[index].astype(np.float64)
    negative = values < 0
    ascending_negatives, descending_positives = values[negative], values[~negative]
    negatives_before = np.concatenate(([0], np.cumsum(negative)))
    kept_energy = np.concatenate(([0.0], np.cumsum(values * values)))
    options = []
    for count in counts:
        below = int(negatives_before[count])
        kept = np.concatenate((ascending_negatives[:below], descending_positives[: count - below][::-1]))
        sums = np.concatenate(([0.0], np.cumsum(kept)))
        squares = np.concatenate(([0.0], np.cumsum(kept * kept)))
        left_out = max(energy - float(kept_energy[count]), 0.0)
        choices = tuple(k for k in CLUSTER_CHOICES if k <= count)
        for found in cluster_centroids_many(kept, choices, PRICING_POINTS).values():
            centroids = np.unique(found.astype(np.float32))
            c = centroids.astype(np.float64)
            cuts = np.concatenate(([0], np.searchsorted(kept, (c[:-1] + c[1:]) / 2, side="right"), [count]))
            n, s, q = np.diff(cuts), np.diff(sums[cuts]), np.diff(squares[cuts])
            error = left_out + max(float(np.sum(q - 2 * c * s + n * c * c)), 0.0)
            labels = 0 if c.size < 2 else huffman.GROUP_BITS + huffman.stream_bits(n)
            symbols = np.concatenate(([flat.size - count], n))
            bits = _body_bits_at_most(encoding, flat.size, symbols, labels)
            size = wire.record_bytes(name, array.shape, count, c.size, bits)
            build = functools.partial(_build_topz, array, index[:count], centroids)
            detail = f"keep {count / max(flat.size, 1):.3g}, {c.size} clusters"
            options.append(Option(build, size, error, "top-z", detail))
    return options


def _build_topz(array: np.ndarray, kept: np.ndarray, centroids: np.ndarray) -> Quantized:
    positions = np.sort(kept)
    labels = assign(array.reshape(-1)[positions], centroids).astype(np.uint8)
    return Quantized(array.shape, array.dtype, positions, labels, centroids)


def tensor_options(
    name: str,
    array: np.ndarray,
    sparsify: bool,
    encoding: str,
    max_bytes: int | None = None,
    representations: tuple[str, ...] = ("top-z",),
    iterations: int = 4,
) -> list[Option]:
    """The tensor's candidates in ``representations`` that no cheaper one beats, cheapest first.

    A tensor that is not sparsified (a bias, unless ``sparsify_1d``) has its
    nonzero entries quantised in place of Top-z's candidates. Kept counts that
    could not fit in ``max_bytes`` are not tried.
    """
    flat = array.reshape(-1)
    energy, nonzero = _energy(flat)
    candidates: list[Option] = []
    if nonzero and ("top-z" in representations or not sparsify):
        if sparsify:
            largest = nonzero if max_bytes is None else min(nonzero, _affordable(flat.size, max_bytes))
            index = top_entries(flat, largest)
            counts = sorted({min(largest, max(1, math.ceil(f * flat.size))) for f in FRACTIONS})
        else:
            index, counts = np.flatnonzero(flat), [nonzero]
        index = index[np.argsort(-np.abs(flat[index]), kind="stable")]  # ties: the lower address
        candidates += _topz_options(name, array, encoding, energy, index, counts)
    if "factors" in representations:
        fits = (lambda o: True) if max_bytes is None else (lambda o: o.record_bytes <= max_bytes)
        candidates += [o for o in _factor_options(name, array, energy, iterations) if fits(o)]
    if not candidates:  # an empty or all-zero tensor
        q = Quantized(
            array.shape, array.dtype, np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.float32)
        )
        candidates.append(Option(q, _price(name, q, encoding), energy, "top-z", "nothing"))
    return _pareto(candidates)


def _factor_options(name: str, array: np.ndarray, energy: float, iterations: int) -> list[Option]:
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


def _largest_first(magnitude: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest nonzero magnitudes, largest first.

    ``count`` is at most the number of nonzeros; ties go to the lower address,
    as in :func:`fedzip.sparsify.top_entries`.
    """
    if count < magnitude.size:
        top = np.argpartition(-magnitude, count - 1)[:count]
    else:
        top = np.flatnonzero(magnitude)
    return top[np.lexsort((top, -magnitude[top]))]


def _pareto(options: list[Option]) -> list[Option]:
    """Cheapest first, each with less error than every cheaper one."""
    front: list[Option] = []
    for option in sorted(options, key=lambda o: (o.record_bytes, o.error)):
        if not front or option.error < front[-1].error:
            front.append(option)
    return front


def _hull(options: list[Option]) -> list[Option]:
    """Lower convex hull of (bytes, error): each step buys less error per byte than the one before."""
    frontier: list[Option] = []
    for option in _pareto(options):
        while len(frontier) >= 2:
            a, b = frontier[-2], frontier[-1]
            # b is above the line from a to option: never the best use of its bytes
            if (b.error - a.error) * (option.record_bytes - a.record_bytes) >= (option.error - a.error) * (
                b.record_bytes - a.record_bytes
            ):
                frontier.pop()
            else:
                break
        frontier.append(option)
    return frontier


def allocate(per_tensor: dict[str, list[Option]], budget: int) -> dict[str, Option]:
    """The option of every tensor that minimises total error with a payload of at most ``budget`` bytes.

    Greedy on the convex hulls first (the step that removes the most error per byte); then the bytes
    the hulls' steps could not use go, one tensor at a time, to the candidate off the hull that
    removes the most error and still fits.
    """
    overhead = wire.container_bytes(len(per_tensor))
    hulls = {name: _hull(options) for name, options in per_tensor.items()}
    chosen = {name: 0 for name in hulls}
    spent = overhead + sum(options[0].record_bytes for options in hulls.values())
    if spent > budget:
        raise ValueError(
            f"budget_bytes={budget} is below the smallest payload for this update ({spent} bytes: one entry "
            "per tensor, dense biases and the headers); raise the budget or set sparsify_1d=True"
        )
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        options, index = hulls[name], chosen[name]
        if index + 1 < len(options):
            step, nxt = options[index], options[index + 1]
            gain = (step.error - nxt.error) / max(nxt.record_bytes - step.record_bytes, 1)
            heapq.heappush(heap, (-gain, name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        options, index = hulls[name], chosen[name]
        extra = options[index + 1].record_bytes - options[index].record_bytes
        if spent + extra > budget:
            continue  # this tensor's next step does not fit; cheaper steps of others may
        chosen[name] = index + 1
        spent += extra
        push(name)
    result = {name: hulls[name][index] for name, index in chosen.items()}
    while True:  # fill what is left
        best, gain = None, 0.0
        for name, options in per_tensor.items():
            current = result[name]
            room = budget - spent + current.record_bytes
            fitting = [o for o in options if o.record_bytes <= room]
            if fitting and current.error - fitting[-1].error > gain:
                best, gain = (name, fitting[-1]), current.error - fitting[-1].error
        if best is None:
            return result
        name, option = best
        spent += option.record_bytes - result[name].record_bytes
        result[name] = option


def settle(
    per_tensor: dict[str, list[Option]],
    chosen: dict[str, Option],
    budget: int,
    encoding: str,
    shapes: dict[str, tuple[int, ...]],
) -> dict[str, tuple[Option, Quantized | Packed]]:
    """Build the ``chosen`` options; the bytes their priced sizes over-counted then buy, one tensor at
    a time, the candidate that removes the most error and still fits, built and measured in turn."""

    def measure(name: str, item: Quantized | Packed) -> int:
        if isinstance(item, Quantized):
            return _price(name, item, encoding)
        return wire.record_bytes(name, shapes[name], item.kept, item.params.size, item.body_bits)

    built = {name: (option, option.build()) for name, option in chosen.items()}
    sizes = {name: measure(name, item) for name, (_, item) in built.items()}
    spent = wire.container_bytes(len(built)) + sum(sizes.values())
    for _ in range(2 * len(built)):
        best, gain = None, 0.0
        for name, options in per_tensor.items():
            current = built[name][0]
            room = budget - spent + sizes[name]
            fitting = [o for o in options if o.record_bytes <= room and o is not current]
            if fitting and current.error - min(o.error for o in fitting) > gain:
                option = min(fitting, key=lambda o: o.error)
                best, gain = (name, option), current.error - option.error
        if best is None:
            break
        name, option = best
        item = option.build()
        size = measure(name, item)
        spent += size - sizes[name]
        built[name], sizes[name] = (option, item), size
    return built


def largest_uniform_keep(
    arrays: dict[str, np.ndarray],
    sparsified: dict[str, bool],
    clusters: int | str,
    encoding: str,
    budget: int,
    steps: int = 24,
) -> dict[str, Quantized]:
    """Top-z's own rule under a budget: one kept fraction for every sparsified tensor, as large as fits.

    Each tensor keeps its largest ``keep_count(size, keep)`` nonzero entries
    with ``clusters`` k-means clusters, exactly as ``FedZip(keep=keep)``
    would; ``keep`` is found by bisection on its logarithm.
    """
    from .quantize import quantize
    from .sparsify import keep_count

    cap = max(1, 8 * budget)  # every kept entry costs at least one bit
    orders: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fixed: dict[str, Quantized] = {}  # tensors sent whole: the same at every keep
    fixed_bytes = wire.container_bytes(len(arrays))
    for name, array in arrays.items():
        flat = array.reshape(-1)
        if sparsified[name]:
            magnitude = np.abs(flat)
            orders[name] = (flat, _largest_first(magnitude, min(int(np.count_nonzero(flat)), cap)))
        else:
            positions = np.flatnonzero(flat)
            centroids, labels = quantize(flat[positions], clusters)
            fixed[name] = Quantized(array.shape, array.dtype, positions, labels, centroids)
            fixed_bytes += _price(name, fixed[name], encoding)

    def build(keep: float) -> tuple[dict[str, Quantized], int]:
        chosen = dict(fixed)
        total = fixed_bytes
        for name, (flat, order) in orders.items():
            positions = np.sort(order[: keep_count(flat.size, keep)])
            centroids, labels = quantize(flat[positions], clusters)
            q = Quantized(arrays[name].shape, arrays[name].dtype, positions, labels, centroids)
            chosen[name] = q
            total += _price(name, q, encoding)
        return {name: chosen[name] for name in arrays}, total

    smallest, spent = build(0.0)  # one entry per sparsified tensor
    if spent > budget:
        raise ValueError(
            f"budget_bytes={budget} is below the smallest payload for this update ({spent} bytes: one entry "
            "per tensor, dense biases and the headers); raise the budget or set sparsify_1d=True"
        )
    whole, spent = build(1.0)
    if spent <= budget:
        return whole
    best, low, high = smallest, math.log(1e-9), 0.0
    for _ in range(steps):
        middle = (low + high) / 2
        chosen, spent = build(math.exp(middle))
        if spent <= budget:
            best, low = chosen, middle
        else:
            high = middle
    # Bytes are not quite monotone in keep (the codes' tables change with the counts): bisection can
    # stop short of a keep that fits, so one more entry in the largest tensor is tried while it does.
    if orders:
        largest = max(orders, key=lambda n: orders[n][0].size)
        size = orders[largest][0].size
        for _ in range(64):
            count = best[largest].kept
            chosen, spent = build((count + 1) / size)
            if spent > budget or chosen[largest].kept <= count:
                break
            best = chosen
    return best
