"""A byte budget instead of a kept fraction: each tensor's representation and size, where they buy the most.

Every tensor's candidates (:mod:`fedzip.candidates`: Top-z at many kept counts
and cluster counts, rank-r factors) are cut to their lower convex hull (bytes
against squared error), and the budget goes, one step at a time, to the step
that removes the most error per byte: the Lagrangian allocation of
rate-distortion theory, greedy on convex hulls. Candidates are priced without
being built; a priced size is exact or an upper bound of the built one, so the
payload never exceeds the budget, and what the bounds over-counted buys more
once the chosen ones are built. What the budget cannot buy stays in the
error-feedback residual when one is used.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from . import wire
from .candidates import price
from .encodings import Quantized
from .option import Option, pareto
from .packing import Packed
from .topz import TopzBuild


def _largest_first(magnitude: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest nonzero magnitudes, largest first.

    ``count`` is at most the number of nonzeros; ties go to the lower address,
    as in :func:`fedzip.sparsify.top_entries`.
    """
    if count < magnitude.size:
        top = np.argpartition(-magnitude, count - 1)[:count]
    else:
        top = np.flatnonzero(magnitude != 0)
    return top[np.lexsort((top, -magnitude[top]))]


def _below_smallest(budget: int, spent: int, keyed: bool, reserved: int) -> ValueError:
    """The error of a budget below the smallest payload; ``reserved``: bytes the caller set aside
    before ``budget`` (integer tensors sent exactly), named in the user's terms."""
    keyed_hint = (
        ""
        if keyed
        else "; when the receiver knows the model (the server, for uploads), known_layout=True leaves "
        "every tensor's name, dtype and shape out (about 20 bytes a tensor)"
    )
    return ValueError(
        f"budget_bytes={budget + reserved} is below the smallest payload for this update "
        f"({spent + reserved} bytes: one entry per tensor, dense biases"
        f"{', integer tensors sent exactly' if reserved else ''} and the headers); raise the budget or "
        f"set sparsify_1d=True{keyed_hint}"
    )


def _hull(options: list[Option]) -> list[Option]:
    """Lower convex hull of (bytes, error): each step buys less error per byte than the one before."""
    frontier: list[Option] = []
    for option in pareto(options):
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


def allocate(
    per_tensor: dict[str, list[Option]], budget: int, keyed: bool = False, reserved: int = 0
) -> dict[str, Option]:
    """The option of every tensor that minimises total error with a payload of at most ``budget`` bytes
    (``reserved``: bytes set aside before it, named when it is too small).

    Greedy on the convex hulls first (the step that removes the most error per byte); then the bytes
    the hulls' steps could not use go, one tensor at a time, to the candidate off the hull that
    removes the most error and still fits.
    """
    overhead = wire.container_bytes(len(per_tensor), keyed)
    hulls = {name: _hull(options) for name, options in per_tensor.items()}
    chosen = {name: 0 for name in hulls}
    spent = overhead + sum(options[0].record_bytes for options in hulls.values())
    if spent > budget:
        raise _below_smallest(budget, spent, keyed, reserved)
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
            least = min(fitting, key=lambda o: o.error) if fitting else None
            if least is not None and current.error - least.error > gain:
                best, gain = (name, least), current.error - least.error
        if best is None:
            return result
        name, option = best
        spent += option.record_bytes - result[name].record_bytes
        result[name] = option


