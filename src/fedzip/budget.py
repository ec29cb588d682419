"""A byte budget instead of a kept fraction: split it across tensors where it buys the most.

For every tensor, candidate (kept entries, clusters) pairs are priced exactly
(the record's bytes, from the encodings' own size plans) and scored by the
squared error of what the receiver would rebuild: the energy of the entries
left out plus the k-means error of those sent. Each tensor's candidates are
cut to their lower convex hull (bytes against error), and the budget goes, one
step at a time, to the step that removes the most error per byte: the
Lagrangian allocation of rate-distortion theory, greedy on convex hulls. The
payload never exceeds the budget; what the budget cannot buy stays in the
error-feedback residual when one is used.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from . import encodings, wire
from .encodings import Quantized
from .quantize import quantize_many

# Kept fractions tried for every sparsified tensor (each also bounded by its nonzeros).
FRACTIONS = tuple(float(f) for f in np.geomspace(1e-5, 1.0, 25))
CLUSTER_CHOICES = (1, 2, 3, 4, 8, 16)


@dataclass(frozen=True)
class Option:
    """One way to send a tensor: exactly what it costs and what it leaves out."""

    quantized: Quantized
    record_bytes: int
    error: float  # squared error of the rebuilt tensor


def _price(name: str, q: Quantized, encoding: str) -> int:
    """Bytes of ``q``'s record in ``encoding`` (``auto``: the smallest), as the codec writes it."""
    bits = encodings.choose(q, encoding)[2]
    return wire.record_bytes(name, q.shape, q.kept, q.centroids.size, bits)


def tensor_options(
    name: str, array: np.ndarray, sparsify: bool, encoding: str, max_bytes: int | None = None
) -> list[Option]:
    """The tensor's candidates on their lower convex hull, cheapest first.

    Kept counts that could not fit in ``max_bytes`` (every kept entry costs at
    least one bit) are not tried.
    """
    flat = array.reshape(-1)
    values64 = flat.astype(np.float64)
    total = float(np.dot(values64, values64))
    nonzero = int(np.count_nonzero(flat))
    if sparsify and nonzero:
        largest = nonzero if max_bytes is None else max(1, min(nonzero, 8 * max_bytes))
        order = _largest_first(np.abs(values64), largest)
        counts = sorted({min(largest, max(1, math.ceil(f * flat.size))) for f in FRACTIONS})
    else:
        order = np.flatnonzero(flat)
        counts = [nonzero]
    candidates = []
    for count in counts:
        positions = np.sort(order[:count]) if sparsify else order
        kept = values64[positions]
        left_out = total - float(np.dot(kept, kept))
        choices = tuple(k for k in CLUSTER_CHOICES if k <= max(count, 1))
        for centroids, labels in quantize_many(kept, choices).values():
            error = max(left_out, 0.0) + float(np.sum((kept - centroids.astype(np.float64)[labels]) ** 2))
            q = Quantized(array.shape, array.dtype, positions, labels, centroids)
            candidates.append(Option(q, _price(name, q, encoding), error))
    if not candidates:  # an empty or all-zero tensor
        q = Quantized(
            array.shape, array.dtype, np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.float32)
        )
        candidates.append(Option(q, _price(name, q, encoding), total))
    return _hull(candidates)


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


def _hull(options: list[Option]) -> list[Option]:
    """Lower convex hull of (bytes, error): each step buys less error per byte than the one before."""
    options = sorted(options, key=lambda o: (o.record_bytes, o.error))
    frontier: list[Option] = []
    for option in options:
        if frontier and option.error >= frontier[-1].error:
            continue  # costs at least as much and is no better
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
    """The option of every tensor that minimises total error with a payload of at most ``budget`` bytes."""
    overhead = wire.container_bytes(len(per_tensor))
    chosen = {name: 0 for name in per_tensor}
    spent = overhead + sum(options[0].record_bytes for options in per_tensor.values())
    if spent > budget:
        raise ValueError(
            f"budget_bytes={budget} is below the smallest payload for this update ({spent} bytes: one entry "
            "per tensor, dense biases and the headers); raise the budget or set sparsify_1d=True"
        )
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        options, index = per_tensor[name], chosen[name]
        if index + 1 < len(options):
            step, nxt = options[index], options[index + 1]
            gain = (step.error - nxt.error) / max(nxt.record_bytes - step.record_bytes, 1)
            heapq.heappush(heap, (-gain, name))

    for name in per_tensor:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        options, index = per_tensor[name], chosen[name]
        extra = options[index + 1].record_bytes - options[index].record_bytes
        if spent + extra > budget:
            continue  # this tensor's next step does not fit; cheaper steps of others may
        chosen[name] = index + 1
        spent += extra
        push(name)
    return {name: per_tensor[name][index] for name, index in chosen.items()}


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
    return best
