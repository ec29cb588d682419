"""The container: framing of tensor records, versioned and checksummed.

Layout (all multi-byte numbers little-endian; varint = unsigned LEB128):
  magic b"FZIP" | version u8 | tensor count varint
  per tensor:
    name length varint | name UTF-8 | dtype u8 | ndim u8 | dims varint x ndim
    encoding u8 | kept varint | clusters varint | centroids f32 x clusters
    body length in bits varint | body ceil(bits / 8) bytes
  CRC32 of everything before it, u32
The keyed containers are for a receiver that knows the model: an 8-byte digest
of the tensors' names, dtypes and shapes follows the version, and records start
at the encoding byte; the receiver supplies that layout. Version 3 also leaves
out the records of tensors that carry nothing (a bitmap after the count marks
the records present) and carries centroids as bfloat16, 2 bytes each: FedZip's
centroids are bfloat16 numbers (:func:`bfloat16`). Version 2 has every record
and float32 centroids; it is written only for records whose centroids are not
all bfloat16 numbers (a baseline's parameters, a payload of an older fedzip).
See docs/format.md for the full description.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import FormatError

MAGIC = b"FZIP"
VERSION = 1
KEYED = 3  # the keyed container: the layout's digest instead of names, dtypes and shapes
KEYED_EVERY_RECORD = 2  # the keyed container before empty records were left out: read, not written
ABSENT = 256  # the encoding of a tensor a keyed container leaves out: no id of the format's byte
EXACT = 30  # the encoding of integer and bool tensors (fedzip.exact), and the only one they may have
DIGEST_BYTES = 8
_DTYPE_NAMES = "float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool"
DTYPES = {code: np.dtype(name) for code, name in enumerate(_DTYPE_NAMES.split())}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
MAX_NDIM = 32
_CRC = struct.Struct("<I")
_MIN_SIZE = len(MAGIC) + 1 + 1 + _CRC.size


def bfloat16(values: np.ndarray) -> np.ndarray:
    """The float32 numbers nearest ``values`` (ties to even) whose low 16 bits are zero: those the
    keyed container sends in 2 bytes. Finite values stay finite (the largest ones round down)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    exponent_all_ones = (rounded & 0x7F800000) == 0x7F800000
    rounded = np.where(exponent_all_ones & ((bits & 0x7F800000) != 0x7F800000), rounded - 0x10000, rounded)
    return rounded.view(np.float32)


def _is_bfloat16(values: np.ndarray) -> bool:
    return not np.any(np.asarray(values, dtype=np.float32).view(np.uint32) & 0xFFFF)


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
    centroid_bytes: int = 4  # each centroid's, as read: 2 in the keyed container of version 3

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def empty(self) -> bool:
        """Carries nothing (decodes to zeros): a keyed container leaves it out."""
        return not (self.kept or self.centroids.size or self.body_bits)


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


Layout = tuple[tuple[str, np.dtype, tuple[int, ...]], ...]


def layout_of(arrays: Mapping[str, np.ndarray] | Sequence[tuple[str, np.dtype, tuple[int, ...]]]) -> Layout:
    """The (name, dtype, shape) of every tensor, in order: of a model's arrays, or as given."""
    items = (
        [(name, np.asarray(a).dtype, np.shape(a)) for name, a in arrays.items()]
        if isinstance(arrays, Mapping)
        else list(arrays)
    )
    return tuple((str(name), np.dtype(dtype), tuple(int(d) for d in shape)) for name, dtype, shape in items)


