"""Shared machinery of the baseline compressors: one record per tensor."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from .. import exact, wire
from ..abc import Compressor, Update, check_update, check_values, writable_flat
from ..packing import NO_PARAMS, Packed, packed_record


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

    def _records(self, update: Update) -> Iterator[tuple[wire.Record, np.ndarray, Packed | None]]:
        """Per tensor: its record, the tensor, and the packed tensor (its ``values``: what the
        receiver reconstructs, flat float32; None for an integer or bool tensor, sent exactly)."""
        for name, array in check_update(update).items():
            if exact.is_exact(array):
                yield exact.record(name, array), array, None
                continue
            check_values(name, array)
            if array.size:
                packed = self.pack_tensor(array)
            else:
                packed = Packed(NO_PARAMS, 0, b"", 0, np.zeros(0, np.float32))
            yield packed_record(name, array, self.encoding, packed), array, packed

    def encode_with_approximation(self, update: Update) -> tuple[bytes, dict[str, np.ndarray]]:
        records, approx = [], {}
        for record, array, packed in self._records(update):
            records.append(record)
            approx[record.name] = (
                array.copy() if packed is None else packed.values.astype(array.dtype).reshape(array.shape)
            )
        return wire.write(records), approx

    def encode_subtract(self, update: dict[str, np.ndarray]) -> bytes:
        flats = {name: writable_flat(name, array) for name, array in check_update(update).items()}
        records = []
        for record, _, packed in self._records(update):
            records.append(record)
            if packed is None:
                flats[record.name][...] = 0
            else:
                packed.subtract_from(flats[record.name])
        return wire.write(records)

    def encode(self, update: Update) -> bytes:
        return self.encode_with_approximation(update)[0]

    def approximate(self, update: Update) -> dict[str, np.ndarray]:
        return self.encode_with_approximation(update)[1]
