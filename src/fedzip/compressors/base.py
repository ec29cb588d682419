"""Shared machinery of the baseline compressors: one record per tensor."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import ClassVar, NamedTuple

import numpy as np

from .. import wire
from ..abc import Compressor, Update, check_update, check_values, writable_flat
from ..bitio import BitReader, BitWriter
from ..errors import FormatError

NO_PARAMS = np.zeros(0, dtype=np.float32)


class Packed(NamedTuple):
    """One tensor as a baseline sends it."""

    params: np.ndarray  # float32 side information (scales, norms), stored as the record's centroids
    kept: int  # entries the body carries explicitly
    body: bytes
    body_bits: int
    values: np.ndarray  # flat, what the receiver will reconstruct (float32)


class TensorCompressor(Compressor):
    """A compressor that packs every tensor on its own into one container record.

    Subclasses implement :meth:`pack` on a flat float array. Reconstruction is
    computed once, in float32, by the same code the decoder runs, so
    ``approximate`` equals ``decode(encode(...))`` exactly.
    """

    encoding: ClassVar[int]

    def body_encodings(self) -> frozenset[int]:
        return frozenset({self.encoding})

    @abstractmethod
    def pack(self, flat: np.ndarray) -> Packed:
        """Compress one flat tensor (size >= 1, finite)."""

    def pack_tensor(self, array: np.ndarray) -> Packed:
        """Compress one tensor (size >= 1, finite); for methods that need its shape."""
        return self.pack(array.reshape(-1))

    def _records(self, update: Update) -> Iterator[tuple[wire.Record, np.ndarray, np.ndarray]]:
        """Per tensor: its record, the tensor, and what the receiver reconstructs (flat float32)."""
        for name, array in check_update(update).items():
            check_values(name, array)
            if array.size:
                packed = self.pack_tensor(array)
            else:
                packed = Packed(NO_PARAMS, 0, b"", 0, np.zeros(0, np.float32))
            yield packed_record(name, array, self.encoding, packed), array, packed.values

    def encode_with_approximation(self, update: Update) -> tuple[bytes, dict[str, np.ndarray]]:
        records, approx = [], {}
        for record, array, values in self._records(update):
            records.append(record)
            approx[record.name] = values.astype(array.dtype).reshape(array.shape)
        return wire.write(records), approx

    def encode_subtract(self, update: dict[str, np.ndarray]) -> bytes:
        flats = {name: writable_flat(name, array) for name, array in check_update(update).items()}
        records = []
        for record, array, values in self._records(update):
            records.append(record)
            flats[record.name] -= values.astype(array.dtype, copy=False)
        return wire.write(records)

    def encode(self, update: Update) -> bytes:
        return self.encode_with_approximation(update)[0]

    def approximate(self, update: Update) -> dict[str, np.ndarray]:
        return self.encode_with_approximation(update)[1]


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int in ``[low, high]``; ValueError naming the option otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def packed_record(name: str, array: np.ndarray, encoding: int, packed: Packed) -> wire.Record:
    """The container record of ``array`` packed with body encoding ``encoding``."""
    params = np.asarray(packed.params, dtype=np.float32)
    return wire.Record(
        name, array.dtype, array.shape, encoding, packed.kept, params, packed.body_bits, packed.body
    )


def from_writer(params: np.ndarray, kept: int, writer: BitWriter, values: np.ndarray) -> Packed:
    return Packed(params, kept, writer.getvalue(), writer.nbits, values)


def open_body(rec: wire.Record, params: int | None = None) -> BitReader | None:
    """A reader over ``rec``'s body, or None for an empty tensor (checked to be empty)."""
    if rec.size == 0:
        if rec.kept or rec.body_bits or rec.centroids.size:
            raise FormatError(f"tensor {rec.name!r} is empty but its record carries data")
        return None
    if params is not None and rec.centroids.size != params:
        raise FormatError(f"tensor {rec.name!r}: {rec.centroids.size} parameters, expected {params}")
    if not np.all(np.isfinite(rec.centroids)):
        raise FormatError(f"tensor {rec.name!r}: a scale parameter is not finite")
    return BitReader(rec.body, rec.body_bits)


def close_body(rec: wire.Record, reader: BitReader | None, values: np.ndarray) -> np.ndarray:
    """Check the body was read to its end and cast the values to the record's dtype."""
    if reader is None:
        return np.zeros(0, dtype=rec.dtype)
    if reader.pos != rec.body_bits:
        raise FormatError(f"tensor {rec.name!r}: {rec.body_bits - reader.pos} unused bits in the body")
    with np.errstate(over="ignore"):
        out = values.astype(rec.dtype)
    if not np.all(np.isfinite(out)):
        raise FormatError(f"tensor {rec.name!r}: values overflow {rec.dtype}")
    return out


def signed(magnitudes: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """``magnitudes`` with the sign flipped where ``negative`` (float32)."""
    return np.where(negative, -magnitudes, magnitudes).astype(np.float32)
