"""The container: framing of tensor records, versioned and checksummed.

Layout (all multi-byte numbers little-endian; varint = unsigned LEB128):
  magic b"FZIP" | version u8 | tensor count varint
  per tensor:
    name length varint | name UTF-8 | dtype u8 | ndim u8 | dims varint x ndim
    encoding u8 | kept varint | clusters varint | centroids f32 x clusters
    body length in bits varint | body ceil(bits / 8) bytes
  CRC32 of everything before it, u32
See docs/format.md for the full description.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import FormatError

MAGIC = b"FZIP"
VERSION = 1
DTYPES = {0: np.dtype(np.float16), 1: np.dtype(np.float32), 2: np.dtype(np.float64)}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
MAX_NDIM = 32
_CRC = struct.Struct("<I")
_MIN_SIZE = len(MAGIC) + 1 + 1 + _CRC.size


@dataclass(frozen=True)
class Record:
    """One tensor as framed in the container."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    encoding: int
    kept: int
    centroids: np.ndarray  # float32
    body_bits: int
    body: bytes
    header_bytes: int = 0  # bytes of this record before the centroids

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def record_bytes(name: str, shape: tuple[int, ...], kept: int, clusters: int, body_bits: int) -> int:
    """Bytes one record takes in the container, as :func:`write` lays it out."""
    encoded = len(name.encode("utf-8"))
    dims = sum(len(_varint(d)) for d in shape)
    return (
        len(_varint(encoded))
        + encoded
        + 2
        + dims
        + 1
        + len(_varint(kept))
        + len(_varint(clusters))
        + 4 * clusters
        + len(_varint(body_bits))
        + (body_bits + 7) // 8
    )


def container_bytes(tensors: int) -> int:
    """Bytes of the container around ``tensors`` records: magic, version, count, checksum."""
    return len(MAGIC) + 1 + len(_varint(tensors)) + _CRC.size


def write(records: list[Record]) -> bytes:
    out = bytearray(MAGIC)
    out.append(VERSION)
    out += _varint(len(records))
    for rec in records:
        name = rec.name.encode("utf-8")
        out += _varint(len(name)) + name
        out.append(DTYPE_CODES[rec.dtype])
        out.append(len(rec.shape))
        for dim in rec.shape:
            out += _varint(dim)
        out.append(rec.encoding)
        out += _varint(rec.kept) + _varint(rec.centroids.size)
        out += rec.centroids.astype("<f4").tobytes()
        out += _varint(rec.body_bits) + rec.body
    out += _CRC.pack(zlib.crc32(out))
    return bytes(out)


class _Cursor:
    """Reads fields of ``data`` (bytes) up to ``end``; every overrun is a FormatError."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data = data
        self.pos = 0
        self.end = end

    def take(self, count: int, what: str) -> bytes:
        pos = self.pos
        if count < 0 or pos + count > self.end:
            raise FormatError(f"payload truncated while reading {what}")
        self.pos = pos + count
        return self.data[pos : pos + count]

    def byte(self, what: str) -> int:
        pos = self.pos
        if pos >= self.end:
            raise FormatError(f"payload truncated while reading {what}")
        self.pos = pos + 1
        return self.data[pos]

    def varint(self, what: str) -> int:
        pos = self.pos
        if pos < self.end and self.data[pos] < 0x80:  # one byte: the common case
            self.pos = pos + 1
            return self.data[pos]
        value = 0
        for shift in range(0, 63, 7):
            byte = self.byte(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise FormatError(f"{what} is not a valid varint")


_NO_CENTROIDS = np.zeros(0, dtype=np.float32)
_NO_CENTROIDS.flags.writeable = False


def read(payload: bytes, max_elements: int | None = None, max_tensors: int | None = None) -> list[Record]:
    """Parse and check a container; raise :class:`FormatError` on any defect.

    ``max_elements`` and ``max_tensors`` refuse payloads declaring more,
    before anything is allocated for them.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload)
    if len(data) < _MIN_SIZE or data[: len(MAGIC)] != MAGIC:
        raise FormatError("not a fedzip payload (bad magic or too short)")
    if data[len(MAGIC)] != VERSION:
        raise FormatError(f"format version {data[len(MAGIC)]} is not supported (this fedzip reads {VERSION})")
    (crc,) = _CRC.unpack(data[-_CRC.size :])
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise FormatError("checksum mismatch: the payload is corrupted")
    cur = _Cursor(data, len(data) - _CRC.size)
    cur.pos = len(MAGIC) + 1
    count = cur.varint("tensor count")
    if count > cur.end - cur.pos:
        raise FormatError(f"{count} tensors declared in a payload of {len(data)} bytes")
    if max_tensors is not None and count > max_tensors:
        raise FormatError(f"payload declares {count} tensors, more than max_tensors={max_tensors}")
    records: list[Record] = []
    names: set[str] = set()
    total = 0
    for index in range(count):
        start = cur.pos
        try:
            name = cur.take(cur.varint("name length"), "name").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"tensor {index}: name is not UTF-8") from exc
        if name in names:
            raise FormatError(f"tensor name {name!r} appears twice")
        names.add(name)
        code = cur.byte("dtype")
        if code not in DTYPES:
            raise FormatError(f"tensor {name!r}: unknown dtype code {code}")
        ndim = cur.byte("ndim")
        if ndim > MAX_NDIM:
            raise FormatError(f"tensor {name!r}: {ndim} dimensions (at most {MAX_NDIM})")
        shape = tuple(cur.varint("dimension") for _ in range(ndim))
        if math.prod(d for d in shape if d) * DTYPES[code].itemsize >= 1 << 63:
            raise FormatError(f"tensor {name!r}: shape {shape} is larger than any array can be")
        size = math.prod(shape)
        total += size
        if max_elements is not None and total > max_elements:
            raise FormatError(
                f"payload declares more than max_elements={max_elements} elements (tensor {name!r})"
            )
        encoding = cur.byte("encoding")
        kept = cur.varint("kept count")
        if kept > size:
            raise FormatError(f"tensor {name!r}: {kept} kept entries of {size}")
        clusters = cur.varint("cluster count")
        header = cur.pos - start
        if clusters:
            centroids = np.frombuffer(cur.take(4 * clusters, "centroids"), dtype="<f4").astype(np.float32)
            if not np.isfinite(centroids).all():
                raise FormatError(f"tensor {name!r}: centroids are not finite")
        else:
            centroids = _NO_CENTROIDS
        body_bits = cur.varint("body length")
        body = cur.take(-(-body_bits // 8), "body")
        header += len(_varint(body_bits))
        records.append(Record(name, DTYPES[code], shape, encoding, kept, centroids, body_bits, body, header))
    if cur.pos != cur.end:
        raise FormatError(f"{cur.end - cur.pos} unexpected bytes after the last tensor")
    return records
