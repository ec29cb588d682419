"""``fp16``: every value rounded to IEEE half precision (2x smaller than float32).

The usual first step of communication compression (e.g. Micikevicius et al.,
"Mixed Precision Training", ICLR 2018); no sparsification, no coding.
"""

from __future__ import annotations

import numpy as np

from .. import wire
from ..errors import FormatError
from ..packing import NO_PARAMS, Packed
from ..payload import register_encoding
from ..registry import register
from .base import TensorCompressor

ENCODING_ID = 17
HALF_MAX = float(np.finfo(np.float16).max)


@register
class Float16(TensorCompressor):
    """Sends each value as float16; values beyond +-65504 are refused, not clipped."""

    codec_id = "fp16"
    encoding = ENCODING_ID

    def __init__(self) -> None:
        pass

    def pack(self, flat: np.ndarray) -> Packed:
        if float(np.abs(flat).max()) > HALF_MAX:
            raise ValueError(
                f"values beyond +-{HALF_MAX:g} do not fit float16; scale the update or use 'none'"
            )
        half = flat.astype("<f2")
        return Packed(NO_PARAMS, flat.size, half.tobytes(), 16 * flat.size, half.astype(np.float32))


def _fp16_body(rec: wire.Record) -> tuple[np.ndarray, int]:
    if rec.centroids.size or rec.kept != rec.size or rec.body_bits != 16 * rec.size:
        raise FormatError(f"tensor {rec.name!r}: float16 body does not match its shape")
    half = np.frombuffer(rec.body, dtype="<f2")
    if not np.all(np.isfinite(half)):
        raise FormatError(f"tensor {rec.name!r}: float16 body holds NaN or Inf")
    return half.astype(rec.dtype), 0


register_encoding(ENCODING_ID, "fp16", _fp16_body)
