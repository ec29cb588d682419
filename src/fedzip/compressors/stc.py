"""``stc``: Sparse Ternary Compression.

Sattler, Wiedemann, Müller, Samek, "Robust and Communication-Efficient
Federated Learning from Non-IID Data", IEEE TNNLS 2019. Per tensor, the
``keep`` fraction of entries largest in magnitude (top-p) is kept and
ternarised: every kept entry becomes ``+mu`` or ``-mu`` with ``mu`` the mean
magnitude of the kept entries. Positions are Golomb coded as gaps with the
paper's parameter ``b* = 1 + floor(log2(log(phi - 1) / log(1 - p)))`` (phi
the golden ratio), followed by one sign bit per kept entry. STC accumulates
what it does not send in a residual: ``fedzip run`` always runs it with error
feedback, as the paper does. The paper compresses the download too: with
``downlink="stc"`` (``FedZipStrategy(downlink=STC(...))``) the server sends
its update the same way, with its own residual.

Body: Golomb-Rice gap section (:mod:`fedzip.gaps`) | sign bits.
"""

from __future__ import annotations

import math

import numpy as np

from .. import gaps, wire
from ..bitio import BitWriter
from ..errors import FormatError
from ..packing import Packed, close_body, from_writer, open_body, signed
from ..payload import register_encoding
from ..registry import register
from ..sparsify import keep_count, top_entries
from .base import TensorCompressor
from .topk import check_keep

ENCODING_ID = 21
_GOLDEN = (1 + math.sqrt(5)) / 2


def golomb_parameter(density: float) -> int:
    """Sattler et al.'s optimal power-of-two Golomb parameter for gap density ``density``."""
    if density >= 1:
        return 0
    return max(0, 1 + math.floor(math.log2(math.log(_GOLDEN - 1) / math.log1p(-density))))


def _reconstruct(size: int, positions: np.ndarray, mu: np.ndarray, negative: np.ndarray) -> np.ndarray:
    out = np.zeros(size, dtype=np.float32)
    out[positions] = signed(np.full(positions.size, mu[0], dtype=np.float32), negative)
    return out


@register
class STC(TensorCompressor):
    """Top-``keep`` sparsification, ternarisation to +-mu, Golomb-coded positions."""

    codec_id = "stc"
    needs_error_feedback = True  # Sattler et al. always accumulate the residual
    encoding = ENCODING_ID

    def __init__(self, keep: float = 0.0025) -> None:
        self.keep = check_keep(keep)

    def pack(self, flat: np.ndarray) -> Packed:
        positions = top_entries(flat, keep_count(flat.size, self.keep))
        kept = flat[positions]
        mu = np.array([np.abs(kept).mean(dtype=np.float64) if kept.size else 0.0], dtype=np.float32)
        negative = kept < 0
        writer = BitWriter()
        if positions.size:
            deltas = np.diff(positions, prepend=-1)
            gaps.write(writer, deltas, gaps.RICE, golomb_parameter(positions.size / flat.size))
            writer.write_bits(negative.astype(np.uint8))
        return from_writer(mu, positions.size, writer, _reconstruct(flat.size, positions, mu, negative))


def _stc_body(rec: wire.Record) -> tuple[np.ndarray, int]:
    reader = open_body(rec, params=1)
    if reader is None:
        return close_body(rec, None, np.zeros(0)), 0
    if rec.kept > rec.size or rec.centroids[0] < 0:
        raise FormatError(
            f"tensor {rec.name!r}: {rec.kept} kept entries of {rec.size}, mu {rec.centroids[0]}"
        )
    positions = np.cumsum(gaps.read(reader, rec.kept)) - 1
    position_bits = reader.pos
    if rec.kept and positions[-1] >= rec.size:
        raise FormatError(f"tensor {rec.name!r}: kept address {positions[-1]} outside the tensor")
    negative = reader.read_flags(rec.kept)
    values = _reconstruct(rec.size, positions, rec.centroids, negative)
    return close_body(rec, reader, values), position_bits


register_encoding(ENCODING_ID, "stc", _stc_body)
