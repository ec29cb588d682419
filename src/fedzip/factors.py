"""Low-rank factors: a weight matrix as a product of two quantised factors.

The maths shared by ``FedZip(rank=...)`` and the ``lowrank`` baseline
(:class:`fedzip.compressors.LowRank`), and the decoder of their records.
Low-rank compression of updates as in PowerSGD (Vogels, Karimireddy, Jaggi,
NeurIPS 2019) and ATOMO (Wang et al., NeurIPS 2018). A tensor with two or more
dimensions is read as a matrix ``M`` of ``shape[0]`` rows (a convolution's
output channels, a linear layer's outputs) and approximated by ``P @ Q.T``
found by ``iterations`` steps of subspace iteration from a fixed random start:
``P = orth(M @ Q); Q = M.T @ P``. Unlike PowerSGD, which all-reduces ``P``
between the two products across workers, each client factors its own update,
so the payload carries both factors and the server averages the products.

Each column of the factors is quantised as FedZip quantises kept entries:
k-means to ``clusters`` float32 centroids (Lloyd-Max levels: on a factor of
the paper CNN's classifier, 8 of them keep 92% of the energy of the exact
rank-1 product, 7 evenly spaced levels 58%), and the labels are Huffman-coded. No
positions travel: where Top-z sparsification pays ~10 bits for the address of
each entry it keeps, a factor entry pays only its label. Vectors (biases) and
matrices too small to gain from factoring go as one quantised dense vector.

Body: ``clusters - 1:8 | rank:16 | Huffman stream of kept labels`` over an
alphabet of ``clusters``. Rank 0 is the dense form: one label per entry and
``clusters`` centroids. Otherwise ``rank`` columns of ``P`` (``shape[0]``
entries each), then ``rank`` columns of ``Q``, with ``clusters`` centroids per
column in the same order (``2 * rank * clusters`` in all).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import huffman, wire
from .bitio import BitReader, BitWriter
from .errors import FormatError
from .packing import Packed, close_body, from_writer, open_body
from .payload import register_encoding
from .quantize import EXACT_POINTS, quantize_many

ENCODING_ID = 22
# The subspace iteration reads a matrix once a step up to this rank, taking this many bytes of
# its rows at a time (as float64): a block stays in a core's cache (1 MiB here) between its two
# products.
_READ_ONCE_RANKS = 4
_BLOCK_BYTES = 1 << 19
# Decoding costs rank passes over the tensor; the cap bounds what a hostile
# payload can make a server spend (at most 64 passes over the model's size).
MAX_RANK = 64


def quantise_columns(columns: np.ndarray, clusters: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per column: ``clusters`` float32 centroids (padded by repeating the last) and its labels."""
    return quantise_columns_many(columns, (clusters,))[clusters]


def quantise_columns_many(
    columns: np.ndarray, level_counts: tuple[int, ...], points: int = EXACT_POINTS
) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """:func:`quantise_columns` at every count of ``level_counts``, one k-means program per column."""
    out: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {levels: [] for levels in level_counts}
    for column in columns.T:
        for levels, (found, assigned) in quantize_many(column, level_counts, points).items():
            padded = (
                np.concatenate((found, np.repeat(found[-1:], levels - found.size))) if found.size else found
            )
            out[levels].append((padded, assigned))
    return out


