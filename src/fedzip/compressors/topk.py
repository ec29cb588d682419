"""``topk``: Top-k sparsification with float32 values and 32-bit indices.

The plain form of gradient sparsification (Aji & Heafield, "Sparse
Communication for Distributed Gradient Descent", EMNLP 2017; Lin et al.,
"Deep Gradient Compression", ICLR 2018, without momentum correction): per
tensor, the ``keep`` fraction of entries largest in magnitude is sent as
(index, value) pairs, 64 bits each. Use it with error feedback for the
accumulation those papers rely on.
"""

from __future__ import annotations

from numbers import Real

import numpy as np

from .. import wire
from ..errors import FormatError
from ..packing import NO_PARAMS, Packed
from ..payload import register_encoding
from ..registry import register
from ..sparsify import keep_count, top_entries
from .base import TensorCompressor

ENCODING_ID = 18


def check_keep(keep: float) -> float:
    if isinstance(keep, bool) or not isinstance(keep, Real) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a number in (0, 1] (the fraction of entries kept), got {keep!r}")
    return float(keep)


def _index_dtype(size: int) -> str:
    return "<u4" if size <= 1 << 32 else "<u8"


@register
class TopK(TensorCompressor):
    """Keeps the ``keep`` fraction of largest-magnitude entries of every tensor."""

    codec_id = "topk"
    encoding = ENCODING_ID

    def __init__(self, keep: float = 0.01) -> None:
        self.keep = check_keep(keep)

    def pack(self, flat: np.ndarray) -> Packed:
        positions = top_entries(flat, keep_count(flat.size, self.keep))
        indices = positions.astype(_index_dtype(flat.size))
        values = flat[positions].astype("<f4")
        body = indices.tobytes() + values.tobytes()
        dense = np.zeros(flat.size, dtype=np.float32)
        dense[positions] = values
        return Packed(NO_PARAMS, positions.size, body, 8 * len(body), dense)


def _topk_body(rec: wire.Record) -> tuple[np.ndarray, int]:
    index_dtype = np.dtype(_index_dtype(rec.size))
    index_bytes = rec.kept * index_dtype.itemsize
    if rec.centroids.size or rec.kept > rec.size or rec.body_bits != 8 * (index_bytes + 4 * rec.kept):
        raise FormatError(f"tensor {rec.name!r}: top-k body does not match {rec.kept} kept entries")
    indices = np.frombuffer(rec.body, dtype=index_dtype, count=rec.kept).astype(np.int64)
    values = np.frombuffer(rec.body, dtype="<f4", offset=index_bytes)
    if rec.kept and (np.any(np.diff(indices) <= 0) or indices[-1] >= rec.size):
        raise FormatError(f"tensor {rec.name!r}: top-k indices are not increasing addresses in the tensor")
    if not np.all(np.isfinite(values)):
        raise FormatError(f"tensor {rec.name!r}: top-k values hold NaN or Inf")
    out = np.zeros(rec.size, dtype=rec.dtype)
    with np.errstate(over="ignore"):
        out[indices] = values.astype(rec.dtype)
    if not np.all(np.isfinite(out[indices])):
        raise FormatError(f"tensor {rec.name!r}: values overflow {rec.dtype}")
    return out, 8 * index_bytes


register_encoding(ENCODING_ID, "topk", _topk_body)
