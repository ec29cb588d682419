"""Integer and bool tensors (BatchNorm's ``num_batches_tracked``, masks, index buffers), carried
exactly in the same payload as the compressed float tensors.

A record of the ``exact`` encoding holds every value of its tensor as a zigzag LEB128 varint
(small magnitudes, either sign, in few bytes; unsigned and bool values are read as signed numbers
of their width, so a wrapped-around difference of -1 costs one byte). Every compressor writes its
integer and bool tensors this way; what it compresses is the float tensors alone.

In federated training the tensor sent is the difference ``trained - received`` in the tensor's
own dtype (wrapping around; XOR for bool): :func:`difference` and :func:`apply` are that rule,
shared by the client and the server. A counter that grew by 120 batches costs two bytes of body.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import wire
from .errors import FormatError
from .payload import register_encoding

ENCODING_ID = wire.EXACT
_MAX_VARINT = 10  # bytes of the longest varint of a 64-bit number


def is_exact(array: np.ndarray) -> bool:
    """Whether a tensor is carried exactly (integer or bool), not compressed."""
    return np.asarray(array).dtype.kind in "iub"


def floats(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors of ``arrays`` that are compressed (not carried exactly), in order."""
    return {name: array for name, array in arrays.items() if not is_exact(array)}


def _signed(flat: np.ndarray) -> np.ndarray:
    """Values as int64: unsigned and bool values as the signed numbers of their width."""
    if flat.dtype.kind == "b":
        return flat.view(np.uint8).astype(np.int64)
    if flat.dtype.kind == "u":
        return flat.view(f"i{flat.dtype.itemsize}").astype(np.int64)
    return flat.astype(np.int64)


def _varints(numbers: np.ndarray) -> bytes:
    """LEB128 of every uint64 in ``numbers``, back to back."""
    lengths = np.ones(numbers.size, dtype=np.int64)
    for count in range(1, _MAX_VARINT):
        lengths += numbers >= np.uint64(1) << np.uint64(7 * count)
    starts = np.cumsum(lengths) - lengths
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for index in range(int(lengths.max(initial=0))):
        here = lengths > index
        low = (numbers[here] >> np.uint64(7 * index)) & np.uint64(0x7F)
        more = np.where(lengths[here] > index + 1, 0x80, 0).astype(np.uint64)
        out[starts[here] + index] = (low | more).astype(np.uint8)
    return out.tobytes()


def record(name: str, array: np.ndarray) -> wire.Record:
    """The ``exact`` record of an integer or bool tensor; a tensor of zeros carries nothing."""
    array = np.asarray(array)
    flat = np.ascontiguousarray(array).reshape(-1)
    signed = _signed(flat)
    kept = flat.size if np.any(signed) else 0
    body = b""
    if kept:
        zigzag = (signed << np.int64(1)) ^ (signed >> np.int64(63))
        body = _varints(zigzag.view(np.uint64))
    return wire.Record(
        name, array.dtype, array.shape, ENCODING_ID, kept, np.zeros(0, np.float32), 8 * len(body), body
    )


def _body(rec: wire.Record) -> tuple[np.ndarray, int]:
    # the record's dtype is an integer or bool one: fedzip.payload checks it for every encoding
    if rec.centroids.size or rec.kept not in (0, rec.size) or rec.body_bits != 8 * len(rec.body):
        raise FormatError(f"tensor {rec.name!r}: an exact record holds every value in whole bytes, or none")
    if not rec.kept:
        if rec.body:
            raise FormatError(f"tensor {rec.name!r}: an exact record of zeros has a body")
        return np.zeros(rec.size, rec.dtype), 0
    data = np.frombuffer(rec.body, dtype=np.uint8)
    ends = np.flatnonzero(data < 0x80)
    if ends.size != rec.size or ends[-1] != data.size - 1:
        raise FormatError(f"tensor {rec.name!r}: the body holds {ends.size} numbers for {rec.size} values")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_VARINT or np.any((lengths == _MAX_VARINT) & (data[ends] > 1)):
        raise FormatError(f"tensor {rec.name!r}: a number longer than 64 bits")
    shifts = (np.arange(data.size) - np.repeat(starts, lengths)) * 7
    parts = (data & 0x7F).astype(np.uint64) << shifts.astype(np.uint64)
    zigzag = np.bitwise_or.reduceat(parts, starts)
    signed = (zigzag >> np.uint64(1)).view(np.int64) ^ -(zigzag & np.uint64(1)).view(np.int64)
    bits = 8 * rec.dtype.itemsize
    low, high = (0, 1) if rec.dtype.kind == "b" else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    if signed.min() < low or signed.max() > high:
        raise FormatError(f"tensor {rec.name!r}: a value outside {rec.dtype}")
    if rec.dtype.kind == "b":
        return signed.astype(bool), 0
    return signed.astype(f"i{rec.dtype.itemsize}").view(rec.dtype), 0


def _describe(rec: wire.Record) -> str:
    return "exact" if rec.kept else "exact, zeros"


register_encoding(ENCODING_ID, "exact", _body, _describe)


def as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in the integer or bool ``dtype``, by one rule on every machine: float values
    rounded to the nearest integer within the dtype's range (NaN: 0), others cast."""
    values = np.asarray(values)
    if values.dtype == dtype:
        return values
    if values.dtype.kind != "f":
        return values.astype(dtype)
    if dtype.kind == "b":  # the nearest of 0 and 1: a mean of votes is its majority
        return np.asarray(np.rint(np.nan_to_num(values)) != 0)
    info = np.iinfo(dtype)
    # float64 holds every bound below 2**53 exactly; 64-bit ones are kept within 2**62
    low, high = (
        (max(info.min, -(2**62)), min(info.max, 2**62)) if dtype.itemsize == 8 else (info.min, info.max)
    )
    return np.asarray(np.clip(np.nan_to_num(np.rint(values)), low, high)).astype(dtype)


def difference(trained: np.ndarray, received: np.ndarray) -> np.ndarray:
    """What a client sends of an integer or bool tensor: ``trained - received`` in ``trained``'s
    dtype, wrapping around (XOR for bool); ``received`` may be a float copy (Flower's FedAvg
    averages integer buffers in float64)."""
    base = as_dtype(received, trained.dtype)
    if trained.dtype.kind == "b":
        return np.asarray(np.bitwise_xor(trained, base))
    with np.errstate(over="ignore"):
        return np.asarray(np.subtract(trained, base, dtype=trained.dtype))


def apply(base: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The tensor a client trained, from what it was sent (``base``) and its :func:`difference`."""
    start = as_dtype(base, delta.dtype)
    if delta.dtype.kind == "b":
        return np.asarray(np.bitwise_xor(start, delta))
    with np.errstate(over="ignore"):
        return np.asarray(np.add(start, delta, dtype=delta.dtype))
