"""``none``: the update as it is (FedAvg's upload), framed like every payload."""

from __future__ import annotations

import numpy as np

from .. import exact, wire
from ..abc import Compressor, Update, check_update, check_values
from ..errors import FormatError
from ..payload import register_encoding
from ..registry import register

ENCODING_ID = 16


@register
class NoCompression(Compressor):
    """Sends every tensor uncompressed in its own dtype: the FedAvg baseline."""

    codec_id = "none"

    def __init__(self) -> None:
        pass

    def body_encodings(self) -> frozenset[int]:
        return frozenset({ENCODING_ID})

    def approximate(self, update: Update) -> dict[str, np.ndarray]:
        return {name: array.copy() for name, array in check_update(update).items()}

    def encode(self, update: Update) -> bytes:
        records = []
        for name, array in check_update(update).items():
            if exact.is_exact(array):
                records.append(exact.record(name, array))
                continue
            check_values(name, array)
            body = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            empty = np.zeros(0, np.float32)
            records.append(
                wire.Record(
                    name, array.dtype, array.shape, ENCODING_ID, array.size, empty, 8 * len(body), body
                )
            )
        return wire.write(records)


def _raw_body(rec: wire.Record) -> tuple[np.ndarray, int]:
    itemsize = rec.dtype.itemsize
    if rec.kept != rec.size or rec.centroids.size or rec.body_bits != 8 * itemsize * rec.size:
        raise FormatError(f"tensor {rec.name!r}: raw body does not match its shape")
    values = np.frombuffer(rec.body, dtype=rec.dtype.newbyteorder("<")).astype(rec.dtype)
    if not np.isfinite(values).all():
        raise FormatError(f"tensor {rec.name!r} holds NaN or Inf")
    return values, 0


register_encoding(ENCODING_ID, "raw", _raw_body)
