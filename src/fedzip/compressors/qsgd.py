"""``qsgd``: stochastic quantisation to ``levels`` levels per bucket.

Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD
via Gradient Quantization and Encoding", NeurIPS 2017. Each tensor is cut into
buckets of ``bucket`` entries; entry ``v`` of a bucket with 2-norm ``n`` is
sent as ``n * sign(v) * l / levels`` where ``l`` is ``|v| / n * levels``
rounded up or down at random so that the estimate is unbiased. Norms travel
as float32; the levels are Huffman-coded (the paper uses Elias codes for the
same purpose: short codes for the frequent small levels) and a sign bit
follows for each nonzero level.

Body: ``levels:8 | bucket:32 | Huffman stream of the levels | sign bits``.
"""

from __future__ import annotations

import numpy as np

from .. import huffman, wire
from ..bitio import BitWriter
from ..errors import FormatError
from ..packing import Packed, check_int, close_body, from_writer, open_body, signed
from ..payload import register_encoding
from ..registry import register
from .base import TensorCompressor

ENCODING_ID = 19
MAX_LEVELS = 255


def _bucket_sizes(n: int, bucket: int) -> np.ndarray:
    """Entries in each bucket; the last one may be short. O(n / bucket), whatever ``bucket`` is."""
    count = -(-n // bucket)
    sizes = np.full(count, bucket, dtype=np.int64)
    sizes[-1] = n - bucket * (count - 1)
    return sizes


def _reconstruct(
    norms: np.ndarray, levels: np.ndarray, negative: np.ndarray, s: int, bucket: int
) -> np.ndarray:
    scale = np.repeat(norms.astype(np.float32), _bucket_sizes(levels.size, bucket))
    return signed(scale * (levels.astype(np.float32) / np.float32(s)), negative)


@register
class QSGD(TensorCompressor):
    """QSGD with ``levels`` quantisation levels and buckets of ``bucket`` entries.

    ``seed`` fixes the random rounding (None: fresh randomness every encode).
    Each call draws new roundings, so ``approximate`` and a later ``encode``
    differ; ``encode_with_approximation`` returns a matching pair.
    """

    codec_id = "qsgd"
    norm_bounded = False  # unbiased rounding may round magnitudes up
    encoding = ENCODING_ID

    def __init__(self, levels: int = 16, bucket: int = 512, seed: int | None = None) -> None:
        self.levels = check_int("levels", levels, 1, MAX_LEVELS)
        self.bucket = check_int("bucket", bucket, 1, (1 << 32) - 1)
        if seed is not None:
            check_int("seed", seed, 0, (1 << 63) - 1)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def pack(self, flat: np.ndarray) -> Packed:
        n, s, bucket = flat.size, self.levels, self.bucket
        # No padding to a whole bucket: a bucket far larger than the tensor costs nothing.
        starts = np.arange(0, n, bucket, dtype=np.int64)
        norms = np.sqrt(np.add.reduceat(np.square(flat, dtype=np.float64), starts)).astype(np.float32)
        scale = np.repeat(norms.astype(np.float64), _bucket_sizes(n, bucket))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(scale > 0, np.abs(flat) / scale * s, 0.0)
        floor = np.floor(ratio)
        levels = floor + (self._rng.random(n) < ratio - floor)
        levels = np.minimum(levels, s).astype(np.uint16)
        nonzero = levels > 0
        negative = (flat < 0) & nonzero
        writer = BitWriter()
        writer.write(s, 8)
        writer.write(bucket, 32)
        huffman.write_stream(writer, levels, s + 1)
        writer.write_bits(negative[nonzero].astype(np.uint8))
        values = _reconstruct(norms, levels, negative, s, bucket)
        return from_writer(norms, int(nonzero.sum()), writer, values)


def _qsgd_body(rec: wire.Record) -> tuple[np.ndarray, int]:
    reader = open_body(rec)
    if reader is None:
        return close_body(rec, None, np.zeros(0)), 0
    s, bucket = reader.read(8), reader.read(32)
    if s == 0 or bucket == 0 or rec.centroids.size != -(-rec.size // bucket):
        raise FormatError(
            f"tensor {rec.name!r}: {rec.centroids.size} norms do not fit levels={s}, bucket={bucket}"
        )
    if np.any(rec.centroids < 0):
        raise FormatError(f"tensor {rec.name!r}: negative bucket norm")
    levels = huffman.read_stream(reader, rec.size, s + 1)
    nonzero = levels > 0
    if int(nonzero.sum()) != rec.kept:
        raise FormatError(
            f"tensor {rec.name!r}: {rec.kept} nonzero levels declared, {int(nonzero.sum())} coded"
        )
    negative = np.zeros(rec.size, dtype=bool)
    negative[nonzero] = reader.read_flags(rec.kept)
    values = _reconstruct(rec.centroids, levels, negative, s, bucket)
    return close_body(rec, reader, values), 0


register_encoding(ENCODING_ID, "qsgd", _qsgd_body)
