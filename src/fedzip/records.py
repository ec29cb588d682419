"""FedZip's Top-z records: written from a quantized tensor, read back, and transcoded from one
encoding to another (positions and labels are lossless codes of one quantized tensor)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import encodings, wire
from .bitio import BitReader, BitWriter
from .encodings import Quantized
from .errors import FormatError
from .factors import ENCODING_ID as FACTORS_ID
from .payload import ENCODING_NAMES, register_encoding
from .quantize import MAX_CLUSTERS

ENCODINGS = (*encodings.CHOICES, "auto")  # auto: the smallest per tensor


def quantized_record(name: str, q: Quantized, encoding_name: str) -> wire.Record:
    encoding, label_plan, _ = encodings.choose(q, encoding_name)
    writer = BitWriter()
    encodings.write(writer, encoding, q, label_plan)
    return wire.Record(name, q.dtype, q.shape, encoding, q.kept, q.centroids, writer.nbits, writer.getvalue())


def read_quantized(rec: wire.Record) -> tuple[Quantized, int]:
    """The quantized tensor a FedZip record carries, and the bits spent on positions."""
    clusters = rec.centroids.size
    if clusters > MAX_CLUSTERS or (clusters == 0) != (rec.kept == 0):
        raise FormatError(f"tensor {rec.name!r}: {clusters} centroids for {rec.kept} kept entries")
    reader = BitReader(rec.body, rec.body_bits)
    positions, labels, position_bits = encodings.read(reader, rec.encoding, rec.size, rec.kept, clusters)
    if reader.pos != rec.body_bits:
        raise FormatError(f"tensor {rec.name!r}: {rec.body_bits - reader.pos} unused bits in the body")
    with np.errstate(over="ignore"):
        levels = rec.centroids.astype(rec.dtype)
    if not np.all(np.isfinite(levels)):
        raise FormatError(f"tensor {rec.name!r}: centroids overflow {rec.dtype}")
    return Quantized(rec.shape, rec.dtype, positions, labels, rec.centroids), position_bits


def _fedzip_body(rec: wire.Record) -> tuple[np.ndarray, int]:
    quantized, position_bits = read_quantized(rec)
    return quantized.dense().reshape(-1), position_bits


def transcode(
    payload: bytes,
    encoding: str,
    max_elements: int | None = None,
    layout: Mapping[str, np.ndarray] | None = None,
) -> bytes:
    """The same FedZip payload in another ``encoding``; it decodes to identical arrays.

    The three encodings are lossless codes of one quantized update, so this
    tells what an update would have cost in each without re-running the
    sparsifier and k-means. A keyed payload needs ``layout`` (as
    :func:`fedzip.decode`) and stays keyed. Raises :class:`FormatError` for a
    malformed payload, ``ValueError`` for one that holds non-FedZip tensors. Factors, integer and
    bool tensors and the tensors a keyed payload leaves out stay as they are.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
    records = []
    for rec in wire.read(payload, max_elements=max_elements, layout=layout):
        if rec.encoding in (wire.ABSENT, FACTORS_ID, wire.EXACT):  # nothing to recode: kept as they are
            records.append(rec)
            continue
        if rec.encoding not in encodings.NAMES:
            kind = ENCODING_NAMES.get(rec.encoding, f"encoding id {rec.encoding}")
            raise ValueError(f"tensor {rec.name!r} is a {kind} tensor; only FedZip tensors can be transcoded")
        quantized, _ = read_quantized(rec)
        records.append(quantized_record(rec.name, quantized, encoding))
    return wire.write(records, keyed=wire.is_keyed(payload))


def _describe(rec: wire.Record) -> str:
    return f"keep {rec.kept / rec.size:.3g}"


for _encoding, _name in encodings.NAMES.items():
    register_encoding(_encoding, _name, _fedzip_body, _describe)
