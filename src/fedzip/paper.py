"""The FedZip authors' way of counting sizes, to report next to real bytes.

The authors' code never encodes anything; it prints estimated bit counts.
This module reproduces that estimate so that the paper's figures can be
compared with ``len(payload)``. Per tensor, after Top-z sparsification (2-D
and larger tensors only, as in their code) and 3-cluster k-means over the
whole tensor (zeros included), with cluster sizes ``c1 <= c2 <= c3``:

- ``huffman``: ``2*c1 + c2 + c3`` bits (lengths 2, 1, 1: not a prefix code);
- ``position``: ``(c1 + c2) * 27`` bits;
- ``dap``: over the two smaller clusters, the first address and every gap
  ``g`` to the next cost ``floor(log2 g) + 1`` bits (1 bit when ``g < 2``),
  with nothing to mark where one ends (not decodable).

Centroids, shapes and headers are not counted. Never use these as sizes.
"""

from __future__ import annotations

import numpy as np

from . import exact
from .abc import Update, check_update
from .quantize import quantize
from .sparsify import keep_count, top_entries

ADDRESS_BITS = 27


def _gap_bits(positions: np.ndarray) -> int:
    if positions.size == 0:
        return 0
    steps = np.diff(positions, prepend=0)  # the first address counts as a gap from 0
    steps = np.maximum(steps, 1)
    return int((np.floor(np.log2(steps)).astype(np.int64) + 1).sum())


def authors_estimate(update: Update, keep: float) -> dict[str, int]:
    """Bits the authors' code would print for ``update``: original, huffman, position, dap."""
    totals = {"original": 0, "huffman": 0, "position": 0, "dap": 0}
    for array in check_update(update).values():
        if exact.is_exact(array):  # the authors' code estimated float tensors only
            continue
        flat = np.asarray(array, dtype=np.float32).reshape(-1)
        if flat.size == 0:
            continue
        totals["original"] += 32 * flat.size
        if array.ndim >= 2:
            sparse = np.zeros_like(flat)
            kept = top_entries(flat, keep_count(flat.size, keep))
            sparse[kept] = flat[kept]
            flat = sparse
        _, labels = quantize(flat, 3)
        counts = np.bincount(labels, minlength=3)
        order = np.argsort(counts, kind="stable")  # ascending: c1, c2, c3
        c1, c2, c3 = (int(counts[i]) for i in order)
        totals["huffman"] += 2 * c1 + c2 + c3
        totals["position"] += (c1 + c2) * ADDRESS_BITS
        totals["dap"] += sum(_gap_bits(np.flatnonzero(labels == cluster)) for cluster in order[:2])
    return totals