def _quantise(columns: np.ndarray, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """All columns' centroids and labels, concatenated in column order."""
    parts = quantise_columns(columns, clusters)
    return np.concatenate([c for c, _ in parts]), np.concatenate([labels for _, labels in parts])


def _reconstruct(
    labels: np.ndarray, centroids: np.ndarray, clusters: int, rows: int, rank: int
) -> np.ndarray:
    """The flat float32 values a body stands for (the encoder computes them the same way)."""
    if rank == 0:
        return centroids[labels]
    left, right = _factor_values(labels, centroids, clusters, rows, rank)
    return _outer_sum(left, right).reshape(-1)


def _subtract_reconstruction(
    centroids: np.ndarray, flat: np.ndarray, labels: np.ndarray, clusters: int, rows: int, rank: int
) -> None:
    """``flat -= _reconstruct(...)`` (in ``flat``'s dtype) for factors (``rank`` >= 1) block by block
    of rows: the same bits (each entry's outer products are summed in the same order) without a
    tensor-sized copy of their product."""
    left, right = _factor_values(labels, centroids, clusters, rows, rank)
    matrix = flat.reshape(rows, -1)
    step = max(1, _BLOCK_ENTRIES // max(1, right.shape[0]))
    for start in range(0, rows, step):
        block = _outer_sum(left[start : start + step], right)
        matrix[start : start + step] -= block.astype(flat.dtype, copy=False)


_BLOCK_ENTRIES = 1 << 18  # entries a subtracted block holds: 1 MB of float32


def _factor_values(
    labels: np.ndarray, centroids: np.ndarray, clusters: int, rows: int, rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """The dequantised factors (``rows x rank`` and ``cols x rank``, float32) of a body's labels."""
    columns = np.repeat(np.arange(2 * rank), [rows] * rank + [(labels.size - rank * rows) // rank] * rank)
    values = centroids[columns * clusters + labels]
    return values[: rank * rows].reshape(rank, rows).T, values[rank * rows :].reshape(rank, -1).T


def _outer_sum(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ right.T`` as a sum of outer products in a fixed order, not a BLAS product: the
    sender and the receiver must get the same bits (a client's replica of the model is
    checksummed), and BLAS sums in an order that depends on its threads. A hostile body's huge
    centroids overflow here; the caller rejects what is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        product = np.multiply.outer(left[:, 0], right[:, 0])
        for j in range(1, left.shape[1]):
            product += np.multiply.outer(left[:, j], right[:, j])
    return product


def orthonormal(columns: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the span of tall, thin float64 ``columns``: Cholesky QR, twice.

    Small products instead of LAPACK's QR of the tall matrix, which multi-threaded BLAS slows a
    hundredfold when another process holds a core (measured on 4096 x 16: 170 ms against 1 ms).
    LAPACK's QR remains for columns too close to dependent for the Gram matrix's Cholesky factor.
    """
    found = _cholesky_qr2(columns)
    return np.linalg.qr(columns)[0] if found is None else found[0]


def _cholesky_qr2(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(basis, transform) with ``basis = columns @ transform`` orthonormal, by Cholesky QR twice;
    None when the columns are too close to dependent for it."""
    basis, transform = columns, np.eye(columns.shape[1])
    for _ in range(2):
        try:
            lower = np.linalg.cholesky(basis.T @ basis)
        except np.linalg.LinAlgError:
            return None
        step = np.linalg.inv(lower).T
        basis, transform = basis @ step, transform @ step
    if not (np.all(np.isfinite(basis)) and np.all(np.isfinite(transform))):
        return None
    return basis, transform


def factor_rank(shape: tuple[int, ...], rank: int) -> int:
    """The rank a tensor of ``shape`` is sent at; 0 when the dense form is as small."""
    if len(shape) < 2 or not math.prod(shape):
        return 0
    rows = shape[0]
    cols = math.prod(shape) // rows
    rank = min(rank, rows, cols)
    return rank if rank * (rows + cols) < rows * cols else 0


def pack_factors(array: np.ndarray, rank: int, clusters: int, iterations: int, seed: int = 0) -> Packed:
    """``array`` as rank-``rank`` factors (or one quantised vector when factoring does not gain).

    ``iterations`` steps of subspace iteration from a start drawn with ``seed``,
    so that encoding is deterministic; each factor column k-means-quantised to
    ``clusters`` levels.
    """
    rank = factor_rank(array.shape, rank)
    if rank == 0:
        return pack_dense(array.reshape(-1), clusters)
    left, right = _subspace_iteration(array, rank, iterations, seed)
    return pack_columns(
        quantise_columns(left, clusters) + quantise_columns(right, clusters), clusters, array.shape[0]
    )


def _subspace_iteration(
    array: np.ndarray, rank: int, iterations: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``iterations`` steps of ``left = orth(M @ right); right = M.T @ left`` from a start drawn with
    ``seed`` (deterministic encoding), ``M`` the array as ``shape[0]`` rows.

    At small ranks, where a step is bound by reading ``M``, it reads ``M`` once: ``M @ right`` and
    ``M.T @ (M @ right)`` are formed block by block of rows while the block is in cache (in float64,
    as the second product then goes through the small transform ``T`` that orthonormalises the
    first: ``right = M.T @ (M @ right) @ T``). Larger ranks are bound by arithmetic: two float32
    products a step.
    """
    rows = array.shape[0]
    # float16 products lose too much; float32 and float64 are used as they come
    matrix = array.reshape(rows, -1).astype(np.promote_types(array.dtype, np.float32), copy=False)
    right = np.random.default_rng(seed).standard_normal((matrix.shape[1], rank))
    left = np.zeros((rows, rank))
    for _ in range(iterations):
        if rank <= _READ_ONCE_RANKS:
            product, back = _there_and_back(matrix, right)
            found = _cholesky_qr2(product)
            if found is not None:
                left, transform = found
                right = back @ transform
                continue
            left = np.linalg.qr(product)[0]  # nearly dependent columns: a second pass for right
        else:
            left = orthonormal((matrix @ right.astype(matrix.dtype)).astype(np.float64))
        right = (matrix.T @ left.astype(matrix.dtype)).astype(np.float64)
    return left, right


def _there_and_back(matrix: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``matrix @ columns``, ``matrix.T @ matrix @ columns``) in float64, reading ``matrix`` once."""
    rows, cols = matrix.shape
    product = np.empty((rows, columns.shape[1]))
    back = np.zeros((cols, columns.shape[1]))
    step = max(1, _BLOCK_BYTES // max(1, 8 * cols))  # rows of the float64 copy
    for start in range(0, rows, step):
        block = matrix[start : start + step].astype(np.float64)
        part = block @ columns
        product[start : start + step] = part
        back += block.T @ part
    return product, back


def leading_factors(
    array: np.ndarray, rank: int, iterations: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Factors ``left`` (orthonormal columns) and ``right`` with ``array ~ left @ right.T``, ordered by
    singular value, so that their first r columns are a rank-r approximation for every r <= rank.

    Subspace iteration at ``rank`` (as :func:`pack_factors`), then the small SVD of the projected
    matrix (a randomised SVD): the budget prices every rank from one factorisation.
    """
    left, right = _subspace_iteration(array, rank, iterations, seed)
    # right = U S V': rotating both factors by V keeps left @ right.T, orders the columns by singular
    # value and leaves right's columns orthogonal (U S); V from the small Gram matrix V S^2 V'
    squares, rotation = np.linalg.eigh(right.T @ right)
    rotation = rotation[:, np.argsort(-squares, kind="stable")]
    return left @ rotation, right @ rotation


def pack_columns(columns: list[tuple[np.ndarray, np.ndarray]], clusters: int, rows: int) -> Packed:
    """Factors from their quantised columns (:func:`quantise_columns`): the left factor's ``rank``
    columns of ``rows`` entries, then the right factor's."""
    rank = len(columns) // 2
    centroids = np.concatenate([c for c, _ in columns])
    return _packed(np.concatenate([labels for _, labels in columns]), centroids, clusters, rank, rows)


def pack_dense(flat: np.ndarray, clusters: int) -> Packed:
    """A flat tensor as one vector quantised to ``clusters`` levels (the rank-0 form)."""
    centroids, labels = _quantise(flat.reshape(-1, 1), clusters)
    return _packed(labels, centroids, clusters, 0, flat.size)


def _packed(labels: np.ndarray, centroids: np.ndarray, clusters: int, rank: int, rows: int) -> Packed:
    writer = BitWriter()
    writer.write(clusters - 1, 8)
    writer.write(rank, 16)
    huffman.write_stream(writer, labels, clusters)
    indices = labels.astype(np.int64)
    rebuild = functools.partial(_reconstruct, indices, clusters=clusters, rows=rows, rank=rank)
    # one vector's levels (rank 0) are subtracted from their values, a product block by block
    subtract = (
        functools.partial(_subtract_reconstruction, labels=indices, clusters=clusters, rows=rows, rank=rank)
        if rank
        else None
    )
    return from_writer(
        centroids, labels.size, writer, functools.partial(rebuild, centroids), rebuild, subtract
    )


def _factors_body(rec: wire.Record) -> tuple[np.ndarray, int]:
    reader = open_body(rec)
    if reader is None:
        return close_body(rec, None, np.zeros(0)), 0
    clusters, rank = reader.read(8) + 1, reader.read(16)
    if clusters < 2:
        raise FormatError(f"tensor {rec.name!r}: {clusters} cluster (at least 2)")
    if rank > MAX_RANK:
        raise FormatError(f"tensor {rec.name!r}: rank {rank} (at most {MAX_RANK})")
    rows = rec.shape[0] if rank else rec.size
    if rank and (rank != factor_rank(rec.shape, rank)):
        raise FormatError(f"tensor {rec.name!r}: rank {rank} for shape {rec.shape} (not worth factoring)")
    count = rank * (rows + rec.size // rows) if rank else rec.size
    if rec.kept != count or rec.centroids.size != clusters * (2 * rank or 1):
        raise FormatError(
            f"tensor {rec.name!r}: {rec.kept} values and {rec.centroids.size} centroids "
            f"for rank {rank} and {clusters} clusters"
        )
    labels = huffman.read_stream(reader, count, clusters).astype(np.int64)
    values = _reconstruct(labels, rec.centroids, clusters, rows, rank)
    return close_body(rec, reader, values), 0


def _describe(rec: wire.Record) -> str:
    reader = BitReader(rec.body, rec.body_bits)
    levels, rank = reader.read(8) + 1, reader.read(16)
    return f"rank {rank}, {levels} levels" if rank else f"dense, {levels} levels"


register_encoding(ENCODING_ID, "lowrank", _factors_body, _describe)
