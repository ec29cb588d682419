"""``lowrank``: every weight matrix as a rank-``rank`` product of quantised factors.

Low-rank compression of updates as in PowerSGD (Vogels, Karimireddy, Jaggi,
NeurIPS 2019) and ATOMO (Wang et al., NeurIPS 2018). A tensor with two or more
dimensions is read as a matrix ``M`` of ``shape[0]`` rows (a convolution's
output channels, a linear layer's outputs) and approximated by ``P @ Q.T``
found by ``iterations`` steps of subspace iteration from a fixed random start:
``P = orth(M @ Q); Q = M.T @ P``. Unlike PowerSGD, which all-reduces ``P``
between the two products across workers, each client factors its own update,
so the payload carries both factors and the server averages the products.

The factors' entries are quantised to ``bits`` bits, uniformly between minus
and plus the largest magnitude of their column (one float32 scale per column).
No positions travel: where Top-z sparsification pays ~10 bits for the address
of each entry it keeps, a factor pays only its ``bits``. Vectors (biases) and
matrices too small to gain from factoring go as one quantised dense vector.
Use it with error feedback (``lowrank+ef``): what the product misses carries
over to the next round.

Body: ``bits:5 | rank:16 | values``, each value ``q + L`` in ``bits`` bits with
``L = 2**(bits-1) - 1`` and ``q`` in ``[-L, L]``. Rank 0 is the dense form (one
value per entry, one scale); otherwise ``rank`` columns of ``P`` (``shape[0]``
entries each), then ``rank`` columns of ``Q``, with ``2 * rank`` scales (``P``'s
columns first).
"""

from __future__ import annotations

import math

import numpy as np

from .. import wire
from ..bitio import BitWriter
from ..codec import register_body
from ..errors import FormatError
from ..registry import register
from .base import Packed, TensorCompressor, close_body, from_writer, open_body

ENCODING_ID = 22
MIN_BITS, MAX_BITS = 2, 16
MAX_RANK = (1 << 16) - 1


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _quantise(columns: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the float32 scale and the integer levels in [-L, L]."""
    top = (1 << (bits - 1)) - 1
    scales = np.abs(columns).max(axis=0).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = np.where(scales > 0, np.rint(columns / scales.astype(np.float64) * top), 0.0)
    return scales, levels.astype(np.int64)


def _dequantise(levels: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << (bits - 1)) - 1
    return levels.astype(np.float32) * (scales.astype(np.float32) / np.float32(top))


def _reconstruct(levels: np.ndarray, scales: np.ndarray, bits: int, rows: int, rank: int) -> np.ndarray:
    """The flat float32 values a body stands for (the encoder computes them the same way)."""
    if rank == 0:
        return _dequantise(levels, scales, bits)
    # a hostile body's huge scales overflow here; the caller rejects what is not finite
    left = _dequantise(levels[: rank * rows].reshape(rank, rows).T, scales[:rank], bits)
    right = _dequantise(levels[rank * rows :].reshape(rank, -1).T, scales[rank:], bits)
    with np.errstate(over="ignore", invalid="ignore"):
        return (left @ right.T).reshape(-1)


def factor_rank(shape: tuple[int, ...], rank: int) -> int:
    """The rank a tensor of ``shape`` is sent at; 0 when the dense form is as small."""
    if len(shape) < 2 or not math.prod(shape):
        return 0
    rows = shape[0]
    cols = math.prod(shape) // rows
    rank = min(rank, rows, cols)
    return rank if rank * (rows + cols) < rows * cols else 0


@register
class LowRank(TensorCompressor):
    """Rank-``rank`` factors of every weight matrix, entries quantised to ``bits`` bits.

    ``iterations`` steps of subspace iteration (2 is PowerSGD's one step done
    twice, from a start drawn with ``seed`` so that encoding is deterministic).
    """

    codec_id = "lowrank"
    norm_bounded = False  # rounding the factors can lengthen the product
    encoding = ENCODING_ID

    def __init__(self, rank: int = 1, bits: int = 4, iterations: int = 2, seed: int = 0) -> None:
        self.rank = _check_int("rank", rank, 1, MAX_RANK)
        self.bits = _check_int("bits", bits, MIN_BITS, MAX_BITS)
        self.iterations = _check_int("iterations", iterations, 1, 100)
        self.seed = _check_int("seed", seed, 0, (1 << 63) - 1)

    def pack_tensor(self, array: np.ndarray) -> Packed:
        rank = factor_rank(array.shape, self.rank)
        if rank == 0:
            return self.pack(array.reshape(-1))
        rows = array.shape[0]
        # float16 products lose too much; float32 and float64 are used as they come
        matrix = array.reshape(rows, -1).astype(np.promote_types(array.dtype, np.float32), copy=False)
        right = np.random.default_rng(self.seed).standard_normal((matrix.shape[1], rank))
        for _ in range(self.iterations):
            left = np.linalg.qr((matrix @ right.astype(matrix.dtype)).astype(np.float64))[0]
            right = (matrix.T @ left.astype(matrix.dtype)).astype(np.float64)
        left_scales, left_levels = _quantise(left, self.bits)
        right_scales, right_levels = _quantise(right, self.bits)
        levels = np.concatenate([left_levels.T.reshape(-1), right_levels.T.reshape(-1)])
        scales = np.concatenate([left_scales, right_scales])
        return self._packed(levels, scales, rank, rows)

    def pack(self, flat: np.ndarray) -> Packed:
        scales, levels = _quantise(flat.reshape(-1, 1).astype(np.float64), self.bits)
        return self._packed(levels.reshape(-1), scales, 0, flat.size)

    def _packed(self, levels: np.ndarray, scales: np.ndarray, rank: int, rows: int) -> Packed:
        top = (1 << (self.bits - 1)) - 1
        writer = BitWriter()
        writer.write(self.bits, 5)
        writer.write(rank, 16)
        writer.write_array((levels + top).astype(np.uint64), self.bits)
        values = _reconstruct(levels, scales, self.bits, rows, rank)
        return from_writer(scales, levels.size, writer, values)


def _lowrank_body(rec: wire.Record) -> tuple[np.ndarray, int]:
    reader = open_body(rec)
    if reader is None:
        return close_body(rec, None, np.zeros(0)), 0
    bits, rank = reader.read(5), reader.read(16)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise FormatError(f"tensor {rec.name!r}: {bits} bits per value (from {MIN_BITS} to {MAX_BITS})")
    rows = rec.shape[0] if rank else rec.size
    if rank and (rank != factor_rank(rec.shape, rank)):
        raise FormatError(f"tensor {rec.name!r}: rank {rank} for shape {rec.shape} (not worth factoring)")
    count = rank * (rows + rec.size // rows) if rank else rec.size
    if rec.kept != count or rec.centroids.size != (2 * rank or 1):
        raise FormatError(
            f"tensor {rec.name!r}: {rec.kept} values and {rec.centroids.size} scales for rank {rank}"
        )
    if np.any(rec.centroids < 0):
        raise FormatError(f"tensor {rec.name!r}: a negative scale")
    top = (1 << (bits - 1)) - 1
    levels = reader.read_array(count, bits).astype(np.int64) - top
    if np.any(levels > top):
        raise FormatError(f"tensor {rec.name!r}: a level beyond {top}")
    values = _reconstruct(levels, rec.centroids, bits, rows, rank)
    return close_body(rec, reader, values), 0


register_body(ENCODING_ID, _lowrank_body, "lowrank")
