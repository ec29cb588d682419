"""A byte budget instead of a kept fraction: each tensor's representation and size, where they buy the most.

For every tensor, candidates are priced exactly (the record's bytes, from the
encodings' own size plans) and scored by the squared error of what the
receiver would rebuild. The representations (``REPRESENTATIONS``):

- ``top-z``: the largest entries, k-means-quantised, with their positions
  (kept counts on a geometric grid, 1 to 16 clusters): the paper's method;
- ``dense``: every entry quantised to 2 to 16 levels, no positions
  (:func:`fedzip.factors.pack_dense`);
- ``factors``: a matrix (a tensor of two or more dimensions, read as
  ``shape[0]`` rows) as rank-r factors, every column quantised to 2 to 8
  levels (:mod:`fedzip.factors`); every rank comes from one randomised SVD.

Each tensor's candidates are cut to their lower convex hull (bytes against
error), and the budget goes, one step at a time, to the step that removes the
most error per byte: the Lagrangian allocation of rate-distortion theory,
greedy on convex hulls. The payload never exceeds the budget; what the budget
cannot buy stays in the error-feedback residual when one is used.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import encodings, huffman, wire
from .encodings import Quantized
from .factors import factor_rank, leading_factors, pack_columns, pack_dense, quantise_columns
from .packing import Packed
from .quantize import quantize_many

REPRESENTATIONS = ("top-z", "dense", "factors")
# Not "dense" by default: Top-z at a large keep is dense quantisation with zero as one more level, its
# positions cost at most about a bit an entry, and on Gaussian noise at 1 to 4 bits an entry it left
# less error than dense levels at the same bytes (tests/test_budget.py); dense only doubles the work.
DEFAULT_REPRESENTATIONS = ("top-z", "factors")
# Kept fractions tried for every sparsified tensor (each also bounded by its nonzeros).
FRACTIONS = tuple(float(f) for f in np.geomspace(1e-5, 1.0, 25))
CLUSTER_CHOICES = (1, 2, 3, 4, 8, 16)
DENSE_LEVELS = (2, 3, 4, 8, 16)
RANKS = (1, 2, 3, 4, 6, 8, 12, 16)
FACTOR_LEVELS = (2, 3, 4, 8)


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


def _packed_option(
    name: str, array: np.ndarray, flat64: np.ndarray, packed: Packed, form: str, detail: str
) -> Option:
    size = wire.record_bytes(name, array.shape, packed.kept, packed.params.size, packed.body_bits)
    error = float(np.sum((flat64 - packed.values.astype(np.float64)) ** 2))
    return Option(packed, size, error, form, detail)


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
    nonzero entries quantised in place of Top-z's candidates. Candidates that
    could not fit in ``max_bytes`` are not tried.
    """
    flat = array.reshape(-1)
    values64 = flat.astype(np.float64)
    total = float(np.dot(values64, values64))
    nonzero = int(np.count_nonzero(flat))
    candidates = []
    if "top-z" in representations or not sparsify:
        if sparsify and nonzero:
            largest = nonzero if max_bytes is None else max(1, min(nonzero, 8 * max_bytes))
            order = _largest_first(np.abs(values64), largest)
            counts = sorted({min(largest, max(1, math.ceil(f * flat.size))) for f in FRACTIONS})
        else:
            order = np.flatnonzero(flat)
            counts = [nonzero]
        for count in counts:
            positions = np.sort(order[:count]) if sparsify else order
            kept = values64[positions]
            left_out = total - float(np.dot(kept, kept))
            choices = tuple(k for k in CLUSTER_CHOICES if k <= max(count, 1))
            for k, (centroids, labels) in quantize_many(kept, choices).items():
                error = max(left_out, 0.0) + float(np.sum((kept - centroids.astype(np.float64)[labels]) ** 2))
                q = Quantized(array.shape, array.dtype, positions, labels, centroids)
                detail = f"keep {count / max(flat.size, 1):.3g}, {k} clusters"
                candidates.append(Option(q, _price(name, q, encoding), error, "top-z", detail))
    fits = (lambda o: True) if max_bytes is None else (lambda o: o.record_bytes <= max_bytes)
    if "dense" in representations and flat.size:
        for levels in DENSE_LEVELS:
            option = _packed_option(
                name, array, values64, pack_dense(flat, levels), "dense", f"{levels} levels"
            )
            candidates += [option] if fits(option) else []
    if "factors" in representations:
        candidates += [o for o in _factor_options(name, array, total, iterations) if fits(o)]
    if not candidates:  # an empty or all-zero tensor
        q = Quantized(
            array.shape, array.dtype, np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.float32)
        )
        candidates.append(Option(q, _price(name, q, encoding), total, "top-z", "nothing"))
    return _pareto(candidates)


def _factor_options(name: str, array: np.ndarray, energy: float, iterations: int) -> list[Option]:
    """Rank-r factors at every rank of ``RANKS`` worth factoring and every level count, priced
    without building them: a column is quantised alike at every rank, so one product per level
    count gives every rank's error, ``|M|^2 - 2 sum_j l_j.M r_j + sum_ij (L'L)_ij (R'R)_ij``,
    and label counts give the Huffman stream's bits. Each Option builds its factors when asked."""
    top = max((r for r in RANKS if factor_rank(array.shape, r) == r), default=0)
    if not top:
        return []
    rows = array.shape[0]
    matrix = array.reshape(rows, -1)
    left, right = leading_factors(array, top, iterations)
    options = []
    for levels in FACTOR_LEVELS:
        left_columns, right_columns = quantise_columns(left, levels), quantise_columns(right, levels)
        dequantised = [
            centroids[labels].astype(np.float64) for centroids, labels in left_columns + right_columns
        ]
        left_q, right_q = np.stack(dequantised[:top], 1), np.stack(dequantised[top:], 1)
        projected = (matrix @ right_q.astype(matrix.dtype)).astype(np.float64)  # M r_j, one product
        cross = np.einsum("ij,ij->j", left_q, projected)
        gram = (left_q.T @ left_q) * (right_q.T @ right_q)
        counts = [np.bincount(labels, minlength=levels) for _, labels in left_columns + right_columns]
        for rank in (r for r in RANKS if r <= top):
            error = energy - 2 * float(cross[:rank].sum()) + float(gram[:rank, :rank].sum())
            used = sum(counts[:rank]) + sum(counts[top : top + rank])
            bits = 24 + huffman.stream_bits(used)
            size = wire.record_bytes(
                name, array.shape, rank * (rows + matrix.shape[1]), 2 * rank * levels, bits
            )
            # built from the columns quantised here: the chosen factors cost no second k-means
            build = functools.partial(pack_columns, left_columns[:rank] + right_columns[:rank], levels, rows)
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