def _names_and_shapes(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1 record's fields before its encoding byte."""
    encoded = name.encode("utf-8")
    dims = b"".join(_varint(d) for d in shape)
    return _varint(len(encoded)) + encoded + bytes((DTYPE_CODES[np.dtype(dtype)], len(shape))) + dims


def digest(layout: Layout) -> bytes:
    """What a keyed container carries of ``layout``: 8 bytes of BLAKE2b over the version-1 fields."""
    try:
        fields = b"".join(_names_and_shapes(*entry) for entry in layout)
    except KeyError as exc:
        raise ValueError(f"a tensor's dtype {exc.args[0]} has no code in the format") from exc
    return hashlib.blake2b(_varint(len(layout)) + fields, digest_size=DIGEST_BYTES).digest()


def record_bytes(name: str | None, shape: tuple[int, ...], kept: int, clusters: int, body_bits: int) -> int:
    """Bytes one record takes in the container, as :func:`write` lays it out (``name`` None: in the
    keyed container of version 3, which leaves names, dtypes and shapes out, and records that carry
    nothing, and sends bfloat16 centroids)."""
    if name is None:
        if not (kept or clusters or body_bits):
            return 0
        head, width = 0, 2
    else:
        encoded = len(name.encode("utf-8"))
        head, width = len(_varint(encoded)) + encoded + 2 + sum(len(_varint(d)) for d in shape), 4
    return (
        head
        + 1
        + len(_varint(kept))
        + len(_varint(clusters))
        + width * clusters
        + len(_varint(body_bits))
        + (body_bits + 7) // 8
    )


def container_bytes(tensors: int, keyed: bool = False) -> int:
    """Bytes of the container around ``tensors`` records: magic, version, digest and bitmap of the
    records present when keyed, count, checksum."""
    keys = DIGEST_BYTES + -(-tensors // 8) if keyed else 0
    return len(MAGIC) + 1 + keys + len(_varint(tensors)) + _CRC.size


def write(records: list[Record], keyed: bool = False) -> bytes:
    """The container of ``records``; ``keyed``: for a receiver that knows the layout, version 3
    (version 2 when a record's centroids are not all bfloat16 numbers: nothing is rounded here)."""
    version = VERSION
    if keyed:
        version = KEYED if all(_is_bfloat16(rec.centroids) for rec in records) else KEYED_EVERY_RECORD
    out = bytearray(MAGIC)
    out.append(version)
    if keyed:
        out += digest(tuple((rec.name, rec.dtype, rec.shape) for rec in records))
    out += _varint(len(records))
    if version == KEYED:
        present = np.array([not rec.empty for rec in records], dtype=bool)
        out += np.packbits(present, bitorder="little").tobytes()
        records = [rec for rec, kept in zip(records, present, strict=True) if kept]
    for rec in records:
        if rec.encoding == ABSENT:
            raise ValueError(
                f"tensor {rec.name!r} was left out of a keyed container: version {version} has no record for it"
            )
        if not keyed:
            out += _names_and_shapes(rec.name, rec.dtype, rec.shape)
        out.append(rec.encoding)
        out += _varint(rec.kept) + _varint(rec.centroids.size)
        if version == KEYED:
            out += (rec.centroids.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
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


def carried_digest(payload: bytes) -> bytes:
    """The layout digest a keyed container carries (what :func:`digest` of its layout must be)."""
    start = len(MAGIC) + 1
    return bytes(payload[start : start + DIGEST_BYTES]) if is_keyed(payload) else b""


def is_keyed(payload: bytes) -> bool:
    """Whether ``payload`` is a keyed container (decoded only with its layout)."""
    return (
        len(payload) > len(MAGIC)
        and bytes(payload[: len(MAGIC)]) == MAGIC
        and payload[len(MAGIC)] in (KEYED, KEYED_EVERY_RECORD)
    )


def read(
    payload: bytes,
    max_elements: int | None = None,
    max_tensors: int | None = None,
    layout: Mapping[str, np.ndarray] | Layout | None = None,
) -> list[Record]:
    """Parse and check a container; raise :class:`FormatError` on any defect.

    ``max_elements`` and ``max_tensors`` refuse payloads declaring more,
    before anything is allocated for them. ``layout`` (a model's arrays, or
    :func:`layout_of` them): the names, dtypes and shapes a keyed container
    leaves out; it must be the one the payload was made for. A named
    container does not need it and is read as it says.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload)
    if len(data) < _MIN_SIZE or data[: len(MAGIC)] != MAGIC:
        raise FormatError("not a fedzip payload (bad magic or too short)")
    version = data[len(MAGIC)]
    if version not in (VERSION, KEYED_EVERY_RECORD, KEYED):
        raise FormatError(
            f"format version {version} is not supported (this fedzip reads {VERSION} to {KEYED})"
        )
    (crc,) = _CRC.unpack(data[-_CRC.size :])
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise FormatError("checksum mismatch: the payload is corrupted")
    cur = _Cursor(data, len(data) - _CRC.size)
    cur.pos = len(MAGIC) + 1
    known: Layout | None = None
    if version != VERSION:
        if layout is None:
            raise ValueError(
                "this payload leaves out tensor names and shapes (a keyed container, made for a receiver "
                "that knows the model): decode it with layout= the model's arrays"
            )
        known = layout_of(layout)
        if cur.take(DIGEST_BYTES, "layout digest") != digest(known):
            raise FormatError(
                f"the payload was made for another model: its layout digest does not match these "
                f"{len(known)} tensors' names, dtypes and shapes"
            )
    count = cur.varint("tensor count")
    # a record takes a byte at least; in version 3 a tensor left out takes a bit of the bitmap
    if count > (8 if version == KEYED else 1) * (cur.end - cur.pos):
        raise FormatError(f"{count} tensors declared in a payload of {len(data)} bytes")
    if max_tensors is not None and count > max_tensors:
        raise FormatError(f"payload declares {count} tensors, more than max_tensors={max_tensors}")
    if known is not None and count != len(known):
        raise FormatError(f"{count} tensors declared for a layout of {len(known)}")
    present = _presence(cur, count) if version == KEYED else None
    width = 2 if version == KEYED else 4  # bytes a centroid
    records: list[Record] = []
    names: set[str] = set()
    total = 0
    for index in range(count):
        start = cur.pos
        if known is not None:
            name, dtype, shape = known[index]
            code = DTYPE_CODES[dtype]
        else:
            name, code, shape = _read_name_and_shape(cur, index, names)
        size = math.prod(shape)
        total += size
        if max_elements is not None and total > max_elements:
            raise FormatError(
                f"payload declares more than max_elements={max_elements} elements (tensor {name!r})"
            )
        if present is not None and not present[index]:
            records.append(Record(name, DTYPES[code], shape, ABSENT, 0, _NO_CENTROIDS, 0, b""))
            continue
        encoding = cur.byte("encoding")
        kept = cur.varint("kept count")
        if kept > size:
            raise FormatError(f"tensor {name!r}: {kept} kept entries of {size}")
        clusters = cur.varint("cluster count")
        header = cur.pos - start
        if clusters:
            centroids = _centroids(cur.take(width * clusters, "centroids"), width)
            if not np.isfinite(centroids).all():
                raise FormatError(f"tensor {name!r}: centroids are not finite")
        else:
            centroids = _NO_CENTROIDS
        body_bits = cur.varint("body length")
        body = cur.take(-(-body_bits // 8), "body")
        header += len(_varint(body_bits))
        records.append(
            Record(name, DTYPES[code], shape, encoding, kept, centroids, body_bits, body, header, width)
        )
    if cur.pos != cur.end:
        raise FormatError(f"{cur.end - cur.pos} unexpected bytes after the last tensor")
    return records


def _centroids(data: bytes, width: int) -> np.ndarray:
    if width == 2:  # bfloat16: the top half of a float32
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _presence(cur: _Cursor, count: int) -> np.ndarray:
    """The bitmap of the records a keyed container holds: bit i (least significant first) of byte
    i // 8 for tensor i; the last byte's unused bits are zero."""
    bitmap = np.frombuffer(cur.take(-(-count // 8), "bitmap of the records present"), dtype=np.uint8)
    present = np.unpackbits(bitmap, bitorder="little").astype(bool)
    if present[count:].any():
        raise FormatError("the bitmap of the records present marks tensors past the tensor count")
    return present[:count]


def _read_name_and_shape(cur: _Cursor, index: int, names: set[str]) -> tuple[str, int, tuple[int, ...]]:
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
    return name, code, shape
