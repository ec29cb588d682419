"""One tensor packed as one container record: what baselines and factors send."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import wire
from .bitio import BitReader, BitWriter
from .errors import FormatError

NO_PARAMS = np.zeros(0, dtype=np.float32)


class Packed:
    """One tensor as a baseline sends it.

    ``values`` (flat float32, what the receiver will reconstruct) may be given as a function that
    computes them: only error feedback and ``approximate`` ask, and rebuilding a product of factors
    costs a fifth of encoding them. ``rebuild``, when given, computes them from other ``params``
    (:meth:`with_params`); ``subtract``, when given, subtracts them from a flat array block by
    block from ``params`` (:meth:`subtract_from`), the same bits without a tensor-sized copy.
    """

    __slots__ = ("_rebuild", "_subtract", "_values", "body", "body_bits", "kept", "params")

    def __init__(
        self,
        params: np.ndarray,
        kept: int,
        body: bytes,
        body_bits: int,
        values: np.ndarray | Callable[[], np.ndarray],
        rebuild: Callable[[np.ndarray], np.ndarray] | None = None,
        subtract: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ):
        self.params = params  # float32 side information (scales, norms), stored as the record's centroids
        self.kept = kept  # entries the body carries explicitly
        self.body, self.body_bits = body, body_bits
        self._values = values
        self._rebuild = rebuild
        self._subtract = subtract

    @property
    def values(self) -> np.ndarray:
        if callable(self._values):
            self._values = self._values()
        return self._values

    def subtract_from(self, flat: np.ndarray) -> None:
        """``flat -= values`` in place (in ``flat``'s dtype): error feedback's residual update. Block by
        block when the values are a product (error feedback then holds the update and its residual
        and little else); otherwise from ``values``."""
        if self._subtract is not None and not isinstance(self._values, np.ndarray):
            self._subtract(self.params, flat)
        else:
            flat -= self.values.astype(flat.dtype, copy=False)

    def with_params(self, params: np.ndarray) -> Packed:
        """The same body with other ``params`` (the values follow them)."""
        if self._rebuild is None:
            raise ValueError("this packed tensor's values do not follow its params")
        rebuild = self._rebuild
        return Packed(
            params, self.kept, self.body, self.body_bits, lambda: rebuild(params), rebuild, self._subtract
        )


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


def from_writer(
    params: np.ndarray,
    kept: int,
    writer: BitWriter,
    values: np.ndarray | Callable[[], np.ndarray],
    rebuild: Callable[[np.ndarray], np.ndarray] | None = None,
    subtract: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> Packed:
    return Packed(params, kept, writer.getvalue(), writer.nbits, values, rebuild, subtract)


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