def choose(
    per_tensor: dict[str, list[Option]],
    budget: int,
    encoding: str,
    shapes: dict[str, tuple[int, ...]],
    keyed: bool = False,
    reserved: int = 0,
) -> dict[str, tuple[Option, Quantized | Packed]]:
    """Every tensor's option within ``budget``, built (:func:`allocate`, then :func:`settle`).

    The greedy walk is no exact knapsack: with several forms it can end a little worse than one
    form alone (measured: 0.805 against Top-z alone's 0.798 relative error on a CNN update), so
    the walk also runs on each form alone (a tensor may still send nothing); the allocations within
    ``SETTLED_WITHIN`` of the least priced error are built and settled, and the least total error
    built is kept (compared before settling, a settled Top-z alone once ended 1% ahead of the
    combined choice).
    """
    option_sets = [per_tensor]
    forms = sorted({o.form for options in per_tensor.values() for o in options if o.detail != "nothing"})
    for form in forms if len(forms) > 1 else ():
        option_sets.append(
            {
                name: [o for o in options if o.form == form or o.detail == "nothing"] or options
                for name, options in per_tensor.items()
            }
        )
    allocations = [(options, allocate(options, budget, keyed, reserved)) for options in option_sets]
    priced = [sum(o.error for o in chosen.values()) for _, chosen in allocations]
    best, least = {}, math.inf
    for (options, chosen), priced_error in zip(allocations, priced, strict=True):
        if priced_error > SETTLED_WITHIN * min(priced):
            continue  # settling buys a few percent at most: building it would be wasted work
        built = settle(options, chosen, budget, encoding, shapes, keyed)
        built_error = sum(option.error for option, _ in built.values())
        if built_error < least:
            best, least = built, built_error
    return best


# Allocations whose priced error is this close to the least are all built and settled.
SETTLED_WITHIN = 1.05


def settle(
    per_tensor: dict[str, list[Option]],
    chosen: dict[str, Option],
    budget: int,
    encoding: str,
    shapes: dict[str, tuple[int, ...]],
    keyed: bool = False,
) -> dict[str, tuple[Option, Quantized | Packed]]:
    """Build the ``chosen`` options; the bytes their priced sizes over-counted then buy, one tensor at
    a time, the candidate that removes the most error and still fits, built and measured in turn."""

    def measure(name: str, item: Quantized | Packed) -> int:
        label = None if keyed else name
        if isinstance(item, Quantized):
            return price(label, item, encoding)
        return wire.record_bytes(label, shapes[name], item.kept, item.params.size, item.body_bits)

    built = {}
    for name, option in chosen.items():
        built[name] = option, option.build()
        _release(option)  # one tensor's candidates at a time: found again if its set grows below
    sizes = {name: measure(name, item) for name, (_, item) in built.items()}
    spent = wire.container_bytes(len(built), keyed) + sum(sizes.values())
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
        _release(option)
        size = measure(name, item)
        spent += size - sizes[name]
        built[name], sizes[name] = (option, item), size
    # Kept counts come on a grid, and a bound's slack can be most of a step: what is left buys more
    # entries of the Top-z tensors that leave the most out, at counts between the grid's.
    for name in sorted(built, key=lambda n: -built[n][0].error)[:STRETCHED]:
        option, item = built[name]
        if not isinstance(option.item, TopzBuild) or budget - spent <= 0:
            continue
        grown = _stretch(name, option, sizes[name], sizes[name] + budget - spent, measure)
        _release(option)
        if grown is not None:
            spent += grown[0].record_bytes - sizes[name]
            built[name], sizes[name] = grown, grown[0].record_bytes
    return built


def _release(option: Option) -> None:
    """Let a built Top-z option's pool drop its candidates (see :class:`fedzip.topz.Pool`)."""
    if isinstance(option.item, TopzBuild):
        option.item.pool.release()


STRETCHED = 4  # tensors whose kept sets settle may grow
GROWTH_BUILDS = 4  # builds a growing kept set may take


