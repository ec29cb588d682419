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
from collections.abc import Sequence

import numpy as np

from . import encodings, huffman, wire
from .encodings import Quantized
from .factors import factor_rank, leading_factors, pack_columns, quantise_columns_many
from .option import Option, pareto
from .sparsify import CHUNK
from .topz import PRICING_POINTS, Pool, topz_options

REPRESENTATIONS = ("top-z", "factors")
# Kept fractions tried for every sparsified tensor (each also bounded by its nonzeros).
FRACTIONS = tuple(float(f) for f in np.geomspace(1e-5, 1.0, 25))
RANKS = (1, 2, 3, 4, 6, 8, 12, 16)
FACTOR_LEVELS = (2, 3, 4, 8)
# A tensor's Top-z counts are priced up to this many times its share of the budget by size (and
# at least MIN_PRICED entries): on the probe's real updates the budget never gave a tensor more.
SHARE_LIMIT = 8.0
MIN_PRICED = 4096


def checked_representations(chosen: Sequence[str] | None, split: str) -> list[str] | None:
    """The representations an ``"error"`` budget chooses from, in a fixed order; None for ``"uniform"``."""
    if split == "uniform":
        if chosen is not None:
            raise ValueError("a 'uniform' budget is Top-z's own rule: drop representations")
        return None
    if chosen is None:
        return list(REPRESENTATIONS)
    if isinstance(chosen, str) or not all(isinstance(r, str) for r in chosen):
        raise ValueError(
            f"representations must be a list of names such as ['top-z', 'factors'], got {chosen!r}"
        )
    if "dense" in chosen:
        raise ValueError(
            "'dense' is Top-z keeping every entry (no positions travel then): the budget tries it under "
            "'top-z'; give representations=['top-z', 'factors'] or drop the option"
        )
    unknown = sorted(set(chosen) - set(REPRESENTATIONS))
    if unknown or not chosen:
        raise ValueError(
            f"representations must be some of {', '.join(REPRESENTATIONS)}, got {list(chosen)!r}"
        )
    if set(chosen) == {"factors"}:
        raise ValueError("factors cannot send vectors or small tensors: add 'top-z' to representations")
    return [r for r in REPRESENTATIONS if r in chosen]


def price(name: str | None, q: Quantized, encoding: str) -> int:
    """Bytes of ``q``'s record in ``encoding`` (``auto``: the smallest), as the codec writes it
    (``name`` None: in the keyed container)."""
    bits = encodings.choose(q, encoding)[2]
    return wire.record_bytes(name, q.shape, q.kept, q.centroids.size, bits)


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
        candidates += topz_options(pool, counts)
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
