"""``signsgd``: one sign bit per entry and one scale per tensor.

Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD: Compressed
Optimisation for Non-Convex Problems", ICML 2018, with the scaled sign of
Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other
Gradient Compression Schemes", ICML 2019: entry ``v`` of a tensor ``x`` is sent
as ``sign(v) * mean(|x|)`` (zero counts as positive). Used with error feedback
(``signsgd+ef``) this is EF-signSGD; averaging the scaled signs on the server
takes the place of signSGD's majority vote.

Body: one bit per entry, 1 for negative.
"""

from __future__ import annotations

import numpy as np

from .. import wire
from ..bitio import BitWriter
from ..errors import FormatError
from ..packing import Packed, close_body, from_writer, open_body, signed
from ..payload import register_encoding
from ..registry import register
from .base import TensorCompressor


def _reconstruct(scale: np.ndarray, negative: np.ndarray) -> np.ndarray:
    return signed(np.full(negative.size, scale[0], dtype=np.float32), negative)


ENCODING_ID = 20


@register
class SignSGD(TensorCompressor):
    """Scaled sign compression; wrap in error feedback for EF-signSGD."""

    codec_id = "signsgd"
    encoding = ENCODING_ID

    def __init__(self) -> None:
        pass

    def pack(self, flat: np.ndarray) -> Packed:
        scale = np.array([np.abs(flat).mean(dtype=np.float64)], dtype=np.float32)
        negative = flat < 0
        writer = BitWriter()
        writer.write_bits(negative.astype(np.uint8))
        return from_writer(scale, flat.size, writer, _reconstruct(scale, negative))


def _sign_body(rec: wire.Record) -> tuple[np.ndarray, int]:
    reader = open_body(rec, params=1)
    if reader is None:
        return close_body(rec, None, np.zeros(0)), 0
    if rec.kept != rec.size or rec.centroids[0] < 0:
        raise FormatError(f"tensor {rec.name!r}: a sign body carries every entry and a scale >= 0")
    negative = reader.read_flags(rec.size)
    return close_body(rec, reader, _reconstruct(rec.centroids, negative)), 0


register_encoding(ENCODING_ID, "signsgd", _sign_body)