def _stretch(
    name: str, option: Option, size: int, room: int, measure: Callable[[str, Quantized | Packed], int]
) -> tuple[Option, Quantized] | None:
    """The largest kept set of ``option``'s tensor (same centroids, lower threshold) whose record
    fits ``room`` bytes, as an option priced at its measured bytes and its build, or None;
    ``size``: the record's measured bytes now.

    A grown set's bytes are predicted from the pool's bound, interpolated between the records
    measured so far (the bound over-counts by a varying fraction); each prediction is built and
    measured, a few times at most.
    """
    build: TopzBuild = option.item  # type: ignore[assignment]
    pool, centroids = build.pool, build.centroids
    seen = [(option.record_bytes, size)]  # (bound, measured)
    # an entry sent as its nearest centroid removes error only if it is more than half that
    # centroid's size (same sign): the kept set grows no lower than half the larger of the two
    # signs' smallest centroids
    positive, negative = centroids[centroids > 0], centroids[centroids < 0]
    if not positive.size or not negative.size:
        return None
    floor = max(float(positive.min()), -float(negative.max())) / 2
    best, fits, over = None, build.threshold, floor  # thresholds: measured to fit, measured not to

    def predicted(threshold: float) -> float:
        bound = pool.cost(pool.kept(threshold), centroids)[0]
        below = [p for p in seen if p[0] <= bound]
        above = [p for p in seen if p[0] > bound]
        if below and above:
            (b0, m0), (b1, m1) = max(below), min(above)
            return m0 + (m1 - m0) * (bound - b0) / (b1 - b0)
        b0, m0 = max(below) if below else min(above)
        return bound * m0 / b0

    aim = room  # lowered by each overshoot, so that a jump in the measured sizes is not chased
    for _ in range(GROWTH_BUILDS):
        low, high = over, fits  # the largest kept set predicted to fit lies between
        if predicted(low) <= aim:
            high = low
        else:
            for _ in range(48):
                middle = (low + high) / 2
                if predicted(middle) <= aim:
                    high = middle
                else:
                    low = middle
        threshold = pool.smallest_kept(high)
        if threshold >= fits:
            break
        grown = replace(build, threshold=threshold)
        item = grown()
        measured = measure(name, item)
        bound, error = pool.cost(pool.kept(threshold), centroids)
        seen.append((bound, measured))
        if measured > room:
            over, aim = threshold, aim - (measured - room)
        elif error < option.error:
            best, fits, aim = (grown, item, measured, error), threshold, room
        else:
            over = threshold
    if best is None:
        return None
    grown, item, measured, error = best
    kept = f"keep {item.kept / max(item.size, 1):.3g}, {item.centroids.size} clusters"
    return Option(grown, measured, error, option.form, kept), item


def largest_uniform_keep(
    arrays: dict[str, np.ndarray],
    sparsified: dict[str, bool],
    clusters: int | str,
    encoding: str,
    budget: int,
    steps: int = 24,
    keyed: bool = False,
    reserved: int = 0,
) -> dict[str, Quantized]:
    """Top-z's own rule under a budget: one kept fraction for every sparsified tensor, as large as fits.

    Each tensor keeps its largest ``keep_count(size, keep)`` nonzero entries
    with ``clusters`` k-means clusters, exactly as ``FedZip(keep=keep)``
    would; ``keep`` is found by bisection on its logarithm. ``keyed``: priced
    for the keyed container; ``reserved`` as :func:`allocate`'s.
    """
    from .quantize import quantize
    from .sparsify import keep_count

    cap = max(1, 8 * budget)  # every kept entry costs at least one bit
    orders: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fixed: dict[str, Quantized] = {}  # tensors sent whole: the same at every keep
    fixed_bytes = wire.container_bytes(len(arrays), keyed)
    for name, array in arrays.items():
        flat = array.reshape(-1)
        if sparsified[name]:
            magnitude = np.abs(flat)
            orders[name] = (flat, _largest_first(magnitude, min(int(np.count_nonzero(flat)), cap)))
        else:
            positions = np.flatnonzero(flat != 0)
            centroids, labels = quantize(flat[positions], clusters)
            fixed[name] = Quantized(array.shape, array.dtype, positions, labels, centroids)
            fixed_bytes += price(None if keyed else name, fixed[name], encoding)

    def build(keep: float) -> tuple[dict[str, Quantized], int]:
        chosen = dict(fixed)
        total = fixed_bytes
        for name, (flat, order) in orders.items():
            positions = np.sort(order[: keep_count(flat.size, keep)])
            centroids, labels = quantize(flat[positions], clusters)
            q = Quantized(arrays[name].shape, arrays[name].dtype, positions, labels, centroids)
            chosen[name] = q
            total += price(None if keyed else name, q, encoding)
        return {name: chosen[name] for name in arrays}, total

    smallest, spent = build(0.0)  # one entry per sparsified tensor
    if spent > budget:
        raise _below_smallest(budget, spent, keyed, reserved)
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
